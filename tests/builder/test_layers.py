"""Target-layer discovery and validation."""

from __future__ import annotations

import pytest
import timm
from torch import nn

from camexport.builder.layers import default_layer, probe_layers, resolve_layer
from camexport.builder.layouts import CHANNELS_FIRST, ChannelsLast
from camexport.errors import ImageSizeError, UnknownLayerError


def test_resnet18_default_is_layer4(resnet18_random: nn.Module) -> None:
    layers = probe_layers(resnet18_random, (224, 224))
    info = default_layer(resnet18_random, layers)
    assert info.name == "layer4" and info.shape == (1, 512, 7, 7)


def test_timm_efficientnet_default_is_bn2() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    assert default_layer(model, probe_layers(model, (224, 224))).name == "bn2"


@pytest.mark.parametrize("name", ["layer3", "layer4.1.conv2", "layer2", "conv1"])
def test_named_layers_resolve(resnet18_random: nn.Module, name: str) -> None:
    info = resolve_layer(resnet18_random, probe_layers(resnet18_random, (224, 224)), name)
    assert info.name == name and len(info.shape) == 4


def test_unknown_layer_lists_close_candidates(resnet18_random: nn.Module) -> None:
    layers = probe_layers(resnet18_random, (224, 224))
    with pytest.raises(UnknownLayerError, match=r"no such module.*close candidates: .*layer4"):
        resolve_layer(resnet18_random, layers, "layer5")


def test_non_feature_map_layer_is_refused(resnet18_random: nn.Module) -> None:
    with pytest.raises(UnknownLayerError, match=r"layer='fc': its output is shape \[1, 1000\]"):
        resolve_layer(resnet18_random, probe_layers(resnet18_random, (224, 224)), "fc")


def test_module_that_runs_twice_is_refused(resnet18_random: nn.Module) -> None:
    with pytest.raises(UnknownLayerError, match="runs 2 times"):
        resolve_layer(resnet18_random, probe_layers(resnet18_random, (224, 224)), "layer4.1.relu")


def test_model_that_cannot_run_at_the_size() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 5)).eval()
    with pytest.raises(ImageSizeError, match="cannot run on 6x6 images"):
        probe_layers(model, (6, 6), "tiny")


@pytest.mark.parametrize(("name", "expected"), [("squeezenet1_0", "classifier.2"), ("inception_v3", "Mixed_7c")])
def test_default_skips_pooled_1x1_heads(name: str, expected: str) -> None:
    from camexport.builder.sources import load_model

    loaded = load_model(name, "random")
    layers = probe_layers(loaded.module, loaded.preprocessing.image_size)
    assert default_layer(loaded.module, layers).name == expected


def test_channels_last_outputs_are_found() -> None:
    """Swin blocks and the MLP inside a ConvNeXt block run on [N, h, w, C]; their neighbours do not."""
    import torchvision

    convnext = torchvision.models.convnext_tiny().eval()
    layers = {info.name: info for info in probe_layers(convnext, (64, 64))}
    assert layers["features.7.2.block.3"].layout == ChannelsLast()  # Linear 768 -> 3072 on [N, 2, 2, C]
    assert layers["features.7.2.block.3"].map_shape == (3072, 2, 2)
    assert layers["features.7.2.block.2"].layout == ChannelsLast()  # the block's LayerNorm
    assert layers["features.7.2.block.0"].layout == CHANNELS_FIRST  # the depthwise convolution, [N, C, h, w]
    assert layers["features.7.2"].layout == CHANNELS_FIRST
    swin = torchvision.models.swin_t().eval()
    layers = {info.name: info for info in probe_layers(swin, (224, 224))}
    assert layers["features.7.1"].layout == ChannelsLast() and layers["features.7.1"].map_shape == (768, 7, 7)
    assert layers["features.5.3.mlp"].layout == ChannelsLast()
    assert layers["permute"].layout == CHANNELS_FIRST and layers["permute"].map_shape == (768, 7, 7)


def test_square_ambiguous_shapes_stay_channels_first() -> None:
    """[N, 4, 4, 4] reads both ways; without evidence it is taken as [N, C, h, w]."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64, 2))
    layers = {info.name: info for info in probe_layers(model.eval(), (8, 8))}
    assert layers["1"].layout == CHANNELS_FIRST and layers["1"].map_shape == (4, 4, 4)


def test_layer_listing_columns_line_up() -> None:
    """The note column starts at one place on every row, also after a shape as long as [N, 64, 112, 112]."""
    from camexport.builder.layers import describe_layers
    from camexport.builder.sources import load_model

    lines = describe_layers(load_model("resnet18", "random").module, (224, 224), "resnet18")
    start = lines[0].index("note")
    assert any("[N, 64, 112, 112]" in line for line in lines)
    default = next(line for line in lines if line.endswith("default"))
    assert default.startswith("layer4 ") and default.index("default") == start
    for line in lines[2:]:
        assert line[start - 2 : start] == "  " or len(line) <= start, line
