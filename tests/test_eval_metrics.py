"""eval.metrics: FAD and KAD against known answers and against independent implementations.

The independent implementations are torchmetrics' (installed for the tests only): its FID
formula (eigenvalues of S1 S2 instead of scipy's matrix square root) and its unbiased MMD^2.
"""

import numpy as np
import pytest
import torch

from stage_bridge.errors import BadArgument
from stage_bridge.eval.metrics import KAD_SCALE, fad, frechet_distance, gaussian_stats, kad, median_pairwise_distance


def _sample(n, dim=8, shift=0.0, seed=0):
    """n correlated Gaussian embeddings (a fixed mixing matrix, so the covariance is not diagonal)."""
    mixing = np.random.default_rng(1234).standard_normal((dim, dim)) / np.sqrt(dim)
    return np.random.default_rng(seed).standard_normal((n, dim)) @ mixing + shift


def test_fad_of_identical_sets_is_zero():
    x = _sample(2000)
    assert abs(fad(x, x)) < 1e-8


def test_frechet_distance_known_answer_for_diagonal_gaussians():
    # |mu1 - mu2|^2 + sum (sqrt(var1) - sqrt(var2))^2 = (1 + 4) + (1 - 2)^2 + (2 - 1)^2
    got = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([4.0, 1.0]))
    assert got == pytest.approx(7.0, abs=1e-10)


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_fad_equals_torchmetrics_formula(shift):
    from torchmetrics.image.fid import _compute_fid

    real, gen = _sample(3000, seed=1), _sample(2500, shift=shift, seed=2) * 1.3
    ours = fad(real, gen)
    (mu1, s1), (mu2, s2) = gaussian_stats(real), gaussian_stats(gen)
    theirs = float(_compute_fid(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2))))
    assert ours == pytest.approx(theirs, abs=1e-6)
    assert ours > 0.01  # the sets differ (1.3x the spread): a non-trivial distance was compared


def test_median_pairwise_distance_known_answer():
    # pairs of 0, 1, 3 on a line: distances 1, 3, 2
    assert median_pairwise_distance(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(2.0)


def test_kad_of_one_distribution_is_near_zero_and_of_shifted_ones_clearly_positive():
    same = kad(_sample(600, seed=3), _sample(600, seed=4))
    shifted = kad(_sample(600, seed=3), _sample(600, shift=1.0, seed=4))
    assert abs(same) < 0.5
    assert shifted > 10.0
    assert shifted > 50 * abs(same)


def test_kad_is_torchmetrics_unbiased_mmd_with_a_gaussian_kernel():
    from torchmetrics.image.kid import maximum_mean_discrepancy

    x, y = _sample(300, seed=5), _sample(300, shift=0.4, seed=6)
    sigma = median_pairwise_distance(x)

    def k(a, b):
        d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return torch.from_numpy(np.exp(-d2 / (2 * sigma**2)))

    theirs = KAD_SCALE * float(maximum_mean_discrepancy(k(x, x), k(x, y), k(y, y)))
    assert kad(x, y) == pytest.approx(theirs, rel=1e-9)


def test_kad_of_sets_of_different_sizes_is_kadtks_formula():
    """kadtk's calc_kernel_audio_distance (Gaussian kernel, diagonals out, x100) written out in
    torch, with the bandwidth taken from the real set as we do."""
    x, y = torch.from_numpy(_sample(250, seed=9)), torch.from_numpy(_sample(170, shift=0.2, seed=10))
    gamma = 1 / (2 * torch.pdist(x).median() ** 2)
    d2 = lambda a, b: (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T  # noqa: E731
    k_xx, k_yy = torch.exp(-gamma * d2(x, x)), torch.exp(-gamma * d2(y, y))
    m, n = len(x), len(y)
    mmd = ((k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1)) + (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
           - 2 * torch.exp(-gamma * d2(x, y)).mean())
    assert kad(x.numpy(), y.numpy()) == pytest.approx(100 * float(mmd), rel=1e-9)


def test_kad_estimator_is_unbiased():
    """Over many small draws of one distribution the mean KAD is 0 within its standard error,
    where the biased (V-statistic) estimator, diagonals included, is positive every time."""
    values, biased = [], []
    for seed in range(40):
        x, y = _sample(12, seed=100 + seed), _sample(12, seed=200 + seed)
        values.append(kad(x, y))
        sigma = median_pairwise_distance(x)
        kern = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma**2))  # noqa: E731
        biased.append(KAD_SCALE * (kern(x, x).mean() + kern(y, y).mean() - 2 * kern(x, y).mean()))
    values = np.array(values)
    assert abs(values.mean()) < 3 * values.std(ddof=1) / np.sqrt(len(values))
    assert (values < 0).any()  # an unbiased estimate of a zero distance falls below 0 at times
    assert min(biased) > 0 and np.mean(biased) > abs(values.mean()) + 3 * values.std(ddof=1) / np.sqrt(len(values))


def test_kad_bandwidth_comes_from_the_real_set():
    x, y = _sample(200, seed=7), _sample(200, seed=8) * 3.0
    assert kad(x, y) == pytest.approx(kad(x, y, bandwidth=median_pairwise_distance(x)))
    assert kad(x, y) != pytest.approx(kad(x, y, bandwidth=median_pairwise_distance(y)))


@pytest.mark.parametrize("real, gen, match", [
    (np.zeros((1, 4)), np.zeros((5, 4)), "at least 2 rows"),
    (np.ones((5, 4)), np.ones((5, 3)), "same embedder"),
    (np.full((5, 4), np.nan), np.zeros((5, 4)), "finite"),
])
def test_bad_embedding_sets_are_refused_with_what_to_do(real, gen, match):
    with pytest.raises(BadArgument, match=match):
        fad(real, gen)
    with pytest.raises(BadArgument, match=match):
        kad(real, gen)
