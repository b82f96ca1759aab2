"""SAE training across the processes of a torch.distributed program (`torchrun -m emofast sae
train`; gloo on CPUs, NCCL on GPUs, one node or many).

Every rank runs the model on its share of each fill's forwards (consecutive forwards of about
equal tokens) and the activations are gathered in rank order, so every rank holds the fill one
process would build: the same shuffle, the same batches. Then, by `SAETrainConfig.parallel`:
- "data" (DDP over the SAEs): at each step every SAE trains on this rank's rows of the batch
  (`DataParallel.rows`), the loss normalised by the whole batch; gradients, firing counts and
  statistics are summed over the ranks and every rank takes the same Adam step. The SAEs stay
  equal on every rank and equal to one process's up to the order of those sums (BatchTopK's
  batch threshold is the m-th largest of the values gathered from every rank).
- "sites" (what sparsify's distribute_modules does): rank r trains the SAEs of its share of the
  sites (`site_owners`, balanced by size) on the whole batches, exactly as one process does.
  Whatever the split (a rank may own no site), every rank takes part in the same collectives in
  the same order, so an uneven split cannot hang.
Rank 0 alone opens the output folder's checkpoint store and the activation cache; what it reads
(a checkpoint to resume from, a cached fill) is broadcast.
"""
from __future__ import annotations

import torch

PARALLEL = ("data", "sites")


def _dist():
    import torch.distributed as dist
    return dist


class DataParallel:
    """This rank's place in the group, and the sums a data-parallel SAE step needs."""

    def __init__(self, rank: int, world: int):
        self.rank, self.world = rank, world

    def rows(self, n: int) -> slice:
        """This rank's contiguous rows of a batch of n (as equal as n allows)."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        _dist().all_reduce(out)
        return out

    def min(self, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        _dist().all_reduce(out, op=_dist().ReduceOp.MIN)
        return out

    def before(self, count: torch.Tensor) -> torch.Tensor:
        """The sum of `count` over the lower ranks (where this rank's rows start)."""
        every = [torch.empty_like(count) for _ in range(self.world)]
        _dist().all_gather(every, count.clone())
        return sum(every[:self.rank], torch.zeros_like(count))

    def sum_gradients(self, opt: torch.optim.Optimizer) -> None:
        """Every parameter's gradient summed over the ranks; one that no rank has stays None
        (Adam skips it, as in one process), one that some rank lacks counts as zeros there."""
        params = [p for g in opt.param_groups for p in g["params"]]
        if not params:
            return
        has = self.sum(torch.tensor([p.grad is not None for p in params], dtype=torch.int32,
                                    device=params[0].device))
        for p, n in zip(params, has.tolist()):
            if n:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                _dist().all_reduce(p.grad)

    def kth_largest(self, values: torch.Tensor, m: int) -> torch.Tensor:
        """The m-th largest of every rank's `values` together (1-D): each rank's top m,
        gathered, topped again."""
        top = values.topk(min(m, values.numel())).values
        padded = torch.full((m,), float("-inf"), dtype=values.dtype, device=values.device)
        padded[:len(top)] = top
        every = [torch.empty_like(padded) for _ in range(self.world)]
        _dist().all_gather(every, padded)
        return torch.cat(every).topk(m).values[-1]


def site_owners(sites: list[str], widths: dict[str, int], world: int) -> dict[str, int]:
    """Each site's rank: the largest SAEs first, each to the least loaded rank (ties: the
    lowest rank); the same on every rank."""
    load, owner = [0] * world, {}
    for site in sorted(sites, key=lambda s: (-widths[s], sites.index(s))):
        r = min(range(world), key=lambda i: (load[i], i))
        owner[site] = r
        load[r] += widths[site]
    return owner


def my_forwards(sizes: list[int], rank: int, world: int) -> range:
    """This rank's consecutive forwards of a fill (`sizes`: tokens of each), about equal
    tokens per rank; every rank computes the same cut."""
    total, bounds, acc, r = sum(sizes), [0], 0, 1
    for i, n in enumerate(sizes):
        acc += n
        while r < world and acc >= total * r / world:
            bounds.append(i + 1)
            r += 1
    bounds += [len(sizes)] * (world + 1 - len(bounds))
    return range(bounds[rank], bounds[rank + 1])


def gather_rows(acts: dict[str, torch.Tensor], names: list[str], world: int
                ) -> dict[str, torch.Tensor]:
    """Every rank's rows [n_r, W] (host tensors) of each site, concatenated in rank order, on
    every rank's host."""
    dist, dev = _dist(), comm_device()
    n = torch.tensor([len(acts[names[0]])], device=dev)
    counts = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(counts, n)
    counts = [int(c) for c in counts]
    out = {}
    for name in names:
        a = acts[name]
        padded = torch.zeros(max(counts), *a.shape[1:], dtype=a.dtype, device=dev)
        padded[:len(a)] = a
        every = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(every, padded)
        out[name] = torch.cat([e[:c] for e, c in zip(every, counts)]).cpu()
    return out


def comm_device() -> torch.device:
    """Where collectives take their tensors: this rank's GPU under NCCL, else the host."""
    if _dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast(obj, rank: int):
    """Rank 0's `obj` on every rank (pickled: checkpoints, cached fills)."""
    box = [obj if rank == 0 else None]
    _dist().broadcast_object_list(box, src=0)
    return box[0]


def gather_all(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (pickled)."""
    dist = _dist()
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
