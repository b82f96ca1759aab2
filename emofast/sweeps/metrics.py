"""Sweep metrics: one number per batch row, computed on the device from the row's `Readout`.

    KL()                          KL(clean || edited) of the next-token distribution
    LogitDiff([a1, a2], [b1])     mean logit of tokens a minus mean logit of tokens b
    LogProb([t1, t2])             log P(next token in t)
    Projection(direction)         final residual . direction / |direction|
    ProbeProb(probe, "joy")       a foundation probe's probability of a class on the final residual

Everything is read at each prompt's last real token. Logit metrics see the edited next-token
logits; residual metrics see resid_post of `layer` (default: the last layer, i.e. the final
residual stream before the final norm), so a probe or direction fitted on `Model.cache` sites
"L{layer}.resid_post" applies unchanged. Engines only compute what a metric `reads`.
"""
from __future__ import annotations

import abc
import hashlib
from dataclasses import replace
from typing import Literal, NamedTuple, Sequence

import torch
import torch.nn.functional as F

from ..analysis.probes import LinearProbe


class Readout(NamedTuple):
    """What a metric sees for B rows; fields a metric does not read are None."""
    logits: torch.Tensor | None          # [B, vocab] fp32, edited next-token logits
    clean_logprobs: torch.Tensor | None  # [B, vocab] fp32, the clean run's log-probs
    resid: torch.Tensor | None           # [B, d_model] fp32, resid_post at the metric's layer


class Metric(abc.ABC):
    """`metric(readout) -> [B]`. `reads` says which Readout fields it needs."""
    reads: Literal["logits", "resid"] = "logits"
    layer: int | None = None             # resid metrics: layer read (None = last)

    def check(self, vocab_size: int, d_model: int, n_layers: int) -> None:
        """Raise ValueError if the metric cannot be computed on this model."""

    def resid_layer(self, n_layers: int) -> int:
        return n_layers - 1 if self.layer is None else self.layer

    @abc.abstractmethod
    def __call__(self, r: Readout) -> torch.Tensor:
        """[B] metric values."""


def _token_ids(tokens, what: str) -> torch.Tensor:
    ids = torch.as_tensor([tokens] if isinstance(tokens, int) else tokens).reshape(-1)
    if ids.numel() == 0 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"{what}: give one or more integer token ids, got {tokens!r}")
    if len(set(ids.tolist())) != ids.numel():
        raise ValueError(f"{what}: duplicate token ids in {ids.tolist()}; give each token once")
    return ids.long()


def _check_vocab(ids: torch.Tensor, vocab_size: int, what: str) -> None:
    bad = [t for t in ids.tolist() if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{what}: token id(s) {bad} out of range: the model's vocabulary has "
                         f"{vocab_size} tokens (0..{vocab_size - 1})")


def overflowed_to_nan(values: torch.Tensor, overflow: list[torch.Tensor]) -> torch.Tensor:
    """values [B] with NaN in the rows whose final residual overflowed during the forward
    (`Model.overflow_watch`): whatever a metric reads there is meaningless, and a NaN is refused
    by the sweep with the variant named."""
    if not overflow:
        return values
    return values.masked_fill(overflow[-1].to(values.device), float("nan"))


class KL(Metric):
    """KL(clean || edited) of the next-token distribution, nats (0 for the clean run)."""

    def __call__(self, r):
        return F.kl_div(r.logits.log_softmax(-1), r.clean_logprobs, log_target=True,
                        reduction="none").sum(-1)

    def __repr__(self):
        return "KL()"


class LogitDiff(Metric):
    """Mean logit of `tokens_a` minus mean logit of `tokens_b`."""

    def __init__(self, tokens_a: Sequence[int] | int, tokens_b: Sequence[int] | int):
        self.tokens_a = _token_ids(tokens_a, "LogitDiff tokens_a")
        self.tokens_b = _token_ids(tokens_b, "LogitDiff tokens_b")

    def check(self, vocab_size, d_model, n_layers):
        _check_vocab(self.tokens_a, vocab_size, "LogitDiff tokens_a")
        _check_vocab(self.tokens_b, vocab_size, "LogitDiff tokens_b")

    def __call__(self, r):
        a, b = self.tokens_a.to(r.logits.device), self.tokens_b.to(r.logits.device)
        return r.logits[:, a].mean(-1) - r.logits[:, b].mean(-1)

    def __repr__(self):
        return f"LogitDiff({self.tokens_a.tolist()}, {self.tokens_b.tolist()})"


class LogProb(Metric):
    """log P(next token in `tokens`) = logsumexp of the tokens' log-probabilities."""

    def __init__(self, tokens: Sequence[int] | int):
        self.tokens = _token_ids(tokens, "LogProb tokens")

    def check(self, vocab_size, d_model, n_layers):
        _check_vocab(self.tokens, vocab_size, "LogProb tokens")

    def __call__(self, r):
        return r.logits.log_softmax(-1)[:, self.tokens.to(r.logits.device)].logsumexp(-1)

    def __repr__(self):
        return f"LogProb({self.tokens.tolist()})"


class _ResidMetric(Metric):
    reads = "resid"

    def _check_layer(self, d_in: int, d_model: int, n_layers: int) -> None:
        name = type(self).__name__
        if d_in != d_model:
            raise ValueError(f"{name}: width {d_in} does not match the model's d_model "
                             f"{d_model}")
        if self.layer is not None and not 0 <= self.layer < n_layers:
            raise ValueError(f"{name}: layer {self.layer} out of range: model has {n_layers} "
                             f"layers (0..{n_layers - 1})")


class Projection(_ResidMetric):
    """resid . direction / |direction| (e.g. an EmotionDirections row of that layer)."""

    def __init__(self, direction: torch.Tensor, *, layer: int | None = None):
        d = torch.as_tensor(direction, dtype=torch.float32).flatten()
        norm = d.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError("Projection: the direction must be finite and non-zero")
        self.unit, self.layer = d / norm, layer

    def check(self, vocab_size, d_model, n_layers):
        self._check_layer(self.unit.numel(), d_model, n_layers)

    def __call__(self, r):
        return r.resid @ self.unit.to(r.resid.device)

    def __repr__(self):  # names the direction's values: resume fingerprints compare reprs
        return f"Projection(sha1={_digest(self.unit)}, layer={self.layer})"


class ProbeProb(_ResidMetric):
    """A `LinearProbe`'s probability of class `target` on resid_post of `layer` (default: the
    probe's own layer when it records one, else the last); a probe fitted at another site
    refuses."""

    def __init__(self, probe: LinearProbe, target: str, *, layer: int | None = None):
        if target not in probe.classes:
            raise ValueError(f"ProbeProb: class {target!r} not in the probe's classes "
                             f"{probe.classes}")
        self.probe, self.target = probe, target
        self.layer = probe.layer if layer is None else layer
        self.index = probe.classes.index(target)

    def check(self, vocab_size, d_model, n_layers):
        self._check_layer(self.probe.mean.numel(), d_model, n_layers)
        if self.probe.site is not None:
            self.probe.require_site(f"L{self.resid_layer(n_layers)}.resid_post")

    def __call__(self, r):
        if self.probe.weight.device != r.resid.device:
            p = self.probe
            self.probe = replace(p, **{k: getattr(p, k).to(r.resid.device)
                                       for k in ("weight", "bias", "mean", "std")})
        return self.probe.predict_proba(r.resid)[:, self.index]

    def __repr__(self):
        p = self.probe
        return (f"ProbeProb({self.target!r}, classes={p.classes}, layer={self.layer}, "
                f"sha1={_digest(p.weight, p.bias, p.mean, p.std)})")


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
