"""What an explain run writes, and where: the images found in the sources, the output folder, each image's files
(``<stem>_cam.<format>`` overlays, ``<stem>_heatmap.npy``) written atomically under a stem no other image has, and
the one line that reports a file that failed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from camexport._util import write_atomically
from camexport.contract import Preprocessing
from camexport.errors import UserError
from camexport.runtime.options import DEFAULT_FORMAT, OVERLAY_FORMATS, ExplainStyle
from camexport.runtime.preprocess import heatmap_to_original
from camexport.runtime.records import Files
from camexport.runtime.session import Detected, Explanation
from camexport.runtime.visualize import draw_boxes, overlay_on_photo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def collect_images(sources: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """Expands folders (non-recursively, sorted) into image files; files are taken as given.

    Returns:
        (images, skipped): the files to explain, and the folders' other files (by suffix).
    """
    found: list[Path] = []
    skipped: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for child in sorted(p for p in path.iterdir() if p.is_file()):
                (found if child.suffix.lower() in IMAGE_SUFFIXES else skipped).append(child)
        else:
            found.append(path)
    return found, skipped


def output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"out_dir={str(out)!r}: cannot create it ({exc.strerror or exc})") from None
    return out


def failure_line(path: str | Path, exc: Exception) -> str:
    """The one line reporting a file that failed: the error's own, when it names the file already."""
    return str(exc) if str(path) in str(exc) else f"{path}: {exc}"


def write_files(out: Path, stem: str, photo: Image.Image, result: Explanation, style: ExplainStyle) -> Files:
    """Writes the files the style asks for into ``out``: ``<stem>_cam.<format>`` and ``<stem>_heatmap.npy``; for a
    detection graph also ``<stem>_det<slot>_cam.<format>`` per detection (its own map and box), the first overlay
    showing every box over the largest of their maps, and the heatmap file [detections, height, width]."""
    if result.detections is not None:
        return _write_detection_files(out, stem, photo, result, style)
    overlay_path = heatmap_path = None
    if style.overlay_format:
        overlay_path = out / f"{stem}_cam{OVERLAY_FORMATS[style.overlay_format][1]}"
        write_overlay(overlay_path, photo, result.input_heatmap, result.preprocessing, style, result.region)
    if style.save_heatmap:
        heatmap_path = out / f"{stem}_heatmap.npy"
        write_atomically(heatmap_path, lambda p: np.save(p, result.heatmap))
    return Files(overlay_path, heatmap_path)


def _write_detection_files(out: Path, stem: str, photo: Image.Image, result: Explanation, style: ExplainStyle) -> Files:
    overlay_path = heatmap_path = None
    own: list[Path | None] = [None] * len(result.detections)
    if style.overlay_format:
        suffix = OVERLAY_FORMATS[style.overlay_format][1]
        overlay_path = out / f"{stem}_cam{suffix}"
        write_overlay(overlay_path, photo, result.input_heatmap, result.preprocessing, style, boxes=result.detections)
        for i, found in enumerate(result.detections):
            own[i] = out / f"{stem}_det{found.slot}_cam{suffix}"
            write_overlay(own[i], photo, found.input_heatmap, result.preprocessing, style, boxes=(found,))
    if style.save_heatmap:
        heatmap_path = out / f"{stem}_heatmap.npy"
        width, height = result.photo_size
        maps = [heatmap_to_original(f.input_heatmap, result.preprocessing, width, height) for f in result.detections]
        stacked = np.stack(maps) if maps else np.zeros((0, height, width), np.float32)
        write_atomically(heatmap_path, lambda p: np.save(p, stacked))
    return Files(overlay_path, heatmap_path, tuple(own))


def write_overlay(
    path: Path,
    photo: Image.Image,
    input_heatmap: np.ndarray,
    preprocessing: Preprocessing,
    style: ExplainStyle,
    region: np.ndarray | None = None,
    boxes: Sequence[Detected] = (),
) -> None:
    """Writes ``photo`` with the graph's ``input_heatmap`` placed back on it (downscaled to the style's
    ``overlay_max_side`` if asked) in the style's format, atomically; a segmentation's explained ``region`` is
    outlined, detections' ``boxes`` are drawn with their labels and scores."""
    pillow_format, _, options = OVERLAY_FORMATS[style.overlay_format or DEFAULT_FORMAT]
    coloured = overlay_on_photo(photo, input_heatmap, preprocessing, style, region)
    if boxes:
        draw_boxes(coloured, [(f.box, f"{f.label} {f.score:.2f}", f.slot) for f in boxes], photo.size)
    write_atomically(path, lambda p: coloured.save(p, format=pillow_format, **options))


def stem_of(file_name: str) -> str:
    """The stem an earlier run gave a file: ``photo-2`` of ``photo-2_cam.jpg`` or ``photo-2_heatmap.npy``."""
    return Path(file_name).name.rsplit("_", 1)[0]


def unique_stem(path: Path, taken: set[str]) -> str:
    """``photo`` for the first ``photo.jpg``, then ``photo-2``, ``photo-3``, ... for more files of that stem (e.g.
    ``photo.png``, or one in another folder), skipping any stem already taken (a file named ``photo-2.png``)."""
    stem, count = path.stem, 1
    while stem in taken:
        count += 1
        stem = f"{path.stem}-{count}"
    taken.add(stem)
    return stem
