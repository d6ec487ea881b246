"""A small numpy implementation of the formulas, written from the papers, for the tests only."""

from __future__ import annotations

import numpy as np


def gradcampp_weights(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Chattopadhyay et al. 2018, eq. 19: α = g²/(2g² + (Σ_ab A_ab)·g³) (0 where undefined); w = Σ α·ReLU(g)."""
    n, k, h, w = A.shape
    out = np.zeros((n, k))
    for i in range(n):
        for c in range(k):
            total = A[i, c].sum()
            for y in range(h):
                for x in range(w):
                    gv = float(g[i, c, y, x])
                    den = 2 * gv**2 + total * gv**3
                    alpha = gv**2 / den if den != 0 else 0.0
                    out[i, c] += alpha * max(gv, 0.0)
    return out


def gradcam_weights(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Selvaraju et al. 2017: w = mean over positions of g."""
    return g.mean(axis=(2, 3))


def cam(A: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ReLU(Σ_k w_k A_k)."""
    return np.maximum((weights[:, :, None, None] * A).sum(axis=1), 0.0)


def upsample_bilinear(m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (align_corners=False), edges clamped."""
    in_h, in_w = m.shape

    def axis(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        src = np.clip(src, 0, in_size - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, in_size - 1)
        return lo, hi, src - lo

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    top = m[y0][:, x0] * (1 - fx) + m[y0][:, x1] * fx
    bottom = m[y1][:, x0] * (1 - fx) + m[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


def heatmap(c: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Upsample each map, then min-max to [0, 1]; a map flat to 1e-5 of its maximum gives zeros."""
    maps = []
    for m in c:
        up = upsample_bilinear(m, out_h, out_w)
        span = up.max() - up.min()
        maps.append((up - up.min()) / span if span > 1e-5 * abs(up.max()) else np.zeros_like(up))
    return np.stack(maps)


def xgradcam_weights(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Fu et al. 2020, eq. 9: w_k = Σ_ij (A_kij / Σ_ab A_kab)·g_kij, 0 where Σ_ab A_kab = 0."""
    n, k = A.shape[:2]
    out = np.zeros((n, k))
    for i in range(n):
        for c in range(k):
            total = A[i, c].sum()
            out[i, c] = (A[i, c] * g[i, c]).sum() / total if total != 0 else 0.0
    return out


def layercam(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Jiang et al. 2021: ReLU(Σ_k ReLU(g_kij)·A_kij), a weight per position."""
    return np.maximum((np.maximum(g, 0.0) * A).sum(axis=1), 0.0)


def hirescam(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Draelos & Carin 2020: ReLU(Σ_k g_kij·A_kij)."""
    return np.maximum((g * A).sum(axis=1), 0.0)
