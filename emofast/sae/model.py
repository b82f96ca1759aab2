"""`SAE`: one sparse autoencoder module, three architectures, on the fused kernels.

    sae = SAE(d_in=576, d_sae=4608, architecture="topk", k=32, site="L24.resid_post")
    acts = sae.encode(x)               # EncoderOutput(values [..., k], indices [..., k]) for topk;
                                       # [..., d_sae] for standard / jumprelu (sparse=True: top-k)
    x_hat = sae.decode(acts)           # [..., d_in]
    with sae.hook(model, edit=lambda acts: ...):   # spliced into the model at sae.site
        model.forward(ids, mask)

Parameters are in SAELens orientation: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae],
b_dec [d_in], and threshold [d_sae] for jumprelu. As SAELens computes it:
    x' = norm_in(x) - b_dec * apply_b_dec_to_input
    pre = x' @ W_enc + b_enc
    standard: relu(pre); jumprelu: relu(pre) * (pre > threshold); topk: the k largest pre, ReLU'd
    x_hat = norm_out(acts @ W_dec + b_dec)
normalize_activations: "none"; "expected_average_only_in" (a constant input scale that SAELens
folds into the weights, so none at run time); "constant_norm_rescale" (x * sqrt(d_in) / |x| in,
divided back out); "layer_norm" (x - mean, / (std + 1e-5) in; * std + mean out, std unbiased).
encode and decode go through `emofast.kernels.sae_encode` / `sae_decode` (Triton on CUDA, C++ on
CPU, the torch reference otherwise); jumprelu passes threshold.clamp(min=0) to the kernel's
pre * (pre > threshold), which equals relu(pre) * (pre > threshold) for every threshold.

A site "L3.attn_z" reads [..., H, d_head] activations flattened to H * d_head (SAELens's hook_z
reshape). `hook(model, error=True)` replaces the site's activation by x + (decode(edit(acts)) -
decode(acts)): the reconstruction plus the reconstruction error, so with no edit the forward is
exactly the model's own and an edit changes exactly what it edits; `error=False` splices the bare
reconstruction decode(edit(acts)) (evaluation).
"""
from __future__ import annotations

import numbers
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..kernels import EncoderOutput, sae_decode, sae_encode
from ..sites import parse_site
from ..validation import positive_int

ARCHITECTURES = ("standard", "topk", "jumprelu")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_KERNEL_ACTIVATION = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
LN_EPS = 1e-5

Acts = "torch.Tensor | EncoderOutput"


class SAE(nn.Module):
    """A sparse autoencoder reading `site` (see the module docstring)."""

    def __init__(self, d_in: int, d_sae: int, *, architecture: str = "topk", k: int | None = None,
                 site: str = "L0.resid_post", apply_b_dec_to_input: bool = True,
                 normalize_activations: str = "none", dtype: torch.dtype = torch.float32,
                 device: str | torch.device | None = None):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"unknown SAE architecture {architecture!r}: one of "
                             f"{', '.join(ARCHITECTURES)}")
        if normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"unknown normalize_activations {normalize_activations!r}: one of "
                             f"{', '.join(NORMALIZATIONS)}")
        self.d_in, self.d_sae = positive_int(d_in, "d_in"), positive_int(d_sae, "d_sae")
        if architecture == "topk":
            self.k = positive_int(k, "k (topk)")
            if self.k > d_sae:
                raise ValueError(f"k {k} is more than d_sae {d_sae}")
        elif k is not None:
            raise ValueError(f"k is for topk SAEs; a {architecture} SAE takes none")
        else:
            self.k = None
        self.architecture, self.site = architecture, str(parse_site(site))
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations = normalize_activations
        self._last_undo = None   # the last encode's normalisation statistics (for decode)
        kw = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, **kw))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        if architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(d_sae, **kw))

    def __repr__(self) -> str:
        k = f", k={self.k}" if self.k else ""
        return f"SAE({self.site}, {self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}{k})"

    # -- the two halves ------------------------------------------------------------------------
    def _norm_in(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
        """x normalised as normalize_activations says, and what norm_out needs to undo it."""
        if self.normalize_activations == "constant_norm_rescale":
            coeff = self.d_in ** 0.5 / x.norm(dim=-1, keepdim=True)
            return x * coeff, (coeff,)
        if self.normalize_activations == "layer_norm":
            mu = x.mean(-1, keepdim=True)
            centred = x - mu
            std = centred.std(-1, keepdim=True)
            return centred / (std + LN_EPS), (mu, std)
        return x, None

    def _norm_out(self, x: torch.Tensor, undo: tuple | None) -> torch.Tensor:
        if undo is None:
            return x
        if self.normalize_activations == "constant_norm_rescale":
            return x / undo[0]
        mu, std = undo
        return x * std + mu

    def encode(self, x: torch.Tensor, *, sparse: bool = False, k: int | None = None,
               _undo: list | None = None) -> Acts:
        """x [..., d_in] (an attn_z site: [..., H, d_head]) -> activations: EncoderOutput
        (values, indices [..., k]) for topk, or with sparse=True the k largest of a standard /
        jumprelu SAE's; else dense [..., d_sae]."""
        x = self._flat(x)
        if x.shape[-1] != self.d_in:
            raise ValueError(f"{self}: input width {x.shape[-1]}, the SAE reads {self.d_in}")
        x, undo = self._norm_in(x.to(self.W_enc.dtype))
        if _undo is not None:
            _undo.append(undo)
        self._last_undo = undo
        threshold = self.threshold.clamp(min=0) if self.architecture == "jumprelu" else None
        return sae_encode(x, self.W_enc, self.b_enc, activation=_KERNEL_ACTIVATION[
            self.architecture], k=self.k if self.architecture == "topk" else k,
            threshold=threshold, b_dec=self.b_dec if self.apply_b_dec_to_input else None,
            sparse=sparse)

    def decode(self, acts: Acts, *, _undo: tuple | None = None) -> torch.Tensor:
        """Activations (EncoderOutput or dense [..., d_sae]) -> x_hat [..., d_in]. A layer_norm
        or constant_norm_rescale SAE undoes its normalisation with the statistics of the last
        `encode` (as SAELens does: decode(encode(x)) is the reconstruction of x)."""
        if _undo is None and self.normalize_activations in ("layer_norm",
                                                            "constant_norm_rescale"):
            _undo = self._last_undo
            if _undo is None:
                raise ValueError(f"{self}: decode undoes the {self.normalize_activations} of "
                                 "the last encode; call encode first")
        if isinstance(acts, EncoderOutput):
            out = sae_decode(acts.indices, acts.values, self.W_dec, self.b_dec)
        else:
            if acts.shape[-1] != self.d_sae:
                raise ValueError(f"{self}: activations of width {acts.shape[-1]}, the SAE has "
                                 f"{self.d_sae} latents")
            out = acts @ self.W_dec + self.b_dec
        return self._norm_out(out, _undo)

    # -- a few features at a time (sweep edits, feature steering) ------------------------------
    def dense(self, acts: Acts) -> torch.Tensor:
        """Activations as dense [..., d_sae]."""
        if not isinstance(acts, EncoderOutput):
            return acts
        out = acts.values.new_zeros(*acts.values.shape[:-1], self.d_sae)
        return out.scatter_(-1, acts.indices.long(), acts.values)

    def feature_values(self, acts: Acts, features: torch.Tensor) -> torch.Tensor:
        """Activations [B, T, ...] of each row's features [B, m] -> [B, T, m] (TopK: read from
        the kept entries, no dense [B, T, d_sae])."""
        if isinstance(acts, EncoderOutput):
            hit = acts.indices.long()[..., :, None] == features[:, None, None, :]  # [B,T,k,m]
            return (acts.values[..., :, None] * hit).sum(-2)
        return acts.gather(-1, features[:, None, :].expand(-1, acts.shape[1], -1))

    def feature_change(self, coef: torch.Tensor, features: torch.Tensor,
                       undo: tuple | None) -> torch.Tensor:
        """decode(a + c) - decode(a) for a change c [B, T, m] of each row's features [B, m]:
        c @ W_dec[features] through the output normalisation (linear: the layer_norm std, or
        over the constant_norm_rescale coefficient, of the encode that gave `undo`)."""
        W = self.W_dec[features]                                                 # [B, m, d_in]
        delta = torch.einsum("btm,bmd->btd", coef.to(W.dtype), W)               # [B, T, d_in]
        return self.output_jacobian(delta, undo)

    def output_jacobian(self, y: torch.Tensor, undo: tuple | None) -> torch.Tensor:
        """y [..., d_in] times the Jacobian of the output normalisation (a scalar per position:
        the layer_norm std, 1 / the constant_norm_rescale coefficient, 1 without one)."""
        if undo is None:
            return y
        if self.normalize_activations == "constant_norm_rescale":
            return y / undo[0]
        return y * undo[1]                                                      # layer_norm std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction of x, shaped like x."""
        undo: list = []
        return self.decode(self.encode(x, _undo=undo), _undo=undo[0]).view_as(x)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """attn_z activations [..., H, d_head] as [..., H * d_head]; flat input as it is."""
        if parse_site(self.site).kind == "attn_z" and x.dim() >= 2 and x.shape[-1] != self.d_in:
            return x.flatten(-2)
        return x

    # -- spliced into a model --------------------------------------------------------------------
    def check_model(self, model):
        """The SAE's site in `model`, or a ValueError when the model has no such site or its
        width there is not the SAE's d_in."""
        site = parse_site(self.site, model.n_layers)
        width = site_width(model, site.kind)
        if width != self.d_in:
            raise ValueError(f"{self} reads {self.d_in} features but {site} of this model has "
                             f"{width}: it belongs to another model or site")
        return site

    @contextmanager
    def hook(self, model, *, edit: Callable[[Acts], Acts] | None = None,
             error: bool = True) -> Iterator[None]:
        """Splice the SAE into `model` at its site for the block (see the module docstring):
        `edit(acts) -> acts` changes the features of every row and position."""
        site = self.check_model(model)

        def fn(x, _site):
            if error and edit is None:
                return None  # x + (decode(acts) - decode(acts)) = x, exactly
            undo: list = []
            acts = self.encode(x, _undo=undo)
            new = self.decode(edit(acts) if edit is not None else acts, _undo=undo[0])
            if error:
                new = self._flat(x) + (new - self.decode(acts, _undo=undo[0])).to(x.dtype)
            return new.to(x.dtype).view_as(x)
        with model.hooks({str(site): fn}):
            yield


def site_width(model, kind: str) -> int:
    """The width an SAE reads at a site kind of `model` (attn_z: H * d_head, flattened)."""
    return {"mlp_act": model.d_mlp, "attn_z": model.n_heads * model.d_head}.get(kind,
                                                                               model.d_model)


def feature_ids(features, where: str) -> list[int]:
    """Sorted distinct feature ids from a list, range, set or integer tensor; a string or a
    non-integral number is a TypeError."""
    if isinstance(features, torch.Tensor):
        if features.is_floating_point():
            raise TypeError(f"{where}: features must be integers, got a {features.dtype} tensor")
        features = features.flatten().tolist()
    if isinstance(features, (str, bytes)) or not hasattr(features, "__iter__"):
        raise TypeError(f"{where}: features must be a list of integers, got {features!r}")
    out = set()
    for f in features:
        if isinstance(f, bool) or not isinstance(f, numbers.Integral):
            raise TypeError(f"{where}: features must be integers, got {f!r}")
        out.add(int(f))
    return sorted(out)
