"""One adapter table, keyed by `config.model_type`, that addresses modules of unmodified HF models.

An `ArchSpec` names, relative to the model, where each family keeps its blocks and, relative to a
block, the attention output projection (its input is the per-head `attn_z`), the MLP
down-projection (input `mlp_act`), the norm whose input is the residual stream between attention
and MLP (`resid_mid`), and the modules whose outputs join the residual stream (`attn_out`,
`mlp_out`): the projections themselves, except in Gemma's sandwich-norm blocks.

Gemma 2/3 normalise each sublayer's output before adding it (h + post_norm(o_proj(z))), so there
`attn_out` and `mlp_out` are the post-norms' outputs, the sublayers' real residual contributions:
resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out hold in every family. The
per-head decomposition through W_O then sums to o_proj's output, *not* to attn_out: a head's
residual contribution goes through the shared RMS of all heads' sum. `write_gain` gives the
post-norm's per-dimension gain, which linear readings (a unit's projection on a direction) fold
in; the RMS division, common to all units of a sublayer at a token, they leave out.

`Adapter` binds a spec to a model and exposes the weights the analyses need, in one orientation whatever the family:

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
    attn_out: str = ""          # from a block: output joins the residual ("": attn_out_proj)
    mlp_out: str = ""           # from a block: output joins the residual ("": mlp_down)

    def __post_init__(self):
        object.__setattr__(self, "attn_out", self.attn_out or self.attn_out_proj)
        object.__setattr__(self, "mlp_out", self.mlp_out or self.mlp_down)


_LLAMA = ArchSpec("model.layers", "self_attn.o_proj", "mlp.down_proj", "post_attention_layernorm",
                  "model.norm")
# Sandwich norms: pre_feedforward_layernorm reads resid_mid; the post-norms write the residual.
_GEMMA_SANDWICH = ArchSpec("model.layers", "self_attn.o_proj", "mlp.down_proj",
                           "pre_feedforward_layernorm", "model.norm",
                           attn_out="post_attention_layernorm",
                           mlp_out="post_feedforward_layernorm")
ADAPTERS: dict[str, ArchSpec] = {
    "gpt2": ArchSpec("transformer.h", "attn.c_proj", "mlp.c_proj", "ln_2", "transformer.ln_f"),
    "gpt_neox": ArchSpec("gpt_neox.layers", "attention.dense", "mlp.dense_4h_to_h",
                         "post_attention_layernorm", "gpt_neox.final_layer_norm"),
    "gpt_neo": ArchSpec("transformer.h", "attn.attention.out_proj", "mlp.c_proj", "ln_2",
                        "transformer.ln_f"),
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "mistral": _LLAMA,
    "gemma": _LLAMA,            # Gemma 1: Llama's block (its norms scale by 1 + weight)
    "gemma2": _GEMMA_SANDWICH,
    "gemma3_text": _GEMMA_SANDWICH,
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
        """The block (`part="block"`) or one of its parts: attn_out_proj, mlp_down, mid_norm,
        attn_out, mlp_out (the modules whose outputs join the residual stream)."""
        block = self.blocks[layer]
        return block if part == "block" else block.get_submodule(getattr(self.spec, part))

    def write_gain(self, layer: int, part: str) -> torch.Tensor | None:
        """The per-dimension gain [d_model] of the norm between `part` ("attn_out_proj" or
        "mlp_down") and the residual stream, or None where the projection writes it directly.
        (Only Gemma 2/3 have such norms; Gemma's RMSNorm scales by 1 + weight.)"""
        out = {"attn_out_proj": "attn_out", "mlp_down": "mlp_out"}[part]
        if getattr(self.spec, out) == getattr(self.spec, part):
            return None
        return 1.0 + self.module(layer, out).weight.detach().float()

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

    def residual_W_down(self, layer: int) -> torch.Tensor:
        """W_down [d_mlp, d_model] as it writes the residual stream: with the post-norm's gain
        folded in where there is one (Gemma 2/3), to first order and up to the RMS division
        that all neurons of the layer share at a token; W_down itself elsewhere."""
        return _fold(self.W_down(layer), self.write_gain(layer, "mlp_down"))

    def residual_W_O(self, layer: int) -> torch.Tensor:
        """W_O [H, d_head, d_model] as it writes the residual stream (`residual_W_down`)."""
        return _fold(self.W_O(layer), self.write_gain(layer, "attn_out_proj"))

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


def _fold(w: torch.Tensor, gain: torch.Tensor | None) -> torch.Tensor:
    return w if gain is None else w * gain.to(w.device, w.dtype)


def _dequantize(linear: nn.Module) -> torch.Tensor:
    """Dense [out, in] weight of a bitsandbytes Linear8bitLt / Linear4bit."""
    import bitsandbytes.functional as bnbf

    w = linear.weight
    if type(w).__name__ == "Params4bit":
        return bnbf.dequantize_4bit(w.data, w.quant_state).float()
    scb = getattr(w, "SCB", None) if getattr(w, "SCB", None) is not None else linear.state.SCB
    return (w.data.float() * scb.float().unsqueeze(1) / 127.0)
