"""`emofast recognize` on a tiny model: metrics.json with the documented keys, with a saved
feature steering too; bad labels refused."""
import json

import emofast.cli as cli
import emofast.cli.common
from conftest import make_tiny
from emofast.interventions import FeatureSteering
from oracles import random_sae


def test_recognize_writes_metrics(monkeypatch, tmp_path, capsys):
    model = make_tiny("gpt2")
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    data = tmp_path / "d.jsonl"
    rows = [("I am so angry", "anger"), ("A scary noise", "fear"), ("Yuck, rotten", "disgust")]
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    # the tests' byte-level tokenizer cannot tell sadness from surprise ("s"): refused clearly
    assert cli.main(["recognize", "--quiet", "--data", str(data), "--out",
                     str(tmp_path / "r")]) == 2
    assert "label 'sadness': every spelling's first token" in capsys.readouterr().err
    assert cli.main(["recognize", "--quiet", "--data", str(data), "--labels",
                     "anger,fear,disgust", "--out", str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(metrics) >= {"accuracy", "per_emotion", "n", "confusion"} and metrics["n"] == 3
    assert "accuracy" in capsys.readouterr().out
    assert cli.main(["recognize", "--quiet", "--data", str(data), "--split", "test",
                     "--labels", "anger,fear,disgust", "--out", str(tmp_path / "r")]) == 2
    assert "has no texts of split 'test'" in capsys.readouterr().err


def test_recognize_with_a_saved_steering(monkeypatch, tmp_path):
    model = make_tiny("llama")
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    FeatureSteering({random_sae(model, "L1.resid_post", "topk"): [1, 2, 3]}, 4.0).save(
        tmp_path / "steering")
    data = tmp_path / "d.jsonl"
    rows = [("I am so angry", "anger"), ("A scary noise", "fear"), ("Yuck, rotten", "disgust")]
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    assert cli.main(["recognize", "--quiet", "--data", str(data), "--labels",
                     "anger,fear,disgust", "--steer", str(tmp_path / "steering"), "--out",
                     str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(m["steered"]) >= {"accuracy", "per_emotion", "n", "confusion"}
    assert m["kl_neutral"] > 0 and m["ppl_change"] > 0
