"""Triton face of sae_encode (emofast.kernels.ops.sae_encode holds the contract): one GEMM kernel
with a fused bias + activation epilogue (optionally a per-tile top-k), a torch backward.

TOPK_MODE: "torch" (default) writes the fused activations and runs torch.topk; "tile" keeps the
top next_pow2(k) of every tile in the epilogue (see emofast.kernels.ops.sae_encode). Flip it at
run time with `emofast.kernels.triton.sae_encode.TOPK_MODE = "tile"`.
"""
from __future__ import annotations

from typing import Literal

import torch
import triton
import triton.language as tl

from ..autograd import sae_encode_backward

TOPK_MODE: Literal["torch", "tile"] = "torch"
_ACT_CODE = {"none": 0, "relu": 1, "jumprelu": 2}


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


def encode_triton(x, W_enc, b_enc, b_dec, threshold, activation: str, k: int | None,
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


class SAEEncodeFunction(torch.autograd.Function):
    """Triton forward, torch backward; inputs are 2-D, contiguous and validated by `sae_encode`."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, threshold, activation, k, sparse):
        res = encode_triton(x, W_enc, b_enc, b_dec, threshold, activation, k, sparse)
        ctx.activation, ctx.sparse = activation, sparse
        if sparse:
            ctx.mark_non_differentiable(res[1])
            ctx.save_for_backward(x, W_enc, b_dec, res[0], res[1])
        else:
            ctx.save_for_backward(x, W_enc, b_dec, res, None)
        return res

    @staticmethod
    def backward(ctx, grad_out, *_):
        x, W_enc, b_dec, out, indices = ctx.saved_tensors
        grads = sae_encode_backward(grad_out, out, indices, x, W_enc, b_dec, ctx.activation,
                                    ctx.needs_input_grad[:4])
        return (*grads, None, None, None, None)

