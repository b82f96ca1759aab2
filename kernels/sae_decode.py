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

Faces: Triton (CUDA, or CPU under TRITON_INTERPRET=1), the C++ op `torch.ops.emofast.sae_decode`
(CPU, OpenMP over tokens, AVX2 when the CPU has it) and `sae_decode_reference`; see `_dispatch`.
The Triton and C++ backwards build grad_W_dec in an fp32 [d_sae, d_model] buffer (cast to the
W_dec dtype at the end for bf16/fp16).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, cpp_ops_with
from ._dispatch import choose


@triton.jit
def _sae_decode_fwd_kernel(
    idx_ptr,  # [N, k] int32 / int64
    val_ptr,  # [N, k]
    w_ptr,  # [d_sae, d_model]
    b_ptr,  # [d_model] (not read when HAS_BIAS is False)
    out_ptr,  # [N, d_model]
    k,
    d_model,
    HAS_BIAS: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # one program = one token x one block of BLOCK_D output columns; the k rows come in
    # [BLOCK_K, BLOCK_D] tiles so many row loads are in flight at once
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d_model
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    for k0 in range(0, k, BLOCK_K):
        js = k0 + tl.arange(0, BLOCK_K)
        j_mask = js < k
        rows = tl.load(idx_ptr + n * k + js, mask=j_mask, other=0).to(tl.int64)
        vals = tl.load(val_ptr + n * k + js, mask=j_mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rows[:, None] * d_model + cols[None, :],
                    mask=j_mask[:, None] & col_mask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(w * vals[:, None], axis=0)
    tl.store(out_ptr + n * d_model + cols, acc.to(out_ptr.dtype.element_ty), mask=col_mask)


@triton.jit
def _sae_decode_bwd_kernel(
    grad_ptr,  # [N, d_model]
    idx_ptr,  # [N, k] int32 / int64
    val_ptr,  # [N, k]
    w_ptr,  # [d_sae, d_model]
    grad_val_ptr,  # [N, k] fp32, zeroed: partial dots of each column block are atomically added
    grad_w_ptr,  # [d_sae, d_model] fp32, zeroed: values * grad_out atomically added to used rows
    k,
    d_model,
    NEED_VALUES: tl.constexpr,
    NEED_W: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # same tiling as the forward: grad_out[n, block] is read once and serves both gradients
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    col_mask = cols < d_model
    g = tl.load(grad_ptr + n * d_model + cols, mask=col_mask, other=0.0).to(tl.float32)
    for k0 in range(0, k, BLOCK_K):
        js = k0 + tl.arange(0, BLOCK_K)
        j_mask = js < k
        tile_mask = j_mask[:, None] & col_mask[None, :]
        rows = tl.load(idx_ptr + n * k + js, mask=j_mask, other=0).to(tl.int64)
        offs = rows[:, None] * d_model + cols[None, :]  # [BLOCK_K, BLOCK_D]
        if NEED_VALUES:
            w = tl.load(w_ptr + offs, mask=tile_mask, other=0.0).to(tl.float32)
            tl.atomic_add(grad_val_ptr + n * k + js, tl.sum(w * g[None, :], axis=1), mask=j_mask,
                          sem="relaxed")
        if NEED_W:
            vals = tl.load(val_ptr + n * k + js, mask=j_mask, other=0.0).to(tl.float32)
            # duplicate rows (in one tile or across tokens) each get their own atomic add
            tl.atomic_add(grad_w_ptr + offs, vals[:, None] * g[None, :], mask=tile_mask,
                          sem="relaxed")


def _blocks(k: int, d_model: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_K, BLOCK_D, num_warps) by shape; no autotune (it fails under the interpreter).

    GPU: BLOCK_D 256 columns (512 B of bf16 per row segment, full 128 B transactions), up to 16
    rows in flight per tile, 4 warps: the op is a gather, bound by memory latency and bandwidth.
    Interpreter: larger tiles, since numpy runs a whole tile per step.
    """
    if device.type == "cuda":
        return min(16, triton.next_power_of_2(k)), min(256, triton.next_power_of_2(d_model)), 4
    return min(64, triton.next_power_of_2(k)), min(512, triton.next_power_of_2(d_model)), 4


def _decode_fwd_triton(indices, values, W_dec, b_dec):
    N, k = indices.shape
    d_model = W_dec.shape[1]
    out = torch.empty(N, d_model, dtype=W_dec.dtype, device=W_dec.device)
    if N == 0:
        return out
    block_k, block_d, warps = _blocks(k, d_model, W_dec.device)
    grid = (N, triton.cdiv(d_model, block_d))
    _sae_decode_fwd_kernel[grid](
        indices, values, W_dec, b_dec if b_dec is not None else W_dec, out, k, d_model,
        HAS_BIAS=b_dec is not None, BLOCK_K=block_k, BLOCK_D=block_d, num_warps=warps)
    return out


def _decode_bwd_triton(grad_out, indices, values, W_dec, need_values: bool, need_w: bool):
    N, k = indices.shape
    d_model = W_dec.shape[1]
    f32 = dict(dtype=torch.float32, device=W_dec.device)
    grad_val = torch.zeros(N, k, **f32) if need_values else None
    grad_w = torch.zeros(W_dec.shape, **f32) if need_w else None
    if N > 0 and (need_values or need_w):
        block_k, block_d, warps = _blocks(k, d_model, W_dec.device)
        grid = (N, triton.cdiv(d_model, block_d))
        dummy = torch.empty(1, **f32)
        _sae_decode_bwd_kernel[grid](
            grad_out, indices, values, W_dec,
            grad_val if need_values else dummy, grad_w if need_w else dummy, k, d_model,
            NEED_VALUES=need_values, NEED_W=need_w, BLOCK_K=block_k, BLOCK_D=block_d,
            num_warps=warps)
    return (grad_val.to(values.dtype) if need_values else None,
            grad_w.to(W_dec.dtype) if need_w else None)


class SAEDecodeFunction(torch.autograd.Function):
    """Triton forward and backward; inputs are 2-D, contiguous and validated by `sae_decode`."""

    @staticmethod
    def forward(ctx, indices, values, W_dec, b_dec):
        ctx.save_for_backward(indices, values, W_dec)
        ctx.has_bias = b_dec is not None
        return _decode_fwd_triton(indices, values, W_dec, b_dec)

    @staticmethod
    def backward(ctx, grad_out):
        indices, values, W_dec = ctx.saved_tensors
        _, need_values, need_w, need_b = ctx.needs_input_grad
        grad_values, grad_w = _decode_bwd_triton(grad_out.contiguous(), indices, values, W_dec,
                                                 need_values, need_w)
        grad_b = grad_out.sum(0) if ctx.has_bias and need_b else None
        return None, grad_values, grad_w, grad_b


# ---- the C++ face: fake (meta) functions and autograd for torch.ops.emofast.sae_decode ----
def _cpp_op():
    """`torch.ops.emofast.sae_decode`, with its fake kernels and autograd registered once."""
    return cpp_ops_with(
        fakes={"sae_decode": _decode_fake, "sae_decode_backward": _decode_backward_fake},
        autograd={"sae_decode": (_cpp_backward, _cpp_setup_context)}).sae_decode


def _decode_fake(indices, values, W_dec, b_dec):
    return values.new_empty(indices.shape[0], W_dec.shape[1])


def _decode_backward_fake(grad_out, indices, values, W_dec, need_values, need_W_dec):
    return (values.new_empty(values.shape if need_values else (0,)),
            W_dec.new_empty(W_dec.shape if need_W_dec else (0,)))


def _cpp_setup_context(ctx, inputs, output):
    indices, values, W_dec, b_dec = inputs
    ctx.save_for_backward(indices, values, W_dec)
    ctx.has_bias = b_dec is not None


def _cpp_backward(ctx, grad_out):
    indices, values, W_dec = ctx.saved_tensors
    _, need_values, need_w, need_b = ctx.needs_input_grad
    grad_values = grad_w = None
    if need_values or need_w:
        gv, gw = torch.ops.emofast.sae_decode_backward(grad_out, indices, values, W_dec,
                                                       need_values, need_w)
        grad_values, grad_w = (gv if need_values else None), (gw if need_w else None)
    grad_b = grad_out.sum(0) if ctx.has_bias and need_b else None
    return None, grad_values, grad_w, grad_b


# ---- the reference and the public function ----
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
    dtype, duplicate-index and gradient contract). `impl` picks the face, see `_dispatch.choose`.
    """
    _check(indices, values, W_dec, b_dec)
    impl = choose("sae_decode", values, impl)
    _check_range(indices, W_dec.shape[0])
    lead, k = indices.shape[:-1], indices.shape[-1]
    idx2, val2 = indices.reshape(-1, k).contiguous(), values.reshape(-1, k).contiguous()
    if impl == "triton":
        out = SAEDecodeFunction.apply(idx2, val2, W_dec.contiguous(),
                                      None if b_dec is None else b_dec.contiguous())
    elif impl == "cpp":
        out = _cpp_op()(idx2, val2, W_dec, b_dec)
    else:
        out = sae_decode_reference(idx2, val2, W_dec, b_dec)
    return out.reshape(*lead, W_dec.shape[1])
