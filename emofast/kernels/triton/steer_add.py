"""Triton face of steer_add (emofast.kernels.ops.steer_add holds the contract).

One program per row b*T+t: up to _MAX_FUSED_D features the row stays in registers (one pass,
the RMS from the same load); beyond, two passes over BLOCK_D-wide slices.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import row_edit_target

_MAX_FUSED_D = 8192  # up to this d_model the row stays in registers (one pass)
_LOOP_BLOCK_D = 4096


@triton.jit
def _steer_add_fwd_kernel(
    h_ptr,            # [B*T, d_model]
    out_ptr,          # [B*T, d_model] (h_ptr itself when INPLACE)
    row_variant_ptr,  # [B] int32/int64
    directions_ptr,   # [V, d_model]
    alpha_ptr,        # [B]
    pos_start_ptr,    # [B] int32/int64 | unused without HAS_POS
    T, D,
    HAS_POS: tl.constexpr,
    RMS: tl.constexpr,
    INPLACE: tl.constexpr,
    SINGLE_PASS: tl.constexpr,  # BLOCK_D >= D: the whole row in one block
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b, v, active = row_edit_target(row, T, row_variant_ptr, pos_start_ptr, HAS_POS)
    n_live = tl.where(active, D, 0)  # features this row edits (vector masks only below)
    coeff = tl.load(alpha_ptr + b).to(tl.float32)
    h_row = h_ptr + row * D
    out_row = out_ptr + row * D
    dir_row = directions_ptr + tl.maximum(v, 0) * D
    cols = tl.arange(0, BLOCK_D)

    if SINGLE_PASS:
        in_row = cols < D
        live = cols < n_live
        if INPLACE:
            h = tl.load(h_row + cols, mask=live, other=0.0)  # untouched rows: no traffic
        else:
            h = tl.load(h_row + cols, mask=in_row, other=0.0)
        hf = h.to(tl.float32)
        if RMS:
            coeff = coeff * tl.sqrt(tl.sum(hf * hf, axis=0) / D)
        d = tl.load(dir_row + cols, mask=live, other=0.0).to(tl.float32)
        new = (hf + coeff * d).to(out_ptr.dtype.element_ty)
        if INPLACE:
            tl.store(out_row + cols, new, mask=live)
        else:
            tl.store(out_row + cols, tl.where(live, new, h), mask=in_row)
    else:
        if RMS:
            acc = tl.zeros([BLOCK_D], dtype=tl.float32)
            for start in range(0, D, BLOCK_D):
                offs = start + cols
                hf = tl.load(h_row + offs, mask=offs < n_live, other=0.0).to(tl.float32)
                acc += hf * hf
            coeff = coeff * tl.sqrt(tl.sum(acc, axis=0) / D)
        for start in range(0, D, BLOCK_D):
            offs = start + cols
            in_row = offs < D
            live = offs < n_live
            if INPLACE:
                h = tl.load(h_row + offs, mask=live, other=0.0)
            else:
                h = tl.load(h_row + offs, mask=in_row, other=0.0)
            d = tl.load(dir_row + offs, mask=live, other=0.0).to(tl.float32)
            new = (h.to(tl.float32) + coeff * d).to(out_ptr.dtype.element_ty)
            if INPLACE:
                tl.store(out_row + offs, new, mask=live)
            else:
                tl.store(out_row + offs, tl.where(live, new, h), mask=in_row)


def _warps(block: int) -> int:
    return 16 if block >= 8192 else 8 if block >= 2048 else 4


def steer_add_triton(h, row_variant, directions, alpha, pos_start, rms: bool, inplace: bool):
    B, T, D = h.shape
    work = h if h.is_contiguous() else h.contiguous()  # [B, T, d_model]
    out = work if inplace else torch.empty_like(work)
    block = triton.next_power_of_2(D)
    single = block <= _MAX_FUSED_D
    if not single:
        block = _LOOP_BLOCK_D
    pos_arg = pos_start.contiguous() if pos_start is not None else row_variant
    _steer_add_fwd_kernel[(B * T,)](
        work, out, row_variant.contiguous(), directions.contiguous(), alpha.contiguous(), pos_arg,
        T, D,
        HAS_POS=pos_start is not None, RMS=rms, INPLACE=inplace, SINGLE_PASS=single,
        BLOCK_D=block, num_warps=_warps(block),
    )
    if inplace and work is not h:
        h.copy_(work)
        return h
    return out
