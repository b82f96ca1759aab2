"""A sweep's output folder: per-piece results as they finish, so an interrupted sweep resumes.

    DIR/sweep.json              what the sweep is (model, prompts, variants, metric, scope):
                                a resumed sweep must match it exactly
    DIR/parts/NNNNN.safetensors variant_ids [n] int64, per_prompt [n, n_prompts] fp32
    DIR/results.safetensors     values [V], per_prompt [V, n_prompts] (written at the end)
    DIR/results.json            see `write_results`

Each part is written to a temporary name and renamed, so a kill leaves whole parts only.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from ..report.files import write_json
from ..sites import Scope
from .plan import Add, Edit


def positions_json(scope: Scope) -> str | int:
    """results.json's "positions" (kept from the format before Scope): "all", "last" or p."""
    return scope.n if scope.kind == "from" else str(scope)


def fingerprint(model, prompts: Sequence[str], variants: Sequence[tuple], metric, scope: Scope,
                sources: Sequence[str] | None, additions=None) -> dict:
    """What must be equal for stored results to be reused."""
    def sha(obj) -> str:
        return hashlib.sha1(json.dumps(obj).encode()).hexdigest()

    cfg = model.hf.config
    return {"model": model.name, "model_type": cfg.model_type, "n_layers": model.n_layers,
            "d_model": model.d_model, "vocab_size": cfg.vocab_size,
            "prompts_sha1": sha(list(prompts)), "n_prompts": len(prompts),
            "sources_sha1": sha(list(sources)) if sources is not None else None,
            "variants_sha1": sha([[edit_json(e) for e in v] for v in variants]),
            "n_variants": len(variants), "metric": repr(metric),
            "positions": positions_json(scope),
            "steer_sha1": None if additions is None else _additions_sha1(additions)}


def _additions_sha1(additions) -> str:
    """The table's hash, in the encoding of the folders written before `scale` (rms as bools),
    so that those still resume."""
    rms = torch.tensor([scale == "rms" for scale in additions.scales])
    return hashlib.sha1(additions.vectors.numpy().tobytes() + json.dumps(additions.alphas).encode()
                        + rms.numpy().tobytes() + json.dumps(additions.labels).encode()).hexdigest()


def edit_json(e) -> dict:
    """An Edit, an Add or another Intervention (`describe()`) as JSON, for the fingerprint."""
    if isinstance(e, Edit):
        return {"layer": e.layer, "site": e.site, "units": list(e.units), "mode": e.mode,
                "pos_start": e.pos_start}
    if isinstance(e, Add):  # as folders written before Add encoded it, so those still resume
        return {"layer": e.layer, "site": "resid", "units": [e.entry], "mode": "steer",
                "pos_start": e.pos_start}
    return e.describe()


class SweepStore:
    """Results of finished pieces under `out`; `done` maps variant id -> [n_prompts] values."""

    def __init__(self, out: str | os.PathLike, fp: dict):
        self.dir = Path(out)
        self.parts = self.dir / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "sweep.json"
        if manifest.exists():
            old = json.loads(manifest.read_text())
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            if diff:
                raise ValueError(f"{self.dir} holds a different sweep ({', '.join(diff)} "
                                 "differ): give another output folder or delete it")
        else:
            write_json(manifest, fp)
        self.done: dict[int, torch.Tensor] = {}
        for part in sorted(self.parts.glob("*.safetensors")):
            t = load_file(part)
            for i, row in zip(t["variant_ids"].tolist(), t["per_prompt"]):
                self.done[i] = row
        self._next = len(list(self.parts.glob("*.safetensors")))

    def add(self, variant_ids: torch.Tensor, per_prompt: torch.Tensor) -> None:
        """Store finished variants [n] with their values [n, n_prompts]."""
        ids = variant_ids.cpu().long().contiguous()
        vals = per_prompt.float().cpu().contiguous()
        path = self.parts / f"{self._next:05d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({"variant_ids": ids, "per_prompt": vals}, tmp)
        os.replace(tmp, path)
        self._next += 1
        self.done.update(zip(ids.tolist(), vals))


def write_results(out: str | os.PathLike, result, variants: Sequence[tuple], metric,
                  scope: Scope, additions=None) -> Path:
    """DIR/results.safetensors and DIR/results.json: {"engine", "n_prompts", "n_variants",
    "elapsed_s", "variants_per_s", "metric", "positions", "resumed", "variants": [{"id",
    "edits": [{"layer", "site", "unit", "mode", "pos_start"}], "value"}]} with value the mean
    over prompts; a multi-unit edit lists one entry per unit. A Steer is listed as site
    "resid_post", mode "steer", unit k = row k of results.safetensors "steer_vectors" [K,
    d_model], with its "alpha", "scale", "rms" (scale == "rms") and "label"; another
    Intervention as its `describe()`: {"intervention": "Steering", "scope", "rows", "sha1"}. "scope" spells the scope ("all", "last",
    "from:p"); "positions" is the same in the older form ("all", "last", p)."""
    out = Path(out)
    tensors = {"values": result.values.contiguous(), "per_prompt": result.per_prompt.contiguous()}
    if additions is not None:
        tensors["steer_vectors"] = additions.vectors.contiguous()
    save_file(tensors, out / "results.safetensors")

    def entries(e) -> list[dict]:
        if isinstance(e, Add):
            return [{"layer": e.layer, "site": "resid_post", "unit": e.entry, "mode": "steer",
                     "pos_start": e.pos_start, **additions.describe(e.entry)}]
        if not isinstance(e, Edit):
            return [edit_json(e)]
        return [{"layer": e.layer, "site": e.site, "unit": u, "mode": e.mode,
                 "pos_start": e.pos_start} for u in e.units]

    rows = [{"id": i, "edits": [x for e in edits for x in entries(e)], "value": v}
            for i, (edits, v) in enumerate(zip(variants, result.values.tolist()))]
    n = len(variants)
    return write_json(out / "results.json", {
        "engine": result.engine, "n_prompts": result.per_prompt.shape[1], "n_variants": n,
        "elapsed_s": result.elapsed_s, "variants_per_s": n / max(result.elapsed_s, 1e-9),
        "metric": repr(metric), "positions": positions_json(scope), "scope": str(scope),
        "resumed": result.resumed,
        "variants": rows})
