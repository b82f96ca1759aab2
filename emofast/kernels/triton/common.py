"""Triton helpers shared by the row-edit kernels (masked_ablate, steer_add)."""
import triton
import triton.language as tl


@triton.jit
def row_edit_target(row, T, row_variant_ptr, pos_start_ptr, HAS_POS: tl.constexpr):
    """(b, v, active) for row `row` (int64) = b * T + t of a [B, T, ...] tensor: v = row_variant[b]
    (int64) and active = v >= 0 and t >= pos_start[b] (pos_start only with HAS_POS)."""
    b = row // T
    t = row % T
    v = tl.load(row_variant_ptr + b).to(tl.int64)
    active = v >= 0
    if HAS_POS:
        active = active & (t >= tl.load(pos_start_ptr + b).to(tl.int64))
    return b, v, active
