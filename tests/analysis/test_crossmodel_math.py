"""Cross-model math (emofast.analysis.crossmodel, geometry's ridge and chance levels) on
synthetic data with planted answers, and pooled_activations against text_activations."""
import pytest
import torch

from conftest import make_tiny
from emofast.analysis.activations import pooled_activations, text_activations
from emofast.analysis.crossmodel import (align_subspaces, direction_stability,
                                         held_out_emotions, neutral_maps, pca_basis)
from emofast.analysis.geometry import (choose_ridge, coordinate_overlap, fit_alignment,
                                       random_overlap)


def _labelled(shifts: dict[str, torch.Tensor], n: int, noise: float, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = next(iter(shifts.values())).shape[0]
    rows, labels = [], []
    for label, shift in shifts.items():
        rows.append(shift + noise * torch.randn(n, d, generator=g))
        labels += [label] * n
    return torch.cat(rows)[None], labels                                    # [1, N, d]


def test_stability_sees_collapse_and_noise():
    d, g = 16, torch.Generator().manual_seed(1)
    u, w = torch.randn(d, generator=g), torch.randn(d, generator=g)
    same = {"neutral": torch.zeros(d), "a": 5 * u, "b": 5 * u}          # a and b collapse
    acts, labels = _labelled(same, 40, 0.1)
    s = direction_stability(acts, labels, ["a", "b"])
    assert s.between[0] > 0.99 and (s.split_half > 0.99).all()
    assert s.between_centred[0] < -0.5      # what a and b share against neutral, removed
    apart = {"neutral": torch.zeros(d), "a": 5 * u, "b": 5 * w}
    acts, labels = _labelled(apart, 40, 0.1)
    s = direction_stability(acts, labels, ["a", "b"])
    cos = float(torch.nn.functional.cosine_similarity(u, w, 0))
    assert abs(float(s.between[0]) - cos) < 0.02
    acts, labels = _labelled(apart, 40, 20.0)                            # noise swamps it
    assert direction_stability(acts, labels, ["a", "b"]).split_half.mean() < 0.7
    with pytest.raises(ValueError, match=">= 2 rows"):
        direction_stability(acts[:, :41], labels[:41], ["a"])


def test_ridge_is_lstsq_at_zero_and_chosen_by_held_out_error():
    g = torch.Generator().manual_seed(2)
    X = torch.randn(200, 12, generator=g)
    Y = X @ torch.randn(12, 20, generator=g)
    torch.testing.assert_close(fit_alignment(X, Y, "ridge", ridge=0.0).matrix,
                               fit_alignment(X, Y, "lstsq").matrix, atol=1e-4, rtol=1e-4)
    lam, errors = choose_ridge(X, Y)
    assert lam == min(errors) and errors[lam] < 1e-3                      # noiseless: small
    few = torch.randn(30, 60, generator=g)                              # N < d, pure noise
    lam, errors = choose_ridge(few, torch.randn(30, 5, generator=g))
    assert lam >= 1.0 and errors[lam] == min(errors.values())
    with pytest.raises(ValueError, match="unknown alignment method"):
        fit_alignment(X, Y, "cca")


def test_random_overlap_is_k_over_d_for_equal_widths():
    mean, p95 = random_overlap(4, 64, 64, n=200)
    assert abs(mean - 4 / 64) < 0.015 and p95 > mean
    A = torch.randn(3, 64)
    assert coordinate_overlap(A, torch.cat([A, torch.randn(3, 8)], 1)) == pytest.approx(1.0)


def test_a_planted_linear_map_is_recovered_and_shuffling_destroys_it():
    g = torch.Generator().manual_seed(3)
    d1, d2, N = 24, 30, 400
    M = torch.linalg.qr(torch.randn(d2, d1, generator=g))[0].T           # [d1, d2] orthonormal rows
    neutral_x = torch.randn(N, d1, generator=g)
    maps = neutral_maps(neutral_x, neutral_x @ M)
    emo_x = torch.randn(300, d1, generator=g) * torch.linspace(3, 0.1, d1)
    bx = pca_basis(emo_x, 3)
    by = pca_basis(emo_x @ M, 3)
    a = align_subspaces(maps, bx, by)
    assert a.ridge > 0.99 and a.procrustes > 0.99
    assert a.shuffled < 0.5 and a.neutral_error < 1e-3
    dirs_x = torch.nn.functional.normalize(torch.randn(5, d1, generator=g), dim=-1)
    h = held_out_emotions(maps["ridge"], dirs_x, dirs_x @ M, list("abcde"), k=3)
    torch.testing.assert_close(torch.tensor(h.mapped), torch.tensor(h.own), atol=1e-3, rtol=0)
    assert h.identified == 1.0 and min(h.cosine) > 0.99 and h.chance == 3 / d2
    with pytest.raises(ValueError, match="1 <= k <= E - 1"):
        held_out_emotions(maps["ridge"], dirs_x, dirs_x @ M, list("abcde"), k=5)


def test_pooled_activations_equal_one_pass_per_pool():
    m = make_tiny("gemma3_text")
    texts = ["hello there", "a", "the quick brown fox jumps", "xyz"] * 3
    both = pooled_activations(m, texts, batch_size=2, progress=False)
    for pool in ("last", "mean"):
        want = text_activations(m, texts, pool=pool, batch_size=5, progress=False)
        torch.testing.assert_close(both[pool], want, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="'last' and/or 'mean'"):
        pooled_activations(m, texts, ("span",))
