"""The features pipeline end to end on a tiny random model and a random SAE set: report.json,
PNGs, index.html, the saved steering that `emofast recognize --steer` applies; config checks;
a missing SAE set says how to make one."""
import json

import pytest

import emofast.cli as cli
import emofast.cli.common
from conftest import make_tiny
from emofast.pipelines import FeaturesConfig, run_features
from emofast.sae import save_sae
from oracles import loud, random_sae

EMOTIONS = ("anger", "happiness", "fear", "disgust")   # byte tokenizer: first letters differ


def test_features_writes_its_report(tmp_path, monkeypatch):
    model = loud(make_tiny("llama"), seed=2)
    for site, arch in (("L0.resid_post", "topk"), ("L2.resid_post", "jumprelu")):
        save_sae(random_sae(model, site, arch, seed=len(site)), tmp_path / "saes" / site)
    cfg = FeaturesConfig(saes=str(tmp_path / "saes"), n_train=2, n_eval=2, n_candidates=2,
                         per_emotion=(1, 2), factors=(2.0,), kl_budget=50.0, n_neutral=3,
                         n_flow=3, n_permutations=2, controls=False,
                         emotions=EMOTIONS)
    r = run_features(model, cfg, tmp_path / "f", progress=False)
    saved = json.loads((tmp_path / "f" / "report.json").read_text())
    assert saved["sites"] == ["L0.resid_post", "L2.resid_post"] and r.mode == "custom"
    assert set(saved["trace"]["per_emotion"]) == set(EMOTIONS)
    assert saved["trace"]["phases"] == saved["flow"]["phases"]
    assert [l["site"] for l in saved["flow"]["layers"]] == saved["sites"]
    [ev] = saved["evaluations"]
    assert ev["data"] == "emo6:test" and ev["n"] == 8
    assert set(ev) >= {"unsteered", "calibrated", "steered", "random_control"}
    phase = next(iter(saved["flow"]["phases"]))
    for png in ("recognition.png", "steering_train_accuracy.png", f"trace_{phase}.png",
                "flow_shares.png", "flow_probes.png"):
        assert (tmp_path / "f" / png).is_file()
    assert "Held-out recognition" in (tmp_path / "f" / "index.html").read_text()
    # the saved steering is what emofast recognize --steer applies
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in
                            [("So unfair!", "anger"), ("Yuck.", "disgust"), ("Eek", "fear")]))
    assert cli.main(["recognize", "--quiet", "--data", str(data), "--labels",
                     ",".join(EMOTIONS), "--steer", str(tmp_path / "f" / "steering"), "--out",
                     str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert "steered" in m and m["kl_neutral"] >= 0


def test_missing_sae_set_says_how_to_train_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="emofast sae train"):
        run_features(make_tiny("llama"), FeaturesConfig(saes=str(tmp_path), emotions=EMOTIONS,
                                                        controls=False),
                     tmp_path / "f", progress=False)


@pytest.mark.parametrize("bad, match", [(dict(emotions=("joy",)), "emotions must be some of"),
                                        (dict(emotions=EMOTIONS), "controls compare all six"),
                                        (dict(n_train=0), "n_train must be an integer >= 1"),
                                        (dict(per_emotion=()), "per_emotion"),
                                        (dict(kl_budget=0.0), "kl_budget must be > 0"),
                                        (dict(fdr=1.0), "fdr must be in")])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        FeaturesConfig(**bad)
