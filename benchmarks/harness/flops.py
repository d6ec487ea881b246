"""The arithmetic floor of an explanation: how many multiply-adds the explaining graph cannot avoid.

A camexport graph runs the model's forward pass and then the gradient of the class score with respect to the
target layer's output: back through every layer after it, input gradients only (the weights are constants,
so no weight gradients). Its FLOP-ideal cost over plain inference is therefore

    ideal = (forward MACs + MACs of the input gradient down to the layer) / forward MACs,

which is 1.0 for a layer right before the classifier's pooling and grows as the layer moves towards the input.
Both are counted by PyTorch's ``FlopCounterMode`` on one image (convolutions, matrix products, attention;
elementwise ops are not counted, as they are not in MAC counts anywhere). The speed benchmark
(:mod:`benchmarks.harness.bench`) sets its target for (f) ÷ (e) from it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from camexport.errors import UnknownLayerError


@dataclass(frozen=True)
class FlopIdeal:
    """Multiply-adds for one image: the forward pass, and the input gradient back to the layer."""

    forward_macs: int
    gradient_macs: int

    @property
    def ratio(self) -> float:
        """The explaining graph's ideal cost over plain inference."""
        return (self.forward_macs + self.gradient_macs) / self.forward_macs

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": round(self.ratio, 4)}


def flop_ideal(model: nn.Module, layer: str, size: tuple[int, int], channels: int = 3) -> FlopIdeal:
    """Counts the forward MACs of ``model`` on one ``size`` image of ``channels`` channels (the graph's: the
    length of its mean) and the MACs of ∂(a logit)/∂(``layer``'s output).

    Raises:
        UnknownLayerError: ``layer`` is not a module of ``model`` or does not output a tensor.
    """
    modules = dict(model.named_modules())
    if layer not in modules:
        raise UnknownLayerError(f"layer={layer!r}: not a module of this model; list them with 'camexport layers'")
    leaves: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise UnknownLayerError(f"layer={layer!r}: its output is not a tensor")
        leaves.append(output.detach().requires_grad_(True))
        return leaves[-1]

    image = torch.zeros(1, channels, *size)
    handle = modules[layer].register_forward_hook(hook)
    with _frozen(model), torch.enable_grad():
        try:
            with FlopCounterMode(display=False) as forward:
                logits = model(image)
        finally:
            handle.remove()
        with FlopCounterMode(display=False) as backward:
            torch.autograd.grad(logits[0, 0], leaves[0])
    return FlopIdeal(forward.get_total_flops() // 2, backward.get_total_flops() // 2)


@contextlib.contextmanager
def _frozen(model: nn.Module):
    """Parameters without gradients (as in the graph, where they are constants) and eval mode, restored after."""
    wanted = {name: p.requires_grad for name, p in model.named_parameters()}
    training = model.training
    model.eval().requires_grad_(False)
    try:
        yield
    finally:
        model.train(training)
        for name, p in model.named_parameters():
            p.requires_grad_(wanted[name])
