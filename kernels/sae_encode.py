"""sae_encode: SAE encoder, pre = (x - b_dec) @ W_enc + b_enc, then the activation.

    acts = sae_encode(x, W_enc, b_enc, activation="relu")                        # [..., d_sae]
    acts = sae_encode(x, W_enc, b_enc, activation="jumprelu", threshold=theta)   # [..., d_sae]
    top = sae_encode(x, W_enc, b_enc, activation="topk", k=32, b_dec=b_dec)      # EncoderOutput
    top = sae_encode(x, W_enc, b_enc, activation="relu", sparse=True, k=32)      # EncoderOutput

Contract (all three faces):
- x [..., d_model], W_enc [d_model, d_sae], b_enc [d_sae], b_dec [d_model] or None,
  threshold [d_sae] (jumprelu only). One dtype for all of them: float32, bfloat16 or float16,
  which is the output dtype. Accumulation is fp32.
- "relu": relu(pre). "jumprelu": pre * (pre > threshold). "topk": the k largest pre-activations
  per row, then ReLU on the kept values (Gao et al.; sparsify), returned as
  `EncoderOutput(values [..., k], indices [..., k] int64)`; `sparse` is implied.
  relu / jumprelu with sparse=True need k and return the k largest *activations* in the same form
  (fewer than k positive latents: the rest are zeros at some latents with zero activation).
  Values are sorted descending. Ties: any valid top-k set (faces may pick different latents among
  equal values; compare sorted values).
- Differentiable in x, W_enc, b_enc, b_dec (straight-through on the kept entries: gradient reaches
  pre only where the output is nonzero: the relu mask, the jumprelu mask, the kept top-k entries;
  then standard matmul backward in torch ops). The threshold gets no gradient (JumpReLU training
  needs a pseudo-derivative with a bandwidth, which belongs to the trainer, not to this op).
  The backward takes the jumprelu mask from the output (out != 0), so it differs from autograd of
  the reference only where pre is exactly 0 with a negative threshold.

b_dec: the Triton face folds it into the bias, bias = b_enc - b_dec @ W_enc, computed once per call
by the same GEMM kernel with fp32 output (a GEMV: 1/N of the GEMM's FLOPs, one extra read of
W_enc); the GEMM's fp32 accumulator then cancels x @ W_enc against it without loss, and the
x tiles go straight from memory to the tensor cores. The C++ face subtracts b_dec from x first,
exactly like the reference, because its MKL/oneDNN GEMM rounds bf16 outputs before the epilogue
(a folded bias would cancel catastrophically there).

Top-k on the Triton face (TOPK_MODE): "torch" (default) writes the fused activations [N, d_sae]
in the input dtype and runs torch.topk; "tile" keeps the top next_pow2(k) of every
[BLOCK_M, BLOCK_N] tile in the GEMM epilogue (tl.topk on packed value|latent int64 keys) and
torch.topk reduces the candidates. At SAE shapes (k 64, d_sae 65536) "tile" writes more bytes
(8-byte candidates, k / BLOCK_N = 1/2 of the row) than "torch" (2-byte activations, whole row) and
adds a bitonic sort of int64 tiles to the epilogue on CUDA cores, while the GEMM (2 N d_model d_sae
FLOPs) dominates both; "tile" only wins when next_pow2(k) << BLOCK_N. bench/gpu_kernels_sae.py
times both; flip TOPK_MODE here if a GPU says otherwise (at run time:
`importlib.import_module("emofast.kernels.sae_encode").TOPK_MODE = "tile"`; the attribute
`emofast.kernels.sae_encode` is the function).
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import triton
import triton.language as tl

from ._common import FLOAT_DTYPES, cpp_ops_with
from ._dispatch import choose

ACTIVATIONS = ("relu", "jumprelu", "topk")
TOPK_MODE: Literal["torch", "tile"] = "torch"
_ACT_CODE = {"none": 0, "relu": 1, "jumprelu": 2}


class EncoderOutput(NamedTuple):
    """The k kept latents per token."""

    values: torch.Tensor  # [..., k] activations, descending
    indices: torch.Tensor  # [..., k] int64 latent ids in [0, d_sae)


@triton.jit
def _sae_encode_fwd_kernel(
    x_ptr,  # [N, d_model]
    w_ptr,  # [d_model, d_sae]
    bias_ptr,  # [d_sae] fp32 (not read when HAS_BIAS is False)
    thr_ptr,  # [d_sae] (read only when ACT == 2)
    out_ptr,  # [N, d_sae] activations; with TILE_TOPK [N, n_tiles * KP] int64 candidate keys
    N,
    d_model,
    d_sae,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 jumprelu
    TILE_TOPK: tl.constexpr,
    KP: tl.constexpr,  # candidates kept per row and tile (power of two, <= BLOCK_N)
    INPUT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,  # upcast operands first (the interpreter's bf16 tl.dot is wrong)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # grouped tile order: GROUP_M row blocks sweep the columns together, so W_enc tiles are reused
    # from L2
    pid = tl.program_id(0).to(tl.int64)
    n_pid_m = tl.cdiv(N, BLOCK_M)
    n_pid_n = tl.cdiv(d_sae, BLOCK_N)
    group = pid // (GROUP_M * n_pid_n)
    first_m = group * GROUP_M
    group_m = tl.minimum(n_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * n_pid_n)) % group_m
    pid_n = (pid % (GROUP_M * n_pid_n)) // group_m

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] int64
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] int64
    ks = tl.arange(0, BLOCK_K)
    row_mask = rows < N
    col_mask = cols < d_sae
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, d_model, BLOCK_K):
        k_mask = (k0 + ks) < d_model
        a = tl.load(x_ptr + rows[:, None] * d_model + (k0 + ks)[None, :],
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(w_ptr + (k0 + ks)[:, None] * d_sae + cols[None, :],
                    mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if DOT_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    # epilogue in fp32: bias, activation, then store (or tile top-k)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0)[None, :]
    if ACT == 1:
        acc = tl.maximum(acc, 0.0)
    if ACT == 2:
        thr = tl.load(thr_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
        acc = tl.where(acc > thr[None, :], acc, 0.0)
    if TILE_TOPK:
        # order-preserving int32 image of the fp32 value in the high half, latent id in the low
        # half: one int64 top-k carries both; padding columns lose to every real value
        acc = tl.where(col_mask[None, :], acc, float("-inf"))
        bits = acc.to(tl.int32, bitcast=True)
        key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
        packed = (key << 32) | cols[None, :]
        top = tl.topk(packed, KP)  # [BLOCK_M, KP], descending
        offs = rows[:, None] * (n_pid_n * KP) + pid_n * KP + tl.arange(0, KP)[None, :]
        tl.store(out_ptr + offs, top, mask=row_mask[:, None])
    else:
        tl.store(out_ptr + rows[:, None] * d_sae + cols[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=row_mask[:, None] & col_mask[None, :])


def _config(N: int, d_model: int, d_sae: int, dtype: torch.dtype, device: torch.device,
            kp: int = 0) -> dict:
    """Block sizes by shape (no multi-config autotune: it fails under the interpreter).

    CUDA (H100/H200 class), 16-bit: 128x128x64 tiles, 8 warps, 3 stages, GROUP_M 8, the usual
    Hopper GEMM point for Triton without TMA/warp specialization; fp32 halves BLOCK_K to keep 3
    stages in shared memory. Few tokens (N <= 64) use BLOCK_M 16/32/64 so small batches do not
    pay for empty rows. Tile top-k uses BLOCK_M 64 and BLOCK_N >= KP: the int64 key tile doubles
    the epilogue's register footprint.
    Interpreter: the smallest legal tiles that cover the test shapes (tl.dot needs >= 16; 32 is
    used), since every program costs Python time.
    """
    if device.type == "cuda":
        bm = max(16, min(128, triton.next_power_of_2(N)))
        cfg = dict(BLOCK_M=bm, BLOCK_N=128, BLOCK_K=32 if dtype == torch.float32 else 64,
                   GROUP_M=8, num_warps=8, num_stages=3)
        if kp:
            cfg.update(BLOCK_M=min(bm, 64), BLOCK_N=max(128, kp))
    else:
        cfg = dict(BLOCK_M=max(32, min(64, triton.next_power_of_2(N))),
                   BLOCK_N=max(32, min(128, triton.next_power_of_2(d_sae)), kp),
                   BLOCK_K=max(32, min(128, triton.next_power_of_2(d_model))), GROUP_M=8,
                   num_warps=4, num_stages=1)
    return cfg


_MAX_TILE_KP = 256  # tile top-k keeps next_pow2(k) int64 keys per row in registers


def _gemm_epilogue(x, W_enc, bias, threshold, act: str, out_dtype, kp: int = 0):
    """act(x @ W_enc + bias) -> [N, d_sae] in out_dtype, or with kp > 0 the packed tile top-kp
    candidates [N, n_tiles * kp] int64. x, W_enc contiguous; bias fp32 or None."""
    N, d_model = x.shape
    d_sae = W_enc.shape[1]
    if kp > _MAX_TILE_KP:
        raise ValueError(f"sae_encode: TOPK_MODE='tile' supports k <= {_MAX_TILE_KP} (it keeps "
                         f"next_pow2(k) = {kp} candidates per row in each tile's registers); "
                         "use TOPK_MODE='torch'")
    cfg = _config(N, d_model, d_sae, x.dtype, x.device, kp)
    n_tiles = triton.cdiv(d_sae, cfg["BLOCK_N"])
    if kp:
        out = torch.empty(N, n_tiles * kp, dtype=torch.int64, device=x.device)
    else:
        out = torch.empty(N, d_sae, dtype=out_dtype, device=x.device)
    if N == 0:
        return out
    precision = ("ieee" if x.dtype == torch.float32
                 and torch.get_float32_matmul_precision() == "highest" else "tf32")
    # Triton 3.9's interpreter multiplies bf16 tl.dot operands as raw bits; on a GPU bf16 stays
    # bf16 (tensor cores)
    dot_fp32 = x.device.type != "cuda" and x.dtype == torch.bfloat16
    grid = (triton.cdiv(N, cfg["BLOCK_M"]) * n_tiles,)
    _sae_encode_fwd_kernel[grid](
        x, W_enc, bias if bias is not None else x, threshold if threshold is not None else x, out,
        N, d_model, d_sae, HAS_BIAS=bias is not None, ACT=_ACT_CODE[act], TILE_TOPK=kp > 0,
        KP=max(kp, 1), INPUT_PRECISION=precision, DOT_FP32=dot_fp32, **cfg)
    return out


def _unpack_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of the kernel's packing: int64 keys -> (fp32 values, int64 latent ids)."""
    idx = keys & 0xFFFFFFFF
    hi = (keys >> 32).to(torch.int32)
    bits = torch.where(hi < 0, hi ^ 0x7FFFFFFF, hi)
    return bits.view(torch.float32), idx


def _encode_triton(x, W_enc, b_enc, b_dec, threshold, activation: str, k: int | None,
                   sparse: bool):
    """Triton forward (2-D contiguous inputs): dense activations or (values, indices)."""
    bias = b_enc.float()
    if b_dec is not None:  # fold: (x - b_dec) @ W = x @ W - b_dec @ W, in fp32
        bias = bias - _gemm_epilogue(b_dec[None], W_enc, None, None, "none", torch.float32)[0]
    act = "none" if activation == "topk" else activation
    if not sparse:
        return _gemm_epilogue(x, W_enc, bias, threshold, act, x.dtype)
    if TOPK_MODE == "tile":
        keys = _gemm_epilogue(x, W_enc, bias, threshold, act, x.dtype,
                              kp=triton.next_power_of_2(k))
        vals32, idx = _unpack_keys(keys.topk(k, dim=1).values)
        values = vals32.to(x.dtype)
    else:
        values, idx = _gemm_epilogue(x, W_enc, bias, threshold, act, x.dtype).topk(k, dim=1)
    if activation == "topk":
        values = values.relu()
    return values, idx


# ---- backward, shared by the Triton autograd.Function and the C++ ops' registered autograd ----
def _grad_pre(grad_out, out, activation: str, indices=None, d_sae: int = 0):
    """Straight-through: grad of pre from grad of the output, kept (nonzero) entries only."""
    keep = out > 0 if activation in ("relu", "topk") else out != 0
    g = grad_out * keep
    if indices is None:
        return g
    return torch.zeros(g.shape[0], d_sae, dtype=g.dtype, device=g.device).scatter_(1, indices, g)


def _grad_inputs(grad_pre, x, W_enc, b_dec, needs):
    """Matmul backward of pre = (x - b_dec) @ W_enc + b_enc; needs = (x, W_enc, b_enc, b_dec)."""
    need_x, need_w, need_be, need_bd = needs
    gx = grad_pre @ W_enc.t() if (need_x or need_bd) else None  # [N, d_model]
    gw = None
    if need_w:
        xc = x - b_dec if b_dec is not None else x
        gw = xc.t() @ grad_pre  # [d_model, d_sae]
    gbe = grad_pre.sum(0) if need_be else None
    gbd = -gx.sum(0) if need_bd and b_dec is not None else None
    return (gx if need_x else None), gw, gbe, gbd


class SAEEncodeFunction(torch.autograd.Function):
    """Triton forward, torch backward; inputs are 2-D, contiguous and validated by `sae_encode`."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, threshold, activation, k, sparse):
        res = _encode_triton(x, W_enc, b_enc, b_dec, threshold, activation, k, sparse)
        ctx.activation, ctx.sparse, ctx.d_sae = activation, sparse, W_enc.shape[1]
        if sparse:
            ctx.mark_non_differentiable(res[1])
            ctx.save_for_backward(x, W_enc, b_dec, res[0], res[1])
        else:
            ctx.save_for_backward(x, W_enc, b_dec, res, None)
        return res

    @staticmethod
    def backward(ctx, grad_out, *_):
        x, W_enc, b_dec, out, indices = ctx.saved_tensors
        gp = _grad_pre(grad_out, out, ctx.activation, indices, ctx.d_sae)
        return (*_grad_inputs(gp, x, W_enc, b_dec, ctx.needs_input_grad[:4]), None, None, None,
                None)


# ---- the C++ face: fake functions and autograd for torch.ops.emofast.sae_encode{,_topk} ----
def _cpp_ops():
    """`torch.ops.emofast`, with the fake kernels and autograd of both ops registered once."""
    autograd = (_cpp_backward, _cpp_setup_context)
    return cpp_ops_with(
        fakes={"sae_encode": _encode_fake, "sae_encode_topk": _encode_topk_fake},
        autograd={"sae_encode": autograd, "sae_encode_topk": autograd})


def _encode_fake(x, W_enc, b_enc, b_dec, threshold, activation):
    return x.new_empty(x.shape[0], W_enc.shape[1])


def _encode_topk_fake(x, W_enc, b_enc, b_dec, threshold, activation, k):
    return x.new_empty(x.shape[0], k), x.new_empty(x.shape[0], k, dtype=torch.int64)


def _cpp_setup_context(ctx, inputs, output):
    x, W_enc, _, b_dec, _, activation, *_ = inputs
    sparse = isinstance(output, (tuple, list))
    out, indices = (output[0], output[1]) if sparse else (output, None)
    ctx.activation, ctx.d_sae = activation, W_enc.shape[1]
    ctx.save_for_backward(x, W_enc, b_dec, out, indices)


def _cpp_backward(ctx, grad_out, *_):
    x, W_enc, b_dec, out, indices = ctx.saved_tensors
    gp = _grad_pre(grad_out, out, ctx.activation, indices, ctx.d_sae)
    grads = _grad_inputs(gp, x, W_enc, b_dec, ctx.needs_input_grad[:4])
    return (*grads, None, None) + ((None,) if indices is not None else ())


# ---- the reference and the public function ----
def sae_encode_reference(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, *,
                         activation: str, k: int | None = None,
                         threshold: torch.Tensor | None = None, b_dec: torch.Tensor | None = None,
                         sparse: bool = False) -> torch.Tensor | EncoderOutput:
    """Pure-torch oracle: matmul, bias, activation, torch.topk (differentiable by autograd)."""
    pre = (x - b_dec if b_dec is not None else x) @ W_enc + b_enc
    if activation == "topk":
        top = pre.topk(k, dim=-1)
        return EncoderOutput(top.values.relu(), top.indices)
    acts = pre.relu() if activation == "relu" else pre * (pre > threshold).to(pre.dtype)
    if sparse:
        top = acts.topk(k, dim=-1)
        return EncoderOutput(top.values, top.indices)
    return acts


def _check(x, W_enc, b_enc, activation, k, threshold, b_dec, sparse) -> bool:
    """Validate; returns True when the output is sparse (EncoderOutput)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"sae_encode: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.dim() < 1 or W_enc.dim() != 2 or W_enc.shape[0] != x.shape[-1]:
        raise ValueError(f"sae_encode: need x [..., d_model] and W_enc [d_model, d_sae]; got x "
                         f"{tuple(x.shape)} and W_enc {tuple(W_enc.shape)}")
    d_model, d_sae = W_enc.shape
    if activation == "jumprelu" and threshold is None:
        raise ValueError("sae_encode: activation='jumprelu' needs threshold [d_sae]")
    if activation != "jumprelu" and threshold is not None:
        raise ValueError(f"sae_encode: threshold is only used by jumprelu, not {activation!r}")
    for name, t, size in (("b_enc", b_enc, d_sae), ("b_dec", b_dec, d_model),
                          ("threshold", threshold, d_sae)):
        if t is not None and tuple(t.shape) != (size,):
            raise ValueError(f"sae_encode: {name} must be [{size}], got {tuple(t.shape)}")
    is_sparse = activation == "topk" or sparse
    if is_sparse:
        if k is None:
            raise ValueError(f"sae_encode: activation={activation!r} with sparse output needs k")
        if not isinstance(k, int) or not 1 <= k <= d_sae:
            raise ValueError(f"sae_encode: k must be an int in [1, d_sae = {d_sae}], got {k!r}")
    elif k is not None:
        raise ValueError("sae_encode: k is only used with activation='topk' or sparse=True")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"sae_encode: x must be float32, bfloat16 or float16, got {x.dtype}")
    for name, t in (("W_enc", W_enc), ("b_enc", b_enc), ("b_dec", b_dec),
                    ("threshold", threshold)):
        if t is None:
            continue
        if t.dtype != x.dtype:
            raise TypeError(f"sae_encode: {name} has dtype {t.dtype} but x has {x.dtype}; all "
                            "inputs must share one dtype (the output dtype): cast them")
        if t.device != x.device:
            raise ValueError(f"sae_encode: {name} is on {t.device} but x is on {x.device}; put "
                             "all inputs on one device")
    return is_sparse


def sae_encode(x: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, *, activation: str,
               k: int | None = None, threshold: torch.Tensor | None = None,
               b_dec: torch.Tensor | None = None, sparse: bool = False,
               impl: str | None = None) -> torch.Tensor | EncoderOutput:
    """Encode x [..., d_model] -> activations [..., d_sae], or EncoderOutput([..., k] x 2) for
    activation="topk" or sparse=True. See the module docstring for the full contract; `impl`
    picks the face (`_dispatch.choose`)."""
    is_sparse = _check(x, W_enc, b_enc, activation, k, threshold, b_dec, sparse)
    impl = choose("sae_encode", x, impl)
    lead, d_sae = x.shape[:-1], W_enc.shape[1]
    x2 = x.reshape(-1, x.shape[-1])
    if impl == "triton":
        c = [None if t is None else t.contiguous() for t in (x2, W_enc, b_enc, b_dec, threshold)]
        res = SAEEncodeFunction.apply(*c, activation, k, is_sparse)
    elif impl == "cpp":
        ops = _cpp_ops()
        if is_sparse:
            res = ops.sae_encode_topk(x2, W_enc, b_enc, b_dec, threshold, activation, k)
        else:
            res = ops.sae_encode(x2, W_enc, b_enc, b_dec, threshold, activation)
    else:
        res = sae_encode_reference(x2, W_enc, b_enc, activation=activation, k=k,
                                   threshold=threshold, b_dec=b_dec, sparse=is_sparse)
    if is_sparse:
        return EncoderOutput(res[0].reshape(*lead, k), res[1].reshape(*lead, k))
    return res.reshape(*lead, d_sae)
