"""The build wing: a model becomes one validated explaining ONNX graph (needs ``camexport[build]``: torch).

Data flows one way: sources (with weights and factory) → layers → tracing (the task's score, the methods'
registry, decompositions) → export → validation (against the independent eager reference, by comparison's rules)
→ pipeline, which writes the graph. catalog sits on top. The run wing (:mod:`camexport.runtime`) never imports
this package; the benchmarks live outside it, in benchmarks/.
"""

from __future__ import annotations

import importlib.util

from camexport.errors import BuildSideMissing

_NEEDS = ("torch", "torchvision", "onnx", "onnxscript", "timm")
_missing = [name for name in _NEEDS if importlib.util.find_spec(name) is None]
if _missing:
    raise BuildSideMissing(
        f"building graphs needs {', '.join(_missing)}, which this install lacks; "
        "install the build side with: pip install 'camexport[build]'"
    )
