"""Triton face of sae_decode (emofast.kernels.ops.sae_decode holds the contract): a gathered
forward and an atomic-add backward, tiled [BLOCK_K rows, BLOCK_D columns] per token.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _token_block(d_model, BLOCK_D: tl.constexpr):
    """(token n, its output columns [BLOCK_D] int64, in-range mask) of this program."""
    n = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_D + tl.arange(0, BLOCK_D)
    return n, cols, cols < d_model


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
    n, cols, col_mask = _token_block(d_model, BLOCK_D)
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
    n, cols, col_mask = _token_block(d_model, BLOCK_D)
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

