"""Generation under an Intervention: greedy by default, batched with left padding.

    texts = generate(model, prompts, intervention=Steering.single(dirs, "fear", range(12, 18), 1.5))

Each batch takes its rows of the intervention (`Intervention.take`), so a per-row Steering or
Modulation with one row per prompt runs every condition of a grid in one batched generation.
"""
from __future__ import annotations

from contextlib import nullcontext
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
    check_intervention(iv, "generate", len(prompts), "prompts")
    texts = check_fits(model, prompts, max_new_tokens, chat=chat)
    out: list[str] = []
    for start in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress):
        batch = texts[start:start + batch_size]
        enc = model.encode(batch, templated=chat, padding_side="left")
        rows = None if iv is None else iv.take(slice(start, start + len(batch)), len(batch))
        kwargs = {"do_sample": False, "max_new_tokens": max_new_tokens,
                  "pad_token_id": tok.pad_token_id, **generate_kwargs}
        if not kwargs["do_sample"]:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with nullcontext() if rows is None else rows.hooks(model), model.overflow_watch() as bad:
            ids = model.hf.generate(input_ids=enc["input_ids"].to(model.device),
                                    attention_mask=enc["attention_mask"].to(model.device), **kwargs)
        if rows is not None and bool(torch.stack([b.any() for b in bad]).any()):
            raise NonFiniteError(f"generate: {type(iv).__name__} {iv.describe()['sha1']} made the "
                                 "model's activations overflow (inf/nan in the final residual): "
                                 "its strength is too large for this model; lower alpha")
        out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t.strip() for t in out]


def check_fits(model: Model, prompts: Sequence[Prompt | str], max_new_tokens: int, *,
               chat: bool = True) -> list[str]:
    """The texts generation will see (chat template applied when `chat`); ValueError unless each
    has a token and, with max_new_tokens more, fits the model's context. Cheap: tokenization."""
    texts = [model.chat_text(p) for p in prompts] if chat else list(prompts)
    lengths = model.encode(texts, templated=chat)["attention_mask"].sum(-1)
    if (lengths == 0).any():
        raise ValueError(f"prompt {int((lengths == 0).nonzero()[0])} has no tokens: give it "
                         "some text")
    context = model.context_length
    if context is not None and int(lengths.max()) + max_new_tokens > context:
        i = int(lengths.argmax())
        raise ValueError(f"prompt {i} has {int(lengths[i])} tokens; with max_new_tokens "
                         f"{max_new_tokens} that passes the model's context of {context}: "
                         "lower max_new_tokens or shorten the prompt")
    return texts


def texts_or_prompts(prompts) -> list:
    if isinstance(prompts, (str, Prompt)):
        raise TypeError("generate takes a list of prompts, got one: wrap it in a list")
    if not len(prompts):
        raise ValueError("generate needs at least one prompt")
    return list(prompts)
