"""Oracles and helpers shared by the sweep tests (tests/sweeps, tests/cli): independent plain-HF
forwards with hand-written hooks and metrics, tiny models with loud weights, random variants.

Scopes in these helpers: "all", "last", 2 (real tokens >= 2, the sweep scope "from:2") and
"per_edit" (scope "all", each Edit its own pos_start)."""
import random

import torch

from emofast.sae import SAE
from emofast.sweeps import KL, Edit, LogitDiff, LogProb, Projection, Steer, sweep

PROMPTS = ["hello there", "a", "the quick brown fox", "abc def", "xyzzy!"]  # 1..19 tokens
METRICS = [KL(), LogitDiff([65, 66], [67, 68, 69]), LogProb([70, 71])]
SCOPES = ["all", "last", 2, "per_edit"]  # see the module docstring


def loud(model, seed: int = 1):
    """Re-draw the matrices with larger weights: ablations then change the output a lot."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 if any(k in name for k in ("emb", "wte", "wpe")) else 0.25)
    return model


def random_variants(model, n: int, seed: int, per_edit_pos: bool = False) -> list[list[Edit]]:
    """Clean run first, then a mix of single heads, head sets, single neurons, neuron sets, zero
    and mean, one or two edits per variant (one edit per (layer, site))."""
    rng = random.Random(seed)
    out = [[]]
    while len(out) < n:
        edits, used = [], set()
        for _ in range(rng.randint(1, 2)):
            layer, site = rng.randrange(model.n_layers), rng.choice(["attn_z", "mlp_act"])
            if (layer, site) in used:
                continue
            used.add((layer, site))
            n_units = model.n_heads if site == "attn_z" else model.d_mlp
            k = 1 if rng.random() < 0.5 else rng.randint(2, min(n_units, 12))
            edits.append(Edit(layer, site, rng.sample(range(n_units), k),
                              rng.choice(["zero", "mean"]),
                              rng.choice([0, 1, 3]) if per_edit_pos else 0))
        out.append(edits)
    return out


def scale_tol(values: torch.Tensor) -> float:
    return 1e-4 * max(1.0, values.abs().max().item())


def as_scope(scope) -> str:
    """The sweep scope of a helper scope (module docstring)."""
    return {"per_edit": "all", 2: "from:2"}.get(scope, scope)


def run_both(model, variants, metric, scope, **kw):
    loop = sweep(model, PROMPTS, variants, metric, engine="loop", scope=as_scope(scope),
                 progress=False, **kw)
    batched = sweep(model, PROMPTS, variants, metric, engine="batched", scope=as_scope(scope),
                    progress=False, **kw)
    return loop, batched


def oracle(model, prompts, variants, metric, scope) -> torch.Tensor:
    """[n_variants, n_prompts]: per prompt an unpadded HF forward; edits by forward pre-hooks on
    the attention output projection (heads = slices of d_head columns) and the MLP down
    projection; means over every token of every prompt read the same way."""
    hf, ad = model.hf, model.adapter
    part = {"attn_z": "attn_out_proj", "mlp_act": "mlp_down"}
    ids = [model.tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]

    def cols(e):
        if e.site == "mlp_act":
            return list(e.units)
        return [u * model.d_head + j for u in e.units for j in range(model.d_head)]

    keys = {(e.layer, e.site) for v in variants for e in v}
    sums, count = {k: 0.0 for k in keys}, 0
    handles = []
    for layer, site in keys:
        def read(module, args, key=(layer, site)):
            sums[key] = sums[key] + args[0][0].double().sum(0)      # [W]
        handles.append(ad.module(layer, part[site]).register_forward_pre_hook(read))
    clean = []
    with torch.no_grad():
        for x in ids:
            clean.append(hf(input_ids=x).logits[0, -1].double())
            count += x.shape[1]
    for h in handles:
        h.remove()
    means = {k: (s / count).float() for k, s in sums.items()}

    out = torch.empty(len(variants), len(prompts), dtype=torch.float64)
    for i, edits in enumerate(variants):
        for j, x in enumerate(ids):
            T = x.shape[1]
            handles = []
            for e in edits:
                start = {"last": T - 1, 2: 2, "all": 0, "per_edit": e.pos_start}[scope]

                def edit(module, args, e=e, start=start):
                    z = args[0].clone()                                 # [1, T, W]
                    c = cols(e)
                    z[0, start:, c] = 0.0 if e.mode == "zero" else means[(e.layer, e.site)][c]
                    return (z,) + tuple(args[1:])
                handles.append(ad.module(e.layer, part[e.site]).register_forward_pre_hook(edit))
            try:
                with torch.no_grad():
                    logits = hf(input_ids=x).logits[0, -1].double()     # [vocab]
            finally:
                for h in handles:
                    h.remove()
            out[i, j] = by_hand(metric, logits, clean[j])
    return out


def by_hand(metric, logits, clean_logits) -> float:
    if isinstance(metric, KL):
        p, q = clean_logits.softmax(-1), logits.softmax(-1)
        return float((p * (p.log() - q.log())).sum())
    if isinstance(metric, LogitDiff):
        return float(logits[metric.tokens_a].mean() - logits[metric.tokens_b].mean())
    return float(logits.softmax(-1)[metric.tokens].sum().log())


def steer_oracle(model, prompt: str, items, scope, metric) -> float:
    """One unpadded HF forward: Steers by forward hooks on the decoder blocks adding alpha * v
    (rms: of the unsteered row) in float64 at the scope's positions, zero-ablation Edits by
    pre-hooks on the attention output / MLP down projections; the metric by hand (Projection:
    the block output at its layer, read by a hook registered after the Steers')."""
    x = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    T = x.shape[1]
    first = lambda e: {"all": 0, "last": T - 1, 2: 2, "per_edit": e.pos_start}[scope]  # noqa

    def add(module, args, output, s):
        h = output[0] if isinstance(output, tuple) else output
        x64 = h[0, first(s):].double()
        c = s.alpha * x64.pow(2).mean(-1, keepdim=True).sqrt() if s.rms else s.alpha
        h = h.clone()
        h[0, first(s):] = (x64 + c * s.vector.double()).to(h.dtype)
        return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    def ablate(module, args, e):
        z = args[0].clone()
        cols = (list(e.units) if e.site == "mlp_act" else
                [u * model.d_head + j for u in e.units for j in range(model.d_head)])
        z[0, first(e):, cols] = 0.0
        return (z,) + tuple(args[1:])

    seen = {}

    def read(module, args, output):
        seen["h"] = (output[0] if isinstance(output, tuple) else output)[0, -1].double()

    ad, part = model.adapter, {"attn_z": "attn_out_proj", "mlp_act": "mlp_down"}
    with torch.no_grad():
        clean = model.hf(input_ids=x).logits[0, -1].double()
        handles = [ad.blocks[s.layer].register_forward_hook(lambda m, a, o, s=s: add(m, a, o, s))
                   if isinstance(s, Steer) else ad.module(s.layer, part[s.site])
                   .register_forward_pre_hook(lambda m, a, e=s: ablate(m, a, e)) for s in items]
        if isinstance(metric, Projection):
            handles.append(ad.blocks[metric.layer].register_forward_hook(read))
        try:
            logits = model.hf(input_ids=x).logits[0, -1].double()
        finally:
            for h in handles:
                h.remove()
    if isinstance(metric, Projection):
        return float(seen["h"] @ metric.unit.double())
    return by_hand(metric, logits, clean)


class Interrupting(LogitDiff):
    """LogitDiff that raises KeyboardInterrupt on its n-th call, and counts rows it scored."""

    def __init__(self, a, b, interrupt_at=None):
        super().__init__(a, b)
        self.calls, self.rows, self.interrupt_at = 0, 0, interrupt_at

    def __call__(self, r):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        self.rows += r.logits.shape[0]
        return super().__call__(r)


def random_sae(model, site, architecture, norm="none", seed=0):
    """A 48-latent SAE with random weights at `site` of `model` (topk: k 6)."""
    kind = site.split(".")[1]
    d_in = {"mlp_act": model.d_mlp, "attn_z": model.n_heads * model.d_head}.get(kind,
                                                                               model.d_model)
    sae = SAE(d_in, 48, architecture=architecture, k=6 if architecture == "topk" else None,
              site=site, normalize_activations=norm)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(48, generator=g) * 0.3)
    return sae
