"""Argument checks shared by the ops; every error message starts with the calling op's name.

- FLOAT_DTYPES: the dtypes every op takes (float32, bfloat16, float16).
- check_rows_tensor: the [B, T, features] tensor a row-edit op (masked_ablate, steer_add) edits.
- check_per_row_index / check_values: the per-batch-row arguments row_variant [B] (values in
  [-1, V)) and pos_start [B] (values in [0, T]) of the row-edit ops.
- check_same_device: every tensor argument on the device of the main one.
- forward_only: the face of a forward-only op when autograd needs the call.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_rows_tensor(op: str, name: str, t, shape: str) -> None:
    """Raise ValueError unless t (named `name`) is a 3-D tensor (`shape` names its dimensions, e.g.
    "[B, T, W]") of one of FLOAT_DTYPES."""
    if not isinstance(t, torch.Tensor) or t.dim() != 3:
        raise ValueError(f"{op}: {name} must be a {shape} tensor, got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: {name} must be float32, bfloat16 or float16, got {t.dtype}")


def check_per_row_index(op: str, name: str, t: torch.Tensor, B: int) -> None:
    """Raise ValueError unless t (named `name`) is a [B] int32/int64 tensor."""
    if t.dim() != 1 or t.shape[0] != B:
        raise ValueError(f"{op}: {name} must be [B] = [{B}], got {tuple(t.shape)}")
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: {name} must be int32 or int64, got {t.dtype}")


def check_values(row_variant, V, pos_start, T, op) -> None:
    """row_variant in [-1, V), pos_start in [0, T]; one host sync for both."""
    bad = ((row_variant < -1) | (row_variant >= V)).any()
    if pos_start is not None:
        bad = bad | ((pos_start < 0) | (pos_start > T)).any()
    if not bad.item():
        return
    rv = row_variant.cpu()
    wrong = rv[(rv < -1) | (rv >= V)]
    if wrong.numel():
        raise ValueError(f"{op}: row_variant values must be -1 (no edit) or in [0, V = {V}), "
                         f"got {wrong.tolist()[:8]}")
    ps = pos_start.cpu()
    raise ValueError(f"{op}: pos_start values must lie in [0, T = {T}] (T = no edit), got "
                     f"{ps[(ps < 0) | (ps > T)].tolist()[:8]}")


def check_same_device(op: str, anchor: str, device: torch.device,
                      tensors: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless every tensor in `tensors` is on `device`, where `anchor` lives."""
    for name, t in tensors.items():
        if t.device != device:
            raise ValueError(f"{op}: {name} is on {t.device} but {anchor} is on {device}; "
                             f"move every tensor to one device")


def forward_only(op: str, impl: str | None, needs_grad: bool) -> str | None:
    """The impl to hand to `choose` for a forward-only op: when autograd needs this call, the
    differentiable torch reference (impl None or "torch"); any other face raises."""
    if not needs_grad:
        return impl
    if impl not in (None, "torch"):
        raise RuntimeError(f"{op}: impl={impl!r} is forward-only but autograd needs "
                           "this call; use impl='torch' (or None) or run under torch.no_grad()")
    return "torch"
