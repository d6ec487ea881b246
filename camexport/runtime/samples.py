"""Real photos that ship with installed packages (scikit-image, matplotlib), for offline demos and tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from camexport.errors import OutputPathError


def _skimage(name: str) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        from skimage import data

        return Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB")

    return load


def _skimage_file(filename: str) -> Callable[[], Image.Image]:
    """A photo in scikit-image's data folder that ``skimage.data`` only offers in a pair (the stereo motorcycle)."""

    def load() -> Image.Image:
        import skimage.data

        with Image.open(Path(skimage.data.__file__).parent / filename) as image:
            return image.convert("RGB")

    return load


def _grace_hopper() -> Image.Image:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return Image.open(handle).convert("RGB")


SAMPLES: dict[str, Callable[[], Image.Image]] = {
    "coffee": _skimage("coffee"),
    "chelsea": _skimage("chelsea"),
    "rocket": _skimage("rocket"),
    "astronaut": _skimage("astronaut"),
    "grace_hopper": _grace_hopper,
    "motorcycle": _skimage_file("motorcycle_left.png"),
    "camera": _skimage("camera"),  # greyscale, converted to RGB
}


def sample_photo(name: str) -> Image.Image:
    """One bundled photo by name (see :data:`SAMPLES`)."""
    return SAMPLES[name]()


def twin_photo(name: str, side: int = 832) -> Image.Image:
    """A bundled photo twice, side by side (the right one mirrored), on gray in a ``side`` square: two instances of
    one class in one image, for the several-instances test of a detector's maps."""
    photo = sample_photo(name)
    half = photo.resize((side // 2, round(side / 2 * photo.height / photo.width)))
    square = Image.new("RGB", (side, side), (128, 128, 128))
    top = (side - half.height) // 2
    square.paste(half, (0, top))
    square.paste(half.transpose(Image.Transpose.FLIP_LEFT_RIGHT), (side // 2, top))
    return square


def write_samples(folder: str | Path) -> list[Path]:
    """Writes every bundled photo to ``folder`` as PNG.

    Raises:
        OutputPathError: the folder cannot be created or written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, load in SAMPLES.items():
            path = folder / f"{name}.png"
            load().save(path)
            paths.append(path)
    except OSError as exc:
        raise OutputPathError(f"{folder}: cannot write the sample photos ({exc.strerror or exc})") from None
    return paths
