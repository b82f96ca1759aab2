"""`emofast quant profile` and `compare` end to end on a tiny random model with a random SAE
set: report.json, PNGs, index.html, summary.json keys; config checks."""
import json

import pytest
import torch

import emofast.cli as cli
import emofast.cli.common
from conftest import make_tiny, tiny_config, tiny_tokenizer
from emofast.models import Model
from emofast.pipelines import QuantConfig, run_quant_profile
from emofast.sae import save_sae
from oracles import loud, random_sae

EMOTIONS = ("anger", "happiness", "fear", "disgust")   # byte tokenizer: first letters differ


def small(tmp_path, **kw) -> QuantConfig:
    return QuantConfig(saes=str(tmp_path / "saes"), n_general=4, general_chars=120,
                       n_emotion=2, emotions=EMOTIONS, group=8, n_random=3, single_step=2,
                       schemes=("nf4",), modules=("down", "embed"), deep=("late",),
                       n_causal=1, n_candidates=2, n_recognition=1, steer_alphas=(1.0,),
                       n_direction_skeletons=1,
                       max_new_tokens=3, n_neutral=2, n_boot=50, per_emotion=1, **kw)


def tiny64():
    """A tiny Llama whose widths (32, 64) take GGUF's blocks of 32."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.intermediate_size = 64
    torch.manual_seed(0)
    return loud(Model(AutoModelForCausalLM.from_config(cfg).eval(), tiny_tokenizer(),
                      name="tiny-llama64"), seed=2)


def saes(tmp_path, model):
    for site, arch in (("L0.resid_post", "topk"), ("L2.resid_post", "standard")):
        save_sae(random_sae(model, site, arch, seed=len(site)), tmp_path / "saes" / site)


def test_profile_writes_its_report(tmp_path):
    model = tiny64()
    saes(tmp_path, model)
    r = run_quant_profile(model, small(tmp_path), tmp_path / "q", progress=False)
    saved = json.loads((tmp_path / "q" / "report.json").read_text())
    kinds = {a["arm"]["kind"] for a in saved["arms"]}
    assert kinds == {"null_check", "region", "noise", "window", "single", "module", "whole",
                     "random"}
    assert saved["reference"]["sae_sites"] == ["L0.resid_post", "L2.resid_post"]
    assert saved["test"]["verdict"].startswith(("Supported", "Not supported"))
    assert set(saved["deep"]["arms"]) == {"late rtn3"}
    late = saved["deep"]["arms"]["late rtn3"]
    assert set(late["causal"]["mean"]) >= {"heads_kendall_tau", "heads_jaccard10"}
    assert set(late["behaviour"]["steering"]["curves"]) == {"reference directions",
                                                            "re-derived directions"}
    for png in ("kl_vs_bits.png", "survival.png", "drift.png", "null_feature_r_emotion.png",
                "by_layer_feature_r_emotion.png", "vs_kl_direction_cosine.png"):
        assert (tmp_path / "q" / png).is_file(), png
    html = (tmp_path / "q" / "index.html").read_text()
    assert "Verdict" in html and "Null check" in html
    assert r.arm("late rtn2").metrics["kl_general"] >= 0


def test_compare_cli_writes_the_summary(tmp_path, monkeypatch):
    model = loud(make_tiny("llama"), seed=2)
    saes(tmp_path, model)
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    assert cli.main(["quant", "compare", "--quiet", "--scheme", "rtn:3:8", "--layers", "1-2",
                     "--modules", "mlp", "--saes", str(tmp_path / "saes"), "--n-general", "3",
                     "--n-emotion", "2", "--emotions", ",".join(EMOTIONS),
                     "--n-recognition", "1", "--out", str(tmp_path / "c")]) == 0
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert s["scheme"] == "rtn:3:8:asym" and s["layers"] == [1, 2] and s["modules"] == ["mlp"]
    assert s["bits_per_weight"] == 3 + 32 / 8
    for key in ("kl_mean", "kl_p99", "same_top", "ppl_ref", "ppl_quant", "direction_cosine",
                "feature_survival", "recognition_accuracy_quant"):
        assert key in s


def test_an_arm_that_cannot_apply_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="arm 'null check q4_1'.*multiple of 32|group size 32"):
        run_quant_profile(make_tiny("llama"), small(tmp_path), tmp_path / "q", progress=False)


@pytest.mark.parametrize("kw, says", [(dict(arms=("thirds",)), "arms"),
                                      (dict(schemes=("rtn:4:32",)), "schemes"),
                                      (dict(bits=(3, 9)), "out of range"),
                                      (dict(headline=5), "headline"),
                                      (dict(threshold=1.5), "threshold"),
                                      (dict(causal_scope="first"), "causal_scope")])
def test_bad_config_says_what_is_wrong(kw, says):
    with pytest.raises(ValueError, match=says):
        QuantConfig(**kw)


def test_bad_compare_input_is_one_line(tmp_path, monkeypatch, capsys):
    model = make_tiny("llama")
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    assert cli.main(["quant", "compare", "--quiet", "--scheme", "rtn:4:7", "--out",
                     str(tmp_path / "c")]) == 2
    assert "group size 7 does not divide" in capsys.readouterr().err
    assert cli.main(["quant", "compare", "--quiet", "--scheme", "q4_0", "--layers", "5",
                     "--out", str(tmp_path / "c")]) == 2
    assert "out of range" in capsys.readouterr().err
