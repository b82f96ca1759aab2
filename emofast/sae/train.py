"""`train_saes`: TopK SAEs for many sites of one model, fed by one forward pass per batch.

    result = train_saes(model, load_corpus(), SAETrainConfig(sites=("L6.resid_post",
                        "L24.resid_post")), out="runs/saes")
    result.saes["L6.resid_post"]          # an SAE; out/L6.resid_post/ holds it (SAELens format)

Method (Gao et al. 2024, as sparsify trains them): TopK on the fused kernels, forward and backward
(`sae_encode` topk, `sae_decode`: the W_dec gradient touches only the rows used); the loss is
the batch's FVU (squared error over the variance around the batch mean) plus auxk_coeff times
the AuxK loss: the top d_in / 2 pre-activations of the dead latents (not fired for
`dead_tokens` tokens) reconstruct the residual error, scaled down while few are dead. Decoder
rows are unit norm: the gradient's component along each row is removed before the step and rows
are renormalised after it. b_dec starts at the mean of the first fill, W_dec random unit rows,
W_enc = W_dec.T. Adam, lr (default 2e-4 / sqrt(d_sae / 2^14)) with a linear warmup and a linear
decay to 0 over the run.

With `out`, a checkpoint (every SAE's parameters, Adam's state, the dead-latent counters, where
the data stream is) is stored after every `checkpoint_every` fills in a verified store
(emofast.report.parts): a run started again with the same arguments resumes from it and ends
with the same SAEs as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from ..kernels import sae_decode
from ..models.identity import model_identity
from ..report.files import write_json
from ..report.lock import folder_lock
from ..report.parts import PartStore
from ..sites import parse_site
from ..validation import Interrupted, finite, positive_int
from .buffer import activation_fills, token_windows
from .formats import save_sae
from .model import SAE, site_width


@dataclass(frozen=True)
class SAETrainConfig:
    sites: tuple[str, ...] = field(default=(), metadata={
        "help": "sites to train, e.g. L6.resid_post,L24.resid_post (default: 6 resid_post "
                "layers from early to the last)"})
    expansion: int = field(default=8, metadata={"help": "d_sae = expansion x d_in"})
    k: int = field(default=32, metadata={"help": "active latents per token"})
    epochs: int = field(default=1, metadata={"help": "passes over the corpus"})
    batch_tokens: int = field(default=1024, metadata={"help": "tokens per optimiser step"})
    buffer_tokens: int = field(default=16384, metadata={"help": "tokens shuffled together"})
    batch_docs: int = field(default=16, metadata={"help": "token windows per forward"})
    max_length: int = field(default=256, metadata={"help": "tokens per window"})
    lr: float | None = field(default=None, metadata={"help": "default 2e-4 / sqrt(d_sae / 2^14)"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warmup of the lr"})
    auxk_coeff: float = field(default=1 / 32, metadata={"help": "weight of the AuxK loss"})
    dead_tokens: int = field(default=50_000, metadata={"help": "tokens without firing = dead"})
    checkpoint_every: int = field(default=1, metadata={"help": "fills between checkpoints"})
    seed: int = 0

    def __post_init__(self):
        for name in ("expansion", "k", "epochs", "batch_tokens", "buffer_tokens", "batch_docs",
                     "max_length", "warmup_steps", "dead_tokens", "checkpoint_every"):
            positive_int(getattr(self, name), name)
        finite(self.auxk_coeff, "auxk_coeff")
        if self.lr is not None and finite(self.lr, "lr") <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.buffer_tokens < self.batch_tokens:
            raise ValueError("buffer_tokens must be >= batch_tokens")
        for s in self.sites:
            parse_site(s)


class SAETrainResult(NamedTuple):
    saes: dict[str, SAE]
    history: list[dict]      # per fill: epoch, tokens, and per site fvu, l0, dead fraction
    tokens: int              # tokens trained on (per site)
    resumed_from: int        # tokens already trained on in the checkpoint resumed from (0: none)


class _Trainer:
    """One SAE, its optimiser and its dead-latent counters."""

    def __init__(self, sae: SAE, cfg: SAETrainConfig, total_steps: int):
        self.sae, self.cfg, self.total = sae, cfg, total_steps
        lr = cfg.lr or 2e-4 / (sae.d_sae / 2 ** 14) ** 0.5
        self.opt = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
        self.base_lr = lr
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.long)
        self.step_count = 0

    def step(self, x: torch.Tensor) -> dict:
        sae, cfg = self.sae, self.cfg
        for g in self.opt.param_groups:
            g["lr"] = self.base_lr * _schedule(self.step_count, cfg.warmup_steps, self.total)
        acts = sae.encode(x)
        x_hat = sae.decode(acts)
        e = x - x_hat
        total_var = (x - x.mean(0)).pow(2).sum()
        fvu = e.pow(2).sum() / total_var
        loss = fvu
        dead = self.since_fired >= cfg.dead_tokens
        if cfg.auxk_coeff and bool(dead.any()):
            loss = loss + cfg.auxk_coeff * _auxk(sae, x, e.detach(), dead, total_var)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            w, g = sae.W_dec, sae.W_dec.grad
            g -= (g * w).sum(-1, keepdim=True) * w        # keep the rows on the unit sphere
            self.opt.step()
            w /= w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            fired = torch.zeros(sae.d_sae, dtype=torch.bool)
            fired[acts.indices[acts.values > 0].unique()] = True
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
        self.step_count += 1
        return {"fvu": float(fvu.detach()), "l0": float((acts.values > 0).sum(-1).float().mean()),
                "dead": float(dead.float().mean())}

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.{n}": p.detach().clone() for n, p in self.sae.named_parameters()}
        for n, p in self.sae.named_parameters():
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if key in st:
                    out[f"{prefix}.adam.{n}.{key}"] = torch.as_tensor(st[key]).clone()
        out[f"{prefix}.since_fired"] = self.since_fired.clone()
        out[f"{prefix}.step_count"] = torch.tensor(self.step_count)
        return out

    def restore(self, prefix: str, t: dict) -> None:
        with torch.no_grad():
            for n, p in self.sae.named_parameters():
                p.copy_(t[f"{prefix}.{n}"])
                if f"{prefix}.adam.{n}.exp_avg" in t:
                    self.opt.state[p] = {k: t[f"{prefix}.adam.{n}.{k}"].clone()
                                         for k in ("exp_avg", "exp_avg_sq", "step")}
        self.since_fired = t[f"{prefix}.since_fired"].clone()
        self.step_count = int(t[f"{prefix}.step_count"])


def _schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup))


def _auxk(sae: SAE, x, e, dead, total_var) -> torch.Tensor:
    """AuxK: the top d_in / 2 dead pre-activations reconstruct the residual error e."""
    k_aux = min(sae.d_in // 2, int(dead.sum()))
    scale = min(int(dead.sum()) / (sae.d_in // 2), 1.0)
    x_in = x - sae.b_dec if sae.apply_b_dec_to_input else x
    pre = x_in @ sae.W_enc + sae.b_enc
    pre = pre.masked_fill(~dead, float("-inf"))
    top = pre.topk(k_aux, dim=-1)
    e_hat = sae_decode(top.indices, top.values.relu(), sae.W_dec)
    return scale * (e_hat - e).pow(2).sum() / total_var


def _new_sae(model, site: str, cfg: SAETrainConfig, first: torch.Tensor, seed: int) -> SAE:
    d_in = site_width(model, parse_site(site).kind)
    sae = SAE(d_in, cfg.expansion * d_in, architecture="topk", k=cfg.k, site=site)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(sae.d_sae, d_in, generator=g)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(first.mean(0))
    return sae


def train_saes(model, corpus: Sequence[str], config: SAETrainConfig | None = None, *,
               out: str | Path | None = None, progress: bool = True, repair: bool = False
               ) -> SAETrainResult:
    """See the module docstring."""
    cfg = config or SAETrainConfig()
    if not isinstance(cfg, SAETrainConfig):
        raise TypeError(f"config must be an SAETrainConfig, got {cfg!r}")
    if not cfg.sites:
        cfg = dataclasses.replace(cfg, sites=default_sites(model.n_layers))
    for s in cfg.sites:
        parse_site(s, model.n_layers)
    windows = token_windows(model, corpus, cfg.max_length)
    if out is None:
        return _train(model, windows, cfg, None, progress)
    with folder_lock(out):
        fp = {"model": model_identity(model), "config": json.loads(json.dumps(
            dataclasses.asdict(cfg))), "windows_sha256": _sha(windows)}
        store = PartStore(out, "sae-train", fp, repair=repair)
        result = _train(model, windows, cfg, store, progress)
        for site, sae in result.saes.items():
            save_sae(sae, Path(out) / site, model_name=model.name)
        write_json(Path(out) / "train.json", {"config": dataclasses.asdict(cfg),
                                             "tokens": result.tokens,
                                             "resumed_from": result.resumed_from,
                                             "history": result.history})
        return result


def default_sites(n_layers: int, n: int = 6) -> tuple[str, ...]:
    """n resid_post layers evenly spread from about a sixth of the depth to the last
    (SmolLM2's 30: 5, 10, 15, 19, 24, 29)."""
    first, last = n_layers // 6, n_layers - 1
    layers = sorted({round(first + i * (last - first) / (n - 1)) for i in range(n)})
    return tuple(f"L{layer}.resid_post" for layer in layers)


def _sha(windows) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(windows).encode()).hexdigest()


def _train(model, windows, cfg: SAETrainConfig, store, progress: bool) -> SAETrainResult:
    n_tokens_epoch = sum(len(w) - 1 for w in windows)            # an upper bound (specials)
    total_steps = max(1, cfg.epochs * n_tokens_epoch // cfg.batch_tokens)
    trainers: dict[str, _Trainer] = {}
    history: list[dict] = []
    start, tokens, resumed = (0, 0), 0, 0
    last = _latest(store)
    if last is not None:
        meta = json.loads(bytes(last["meta"].tolist()).decode())
        start, tokens, history, resumed = tuple(meta["next"]), meta["tokens"], meta["history"], \
            meta["tokens"]
        for i, site in enumerate(cfg.sites):
            sae = _new_sae(model, site, cfg, torch.zeros(1, site_width(
                model, parse_site(site).kind)), cfg.seed + i)
            trainers[site] = _Trainer(sae, cfg, total_steps)
            trainers[site].restore(f"s{i}", last)
    bar = tqdm(total=cfg.epochs * n_tokens_epoch, initial=tokens, unit="tok", desc="train SAEs",
               disable=not progress)
    fills = 0
    try:
        for fill in activation_fills(model, windows, cfg.sites, batch_docs=cfg.batch_docs,
                                     buffer_tokens=cfg.buffer_tokens,
                                     batch_tokens=cfg.batch_tokens, seed=cfg.seed,
                                     epochs=cfg.epochs, start=start):
            if not trainers:
                for i, site in enumerate(cfg.sites):
                    trainers[site] = _Trainer(_new_sae(model, site, cfg, fill.batches[0][site]
                                                       if fill.batches else torch.zeros(1, 1),
                                                       cfg.seed + i), cfg, total_steps)
            stats = {s: [] for s in cfg.sites}
            for batch in fill.batches:
                for site, tr in trainers.items():
                    stats[site].append(tr.step(batch[site]))
                tokens += cfg.batch_tokens
                bar.update(cfg.batch_tokens)
            row = {"epoch": fill.epoch, "tokens": tokens, **{
                s: {k: sum(d[k] for d in v) / max(1, len(v)) for k in ("fvu", "l0", "dead")}
                for s, v in stats.items()}}
            history.append(row)
            bar.set_postfix({s.split(".")[0]: f"fvu {row[s]['fvu']:.3f}" for s in cfg.sites})
            fills += 1
            if store is not None and fills % cfg.checkpoint_every == 0:
                _checkpoint(store, trainers, cfg, (fill.epoch, fill.next_window), tokens, history)
    except KeyboardInterrupt:
        if store is None:
            raise
        raise Interrupted(f"SAE training interrupted after {tokens} tokens; the last checkpoint "
                          f"is in {store.dir}: run the same command again to resume") from None
    finally:
        bar.close()
    if not trainers:
        raise ValueError("the corpus gave no batch: lower batch_tokens / buffer_tokens")
    return SAETrainResult({s: t.sae.eval() for s, t in trainers.items()}, history, tokens,
                          resumed)


def _latest(store) -> dict | None:
    if store is None or not store.tensors:
        return None
    return store.tensors[max(store.tensors)]


def _checkpoint(store, trainers, cfg, next_pos, tokens, history) -> None:
    t = {}
    for i, site in enumerate(cfg.sites):
        t.update(trainers[site].state(f"s{i}"))
    meta = json.dumps({"next": list(next_pos), "tokens": tokens, "history": history}).encode()
    t["meta"] = torch.tensor(list(meta), dtype=torch.uint8)
    name = f"checkpoint-{tokens:012d}"
    store.put(name, t)
    for old in [n for n in store.tensors if n != name]:
        store.drop(old)
