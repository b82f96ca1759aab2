"""The one Intervention protocol: anything that edits a forward pass, row by row.

Steering (`Steering`), circuit modulation (`Modulation`) and, later, SAE feature edits implement
it, and everything that runs edited forwards takes it: `generate`, `lm_preservation` and sweep
variants (emofast.sweeps: a variant may hold Interventions beside its Edits and Steers).

    iv = Steering.single(dirs, "fear", layers=range(12, 18), alpha=1.5, scale="rms")
    iv.n_rows()                       # 1: the same edit broadcast to every batch row
    with iv.take(slice(0, 8), 8).hooks(model):
        model.forward(ids, mask)      # the 8 rows of this batch, edited

An Intervention has a `scope` (`emofast.sites.Scope`: where in each row it applies), a number of
rows (1 broadcasts to any batch), `take` (the intervention of one batch's rows) and `hooks`
(installs it for one forward whose batch rows are its rows). Batches are LEFT-padded wherever
emofast runs interventions, so "the last k positions" are every row's real last tokens.
"""
from __future__ import annotations

import abc
import dataclasses
import hashlib
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import ClassVar

import torch

from ..sites import Scope


class Intervention(abc.ABC):
    """Edits the forward pass of a batch, each row as its own row of the intervention says."""
    scope: Scope

    @abc.abstractmethod
    def n_rows(self) -> int:
        """How many rows it holds; 1 broadcasts to any batch."""

    @abc.abstractmethod
    def take(self, rows: slice, n: int) -> "Intervention":
        """The intervention of the `n` batch rows `rows` (a one-row one broadcasts)."""

    @abc.abstractmethod
    def is_identity(self) -> bool:
        """True when it leaves the model exactly unchanged (e.g. every alpha is 0)."""

    @abc.abstractmethod
    def hooks(self, model) -> AbstractContextManager[None]:
        """Install it for one forward (batch rows = its rows); removed on exit."""

    @abc.abstractmethod
    def describe(self) -> dict:
        """JSON that names it exactly (results files, resume fingerprints): its kind, scope,
        rows and a digest of everything that changes what it does."""


def check_intervention(iv, where: str, rows: int | None = None,
                       what: str = "rows") -> Intervention | None:
    """None or an Intervention, else a TypeError that says what is accepted; with `rows`, it
    must hold one row (broadcast) or `rows` (one per input `what`)."""
    if iv is not None and not isinstance(iv, Intervention):
        raise TypeError(f"{where} takes an Intervention (Steering, Modulation) or None, got "
                        f"{type(iv).__name__}")
    if iv is not None and rows is not None and iv.n_rows() not in (1, rows):
        raise ValueError(f"{type(iv).__name__} has {iv.n_rows()} rows for {rows} {what}: give "
                         f"one row, or one per {what.rstrip('s')}")
    return iv


class PerRow(Intervention):
    """An Intervention whose state is tensors with one entry per row (`row_fields`, the first of
    which has the row count), held by a dataclass; `alpha` [N] gives its strength."""
    row_fields: ClassVar[tuple[str, ...]]
    alpha: torch.Tensor

    def n_rows(self) -> int:
        return len(getattr(self, self.row_fields[0]))

    def take(self, rows: slice, n: int):
        if self.n_rows() == 1:
            pick = torch.zeros(n, dtype=torch.long)
        else:
            pick = torch.arange(self.n_rows())[rows]
            if len(pick) != n:
                raise ValueError(f"{type(self).__name__} has {self.n_rows()} rows, the batch "
                                 f"needs {n}")
        return replace(self, **{f: getattr(self, f)[pick] for f in self.row_fields})

    def is_identity(self) -> bool:
        return not bool((self.alpha != 0).any())

    def describe(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"intervention": type(self).__name__, "scope": str(self.scope),
                "rows": self.n_rows(), "sha1": digest(fields)}


def digest(obj) -> str:
    """sha1 of a value made of tensors, dataclasses, NamedTuples, mappings, sequences and scalars:
    equal digests mean equal values (tensors by dtype, shape and bytes)."""
    h = hashlib.sha1()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            feed({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
        elif isinstance(x, tuple) and hasattr(x, "_asdict"):
            feed(x._asdict())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(f"K{k!r}".encode())
                feed(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"V{type(x).__name__}{x!r}".encode())
    feed(obj)
    return h.hexdigest()[:16]
