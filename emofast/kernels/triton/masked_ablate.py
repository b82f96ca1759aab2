"""Triton face of masked_ablate (emofast.kernels.ops.masked_ablate holds the contract).

One program per (row b*T+t, block of BLOCK_W features); each reads its variant's mask word per
unit and writes zero / fill / x * factor where the bit is set and the position is in scope.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import row_edit_target

MODE_ID = {"zero": 0, "mean": 1, "patch": 2, "scale": 3}
_MAX_BLOCK_W = 1024


@triton.jit
def _masked_ablate_fwd_kernel(
    x_ptr,            # [B*T, W]
    out_ptr,          # [B*T, W] (x_ptr itself when INPLACE)
    fill_ptr,         # [W] (mean) | [B*T, W] (patch) | unused
    row_variant_ptr,  # [B] int32/int64
    mask_ptr,         # [V, n_words] int32
    pos_start_ptr,    # [B] int32/int64 | unused without HAS_POS
    T, W, n_words, factor,
    MODE: tl.constexpr,      # 0 zero, 1 mean, 2 patch, 3 scale
    GROUP: tl.constexpr,
    HAS_POS: tl.constexpr,
    INPLACE: tl.constexpr,
    LOAD_X: tl.constexpr,    # x is needed: out of place, or mode scale
    BLOCK_W: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    col0 = tl.program_id(1).to(tl.int64) * BLOCK_W
    _, v, active = row_edit_target(row, T, row_variant_ptr, pos_start_ptr, HAS_POS)

    n_live = tl.where(active, W, 0)  # features this row may edit (vector masks only below)

    offs = col0 + tl.arange(0, BLOCK_W)  # int64 feature index
    in_row = offs < W
    live = offs < n_live                # in_row and the row is edited
    unit = offs // GROUP
    word = tl.load(mask_ptr + tl.maximum(v, 0) * n_words + unit // 32, mask=live, other=0)
    edit = (((word >> (unit % 32).to(tl.int32)) & 1) != 0) & live

    base = row * W
    if LOAD_X:
        if INPLACE:
            x_mask = edit  # in place, unedited features are neither read nor written
        else:
            x_mask = in_row
        x = tl.load(x_ptr + base + offs, mask=x_mask, other=0.0)
    if MODE == 0:
        new = tl.zeros([BLOCK_W], dtype=tl.float32)
    elif MODE == 1:
        new = tl.load(fill_ptr + offs, mask=edit, other=0.0)
    elif MODE == 2:
        new = tl.load(fill_ptr + base + offs, mask=edit, other=0.0)
    else:
        new = x.to(tl.float32) * factor
    new = new.to(out_ptr.dtype.element_ty)
    if INPLACE:
        tl.store(out_ptr + base + offs, new, mask=edit)
    else:
        tl.store(out_ptr + base + offs, tl.where(edit, new, x), mask=in_row)


def masked_ablate_triton(x, row_variant, mask, mode, fill, factor, group, pos_start, inplace):
    B, T, W = x.shape
    work = x if x.is_contiguous() else x.contiguous()  # [B, T, W]
    out = work if inplace else torch.empty_like(work)
    fill_arg = fill.contiguous() if isinstance(fill, torch.Tensor) else work  # [W] | [B, T, W]
    pos_arg = pos_start.contiguous() if pos_start is not None else row_variant
    block_w = min(triton.next_power_of_2(W), _MAX_BLOCK_W)
    grid = (B * T, triton.cdiv(W, block_w))
    _masked_ablate_fwd_kernel[grid](
        work, out, fill_arg, row_variant.contiguous(), mask.contiguous(), pos_arg,
        T, W, mask.shape[1], float(factor),
        MODE=MODE_ID[mode], GROUP=group, HAS_POS=pos_start is not None, INPLACE=inplace,
        LOAD_X=mode == "scale" or not inplace, BLOCK_W=block_w, num_warps=4,
    )
    if inplace and work is not x:
        x.copy_(work)
        return x
    return out
