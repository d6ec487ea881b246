"""The bundled real photos: every one loads as RGB and `camexport samples` writes them all as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from camexport.cli import main
from camexport.runtime.samples import SAMPLES, sample_photo


def test_every_sample_is_an_rgb_photo() -> None:
    assert {"coffee", "chelsea", "motorcycle", "camera", "grace_hopper"} <= set(SAMPLES)
    for name in SAMPLES:
        photo = sample_photo(name)
        assert photo.mode == "RGB" and min(photo.size) >= 300, name
        assert np.asarray(photo).std() > 20, name  # a photo, not a blank or a failed decode


def test_cli_samples_writes_every_photo(tmp_path: Path) -> None:
    assert main(["samples", str(tmp_path / "photos")]) == 0
    written = sorted(p.stem for p in (tmp_path / "photos").glob("*.png"))
    assert written == sorted(SAMPLES)
    with Image.open(tmp_path / "photos" / "motorcycle.png") as image:
        assert image.size == (741, 500)
