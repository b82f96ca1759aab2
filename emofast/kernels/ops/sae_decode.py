"""sae_decode: the sparse SAE decoder, out = sum_j values[:, j] * W_dec[indices[:, j]] + b_dec.

    out = sae_decode(indices, values, W_dec, b_dec)   # [..., k] x 2 -> [..., d_model]

Each token gathers only its k decoder rows (an embedding bag with per-sample weights, as in
sparsify's `eager_decode`), so the cost is N * k * d_model, not N * d_sae * d_model.

Contract (all three faces):
- indices [..., k] int32 or int64 in [0, d_sae) (checked on the host with one min/max before the
  launch; out of range raises IndexError), values [..., k], W_dec [d_sae, d_model],
  b_dec [d_model] or None. k >= 1.
- dtypes float32, bfloat16, float16; values, W_dec and b_dec must share one dtype, which is the
  output dtype. The Triton and C++ faces accumulate in fp32 and round once. The torch face is
  F.embedding_bag (fp32 accumulation in its forward), whose bf16/fp16 output is rounded before
  + b_dec and whose bf16/fp16 backward rounds partial sums of grad_W_dec to the dtype.
- Duplicate indices in a row add: two entries (i, a) and (i, b) decode to (a + b) * W_dec[i], and
  backward accumulates both into grad_W_dec[i] (index_add semantics; the Triton face uses atomic
  adds, the C++ face a column-partitioned scatter).
- Differentiable in values, W_dec and b_dec (not in indices):
  grad_values[n, j] = <grad_out[n], W_dec[indices[n, j]]>, grad_W_dec scatters into the used rows
  only, grad_b_dec = grad_out summed over tokens.

Faces (see `emofast.kernels.dispatch`): Triton (CUDA, or CPU under TRITON_INTERPRET=1;
emofast.kernels.triton.sae_decode), the C++ op `torch.ops.emofast.sae_decode` (CPU, OpenMP over
tokens, AVX2 when the CPU has it; emofast.kernels.cpp) and `sae_decode_reference`.
The Triton and C++ backwards build grad_W_dec in an fp32 [d_sae, d_model] buffer (cast to the
W_dec dtype at the end for bf16/fp16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import cpp
from ..checks import FLOAT_DTYPES
from ..dispatch import choose


def sae_decode_reference(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor,
                         b_dec: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-torch oracle: F.embedding_bag with per-sample weights (sparsify's eager decode)."""
    k, d_model = indices.shape[-1], W_dec.shape[1]
    out = F.embedding_bag(indices.reshape(-1, k), W_dec, per_sample_weights=values.reshape(-1, k),
                          mode="sum")
    if b_dec is not None:
        out = out + b_dec
    return out.reshape(*indices.shape[:-1], d_model)


def _check(indices, values, W_dec, b_dec) -> None:
    if indices.dim() < 1 or indices.shape[-1] < 1:
        raise ValueError("sae_decode: indices must be [..., k] with k >= 1, got "
                         f"{tuple(indices.shape)}")
    if values.shape != indices.shape:
        raise ValueError(f"sae_decode: values must have the shape of indices "
                         f"{tuple(indices.shape)}, got {tuple(values.shape)}")
    if W_dec.dim() != 2:
        raise ValueError(f"sae_decode: W_dec must be [d_sae, d_model], got {tuple(W_dec.shape)}")
    if b_dec is not None and tuple(b_dec.shape) != (W_dec.shape[1],):
        raise ValueError(f"sae_decode: b_dec must be [d_model] = [{W_dec.shape[1]}], "
                         f"got {tuple(b_dec.shape)}")
    if indices.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"sae_decode: indices must be int32 or int64, got {indices.dtype}")
    if W_dec.dtype not in FLOAT_DTYPES:
        raise TypeError("sae_decode: W_dec must be float32, bfloat16 or float16, got "
                        f"{W_dec.dtype}")
    for name, t in (("values", values), ("b_dec", b_dec)):
        if t is not None and t.dtype != W_dec.dtype:
            raise TypeError(f"sae_decode: {name} has dtype {t.dtype} but W_dec has {W_dec.dtype}; "
                            "they must match (the output takes this dtype): cast one of them")
    for name, t in (("values", values), ("W_dec", W_dec), ("b_dec", b_dec)):
        if t is not None and t.device != indices.device:
            raise ValueError(f"sae_decode: {name} is on {t.device} but indices are on "
                             f"{indices.device}; put all inputs on one device")


def _check_range(indices, d_sae: int) -> None:
    """One min/max on the host before any launch (a device sync on CUDA); skipped on meta."""
    if indices.numel() and indices.device.type != "meta":
        lo, hi = (int(v) for v in torch.aminmax(indices))
        if lo < 0 or hi >= d_sae:
            raise IndexError(f"sae_decode: indices must lie in [0, d_sae = {d_sae}), "
                             f"got min {lo} max {hi}")


def sae_decode(indices: torch.Tensor, values: torch.Tensor, W_dec: torch.Tensor,
               b_dec: torch.Tensor | None = None, *, impl: str | None = None) -> torch.Tensor:
    """Decode k active latents per token: [..., k] indices and values -> [..., d_model].

    out[n] = sum_j values[n, j] * W_dec[indices[n, j]] + b_dec (see the module docstring for the
    dtype, duplicate-index and gradient contract). `impl` picks the face (`emofast.kernels.dispatch`).
    """
    _check(indices, values, W_dec, b_dec)
    impl = choose("sae_decode", values, impl)
    _check_range(indices, W_dec.shape[0])
    lead, k = indices.shape[:-1], indices.shape[-1]
    idx2, val2 = indices.reshape(-1, k).contiguous(), values.reshape(-1, k).contiguous()
    if impl == "triton":
        from ..triton.sae_decode import SAEDecodeFunction

        out = SAEDecodeFunction.apply(idx2, val2, W_dec.contiguous(),
                                      None if b_dec is None else b_dec.contiguous())
    elif impl == "cpp":
        out = cpp.sae_decode(idx2, val2, W_dec, b_dec)
    else:
        out = sae_decode_reference(idx2, val2, W_dec, b_dec)
    return out.reshape(*lead, W_dec.shape[1])
