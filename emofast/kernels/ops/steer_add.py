"""steer_add: add each batch row's steering direction to the residual stream, optionally RMS-scaled.

One call steers V variants side by side in one batch: row b gets direction row_variant[b]
(-1 = untouched) with its own strength alpha[b].

    out = steer_add(h, row_variant, directions, alpha)                    # h [B, T, d_model]
    out = steer_add(h, row_variant, directions, 4.0, scale="rms", pos_start=prompt_len)

Contract:
- h [B, T, d_model] float32/bfloat16/float16; row_variant [B] int32/int64 in [-1, V);
  directions [V, d_model] any floating dtype; alpha [B] floating tensor or a python number
  (the same strength for every row).
- At positions t >= pos_start[b] (pos_start [B] int32/int64 in [0, T]; T = no edit; all positions
  without it): h[b, t] += c * directions[row_variant[b]] with c = alpha[b] (scale="abs"), or
  with scale="rms" c = alpha[b] * sqrt(mean(h[b, t]**2)) over d_model of the ORIGINAL h[b, t]
  (arXiv 2510.11328).
- Arithmetic: c and the sum are fp32, rounded once to h's dtype; untouched positions are copied
  bit for bit. Any d_model is supported (Triton: one pass with the row in registers up to 8192
  features, two passes over the row beyond).
- Out of place by default (h untouched); inplace=True edits h and returns it.
- Forward only: when autograd needs this op (grad enabled and h, directions or alpha requires
  grad), impl=None runs the differentiable torch reference; impl="triton"/"cpp" raise.
- Validation reads row_variant / pos_start values: one host sync on CUDA.
- `rms=True/False` is the deprecated spelling of scale="rms"/"abs" (one release).

Faces (see `emofast.kernels.dispatch`): Triton (CUDA; emofast.kernels.triton.steer_add), the C++
op torch.ops.emofast.steer_add(_) (CPU; emofast.kernels.cpp), and `steer_add_reference` (pure
torch, the tests' oracle).
"""
from __future__ import annotations

import numbers

import torch

from ...sites import resolve_scale
from .. import cpp
from ..checks import (check_per_row_index, check_rows_tensor, check_same_device, check_values,
                      forward_only)
from ..dispatch import choose


def _steer_add_torch(h, row_variant, directions, alpha, pos_start, rms):
    """Vectorised torch: gather each row's direction, fp32 coefficient per position, addcmul."""
    B, T, D = h.shape
    rv = row_variant.long()
    active = (rv >= 0)[:, None].expand(B, T)                                 # [B, T]
    if pos_start is not None:
        active = active & (torch.arange(T, device=h.device) >= pos_start[:, None])
    hf = h.float()                                                           # [B, T, d_model]
    coeff = alpha.float()[:, None].expand(B, T)                              # [B, T]
    if rms:
        coeff = coeff * hf.square().mean(-1).sqrt()
    dirs = directions[rv.clamp(min=0)].float()                               # [B, d_model]
    new = torch.addcmul(hf, coeff[:, :, None], dirs[:, None, :]).to(h.dtype)
    return torch.where(active[:, :, None], new, h)  # untouched positions: h bit for bit


def _alpha_tensor(alpha, h: torch.Tensor) -> torch.Tensor:
    if isinstance(alpha, torch.Tensor):
        return alpha
    return torch.full((h.shape[0],), float(alpha), dtype=torch.float32, device=h.device)


def steer_add_reference(h: torch.Tensor, row_variant: torch.Tensor, directions: torch.Tensor,
                        alpha: torch.Tensor | float, *, scale: str = "abs",
                        pos_start: torch.Tensor | None = None, inplace: bool = False,
                        rms: bool | None = None) -> torch.Tensor:
    """Pure-torch steer_add (same contract as `steer_add`): the oracle and last resort."""
    rms = resolve_scale(scale, rms, where="steer_add_reference") == "rms"
    _check_args(h, row_variant, directions, alpha, pos_start)
    if directions.shape[0] == 0 or h.numel() == 0:  # V = 0: every row is -1
        return h if inplace else h.clone()
    out = _steer_add_torch(h, row_variant, directions, _alpha_tensor(alpha, h), pos_start, rms)
    return h.copy_(out) if inplace else out


def _check_args(h, row_variant, directions, alpha, pos_start) -> None:
    """Raise ValueError on any contract violation."""
    check_rows_tensor("steer_add", "h", h, "[B, T, d_model]")
    B, T, D = h.shape
    check_per_row_index("steer_add", "row_variant", row_variant, B)
    if directions.dim() != 2 or directions.shape[1] != D:
        raise ValueError(f"steer_add: directions must be [V, d_model] with d_model = {D}, got "
                         f"{tuple(directions.shape)}")
    if not directions.is_floating_point():
        raise ValueError(f"steer_add: directions must be floating point, got {directions.dtype}")
    tensors = {"row_variant": row_variant, "directions": directions}
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1 or alpha.shape[0] != B or not alpha.is_floating_point():
            raise ValueError(f"steer_add: alpha must be a float [B] = [{B}] tensor or a python "
                             f"number, got {tuple(alpha.shape)} {alpha.dtype}")
        tensors["alpha"] = alpha
    elif isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise ValueError(f"steer_add: alpha must be a float [B] tensor or a python number, got "
                         f"{alpha!r}")
    if pos_start is not None:
        check_per_row_index("steer_add", "pos_start", pos_start, B)
        tensors["pos_start"] = pos_start
    check_same_device("steer_add", "h", h.device, tensors)
    check_values(row_variant, directions.shape[0], pos_start, T, "steer_add")


def steer_add(h: torch.Tensor, row_variant: torch.Tensor, directions: torch.Tensor,
              alpha: torch.Tensor | float, *, scale: str = "abs",
              pos_start: torch.Tensor | None = None, inplace: bool = False,
              impl: str | None = None, rms: bool | None = None) -> torch.Tensor:
    """Add alpha[b] (* rms(h[b, t]) with scale="rms") * directions[row_variant[b]]:
    h [B, T, d_model] -> same (see the module docstring)."""
    rms = resolve_scale(scale, rms, where="steer_add") == "rms"
    _check_args(h, row_variant, directions, alpha, pos_start)
    alpha_t = _alpha_tensor(alpha, h)
    needs_grad = torch.is_grad_enabled() and (
        h.requires_grad or directions.requires_grad or alpha_t.requires_grad)
    impl = choose("steer_add", h, forward_only("steer_add", impl, needs_grad))
    if directions.shape[0] == 0 or h.numel() == 0:  # V = 0: every row is -1
        return h if inplace else h.clone()
    if impl == "triton":
        from ..triton.steer_add import steer_add_triton

        return steer_add_triton(h, row_variant, directions, alpha_t, pos_start, rms, inplace)
    if impl == "cpp":
        return cpp.steer_add(h, row_variant, directions, alpha_t, pos_start, rms, inplace)
    out = _steer_add_torch(h, row_variant, directions, alpha_t, pos_start, rms)
    return h.copy_(out) if inplace else out
