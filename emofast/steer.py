"""Steering: add alpha * v to the residual stream at chosen layers and positions, and generate.

    dirs = EmotionDirections.load("out/directions")
    steering = Steering.single(dirs, "anger", layers=range(10, 20), alpha=4.0, scale="rms")
    texts = generate(model, prompts, steering=steering)

Each batch row carries its own (emotion, layer set, alpha), so a whole layer x alpha grid, with
the unsteered rows beside it, runs as one batched generation (`Steering.rows`). At layer L the
edit is delta = alpha * v_L (scale="abs") or alpha * v_L * rms(h) (scale="rms", rms over
d_model per token, as in arXiv 2510.11328), added to resid_post of L.

positions: "all" every position of every forward; "prompt" only the prompt pass; "generated"
only the passes that process generated tokens; an int k the last k positions of each forward
(the last k prompt tokens, then each new token). Batches are left-padded (`generate` and
`metrics.lm_preservation` do so), so the last k positions are every row's real last tokens.
alpha = 0 leaves the model exactly unchanged.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from .data import Prompt
from .directions import EmotionDirections
from .kernels import steer_add
from .models import Model

@dataclass
class Steering:
    """Per-row steering. `emotion_idx` [N] (-1 = unsteered), `alpha` [N], `layer_mask` [N, L]."""
    directions: EmotionDirections
    emotion_idx: torch.Tensor
    alpha: torch.Tensor
    layer_mask: torch.Tensor
    positions: str | int = "all"
    scale: str = "abs"

    def __post_init__(self):
        if self.scale not in ("abs", "rms"):
            raise ValueError(f"scale must be 'abs' or 'rms', got {self.scale!r}")
        ok = self.positions in ("all", "prompt", "generated") or (
            isinstance(self.positions, int) and self.positions >= 1)
        if not ok:
            raise ValueError(f"positions must be 'all', 'prompt', 'generated' or a last-k count "
                             f">= 1, got {self.positions!r}")
        n = len(self.emotion_idx)
        if self.alpha.shape != (n,) or self.layer_mask.shape[0] != n:
            raise ValueError("emotion_idx, alpha and layer_mask need one entry per row")
        if self.directions.site != "resid_post":
            raise ValueError(f"steering adds to resid_post, but these directions were read at "
                             f"{self.directions.site!r}: extract them at resid_post")
        steered = self.layer_mask.any(0).nonzero().squeeze(-1).tolist()
        missing = sorted(set(steered) - set(self.directions.layers))
        if missing:
            raise ValueError(f"no direction for layer(s) {missing}: the directions cover layers "
                             f"{self.directions.layers}")

    @classmethod
    def rows(cls, directions: EmotionDirections, rows: Sequence[tuple[str | None, Iterable[int], float]],
             n_layers: int | None = None, *, positions: str | int = "all",
             scale: str = "abs") -> "Steering":
        """One row per (emotion or None, layers, alpha); None or alpha 0 means unsteered.
        `n_layers` defaults to the deepest layer the directions cover, plus one."""
        n_layers = n_layers or max(directions.layers) + 1
        emo = torch.full((len(rows),), -1, dtype=torch.long)
        alpha = torch.zeros(len(rows))
        mask = torch.zeros(len(rows), n_layers, dtype=torch.bool)
        for i, (emotion, layers, a) in enumerate(rows):
            if emotion is None or a == 0:
                continue
            if emotion not in directions.emotions:
                raise ValueError(f"no direction for emotion {emotion!r}: have {directions.emotions}")
            emo[i], alpha[i] = directions.emotions.index(emotion), float(a)
            for layer in layers:
                if not 0 <= layer < n_layers:
                    raise ValueError(f"layer {layer} out of range: model has {n_layers} layers "
                                     f"(0..{n_layers - 1})")
                mask[i, layer] = True
        return cls(directions, emo, alpha, mask, positions, scale)

    @classmethod
    def single(cls, directions: EmotionDirections, emotion: str, layers: Iterable[int],
               alpha: float, n_layers: int | None = None, **kw) -> "Steering":
        """The same steering for every row (broadcast to any batch size)."""
        return cls.rows(directions, [(emotion, list(layers), alpha)], n_layers, **kw)

    def take(self, rows: slice | torch.Tensor, n: int) -> "Steering":
        """The steering of `n` batch rows; a one-row Steering broadcasts."""
        if len(self.emotion_idx) == 1:
            pick = torch.zeros(n, dtype=torch.long)
        else:
            pick = torch.arange(len(self.emotion_idx))[rows]
            if len(pick) != n:
                raise ValueError(f"steering has {len(self.emotion_idx)} rows, batch needs {n}")
        return Steering(self.directions, self.emotion_idx[pick], self.alpha[pick],
                        self.layer_mask[pick], self.positions, self.scale)


@contextmanager
def apply(model: Model, steering: Steering | None) -> Iterator[None]:
    """Install the steering hooks for one batch (rows of `steering` = batch rows). Another
    per-row intervention with `alpha` [B] and a `hooks(model)` context (circuits.Modulation)
    installs its own, so `generate` and `metrics.lm_preservation` run it too."""
    if steering is None or not bool((steering.alpha != 0).any()):
        yield
        return
    if not isinstance(steering, Steering):  # another per-row intervention (circuits.Modulation)
        with steering.hooks(model):
            yield
        return
    dev = model.device
    calls: dict[int, int] = {}
    vectors, variants = {}, {}
    for layer in steering.layer_mask.any(0).nonzero().squeeze(-1).tolist():
        vectors[layer] = steering.directions.at_layer(layer).to(dev)           # [E, d_model]
        variants[layer] = torch.where(steering.layer_mask[:, layer], steering.emotion_idx,
                                      -1).to(dev)
    alpha, positions = steering.alpha.to(dev), steering.positions

    def hook(h, site):
        call = calls.get(site.layer, 0)
        calls[site.layer] = call + 1
        B, T = h.shape[:2]
        if positions == "prompt" and call > 0 or positions == "generated" and call == 0:
            return None
        start = max(T - positions, 0) if isinstance(positions, int) else 0
        pos_start = torch.full((B,), start, device=h.device)
        return steer_add(h, variants[site.layer], vectors[site.layer], alpha,
                         pos_start=pos_start, rms=steering.scale == "rms")

    with model.hooks({f"L{layer}.resid_post": hook for layer in vectors}):
        yield


@torch.inference_mode()
def generate(model: Model, prompts: Sequence[Prompt | str], *, steering: Steering | None = None,
             max_new_tokens: int = 40, chat: bool = True, batch_size: int = 32,
             progress: bool = True, **generate_kwargs) -> list[str]:
    """Greedy generation (pass do_sample=True etc. through `generate_kwargs`), batched with
    left padding; `chat` applies the tokenizer's chat template (a Prompt carries its system
    prompt). Returns only the newly generated text of each prompt."""
    tok = model.tokenizer
    if not chat and any(isinstance(p, Prompt) for p in prompts):
        raise ValueError("chat=False generates from plain strings; a Prompt's system prompt and "
                         "prefill need the chat template (chat=True)")
    if steering is not None and (generate_kwargs.get("num_beams", 1) > 1
                                 or generate_kwargs.get("num_return_sequences", 1) > 1
                                 or generate_kwargs.get("use_cache") is False):
        raise ValueError("steered generation needs one sequence per prompt and the KV cache: "
                         "num_beams, num_return_sequences and use_cache=False are not supported")
    if steering is not None and len(steering.emotion_idx) not in (1, len(prompts)):
        raise ValueError(f"steering has {len(steering.emotion_idx)} rows for {len(prompts)} "
                         "prompts: give one row, or one per prompt")
    texts = [model.chat_text(p) for p in prompts] if chat else list(prompts)
    out: list[str] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress):
        batch = texts[start:start + batch_size]
        enc = model.encode(batch, templated=chat, padding_side="left")
        rows = None if steering is None else steering.take(slice(start, start + len(batch)), len(batch))
        kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                      **generate_kwargs)
        if not kwargs["do_sample"]:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with apply(model, rows):
            ids = model.hf.generate(input_ids=enc["input_ids"].to(model.device),
                                    attention_mask=enc["attention_mask"].to(model.device), **kwargs)
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in out]
