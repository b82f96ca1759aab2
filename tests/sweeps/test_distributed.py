"""Sweeps across processes (gloo on CPU, torch.multiprocessing): two ranks equal one process for
heads, neurons and Steers; a rank that dies leaves a clear error and its finished chunks, and the
sweep resumes in one process computing only the rest; bad input is refused."""
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from emofast.sweeps import KL, Edit, Steer, sweep
from emofast.sweeps.distributed import share

from conftest import free_port, make_tiny
from oracles import PROMPTS


def variants(model, kind):
    if kind == "heads":
        return [[Edit(l, "attn_z", [h])] for l in range(model.n_layers)
                for h in range(model.n_heads)]
    if kind == "neurons":
        return [[Edit(l, "mlp_act", [n, n + 1], mode="mean")] for l in range(model.n_layers)
                for n in range(0, 12, 3)]
    g = torch.Generator().manual_seed(0)
    return [[Steer(l, torch.randn(model.d_model, generator=g), a)]
            for l in range(model.n_layers) for a in (0.5, 2.0)]


def worker(rank, world, port, root, kinds, die_after):
    os.environ["EMOFAST_DIST_TIMEOUT"] = "20"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    model = make_tiny("llama")
    if die_after is not None and rank == 1:
        import emofast.sweeps.batched as batched
        real, calls = batched.finish, []

        def dying(job, ids):
            real(job, ids)
            calls.append(1)
            if len(calls) >= die_after:
                os._exit(0)                      # dies without a word, mid-sweep
        batched.finish = dying
    for kind in kinds:
        res = sweep(model, PROMPTS, variants(model, kind), KL(), out=f"{root}/{kind}",
                    batch_size=2, memory_budget=200_000, progress=False)
        torch.save({"values": res.per_prompt, "resumed": res.resumed},
                   f"{root}/{kind}-rank{rank}.pt")
    dist.destroy_process_group()


def spawn(world, root, kinds, die_after=None):
    mp.spawn(worker, args=(world, free_port(), str(root), kinds, die_after), nprocs=world,
             join=True)


def test_two_ranks_equal_one_process(tmp_path):
    kinds = ["heads", "neurons", "steer"]
    spawn(2, tmp_path, kinds)
    model = make_tiny("llama")
    for kind in kinds:
        want = sweep(model, PROMPTS, variants(model, kind), KL(), batch_size=2,
                     progress=False).per_prompt
        for rank in (0, 1):
            got = torch.load(tmp_path / f"{kind}-rank{rank}.pt", weights_only=True)["values"]
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        saved = json.loads((tmp_path / kind / "results.json").read_text())
        assert saved["n_variants"] == len(variants(model, kind))
        assert len(list((tmp_path / kind / "ranks").iterdir())) == 2   # each rank its store


def test_a_dead_rank_fails_loudly_and_the_sweep_resumes_with_another_world_size(tmp_path):
    with pytest.raises(Exception, match="waiting for every rank's chunks"):
        spawn(2, tmp_path, ["heads"], die_after=1)
    model = make_tiny("llama")
    vs = variants(model, "heads")
    assert not (tmp_path / "heads" / "results.json").exists()
    res = sweep(model, PROMPTS, vs, KL(), out=tmp_path / "heads", batch_size=2,
                memory_budget=200_000, progress=False)         # one process resumes
    assert 0 < res.resumed < len(vs)                                # rank 0's + rank 1's first
    want = sweep(model, PROMPTS, vs, KL(), batch_size=2, progress=False).per_prompt
    torch.testing.assert_close(res.per_prompt, want, rtol=1e-5, atol=1e-6)
    again = sweep(model, PROMPTS, vs, KL(), out=tmp_path / "heads", batch_size=2,
                  memory_budget=200_000, progress=False)
    assert again.resumed == len(vs)                                 # nothing computed twice


def test_share_cuts_by_cost_and_refuses_more_ranks_than_variants():
    vs = [[Edit(l, "attn_z", [0])] for l in (0, 0, 5, 9, 9, 9)]
    shares = [share(vs, list(range(6)), 10, r, 3) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(6)) and all(shares)
    assert shares[0][0] == 0                                        # ordered by first layer
    with pytest.raises(ValueError, match="at most 2 process"):
        share(vs, [0, 1], 10, 0, 3)


def test_a_distributed_sweep_needs_an_output_folder(tmp_path, monkeypatch):
    import emofast.sweeps.api as api
    monkeypatch.setattr(api, "world", lambda: (0, 2))
    model = make_tiny("llama")
    with pytest.raises(ValueError, match="out=DIR"):
        sweep(model, PROMPTS, variants(model, "heads")[:4], KL(), progress=False)


def test_a_folder_of_another_sweep_is_refused_on_every_rank(tmp_path):
    model = make_tiny("llama")
    sweep(model, PROMPTS, variants(model, "neurons"), KL(), out=tmp_path / "heads",
          batch_size=2, progress=False)                  # another sweep in the same folder
    with pytest.raises(Exception, match="different sweep"):
        spawn(2, tmp_path, ["heads"])
