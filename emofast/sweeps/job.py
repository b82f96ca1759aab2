"""What an engine is handed: the sweep's validated inputs and where results go."""
from __future__ import annotations

from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from ..models import Model
from ..validation import NonFiniteError
from .batches import Batch
from .features import FeatureTable
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
    bar: tqdm | None             # set when the engine runs
    memory_budget: int | None
    features: FeatureTable | None = None   # the entries of the variants' SAE feature edits


def finish(job: Job, ids: list[int] | torch.Tensor) -> None:
    """A piece of variants is complete: store it (with `out`, refusing non-finite values) and
    advance the bar."""
    ids = torch.as_tensor(ids, dtype=torch.long)
    if job.store is not None:
        values = job.per_prompt[ids.to(job.per_prompt.device)].cpu()
        check_finite(job.variants, ids, values)
        job.store.add(ids, values)
    job.bar.update(len(ids))


def check_finite(variants: list[tuple], ids: torch.Tensor, values: torch.Tensor) -> None:
    """NonFiniteError naming the first variants whose values [n, n_prompts] hold inf or nan."""
    bad = ids[~torch.isfinite(values).all(1)].tolist()
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise NonFiniteError(f"sweep: variant {bad[0]}{more} gives a non-finite metric "
                             f"(inf/nan, or activations that overflow): {list(variants[bad[0]])} "
                             "is too strong for the model; lower its strength or drop it")


def edit_keys(variants, mode: str) -> set[tuple[int, str]]:
    """The (layer, site)s some variant edits with `mode` (what the clean pass must read)."""
    return {(e.layer, e.site) for v in variants for e in v if getattr(e, "mode", None) == mode}


def source_keys(job: Job, variants) -> set[tuple[int, str]]:
    """Where the clean pass must read the source run: the patch Edits' (layer, site)s and the
    sites of the SAEs whose features the sweep patches."""
    keys = edit_keys(variants, "patch")
    return keys if job.features is None else keys | job.features.keys("patch")
