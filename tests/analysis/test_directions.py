"""emofast.analysis.directions against planted directions and hand computations."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from emofast.analysis.directions import EmotionDirections, diff_of_means, project

EMOTIONS = ["anger", "fear", "joy", "sadness"]


def _planted(n_per: int = 40, d_model: int = 32, noise: float = 0.3, seed: int = 0):
    """Rows = shared base + 3 * u_e (+ nothing for neutral) + noise, at 2 layers."""
    torch.manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d_model, 2 * len(EMOTIONS)))[0].T  # [8, d_model] orthonormal
    u = u.reshape(2, len(EMOTIONS), d_model)  # [L=2, E, d_model]: different directions per layer
    base = torch.randn(2, 1, d_model) * 5
    labels, rows = [], []
    for i, name in enumerate(["neutral"] + EMOTIONS):
        shift = torch.zeros(2, 1, d_model) if i == 0 else 3 * u[:, i - 1 : i]
        rows.append(base + shift + noise * torch.randn(2, n_per, d_model))
        labels += [name] * n_per
    return torch.cat(rows, dim=1), labels, u  # [2, N, d_model], N labels, [2, E, d_model]


def test_neutral_baseline_recovers_planted_directions():
    acts, labels, u = _planted()
    dirs = diff_of_means(acts, labels, baseline="neutral", layers=[3, 7])
    assert dirs.emotions == EMOTIONS and dirs.layers == [3, 7]
    assert dirs.vectors.shape == (2, 4, 32) and dirs.vectors.dtype == torch.float32
    cos = (dirs.vectors * u).sum(-1)  # [2, E]
    assert cos.min() > 0.99
    torch.testing.assert_close(dirs.get("joy", 7), dirs.vectors[1, 2])
    torch.testing.assert_close(dirs.at_layer(3), dirs.vectors[0])


def test_mean_baseline_recovers_direction_minus_average():
    acts, labels, u = _planted()
    keep = [i for i, label in enumerate(labels) if label != "neutral"]
    dirs = diff_of_means(acts[:, keep], [labels[i] for i in keep])  # baseline="mean"
    # Balanced classes: mean_e - global mean = 3 * (u_e - mean_f u_f).
    expected = F.normalize(u - u.mean(dim=1, keepdim=True), dim=-1)  # [2, E, d_model]
    assert (dirs.vectors * expected).sum(-1).min() > 0.99


def test_hand_computed_four_rows():
    acts = torch.tensor([[1.0, 0.0], [3.0, 0.0], [4.0, 4.0], [0.0, -2.0]])  # [N=4, d=2], read as L=1
    labels = ["neutral", "neutral", "joy", "anger"]

    # Neutral mean (2, 0): joy -> (2, 4), anger -> (-2, -2); no direction for neutral.
    dirs = diff_of_means(acts, labels, baseline="neutral")
    assert dirs.emotions == ["anger", "joy"] and dirs.layers == [0]
    expected = torch.tensor([[-1.0, -1.0], [1.0, 2.0]]) / torch.tensor([[math.sqrt(2)], [math.sqrt(5)]])
    torch.testing.assert_close(dirs.vectors[0], expected)

    # Global mean (2, 0.5): anger -> (-2, -2.5), joy -> (2, 3.5), neutral (2, 0) -> (0, -0.5).
    dirs = diff_of_means(acts, labels, baseline="mean")
    assert dirs.emotions == ["anger", "joy", "neutral"]
    expected = torch.tensor(
        [
            [-2.0 / math.sqrt(10.25), -2.5 / math.sqrt(10.25)],
            [2.0 / math.sqrt(16.25), 3.5 / math.sqrt(16.25)],
            [0.0, -1.0],
        ]
    )
    torch.testing.assert_close(dirs.vectors[0], expected)

    dirs = diff_of_means(acts, labels, baseline="neutral", emotions=["joy"])
    assert dirs.emotions == ["joy"]


def test_group_centred_removes_unbalanced_group_offsets():
    # Pairs: each scenario appears once neutral and once with ONE emotion, under a large
    # scenario offset. Plain means keep the offsets of the few scenarios each emotion saw;
    # centring on the pair mean leaves +-u_e/2, whose per-emotion mean is u_e/2.
    torch.manual_seed(1)
    d_model, per_emotion = 64, 6
    u = torch.linalg.qr(torch.randn(d_model, 4))[0].T  # [E, d_model]
    rows, labels, groups = [], [], []
    for g in range(4 * per_emotion):
        e = g % 4
        offset = torch.randn(d_model) * 10
        rows += [offset + 0.02 * torch.randn(d_model), offset + u[e] + 0.02 * torch.randn(d_model)]
        labels += ["neutral", EMOTIONS[e]]
        groups += [f"scenario{g}", f"scenario{g}"]
    acts = torch.stack(rows)  # [N, d_model]

    centred = diff_of_means(acts, labels, groups=groups, emotions=EMOTIONS, method="group_centred")
    plain = diff_of_means(acts, labels, emotions=EMOTIONS)
    assert (centred.vectors[0] * u).sum(-1).min() > 0.99
    assert (plain.vectors[0] * u).sum(-1).max() < 0.5
    assert centred.method == "group_centred"


def test_save_load_round_trip(tmp_path):
    acts, labels, _ = _planted(n_per=5)
    dirs = diff_of_means(acts, labels, baseline="neutral", layers=[2, 9], site="mlp_out", meta={"model": "tiny"})
    dirs.save(tmp_path / "dirs")
    assert json.loads((tmp_path / "dirs" / "directions.json").read_text())["emotions"] == EMOTIONS
    back = EmotionDirections.load(tmp_path / "dirs")
    torch.testing.assert_close(back.vectors, dirs.vectors, rtol=0, atol=0)
    assert (back.emotions, back.layers, back.site, back.method, back.baseline, back.meta) == (
        EMOTIONS, [2, 9], "mlp_out", "last_token", "neutral", {"model": "tiny"}
    )


def test_project_is_dot_product():
    acts, labels, _ = _planted(n_per=5)
    dirs = diff_of_means(acts, labels, baseline="neutral", layers=[2, 9])
    x = torch.randn(3, 5, 32)  # [B, T, d_model]
    scores = project(x, dirs, layer=9)
    assert scores.shape == (3, 5, 4)
    torch.testing.assert_close(scores[1, 2, 0], torch.dot(x[1, 2], dirs.vectors[1, 0]))
    with pytest.raises(ValueError, match="d_model 16 but the directions have d_model 32"):
        project(torch.randn(4, 16), dirs, layer=9)


def test_bad_inputs_raise_helpful_errors(tmp_path):
    acts = torch.randn(2, 6, 8)
    labels = ["a", "a", "b", "b", "n", "n"]
    with pytest.raises(ValueError, match="labels has 5 entries but acts has 6 rows"):
        diff_of_means(acts, labels[:5])
    with pytest.raises(ValueError, match="groups has 2 entries but acts has 6 rows"):
        diff_of_means(acts, labels, groups=[0, 1])
    with pytest.raises(ValueError, match="layers has 3 entries but acts has 2 layers"):
        diff_of_means(acts, labels, layers=[0, 1, 2])
    with pytest.raises(ValueError, match="baseline label 'neutral' not in labels"):
        diff_of_means(acts, labels, baseline="neutral")
    with pytest.raises(ValueError, match="emotion 'c' has no rows"):
        diff_of_means(acts, labels, emotions=["a", "c"])
    with pytest.raises(ValueError, match="'n' is the baseline class"):
        diff_of_means(acts, labels, baseline="n", emotions=["a", "n"])
    same = torch.ones(1, 6, 8)
    with pytest.raises(ValueError, match="direction of 'a' at layer 0 has zero norm"):
        diff_of_means(same, labels, baseline="n")
    with pytest.raises(ValueError, match=r"acts must be \[L, N, d_model\]"):
        diff_of_means(torch.randn(6), labels)

    dirs = diff_of_means(acts, labels, baseline="n", layers=[4, 5])
    with pytest.raises(ValueError, match=r"unknown emotion 'joy': have \['a', 'b'\]"):
        dirs.get("joy", 4)
    with pytest.raises(ValueError, match=r"no directions for layer 0: have layers \[4, 5\]"):
        dirs.at_layer(0)
    with pytest.raises(ValueError, match="emotions has 1 entries but vectors has 2"):
        EmotionDirections(dirs.vectors, ["a"], [4, 5])
    with pytest.raises(ValueError, match="must be unit norm"):
        EmotionDirections(dirs.vectors * 2, ["a", "b"], [4, 5])
    with pytest.raises(ValueError, match="meta must be JSON-serialisable"):
        EmotionDirections(dirs.vectors, ["a", "b"], [4, 5], meta={"t": torch.zeros(1)}).save(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="directions.safetensors not found"):
        EmotionDirections.load(tmp_path / "missing")
