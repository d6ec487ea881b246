"""The error hierarchy of camexport.

Every failure that camexport reports on purpose derives from :class:`CamExportError`. The CLI turns
each into one line on stderr and a non-zero exit status: 2 for a user's mistake (:class:`UserError`),
1 for anything else (a graph that failed validation, an exporter limitation).

Messages name the Python parameter at fault as ``name=value`` (``seed=-1: use a non-negative integer``) or
as ```name``` where no value is shown; the command line shows each as its flag (``--seed -1``).
"""

from __future__ import annotations


class CamExportError(Exception):
    """Base class of every error camexport raises on purpose."""

    exit_code = 1


class UserError(CamExportError):
    """A bad argument or input: the message names the problem and the fix."""

    exit_code = 2


class UnknownModelError(UserError):
    """The model name is not in the registry."""


class UnknownLayerError(UserError):
    """The layer name does not exist in the model, or its output is not a 4-D feature map."""


class WeightsError(UserError):
    """Weights could not be obtained or do not fit the model."""


class OutputPathError(UserError):
    """The output file cannot be written."""


class ImageSizeError(UserError):
    """The requested image size does not fit the architecture."""


class DynamicSizeError(UserError):
    """``--dynamic-size`` was asked of a model or layer whose map cannot follow the image size."""


class UnsupportedModelError(CamExportError):
    """The model or layer needs an operation that camexport cannot put into an ONNX graph yet."""


class UnsupportedFileError(UserError):
    """An ONNX file holds an op, an opset or a form (quantized, a batch fixed in its shapes) that camexport cannot
    import; the message names the node and what to do."""


class ValidationError(CamExportError):
    """The built graph's outputs differ from the eager reference beyond tolerance."""


class NonFiniteOutputError(UserError):
    """The graph's outputs hold NaN or Inf for an input (inputs far outside the normalised range)."""


class ContractError(UserError):
    """The graph follows a version of the graph contract that this camexport does not read."""


class BuildSideMissing(UserError):
    """A build-side feature was asked for, but the build dependencies (torch, ...) are not installed."""


class RequestError(UserError):
    """A bad request to ``camexport serve``: answered with the HTTP ``status`` (a 4xx) and the message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
