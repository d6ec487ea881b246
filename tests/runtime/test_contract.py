"""The graph contract: one spec, one writer, one reader, a version, the method and task tables (camexport.contract)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from camexport.contract import (
    CLASSIFICATION,
    METADATA,
    METHODS,
    PREFIX,
    TASKS,
    GraphSpec,
    Preprocessing,
    Provenance,
    parse_methods,
)
from camexport.errors import ContractError, UserError

SPEC = GraphSpec(
    task="classification",
    layer="layer4",
    methods=("gradcampp", "layercam"),
    labels=("cat", "dog"),
    preprocessing=Preprocessing((0.5, 0.4, 0.3), (0.2, 0.2, 0.2), (224, 200), 256, "bicubic"),
    provenance=Provenance("resnet18", "random (seed 0)", True, "9.9"),
    input="uint8",
    dynamic_size=True,
)


def test_props_round_trip_one_key_per_metadata_record() -> None:
    props = SPEC.to_props()
    assert all(key.startswith(PREFIX) and isinstance(value, str) for key, value in props.items())
    assert list(props) == [PREFIX + key.name for key in METADATA]
    assert props["camexport.contract"] == str(CLASSIFICATION.contract) == "2"
    assert props["camexport.method"] == "gradcampp,layercam"
    assert GraphSpec.from_props(props) == SPEC


def test_a_segmentation_spec_follows_its_tasks_contract() -> None:
    segmentation = replace(SPEC, task="segmentation", contract=None, dynamic_size=False, input="float32")
    assert segmentation.contract == TASKS["segmentation"].contract == 3
    assert segmentation.input_names == ("image", "target_class", "region")
    assert segmentation.output_names[-1] == "segmentation"
    assert segmentation.dims(segmentation.outputs[0]) == ("batch", 2, 224, 200)  # logits [batch, K, H, W]
    assert GraphSpec.from_props(segmentation.to_props()).segments


def test_graph_of_an_unknown_contract_version_is_refused_in_one_line() -> None:
    props = SPEC.to_props() | {"camexport.contract": "5"}
    with pytest.raises(ContractError) as caught:
        GraphSpec.from_props(props, "g.onnx")
    message = str(caught.value)
    assert "\n" not in message and "g.onnx" in message and "contract '5'" in message and "rebuild" in message
    assert "reads contracts 1, 2, 3 and 4" in message
    assert caught.value.exit_code == 2


def test_graph_from_before_the_version_key_reads_as_version_1() -> None:
    props = {k: v for k, v in SPEC.to_props().items() if k not in ("camexport.contract", "camexport.random_weights")}
    spec = GraphSpec.from_props(props)
    assert spec.contract == 1 and spec.provenance.random_weights  # read from the weights' description


def test_not_a_camexport_graph_and_damaged_metadata() -> None:
    with pytest.raises(UserError, match="not a graph built by camexport"):
        GraphSpec.from_props({"producer": "x"}, "other.onnx")
    with pytest.raises(UserError, match="damaged camexport metadata"):
        GraphSpec.from_props(SPEC.to_props() | {"camexport.image_size": "[224"}, "g.onnx")
    with pytest.raises(UserError, match="damaged camexport metadata"):
        GraphSpec.from_props(SPEC.to_props() | {"camexport.task": "tracking"}, "g.onnx")
    with pytest.raises(UserError, match="damaged camexport metadata"):  # a detection graph without its slots
        GraphSpec.from_props(SPEC.to_props() | {"camexport.task": "detection"}, "g.onnx")


def test_outputs_per_method_and_their_names() -> None:
    one = replace(SPEC, methods=("gradcam",))
    assert one.output_names == ("logits", "class_index", "heatmap", "cam", "activations", "gradients")
    assert one.heatmap_of("gradcam") == "heatmap" and one.cam_of("gradcam") == "cam"
    assert SPEC.output_names[6:] == ("heatmap_gradcampp", "cam_gradcampp", "heatmap_layercam", "cam_layercam")
    assert SPEC.heatmap_of("layercam") == "heatmap_layercam" and SPEC.cam_of("gradcampp") == "cam_gradcampp"


def test_dims_resolve_the_axes_of_each_tensor() -> None:
    assert SPEC.dims(SPEC.inputs[0]) == ("batch", "height", "width", 3)  # uint8 pixels of any size
    assert SPEC.dims(SPEC.inputs[1]) == ("target_batch",)
    fixed = replace(SPEC, dynamic_size=False, input="float32")
    assert fixed.dims(fixed.inputs[0]) == ("batch", 3, 224, 200)
    assert fixed.dims(fixed.outputs[2]) == ("batch", 224, 200)  # heatmap
    assert fixed.dims(fixed.outputs[3]) == ("batch", None, None)  # cam: the layer's map, any size


def test_mismatches_name_what_differs() -> None:
    fixed = replace(SPEC, dynamic_size=False, input="float32", methods=("gradcam",))

    def io(spec: GraphSpec) -> tuple[dict, dict]:
        def sig(tensor):
            return tensor.dtype, [d if d is not None else "n" for d in spec.dims(tensor)]

        return {t.name: sig(t) for t in spec.inputs}, {t.name: sig(t) for t in spec.outputs}

    inputs, outputs = io(fixed)
    assert fixed.mismatches(inputs, outputs) == []
    wrong_classes = outputs | {"logits": ("float32", ["batch", 1000])}
    assert "logits has 1000 classes where the metadata says 2" in fixed.mismatches(inputs, wrong_classes)[0]
    assert "image is uint8" in fixed.mismatches(inputs | {"image": ("uint8", ["batch", 3, 224, 200])}, outputs)[0]
    assert "not dynamic" in fixed.mismatches(inputs | {"image": ("float32", [1, 3, 224, 200])}, outputs)[0]
    assert fixed.mismatches(inputs, dict(reversed(outputs.items())))  # the outputs' order is the contract's


def test_reciprocam_keys_round_trip_and_add_the_class_maps_output() -> None:
    spec = replace(SPEC, methods=("gradcampp", "reciprocam"), masked_block="blocks.11", class_maps=True)
    props = spec.to_props()
    assert props["camexport.masked_block"] == '"blocks.11"' and props["camexport.class_maps"] == "true"
    assert GraphSpec.from_props(props) == spec
    assert spec.output_names[-1] == "class_maps" and "class_maps" not in SPEC.output_names
    assert GraphSpec.from_props(SPEC.to_props()).masked_block is None
    with pytest.raises(UserError, match="damaged camexport metadata"):
        GraphSpec.from_props(props | {"camexport.masked_block": "5"}, "g.onnx")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("gradcam,nope", "unknown method"), ("gradcam,gradcam", "named twice"), ("", "unknown method"), ("a,", "unknown")],
)
def test_methods_are_parsed_once_and_checked(spec: str, message: str) -> None:
    assert parse_methods(" gradcampp , layercam") == ("gradcampp", "layercam")
    with pytest.raises(UserError, match=message):
        parse_methods(spec)


def test_the_method_table_names_each_paper_and_equation() -> None:
    assert next(iter(METHODS)) == "gradcampp"
    for name, method in METHODS.items():
        assert method.name == name and method.title and "20" in method.paper and method.equation
    assert [name for name, m in METHODS.items() if not m.gradient] == ["reciprocam"]
    assert "eq. 19" in METHODS["gradcampp"].equation and "(2g² + (Σ_ab A_kab)·g³)" in METHODS["gradcampp"].equation
