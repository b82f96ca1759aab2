"""`emofast sweep`: results.json in the documented format, values equal to the plain-HF oracle,
variants from a JSON file, prompts from files and datasets, resume, and clear errors."""
import json

import pytest
import torch

import emofast.cli as cli
import emofast.cli.common
from conftest import make_tiny
from emofast.analysis.directions import EmotionDirections
from emofast.sweeps import KL, Edit, LogitDiff, Steer
from oracles import PROMPTS, loud, oracle, scale_tol, steer_oracle


@pytest.fixture
def tiny(monkeypatch):
    model = loud(make_tiny("llama"))
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    return model


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def run(*argv) -> int:
    return cli.main(["sweep", "--quiet", *map(str, argv)])


def test_heads_kl_matches_oracle(tiny, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert run("--prompts", prompts_file, "--variants", "heads", "--scope", "last",
               "--out", out) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["positions"] == "last" and doc["scope"] == "last"
    assert {"engine", "n_prompts", "n_variants", "elapsed_s", "variants_per_s",
            "variants"} <= set(doc)
    assert doc["engine"] == "batched" and doc["n_prompts"] == len(PROMPTS)
    assert doc["n_variants"] == tiny.n_layers * tiny.n_heads
    heads = [(layer, h) for layer in range(tiny.n_layers) for h in range(tiny.n_heads)]
    for v, (layer, h) in zip(doc["variants"], heads):
        assert [(e["layer"], e["site"], e["unit"]) for e in v["edits"]] == [(layer, "attn_z", h)]
    want = oracle(tiny, PROMPTS, [[Edit(layer, "attn_z", [h])] for layer, h in heads], KL(),
                  "last").mean(1).float()
    got = torch.tensor([v["value"] for v in doc["variants"]])
    torch.testing.assert_close(got, want, atol=scale_tol(want), rtol=0)
    assert "variants/s" in capsys.readouterr().out
    with pytest.warns(DeprecationWarning, match="use --scope last"):  # the old spelling
        assert run("--prompts", prompts_file, "--variants", "heads", "--positions", "last",
                   "--out", out) == 0                                   # all resumed
    assert "--positions last is deprecated" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["resumed"] == len(heads)


def test_variants_file_logit_diff_mean_all(tiny, tmp_path):
    spec = [{"edits": [{"layer": 0, "site": "mlp_act", "unit": 3},
                       {"layer": 0, "site": "mlp_act", "unit": 9},
                       {"layer": 2, "site": "attn_z", "unit": 1}]},
            {"edits": []}, {"edits": [{"layer": 1, "site": "attn_z", "unit": 0}]}]
    vfile = tmp_path / "variants.json"
    vfile.write_text(json.dumps(spec))
    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "run"
    assert run("--prompts", txt, "--variants", vfile, "--mode", "mean", "--metric", "logit_diff",
               "--tokens-a", "65,66", "--tokens-b", "67", "--engine", "loop", "--out", out) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["engine"] == "loop" and [len(v["edits"]) for v in doc["variants"]] == [3, 0, 1]
    variants = [[Edit(0, "mlp_act", [3, 9], "mean"), Edit(2, "attn_z", [1], "mean")], [],
                [Edit(1, "attn_z", [0], "mean")]]
    want = oracle(tiny, PROMPTS, variants, LogitDiff([65, 66], [67]), "all").mean(1).float()
    got = torch.tensor([v["value"] for v in doc["variants"]])
    torch.testing.assert_close(got, want, atol=scale_tol(want), rtol=0)


def test_results_json_read_back_as_variants_keeps_mode_and_pos_start(tiny, tmp_path):
    spec = [{"edits": [{"layer": 1, "site": "attn_z", "unit": 0, "mode": "mean", "pos_start": 2},
                       {"layer": 1, "site": "attn_z", "unit": 2, "mode": "mean", "pos_start": 2}]},
            {"edits": [{"layer": 1, "site": "attn_z", "unit": 0}]}]   # --mode (zero), from 0
    vfile = tmp_path / "variants.json"
    vfile.write_text(json.dumps(spec))
    txt = tmp_path / "prompts.txt"
    txt.write_text("\n".join(PROMPTS) + "\n")
    assert run("--prompts", txt, "--variants", vfile, "--out", tmp_path / "a") == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    variants = [[Edit(1, "attn_z", [0, 2], "mean", 2)], [Edit(1, "attn_z", [0])]]
    want = oracle(tiny, PROMPTS, variants, KL(), "per_edit").mean(1).float()
    got = torch.tensor([v["value"] for v in first["variants"]])
    torch.testing.assert_close(got, want, atol=scale_tol(want), rtol=0)
    # results.json's own variants, read back as a variants file, give the same sweep
    vfile.write_text(json.dumps([{"edits": v["edits"]} for v in first["variants"]]))
    assert run("--prompts", txt, "--variants", vfile, "--out", tmp_path / "b") == 0
    again = json.loads((tmp_path / "b" / "results.json").read_text())
    assert [v["value"] for v in again["variants"]] == [v["value"] for v in first["variants"]]


def test_neurons_spec_and_builtin_prompts(tiny, tmp_path):
    out = tmp_path / "run"
    assert run("--prompts", "basic4", "--limit", "3", "--variants", "neurons:1-2",
               "--out", out) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["n_prompts"] == 3 and doc["n_variants"] == 2 * tiny.d_mlp
    assert {v["edits"][0]["layer"] for v in doc["variants"]} == {1, 2}


@pytest.mark.parametrize("argv, message", [
    (["--variants", "heads", "--metric", "logit_diff", "--tokens-a", "5"], "needs tokens_a and"),
    (["--variants", "heads", "--metric", "logprob", "--tokens-a", "999"], "[999] out of range"),
    (["--variants", "neurons:7"], "out of range"),
    (["--variants", "nope.json"], "is not 'heads', 'neurons:LAYERS', 'steer:EMOTIONS:LAYERS' or"),
    (["--variants", "steer:0-2"], "write steer:EMOTIONS:LAYERS"),
    (["--variants", "heads", "--metric", "projection"], "needs an emotion (--emotion)"),
    (["--variants", "heads", "--scope", "last:2"], "sweep does not support scope last:2"),
    (["--variants", "heads", "--scope", "from:x"], "bad scope 'from:x'"),
    (["--variants", "heads", "--scope", "all", "--positions", "2"], "give --scope only"),
    (["--variants", "heads", "--rms", "--scale", "abs"], "contradict"),
])
def test_errors(tiny, prompts_file, tmp_path, capsys, argv, message):
    assert run("--prompts", prompts_file, "--out", tmp_path / "x", *argv) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_bad_variants_file(tiny, prompts_file, tmp_path, capsys):
    vfile = tmp_path / "v.json"
    for content, message in [("[{\"edits\": [{\"layer\": 0}]}]", "needs layer, site, unit"),
                             ("[]", "non-empty JSON list"), ("{", "not valid JSON"),
                             ("[{\"edits\": [{\"layer\": 0, \"site\": \"attn_z\", \"unit\": 9}]}]",
                              "units [9] must be")]:
        vfile.write_text(content)
        assert run("--prompts", prompts_file, "--variants", vfile, "--out", tmp_path / "y") == 2
        assert message in capsys.readouterr().err


def test_steer_grid_and_file_match_oracle(tiny, prompts_file, tmp_path, capsys):
    """steer:EMOTIONS:LAYERS x --alphas, and Steers in a variants file, from a --directions
    folder: values equal the plain-HF steering oracle."""
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(tiny.n_layers, 2, tiny.d_model, generator=g)
    dirs = EmotionDirections(vecs / vecs.norm(dim=-1, keepdim=True), ["anger", "joy"],
                             list(range(tiny.n_layers)))
    dirs.save(tmp_path / "dirs")
    out = tmp_path / "grid"
    assert run("--prompts", prompts_file, "--variants", "steer:joy,anger:1-2", "--alphas",
               "0.5,-2", "--scale", "rms", "--directions", tmp_path / "dirs", "--out", out) == 0
    doc = json.loads((out / "results.json").read_text())
    grid = [(e, layer, a) for e in ("joy", "anger") for layer in (1, 2) for a in (0.5, -2.0)]
    assert [(v["edits"][0]["label"], v["edits"][0]["layer"], v["edits"][0]["alpha"])
            for v in doc["variants"]] == grid
    want = torch.tensor([[steer_oracle(tiny, p, [Steer(layer, dirs.get(e, layer), a, "rms")],
                                       "all", KL()) for p in PROMPTS] for e, layer, a in grid])
    got = torch.tensor([v["value"] for v in doc["variants"]])
    torch.testing.assert_close(got, want.mean(1).float(), atol=scale_tol(want), rtol=0)

    spec = [{"edits": [{"layer": 0, "site": "resid_post", "emotion": "anger", "alpha": 3},
                       {"layer": 2, "site": "attn_z", "unit": 1}]}]
    vfile = tmp_path / "v.json"
    vfile.write_text(json.dumps(spec))
    assert run("--prompts", prompts_file, "--variants", vfile, "--scope", "last",
               "--directions", tmp_path / "dirs", "--out", tmp_path / "file") == 0
    doc = json.loads((tmp_path / "file" / "results.json").read_text())
    assert [e["site"] for e in doc["variants"][0]["edits"]] == ["attn_z", "resid_post"]
    items = [Edit(2, "attn_z", [1]), Steer(0, dirs.get("anger", 0), 3.0)]
    want = torch.tensor([steer_oracle(tiny, p, items, "last", KL()) for p in PROMPTS])
    assert doc["variants"][0]["value"] == pytest.approx(want.mean().item(), abs=scale_tol(want))
    for edit, message in [({"layer": 0, "site": "resid_post", "alpha": 3}, "needs layer, emotion"),
                          ({"layer": 0, "site": "resid_post", "label": "joy", "alpha": 3,
                            "rms": "false"}, "rms must be true or false")]:
        vfile.write_text(json.dumps([{"edits": [edit]}]))
        assert run("--prompts", prompts_file, "--variants", vfile, "--directions",
                   tmp_path / "dirs", "--out", tmp_path / "bad") == 2
        assert message in capsys.readouterr().err


def test_deprecated_rms_and_positions_flags(tiny, prompts_file, tmp_path, capsys):
    """--rms and --positions p keep working for one release: the same results as --scale rms and
    --scope from:p, with a warning that names the new spelling."""
    g = torch.Generator().manual_seed(1)
    vecs = torch.randn(tiny.n_layers, 1, tiny.d_model, generator=g)
    EmotionDirections(vecs / vecs.norm(dim=-1, keepdim=True), ["joy"],
                      list(range(tiny.n_layers))).save(tmp_path / "dirs")
    common = ["--prompts", prompts_file, "--variants", "steer:joy:0-1", "--alphas", "2",
              "--directions", tmp_path / "dirs"]
    assert run(*common, "--scale", "rms", "--scope", "from:2", "--out", tmp_path / "new") == 0
    with pytest.warns(DeprecationWarning):
        assert run(*common, "--rms", "--positions", "2", "--out", tmp_path / "old") == 0
    err = capsys.readouterr().err
    assert "--rms is deprecated (one release): use --scale rms" in err
    assert "--positions 2 is deprecated (one release): use --scope from:2" in err
    new, old = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("new", "old"))
    assert new["variants"] == old["variants"] and old["positions"] == 2
