"""Distribution distances between embeddings of real and generated stems: FAD and KAD.

Both compare two sets of embedding vectors (one row per embedding frame, every clip's frames
pooled), as the STAGE paper reports them:

- FAD, the Fréchet Audio Distance (Kilgour et al., 2019): the Fréchet distance between Gaussians
  fitted to each set, ``|mu_r - mu_g|^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^1/2)``, computed as
  in pytorch-fid / frechet-audio-distance (scipy's ``sqrtm``, ``eps`` on the diagonals when the
  product is singular).
- KAD, the Kernel Audio Distance (Chung et al., 2025): the unbiased estimator of the squared
  maximum mean discrepancy (MMD^2, Gretton et al., 2012) with a Gaussian kernel whose bandwidth
  is the median pairwise distance, scaled by 100 as kadtk reports it. Unbiased: the diagonals
  of the within-set kernel matrices are left out, so two samples of one distribution score
  about 0 (sometimes below) whatever their size, where FAD is biased upwards for small sets.
  The bandwidth comes from the REAL set (kadtk takes it from its second argument): the kernel
  is then the same for every context mode and model compared against those real stems.

Everything is computed in float64 on the CPU; embeddings are small next to the generation.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from stage_bridge.errors import BadArgument

KAD_SCALE = 100.0  # kadtk's SCALE_FACTOR: KAD is reported as 100 x MMD^2
FAD_EPS = 1e-6  # pytorch-fid's offset added to the covariances when their product is singular
_BLOCK = 512  # rows per kernel block: memory stays 512 x n floats (400 MB at 100k MERT frames), not n^2


def _as_set(x: np.ndarray, what: str, minimum: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < minimum or not np.isfinite(x).all():
        raise BadArgument(f"{what} embeddings must be a finite (frames, dim) array with at least {minimum} rows; "
                          f"got shape {x.shape}. Evaluate more songs or seeds, or use an embedder with more frames.")
    return x


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N-1) covariance of a (frames, dim) embedding set."""
    x = _as_set(x, "the")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = FAD_EPS) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise BadArgument("the two embedding sets have different dimensions; embed both with the same embedder.")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)  # imaginary parts are numerical noise of a PSD product
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fad(real: np.ndarray, generated: np.ndarray) -> float:
    """FAD between a real and a generated (frames, dim) embedding set."""
    return frechet_distance(*gaussian_stats(_as_set(real, "real")), *gaussian_stats(_as_set(generated, "generated")))


def median_pairwise_distance(x: np.ndarray, max_rows: int = 4000) -> float:
    """Median Euclidean distance over all pairs of rows (the kernel's bandwidth heuristic).

    Sets larger than ``max_rows`` use a fixed-seed subsample of that many rows: the median
    barely moves, and the pair list stays under ~64 MB."""
    x = _as_set(x, "the")
    if len(x) > max_rows:
        x = x[np.sort(np.random.default_rng(0).choice(len(x), max_rows, replace=False))]
    n, parts = len(x), []
    for a in range(0, n, _BLOCK):
        d = _sq_dists(x[a:a + _BLOCK], x)
        parts.append(d[np.arange(n)[None, :] > np.arange(a, a + d.shape[0])[:, None]])
    return float(np.sqrt(np.median(np.concatenate(parts))))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def _kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float, same: bool) -> float:
    """Sum of exp(-gamma |a_i - b_j|^2) over all pairs; without i == j when ``a`` is ``b``."""
    total = 0.0
    for s in range(0, len(a), _BLOCK):
        k = np.exp(-gamma * _sq_dists(a[s:s + _BLOCK], b))
        if same:
            rows = np.arange(k.shape[0])
            k[rows, rows + s] = 0.0
        total += float(k.sum())
    return total


def kad(real: np.ndarray, generated: np.ndarray, bandwidth: float | None = None, scale: float = KAD_SCALE) -> float:
    """KAD between a real and a generated (frames, dim) embedding set (see the module docstring)."""
    x, y = _as_set(real, "real"), _as_set(generated, "generated")
    if x.shape[1] != y.shape[1]:
        raise BadArgument("the two embedding sets have different dimensions; embed both with the same embedder.")
    sigma = median_pairwise_distance(x) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise BadArgument("the real embeddings are all identical, so KAD has no kernel width; use more varied stems.")
    gamma = 1.0 / (2.0 * sigma * sigma)
    m, n = len(x), len(y)
    mmd2 = (_kernel_sum(x, x, gamma, True) / (m * (m - 1)) + _kernel_sum(y, y, gamma, True) / (n * (n - 1))
            - 2.0 * _kernel_sum(x, y, gamma, False) / (m * n))
    return float(scale * mmd2)
