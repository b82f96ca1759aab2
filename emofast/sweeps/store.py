"""A sweep's output folder: finished chunks as they complete, verified when read back, so an
interrupted or damaged sweep resumes with exactly the results it can trust.

    DIR/store.json, DIR/manifest.json, DIR/parts/*   a PartStore (emofast.report.parts) of kind
        "sweep": each part is a finished chunk, variant_ids [n] int64 + per_prompt
        [n, n_prompts] fp32, named after its variant ids and prompts ("v000012-000019-<sha>")
    DIR/results.safetensors   values [V], per_prompt [V, n_prompts] (written at the end)
    DIR/results.json          see `write_results`

The fingerprint (`fingerprint`) holds everything that changes a value: the model's identity
(weights' sha256, dtype, device kind, quantization, attention implementation, torch and
transformers versions: `emofast.models.identity`), the prompts, sources, variants, steering
table, metric, scope, engine and batch size. A folder holding another sweep refuses, naming
what differs.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch

from ..models.identity import model_identity
from ..report.files import save_tensors, write_json
from ..report.parts import PartStore, StoreError
from ..sites import Scope
from .plan import Add, Edit


def positions_json(scope: Scope) -> str | int:
    """results.json's "positions" (kept from the format before Scope): "all", "last" or p."""
    return scope.n if scope.kind == "from" else str(scope)


def fingerprint(model, prompts: Sequence[str], variants: Sequence[tuple], metric, scope: Scope,
                sources: Sequence[str] | None, additions=None, *, engine: str = "batched",
                batch_size: int = 32, features=None) -> dict:
    """What must be equal for stored results to be reused (see the module docstring)."""
    def sha(obj) -> str:
        return hashlib.sha256(json.dumps(obj).encode()).hexdigest()

    return {"model": model_identity(model),
            "prompts_sha256": sha(list(prompts)), "n_prompts": len(prompts),
            "sources_sha256": sha(list(sources)) if sources is not None else None,
            "variants_sha256": sha([[edit_json(e) for e in v] for v in variants]),
            "n_variants": len(variants), "metric": repr(metric), "scope": str(scope),
            "steer_sha256": None if additions is None else _additions_sha256(additions),
            "engine": engine, "batch_size": batch_size,
            **({} if features is None else {"features_sha256": features.sha256()})}


def _additions_sha256(additions) -> str:
    h = hashlib.sha256(additions.vectors.float().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([additions.alphas, list(additions.scales), additions.labels]).encode())
    return h.hexdigest()


def edit_json(e) -> dict:
    """An Edit, an Add or another Intervention (`describe()`) as JSON, for the fingerprint."""
    if isinstance(e, Edit):
        return {"layer": e.layer, "site": e.site, "units": list(e.units), "mode": e.mode,
                "pos_start": e.pos_start}
    if isinstance(e, Add):
        return {"layer": e.layer, "site": e.site, "entry": e.entry,
                "mode": "steer" if e.site == "resid_post" else "feature", "pos_start": e.pos_start}
    return e.describe()


class SweepStore:
    """The verified results of finished chunks under `out`; `done` maps variant id ->
    [n_prompts] values. `repair` recomputes exactly the parts that fail their checks."""

    def __init__(self, out: str | os.PathLike, fp: dict, *, repair: bool = False, log=None):
        self.dir = Path(out)
        n_variants, n_prompts = fp["n_variants"], fp["n_prompts"]

        def check(name: str, t: dict) -> str | None:
            ids, vals = t.get("variant_ids"), t.get("per_prompt")
            if ids is None or vals is None or ids.dim() != 1 or vals.shape != (len(ids), n_prompts):
                return "does not hold variant_ids [n] and per_prompt [n, n_prompts]"
            if len(ids) and not (0 <= int(ids.min()) and int(ids.max()) < n_variants):
                return f"names variants outside 0..{n_variants - 1}"
            return None

        self.store = PartStore(out, "sweep", fp, repair=repair, check=check, log=log)
        self.done: dict[int, torch.Tensor] = {}
        owner: dict[int, str] = {}
        for name, t in self.store.tensors.items():
            for i, row in zip(t["variant_ids"].tolist(), t["per_prompt"]):
                if i in owner:
                    raise StoreError(f"{self.dir}: variant {i} is stored twice ({owner[i]} and "
                                     f"{name}): the folder was edited by hand; delete it")
                owner[i] = name
                self.done[i] = row

    def add(self, variant_ids: torch.Tensor, per_prompt: torch.Tensor) -> None:
        """Store finished variants [n] with their values [n, n_prompts], as one part named after
        its variant ids (all prompts)."""
        ids = variant_ids.cpu().long().contiguous()
        vals = per_prompt.float().cpu().contiguous()
        sha = hashlib.sha256(ids.numpy().tobytes()).hexdigest()[:12]
        name = f"v{int(ids.min()):06d}-{int(ids.max()):06d}-p0-{vals.shape[1]}-{sha}"
        self.store.put(name, {"variant_ids": ids, "per_prompt": vals})
        self.done.update(zip(ids.tolist(), vals))


def write_results(out: str | os.PathLike, result, variants: Sequence[tuple], metric,
                  scope: Scope, additions=None, features=None) -> Path:
    """DIR/results.safetensors and DIR/results.json: {"engine", "n_prompts", "n_variants",
    "elapsed_s", "variants_per_s", "metric", "positions", "resumed", "variants": [{"id",
    "edits": [{"layer", "site", "unit", "mode", "pos_start"}], "value"}]} with value the mean
    over prompts; a multi-unit edit lists one entry per unit. A Steer is listed as site
    "resid_post", mode "steer", unit k = row k of results.safetensors "steer_vectors" [K,
    d_model], with its "alpha", "scale", "rms" (scale == "rms") and "label"; an SAE feature
    edit as site "sae", mode "feature", unit k (its entry) with its "sae" (the SAE's site),
    "features", "feature_mode", "factor" and "label"; another Intervention as its
    `describe()`: {"intervention": "Steering", "scope", "rows", "sha1"}. "scope" spells the scope ("all", "last",
    "from:p"); "positions" is the same in the older form ("all", "last", p)."""
    out = Path(out)
    tensors = {"values": result.values.contiguous(), "per_prompt": result.per_prompt.contiguous()}
    if additions is not None:
        tensors["steer_vectors"] = additions.vectors.contiguous()
    save_tensors(out / "results.safetensors", tensors)

    def entries(e) -> list[dict]:
        if isinstance(e, Add) and e.site == "sae":
            return [{"layer": e.layer, "site": "sae", "unit": e.entry, "mode": "feature",
                     "pos_start": e.pos_start, **features.describe(e.entry)}]
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
