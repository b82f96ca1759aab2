"""The torch.distributed process group emofast runs in: torchrun's (NCCL on GPUs, gloo on CPUs,
one node or many), set up by the `emofast` command, or any the caller initialised.

    with torchrun_group():           # cli.main: under torchrun, the group for the command
        if world() is not None: ...  # (rank, world size) inside a group, else None

Sweeps (`emofast.sweeps.distributed`) and SAE training (`emofast.sae.distributed`) share it. A
rank missing from a barrier or a collective for EMOFAST_DIST_TIMEOUT seconds (default 1800) is
an error, not a hang.
"""
from __future__ import annotations

import contextlib
import datetime
import os

import torch


def world() -> tuple[int, int] | None:
    """(rank, world size) inside an initialised torch.distributed group (a world of 1 too:
    torchrun --nproc-per-node 1 runs the same path), else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_rank(), dist.get_world_size()


def timeout_s() -> float:
    return float(os.environ.get("EMOFAST_DIST_TIMEOUT", "1800"))


def barrier(what: str) -> None:
    """All ranks meet; a rank missing after EMOFAST_DIST_TIMEOUT seconds is an error naming it
    (gloo's monitored barrier), not a hang."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s())
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timeout)
        else:
            dist.barrier()
    except RuntimeError as e:
        raise RuntimeError(f"across {dist.get_world_size()} processes: {what}: "
                           f"{' '.join(str(e).split())[:300]} (a rank died or is stuck; what "
                           "is finished is kept: run the same command again to resume)") from None


@contextlib.contextmanager
def torchrun_group():
    """Under torchrun (RANK and WORLD_SIZE in the environment, no group yet): the process group
    for the block, NCCL when CUDA is present (each rank on cuda:LOCAL_RANK), else gloo;
    destroyed on exit. Elsewhere: nothing."""
    import torch.distributed as dist

    if not {"RANK", "WORLD_SIZE"} <= set(os.environ) or dist.is_initialized():
        yield
        return
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s()))
    try:
        yield
    finally:
        dist.destroy_process_group()


def local_device() -> str | None:
    """cuda:LOCAL_RANK under torchrun with CUDA, else None (the usual default)."""
    if "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return None


def is_rank0() -> bool:
    w = world()
    return w is None or w[0] == 0
