"""steer_add: add each batch row's steering direction to the residual stream, optionally RMS-scaled.

One call steers V variants side by side in one batch: row b gets direction row_variant[b]
(-1 = untouched) with its own strength alpha[b].

    out = steer_add(h, row_variant, directions, alpha)                    # h [B, T, d_model]
    out = steer_add(h, row_variant, directions, 4.0, rms=True, pos_start=prompt_len)

Contract:
- h [B, T, d_model] float32/bfloat16/float16; row_variant [B] int32/int64 in [-1, V);
  directions [V, d_model] any floating dtype; alpha [B] floating tensor or a python number
  (the same strength for every row).
- At positions t >= pos_start[b] (pos_start [B] int32/int64 in [0, T]; T = no edit; all positions
  without it): h[b, t] += c * directions[row_variant[b]] with c = alpha[b], or with rms=True
  c = alpha[b] * sqrt(mean(h[b, t]**2)) over d_model of the ORIGINAL h[b, t] (arXiv 2510.11328).
- Arithmetic: c and the sum are fp32, rounded once to h's dtype; untouched positions are copied
  bit for bit. Any d_model is supported (Triton: one pass with the row in registers up to 8192
  features, two passes over the row beyond).
- Out of place by default (h untouched); inplace=True edits h and returns it.
- Forward only: when autograd needs this op (grad enabled and h, directions or alpha requires
  grad), impl=None runs the differentiable torch reference; impl="triton"/"cpp" raise.
- Validation reads row_variant / pos_start values: one host sync on CUDA.

Faces (see `_dispatch.choose`): Triton (CUDA), the C++ op torch.ops.emofast.steer_add(_) (CPU),
and `steer_add_reference` (pure torch, the tests' oracle).
"""
from __future__ import annotations

import numbers

import torch
import triton
import triton.language as tl

from ._common import (check_per_row_index, check_rows_tensor, check_same_device, check_values,
                      forward_only, row_edit_fakes, row_edit_target)
from ._dispatch import choose, cpp_ops

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


def _steer_add_triton(h, row_variant, directions, alpha, pos_start, rms, inplace):
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
                        alpha: torch.Tensor | float, *, pos_start: torch.Tensor | None = None,
                        rms: bool = False, inplace: bool = False) -> torch.Tensor:
    """Pure-torch steer_add (same contract as `steer_add`): the oracle and last resort."""
    _check_args(h, row_variant, directions, alpha, pos_start, rms)
    if directions.shape[0] == 0 or h.numel() == 0:  # V = 0: every row is -1
        return h if inplace else h.clone()
    out = _steer_add_torch(h, row_variant, directions, _alpha_tensor(alpha, h), pos_start, rms)
    return h.copy_(out) if inplace else out


def _steer_add_cpp(h, row_variant, directions, alpha, pos_start, rms, inplace):
    ops = cpp_ops()
    if inplace:
        ops.steer_add_(h, row_variant, directions, alpha, pos_start, rms)
        return h
    return ops.steer_add(h, row_variant, directions, alpha, pos_start, rms)


# Fake (meta) kernels so the C++ ops run under torch.compile / opcheck; registered from this
# module, which the C++ library names with m.set_python_module.
for _name, _fake in row_edit_fakes("steer_add", "h must be [B, T, d_model]").items():
    torch.library.register_fake(f"emofast::{_name}")(_fake)


def _check_args(h, row_variant, directions, alpha, pos_start, rms) -> None:
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
    if not isinstance(rms, bool):
        raise ValueError(f"steer_add: rms must be a bool, got {rms!r}")
    if pos_start is not None:
        check_per_row_index("steer_add", "pos_start", pos_start, B)
        tensors["pos_start"] = pos_start
    check_same_device("steer_add", "h", h.device, tensors)
    check_values(row_variant, directions.shape[0], pos_start, T, "steer_add")


def steer_add(h: torch.Tensor, row_variant: torch.Tensor, directions: torch.Tensor,
              alpha: torch.Tensor | float, *, pos_start: torch.Tensor | None = None,
              rms: bool = False, inplace: bool = False, impl: str | None = None) -> torch.Tensor:
    """Add alpha[b] (* rms(h[b, t])) * directions[row_variant[b]]: h [B, T, d_model] -> same."""
    _check_args(h, row_variant, directions, alpha, pos_start, rms)
    alpha_t = _alpha_tensor(alpha, h)
    needs_grad = torch.is_grad_enabled() and (
        h.requires_grad or directions.requires_grad or alpha_t.requires_grad)
    impl = choose("steer_add", h, forward_only("steer_add", impl, needs_grad))
    if directions.shape[0] == 0 or h.numel() == 0:  # V = 0: every row is -1
        return h if inplace else h.clone()
    if impl == "triton":
        return _steer_add_triton(h, row_variant, directions, alpha_t, pos_start, rms, inplace)
    if impl == "cpp":
        return _steer_add_cpp(h, row_variant, directions, alpha_t, pos_start, rms, inplace)
    out = _steer_add_torch(h, row_variant, directions, alpha_t, pos_start, rms)
    return h.copy_(out) if inplace else out
