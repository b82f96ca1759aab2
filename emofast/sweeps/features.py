"""SAE feature edits as sweep variants: zero, mean, scale or patch features of one site's SAE.

    from emofast.sweeps import FeatureEdit, sweep
    sae = ef.load_sae("runs/saes/L24.resid_post", model)
    variants = [[FeatureEdit(sae, [f])] for f in range(sae.d_sae)]        # one feature each
    variants += [[FeatureEdit(sae, feats, "scale", factor=3.0)]]            # amplify a set
    res = sweep(model, prompts, variants, LogitDiff(a, b), scope="last")

A FeatureEdit of an SAE reading site S replaces S's activation x by
x + decode(edit(encode(x))) - decode(encode(x)), the SAE spliced in with its error term (what
`SAE.hook(model, edit=...)` does): the row changes by exactly what the edited features
reconstruct, and an unedited row or position is exactly the model. For the listed features f at
the edited positions (the sweep's scope, or the edit's pos_start):
  zero: a_f := 0;  scale: a_f := factor * a_f (a feature that does not fire stays 0);
  mean: a_f := its mean activation over every real token of every prompt (the clean run);
  patch: a_f := its activation in the source run (the sweep's `sources`, as for Edit patching).
Decode is linear before its output normalisation, so the change is (a'_F - a_F) @ W_dec[F] over
the edited features F only (times the layer_norm std, or over the constant_norm_rescale
coefficient): no dense [..., d_sae] tensor for TopK SAEs.

Inside the sweep a FeatureEdit is lowered to the planner's Add(L, entry, pos_start, site="sae"):
entry k of the sweep's `FeatureTable`, L the layer of the SAE's site. A variant holds at most one
FeatureEdit per layer (put the features in one edit). The batched engine applies each row's own
entry with one gathered product per SAE (`rows_feature_edit`); the loop engine edits the dense
activations by plain indexing and decodes them whole (`index_feature_edit`), its reference.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..interventions.base import digest
from ..models import Model, position_ids
from ..sae import SAE
from ..sae.model import feature_ids
from ..sites import parse_site
from ..validation import finite, integer
from .batches import Batch
from .plan import Add, Variant

FEATURE_MODES = ("zero", "mean", "scale", "patch")


@dataclass(frozen=True, eq=False, init=False)
class FeatureEdit:
    """Edit `features` of `sae` (zero / mean / scale by `factor` / patch) where it reads."""
    sae: SAE
    features: tuple[int, ...]  # sorted, distinct, in 0..d_sae-1
    mode: str
    factor: float              # scale only (1.0 otherwise)
    pos_start: int             # real tokens >= pos_start (0 = every token)
    label: str                 # names the edit in results.json

    def __init__(self, sae: SAE, features: Sequence[int], mode: str = "zero", *,
                 factor: float | None = None, pos_start: int = 0, label: str = ""):
        if not isinstance(sae, SAE):
            raise TypeError(f"FeatureEdit needs an SAE (ef.load_sae), got {type(sae).__name__}")
        where = f"FeatureEdit of {sae.site}"
        if mode not in FEATURE_MODES:
            raise ValueError(f"{where}: mode {mode!r}: one of {', '.join(FEATURE_MODES)}")
        if (factor is None) != (mode != "scale"):
            raise ValueError(f"{where}: mode 'scale' takes a factor, the other modes none "
                             f"(mode {mode!r}, factor {factor!r})")
        if factor is not None:
            factor = finite(factor, f"{where}: factor")
        feats = feature_ids(features, where)
        bad = [f for f in feats if not 0 <= f < sae.d_sae]
        if not feats or bad:
            raise ValueError(f"{where}: features {bad or feats} must be a non-empty list in "
                             f"0..{sae.d_sae - 1} (the SAE has {sae.d_sae} latents)")
        pos_start = integer(pos_start, f"{where}: pos_start", lo=0)
        set_ = object.__setattr__
        set_(self, "sae", sae)
        set_(self, "features", tuple(feats))
        set_(self, "mode", mode)
        set_(self, "factor", 1.0 if factor is None else factor)
        set_(self, "pos_start", pos_start)
        set_(self, "label", str(label))

    @property
    def layer(self) -> int:
        return parse_site(self.sae.site).layer

    def __repr__(self) -> str:
        factor = f", factor={self.factor:g}" if self.mode == "scale" else ""
        feats = list(self.features[:8]) + (["..."] if len(self.features) > 8 else [])
        return f"FeatureEdit({self.sae.site}, {feats}, {self.mode}{factor})"


@dataclass
class FeatureTable:
    """The distinct feature edits of a sweep; entry k = (SAE index, features, mode, factor,
    label). `means[j]` [d_sae] holds SAE j's mean activations once `fit_means` ran."""
    saes: list[SAE]
    entries: list[tuple[int, tuple[int, ...], str, float, str]]
    means: dict[int, torch.Tensor] = field(default_factory=dict)
    _padded: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self, mode: str) -> set[tuple[int, str]]:
        """(layer, site kind) of every SAE some entry edits with `mode`."""
        return {_key(self.saes[j]) for j, _, m, _, _ in self.entries if m == mode}

    def describe(self, k: int) -> dict:
        j, feats, mode, factor, label = self.entries[k]
        return {"sae": self.saes[j].site, "features": list(feats), "feature_mode": mode,
                "factor": factor, "label": label}

    def sha256(self) -> str:
        """Equal for equal SAEs (weights, architecture, normalisation) and entries."""
        saes = [(s.architecture, s.k, s.site, s.apply_b_dec_to_input, s.normalize_activations,
                 dict(s.state_dict())) for s in self.saes]
        return digest([saes, self.entries])

    def fit_means(self, model: Model, batches: list[Batch]) -> None:
        """Each mean-edited SAE's mean activation [d_sae] over every real token of every prompt
        of the clean run (one extra forward per batch)."""
        want = sorted({j for j, _, m, _, _ in self.entries if m == "mean"} - set(self.means))
        if not want:
            return
        sums = {j: torch.zeros(self.saes[j].d_sae, dtype=torch.float64) for j in want}
        by_site: dict[str, list[int]] = {}
        for j in want:
            by_site.setdefault(self.saes[j].site, []).append(j)
        count, real = 0, None

        def read(act, site):
            for j in by_site[str(site)]:
                acts = self.saes[j].dense(self.saes[j].encode(act[real]))   # [n_real, d_sae]
                sums[j] += acts.double().sum(0).cpu()
        for b in batches:
            real = b.mask.bool()
            with model.hooks({s: read for s in by_site}):
                model.hf.base_model(input_ids=b.ids, attention_mask=b.mask,
                                    position_ids=position_ids(b.mask), use_cache=False)
            count += int(real.sum())
        for j in want:
            self.means[j] = (sums[j] / count).float()

    def padded(self, j: int, device: torch.device):
        """SAE j's entries as tensors on `device`: feats [K, m] (padding repeats a feature),
        valid [K, m] bool, gain [K] (the factor; 0 for zero/mean/patch), mode [K] (index in
        FEATURE_MODES; -1 for entries of other SAEs)."""
        if (j, device) not in self._padded:
            m = max(len(f) for _, f, _, _, _ in self.entries)
            K = len(self.entries)
            feats = torch.zeros(K, m, dtype=torch.long)
            valid = torch.zeros(K, m, dtype=torch.bool)
            gain = torch.zeros(K)
            mode = torch.full((K,), -1, dtype=torch.long)
            for k, (jj, f, md, factor, _) in enumerate(self.entries):
                if jj != j:
                    continue
                feats[k, :len(f)] = torch.tensor(f)
                feats[k, len(f):] = f[0]
                valid[k, :len(f)] = True
                gain[k] = factor if md == "scale" else 0.0
                mode[k] = FEATURE_MODES.index(md)
            self._padded[(j, device)] = tuple(t.to(device) for t in (feats, valid, gain, mode))
        return self._padded[(j, device)]


def _key(sae: SAE) -> tuple[int, str]:
    s = parse_site(sae.site)
    return s.layer, s.kind


def lower_features(variants, model: Model) -> tuple[list[tuple], FeatureTable | None]:
    """Variants whose FeatureEdits became Add(layer, entry, pos_start, site="sae") (identical
    entries shared), and the table of those entries (None without FeatureEdits)."""
    saes: list[SAE] = []
    entries: dict[tuple, int] = {}
    out = []
    for i, v in enumerate(variants):
        if isinstance(v, FeatureEdit):
            raise TypeError(f"variant {i} is a single FeatureEdit: a variant is a list, e.g. "
                            "[edit]")
        if not isinstance(v, (Variant, list, tuple)):
            out.append(v)   # lower_steers names what is wrong
            continue
        items = v.edits if isinstance(v, Variant) else tuple(v)
        lowered, layers = [], set()
        for item in items:
            if not isinstance(item, FeatureEdit):
                lowered.append(item)
                continue
            if item.layer in layers:
                raise ValueError(f"variant {i}: two FeatureEdits at layer {item.layer}; one "
                                 "FeatureEdit per layer (put the features in one edit)")
            layers.add(item.layer)
            j = next((n for n, s in enumerate(saes) if s is item.sae), None)
            if j is None:
                item.sae.check_model(model)
                saes.append(item.sae)
                j = len(saes) - 1
            key = (j, item.features, item.mode, item.factor, item.label)
            if key not in entries:
                entries[key] = len(entries)
            lowered.append(Add(item.layer, entries[key], item.pos_start, site="sae"))
        out.append(tuple(lowered))
    if not entries:
        return out, None
    return out, FeatureTable(saes, list(entries))


def _sae_groups(table: FeatureTable, entries: torch.Tensor) -> list[int]:
    """The SAEs that the entries [n] (-1 = none) use."""
    used = {table.entries[k][0] for k in entries.tolist() if k >= 0}
    return sorted(used)


def rows_feature_edit(table: FeatureTable, entries: torch.Tensor, row_variant: torch.Tensor,
                      row_start: torch.Tensor, patch: dict | None) -> list[tuple]:
    """Batched-engine hooks, one per SAE used: every row applies its variant's entry
    (`entries` [V_c] int64, -1 = none) at positions >= row_start [B] of the computed block;
    `patch` maps (layer, kind) to the source activations [B, T', W] of the rows."""
    dev = row_variant.device
    hooks = []
    for j in _sae_groups(table, entries.cpu()):
        sae = table.saes[j]
        feats, valid, gain, mode = table.padded(j, dev)
        ent = entries.to(dev)[row_variant]                                   # [B]
        mine = (ent >= 0) & (mode[ent.clamp(min=0)] >= 0)
        e = ent.clamp(min=0)
        F = feats[e]                                                         # [B, m]
        on = valid[e] & mine[:, None]                                        # [B, m]
        md = mode[e]
        g = torch.where(md == FEATURE_MODES.index("scale"), gain[e], 0.0)    # [B]
        mean = table.means.get(j)
        src = None if patch is None else patch.get(_key(sae))
        uses = {FEATURE_MODES[m] for m in md[mine].unique().tolist()}
        if "mean" in uses and mean is None or "patch" in uses and src is None:
            raise RuntimeError(f"feature edits of {sae.site}: the clean run left no "
                               f"{'means' if mean is None else 'source activations'} (a bug)")
        hooks.append((sae.site, _rows_hook(sae, F, on, g, md, mean, src, row_start)))
    return hooks


def _rows_hook(sae, F, on, g, md, mean, src, row_start):
    def fn(act, site):
        x = sae._flat(act).to(sae.W_dec.device)   # a device map's layer -> the SAE's device
        T = x.shape[1]
        undo: list = []
        a = sae.feature_values(sae.encode(x, _undo=undo), F)                       # [B, T, m]
        target = g.to(a.dtype)[:, None, None] * a                            # scale, zero
        if mean is not None:
            is_mean = (md == FEATURE_MODES.index("mean"))[:, None, None]
            target = torch.where(is_mean, mean.to(a)[F][:, None, :].expand_as(a), target)
        if src is not None:
            s_acts = sae.feature_values(sae.encode(src.to(x.device), _undo=[]), F)
            target = torch.where((md == FEATURE_MODES.index("patch"))[:, None, None], s_acts,
                                 target)
        pos = torch.arange(T, device=x.device)[None, :] >= row_start[:, None]  # [B, T]
        coef = (target - a) * (on[:, None, :] & pos[:, :, None])             # [B, T, m]
        out = x + sae.feature_change(coef, F, undo[0]).to(x.dtype)
        return out.view_as(act).to(act.device)
    return fn


def index_feature_edit(table: FeatureTable, k: int, starts: list[int],
                       patch: dict | None):
    """Loop-engine hook at the entry's SAE site: row b, positions >= starts[b], dense
    activations edited by plain indexing and decoded whole (the reference)."""
    j, feats, mode, factor, _ = table.entries[k]
    sae, F = table.saes[j], list(feats)
    src = None if patch is None else patch.get(_key(sae))

    def fn(act, site):
        x = sae._flat(act).to(sae.W_dec.device, copy=True)
        for b, s in enumerate(starts):
            if s >= x.shape[1]:
                continue
            undo: list = []
            acts = sae.dense(sae.encode(x[b, s:], _undo=undo))             # [T - s, d_sae]
            new = acts.clone()
            if mode == "zero":
                new[:, F] = 0.0
            elif mode == "scale":
                new[:, F] = acts[:, F] * factor
            elif mode == "mean":
                new[:, F] = table.means[j][F].to(new)
            else:
                new[:, F] = sae.dense(sae.encode(src[b, s:].to(x.device), _undo=[]))[:, F]
            change = sae.decode(new, _undo=undo[0]) - sae.decode(acts, _undo=undo[0])
            x[b, s:] = x[b, s:] + change.to(x.dtype)
        return x.view_as(act).to(act.device)
    return fn
