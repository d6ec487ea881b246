"""The graph contract: one writer, one reader, a version, and the method names (camexport.contract)."""

from __future__ import annotations

import pytest

from camexport.contract import (
    CONTRACT_VERSION,
    METHODS,
    GraphInfo,
    Preprocessing,
    output_names,
    parse_methods,
)
from camexport.errors import ContractError, UserError

INFO = GraphInfo(
    model="resnet18",
    layer="layer4",
    methods=("gradcampp", "layercam"),
    labels=("cat", "dog"),
    preprocessing=Preprocessing((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), (224, 200), 256, "bicubic"),
    version="9.9",
    weights="random (seed 0)",
    random_weights=True,
    dynamic_size=True,
    input="uint8",
)


def test_props_round_trip() -> None:
    props = INFO.to_props()
    assert all(key.startswith("camexport.") and isinstance(value, str) for key, value in props.items())
    assert props["camexport.contract"] == str(CONTRACT_VERSION)
    assert props["camexport.method"] == "gradcampp,layercam"
    assert GraphInfo.from_props(props) == INFO


def test_graph_of_an_unknown_contract_version_is_refused_in_one_line() -> None:
    props = INFO.to_props() | {"camexport.contract": "4"}
    with pytest.raises(ContractError) as caught:
        GraphInfo.from_props(props, "g.onnx")
    message = str(caught.value)
    assert "\n" not in message and "g.onnx" in message and "contract '4'" in message and "rebuild" in message
    assert "reads contracts 1, 2 and 3" in message
    assert caught.value.exit_code == 2


def test_graph_from_before_the_version_key_reads_as_version_1() -> None:
    props = {k: v for k, v in INFO.to_props().items() if k not in ("camexport.contract", "camexport.random_weights")}
    info = GraphInfo.from_props(props)
    assert info.contract == 1 and info.random_weights  # read from the weights' description


def test_not_a_camexport_graph_and_damaged_metadata() -> None:
    with pytest.raises(UserError, match="not a graph built by camexport"):
        GraphInfo.from_props({"producer": "x"}, "other.onnx")
    with pytest.raises(UserError, match="damaged camexport metadata"):
        GraphInfo.from_props(INFO.to_props() | {"camexport.image_size": "[224"}, "g.onnx")


def test_output_names_per_method() -> None:
    assert output_names(("gradcam",)) == ("logits", "class_index", "heatmap", "cam", "activations", "gradients")
    assert output_names(("gradcam", "layercam"))[6:] == (
        "heatmap_gradcam",
        "cam_gradcam",
        "heatmap_layercam",
        "cam_layercam",
    )


def test_reciprocam_keys_round_trip_and_add_the_class_maps_output() -> None:
    info = GraphInfo(
        **{**INFO.__dict__, "methods": ("gradcampp", "reciprocam"), "masked_block": "blocks.11", "class_maps": True}
    )
    props = info.to_props()
    assert props["camexport.masked_block"] == '"blocks.11"' and props["camexport.class_maps"] == "true"
    assert GraphInfo.from_props(props) == info
    assert info.output_names[-1] == "class_maps" and "class_maps" not in INFO.output_names
    assert GraphInfo.from_props(INFO.to_props()).masked_block is None
    with pytest.raises(UserError, match="damaged camexport metadata"):
        GraphInfo.from_props(props | {"camexport.masked_block": "5"}, "g.onnx")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("gradcam,nope", "unknown method"), ("gradcam,gradcam", "named twice"), ("", "unknown method"), ("a,", "unknown")],
)
def test_methods_are_parsed_once_and_checked(spec: str, message: str) -> None:
    assert parse_methods(" gradcampp , layercam") == ("gradcampp", "layercam")
    with pytest.raises(UserError, match=message):
        parse_methods(spec)
    assert METHODS[0] == "gradcampp"
