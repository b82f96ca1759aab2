"""One SAE's training: its step for each method, its optimiser, its dead-latent counters.

Methods (`SAETrainConfig.method`):
- topk (Gao et al. 2024, as sparsify): the k largest pre-activations, ReLU'd, through the fused
  `sae_encode` / `sae_decode` kernels forward and backward (the W_enc and W_dec gradients touch
  only the latents used), plus auxk_coeff times the AuxK loss: the top d_in / 2 pre-activations
  of the dead latents reconstruct the residual error, scaled down while fewer are dead.
- batchtopk (Bussmann et al. 2024): the k x batch largest ReLU'd pre-activations of the whole
  batch (ties at the threshold kept in batch order, so any split of the rows keeps the same),
  and AuxK; a running average of the smallest kept activation becomes every latent's
  threshold, so it is saved as a jumprelu SAE (as SAELens does).
- standard: ReLU, with l1_coeff times the decoder-norm-weighted L1 sum_j a_j |W_dec_j| / sqrt(d_in)
  (Anthropic, April 2024; / sqrt(d_in): relative to the scaled activations' norm); decoder
  rows are free (the weighting is what stops them growing).
- jumprelu (Rajamanoharan et al. 2024): a_j = z_j * H(z_j - theta_j), with l0_coeff times the
  L0; theta learns through straight-through pseudo-derivatives with a rectangle kernel of width
  `bandwidth` (theta's gradient -theta / bandwidth inside the window for the activation, -1 /
  bandwidth for the L0 step).

The loss is the batch's FVU (squared error over the variance around the batch mean) plus the
method's penalty, in fp32; the encoder and decoder run in `compute_dtype` ("auto": bf16 on CUDA, as
under autocast, fp32 on CPU) on bf16 copies of the fp32 weights, which Adam updates; jumprelu
always runs in fp32 (its straight-through window is finer than bf16's grid). Training runs on activations scaled by one constant per site, sqrt(d_in) /
E|x| from the first fill (SAELens's expected_average_only_in), so that penalties, thresholds and
bandwidth mean the same at every site; `result()` folds the scale back into the weights (every
architecture is positively homogeneous: b_enc, b_dec and thresholds divide by it), so the saved
SAE reads raw activations with unit decoder rows unchanged. topk and batchtopk keep decoder rows
unit norm: the gradient's component along each row is removed before the step and rows are
renormalised after it. Adam, lr (default DEFAULT_LR / sqrt(d_sae / 2^14)) with a linear warmup
and a linear decay to 0 over the run.
"""
from __future__ import annotations

import copy

import torch

from ..kernels import sae_decode, sae_encode
from .model import SAE

METHODS = ("topk", "batchtopk", "standard", "jumprelu")
ARCHITECTURE_OF = {"topk": "topk", "batchtopk": "jumprelu", "standard": "standard",
                   "jumprelu": "jumprelu"}
THRESHOLD_MOMENTUM = 0.99   # batchtopk's running threshold, per step
# sparsify's 2e-4 x 8: a corpus of ~100k tokens gives ~1000 steps, not sparsify's ~1M. Measured
# at SmolLM2 L15 on the default corpus (FVU of the bulk of unseen in-corpus tokens): sparsify's
# rate, 4 epochs 0.29; this rate, 10 epochs 0.14
DEFAULT_LR = 1.6e-3


class SiteTrainer:
    """One SAE (training in scaled units), its optimiser and its dead-latent counters."""

    def __init__(self, sae: SAE, cfg, total_steps: int, scale: float, ranks=None):
        """`ranks` (`emofast.sae.distributed.DataParallel`): each step trains on this rank's
        rows of the batch and sums the gradients and counts over the ranks."""
        self.sae, self.cfg, self.total, self.scale = sae, cfg, total_steps, float(scale)
        self.ranks = ranks
        lr = cfg.lr or DEFAULT_LR / (sae.d_sae / 2 ** 14) ** 0.5
        trained = [p for n, p in sae.named_parameters()
                   if not (cfg.method == "batchtopk" and n == "threshold")]
        self.opt = torch.optim.Adam(trained, lr=lr, betas=(0.9, 0.999))
        self.base_lr = lr
        self.since_fired = torch.zeros(sae.d_sae, dtype=torch.long)
        self.step_count = 0
        self.running_threshold = torch.tensor(float("nan"))   # batchtopk
        self.fire_counts = torch.zeros(sae.d_sae, dtype=torch.long)  # since new_epoch()
        self.counted_tokens = 0

    def new_epoch(self) -> None:
        """Start counting firings afresh: log_sparsity() describes the last epoch."""
        self.fire_counts.zero_()
        self.counted_tokens = 0

    def log_sparsity(self) -> torch.Tensor:
        """[d_sae] log10 of each latent's firing frequency over the counted tokens (SAELens's
        sparsity.safetensors; -10 for a latent that never fired)."""
        return torch.log10(self.fire_counts.double() / max(1, self.counted_tokens) + 1e-10
                           ).float()

    def step(self, x: torch.Tensor) -> dict:
        """One optimiser step on a batch x [N, d_in] of raw activations (with `ranks`: the
        whole batch, of which this rank trains on its rows; the loss's normalisers, N and the
        batch variance, are the whole batch's, so the summed gradients are one process's)."""
        sae, cfg, ranks = self.sae, self.cfg, self.ranks
        for g in self.opt.param_groups:
            g["lr"] = self.base_lr * _schedule(self.step_count, cfg.warmup_steps, self.total)
        x = x.to(sae.W_enc.device, sae.W_enc.dtype) * self.scale
        n, total_var = x.shape[0], (x - x.mean(0)).pow(2).sum()
        if ranks is not None:
            x = x[ranks.rows(n)]
        # jumprelu stays fp32: its window (bandwidth 1e-3) is finer than bf16's grid (~0.004 at 1)
        dtype = torch.float32 if cfg.method == "jumprelu" else compute_dtype(cfg.compute_dtype,
                                                                             x.device)
        x_hat, fires, on_total, penalty, aux = self._forward(x, dtype, n)
        e = x - x_hat.to(x.dtype)
        sq = e.pow(2).sum()
        loss = sq / total_var + penalty
        dead = self.since_fired >= cfg.dead_tokens
        if aux and cfg.auxk_coeff and bool(dead.any()):
            loss = loss + cfg.auxk_coeff * _auxk(sae, x, e.detach(), dead.to(x.device),
                                                 total_var)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            stats = torch.stack([sq.detach().float(), torch.as_tensor(on_total).float()])
            if ranks is not None:
                ranks.sum_gradients(self.opt)
                fires, stats = ranks.sum(fires), ranks.sum(stats)
            unit = cfg.method in ("topk", "batchtopk")
            if unit:
                w, g = sae.W_dec, sae.W_dec.grad
                g -= (g * w).sum(-1, keepdim=True) * w        # keep the rows on the unit sphere
            self.opt.step()
            if unit:
                sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            if cfg.method == "jumprelu":   # above half the window: z = relu(pre) is 0 for
                sae.threshold.clamp_(min=cfg.bandwidth / 2)   # most latents, never inside it
            fires = fires.cpu()
            self.since_fired += n
            self.since_fired[fires > 0] = 0
            self.fire_counts += fires
            self.counted_tokens += n
        self.step_count += 1
        return {"fvu": float(stats[0] / total_var.float()), "l0": float(stats[1]) / n,
                "dead": float(dead.float().mean())}

    def _forward(self, x, dtype, n: int):
        """(x_hat, tokens each latent fired on [d_sae], active latents summed over the rows,
        penalty, whether AuxK applies) for the rows x (scaled) of a batch of n; the encoder and
        decoder run in `dtype` (bf16 copies of the fp32 weights: autocast's way). Penalties are
        sums over the rows / n: with `ranks`, this rank's share of the batch's."""
        sae, cfg = self.sae, self.cfg
        W_enc, b_enc, W_dec, b_dec = (p.to(dtype) for p in (sae.W_enc, sae.b_enc, sae.W_dec,
                                                             sae.b_dec))
        xc = x.to(dtype)
        b_in = b_dec if sae.apply_b_dec_to_input else None
        if cfg.method == "topk":
            acts = sae_encode(xc, W_enc, b_enc, activation="topk", k=sae.k, b_dec=b_in)
            on = acts.values > 0
            fires = torch.bincount(acts.indices[on], minlength=sae.d_sae)
            return (sae_decode(acts.indices, acts.values, W_dec, b_dec), fires, on.sum(), 0.0,
                    True)
        z = sae_encode(xc, W_enc, b_enc, activation="relu", b_dec=b_in)          # [N, d_sae]
        if cfg.method == "batchtopk":
            acts = z * self._batch_top(z.detach(), cfg.k * n)
            kept = acts.detach()[acts.detach() > 0]
            low = kept.min().float().cpu() if kept.numel() else torch.tensor(float("inf"))
            if self.ranks is not None:
                low = self.ranks.min(low)
            if low.isfinite():
                old = self.running_threshold
                self.running_threshold = low if old.isnan() else (
                    THRESHOLD_MOMENTUM * old + (1 - THRESHOLD_MOMENTUM) * low)
            penalty = 0.0
        elif cfg.method == "standard":
            acts = z
            penalty = cfg.l1_coeff * (acts.float() * sae.W_dec.norm(dim=-1)).sum() / n / \
                sae.d_in ** 0.5
        else:  # jumprelu (always fp32, see step)
            acts = _JumpReLU.apply(z, sae.threshold, cfg.bandwidth)
            penalty = cfg.l0_coeff * _Step.apply(z, sae.threshold, cfg.bandwidth).sum() / n
        on = acts.detach() > 0
        return acts @ W_dec + b_dec, on.sum(0), on.sum(), penalty, cfg.method == "batchtopk"

    def _batch_top(self, z: torch.Tensor, m: int) -> torch.Tensor:
        """The mask of the batch's m largest entries; entries equal to the m-th largest are
        kept in batch order (row-major) until m are kept, so that one process and any split of
        the rows between ranks keep the same ones (with `ranks`: of every rank's rows)."""
        flat, ranks = z.flatten(), self.ranks
        t = flat.topk(m).values[-1] if ranks is None else ranks.kth_largest(flat, m)
        above, tied = flat > t, flat == t
        n_above, before = above.sum(), 0
        if ranks is not None:
            n_above, before = ranks.sum(n_above), ranks.before(tied.sum())
        keep = above | tied & (before + tied.cumsum(0) <= m - n_above)
        return keep.view_as(z)

    def result(self) -> SAE:
        """The SAE for raw activations: the training scale folded into the weights."""
        out = copy.deepcopy(self.sae).eval()
        s = self.scale
        with torch.no_grad():
            out.b_enc /= s
            out.b_dec /= s
            if self.cfg.method == "batchtopk":
                out.threshold.fill_(float(self.running_threshold.nan_to_num(0.0)))
            if hasattr(out, "threshold"):
                out.threshold /= s
        return out

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}.{n}": p.detach().clone() for n, p in self.sae.named_parameters()}
        for n, p in self.sae.named_parameters():
            st = self.opt.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq", "step"):
                if key in st:
                    out[f"{prefix}.adam.{n}.{key}"] = torch.as_tensor(st[key]).clone()
        out[f"{prefix}.since_fired"] = self.since_fired.clone()
        out[f"{prefix}.step_count"] = torch.tensor(self.step_count)
        out[f"{prefix}.scale"] = torch.tensor(self.scale, dtype=torch.float64)
        out[f"{prefix}.running_threshold"] = self.running_threshold.clone()
        out[f"{prefix}.fire_counts"] = self.fire_counts.clone()
        out[f"{prefix}.counted_tokens"] = torch.tensor(self.counted_tokens)
        return out

    def restore(self, prefix: str, t: dict) -> None:
        with torch.no_grad():
            for n, p in self.sae.named_parameters():
                p.copy_(t[f"{prefix}.{n}"])
                if f"{prefix}.adam.{n}.exp_avg" in t:   # the moments where the parameter is
                    self.opt.state[p] = {k: t[f"{prefix}.adam.{n}.{k}"].clone().to(
                        p.device if k != "step" else "cpu") for k in ("exp_avg", "exp_avg_sq",
                                                                      "step")}
        self.since_fired = t[f"{prefix}.since_fired"].clone()
        self.step_count = int(t[f"{prefix}.step_count"])
        self.scale = float(t[f"{prefix}.scale"])
        self.running_threshold = t[f"{prefix}.running_threshold"].clone()
        self.fire_counts = t[f"{prefix}.fire_counts"].clone()
        self.counted_tokens = int(t[f"{prefix}.counted_tokens"])


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 on CUDA, fp32 elsewhere (the weights and Adam stay fp32 either way)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def new_sae(site: str, d_in: int, cfg, first: torch.Tensor, seed: int,
            d_sae: int | None = None) -> tuple[SAE, float]:
    """A fresh SAE for `method` and its training scale: random unit decoder rows, W_enc their
    transpose, b_dec the mean of the first batch (scaled), jumprelu thresholds at
    init_threshold. d_sae defaults to cfg.expansion x d_in."""
    arch = ARCHITECTURE_OF[cfg.method]
    d_sae = d_sae or cfg.expansion * d_in
    if cfg.method == "batchtopk" and cfg.k > d_sae:
        raise ValueError(f"k {cfg.k} is more than d_sae {d_sae}")
    sae = SAE(d_in, d_sae, architecture=arch,
              k=cfg.k if arch == "topk" else None, site=site)
    scale = d_in ** 0.5 / float(first.norm(dim=-1).mean().clamp_min(1e-12))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(sae.d_sae, d_in, generator=g)
        sae.W_dec.copy_(w / w.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_dec.copy_(first.mean(0) * scale)
        if arch == "jumprelu":
            sae.threshold.fill_(cfg.init_threshold)
    if cfg.method == "batchtopk":
        sae.threshold.requires_grad_(False)
    return sae, scale


def _schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup))


def _auxk(sae: SAE, x, e, dead, total_var) -> torch.Tensor:
    """AuxK: the top d_in / 2 dead pre-activations reconstruct the residual error e, encoded on
    the dead latents' columns only. When k_aux is more than a quarter of the dead latents the
    codes are nearly dense: one BLAS matmul beats the sparse kernels' per-entry loops."""
    ids = dead.nonzero().squeeze(1)
    k_aux = min(sae.d_in // 2, len(ids))
    b_in = sae.b_dec if sae.apply_b_dec_to_input else None
    if 4 * k_aux > len(ids):
        pre = (x - b_in if b_in is not None else x) @ sae.W_enc[:, ids] + sae.b_enc[ids]
        top = pre.topk(k_aux, dim=-1)
        codes = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        e_hat = codes @ sae.W_dec[ids]
    else:
        acts = sae_encode(x, sae.W_enc[:, ids], sae.b_enc[ids], activation="topk", k=k_aux,
                          b_dec=b_in)
        e_hat = sae_decode(acts.indices, acts.values, sae.W_dec[ids])
    return k_aux / (sae.d_in // 2) * (e_hat - e).pow(2).sum() / total_var


def _window(z, theta, bandwidth):
    return ((z - theta).abs() < bandwidth / 2).to(z.dtype)


class _JumpReLU(torch.autograd.Function):
    """z * H(z - theta); d/dz = H(z - theta), d/dtheta = -theta / bandwidth in the window."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return z * (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        g_theta = -(theta / ctx.bandwidth) * _window(z, theta, ctx.bandwidth) * g
        return g * (z > theta).to(z.dtype), g_theta.sum(0), None


class _Step(torch.autograd.Function):
    """H(z - theta); no gradient to z, d/dtheta = -1 / bandwidth in the window."""

    @staticmethod
    def forward(ctx, z, theta, bandwidth):
        ctx.save_for_backward(z, theta)
        ctx.bandwidth = bandwidth
        return (z > theta).to(z.dtype)

    @staticmethod
    def backward(ctx, g):
        z, theta = ctx.saved_tensors
        g_theta = -(1.0 / ctx.bandwidth) * _window(z, theta, ctx.bandwidth) * g
        return None, g_theta.sum(0), None
