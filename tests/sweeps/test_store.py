"""A sweep's folder cannot mix or lose results: deleted, truncated, garbage and same-size
corrupted parts, a changed dtype, weights, engine or batch size, two writers at once, a
non-finite metric and Ctrl-C each end in a result equal to an uninterrupted run or in a clear
refusal (emofast.sweeps.store on emofast.report.parts)."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import make_tiny
from emofast.report.files import load_tensors, save_tensors
from emofast.report.parts import StoreError
from emofast.sweeps import Edit, LogitDiff, Steer, sweep
from emofast.validation import Interrupted, NonFiniteError
from oracles import PROMPTS, Interrupting, loud, random_variants

METRIC = LogitDiff([65], [66])
KW = dict(progress=False, batch_size=2, memory_budget=300_000)


@pytest.fixture(scope="module")
def model():
    return loud(make_tiny("gpt2"))


@pytest.fixture(scope="module")
def variants(model):
    return random_variants(model, 40, seed=3)


@pytest.fixture(scope="module")
def whole(model, variants):
    return sweep(model, PROMPTS, variants, METRIC, **KW)


def parts(out):
    return sorted((out / "parts").glob("*.safetensors"))


@pytest.mark.parametrize("engine", ["batched", "loop"])
def test_deleted_part_recomputes_only_its_variants(model, variants, tmp_path, engine):
    kw = {**KW, "engine": engine}
    first = sweep(model, PROMPTS, variants, METRIC, out=tmp_path, **kw)
    assert len(parts(tmp_path)) > 2
    for rerun in range(2):  # twice: a count-named part would overwrite another the 2nd time
        victim = parts(tmp_path)[1]
        lost = len(load_tensors(victim)["variant_ids"])
        victim.unlink()
        counting = Interrupting([65], [66])
        res = sweep(model, PROMPTS, variants, counting, out=tmp_path, **kw)
        assert res.resumed == len(variants) - lost
        assert counting.rows == lost * len(PROMPTS)  # nothing else recomputed
        assert torch.equal(res.per_prompt, first.per_prompt)
    stored = sorted(i for p in parts(tmp_path) for i in load_tensors(p)["variant_ids"].tolist())
    assert stored == list(range(len(variants)))


def _inf(path):
    t = load_tensors(path)
    t["per_prompt"][0, :3] = float("inf")
    save_tensors(path, t)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-9])


@pytest.mark.parametrize("damage", [_inf, _truncate])
def test_damaged_part_refused_then_repaired(model, variants, whole, tmp_path, damage):
    sweep(model, PROMPTS, variants, METRIC, out=tmp_path, **KW)
    victim = parts(tmp_path)[0]
    damage(victim)
    results = (tmp_path / "results.json").read_bytes()
    with pytest.raises(StoreError, match=f"{victim.name} .*--repair"):
        sweep(model, PROMPTS, variants, METRIC, out=tmp_path, **KW)
    assert (tmp_path / "results.json").read_bytes() == results  # a refusal damages nothing
    res = sweep(model, PROMPTS, variants, METRIC, out=tmp_path, repair=True, **KW)
    assert 0 < res.resumed < len(variants)
    torch.testing.assert_close(res.per_prompt, whole.per_prompt, atol=1e-6, rtol=0)
    assert torch.isfinite(res.values).all()


@pytest.mark.parametrize("change, says", [
    (lambda m: m.hf.to(torch.bfloat16), 'model.dtype: stored "float32", now "bfloat16"'),
    (lambda m: m.hf.transformer.h[0].mlp.c_fc.weight.data.mul_(2), "model.weights_sha256"),
])
def test_other_model_state_refused(variants, tmp_path, change, says):
    model = loud(make_tiny("gpt2"))
    v = variants[:6]
    sweep(model, PROMPTS, v, METRIC, out=tmp_path, **KW)
    change(model)
    with pytest.raises(StoreError, match=says):
        sweep(model, PROMPTS, v, METRIC, out=tmp_path, **KW)


@pytest.mark.parametrize("kw, says", [({"engine": "loop"}, "engine"),
                                      ({"batch_size": 3}, "batch_size"),
                                      ({"scope": "last"}, "scope")])
def test_other_run_settings_refused(model, variants, tmp_path, kw, says):
    v = [x for x in variants if all(e.pos_start == 0 for e in x)][:4]
    sweep(model, PROMPTS, v, METRIC, out=tmp_path, **KW)
    with pytest.raises(StoreError, match=f"different sweep .*{says}"):
        sweep(model, PROMPTS, v, METRIC, out=tmp_path, **{**KW, **kw})


def test_final_files_are_whole_and_nothing_temporary_is_left(model, variants, tmp_path):
    sweep(model, PROMPTS, variants[:5], METRIC, out=tmp_path, **KW)
    names = {p.name for p in tmp_path.rglob("*")}
    assert not [n for n in names if n.endswith(".tmp")]
    assert {"store.json", "manifest.json", "results.json", "results.safetensors"} <= names
    assert json.loads((tmp_path / "results.json").read_text())["n_variants"] == 5


def test_second_writer_refused(model, variants, tmp_path):
    code = ("import sys, time; from emofast.report.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OSError, match="is being written by pid"):
            sweep(model, PROMPTS, variants[:3], METRIC, out=tmp_path, **KW)
    finally:
        p.kill()
        p.wait()
    assert sweep(model, PROMPTS, variants[:3], METRIC, out=tmp_path, **KW).resumed == 0


def test_interrupt_says_what_is_saved(model, variants, tmp_path):
    with pytest.raises(Interrupted, match=r"sweep interrupted: \d+ of 40 variants are saved in "):
        sweep(model, PROMPTS, variants, Interrupting([65], [66], interrupt_at=25), out=tmp_path, **KW)
    assert parts(tmp_path) and not (tmp_path / "results.json").exists()


def test_non_finite_metric_names_the_variant(model, tmp_path):
    v = torch.ones(model.d_model)
    variants = [[Edit(0, "mlp_act", [1])], [Steer(1, v, 1e30)]]
    for out in (None, tmp_path):
        with pytest.raises(NonFiniteError, match="variant 1 gives a non-finite metric"):
            sweep(model, PROMPTS, variants, METRIC, out=out, **KW)
