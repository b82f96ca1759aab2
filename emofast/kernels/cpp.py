"""The C++ face: the ops of the extension `emofast._C` (torch.ops.emofast.*), loaded once.

The one place that touches torch.ops.emofast, in the manner of pytorch/extension-cpp's ops.py:
it loads the extension, registers what the Python side owes each op (a fake kernel for every op,
so they run under FakeTensor, torch.compile and opcheck; autograd for sae_encode,
sae_encode_topk and sae_decode) and gives each op a typed wrapper. The C++ library names this
module with m.set_python_module, so torch imports it when it needs a fake kernel.

    from emofast.kernels import cpp
    cpp.has("steer_add")           # the extension loaded and defines the op
    cpp.steer_add(h, rows, dirs, alpha, pos_start, rms=False, inplace=False)

A missing or broken extension is reported once (a warning), after which `has` is False and the
callers use the torch reference.
"""
from __future__ import annotations

import sys
import warnings

import torch

from .autograd import sae_encode_backward

_state: dict = {}
_on_load: list = []


def on_load(check) -> None:
    """Run `check(torch.ops.emofast)` when the extension loads (at once if it has): how the
    rooms above verify that the binary matches them (the planner's names, say). A check raises
    RuntimeError on a mismatch; the extension is then not used (said once)."""
    _on_load.append(check)
    if _state.get("ops") is not None:
        check(_state["ops"])


def ops():
    """`torch.ops.emofast` once `emofast._C` has loaded (fakes and autograd registered), else None
    (said once)."""
    if "ops" not in _state:
        try:
            import emofast._C  # noqa: F401  (defines the ops)
        except (ImportError, OSError) as e:
            _state["ops"] = None
            warnings.warn(f"emofast C++ extension not loaded ({e}); CPU ops use the torch "
                          "reference. Rebuild with `make install`.", stacklevel=3)
        else:
            try:
                for check in _on_load:
                    check(torch.ops.emofast)
            except RuntimeError as e:  # a stale build: say so once, then run without it
                _state["ops"] = None
                warnings.warn(f"{e}; until then CPU ops use the torch reference and sweeps the "
                              "Python planner", stacklevel=3)
            else:
                _state["ops"] = torch.ops.emofast
                _register()
    return _state["ops"]


def has(op: str) -> bool:
    """True when the extension loaded and defines `op`."""
    return ops() is not None and hasattr(ops(), op)


def planner_names() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(site kinds, modes) of the C++ sweep planner, in enum order; None from a build older
    than that function."""
    import emofast._C as ext

    names = getattr(ext, "planner_names", None)
    return None if names is None else names()


# ---- typed wrappers ----
def masked_ablate(x, row_variant, mask, mode: str, fill, factor: float, group: int, pos_start,
                  inplace: bool):
    fill_t = fill.to(x.dtype) if isinstance(fill, torch.Tensor) else None
    if inplace:
        ops().masked_ablate_(x, row_variant, mask, mode, fill_t, factor, group, pos_start)
        return x
    return ops().masked_ablate(x, row_variant, mask, mode, fill_t, factor, group, pos_start)


def steer_add(h, row_variant, directions, alpha, pos_start, rms: bool, inplace: bool):
    if inplace:
        ops().steer_add_(h, row_variant, directions, alpha, pos_start, rms)
        return h
    return ops().steer_add(h, row_variant, directions, alpha, pos_start, rms)


def sae_encode(x, W_enc, b_enc, b_dec, threshold, activation: str, k: int | None, sparse: bool):
    """x [N, d_model] -> activations [N, d_sae], or (values, indices) [N, k] when sparse."""
    if sparse:
        return ops().sae_encode_topk(x, W_enc, b_enc, b_dec, threshold, activation, k)
    return ops().sae_encode(x, W_enc, b_enc, b_dec, threshold, activation)


def sae_decode(indices, values, W_dec, b_dec):
    """indices, values [N, k] -> [N, d_model]."""
    return ops().sae_decode(indices, values, W_dec, b_dec)


def plan_sweep(*args):
    """The raw planner op (flat tensors in and out; emofast.sweeps.plan wraps it)."""
    return ops().plan_sweep(*args)


# ---- fake kernels ----
def _row_edit_fake(op: str, first: str):
    def fake(x, *args):
        torch._check(x.dim() == 3, lambda: f"{op}: {first} must be [B, T, features]")
        return x.new_empty(x.shape)

    def fake_inplace(x, *args):
        torch._check(x.dim() == 3, lambda: f"{op}_: {first} must be [B, T, features]")

    return {op: fake, f"{op}_": fake_inplace}


def _encode_fake(x, W_enc, b_enc, b_dec, threshold, activation):
    return x.new_empty(x.shape[0], W_enc.shape[1])


def _encode_topk_fake(x, W_enc, b_enc, b_dec, threshold, activation, k):
    return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)


def _decode_fake(indices, values, W_dec, b_dec):
    return values.new_empty(indices.shape[0], W_dec.shape[1])


def _decode_backward_fake(grad_out, indices, values, W_dec, need_values, need_W_dec):
    return (values.new_empty(values.shape if need_values else (0,)),
            W_dec.new_empty(W_dec.shape if need_W_dec else (0,)))


# ---- autograd ----
def _encode_setup_context(ctx, inputs, output):
    x, W_enc, _, b_dec, _, activation, *_ = inputs
    sparse = isinstance(output, (tuple, list))
    out, indices = (output[0], output[1]) if sparse else (output, None)
    ctx.activation = activation
    ctx.save_for_backward(x, W_enc, b_dec, out, indices)


def _encode_backward(ctx, grad_out, *_):
    x, W_enc, b_dec, out, indices = ctx.saved_tensors
    grads = sae_encode_backward(grad_out, out, indices, x, W_enc, b_dec, ctx.activation,
                                ctx.needs_input_grad[:4], row_grads=_encoder_row_grads(W_enc))
    return (*grads, None, None) + ((None,) if indices is not None else ())


def _encoder_row_grads(W_enc):
    # the decoder's W gradient loop; it reads W only for its shape when values need no grad
    shape_only = W_enc.new_empty(()).expand(W_enc.shape[1], W_enc.shape[0])
    return lambda g, indices, values: torch.ops.emofast.sae_decode_backward(
        g, indices, values, shape_only, False, True)[1]


def _decode_setup_context(ctx, inputs, output):
    indices, values, W_dec, b_dec = inputs
    ctx.save_for_backward(indices, values, W_dec)
    ctx.has_bias = b_dec is not None


def _decode_backward(ctx, grad_out):
    indices, values, W_dec = ctx.saved_tensors
    _, need_values, need_w, need_b = ctx.needs_input_grad
    grad_values = grad_w = None
    if need_values or need_w:
        gv, gw = torch.ops.emofast.sae_decode_backward(grad_out, indices, values, W_dec,
                                                       need_values, need_w)
        grad_values, grad_w = (gv if need_values else None), (gw if need_w else None)
    grad_b = grad_out.sum(0) if ctx.has_bias and need_b else None
    return None, grad_values, grad_w, grad_b


def _register() -> None:
    """Fake kernels and autograd of every op the extension defines (once per process)."""
    fakes = {**_row_edit_fake("masked_ablate", "x"), **_row_edit_fake("steer_add", "h"),
             "sae_encode": _encode_fake, "sae_encode_topk": _encode_topk_fake,
             "sae_decode": _decode_fake, "sae_decode_backward": _decode_backward_fake}
    autograd = {"sae_encode": (_encode_backward, _encode_setup_context),
                "sae_encode_topk": (_encode_backward, _encode_setup_context),
                "sae_decode": (_decode_backward, _decode_setup_context)}
    for name, fake in fakes.items():
        if hasattr(torch.ops.emofast, name):
            torch.library.register_fake(f"emofast::{name}")(fake)
    for name, (backward, setup_context) in autograd.items():
        if hasattr(torch.ops.emofast, name):
            torch.library.register_autograd(f"emofast::{name}", backward,
                                            setup_context=setup_context)


if "emofast._C" in sys.modules:  # torch imported this module for a fake kernel (set_python_module)
    ops()
