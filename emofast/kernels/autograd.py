"""Backward formulas shared by the Triton autograd.Function and the C++ op's registered autograd
(pure torch, so both faces differentiate identically).

sae_encode: pre = (x - b_dec) @ W_enc + b_enc, straight-through on the kept entries.
"""
from __future__ import annotations

import torch


def sae_encode_grad_pre(grad_out: torch.Tensor, out: torch.Tensor, activation: str,
                        indices: torch.Tensor | None = None, d_sae: int = 0) -> torch.Tensor:
    """Grad of pre [N, d_sae] from grad of the output (dense [N, d_sae] or the kept [N, k] with
    their `indices`): only where the output is nonzero (relu/topk: > 0; jumprelu: != 0)."""
    keep = out > 0 if activation in ("relu", "topk") else out != 0
    g = grad_out * keep
    if indices is None:
        return g
    return torch.zeros(g.shape[0], d_sae, dtype=g.dtype, device=g.device).scatter_(1, indices, g)


def sae_encode_grad_inputs(grad_pre: torch.Tensor, x: torch.Tensor, W_enc: torch.Tensor,
                           b_dec: torch.Tensor | None, needs: tuple[bool, bool, bool, bool]):
    """Matmul backward of pre = (x - b_dec) @ W_enc + b_enc; needs = (x, W_enc, b_enc, b_dec).
    Returns (grad_x [N, d_model], grad_W_enc [d_model, d_sae], grad_b_enc, grad_b_dec), None where
    not needed."""
    need_x, need_w, need_be, need_bd = needs
    gx = grad_pre @ W_enc.t() if (need_x or need_bd) else None  # [N, d_model]
    gw = None
    if need_w:
        xc = x - b_dec if b_dec is not None else x
        gw = xc.t() @ grad_pre  # [d_model, d_sae]
    gbe = grad_pre.sum(0) if need_be else None
    gbd = -gx.sum(0) if need_bd and b_dec is not None else None
    return (gx if need_x else None), gw, gbe, gbd
