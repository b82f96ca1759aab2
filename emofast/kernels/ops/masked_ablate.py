"""masked_ablate: edit the units each batch row's variant selects (zero / mean / patch / scale).

One call runs V ablation variants side by side in one batch: row b of x gets variant
row_variant[b] (-1 = untouched). A variant is a packed bitmask over units; a unit is `group`
consecutive features (group=1: neurons; group=d_head on z flattened to H*d_head: heads).

    out = masked_ablate(x, row_variant, mask, mode="zero")                 # x [B, T, W]
    out = masked_ablate(z, row_variant, mask, mode="mean", fill=z_mean, group=d_head)

Contract:
- x [B, T, W] float32/bfloat16/float16; row_variant [B] int32/int64 in [-1, V).
- mask [V, n_words] int32, n_words >= ceil(W / group / 32): unit u of variant v is bit (u % 32)
  of mask[v, u // 32], least significant bit first; unit u covers features u*group .. u*group +
  group - 1. Bits past the last unit (u >= W / group) are ignored. W % group must be 0.
- mode "zero": edited := 0; "mean": fill [W], edited := fill[w]; "patch": fill [B, T, W] (a source
  run), edited := fill[b, t, w]; "scale": fill is a python number, edited := x * fill (fp32
  product, rounded once to x's dtype).
- fill dtype rule: any floating dtype; values are converted to x's dtype (one rounding, exactly
  `fill.to(x.dtype)`). The output always has x's dtype.
- pos_start [B] int32/int64 in [0, T]: edit only positions t >= pos_start[b] (T = no edit).
- Out of place by default (x untouched); inplace=True edits x and returns it.
- Forward only: when autograd needs this op (grad enabled and x or fill requires grad), impl=None
  runs the differentiable torch reference; impl="triton"/"cpp" raise.
- Validation reads row_variant / pos_start values: one host sync on CUDA.

Faces (see `emofast.kernels.dispatch`): Triton (CUDA; emofast.kernels.triton.masked_ablate), the
C++ op torch.ops.emofast.masked_ablate(_) (CPU; emofast.kernels.cpp), and
`masked_ablate_reference` (pure torch, the tests' oracle).
"""
from __future__ import annotations

import numbers

import torch

from .. import cpp
from ..checks import (check_per_row_index, check_rows_tensor, check_same_device, check_values,
                      forward_only)
from ..dispatch import choose

MODES = ("zero", "mean", "patch", "scale")


def _masked_ablate_torch(x, row_variant, mask, mode, fill, factor, group, pos_start):
    """Vectorised torch: gather each row's mask words, expand bits to features, torch.where."""
    B, T, W = x.shape
    rv = row_variant.long()
    unit = torch.arange(W, device=x.device) // group                         # [W]
    words = mask[rv.clamp(min=0)][:, unit // 32]                             # [B, W]
    edit = ((words >> (unit % 32).to(torch.int32)) & 1).bool() & (rv >= 0)[:, None]
    edit = edit[:, None, :]                                                  # [B, 1, W]
    if pos_start is not None:
        pos_ok = torch.arange(T, device=x.device) >= pos_start[:, None]      # [B, T]
        edit = edit & pos_ok[:, :, None]                                     # [B, T, W]
    if mode == "zero":
        new = x.new_zeros(())
    elif mode == "scale":
        new = x * factor
    else:  # mean [W] broadcasts; patch [B, T, W]
        new = fill.to(x.dtype)
    return torch.where(edit, new, x)


def masked_ablate_reference(x: torch.Tensor, row_variant: torch.Tensor, mask: torch.Tensor, *,
                            mode: str, fill=None, group: int = 1,
                            pos_start: torch.Tensor | None = None,
                            inplace: bool = False) -> torch.Tensor:
    """Pure-torch masked_ablate (same contract as `masked_ablate`): the oracle and last resort."""
    factor = _check_args(x, row_variant, mask, mode, fill, group, pos_start)
    if mask.shape[0] == 0 or x.numel() == 0:  # V = 0: every row is -1
        return x if inplace else x.clone()
    out = _masked_ablate_torch(x, row_variant, mask, mode, fill, factor, group, pos_start)
    return x.copy_(out) if inplace else out


def _check_args(x, row_variant, mask, mode, fill, group, pos_start) -> float:
    """Raise ValueError on any contract violation; return the scale factor (1.0 unless scale)."""
    if mode not in MODES:
        raise ValueError(f"masked_ablate: mode must be one of {MODES}, got {mode!r}")
    check_rows_tensor("masked_ablate", "x", x, "[B, T, W]")
    B, T, W = x.shape
    check_per_row_index("masked_ablate", "row_variant", row_variant, B)
    if mask.dim() != 2 or mask.dtype != torch.int32:
        raise ValueError(f"masked_ablate: mask must be a [V, n_words] int32 tensor of packed bits, "
                         f"got {tuple(mask.shape)} {mask.dtype}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"masked_ablate: group must be an int >= 1, got {group!r}")
    if W % group:
        raise ValueError(f"masked_ablate: W = {W} is not divisible by group = {group}")
    n_units = W // group
    need = (n_units + 31) // 32
    if mask.shape[1] < need:
        raise ValueError(f"masked_ablate: mask has {mask.shape[1]} words per variant but "
                         f"W / group = {n_units} units need {need}")
    tensors = {"row_variant": row_variant, "mask": mask}
    factor = 1.0
    if mode in ("zero", "scale") and isinstance(fill, torch.Tensor):
        raise ValueError(f"masked_ablate: mode {mode!r} takes "
                         + ("no fill" if mode == "zero" else "fill = a python number (the factor)")
                         + ", got a tensor")
    if mode == "zero" and fill is not None:
        raise ValueError(f"masked_ablate: mode 'zero' takes no fill, got {fill!r}")
    if mode == "scale":
        if isinstance(fill, bool) or not isinstance(fill, numbers.Real):
            raise ValueError(f"masked_ablate: mode 'scale' needs fill = a python number (the "
                             f"factor), got {fill!r}")
        factor = float(fill)
    if mode in ("mean", "patch"):
        want = (W,) if mode == "mean" else (B, T, W)
        if not isinstance(fill, torch.Tensor):
            raise ValueError(f"masked_ablate: mode {mode!r} needs a fill tensor of shape {want}, "
                             f"got {fill!r}")
        if tuple(fill.shape) != want:
            raise ValueError(f"masked_ablate: fill for mode {mode!r} must have shape {want}, got "
                             f"{tuple(fill.shape)}")
        if not fill.is_floating_point():
            raise ValueError(f"masked_ablate: fill must be floating point (it is cast to x's "
                             f"dtype {x.dtype}), got {fill.dtype}")
        tensors["fill"] = fill
    if pos_start is not None:
        check_per_row_index("masked_ablate", "pos_start", pos_start, B)
        tensors["pos_start"] = pos_start
    check_same_device("masked_ablate", "x", x.device, tensors)
    check_values(row_variant, mask.shape[0], pos_start, T, "masked_ablate")
    return factor


def masked_ablate(x: torch.Tensor, row_variant: torch.Tensor, mask: torch.Tensor, *, mode: str,
                  fill: torch.Tensor | float | None = None, group: int = 1,
                  pos_start: torch.Tensor | None = None, inplace: bool = False,
                  impl: str | None = None) -> torch.Tensor:
    """Edit, per batch row, the units of its variant: x [B, T, W] -> [B, T, W] (see module doc)."""
    factor = _check_args(x, row_variant, mask, mode, fill, group, pos_start)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or (isinstance(fill, torch.Tensor) and fill.requires_grad))
    impl = choose("masked_ablate", x, forward_only("masked_ablate", impl, needs_grad))
    if mask.shape[0] == 0 or x.numel() == 0:  # V = 0: every row is -1
        return x if inplace else x.clone()
    if impl == "triton":
        from ..triton.masked_ablate import masked_ablate_triton

        return masked_ablate_triton(x, row_variant, mask, mode, fill, factor, group, pos_start,
                                    inplace)
    if impl == "cpp":
        return cpp.masked_ablate(x, row_variant, mask, mode, fill, factor, group, pos_start,
                                 inplace)
    out = _masked_ablate_torch(x, row_variant, mask, mode, fill, factor, group, pos_start)
    return x.copy_(out) if inplace else out
