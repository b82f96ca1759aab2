"""Which face runs an op call: Triton, the C++ CPU op, or the torch reference.

Rule (per call, by device, never at import time):
- impl=None: CUDA tensors -> "triton" (unless EMOFAST_DISABLE_TRITON=1 or Triton is not
  installed), CPU tensors -> "cpp" when the extension loaded, else "torch".
- impl="triton" | "cpp" | "torch" forces one and raises if it cannot run on these tensors.
  With TRITON_INTERPRET=1, "triton" runs on CPU tensors through the interpreter (tests do this).
A missing or broken C++ extension is reported once (emofast.kernels.cpp), then the torch
reference is used.
"""
from __future__ import annotations

import os

import torch

from . import cpp

IMPLS = ("triton", "cpp", "torch")


def triton_disabled() -> bool:
    return os.environ.get("EMOFAST_DISABLE_TRITON", "") not in ("", "0")


def triton_available() -> bool:
    """Whether the triton package imports (asked only when a Triton face could run)."""
    try:
        import triton  # noqa: F401
    except ImportError:  # not installed, hidden (sys.modules["triton"] = None) or broken
        return False
    return True


def choose(op: str, x: torch.Tensor, impl: str | None) -> str:
    """Return the implementation that runs `op` on tensors living where `x` lives."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if impl is None:
        if x.is_cuda and not triton_disabled() and triton_available():
            return "triton"
        if x.device.type == "cpu" and cpp.has(op):
            return "cpp"
        return "torch"
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
    if impl == "triton":
        if triton_disabled():
            raise RuntimeError(f"{op}: impl='triton' asked for but EMOFAST_DISABLE_TRITON is set")
        if not triton_available():
            raise RuntimeError(f"{op}: impl='triton' asked for but triton is not installed")
        if not x.is_cuda and not interpret:
            raise RuntimeError(f"{op}: impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                               f"to run on CPU through the interpreter); got {x.device}")
    if impl == "cpp":
        if x.device.type != "cpu":
            raise RuntimeError(f"{op}: impl='cpp' runs on CPU tensors; got {x.device}")
        if not cpp.has(op):
            raise RuntimeError(f"{op}: impl='cpp' asked for but the C++ extension is not loaded; "
                               "run `make install`")
    return impl
