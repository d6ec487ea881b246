"""CamSession: metadata, input checks, provider errors, and explaining photos (PIL, paths, arrays), on the committed
graphs (tests/runtime/graphs/); the heatmap placed back on a photo is the network's known answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fixtures
import numpy as np
import numpy_cam
import pytest
from PIL import Image

from camexport.errors import NonFiniteOutputError, UserError
from camexport.runtime.preprocess import heatmap_to_original, to_input
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession, resolve_providers


@pytest.fixture(scope="module")
def session(graphs: dict[str, Path]) -> CamSession:
    return CamSession(graphs["linear"])


def test_a_foreign_onnx_file_is_refused(graphs: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="not a graph built by camexport"):
        CamSession(graphs["plain"])


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


def test_run_checks_its_inputs(session: CamSession) -> None:
    assert session.spec.provenance.model == "tests/builder/fixture_graphs.py:linear" and session.num_classes == 4
    good = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(UserError, match=r"shape \[1, 3, 10, 10\]; the graph takes \[N, 3, 16, 16\]"):
        session.run(np.zeros((1, 3, 10, 10), np.float32))
    bad = good.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(UserError, match="NaN or Inf"):
        session.run(bad)
    with pytest.raises(UserError, match="out of range"):
        session.run(good, [4])
    with pytest.raises(UserError, match="empty"):
        session.run(np.zeros((0, 3, 16, 16), np.float32))
    assert session.run(good, 3)["class_index"].tolist() == [3]


def test_class_by_index_or_name(session: CamSession) -> None:
    assert session.class_index(None) == -1
    assert session.class_index("2") == 2 and session.class_index(-1) == -1
    assert session.class_index("Fox") == 2
    with pytest.raises(UserError, match="did you mean 'fox'"):
        session.class_index("foxx")
    with pytest.raises(UserError, match="out of range"):
        session.class_index(4)


def _photo(width: int = 320, height: int = 240) -> Image.Image:
    """A photo with structure: scikit-image's coffee, resized."""
    return sample_photo("coffee").resize((width, height))


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
    # the 16x16 heatmap resampled onto the photo: its peak within a few hundredths of 1
    assert results[0].heatmap.max() == pytest.approx(1.0, abs=5e-3)
    # top-1 class and its probability agree with a softmax over the graph's own logits
    logits = session.run(session.prepare(photo)[1][None])["logits"][0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert results[0].class_index == int(probs.argmax()) and results[0].probability == pytest.approx(probs.max())
    assert len(session.explain(photo, top_k=10)[0].top) == 4  # no more classes than the graph has


def test_explain_is_the_known_answer_at_the_photo_size(session: CamSession) -> None:
    """The photo's crop through the network in numpy (tests/fixtures.py), its heatmap placed back on the photo."""
    photo = _photo(300, 200)
    (result,) = session.explain(photo, target="dog")
    net, prep = fixtures.net("linear"), session.spec.preprocessing
    A = fixtures.activations(to_input(photo, prep)[None])
    heat = numpy_cam.heatmap(fixtures.cam("gradcampp", A, fixtures.gradients(net, A, np.array([1]))), 16, 16)
    expected = heatmap_to_original(heat[0].astype(np.float32), prep, 300, 200)
    assert result.class_index == 1 and result.label == "dog"
    assert np.abs(result.heatmap - expected).max() <= 1e-3
    # outside the centre crop (the network never saw it) the heatmap is 0
    assert not result.seen[:, :40].any() and result.heatmap[:, :40].max() == 0.0


def test_batch_size_does_not_change_results(session: CamSession) -> None:
    photos = [_photo(200 + 40 * i, 180) for i in range(5)]
    one = session.explain(photos, batch_size=1)
    many = session.explain(photos, batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert a.class_index == b.class_index
        assert np.abs(a.heatmap - b.heatmap).max() <= 1e-5


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


def test_uint8_graph_equals_the_float_graph(graphs: dict[str, Path], session: CamSession) -> None:
    """--input uint8: decoded pixels in, conversion and normalisation inside the graph, same heatmaps (the two
    committed graphs hold the same network)."""
    pixels_session = CamSession(graphs["linear-uint8"])
    assert pixels_session.spec.takes_pixels and not session.spec.takes_pixels
    photos = [_photo(), sample_photo("chelsea")]
    for a, b in zip(session.explain(photos), pixels_session.explain(photos), strict=True):
        assert a.class_index == b.class_index
        assert np.abs(a.heatmap - b.heatmap).max() <= 1e-4
    with pytest.raises(UserError, match=r"the graph takes \[N, 16, 16, 3\] uint8"):
        pixels_session.run(np.zeros((1, 3, 16, 16), np.float32))


@pytest.mark.parametrize(
    ("images", "message"),
    [(None, "image 0: NoneType is not an image"), (5, "image 0: int is not an image"),
     ([np.zeros((8, 8, 3), np.uint8), None], "image 1: NoneType is not an image")],
)  # fmt: skip
def test_things_that_are_not_images_are_named(session: CamSession, images, message: str) -> None:
    with pytest.raises(UserError, match=message):
        session.explain(images)


def test_inputs_far_outside_the_normalised_range_are_refused_not_nan(session: CamSession) -> None:
    with pytest.raises(NonFiniteOutputError, match=r"not finite for this batch \(largest input magnitude 3e\+38\)"):
        session.run(np.full((1, 3, 16, 16), 3e38, np.float32))
    assert np.isfinite(session.run(np.full((1, 3, 16, 16), 50.0, np.float32))["heatmap"]).all()


def test_labels_that_do_not_match_the_logits_are_refused(graphs: dict[str, Path]) -> None:
    with pytest.raises(UserError, match=r"damaged camexport metadata \(the graph.s logits has 4 classes where the"):
        CamSession(graphs["short-labels"])


def test_onnxruntime_loads_a_graph_without_warnings_at_its_default_log_level(graphs: dict[str, Path]) -> None:
    """Contract 2 has no initializer that is also an input: nothing to warn about on loading."""
    code = (
        "import numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(graphs['linear'])!r})\n"
        "s.run(None, {'image': np.zeros((1, 3, 16, 16), np.float32), 'target_class': np.array([-1])})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_a_contract_1_graph_with_its_default_target_still_runs(graphs: dict[str, Path], session: CamSession) -> None:
    """Graphs of camexport 0.1 (contract 1: ``target_class`` had a default initializer [-1]) read as before."""
    old = CamSession(graphs["contract1"])
    assert old.spec.contract == 1 and session.spec.contract == 2
    image = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    for target in (None, [2, -1]):
        mine, theirs = old.run(image, target), session.run(image, target)
        assert mine["class_index"].tolist() == theirs["class_index"].tolist()
        np.testing.assert_array_equal(mine["heatmap"], theirs["heatmap"])


def test_cuda_runs_with_fixed_algorithms_and_no_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA provider as camexport asks for it (whether or not this machine has one): cuDNN's default
    algorithms, no TF32, and the CPU behind it; every session computes deterministically where a provider asks."""
    import onnxruntime as ort

    from camexport.runtime import session as module

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert module.resolve_providers("cuda") == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "DEFAULT", "use_tf32": "0"}),
        "CPUExecutionProvider",
    ]
    assert module.resolve_providers("cpu") == ["CPUExecutionProvider"]


def test_sessions_compute_deterministically(session: CamSession) -> None:
    assert session.options.use_deterministic_compute
