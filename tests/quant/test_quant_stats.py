"""The brittleness statistics on synthetic data with a known answer, and against scipy."""
import math
import random

import pytest
import torch
from scipy import stats as sps

from emofast.quant.stats import (bootstrap_ci, holm, interpolate_log, jaccard_top, kendall_tau,
                                 kl_fit, loo_residuals, permutation_p, prediction_p,
                                 spearman_brown, t_cdf)


def test_permutation_p_counts_ties_and_has_its_floor():
    null = [0.1, 0.2, 0.3, 0.4]
    assert permutation_p(0.0, null) == 1 / 5                    # below all: the floor 1/(n+1)
    assert permutation_p(0.2, null) == 3 / 5                    # ties count as extreme
    assert permutation_p(0.5, null, "greater") == 1 / 5
    with pytest.raises(ValueError):
        permutation_p(0.0, [])


def test_permutation_p_is_uniform_under_the_null():
    rng = random.Random(0)
    ps = []
    for _ in range(2000):
        draws = [rng.gauss(0, 1) for _ in range(20)]
        ps.append(permutation_p(draws[0], draws[1:]))
    assert abs(sum(p <= 0.1 for p in ps) / len(ps) - 0.1) < 0.02


def test_kl_fit_recovers_a_known_line_and_residuals():
    kl = [0.01, 0.03, 0.1, 0.3, 1.0]
    y = [2.0 - 0.5 * math.log(k) for k in kl]
    fit = kl_fit(kl, y)
    assert fit.a == pytest.approx(2.0) and fit.b == pytest.approx(-0.5)
    assert fit.residual(0.05, 2.0 - 0.5 * math.log(0.05) - 0.3) == pytest.approx(-0.3)
    assert all(abs(r) < 1e-9 for r in loo_residuals(kl, y))
    assert kl_fit([0.1, 0.1], [1.0, 3.0]).b == 0.0            # no spread in KL: a flat fit


def test_a_planted_effect_is_found_and_a_null_arm_is_not():
    rng = random.Random(1)
    kl = [math.exp(rng.uniform(-4, 0)) for _ in range(60)]
    y = [1.0 - 0.1 * math.log(k) + rng.gauss(0, 0.01) for k in kl]
    loo = loo_residuals(kl, y)
    fit = kl_fit(kl, y)
    bad = fit.residual(0.1, 1.0 - 0.1 * math.log(0.1) - 0.08)   # 8 sd below
    fine = fit.residual(0.1, 1.0 - 0.1 * math.log(0.1))
    assert permutation_p(bad, loo) == 1 / 61 and prediction_p(bad, loo) < 1e-6
    assert permutation_p(fine, loo) > 0.2 and prediction_p(fine, loo) > 0.2


def test_t_cdf_and_prediction_p_match_scipy():
    for t, df in [(0.0, 5), (1.3, 3), (-2.2, 19), (4.0, 1), (-0.7, 40)]:
        assert t_cdf(t, df) == pytest.approx(sps.t.cdf(t, df), abs=1e-8)
    null = [0.3, -0.1, 0.2, 0.05, -0.25, 0.1]
    obs = -0.6
    m, s, n = sum(null) / 6, torch.tensor(null).double().std().item(), 6
    want = sps.t.cdf((obs - m) / (s * math.sqrt(1 + 1 / n)), n - 1)
    assert prediction_p(obs, null) == pytest.approx(want, abs=1e-8)


def test_bootstrap_ci_covers_the_mean_at_about_its_level():
    rng = random.Random(2)
    hits = 0
    for rep in range(200):
        x = [rng.gauss(1.0, 1.0) for _ in range(40)]
        lo, hi = bootstrap_ci(lambda idx: sum(x[i] for i in idx) / len(idx), len(x),
                              n_boot=400, seed=rep)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / 200 <= 0.99


def test_holm_matches_a_hand_computation():
    # sorted 0.01, 0.02, 0.04 -> 0.03, 0.04, 0.04 (monotone), back in the given order
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_kendall_tau_and_jaccard_match_scipy_and_hand():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=g)
    y = x + torch.randn(50, generator=g)
    y[:5] = y[5]                                                 # ties
    assert kendall_tau(x.tolist(), y.tolist()) == pytest.approx(
        sps.kendalltau(x.numpy(), y.numpy()).statistic, abs=1e-12)
    assert jaccard_top([5, -4, 3, 0, 0], [0, -4, 3, 0, 5], k=2) == pytest.approx(1 / 3)


def test_spearman_brown_and_interpolation():
    a = [0.1, 0.5, 0.9, 0.3]
    assert spearman_brown(a, a) == pytest.approx(1.0)
    assert math.isnan(spearman_brown([1.0, 2.0], [1.0, 2.0]))
    assert interpolate_log([0.01, 1.0], [1.0, 0.0], 0.1) == pytest.approx(0.5)
    assert math.isnan(interpolate_log([0.01, 1.0], [1.0, 0.0], 3.0))
