"""The verified part store (emofast.report.parts): what it writes, what it refuses, what
--repair recomputes; and the folder lock and atomic writes it relies on."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from emofast.report.files import atomic_path, load_tensors, save_tensors, write_json
from emofast.report.lock import FolderBusy, folder_lock
from emofast.report.parts import PartStore, StoreError

FP = {"model": {"name": "m", "dtype": "float32"}, "n": 3}


def store(tmp_path, fp=FP, **kw):
    lines = []
    s = PartStore(tmp_path, "test", fp, log=lines.append, **kw)
    return s, lines


def filled(tmp_path):
    s, _ = store(tmp_path)
    for i in range(3):
        s.put(f"p{i}", {"x": torch.full((2, 4), float(i)), "ids": torch.tensor([i, i + 10])})
    return s


def test_round_trip_and_manifest(tmp_path):
    filled(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["parts"]
    assert sorted(manifest) == ["p0", "p1", "p2"]
    assert manifest["p1"]["shapes"] == {"x": [2, 4], "ids": [2]}
    again, lines = store(tmp_path)
    assert lines == [] and sorted(again.tensors) == ["p0", "p1", "p2"]
    assert torch.equal(again.tensors["p2"]["x"], torch.full((2, 4), 2.0))


def test_missing_part_is_said_and_dropped(tmp_path):
    filled(tmp_path)
    (tmp_path / "parts" / "p1.safetensors").unlink()
    again, lines = store(tmp_path)
    assert sorted(again.tensors) == ["p0", "p2"]
    assert len(lines) == 1 and "1 stored part(s) are missing (p1)" in lines[0]
    assert "p1" not in json.loads((tmp_path / "manifest.json").read_text())["parts"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-7])


def _garbage(path):
    path.write_bytes(os.urandom(path.stat().st_size))


def _flip_floats(path):  # same size, valid safetensors: only the checksum can tell
    t = load_tensors(path)
    t["x"][0, :3] = float("inf")
    save_tensors(path, t)


@pytest.mark.parametrize("damage, says", [(_truncate, "truncated"), (_garbage, "sha256"),
                                          (_flip_floats, "sha256")])
def test_damaged_part_refused_then_repaired(tmp_path, damage, says):
    filled(tmp_path)
    part = tmp_path / "parts" / "p2.safetensors"
    size = part.stat().st_size
    damage(part)
    assert damage is _truncate or part.stat().st_size == size
    with pytest.raises(StoreError, match=f"p2.safetensors .*{says}.*--repair"):
        store(tmp_path)
    assert part.exists()  # a refusal touches nothing
    repaired, lines = store(tmp_path, repair=True)
    assert sorted(repaired.tensors) == ["p0", "p1"] and not part.exists()
    assert "repair: recomputing 1 bad part(s)" in lines[0]
    repaired.put("p2", {"x": torch.full((2, 4), 2.0), "ids": torch.tensor([2, 12])})
    assert sorted(store(tmp_path)[0].tensors) == ["p0", "p1", "p2"]


def test_check_callback_and_shapes(tmp_path):
    filled(tmp_path)
    with pytest.raises(StoreError, match="p0.safetensors ids start at 0"):
        store(tmp_path, check=lambda name, t: "ids start at 0" if t["ids"][0] == 0 else None)


def test_damaged_manifest(tmp_path):
    filled(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest.json is damaged: rerun with --repair"):
        store(tmp_path)
    s, lines = store(tmp_path, repair=True)
    assert s.tensors == {} and "every part is recomputed" in lines[0]


def test_part_not_in_manifest_is_not_trusted(tmp_path):
    s = filled(tmp_path)
    save_tensors(s.part_path("orphan"), {"x": torch.zeros(1)})  # renamed, manifest not written
    assert "orphan" not in store(tmp_path)[0].tensors


def test_other_fingerprint_names_what_differs(tmp_path):
    filled(tmp_path)
    other = {"model": {"name": "m", "dtype": "bfloat16"}, "n": 3}
    with pytest.raises(StoreError, match=r'model.dtype: stored "float32", now "bfloat16"'):
        store(tmp_path, other)
    with pytest.raises(StoreError, match="holds a test store"):
        PartStore(tmp_path, "sae", FP, log=lambda s: None)


def test_folder_of_the_old_format_refused(tmp_path):
    (tmp_path / "parts").mkdir()
    write_json(tmp_path / "sweep.json", {"model": "m"})
    save_tensors(tmp_path / "parts" / "00000.safetensors", {"x": torch.zeros(1)})
    with pytest.raises(StoreError, match="without verified stores"):
        store(tmp_path)


def test_bad_part_name(tmp_path):
    with pytest.raises(ValueError, match="letters, digits"):
        store(tmp_path)[0].put("../escape", {"x": torch.zeros(1)})


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]


def test_load_tensors_names_the_file(tmp_path):
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="t.safetensors is not a readable safetensors file"):
        load_tensors(bad)


HOLD = ("import sys, time; from emofast.report.lock import folder_lock\n"
        "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")


def _holder(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_lock_refuses_a_second_writer_and_frees_on_death(tmp_path):
    p = _holder(tmp_path)
    try:
        with pytest.raises(FolderBusy, match=f"being written by pid {p.pid}"):
            with folder_lock(tmp_path):
                pass
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    with folder_lock(tmp_path):  # the dead holder left nothing stuck
        with folder_lock(tmp_path):  # re-entrant in one process
            pass


def test_lock_is_released_after_the_block(tmp_path):
    with folder_lock(tmp_path):
        pass
    p = _holder(tmp_path)  # another process can take it now
    p.kill()
    p.wait()
