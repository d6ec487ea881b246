"""The composites of benchmarks/quality/quality.py: the boxes are where the copies were pasted, apart and of
different sizes."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def quality():
    from benchmarks.quality import quality

    return quality


@pytest.mark.parametrize(("source", "count"), [("cat", 2), ("cat", 4), ("espresso", 3), ("espresso", 4)])
def test_composite_boxes_hold_the_copies(quality, source: str, count: int) -> None:
    made = quality.composite(f"{source}-{count}x-1", quality.SOURCES[source], count, 224, np.random.default_rng(3))
    assert made.pixels.shape == (224, 224, 3) and made.source == source and len(made.boxes) == count
    outside = np.ones((224, 224), bool)
    for left, top, right, bottom in made.boxes:
        assert 0 <= left < right <= 224 and 0 <= top < bottom <= 224
        outside[top:bottom, left:right] = False
        inside = made.pixels[top:bottom, left:right].reshape(-1, 3)
        assert (inside != quality.BACKGROUND).any(axis=1).mean() > 0.95  # the photo, not the background
    assert (made.pixels[outside] == quality.BACKGROUND).all()  # nothing was pasted outside the boxes
    for a, b in itertools.combinations(made.boxes, 2):  # at least 4 px apart
        assert a[2] + 4 <= b[0] or b[2] + 4 <= a[0] or a[3] + 4 <= b[1] or b[3] + 4 <= a[1]
    sides = sorted(max(r - x, b - y) for x, y, r, b in made.boxes)
    assert all(later > earlier for earlier, later in itertools.pairwise(sides))  # every copy has its own size


def test_paired_interval_brackets_the_mean_difference(quality) -> None:
    rng = np.random.default_rng(0)
    better = rng.uniform(0.0, 0.2, 200)
    result = quality.paired(list(better), list(better + 0.1), np.random.default_rng(1))
    assert result["mean"] == pytest.approx(-0.1) and result["low"] == pytest.approx(-0.1)
    assert result["lower_on"] == 200
    noisy = quality.paired(list(rng.normal(0, 1, 200)), list(rng.normal(0, 1, 200)), np.random.default_rng(1))
    assert noisy["low"] < noisy["mean"] < noisy["high"] and noisy["low"] < 0 < noisy["high"]


def test_pole_counts_find_negative_alpha(quality) -> None:
    a = np.zeros((1, 2, 2, 2))
    a[0, 0] = 1.0  # Σ A = 4
    a[0, 1] = -1.0  # Σ A = −4: α = 1/(2 − 4g) has a pole at g = 0.5
    g = np.zeros((1, 2, 2, 2))
    g[0, 0, 0] = [0.5, -1.0]  # α = 1/4 at the positive gradient; the negative one is dropped by ReLU
    g[0, 1, 0] = [1.0, 0.55]  # α = −1/2 and 1/(2 − 2.2) = −5 (0.2 from the pole)
    channels, negative_sums, positive, negative, near, mass, negative_mass = quality._pole_counts(a, g)
    assert (channels, negative_sums, positive, negative, near) == (2, 1, 3, 2, 0)
    assert mass == pytest.approx(0.5 / 4 + 1.0 / 2 + 0.55 / 0.2)
    assert negative_mass == pytest.approx(1.0 / 2 + 0.55 / 0.2)


def test_logits_only_session_scores_as_the_whole_graph(quality, efficientnet_graph: Path) -> None:
    """The benchmark's probability runs skip the explanation branches but give the graph's own logits."""
    from camexport.runtime.samples import sample_photo
    from camexport.runtime.session import CamSession

    whole, part = CamSession(efficientnet_graph), quality.LogitsOnly(efficientnet_graph)
    batch = np.stack([whole.prepare(sample_photo(name))[1] for name in ("coffee", "chelsea")])
    np.testing.assert_allclose(part.logits(batch), whole.run(batch)["logits"], rtol=1e-5, atol=1e-5)
    assert len(part._part.get_outputs()) == 1
