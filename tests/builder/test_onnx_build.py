"""``camexport build FILE.onnx``: graphs built from ONNX files the suite writes (torchvision and timm exports at
opsets 7 to 17, a Keras-style NHWC file, a Caffe2-era file, a token graph), each checked by the build against the
file itself (logits, activations, ⟨g, v⟩ by float64 finite differences, heatmaps from (A, g)); the round trip
against the graph built from the same network's PyTorch code; the check's power; unknown preprocessing. (The files
and options a build refuses: test_onnx_file.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from building import built_graph
from onnx_files import export

from camexport.builder import onnx_check
from camexport.builder.layouts import CHANNELS_FIRST
from camexport.builder.pipeline import BuildOptions, build
from camexport.errors import UserError, ValidationError
from camexport.runtime.session import CamSession

RESNET_LAYER = "/layer4/layer4.1/relu_1/Relu_output_0"


def _build(path: Path, out: Path, methods: tuple[str, ...] = ("gradcampp", "gradcam"), **options: object) -> dict:
    result = build(BuildOptions(model=str(path), methods=methods, output=out, **options), log=lambda _line: None)
    return result.summary


def _file_logits(path: Path, image: np.ndarray) -> np.ndarray:
    """The file's own output in onnxruntime (its input laid out and typed as it takes it)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    given = session.get_inputs()[0]
    feed = np.ascontiguousarray(np.transpose(image, (0, 2, 3, 1)) if given.shape[-1] in (1, 3, 4) else image)
    step = given.shape[0] if isinstance(given.shape[0], int) else len(feed)  # a fixed batch: image by image
    return np.concatenate([session.run(None, {given.name: feed[i : i + step]})[0] for i in range(0, len(feed), step)])


CASES = [  # file, methods, the default layer it must get
    ("squeezenet-opset7", ("gradcampp", "gradcam"), "/features/features.12/Concat_output_0"),
    ("timm-mobilenetv3", ("gradcampp", "layercam"), None),
    ("vit", ("gradcampp", "gradcam"), "/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0"),
    ("keras", ("gradcampp", "reciprocam"), "nhwc"),
    ("caffe2", ("gradcampp", "xgradcam"), "relu2"),
    ("keras-uint8-external-newest", ("gradcampp",), "nhwc"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "methods", "layer"), CASES, ids=[case[0] for case in CASES])
def test_a_file_builds_a_graph_checked_against_the_file(onnx_files, tmp_path, name, methods, layer) -> None:
    summary = _build(onnx_files[name], tmp_path / "g.onnx", methods)
    checked = summary["source_check"]  # the build raised had any been over its tolerance; these are far below
    assert checked["logits"] < 1e-5 and checked["activations"] < 1e-5, checked
    assert checked["gradients"] < 1e-4 and checked["heatmaps"] < 1e-4, checked
    assert layer is None or summary["layer"] == layer
    session = CamSession(tmp_path / "g.onnx")
    assert session.spec.preprocessing.known == name.startswith("keras-uint8")  # a uint8 file: pixels as they are
    assert session.spec.layer == summary["layer"]
    size = session.spec.preprocessing.image_size
    image = np.random.default_rng(5).standard_normal((3, session.spec.preprocessing.channels, *size), np.float32)
    if name.startswith("keras-uint8"):  # pixels, which the graph takes as floats 0..255
        image = np.round(np.abs(image) * 60).clip(0, 255).astype(np.float32)
    out = session.run(image)  # a batch the file may not take: the graph's batch is free
    want = _file_logits(onnx_files[name], image.astype(np.uint8) if name.startswith("keras-uint8") else image)
    if name == "caffe2":  # the file ends in a Softmax: the graph explains the logit before it
        assert "its final Softmax dropped: the explained score is the logit scores" in session.spec.provenance.weights
        want = np.log(want)
        out["logits"] = out["logits"] - np.log(np.exp(out["logits"]).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(out["logits"], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.isfinite(out["heatmap"]).all() and out["heatmap"].max() == pytest.approx(1.0)


@pytest.mark.slow
def test_the_round_trip_gives_the_graph_built_from_the_pytorch_code(resnet18_random, graph_dir, tmp_path) -> None:
    """resnet18 exported to ONNX and built from the file: the same logits, A, g and heatmaps as the graph built
    from its PyTorch code (the same random weights), to float32 rounding."""
    path = export(resnet18_random, tmp_path / "resnet18.onnx", 224, 17)
    _build(path, tmp_path / "from-file.onnx", ("gradcampp",), layer=RESNET_LAYER)
    from_file = CamSession(tmp_path / "from-file.onnx")
    from_code = CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp"))
    image = np.random.default_rng(11).standard_normal((2, 3, 224, 224), np.float32)
    a, b = from_file.run(image, target_class=[3, -1]), from_code.run(image, target_class=[3, -1])
    np.testing.assert_array_equal(a["class_index"], b["class_index"])
    for name in ("logits", "activations", "gradients"):
        scale = np.abs(b[name]).max()
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-5 * scale, err_msg=name)
    np.testing.assert_allclose(a["heatmap"], b["heatmap"], rtol=0, atol=1e-4)
    assert from_file.spec.provenance.weights.startswith("the file's own (sha256 ")


@pytest.fixture(scope="module")
def keras_graph(onnx_files, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Keras-style file built without --mean/--std: its preprocessing unknown."""
    path = tmp_path_factory.mktemp("keras_graph") / "g.onnx"
    _build(onnx_files["keras"], path, ("gradcampp",))
    return path


def test_the_check_fails_a_gradient_off_by_one_percent(onnx_files, keras_graph, monkeypatch) -> None:
    """The finite differences are not vacuous: the same graph, its gradients scaled by 1.01, is refused."""
    session = CamSession(keras_graph)
    honest = CamSession.run

    def off(self, *args, **kwargs):
        out = honest(self, *args, **kwargs)
        return out | {"gradients": out["gradients"] * 1.01}

    monkeypatch.setattr(CamSession, "run", off)
    with pytest.raises(ValidationError, match="gradients differ from the ONNX file's"):
        onnx_check.check_against_file(str(onnx_files["keras"]), keras_graph, session.spec, CHANNELS_FIRST, 0)


def test_mean_and_std_make_the_preprocessing_known(onnx_files, tmp_path) -> None:
    _build(onnx_files["keras"], tmp_path / "g.onnx", ("gradcampp",), overrides=_overrides())
    prep = CamSession(tmp_path / "g.onnx").spec.preprocessing
    assert prep.known and prep.mean == (0.5, 0.5, 0.5) and prep.image_size == (32, 32)


def _overrides():
    from camexport.builder.sources import ModelOverrides

    return ModelOverrides(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_an_unknown_preprocessing_refuses_images_in_one_line(keras_graph, tmp_path, capsys) -> None:
    from PIL import Image

    from camexport.cli import main

    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "red.png")
    assert main(["explain", str(keras_graph), str(tmp_path / "red.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "how an image becomes its input is unknown; rebuild it with --mean and --std" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(UserError, match="unknown"):
        CamSession(keras_graph).prepare(np.zeros((32, 32, 3), np.uint8))


def test_every_op_of_the_import_table_is_documented() -> None:
    from camexport.builder.onnx_ops import OPS

    page = (Path(__file__).parents[2] / "docs" / "onnx-files.md").read_text()
    missing = [op for op in OPS if f"`{op}`" not in page]
    assert missing == []


def test_node_refuses_an_unknown_preprocessing_in_one_line(keras_graph, node_example, tmp_path) -> None:
    """The page and Node read the metadata with examples/web/camexport.mjs: the same refusal as Python's."""
    from PIL import Image

    Image.new("RGB", (40, 40), (200, 10, 10)).save(tmp_path / "red.png")
    argv = ["node", "explain.mjs", str(keras_graph), str(tmp_path / "red.png"), "--out", str(tmp_path / "out")]
    result = subprocess.run(argv, cwd=node_example, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "how an image becomes its input is unknown; rebuild it with --mean and --std" in result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "red.png"]
