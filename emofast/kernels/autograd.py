"""Backward formulas shared by the Triton autograd.Function and the C++ op's registered autograd
(pure torch, so both faces differentiate identically).

sae_encode: pre = (x - b_dec) @ W_enc + b_enc, straight-through on the kept entries.
"""
from __future__ import annotations

from typing import Callable

import torch

# (g [N, d_model], indices [N, k], values [N, k]) -> [d_sae, d_model]: row indices[n, j] gets
# values[n, j] * g[n], summed. It is the sparse decoder's W_dec gradient, and with g = x - b_dec
# and values = the kept grad of pre it is a top-k encoder's W_enc gradient, transposed.
RowGrads = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sae_encode_backward(grad_out: torch.Tensor, out: torch.Tensor, indices: torch.Tensor | None,
                        x: torch.Tensor, W_enc: torch.Tensor, b_dec: torch.Tensor | None,
                        activation: str, needs: tuple[bool, bool, bool, bool],
                        row_grads: RowGrads | None = None):
    """Grads (x, W_enc, b_enc, b_dec) of sae_encode from the grad of its output (dense [N, d_sae],
    or the kept [N, k] with their `indices`), None where `needs` says not needed. Gradient flows
    only where the output is nonzero (relu/topk: > 0; jumprelu: != 0).

    With indices and `row_grads` (the C++ face), grad W_enc is the sparse sum over the N x k kept
    entries, d_sae / k times cheaper than the dense [d_model, N] @ [N, d_sae] matmul on a CPU;
    the Triton face keeps the dense matmul, which runs on tensor cores (as sparsify's does).
    grad b_dec = -W_enc @ grad b_enc: the sum over tokens taken before the matmul, not after."""
    need_x, need_w, need_be, need_bd = needs
    keep = out > 0 if activation in ("relu", "topk") else out != 0
    g = grad_out * keep
    d_sae = W_enc.shape[1]
    if indices is not None:   # summed in fp32: N x k bf16 adds into one slot would stall
        gbe_full = torch.zeros(d_sae, dtype=torch.float32, device=g.device).index_add_(
            0, indices.reshape(-1), g.reshape(-1).float())
        dense = None
        if need_x or (need_w and row_grads is None):
            dense = torch.zeros(g.shape[0], d_sae, dtype=g.dtype, device=g.device).scatter_(
                1, indices, g)
    else:
        gbe_full, dense = g.sum(0, dtype=torch.float32), g
    gx = dense @ W_enc.t() if need_x else None  # [N, d_model]
    gw = None
    if need_w:
        xc = x - b_dec if b_dec is not None else x
        if dense is None:
            gw = row_grads(xc.contiguous(), indices, g.contiguous()).t()
        else:
            gw = xc.t() @ dense  # [d_model, d_sae]
    gbe = gbe_full.to(g.dtype) if need_be else None
    gbd = -(W_enc.float() @ gbe_full).to(g.dtype) if need_bd and b_dec is not None else None
    return gx, gw, gbe, gbd
