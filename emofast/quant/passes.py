"""Teacher-forced passes of a reference model and its quantized arms over the same tokens.

    ref = reference_pass(model, texts, sae_sites, batch_size=8)        # once
    arm = arm_pass(quantized, ref)                                     # per arm

The reference pass keeps, per real token (prompt order, batch-major): the next-token
log-probabilities [n, V] (fp32), the residual leaving every layer (left-padded batches [B, T,
d_model], also the state an arm restarts from) and each SAE site's activations. An arm whose
QuantInfo says its first changed layer is f > 0 reuses the reference's residual entering f
(`emofast.models.prefix.skip_layers`): layers below f are identical, so they are not run, and
their reads are the reference's. Per token the arm pass returns KL(reference || arm), the arm's
next-token NLL, whether both top tokens agree, and its residuals and SAE-site activations.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..models import Model
from ..models.prefix import blocks_return_tuple, skip_layers
from ..sites import parse_site
from ..sweeps.batches import Batch, encode_batches
from .apply import quant_info


@dataclass
class Tokens:
    """Where each real token of a text set sits: per token [n] its text, whether it is the
    text's first token, and its next token id (-1 for a text's last token)."""
    batches: list[Batch]
    text: torch.Tensor          # [n] long
    first: torch.Tensor         # [n] bool
    next_id: torch.Tensor       # [n] long, -1: no next token
    n_texts: int


@dataclass
class Pass:
    tokens: Tokens
    resid: torch.Tensor                 # [L, n, d_model] residual leaving each layer
    sites: dict[str, torch.Tensor]      # SAE site -> [n, width]
    logprobs: torch.Tensor | None       # [n, V] (the reference's only)
    kl: torch.Tensor | None = None      # [n] KL(reference || arm), nats (arms only)
    nll: torch.Tensor | None = None     # [n] next-token NLL (nan where no next token)
    same_top: torch.Tensor | None = None  # [n] bool: argmax agrees with the reference's
    padded: list[list[torch.Tensor]] | None = None   # reference: [batch][layer] [B, T, d]
    as_tuple: bool = False


def tokens_of(model: Model, texts: Sequence[str], batch_size: int) -> Tokens:
    """The texts as left-padded batches and the per-token index of their real tokens."""
    batches = encode_batches(model, texts, batch_size)
    text, first, nxt = [], [], []
    for b in batches:
        for r in range(b.ids.shape[0]):
            pos = b.mask[r].bool().nonzero().squeeze(-1)
            ids = b.ids[r, pos]
            text.append(torch.full((len(pos),), b.start + r))
            f = torch.zeros(len(pos), dtype=torch.bool)
            f[0] = True
            first.append(f)
            nxt.append(torch.cat([ids[1:].cpu(), torch.tensor([-1])]))
    return Tokens(batches, torch.cat(text), torch.cat(first), torch.cat(nxt), len(texts))


def _nll(logprobs: torch.Tensor, next_id: torch.Tensor) -> torch.Tensor:
    ok = next_id >= 0
    got = logprobs.gather(-1, next_id.clamp(min=0)[:, None].to(logprobs.device)).squeeze(-1)
    return torch.where(ok.to(got.device), -got, torch.full_like(got, float("nan"))).cpu()


@torch.inference_mode()
def _run(model: Model, tokens: Tokens, sites: Sequence[str], ref: Pass | None, keep_padded: bool,
         progress: bool, desc: str) -> Pass:
    L = model.n_layers
    f = 0
    if ref is not None:
        info = quant_info(model)
        f = 0 if info is None else info.first_layer
    extra = [s for s in sites if parse_site(s).kind != "resid_post"]
    resid, site_acts, lps, kls, nlls, tops, padded = [], {s: [] for s in sites}, [], [], [], [], []
    as_tuple, offset = False, 0
    for bi, b in enumerate(tqdm(tokens.batches, desc=desc, disable=not progress, leave=False)):
        real = b.mask.bool()
        n_b = int(real.sum())
        got: dict[str, torch.Tensor] = {}

        def read(act, site):
            got[str(site)] = act
        hooks = [(f"L{layer}.resid_post", read) for layer in range(f, L)]
        hooks += [(s, read) for s in extra if parse_site(s).layer >= f]
        skip = nullcontext() if f == 0 else skip_layers(model, f, ref.padded[bi][f - 1],
                                                        ref.as_tuple)
        with blocks_return_tuple(model) as returns, skip, model.hooks(hooks):
            logits = model.forward(b.ids, b.mask).logits
        as_tuple = bool(returns and returns[0])
        lp = logits[real].float().log_softmax(-1)                          # [n_b, V]
        sl = slice(offset, offset + n_b)
        layers = []
        for layer in range(L):
            if layer < f:
                layers.append(ref.resid[layer, sl])
            else:
                layers.append(got[f"L{layer}.resid_post"][real].float().cpu())
        resid.append(torch.stack(layers))
        for s in sites:
            if parse_site(s).kind == "resid_post":
                continue
            site_acts[s].append(ref.sites[s][sl] if parse_site(s).layer < f else
                                got[s][real].float().flatten(1).cpu())
        if keep_padded:
            padded.append([got[f"L{layer}.resid_post"].detach().clone() for layer in range(L)])
        nlls.append(_nll(lp, tokens.next_id[sl]))
        if ref is None:
            lps.append(lp.cpu())
        else:
            lr = ref.logprobs[sl].to(lp.device)
            kls.append((lr.exp() * (lr - lp)).sum(-1).clamp(min=0).cpu())
            tops.append((lr.argmax(-1) == lp.argmax(-1)).cpu())
        offset += n_b
    resid_t = torch.cat(resid, 1)                                          # [L, n, d]
    for s in sites:
        if parse_site(s).kind == "resid_post":
            site_acts[s] = resid_t[parse_site(s).layer]
        else:
            site_acts[s] = torch.cat(site_acts[s])
    out = Pass(tokens, resid_t, site_acts, torch.cat(lps) if lps else None,
               padded=padded or None, as_tuple=as_tuple if ref is None else ref.as_tuple)
    out.nll = torch.cat(nlls)
    if ref is not None:
        out.kl, out.same_top = torch.cat(kls), torch.cat(tops)
    return out


def reference_pass(model: Model, texts: Sequence[str], sites: Sequence[str] = (), *,
                   batch_size: int = 8, progress: bool = True) -> Pass:
    """The reference's pass over `texts` (module docstring); `sites` are SAE sites to read."""
    sites = [str(parse_site(s, model.n_layers)) for s in sites]
    return _run(model, tokens_of(model, texts, batch_size), sites, None, True, progress,
                "reference pass")


def arm_pass(model: Model, ref: Pass, *, progress: bool = True) -> Pass:
    """A quantized arm's pass over the reference's tokens (module docstring)."""
    return _run(model, ref.tokens, list(ref.sites), ref, False, progress, "arm pass")
