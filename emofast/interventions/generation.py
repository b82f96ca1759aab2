"""Generation under an Intervention: greedy by default, batched with left padding.

    texts = generate(model, prompts, intervention=Steering.single(dirs, "fear", range(12, 18), 1.5))

Each batch takes its rows of the intervention (`Intervention.take`), so a per-row Steering or
Modulation with one row per prompt runs every condition of a grid in one batched generation.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..data import Prompt
from ..models import Model
from ..sites import deprecated
from ..validation import NonFiniteError, positive_int, text
from .base import Intervention, check_intervention


@torch.inference_mode()
def generate(model: Model, prompts: Sequence[Prompt | str], *,
             intervention: Intervention | None = None, max_new_tokens: int = 40,
             chat: bool = True, batch_size: int = 32, progress: bool = True,
             steering: Intervention | None = None, **generate_kwargs) -> list[str]:
    """Greedy generation (pass do_sample=True etc. through `generate_kwargs`), batched with
    left padding; `chat` applies the tokenizer's chat template (a Prompt carries its system
    prompt). Returns only the newly generated text of each prompt. `steering=` is the deprecated
    old name of `intervention` (one release)."""
    if steering is not None:
        if intervention is not None:
            raise ValueError("generate: give intervention= only (steering= is its old name)")
        deprecated("generate(steering=...) is deprecated: use intervention=...")
        intervention = steering
    iv = check_intervention(intervention, "generate")
    prompts = [p if isinstance(p, Prompt) else text(p, f"prompts[{i}]")
               for i, p in enumerate(texts_or_prompts(prompts))]
    max_new_tokens = positive_int(max_new_tokens, "max_new_tokens")
    batch_size = positive_int(batch_size, "batch_size")
    tok = model.tokenizer
    if not chat and any(isinstance(p, Prompt) for p in prompts):
        raise ValueError("chat=False generates from plain strings; a Prompt's system prompt and "
                         "prefill need the chat template (chat=True)")
    if iv is not None and (generate_kwargs.get("num_beams", 1) > 1
                           or generate_kwargs.get("num_return_sequences", 1) > 1
                           or generate_kwargs.get("use_cache") is False):
        raise ValueError("generation under an intervention needs one sequence per prompt and the "
                         "KV cache: num_beams, num_return_sequences and use_cache=False are not "
                         "supported")
    if iv is not None and iv.n_rows() not in (1, len(prompts)):
        raise ValueError(f"{type(iv).__name__} has {iv.n_rows()} rows for {len(prompts)} "
                         "prompts: give one row, or one per prompt")
    texts = [model.chat_text(p) for p in prompts] if chat else list(prompts)
    out: list[str] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress):
        batch = texts[start:start + batch_size]
        enc = model.encode(batch, templated=chat, padding_side="left")
        empty = (enc["attention_mask"].sum(-1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"prompt {start + empty[0]} has no tokens: give it some text")
        rows = None if iv is None else iv.take(slice(start, start + len(batch)), len(batch))
        kwargs = dict(do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                      **generate_kwargs)
        if not kwargs["do_sample"]:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with nullcontext() if rows is None else rows.hooks(model), _finite_logits(model) as bad:
            ids = model.hf.generate(input_ids=enc["input_ids"].to(model.device),
                                    attention_mask=enc["attention_mask"].to(model.device), **kwargs)
        if rows is not None and bool(bad):
            raise NonFiniteError(f"generate: {type(iv).__name__} {iv.describe()['sha1']} made the "
                                 "model's logits non-finite (inf/nan): its strength is too large "
                                 "for this model's activations; lower alpha")
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in out]


def texts_or_prompts(prompts) -> list:
    if isinstance(prompts, (str, Prompt)):
        raise TypeError("generate takes a list of prompts, got one: wrap it in a list")
    if not len(prompts):
        raise ValueError("generate needs at least one prompt")
    return list(prompts)


@contextmanager
def _finite_logits(model: Model):
    """A device flag [] bool set when any logits of the block's forwards hold inf or nan
    (read once, after generation: no host sync per step)."""
    bad = torch.zeros((), dtype=torch.bool, device=model.device)

    def watch(module, args, output):
        bad.logical_or_(~torch.isfinite(output).all())
    handle = model.hf.get_output_embeddings().register_forward_hook(watch)
    try:
        yield bad
    finally:
        handle.remove()
