"""JPEG drafting (``jpeg_draft``, ``--jpeg-draft``): which scale libjpeg is asked for, that the photo stays upright
and near the exact decode, and that graphs placing positions on the photo refuse it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from camexport.contract import Preprocessing
from camexport.errors import UserError
from camexport.runtime.explain import explain
from camexport.runtime.options import ExplainStyle, RunOptions
from camexport.runtime.preprocess import jpeg_draft, open_image, open_unread, to_pixels
from camexport.runtime.samples import sample_photo
from camexport.runtime.session import CamSession

GRAPHS = Path(__file__).parent / "graphs"
PREP = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, image_size=(224, 224), resize_size=256, interpolation="bicubic")


def _jpeg(path: Path, size: tuple[int, int], orientation: int = 1) -> Path:
    photo = sample_photo("astronaut").convert("RGB").resize(size, Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo.save(path, quality=92, exif=exif)
    return path


@pytest.mark.parametrize(
    ("size", "orientation", "scale", "decoded"),
    [
        ((4032, 3024), 1, 4, (1008, 756)),  # 341 x 256 wanted, twice is 682 x 512: 1/8 (504 x 378) would not do
        ((8000, 6000), 1, 8, (1000, 750)),
        ((2048, 1536), 1, 2, (1024, 768)),  # 1/3 would do; libjpeg offers 1/2
        ((1000, 700), 1, 1, (1000, 700)),  # under twice 366 x 256: decoded whole
        ((1200, 6000), 1, 2, (600, 3000)),  # a tall photo: 256 x 1280 wanted, 1/2 leaves 600 x 3000
        ((4032, 2000), 6, 2, (2016, 1000)),  # upright 2000 x 4032: 256 x 516 wanted, stored that is 1032 x 512 twice
    ],
)
def test_the_scale_is_the_smallest_that_leaves_twice_the_resize(
    tmp_path: Path, size: tuple[int, int], orientation: int, scale: int, decoded: tuple[int, int]
) -> None:
    image = open_unread(_jpeg(tmp_path / "p.jpg", size, orientation))
    assert jpeg_draft(image, PREP) == scale and image.size == decoded


def test_other_formats_are_decoded_whole(tmp_path: Path) -> None:
    sample_photo("astronaut").resize((2048, 2048)).save(tmp_path / "p.png")
    image = open_unread(tmp_path / "p.png")
    assert jpeg_draft(image, PREP) == 1 and image.size == (2048, 2048)


def test_a_drafted_photo_is_upright_and_near_the_exact_one(tmp_path: Path) -> None:
    """An EXIF-rotated 12-megapixel JPEG: the drafted photo is upright (the same aspect as the exact one), its crop
    within a few levels of the exact crop (libjpeg's scaled IDCT is not Pillow's bicubic: not equal)."""
    path = _jpeg(tmp_path / "p.jpg", (4032, 3024), orientation=6)
    exact = open_image(path)
    drafted = open_image(path, draft=PREP)
    assert exact.size == (3024, 4032) and drafted.size == (756, 1008)
    ours, theirs = (to_pixels(p, PREP).astype(np.int16) for p in (drafted, exact))
    difference = np.abs(ours - theirs)
    assert 0 < difference.mean() < 3 and np.percentile(difference, 99) <= 16


def test_explain_with_jpeg_draft_on_a_classifier_and_refused_elsewhere(tmp_path: Path) -> None:
    """``explain(style=ExplainStyle(jpeg_draft=True))``: the same class as the exact run on a large JPEG, the
    overlay at the drafted size; a detection graph refuses the option in one line, before any folder is made."""
    path = _jpeg(tmp_path / "p.jpg", (2048, 1536))
    quiet = RunOptions(progress=False, log=lambda _: None)
    session = CamSession(GRAPHS / "linear.onnx")
    exact = explain(session, [path], tmp_path / "exact", ExplainStyle(overlay_format="png"), quiet)
    drafted = explain(session, [path], tmp_path / "drafted", ExplainStyle(overlay_format="png", jpeg_draft=True), quiet)
    assert exact.explained == drafted.explained == 1
    assert Image.open(tmp_path / "exact" / "p_cam.png").size == (2048, 1536)
    # the graph resizes to 18 pixels: 1/8 leaves 256 x 192, far over twice 24 x 18
    assert Image.open(tmp_path / "drafted" / "p_cam.png").size == (256, 192)
    detector = CamSession(GRAPHS / "red-detector.onnx")
    with pytest.raises(UserError, match="`jpeg_draft`: for classifier graphs; a detection graph reports positions"):
        explain(detector, [path], tmp_path / "refused", ExplainStyle(jpeg_draft=True), quiet)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(UserError, match="for classifier graphs"):
        detector.prepare(path, "p.jpg", jpeg_draft=True)
