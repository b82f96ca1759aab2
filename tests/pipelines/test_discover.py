"""The discover pipeline end to end on a tiny random model: its report, and the circuits report
the command hands it (embedded in report.json, linked from the index)."""
import json
import shutil

import pytest

from conftest import make_tiny
from emofast.pipelines import DiscoverConfig, run_discover


class FakeCircuits:
    def to_json(self):
        return {"control": {"overall": {"modulation": 0.5}}}


def test_discover_writes_its_report_and_embeds_circuits(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path / "cache"))
    model = make_tiny("llama")
    cfg = DiscoverConfig(n_skeletons=1, k_max=3, k_verify=4, batch_size=4, emotions=("fear",),
                         feeling_words=tuple((w,) for w in "ABCDEF"))  # one byte token each
    alone = run_discover(model, cfg, tmp_path / "a", progress=False)
    saved = json.loads((tmp_path / "a" / "report.json").read_text())
    assert "circuits" not in saved and set(saved["emotions"]) == {"fear"}
    assert saved["emotions"]["fear"]["ks"] == [1, 2, 3] and alone.mode == "custom"
    assert "circuits/index.html" not in (tmp_path / "a" / "index.html").read_text()
    (tmp_path / "b" / "circuits").mkdir(parents=True)   # where the command writes it first
    shutil.copy(tmp_path / "a" / "topk_heads.png", tmp_path / "b" / "circuits" / "control_accuracy.png")
    run_discover(model, cfg, tmp_path / "b", circuits=FakeCircuits(), progress=False)
    saved = json.loads((tmp_path / "b" / "report.json").read_text())
    assert saved["circuits"] == FakeCircuits().to_json()
    assert "circuits/index.html" in (tmp_path / "b" / "index.html").read_text()


@pytest.mark.parametrize("bad, match", [(dict(emotions=("joy",)), "emotions must be some of"),
                                        (dict(emotions=None), "emotions must be some of"),
                                        (dict(k_max=0), "k_max must be an integer >= 1")])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        DiscoverConfig(**bad)
