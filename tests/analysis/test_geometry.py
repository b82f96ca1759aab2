"""emofast.analysis.geometry against hand-built subspaces and planted maps."""

import math

import pytest
import torch

from emofast.analysis.geometry import (
    cross_model_alignment,
    emotion_pca,
    fit_alignment,
    principal_angles,
    subspace_of,
    subspace_overlap,
)


def _orthonormal(d: int, k: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, k))[0].T  # [k, d] orthonormal rows


def test_pca_recovers_planted_plane_and_variances():
    torch.manual_seed(0)
    d, N = 10, 400
    u = _orthonormal(d, 2)  # [2, d]
    coef = torch.randn(N, 2) * torch.tensor([3.0, 1.0])  # std 3 and 1 along u
    acts = coef @ u + 0.01 * torch.randn(N, d) + 5.0
    pca = emotion_pca(acts, n_components=2)
    assert pca.components.shape == (2, d) and pca.projected.shape == (N, 2)
    assert abs(torch.dot(pca.components[0], u[0])).item() > 0.999
    assert abs(torch.dot(pca.components[1], u[1])).item() > 0.999
    var = coef.var(0, correction=0)
    torch.testing.assert_close(pca.explained_variance_ratio, var / var.sum(), atol=5e-3, rtol=0)
    torch.testing.assert_close(pca.mean, acts.mean(0))
    torch.testing.assert_close(pca.projected, (acts - acts.mean(0)) @ pca.components.T)


def test_principal_angles_known_cases():
    e = torch.eye(4)
    zero = torch.zeros(2)
    torch.testing.assert_close(principal_angles(e[:2], e[:2]), zero, atol=1e-3, rtol=0)
    mixed = torch.tensor([[3.0, 1.0, 0, 0], [1.0, -2.0, 0, 0]])  # same span, not orthonormal
    torch.testing.assert_close(principal_angles(e[:2], mixed), zero, atol=1e-3, rtol=0)
    torch.testing.assert_close(principal_angles(e[:2], e[2:]), torch.full((2,), math.pi / 2))
    # span(e0, e1) vs span(e0, (e1 + e2)/sqrt2): angles 0 and 45 degrees.
    b = torch.stack([e[0], (e[1] + e[2]) / math.sqrt(2)])
    torch.testing.assert_close(principal_angles(e[:2], b), torch.tensor([0.0, math.pi / 4]), atol=1e-3, rtol=0)
    # k1 != k2 gives min(k1, k2) angles; (2, 2, 0, 0) is 45 degrees from e0 and lies in span(e0, e1).
    line = torch.tensor([[2.0, 2.0, 0, 0]])
    torch.testing.assert_close(principal_angles(line, e[:1]), torch.tensor([math.pi / 4]))
    torch.testing.assert_close(principal_angles(line, e[:2]), torch.tensor([0.0]), atol=1e-3, rtol=0)
    assert subspace_overlap(e[:2], b) == pytest.approx(0.75)  # (cos^2 0 + cos^2 45) / 2


def test_random_subspace_overlap_is_near_chance():
    torch.manual_seed(0)
    d, k = 200, 4
    overlaps = [subspace_overlap(torch.randn(k, d), torch.randn(k, d)) for _ in range(20)]
    assert abs(sum(overlaps) / len(overlaps) - k / d) < 0.01


def test_subspace_of_spans_the_directions():
    torch.manual_seed(0)
    basis = _orthonormal(16, 3)  # [3, d]
    dirs = torch.randn(6, 3) @ basis  # [E=6, d] inside a 3-dim subspace
    sub = subspace_of(dirs, 3)
    torch.testing.assert_close(sub @ sub.T, torch.eye(3), atol=1e-5, rtol=0)
    assert subspace_overlap(sub, basis) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="span fewer than k=4 dimensions"):
        subspace_of(dirs, 4)


def test_procrustes_recovers_a_planted_rotation():
    torch.manual_seed(0)
    d, N = 24, 300
    rotation = torch.linalg.qr(torch.randn(d, d))[0]  # [d, d] orthogonal
    X = torch.randn(N, d) * torch.linspace(0.5, 3, d) + 2.0
    Y = X @ rotation - 1.0
    align = fit_alignment(X, Y, method="procrustes")
    torch.testing.assert_close(align.matrix, rotation, atol=1e-4, rtol=0)
    torch.testing.assert_close(align.apply(X), Y, atol=1e-4, rtol=0)


def test_procrustes_is_semi_orthogonal_across_widths():
    torch.manual_seed(0)
    X, Y = torch.randn(100, 8), torch.randn(100, 13)
    m = fit_alignment(X, Y, method="procrustes").matrix  # [8, 13]
    torch.testing.assert_close(m @ m.T, torch.eye(8), atol=1e-5, rtol=0)


def test_lstsq_recovers_a_planted_linear_map():
    torch.manual_seed(0)
    d1, d2, N = 12, 20, 200
    A, b = torch.randn(d1, d2), torch.randn(d2)
    X = torch.randn(N, d1) + 3.0
    Y = X @ A + b
    align = fit_alignment(X, Y, method="lstsq")
    torch.testing.assert_close(align.matrix, A, atol=1e-4, rtol=0)
    torch.testing.assert_close(align.x_mean, X.mean(0))
    x_new = torch.randn(5, d1)
    torch.testing.assert_close(align.apply(x_new), x_new @ A + b, atol=1e-4, rtol=0)
    assert align.method == "lstsq"


def test_cross_model_alignment_same_width_rotation():
    torch.manual_seed(0)
    d, E, N = 64, 6, 400
    rotation = torch.linalg.qr(torch.randn(d, d))[0]
    neutral_X = torch.randn(N, d)
    dirs_X = torch.nn.functional.normalize(torch.randn(E, d), dim=-1)
    report = cross_model_alignment(neutral_X, neutral_X @ rotation, dirs_X, dirs_X @ rotation)
    assert set(report.to_json()) == {"lstsq", "procrustes"}
    for stats in report:
        assert set(stats._fields) == {"overlap_before", "overlap_after", "cosine_after", "chance"}
        assert stats.overlap_before < 0.3  # the raw subspaces are unrelated
        assert stats.overlap_after == pytest.approx(1.0, abs=1e-4)
        assert stats.cosine_after == pytest.approx([1.0] * E, abs=1e-4)
        assert stats.chance == pytest.approx((E - 1) / d)


def test_cross_model_alignment_different_widths():
    torch.manual_seed(0)
    d1, d2, E, N = 16, 24, 4, 300
    A = torch.randn(d1, d2)
    neutral_X = torch.randn(N, d1)
    dirs_X = torch.randn(E, d1)
    report = cross_model_alignment(neutral_X, neutral_X @ A + 0.5, dirs_X, dirs_X @ A, k=3)
    lstsq = report.lstsq
    assert lstsq.overlap_before is None and lstsq.chance == pytest.approx(3 / d2)
    assert lstsq.overlap_after == pytest.approx(1.0, abs=1e-4)
    assert lstsq.cosine_after == pytest.approx([1.0] * E, abs=1e-4)
    assert len(report.procrustes.cosine_after) == E


def test_bad_inputs_raise_helpful_errors():
    with pytest.raises(ValueError, match=r"n_components must be in 1\.\.3"):
        emotion_pca(torch.randn(3, 5), n_components=4)
    with pytest.raises(ValueError, match="zero variance"):
        emotion_pca(torch.ones(4, 3))
    with pytest.raises(ValueError, match=r"different spaces \(d=4 vs d=5\)"):
        principal_angles(torch.randn(2, 4), torch.randn(2, 5))
    with pytest.raises(ValueError, match="A rows are linearly dependent"):
        principal_angles(torch.tensor([[1.0, 0, 0], [2.0, 0, 0]]), torch.eye(3)[:2])
    with pytest.raises(ValueError, match="X has 10 rows but Y has 9"):
        fit_alignment(torch.randn(10, 3), torch.randn(9, 3))
    with pytest.raises(ValueError, match="unknown alignment method 'cca'"):
        fit_alignment(torch.randn(10, 3), torch.randn(10, 3), method="cca")
    with pytest.raises(ValueError, match="dirs_X has 5 emotions but dirs_Y has 6"):
        cross_model_alignment(torch.randn(10, 3), torch.randn(10, 3), torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"must be a 2-D \[rows, d\] tensor"):
        subspace_of(torch.randn(3), 1)
