"""`evaluate_sae`: how well an SAE reconstructs its site on held-out text, and what splicing it
costs the language model.

    ev = evaluate_sae(model, sae, texts)
    ev.fvu, ev.l0, ev.dead_fraction, ev.ce_loss_score, ev.kl_sae

Tokens evaluated: every real token except each text's first and the tokenizer's special tokens
(they carry massive activations; SAELens's exclude_special_tokens, as training excludes them).
- FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over those tokens (the variance around the
  data mean: SAELens's explained variance measured it around zero until 2026, which inflated
  it).
- L0: mean number of active latents per token; dead_fraction: latents that never fire on the
  evaluated tokens (the window is these texts: `n_tokens` says how many); density: each latent's
  firing frequency, and `density_histogram()` its histogram over log10 bins.
- Next-token cross-entropy over every predicted real position: clean, with the bare
  reconstruction spliced at the evaluated tokens (other tokens keep their activation), with the
  site zeroed at those tokens; ce_loss_score = (CE_zero - CE_sae) / (CE_zero - CE_clean); kl_sae
  = mean KL(clean || spliced) of the next-token distributions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..kernels import EncoderOutput
from ..validation import positive_int, texts as check_texts
from .model import SAE


@dataclass
class SAEEvaluation:
    site: str
    n_tokens: int             # tokens the SAE statistics are over
    fvu: float
    l0: float
    dead_fraction: float
    density: torch.Tensor     # [d_sae] firing frequency of each latent
    ce_clean: float
    ce_sae: float
    ce_zero: float
    ce_loss_score: float
    kl_sae: float

    def density_histogram(self, lo: float = -6.0, hi: float = 0.0, bins: int = 24) -> dict:
        """{"log10_edges" [bins + 1], "counts" [bins], "never_fired"}: the latents' firing
        frequencies over log10 bins from lo to hi (SAELens's feature density plot); latents
        that never fired are counted apart (log10 0 is -inf)."""
        fired = self.density[self.density > 0].double().log10().clamp(lo, hi)
        counts = torch.histc(fired, bins=bins, min=lo, max=hi)
        return {"log10_edges": torch.linspace(lo, hi, bins + 1).tolist(),
                "counts": [int(c) for c in counts], "never_fired": int((self.density == 0).sum())}

    def to_json(self) -> dict:
        d = asdict(self)
        d["density"] = self.density.tolist()
        d["density_histogram"] = self.density_histogram()
        return d


def evaluated_positions(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: real tokens, not each row's first real one, not special tokens."""
    first = mask.cumsum(-1) == 1
    special = torch.zeros_like(mask, dtype=torch.bool)
    for t in model.tokenizer.all_special_ids:
        special |= ids == t
    return mask.bool() & ~first & ~special


@torch.no_grad()
def evaluate_sae(model, sae: SAE, texts: Sequence[str], *, batch_size: int = 8,
                 progress: bool = True) -> SAEEvaluation:
    """See the module docstring."""
    texts = check_texts(texts, "evaluate_sae texts")
    batch_size = positive_int(batch_size, "batch_size")
    site = sae.site
    sums = dict(sq_err=0.0, n=0, l0=0.0, ce=[0.0, 0.0, 0.0], kl=0.0, pairs=0)
    x_sum, x_sq = 0.0, 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.float64)
    for start in tqdm(range(0, len(texts), batch_size), desc="evaluate SAE", disable=not progress):
        enc = model.encode(texts[start:start + batch_size], padding_side="left")
        ids, mask = enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)
        keep = evaluated_positions(model, ids, mask)
        seen = {}

        def read(act, s):
            seen["x"] = sae._flat(act)[keep].float()
        with model.hooks({site: read}):
            clean = model.forward(ids, mask).logits.float()
        x = seen["x"]                                                     # [N, d_in]
        acts = sae.encode(x)
        x_hat = sae.forward(x).float()
        dense = _dense(acts, sae.d_sae)
        fired += (dense > 0).sum(0).double().cpu()
        sums["sq_err"] += float((x - x_hat).pow(2).sum())
        sums["l0"] += float((dense > 0).sum())
        sums["n"] += x.shape[0]
        x_sum = x_sum + x.double().sum(0)
        x_sq += float(x.double().pow(2).sum())
        logits = [clean, _spliced(model, sae, ids, mask, keep, zero=False),
                  _spliced(model, sae, ids, mask, keep, zero=True)]
        pairs = (mask[:, :-1] * mask[:, 1:]).bool()                       # [B, T-1]
        target = ids[:, 1:][pairs]
        logp = [lg[:, :-1][pairs].log_softmax(-1) for lg in logits]
        for i, lp in enumerate(logp):
            sums["ce"][i] += float(-lp.gather(-1, target[:, None]).sum())
        sums["kl"] += float((logp[0].exp() * (logp[0] - logp[1])).sum())
        sums["pairs"] += int(pairs.sum())
    n = sums["n"]
    if n == 0:
        raise ValueError("evaluate_sae: no evaluated tokens (every text is one token or special "
                         "tokens only): give longer texts")
    mean = x_sum / n
    total_var = x_sq - n * float(mean.pow(2).sum())                      # sum ||x - mean||^2
    ce_clean, ce_sae, ce_zero = (c / sums["pairs"] for c in sums["ce"])
    return SAEEvaluation(site, n, sums["sq_err"] / total_var, sums["l0"] / n,
                         float((fired == 0).double().mean()), (fired / n).float(), ce_clean,
                         ce_sae, ce_zero, (ce_zero - ce_sae) / (ce_zero - ce_clean),
                         sums["kl"] / sums["pairs"])


def _dense(acts, d_sae: int) -> torch.Tensor:
    if isinstance(acts, EncoderOutput):
        return torch.zeros(*acts.values.shape[:-1], d_sae, dtype=acts.values.dtype,
                           device=acts.values.device).scatter(-1, acts.indices, acts.values)
    return acts


def _spliced(model, sae: SAE, ids, mask, keep, *, zero: bool) -> torch.Tensor:
    """Logits with the site's activation at `keep` replaced by the reconstruction (or 0)."""
    def fn(act, s):
        flat = sae._flat(act).clone()
        rows = flat[keep]
        flat[keep] = torch.zeros_like(rows) if zero else sae.forward(rows).to(flat.dtype)
        return flat.view_as(act)
    with model.hooks({sae.site: fn}):
        return model.forward(ids, mask).logits.float()
