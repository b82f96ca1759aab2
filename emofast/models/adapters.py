"""One adapter table, keyed by `config.model_type`, that addresses modules of unmodified HF models.

An `ArchSpec` names, relative to the model, where each family keeps its blocks and, relative to a
block, the attention output projection (its input is the per-head `attn_z`, its output
`attn_out`), the MLP down-projection (input `mlp_act`, output `mlp_out`) and the norm whose input
is the residual stream between attention and MLP (`resid_mid`). `Adapter` binds a spec to a
model and exposes the weights the analyses need, in one orientation whatever the family:

    W_down(L)  [d_mlp, d_model]        W_O(L)  [H, d_head, d_model]      W_U  [d_model, V]

GPT-2's Conv1D stores weights as [in, out]; nn.Linear and bitsandbytes layers use [out, in].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ArchSpec:
    layers: str                 # ModuleList of blocks, from the model root
    attn_out_proj: str          # from a block: input [B, T, H * d_head], output [B, T, d_model]
    mlp_down: str               # from a block: input [B, T, d_mlp], output [B, T, d_model]
    mid_norm: str               # from a block: the norm whose input is resid_mid
    final_norm: str             # from the model root


_LLAMA = ArchSpec("model.layers", "self_attn.o_proj", "mlp.down_proj", "post_attention_layernorm",
                  "model.norm")
ADAPTERS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec("transformer.h", "attn.c_proj", "mlp.c_proj", "ln_2", "transformer.ln_f"),
    "gpt_neox": ArchSpec("gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h",
                         "post_attention_layernorm", "gpt_neox.final_layer_norm"),
    "gpt_neo": ArchSpec("transformer.h", "attn.attention.out_proj", "mlp.c_proj", "ln_2",
                        "transformer.ln_f"),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
}


class Adapter:
    """An `ArchSpec` bound to one model instance: sizes, modules and weights per layer."""

    def __init__(self, model: nn.Module):
        model_type = getattr(model.config, "model_type", None)
        if model_type not in ADAPTERS:
            raise ValueError(f"unsupported architecture {model_type!r}: emofast supports "
                             f"{', '.join(sorted(ADAPTERS))}")
        self.model, self.spec, self.model_type = model, ADAPTERS[model_type], model_type
        cfg = model.config
        self.blocks: nn.ModuleList = model.get_submodule(self.spec.layers)
        self.n_layers = len(self.blocks)
        self.n_heads = cfg.num_attention_heads
        self.d_model = cfg.hidden_size
        self.d_head = getattr(cfg, "head_dim", None) or self.d_model // self.n_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        # Pythia's parallel residual feeds attention and MLP the same input: no resid_mid exists.
        self.parallel_residual = bool(getattr(cfg, "use_parallel_residual", False))
        self.d_mlp = self._weight(self.module(0, "mlp_down"), out_features=self.d_model).shape[0]

    def module(self, layer: int, part: str) -> nn.Module:
        """The block (`part="block"`) or one of its parts: attn_out_proj, mlp_down, mid_norm."""
        block = self.blocks[layer]
        return block if part == "block" else block.get_submodule(getattr(self.spec, part))

    def _weight(self, linear: nn.Module, out_features: int) -> torch.Tensor:
        """Weight as [in, out], dequantising bitsandbytes layers (which are always [out, in],
        also where they replaced GPT-2's Conv1D)."""
        w = linear.weight
        if w.dtype in (torch.int8, torch.uint8) or type(w).__name__ in ("Params4bit", "Int8Params"):
            w = _dequantize(linear)
        w = w.detach()
        if type(linear).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            return w
        if w.shape[0] != out_features and w.shape[1] == out_features:
            raise RuntimeError(f"unexpected weight layout {tuple(w.shape)} in {type(linear).__name__}")
        return w.T

    def W_down(self, layer: int) -> torch.Tensor:
        """MLP down-projection, [d_mlp, d_model]."""
        return self._weight(self.module(layer, "mlp_down"), self.d_model)

    def W_O(self, layer: int) -> torch.Tensor:
        """Per-head attention output projection, [H, d_head, d_model]."""
        w = self._weight(self.module(layer, "attn_out_proj"), self.d_model)
        return w.reshape(self.n_heads, self.d_head, self.d_model)

    def b_O(self, layer: int) -> torch.Tensor | None:
        """Output-projection bias [d_model], or None (Llama family)."""
        b = self.module(layer, "attn_out_proj").bias
        return None if b is None else b.detach()

    @property
    def final_norm(self) -> nn.Module:
        return self.model.get_submodule(self.spec.final_norm)

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding, [d_model, V]."""
        return self.model.get_output_embeddings().weight.detach().T


def _dequantize(linear: nn.Module) -> torch.Tensor:
    """Dense [out, in] weight of a bitsandbytes Linear8bitLt / Linear4bit."""
    import bitsandbytes.functional as bnbf

    w = linear.weight
    if type(w).__name__ == "Params4bit":
        return bnbf.dequantize_4bit(w.data, w.quant_state).float()
    scb = getattr(w, "SCB", None) if getattr(w, "SCB", None) is not None else linear.state.SCB
    return (w.data.float() * scb.float().unsqueeze(1) / 127.0)
