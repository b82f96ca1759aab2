"""Extraction, the `emofast` command and the demo pipeline, end to end on a tiny random model."""
import json

import pytest
import torch

from conftest import make_tiny
from emofast.cli import main
from emofast.data import EMOTIONS6, load_skeletons, sev_prompts
from emofast.directions import EmotionDirections
from emofast.extract import expressed_activations, sev_directions


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    m = make_tiny("llama")
    m.hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return folder


def test_expressed_activations_average_exactly_the_prefill_tokens():
    m = make_tiny("llama")
    prompts = sev_prompts(load_skeletons("sev6", split="train")[:1], instructed=False, prefill=True)[:2]
    got = expressed_activations(m, prompts, progress=False)                  # [L, 2, d]
    for i, p in enumerate(prompts):
        enc = m.encode([m.chat_text(p)], templated=True)
        with torch.no_grad():
            hs = m.forward(enc["input_ids"], enc["attention_mask"], output_hidden_states=True).hidden_states
        n = len(p.prefill.encode())                                       # byte tokenizer
        torch.testing.assert_close(got[1, i], hs[2][0, -n:].mean(0), atol=1e-5, rtol=1e-4)
    dirs = sev_directions(m, load_skeletons("sev6", split="train")[:2], progress=False)
    assert dirs.vectors.shape == (3, 6, m.d_model) and dirs.method == "group_centred_expressed"


def test_directions_command(tiny_folder, tmp_path, capsys):
    evalset = tmp_path / "eval.jsonl"
    evalset.write_text("\n".join(json.dumps({"text": t, "label": l}) for t, l in [
        ("Thanks so much for the ride!", "gratitude"), ("I am livid about this.", "anger"),
        ("Sorry, my mistake.", "apology"), ("The shop opens at nine.", "neutral")]) + "\n")
    out = tmp_path / "dirs"
    rc = main(["directions", "--model", str(tiny_folder), "--train", "basic4", "--eval", str(evalset),
               "--layers", "0-2", "--out", str(out), "--quiet"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert [x["layer"] for x in metrics["layers"]] == [0, 1, 2]
    assert set(metrics["layers"][0]) == {"layer", "probe_acc", "centroid_acc"}
    assert metrics["best_layer"] in (0, 1, 2) and metrics["n_eval"] == 4
    dirs = EmotionDirections.load(out)
    assert dirs.emotions == ["anger", "apology", "gratitude"] and dirs.baseline == "neutral"
    assert (out / "separability.png").is_file() and (out / "probe.safetensors").is_file()
    assert "best layer" in capsys.readouterr().out

    rc = main(["steer", "--model", str(tiny_folder), "--directions", str(out), "--emotion", "anger",
               "--layers", "1", "--alpha", "2", "--prompt", "hello", "--max-new-tokens", "3",
               "--compare", "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0 and "[unsteered]" in printed and "[anger x2 at L1-1]" in printed
    rc = main(["steer", "--model", str(tiny_folder), "--directions", str(out), "--emotion", "anger",
               "--layers", "7", "--alpha", "2", "--prompt", "hello", "--quiet"])
    assert rc == 2 and "layer 7 out of range" in capsys.readouterr().err


def test_demo_pipeline_writes_a_complete_report(tmp_path):
    from emofast.demo import DemoConfig, run_demo

    cfg = DemoConfig(n_train_skeletons=2, n_sep_skeletons=2, n_test_skeletons=1, n_val_skeletons=1,
                     grid=((0.0, 0.34, 1.0), (0.34, 0.67, 2.0)), max_new_tokens=3, n_ppl_texts=4)
    r = run_demo(make_tiny("llama"), tmp_path, progress=False, config=cfg)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["steering"]["per_emotion"].keys() == r["steering"]["per_emotion"].keys()
    for e, row in saved["steering"]["per_emotion"].items():
        assert {"unsteered", "prompted", "steered", "layers", "alpha"} <= set(row)
        assert set(saved["preservation"][e]) == {"ppl_clean", "ppl_edited", "kl_mean"}
    html = (tmp_path / "index.html").read_text()
    for png in ("basic4_separability", "basic4_pca", "sev6_separability", "sev6_pca",
                "steering_grid", "steering_accuracy"):
        assert (tmp_path / f"{png}.png").is_file() and f"{png}.png" in html
    assert EmotionDirections.load(tmp_path / "sev6").emotions == list(EMOTIONS6)


def test_cached_sev_directions_are_reused(monkeypatch, tmp_path):
    from emofast.extract import cached_sev_directions

    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path))
    m = make_tiny("llama")
    skeletons = load_skeletons("sev6", split="train")[:2]
    first = cached_sev_directions(m, skeletons, progress=False)
    [entry] = list((tmp_path / "directions").iterdir())
    assert not entry.name.endswith(".tmp") and (entry / "directions.safetensors").is_file()
    again = cached_sev_directions(m, skeletons, progress=False)
    assert torch.equal(first.vectors, again.vectors)
    other = make_tiny("llama")
    other.hf.to(torch.float64)                           # same name, other dtype: a new entry
    cached_sev_directions(other, skeletons, progress=False)
    assert len(list((tmp_path / "directions").iterdir())) == 2


def test_default_directions(monkeypatch, tmp_path):
    """A folder when given, else the sev6 directions of every train skeleton, independently
    computed by sev_directions."""
    from emofast.extract import default_directions

    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path / "cache"))
    m = make_tiny("llama")
    want = sev_directions(m, load_skeletons("sev6", split="train"), progress=False)
    got = default_directions(m, progress=False)
    torch.testing.assert_close(got.vectors, want.vectors)
    want.save(tmp_path / "saved")
    assert torch.equal(default_directions(m, tmp_path / "saved").vectors, want.vectors)
