"""Sweeps across processes: `ef.sweep` inside a torch.distributed program (torchrun; NCCL on
GPUs, gloo on CPUs, one node or many) divides the variants still to do between the ranks.

    torchrun --nproc-per-node 2 -m emofast sweep ... --out DIR      # or ef.sweep(..., out=DIR)

- The output folder must be one every rank sees (a shared filesystem across nodes). Rank r
  writes its finished chunks to its own verified store, DIR/ranks/<r> (same fingerprint as
  DIR); single-process runs write DIR itself. What is done is the union of DIR and every
  DIR/ranks/*, read by every rank before any work: a run interrupted with any world size
  resumes with any other (or in one process), computing nothing twice.
- The variants still to do, ordered by their first edited layer (so a rank's chunks share
  prefixes as a single process's would), are cut into W contiguous shares of equal estimated
  cost (layers computed: n_layers - first edited layer), the same cut on every rank.
- Each rank runs its share with the batched (or loop) engine on its own device; rank 0's
  progress bar counts every rank's stored variants. When all are done rank 0 reads every
  store and writes results.json; every rank returns the same SweepResult (per-variant values
  equal a single process's up to the last bits of a GEMM whose batch size differs).
- A rank that dies makes the others fail at the next barrier after EMOFAST_DIST_TIMEOUT
  seconds (default 1800; gloo names the missing rank), the finished chunks kept for a resume.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..processes import barrier

RANKS_DIR = "ranks"


def rank_dirs(out: str | os.PathLike) -> list[Path]:
    """Every DIR/ranks/<r> store a (current or earlier) distributed run left."""
    root = Path(out) / RANKS_DIR
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if (p / "store.json").is_file()),
                  key=lambda p: p.name)


def share(variants: list[tuple], todo: list[int], n_layers: int, rank: int,
          world_size: int) -> list[int]:
    """Rank `rank`'s contiguous share of `todo`, ordered by first edited layer, cut at equal
    estimated cost (see the module docstring). Every rank gets at least one variant."""
    if len(todo) < world_size:
        raise ValueError(f"sweep across {world_size} processes has {len(todo)} variant(s) "
                         f"left to compute: run it with at most {max(len(todo), 1)} "
                         "process(es)")

    def first(i):
        layers = [e.layer for e in variants[i] if hasattr(e, "layer")]
        return min(layers) if layers else 0
    order = sorted(todo, key=lambda i: (first(i), i))
    prefix = [0]
    for i in order:
        prefix.append(prefix[-1] + n_layers - first(i) + 1)     # +1: the unembedding
    n = len(order)
    cuts = [0]
    for k in range(1, world_size):
        j = next(j for j in range(n + 1) if prefix[j] >= prefix[-1] * k / world_size)
        cuts.append(min(max(j, cuts[-1] + 1), n - (world_size - k)))
    cuts.append(n)
    return order[cuts[rank]:cuts[rank + 1]]


class PolledBar:
    """Rank 0's progress bar: its own finished variants plus those the other ranks' stores
    list (polled at each update)."""

    def __init__(self, bar, initial: int, others: list[Path], initial_others: int):
        self.bar, self.initial, self.others, self.base = bar, initial, others, initial_others
        self.own = 0

    def update(self, n: int) -> None:
        self.own += n
        seen = stored_count(self.others) - self.base
        self.bar.n = self.initial + self.own + max(seen, 0)
        self.bar.refresh()

    def write(self, s: str) -> None:
        self.bar.write(s)

    def close(self) -> None:
        self.bar.close()


def stored_count(dirs: list[Path]) -> int:
    """Variants listed in the manifests of `dirs` (for rank 0's progress bar; not verified)."""
    import json

    n = 0
    for d in dirs:
        try:
            parts = json.loads((d / "manifest.json").read_text())["parts"]
        except (OSError, ValueError, KeyError):
            continue
        n += sum(int(p.get("shapes", {}).get("variant_ids", [0])[0]) for p in parts.values())
    return n


def stored(out, fp: dict, *, repair: bool = False, main=None) -> dict[int, torch.Tensor]:
    """variant id -> [n_prompts] values from DIR (or its already open store `main`) and every
    DIR/ranks/* store (verified; the same fingerprint)."""
    from .store import SweepStore

    done = dict((main or SweepStore(out, fp, repair=repair)).done)
    for d in rank_dirs(out):
        done.update(SweepStore(d, fp, repair=repair).done)
    return done


def run_across_ranks(job, out, fp: dict, *, engine: str, repair: bool, progress: bool,
                     run, n_layers: int, w: tuple[int, int]):
    """The distributed sweep of the module docstring: returns (per_prompt [V, P] on the host,
    resumed, splits). `run(job, todo, engine)` is the single-process runner."""
    import torch.distributed as dist
    from tqdm.auto import tqdm

    from ..report.lock import folder_lock
    from ..report.parts import StoreError
    from .store import SweepStore

    rank, world_size = w
    err = None
    if rank == 0:                       # validates the folder (fingerprint) before any work
        try:
            with folder_lock(out):
                SweepStore(out, fp, repair=repair)
        except Exception as e:          # every rank learns of it, none hangs
            err = e
    said = [None if err is None else f"{type(err).__name__}: {err}"]
    dist.broadcast_object_list(said, src=0)          # every rank raises rank 0's refusal
    if said[0] is not None:
        if err is not None:
            raise err
        raise StoreError(f"rank 0 refused the output folder: {said[0]}")
    barrier("opening the output folder")
    done = stored(out, fp)
    barrier("reading what is stored")
    todo = [i for i in range(len(job.variants)) if i not in done]
    mine = share(job.variants, todo, n_layers, rank, world_size) if todo else []
    mydir = Path(out) / RANKS_DIR / str(rank)
    splits = 0
    with folder_lock(mydir):
        store = SweepStore(mydir, fp, repair=repair)
        bar = tqdm(total=len(job.variants), initial=len(done), unit="variant",
                   desc=f"sweep ({engine}, {world_size} ranks)", disable=not progress or rank)
        if rank == 0:
            others = [Path(out) / RANKS_DIR / str(r) for r in range(1, world_size)]
            bar = PolledBar(bar, len(done), others, stored_count(others))
        if mine:
            splits = run(job._replace(store=store, bar=bar), mine, engine)
        bar.close()
    barrier("waiting for every rank's chunks")
    everything = stored(out, fp)
    missing = [i for i in range(len(job.variants)) if i not in everything]
    if missing:
        raise RuntimeError(f"sweep across {world_size} processes: {len(missing)} variant(s) "
                           f"are not stored after every rank finished (first: {missing[0]})")
    per_prompt = torch.stack([everything[i] for i in range(len(job.variants))]).float()
    return per_prompt, len(done), splits


