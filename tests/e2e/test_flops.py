"""The FLOP-ideal ratio, on a network whose multiply-adds are counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.harness.flops import flop_ideal
from camexport.errors import UnknownLayerError


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # 16x16 out: 16·16·8 outputs × 3·3·3 MACs
        nn.ReLU(),
        nn.Conv2d(8, 4, 1),  # 16·16·4 × 8
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),  # 10 × 1024
    )


CONV1, CONV2, LINEAR = 16 * 16 * 8 * 27, 16 * 16 * 4 * 8, 10 * 1024


@pytest.mark.parametrize(
    ("layer", "gradient"),
    [("0", CONV2 + LINEAR), ("1", CONV2 + LINEAR), ("2", LINEAR)],
)
def test_the_ideal_counts_the_forward_and_the_input_gradient_after_the_layer(layer: str, gradient: int) -> None:
    """The input gradient of a convolution or linear layer costs its forward MACs; nothing before the layer and
    no weight gradient is counted (the graph's weights are constants)."""
    torch.manual_seed(0)
    model = small_net().train()
    ideal = flop_ideal(model, layer, (16, 16))
    assert ideal.forward_macs == CONV1 + CONV2 + LINEAR and ideal.gradient_macs == gradient
    assert ideal.ratio == pytest.approx((CONV1 + CONV2 + LINEAR + gradient) / (CONV1 + CONV2 + LINEAR))
    assert model.training and all(p.requires_grad for p in model.parameters())  # restored


def test_an_unknown_layer_is_named() -> None:
    with pytest.raises(UnknownLayerError, match="layer='head': not a module of this model"):
        flop_ideal(small_net(), "head", (16, 16))
