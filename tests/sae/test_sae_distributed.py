"""SAE training across processes (gloo on CPU, torch.multiprocessing): data parallel and
site-parallel runs on 2 (and 3) ranks equal one process for every method, an uneven split of
sites (a rank owning none) finishes, and a checkpoint written by 2 ranks resumes in one process
to the uninterrupted result; plus the splitting helpers."""
import dataclasses
import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import free_port, make_tiny
from emofast.sae.distributed import my_forwards, site_owners
from emofast.sae.train import SAETrainConfig, train_saes

DOCS = [("the quick brown fox jumps over the lazy dog " * 3 + str(i)) for i in range(40)]
CFG = SAETrainConfig(sites=("L1.resid_post", "L2.mlp_act", "L0.resid_post"), expansion=4, k=4,
                     epochs=2, batch_tokens=64, buffer_tokens=256, batch_docs=4, max_length=32,
                     warmup_steps=2, dead_tokens=100, auxk_coeff=1 / 8)


def worker(rank, world, port, root, runs, die_after):
    os.environ["EMOFAST_DIST_TIMEOUT"] = "20"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=20))
    model = make_tiny("llama")
    if die_after is not None and rank == 1:
        import emofast.sae.train as train
        real, calls = train._train_fill, []

        def dying(*a, **k):
            out = real(*a, **k)
            calls.append(1)
            if len(calls) >= die_after:
                os._exit(0)                      # dies without a word, mid-run
            return out
        train._train_fill = dying
    for name, cfg, out in runs:
        res = train_saes(model, DOCS, cfg, out=out, progress=False)
        torch.save({"saes": {s: sae.state_dict() for s, sae in res.saes.items()},
                    "history": res.history, "tokens": res.tokens},
                   f"{root}/{name}-rank{rank}.pt")
    dist.destroy_process_group()


def spawn(world, root, runs, die_after=None):
    mp.spawn(worker, args=(world, free_port(), str(root), runs, die_after), nprocs=world,
             join=True)


def assert_same(got: dict, want, atol=2e-5):
    assert got["tokens"] == want.tokens
    for site, sae in want.saes.items():
        for k, v in sae.state_dict().items():
            torch.testing.assert_close(got["saes"][site][k], v, atol=atol, rtol=1e-4,
                                       msg=f"{site} {k}")
    for a, b in zip(got["history"], want.history):
        for site in want.saes:
            assert a[site]["fvu"] == pytest.approx(b[site]["fvu"], rel=1e-4, abs=1e-6)


METHOD_CFGS = {m: dataclasses.replace(CFG, method=m) for m in
               ("topk", "batchtopk", "standard", "jumprelu")}


def test_two_ranks_equal_one_process(tmp_path):
    runs = [(f"{m}-{p}", dataclasses.replace(c, parallel=p), None)
            for m, c in METHOD_CFGS.items() for p in ("data", "sites")]
    # with a folder: rank 0's activation cache feeds epoch 2 (read there, broadcast)
    runs.append(("cached", CFG, str(tmp_path / "cached")))
    spawn(2, tmp_path, runs)
    model = make_tiny("llama")
    assert any((tmp_path / "cached" / "activations").iterdir())
    for rank in (0, 1):
        assert_same(torch.load(tmp_path / f"cached-rank{rank}.pt", weights_only=False),
                    train_saes(model, DOCS, CFG, progress=False))
    for m, cfg in METHOD_CFGS.items():
        want = train_saes(model, DOCS, cfg, progress=False)
        for p in ("data", "sites"):
            for rank in (0, 1):
                got = torch.load(tmp_path / f"{m}-{p}-rank{rank}.pt", weights_only=False)
                assert_same(got, want)


def test_uneven_split_of_sites(tmp_path):
    one_site = dataclasses.replace(CFG, sites=("L1.resid_post",), parallel="sites")
    spawn(3, tmp_path, [("one", one_site, None)])          # two ranks own no SAE
    want = train_saes(make_tiny("llama"), DOCS, one_site, progress=False)
    for rank in range(3):
        assert_same(torch.load(tmp_path / f"one-rank{rank}.pt", weights_only=False), want)


def test_dead_rank_fails_and_one_process_resumes(tmp_path):
    cfg = dataclasses.replace(CFG, checkpoint_every=1)
    with pytest.raises(Exception):
        spawn(2, tmp_path, [("run", cfg, str(tmp_path / "run"))], die_after=2)
    model = make_tiny("llama")
    again = train_saes(model, DOCS, cfg, out=tmp_path / "run", progress=False)
    assert 0 < again.resumed_from < again.tokens
    want = train_saes(model, DOCS, cfg, progress=False)
    assert_same({"saes": {s: x.state_dict() for s, x in again.saes.items()},
                 "history": again.history, "tokens": again.tokens}, want)


def test_site_owners_balance_and_agree():
    sites = ["a", "b", "c", "d", "e"]
    owner = site_owners(sites, {"a": 10, "b": 30, "c": 10, "d": 20, "e": 10}, 2)
    loads = [sum(w for s, w in zip(sites, [10, 30, 10, 20, 10]) if owner[s] == r)
             for r in (0, 1)]
    assert sorted(loads) == [40, 40]
    assert set(site_owners(["a"], {"a": 1}, 3).values()) == {0}


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_forwards_cut_covers_everything_once(world):
    sizes = [5, 1, 8, 3, 3, 9, 2]
    parts = [my_forwards(sizes, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(len(sizes)))
    assert all(p.start <= p.stop for p in parts)
