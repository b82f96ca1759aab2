"""What an engine is handed: the sweep's validated inputs and where results go."""
from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..models import Model
from .batches import Batch
from .metrics import Metric
from .steer import AdditionTable
from .store import SweepStore


class Job(NamedTuple):
    """Everything an engine needs to run the variants still to do."""
    model: Model
    batches: list[Batch]
    sources: list[Batch] | None
    variants: list[tuple]       # per variant: Edits, Adds and other Interventions
    additions: AdditionTable | None
    metric: Metric
    last: bool                  # scope "last": only each prompt's last token is edited
    per_prompt: torch.Tensor    # [n_variants, n_prompts] filled in place
    store: SweepStore | None
    bar: tqdm
    memory_budget: int | None


def finish(job: Job, ids: list[int] | torch.Tensor) -> None:
    """A piece of variants is complete: store it (with `out`) and advance the bar."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if job.store is not None:
        job.store.add(ids, job.per_prompt[ids.to(job.per_prompt.device)])
    job.bar.update(len(ids))


def edit_keys(variants, mode: str) -> set[tuple[int, str]]:
    """The (layer, site)s some variant edits with `mode` (what the clean pass must read)."""
    return {(e.layer, e.site) for v in variants for e in v if getattr(e, "mode", None) == mode}
