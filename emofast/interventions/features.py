"""Feature steering: scale chosen SAE features by a factor where they fire.

    steering = FeatureSteering({sae24: [12, 873], sae19: [40]}, factor=3.0)
    recognize(model, examples, intervention=steering)
    steering.save("runs/steering"); FeatureSteering.load("runs/steering", model)

At each SAE's site the activation x becomes x + (factor - 1) * sum_f a_f(x) W_dec[f] over the
chosen features f (through the SAE's output normalisation): the SAE spliced in with its error term
and the chosen features scaled, so a feature that does not fire adds nothing and the edit needs no
label at run time. factor 1 is the model exactly; factor 0 zero-ablates the features. The edit
applies to every row alike (one row, broadcast), at the positions of its `scope` ("all", "last:k",
"prompt", "generated", as `Steering`).

A saved steering is a folder: steering.json ({"kind": "feature_scale", "factor", "scope",
"sites": {site: [features]}, "meta": {...}}) and one SAELens folder per site under saes/ (the
SAE's safetensors and cfg.json, `emofast.sae.save_sae`), so it applies on its own.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from ..data import read_json
from ..report.files import write_json
from ..sae import SAE, load_sae, save_sae
from ..sae.model import feature_ids
from ..sites import Scope
from ..validation import finite
from .base import Intervention, digest

SCOPES = ("all", "last:k", "prompt", "generated")
KIND = "feature_scale"


class FeatureSteering(Intervention):
    """Scale `features[sae]` of each SAE by `factor` wherever they fire (module docstring)."""

    def __init__(self, features: Mapping[SAE, Sequence[int]], factor: float, *,
                 scope: Scope | str = "all", meta: dict | None = None):
        if not features:
            raise ValueError("FeatureSteering needs at least one SAE with features")
        factor = finite(factor, "FeatureSteering: factor")
        self.saes, self.features = [], []
        for sae, feats in features.items():
            if not isinstance(sae, SAE):
                raise TypeError(f"FeatureSteering: keys must be SAEs, got {type(sae).__name__}")
            if sae.site in [s.site for s in self.saes]:
                raise ValueError(f"FeatureSteering: two SAEs read {sae.site}; one per site")
            fs = feature_ids(feats, f"FeatureSteering at {sae.site}")
            bad = [f for f in fs if not 0 <= f < sae.d_sae]
            if not fs or bad:
                raise ValueError(f"FeatureSteering: features {bad or fs} of {sae.site} must be "
                                 f"a non-empty list in 0..{sae.d_sae - 1}")
            self.saes.append(sae)
            self.features.append(fs)
        self.factor = float(factor)
        self.scope = Scope.parse(scope).require("feature steering", *SCOPES)
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        sites = ", ".join(f"{s.site}: {len(f)}" for s, f in zip(self.saes, self.features))
        return f"FeatureSteering({sites}; factor {self.factor:g}, scope {self.scope})"

    def n_rows(self) -> int:
        return 1

    def take(self, rows: slice, n: int) -> "FeatureSteering":
        return self

    def is_identity(self) -> bool:
        return self.factor == 1.0

    def n_features(self) -> int:
        return sum(len(f) for f in self.features)

    def describe(self) -> dict:
        return {"intervention": "FeatureSteering", "scope": str(self.scope), "rows": 1,
                "sha1": digest([self.factor, self.features,
                                [dict(s.state_dict()) for s in self.saes],
                                [s.site for s in self.saes]])}

    @contextmanager
    def hooks(self, model) -> Iterator[None]:
        if self.is_identity():
            yield
            return
        calls: dict[str, int] = {}
        fns = {}
        for sae, feats in zip(self.saes, self.features):
            sae.check_model(model)
            fns[sae.site] = self._hook(sae, torch.tensor(feats, device=sae.W_dec.device),
                                       calls)
        with model.hooks(fns):
            yield

    def _hook(self, sae: SAE, feats: torch.Tensor, calls: dict):
        scope, gain = self.scope, self.factor - 1.0

        def fn(act, site):
            call = calls.get(sae.site, 0)
            calls[sae.site] = call + 1
            if scope.kind == "prompt" and call > 0 or scope.kind == "generated" and call == 0:
                return None
            x = sae._flat(act)                                               # [B, T, W]
            B, T = x.shape[:2]
            start = max(T - scope.n, 0) if scope.kind == "last" else 0
            undo: list = []
            F = feats.expand(B, -1)                                          # [B, m]
            a = sae.feature_values(sae.encode(x, _undo=undo), F)             # [B, T, m]
            coef = gain * a
            if start:
                coef[:, :start] = 0.0
            return (x + sae.feature_change(coef, F, undo[0]).to(x.dtype)).view_as(act)
        return fn

    # -- a folder -------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        for sae in self.saes:
            save_sae(sae, folder / "saes" / sae.site)
        write_json(folder / "steering.json", {
            "kind": KIND, "factor": self.factor, "scope": str(self.scope),
            "sites": {s.site: f for s, f in zip(self.saes, self.features)}, "meta": self.meta})
        return folder

    @classmethod
    def load(cls, folder: str | Path, model=None) -> "FeatureSteering":
        """A folder written by `save` (model: checks that each SAE fits it and moves them to its
        device)."""
        folder = Path(folder)
        path = folder / "steering.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a saved steering: no steering.json (write "
                                    "one with FeatureSteering.save or `emofast features`)")
        cfg = read_json(path)
        if not isinstance(cfg, dict) or cfg.get("kind") != KIND or not isinstance(cfg.get("sites"), dict):
            raise ValueError(f"{path}: expected a JSON object of kind {KIND!r} with 'sites'")
        features = {}
        for site, feats in cfg["sites"].items():
            sae = load_sae(folder / "saes" / site, model)
            features[sae] = feats
        return cls(features, cfg["factor"], scope=cfg.get("scope", "all"),
                   meta=cfg.get("meta", {}))


def load_steering(folder: str | Path, model=None) -> FeatureSteering:
    """The saved steering in `folder` (see the module docstring)."""
    return FeatureSteering.load(folder, model)
