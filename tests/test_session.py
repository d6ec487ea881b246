"""CamSession: metadata, input checks, provider errors, and explaining photos (PIL, paths, arrays)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from conftest import built_graph
from onnx import TensorProto, helper
from PIL import Image

from camexport.errors import UserError
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession, resolve_providers


def test_a_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(UserError, match="not a graph built by camexport"):
        CamSession(path)


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such graph"):
        CamSession(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="onnxruntime cannot load it"):
        CamSession(junk)


def test_unknown_or_missing_provider() -> None:
    with pytest.raises(UserError, match="unknown"):
        resolve_providers("tpu")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(UserError, match="onnxruntime-gpu"):
            resolve_providers("cuda")


@pytest.mark.slow
def test_run_checks_its_inputs(graph_dir: Path) -> None:
    session = CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp"))
    assert session.info.model == "resnet18" and session.num_classes == 1000
    good = np.zeros((1, 3, 224, 224), np.float32)
    with pytest.raises(UserError, match="shape"):
        session.run(np.zeros((1, 3, 100, 100), np.float32))
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or Inf"):
        session.run(bad)
    with pytest.raises(UserError, match="out of range"):
        session.run(good, [1000])
    assert session.run(good, 7)["class_index"].tolist() == [7]


@pytest.fixture(scope="module")
def session(graph_dir: Path) -> CamSession:
    return CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp"))


@pytest.mark.slow
def test_class_by_index_or_name(session: CamSession) -> None:
    assert session.class_index(None) == -1
    assert session.class_index("281") == 281 and session.class_index(-1) == -1
    assert session.class_index("Tabby") == 281
    with pytest.raises(UserError, match="did you mean 'tabby'"):
        session.class_index("tabbby")
    with pytest.raises(UserError, match="out of range"):
        session.class_index(1000)


def _photo(width: int = 320, height: int = 240) -> Image.Image:
    """A photo with structure: scikit-image's coffee, resized."""
    return sample_photo("coffee").resize((width, height))


@pytest.mark.slow
def test_explain_takes_images_paths_and_arrays(session: CamSession, tmp_path: Path) -> None:
    photo = _photo()
    path = tmp_path / "photo.png"
    photo.save(path)
    pixels = np.asarray(photo)
    results = session.explain([photo, path, pixels, pixels / 255.0], top_k=3, batch_size=3)
    assert len(results) == 4
    for result in results:
        assert result.heatmap.shape == (240, 320) and result.seen.shape == (240, 320)
        assert len(result.top) == 3 and result.top[0][2] >= result.top[1][2] >= result.top[2][2]
        np.testing.assert_allclose(result.heatmap, results[0].heatmap, atol=1e-5)
    assert results[0].heatmap.max() == pytest.approx(1.0, abs=1e-3)
    # top-1 class and its probability agree with a softmax over the graph's own logits
    logits = session.run(session.prepare(photo)[1][None])["logits"][0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert results[0].class_index == int(probs.argmax()) and results[0].probability == pytest.approx(probs.max())


@pytest.mark.slow
def test_explain_matches_the_reference_at_the_photo_size(session: CamSession, resnet18_random) -> None:
    from camexport.builder.reference import reference_explain
    from camexport.runtime.preprocess import heatmap_to_original, to_input

    photo = _photo(300, 200)
    (result,) = session.explain(photo, target="tabby")
    ref = reference_explain(
        resnet18_random, "layer4", "gradcampp", to_input(photo, session.info.preprocessing)[None], [281]
    )
    expected = heatmap_to_original(ref["heatmap"][0].astype(np.float32), session.info.preprocessing, 300, 200)
    assert result.class_index == 281 and result.label == "tabby"
    assert np.abs(result.heatmap - expected).max() <= 4e-3
    # outside the centre crop (the network never saw it) the heatmap is 0
    assert not result.seen[:, :40].any() and result.heatmap[:, :40].max() == 0.0


@pytest.mark.slow
def test_batch_size_does_not_change_results(session: CamSession) -> None:
    photos = [_photo(200 + 40 * i, 180) for i in range(5)]
    one = session.explain(photos, batch_size=1)
    many = session.explain(photos, batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert a.class_index == b.class_index
        assert np.abs(a.heatmap - b.heatmap).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((20, 20, 3), np.nan, np.float32), "image 1: the array holds NaN or Inf"),
        (np.full((20, 20, 3), 2.0, np.float32), r"image 1: float pixels must lie in \[0, 1\]"),
        (np.zeros((20, 20, 5), np.uint8), r"image 1: array of shape \[20, 20, 5\]"),
        (np.zeros((20, 20, 3), np.int16), "image 1: array of int16"),
    ],
)
def test_bad_arrays_are_named(session: CamSession, array: np.ndarray, message: str) -> None:
    with pytest.raises(UserError, match=message):
        session.explain([np.zeros((20, 20), np.uint8), array])


@pytest.mark.slow
def test_uint8_graph_equals_the_float_graph(graph_dir: Path, session: CamSession) -> None:
    """--input uint8: decoded pixels in, conversion and normalisation inside the graph, same heatmaps."""
    pixels_session = CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp", input="uint8"))
    assert pixels_session.info.takes_pixels and not session.info.takes_pixels
    graph = onnx.load(str(pixels_session.path), load_external_data=False)
    image = next(i for i in graph.graph.input if i.name == "image").type.tensor_type
    assert image.elem_type == TensorProto.UINT8
    assert [d.dim_param or d.dim_value for d in image.shape.dim] == ["batch", 224, 224, 3]
    photos = [_photo(), sample_photo("chelsea")]
    for a, b in zip(session.explain(photos), pixels_session.explain(photos), strict=True):
        assert a.class_index == b.class_index
        assert np.abs(a.heatmap - b.heatmap).max() <= 1e-4
    with pytest.raises(UserError, match=r"the graph takes \[N, 224, 224, 3\] uint8"):
        pixels_session.run(np.zeros((1, 3, 224, 224), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("images", "message"),
    [(None, "image 0: NoneType is not an image"), (5, "image 0: int is not an image"),
     ([np.zeros((8, 8, 3), np.uint8), None], "image 1: NoneType is not an image")],
)  # fmt: skip
def test_things_that_are_not_images_are_named(session: CamSession, images, message: str) -> None:
    with pytest.raises(UserError, match=message):
        session.explain(images)


@pytest.mark.slow
def test_inputs_far_outside_the_normalised_range_are_refused_not_nan(session: CamSession) -> None:
    from camexport.errors import NonFiniteOutputError

    with pytest.raises(NonFiniteOutputError, match=r"not finite for this batch \(largest input magnitude 3e\+38\)"):
        session.run(np.full((1, 3, 224, 224), 3e38, np.float32))
    assert np.isfinite(session.run(np.full((1, 3, 224, 224), 50.0, np.float32))["heatmap"]).all()


@pytest.mark.slow
def test_labels_that_do_not_match_the_logits_are_refused(session: CamSession, tmp_path: Path) -> None:
    import json

    damaged = onnx.load(str(session.path))
    labels = next(p for p in damaged.metadata_props if p.key == "camexport.labels")
    labels.value = json.dumps(json.loads(labels.value)[:10])
    onnx.save(damaged, str(tmp_path / "damaged.onnx"))
    with pytest.raises(UserError, match="damaged camexport metadata \\(10 labels for 1000 logits\\)"):
        CamSession(tmp_path / "damaged.onnx")


@pytest.mark.slow
@pytest.mark.parametrize(("model", "layer"), [("resnet18", "layer4"), ("vit_b_16", None)])
def test_onnxruntime_loads_a_graph_without_warnings_at_its_default_log_level(
    graph_dir: Path, model: str, layer: str | None
) -> None:
    """Contract 2 has no initializer that is also an input, and the export drops initializers no node reads
    (ViT graphs had one: onnxruntime warned about it): nothing to warn about on loading."""
    graph = built_graph(graph_dir, model, layer, "gradcampp")
    code = (
        "import numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(graph)!r})\n"
        "s.run(None, {'image': np.zeros((1, 3, 224, 224), np.float32), 'target_class': np.array([-1])})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.slow
def test_a_contract_1_graph_with_its_default_target_still_runs(graph_dir: Path, tmp_path: Path) -> None:
    """Graphs of camexport 0.1 (contract 1: ``target_class`` had a default initializer [-1]) read as before."""
    model = onnx.load(str(built_graph(graph_dir, "resnet18", "layer4", "gradcampp")))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1], dtype=np.int64), "target_class"))
    next(p for p in model.metadata_props if p.key == "camexport.contract").value = "1"
    onnx.save(model, tmp_path / "old.onnx")
    old, new = CamSession(tmp_path / "old.onnx"), CamSession(built_graph(graph_dir, "resnet18", "layer4", "gradcampp"))
    assert old.info.contract == 1 and new.info.contract == 2
    image = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    for target in (None, [281, -1]):
        mine, theirs = old.run(image, target), new.run(image, target)
        assert mine["class_index"].tolist() == theirs["class_index"].tolist()
        np.testing.assert_array_equal(mine["heatmap"], theirs["heatmap"])
