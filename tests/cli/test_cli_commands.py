"""`emofast directions` and `emofast steer` end to end on a tiny random model saved as a folder;
config flags of the pipeline commands."""
import json

import pytest
import torch

from conftest import make_tiny
from emofast.analysis import EmotionDirections
from emofast.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    m = make_tiny("llama")
    m.hf.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return folder


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
    assert rc == 0 and "[unsteered]" in printed and "[anger x2 at layers 1]" in printed
    rc = main(["steer", "--model", str(tiny_folder), "--directions", str(out), "--emotion", "anger",
               "--layers", "7", "--alpha", "2", "--prompt", "hello", "--quiet"])
    assert rc == 2 and "layer 7 out of range" in capsys.readouterr().err
