"""`torchrun -m emofast sweep` on a tiny model saved to a folder: 2 processes on one node, and
two torchrun agents (--nnodes 2) meeting at a c10d rendezvous on loopback, equal one process;
`torchrun -m emofast sae train` (data and sites) writes the SAEs one process trains."""
import json
import os
import subprocess
import sys

import pytest

from conftest import free_port, make_tiny

ARGS = ["sweep", "--variants", "heads", "--metric", "kl", "--scope", "all", "--quiet",
        "--batch-size", "2"]


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


@pytest.mark.parametrize("parallel", ["data", "sites"])
def test_sae_train_under_torchrun(folder, parallel):
    """`torchrun -m emofast sae train` in 2 processes writes the SAEs one process trains."""
    import torch
    from emofast.models import load_model
    from emofast.sae import load_sae
    from emofast.sae.corpus import load_corpus
    from emofast.sae.train import SAETrainConfig, train_saes
    docs = [("the quick brown fox jumps over the lazy dog " * 3 + str(i)) for i in range(30)]
    (folder / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    flags = {"sites": "L1.resid_post,L2.mlp_act", "expansion": 4, "k": 4, "epochs": 1,
             "batch-tokens": 64, "buffer-tokens": 256, "batch-docs": 4, "max-length": 32,
             "warmup-steps": 2}
    out = folder / f"sae-{parallel}"
    cmd = ["-m", "emofast", "sae", "train", "--model", str(folder / "model"), "--corpus",
           str(folder / "corpus.txt"), "--out", str(out), "--quiet", "--no-eval",
           "--parallel", parallel] + [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    p = run([*torchrun(), "--nproc-per-node", "2", "--master-port", str(free_port()), *cmd])
    text = p.communicate(timeout=240)[0]
    assert p.returncode == 0, text
    assert text.count("; wrote ") == 1                       # rank 0 alone reports
    model = load_model(str(folder / "model"), progress=False)
    cfg = SAETrainConfig(sites=("L1.resid_post", "L2.mlp_act"), expansion=4, k=4, epochs=1,
                         batch_tokens=64, buffer_tokens=256, batch_docs=4, max_length=32,
                         warmup_steps=2)
    want = train_saes(model, load_corpus(str(folder / "corpus.txt")), cfg, progress=False)
    for site, sae in want.saes.items():
        got = load_sae(out / site, model)
        torch.testing.assert_close(got.W_dec, sae.W_dec, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(got.b_enc, sae.b_enc, atol=2e-5, rtol=1e-4)
