"""`emofast judge train|eval`: a round trip on a tiny labelled file (the real encoder, offline)."""
import json
import re

from emofast.cli import main
from emofast.data import EMOTIONS6
from emofast.eval import judge as J


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
    assert main(["judge", "train", "--train", str(data), "--eval", str(data),
                   "--out", str(prefix), "--quiet"]) == 0
    record = json.loads(prefix.with_suffix(".json").read_text())
    assert record["train"]["name"] == "tiny.jsonl" and record["train"]["examples"] == 12
    assert record["train"]["bytes"] == data.stat().st_size
    assert record["eval"]["accuracy"] == 1.0  # 12 points in 384 dims: separable
    weight, bias, labels = J.load_head(prefix.with_suffix(".safetensors"))
    assert labels == EMOTIONS6 and weight.shape == (6, 384)
    capsys.readouterr()
    assert main(["judge", "eval", "--data", str(data), "--head", str(prefix), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"overall\s+12\s+1\.0000", out), out
