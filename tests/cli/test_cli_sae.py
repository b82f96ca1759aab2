"""`emofast sae train` and `emofast sae eval` on a tiny model: flags onto SAETrainConfig, a
folder per site that `sae eval` reads, a rerun that resumes, bad flags refused."""
import json

import pytest

import emofast.cli as cli
import emofast.cli.common
from conftest import make_tiny


@pytest.fixture
def tiny(monkeypatch):
    model = make_tiny("gpt2")
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    return model


def test_train_then_eval(tiny, tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(f"some words about things number {i} " * 4 for i in range(30)))
    out = tmp_path / "saes"
    argv = ["sae", "train", "--quiet", "--corpus", str(corpus), "--sites", "L1.resid_post",
            "--expansion", "2", "--k", "4", "--batch-tokens", "64", "--buffer-tokens", "128",
            "--max-length", "32", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "L1.resid_post: training fvu" in printed and "held-out fvu" in printed
    held_out = json.loads((out / "L1.resid_post" / "evaluation.json").read_text())
    assert held_out["texts"] == "neutral_sentences" and held_out["n_tokens"] > 0
    assert (out / "L1.resid_post" / "sparsity.safetensors").is_file()
    assert len(list((out / "activations" / "parts").glob("fill-*"))) > 0  # epochs 10: cached
    assert "activation cache kept for reuse" in printed
    assert cli.main(["sae", "eval", "--quiet", "--sae", str(out / "L1.resid_post"), "--texts",
                     str(corpus), "--out", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["site"] == "L1.resid_post" and 0 < ev["fvu"] and ev["n_tokens"] > 0
    assert cli.main(argv) == 0  # finished: resumes from the last checkpoint, trains nothing
    assert "resumed" in capsys.readouterr().out


def test_bad_flags(tiny, capsys):
    with pytest.raises(SystemExit):
        cli.main(["sae", "train", "--k", "x"])
    assert cli.main(["sae", "train", "--k", "0", "--corpus", "default"]) == 2
    assert "k must be an integer >= 1" in capsys.readouterr().err


def test_methods_and_corpus_flags(tiny, tmp_path):
    docs = tmp_path / "d.jsonl"
    docs.write_text("".join(json.dumps({"body": f"words and more words {i} " * 5}) + "\n"
                            for i in range(40)))
    out = tmp_path / "saes"
    argv = ["sae", "train", "--quiet", "--corpus", "hf:json", "--corpus-files", str(docs),
            "--corpus-column", "body", "--max-docs", "30", "--sites", "L0.resid_post",
            "--method", "batchtopk", "--expansion", "2", "--k", "4", "--epochs", "1",
            "--batch-tokens", "64", "--buffer-tokens", "128", "--max-length", "32", "--no-eval",
            "--out", str(out)]
    pytest.importorskip("datasets")
    assert cli.main(argv) == 0
    cfg = json.loads((out / "L0.resid_post" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and not (out / "L0.resid_post" /
                                                      "evaluation.json").exists()
    assert not (out / "activations").exists()
