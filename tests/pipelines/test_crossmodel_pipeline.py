"""`emofast crossmodel` end to end on two tiny random models of different families and widths
(Llama, Gemma 3), through the library and the command; config validation."""
import json

import pytest

from conftest import make_tiny
from emofast.cli import main
from emofast.pipelines import CrossModelConfig, run_crossmodel

WORDS = tuple((w,) for w in "ABCDEF")        # one byte token each (the tiny tokenizer)
SMALL = dict(n_per_emotion=6, n_general=24, k_max=3, pair_stride=2, n_patch_prompts=2,
             max_new_tokens=3, patch_alphas=(2.0, 4.0), feeling_words=WORDS)


def test_crossmodel_report(tmp_path):
    a, b = make_tiny("llama"), make_tiny("gemma3_text", sliding_window=512)
    r = run_crossmodel([a, b], CrossModelConfig(**SMALL), tmp_path, progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [m["name"] for m in saved["models"]] == ["tiny-llama", "tiny-gemma3_text"]
    assert saved["n_texts"] == {"emotion": 6 * 9, "neutral": 128 + 24, "baseline": 128}
    pairs = saved["pairs"]
    assert pairs["ks"] == [1, 2, 3] and pairs["layers_x"] == [0, 2]
    for name in ("before", "chance", "ridge", "procrustes", "shuffled"):
        assert len(pairs["curves"][name]) == 3
        assert all(0 <= v <= 1 + 1e-6 for v in pairs["curves"][name])
    side = saved["models"][1]
    assert len(side["stability"]["mean"]["split_half"]) == 3                 # layers
    assert len(side["stability"]["mean"]["split_half"][0]) == 8               # emotions
    assert len(side["heads"]["effect"][0]) == 3 and len(side["heads"]["effect"][0][0]) == 4
    p = side["patching"]
    assert p["alphas"] == [0.0, 2.0, 4.0] and len(p["judge"]["random"]) == 4
    base = [p["judge"]["direction"][e][li][0] for e in range(4) for li in range(len(p["layers"]))]
    assert len(set(base)) <= 4                       # alpha 0: one unsteered baseline per emotion
    assert len(r.verdicts) == 7 + 2 * 2
    assert {v["verdict"] for v in r.verdicts} <= {"reproduced", "not reproduced",
                                                  "not comparable", "-"}
    html = (tmp_path / "index.html").read_text()
    assert "The preprint beside emofast" in html and "Procrustes" in html
    for png in ("overlap_vs_k.png", "pairs_ridge.png", "stability_tiny-llama.png",
                "patch_random_tiny-gemma3-text.png", "heads_tiny-gemma3-text.png"):
        assert (tmp_path / png).is_file(), png


def test_crossmodel_command_checks_its_models(capsys):
    assert main(["crossmodel", "--models", "smollm2-135m-instruct"]) == 2
    assert "two different models" in capsys.readouterr().err


@pytest.mark.parametrize("bad, match", [
    (dict(n_per_emotion=3), "n_per_emotion must be >= 4"),
    (dict(patch_alphas=(0.0, 1.0)), "patch_alphas must be > 0"),
    (dict(patch_depths=(1.5,)), r"patch_depths must lie in \[0, 1\]"),
    (dict(patch_emotions=("gratitude",)), "patch_emotions must be some of"),
    (dict(k_max=0), "k_max must be an integer >= 1")])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        CrossModelConfig(**bad)


def test_needs_two_models(tmp_path):
    with pytest.raises(ValueError, match="compares two models, got 1"):
        run_crossmodel([make_tiny("llama")], CrossModelConfig(**SMALL), tmp_path, progress=False)
