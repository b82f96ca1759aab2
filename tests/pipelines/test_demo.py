"""The demo pipeline end to end on a tiny random model: a complete report, typed results equal to
report.json."""
import json

import pytest

from conftest import make_tiny
from emofast import report
from emofast.analysis import EmotionDirections
from emofast.data import EMOTIONS6
from emofast.pipelines import DemoConfig, run_demo


def test_demo_pipeline_writes_a_complete_report(tmp_path):
    cfg = DemoConfig(n_train_skeletons=2, n_sep_skeletons=2, n_test_skeletons=1, n_val_skeletons=1,
                     grid=((0.0, 0.34, 1.0), (0.34, 0.67, 2.0)), max_new_tokens=3, n_ppl_texts=4)
    r = run_demo(make_tiny("llama"), cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps(report.files.to_jsonable(r.to_json())))
    assert saved["steering"]["per_emotion"].keys() == r.comparison.per_emotion.keys()
    assert saved["mode"] == "custom" and set(saved["steering"]) >= {"grid", "overall"}
    for e, row in saved["steering"]["per_emotion"].items():
        assert {"unsteered", "prompted", "steered", "layers", "alpha"} <= set(row)
        assert set(saved["preservation"][e]) == {"ppl_clean", "ppl_edited", "kl_mean"}
    html = (tmp_path / "index.html").read_text()
    for png in ("basic4_separability", "basic4_pca", "sev6_separability", "sev6_pca",
                "steering_grid", "steering_accuracy"):
        assert (tmp_path / f"{png}.png").is_file() and f"{png}.png" in html
    assert EmotionDirections.load(tmp_path / "sev6").emotions == list(EMOTIONS6)


@pytest.mark.parametrize("bad, match", [
    (dict(n_test_skeletons=0), "n_test_skeletons must be an integer >= 1"),
    (dict(grid=((0.5, 0.2, 1.0),)), "0 <= first <= last <= 1"),
    (dict(grid=()), "grid must be non-empty"),
    (dict(scale="log"), "scale must be"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**bad)


def test_config_presets():
    assert DemoConfig().n_train_skeletons == 12 and DemoConfig.full().n_train_skeletons == 36
    assert DemoConfig.full().grid != DemoConfig().grid and DemoConfig() != DemoConfig.full()


def test_the_old_call_shape_fails_at_once_and_says_the_new_one(tiny_llama, tmp_path):
    with pytest.raises(TypeError, match=r"config must be a DemoConfig .* the report folder is the "
                                        "third argument"):
        run_demo(tiny_llama, tmp_path)
