"""sae_encode: SAE encoder, pre = (x - b_dec) @ W_enc + b_enc, then the activation.

    acts = sae_encode(x, W_enc, b_enc, activation="relu")                        # [..., d_sae]
    acts = sae_encode(x, W_enc, b_enc, activation="jumprelu", threshold=theta)   # [..., d_sae]
    top = sae_encode(x, W_enc, b_enc, activation="topk", k=32, b_dec=b_dec)      # EncoderOutput
    top = sae_encode(x, W_enc, b_enc, activation="relu", sparse=True, k=32)      # EncoderOutput

Contract (all three faces):
- x [..., d_model], W_enc [d_model, d_sae], b_enc [d_sae], b_dec [d_model] or None,
  threshold [d_sae] (jumprelu only). One dtype for all of them: float32, bfloat16 or float16,
  which is the output dtype. Accumulation is fp32.
- "relu": relu(pre). "jumprelu": pre * (pre > threshold). "topk": the k largest pre-activations
  per row, then ReLU on the kept values (Gao et al.; sparsify), returned as
  `EncoderOutput(values [..., k], indices [..., k] int64)`; `sparse` is implied.
  relu / jumprelu with sparse=True need k and return the k largest *activations* in the same form
  (fewer than k positive latents: the rest are zeros at some latents with zero activation).
  Values are sorted descending. Ties: any valid top-k set (faces may pick different latents among
  equal values; compare sorted values).
- Differentiable in x, W_enc, b_enc, b_dec (straight-through on the kept entries: gradient reaches
  pre only where the output is nonzero: the relu mask, the jumprelu mask, the kept top-k entries;
  then standard matmul backward in torch ops). The threshold gets no gradient (JumpReLU training
  needs a pseudo-derivative with a bandwidth, which belongs to the trainer, not to this op).
  The backward takes the jumprelu mask from the output (out != 0), so it differs from autograd of
  the reference only where pre is exactly 0 with a negative threshold.

b_dec: the Triton face folds it into the bias, bias = b_enc - b_dec @ W_enc, computed once per call
by the same GEMM kernel with fp32 output (a GEMV: 1/N of the GEMM's FLOPs, one extra read of
W_enc); the GEMM's fp32 accumulator then cancels x @ W_enc against it without loss, and the
x tiles go straight from memory to the tensor cores. The C++ face subtracts b_dec from x first,
exactly like the reference, because its MKL/oneDNN GEMM rounds bf16 outputs before the epilogue
(a folded bias would cancel catastrophically there).

Top-k on the Triton face (TOPK_MODE): "torch" (default) writes the fused activations [N, d_sae]
in the input dtype and runs torch.topk; "tile" keeps the top next_pow2(k) of every
[BLOCK_M, BLOCK_N] tile in the GEMM epilogue (tl.topk on packed value|latent int64 keys) and
torch.topk reduces the candidates. At SAE shapes (k 64, d_sae 65536) "tile" writes more bytes
(8-byte candidates, k / BLOCK_N = 1/2 of the row) than "torch" (2-byte activations, whole row) and
adds a bitonic sort of int64 tiles to the epilogue on CUDA cores, while the GEMM (2 N d_model d_sae
FLOPs) dominates both; "tile" only wins when next_pow2(k) << BLOCK_N. bench/gpu_kernels_sae.py
times both; flip TOPK_MODE in emofast.kernels.triton.sae_encode if a GPU says otherwise (at run
time: `emofast.kernels.triton.sae_encode.TOPK_MODE = "tile"`).

Faces (see `emofast.kernels.dispatch`): Triton (CUDA; emofast.kernels.triton.sae_encode), the C++
ops torch.ops.emofast.sae_encode / sae_encode_topk (CPU; emofast.kernels.cpp) and
`sae_encode_reference`. The backward of the first two is emofast.kernels.autograd.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import cpp
from ..checks import FLOAT_DTYPES
from ..dispatch import choose

ACTIVATIONS = ("relu", "jumprelu", "topk")


class EncoderOutput(NamedTuple):
    """The k kept latents per token."""

    values: torch.Tensor  # [..., k] activations, descending
    indices: torch.Tensor  # [..., k] int64 latent ids in [0, d_sae)


def sae_encode_reference(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, *,
                         activation: str, k: int | None = None,
                         threshold: torch.Tensor | None = None, b_dec: torch.Tensor | None = None,
                         sparse: bool = False) -> torch.Tensor | EncoderOutput:
    """Pure-torch oracle: matmul, bias, activation, torch.topk (differentiable by autograd)."""
    pre = (x - b_dec if b_dec is not None else x) @ W_enc + b_enc
    if activation == "topk":
        top = pre.topk(k, dim=-1)
        return EncoderOutput(top.values.relu(), top.indices)
    acts = pre.relu() if activation == "relu" else pre * (pre > threshold).to(pre.dtype)
    if sparse:
        top = acts.topk(k, dim=-1)
        return EncoderOutput(top.values, top.indices)
    return acts


def _check(x, W_enc, b_enc, activation, k, threshold, b_dec, sparse) -> bool:
    """Validate; returns True when the output is sparse (EncoderOutput)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"sae_encode: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() < 1 or W_enc.dim() != 2 or W_enc.shape[0] != x.shape[-1]:
        raise ValueError(f"sae_encode: need x [..., d_model] and W_enc [d_model, d_sae]; got x "
                         f"{tuple(x.shape)} and W_enc {tuple(W_enc.shape)}")
    d_model, d_sae = W_enc.shape
    if activation == "jumprelu" and threshold is None:
        raise ValueError("sae_encode: activation='jumprelu' needs threshold [d_sae]")
    if activation != "jumprelu" and threshold is not None:
        raise ValueError(f"sae_encode: threshold is only used by jumprelu, not {activation!r}")
    for name, t, size in (("b_enc", b_enc, d_sae), ("b_dec", b_dec, d_model),
                          ("threshold", threshold, d_sae)):
        if t is not None and tuple(t.shape) != (size,):
            raise ValueError(f"sae_encode: {name} must be [{size}], got {tuple(t.shape)}")
    is_sparse = activation == "topk" or sparse
    if is_sparse:
        if k is None:
            raise ValueError(f"sae_encode: activation={activation!r} with sparse output needs k")
        if not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(f"sae_encode: k must be an int in [1, d_sae = {d_sae}], got {k!r}")
    elif k is not None:
        raise ValueError("sae_encode: k is only used with activation='topk' or sparse=True")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"sae_encode: x must be float32, bfloat16 or float16, got {x.dtype}")
    for name, t in (("W_enc", W_enc), ("b_enc", b_enc), ("b_dec", b_dec),
                    ("threshold", threshold)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"sae_encode: {name} has dtype {t.dtype} but x has {x.dtype}; all "
                            "inputs must share one dtype (the output dtype): cast them")
        if t.device != x.device:
            raise ValueError(f"sae_encode: {name} is on {t.device} but x is on {x.device}; put "
                             "all inputs on one device")
    return is_sparse


def sae_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, *, activation: str,
               k: int | None = None, threshold: torch.Tensor | None = None,
               b_dec: torch.Tensor | None = None, sparse: bool = False,
               impl: str | None = None) -> torch.Tensor | EncoderOutput:
    """Encode x [..., d_model] -> activations [..., d_sae], or EncoderOutput([..., k] x 2) for
    activation="topk" or sparse=True. See the module docstring for the full contract; `impl`
    picks the face (`emofast.kernels.dispatch`)."""
    is_sparse = _check(x, W_enc, b_enc, activation, k, threshold, b_dec, sparse)
    impl = choose("sae_encode", x, impl)
    lead, d_sae = x.shape[:-1], W_enc.shape[1]
    x2 = x.reshape(-1, x.shape[-1])
    if impl == "triton":
        from ..triton.sae_encode import SAEEncodeFunction

        c = [None if t is None else t.contiguous() for t in (x2, W_enc, b_enc, b_dec, threshold)]
        res = SAEEncodeFunction.apply(*c, activation, k, is_sparse)
    elif impl == "cpp":
        res = cpp.sae_encode(x2, W_enc, b_enc, b_dec, threshold, activation, k, is_sparse)
    else:
        res = sae_encode_reference(x2, W_enc, b_enc, activation=activation, k=k,
                                   threshold=threshold, b_dec=b_dec, sparse=is_sparse)
    if is_sparse:
        return EncoderOutput(res[0].reshape(*lead, k), res[1].reshape(*lead, k))
    return res.reshape(*lead, d_sae)
