"""`torchrun -m emofast sweep` on a tiny model saved to a folder: 2 processes on one node, and
two torchrun agents (--nnodes 2) meeting at a c10d rendezvous on loopback, equal one process."""
import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import make_tiny

ARGS = ["sweep", "--variants", "heads", "--metric", "kl", "--scope", "all", "--quiet",
        "--batch-size", "2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    model = make_tiny("llama")
    model.hf.save_pretrained(root / "model")
    model.tokenizer.save_pretrained(root / "model")
    (root / "prompts.txt").write_text("hello there\na\nthe quick brown fox\nabc def\nxyzzy!\n")
    return root


def run(cmd, env=None, timeout=240):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "EMOFAST_DIST_TIMEOUT": "60", **(env or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def values(out):
    return [v["value"] for v in json.loads((out / "results.json").read_text())["variants"]]


def common(folder, out):
    return ARGS + ["--model", str(folder / "model"), "--prompts", str(folder / "prompts.txt"),
                   "--out", str(out)]


def single(folder):
    out = folder / "single"
    if not (out / "results.json").exists():
        p = run([sys.executable, "-m", "emofast", *common(folder, out)])
        assert p.wait(240) == 0, p.stdout.read()
    return values(out)


def torchrun():
    return [sys.executable, "-m", "torch.distributed.run"]


def test_two_processes_on_one_node(folder):
    out = folder / "two"
    p = run([*torchrun(), "--nproc-per-node", "2", "--master-port", str(free_port()),
             "-m", "emofast", *common(folder, out)])
    text = p.communicate(timeout=240)[0]
    assert p.returncode == 0, text
    assert text.count("variants x") == 1                    # rank 0 alone reports
    assert values(out) == pytest.approx(single(folder), rel=1e-5, abs=1e-6)
    assert sorted(d.name for d in (out / "ranks").iterdir()) == ["0", "1"]


def test_two_agents_over_loopback(folder):
    out = folder / "nodes"
    port = free_port()
    agents = [run([*torchrun(), "--nnodes", "2", "--node-rank", str(rank),
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "emofast-test",
                   "-m", "emofast", *common(folder, out)]) for rank in (0, 1)]
    texts = [a.communicate(timeout=240)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], texts
    assert values(out) == pytest.approx(single(folder), rel=1e-5, abs=1e-6)


@pytest.mark.gpu
def test_a_world_of_one_runs_the_distributed_path(folder, gpu):
    """The device check's NCCL run (gloo in its CPU smoke): torchrun --nproc-per-node 1."""
    out = folder / f"one-{gpu.type}"
    p = run([*torchrun(), "--nproc-per-node", "1", "--master-port", str(free_port()),
             "-m", "emofast", *common(folder, out), "--device", gpu.type, "--dtype", "float32"])
    text = p.communicate(timeout=240)[0]
    assert p.returncode == 0, text
    assert (out / "ranks" / "0").is_dir()                     # the distributed path ran
    assert values(out) == pytest.approx(single(folder), rel=1e-3, abs=1e-4)
