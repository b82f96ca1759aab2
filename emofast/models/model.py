"""`Model`: a HF causal LM, its tokenizer and architecture adapter, plus activation caching.

    model = emofast.load_model()                        # embedded SmolLM2-135M-Instruct
    acts = model.cache(texts, ["L12.resid_post"])      # {"L12.resid_post": [N, d_model]}
    acts = model.cache(texts, ["L3.attn_z"], pool="all")        # list of [T_i, H, d_head]

Reads (`pool`) count positions over each text's real (non-pad) tokens, so left and right padding give the
same activations: position ids are derived from the attention mask.
"""
from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .. import sites as _sites
from .. import validation as _validation
from ..data import Prompt
from .adapters import Adapter

Pool = "str | int | Sequence[int] | torch.Tensor"
POOLS = ("last", "mean", "span", "all")  # by name; an int, a list of ints or a tensor index too


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] from an attention mask [B, T]: each row counts its real tokens from 0,
    so left and right padding give the same activations (every forward emofast runs uses this)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def kv_cache_kwargs(module, cache, use_cache: bool) -> dict:
    """The forward keywords that hand `module` (a HF base model) a KV cache: `cache=` since
    transformers 5.24 deprecated `past_key_values=` (removed in 5.40), the old name before."""
    key = "cache" if "cache" in _forward_params(type(module)) else "past_key_values"
    return {key: cache, "use_cache": use_cache}


def returned_cache(out):
    """The KV cache a HF forward returned (`cache` since transformers 5.24, else
    `past_key_values`)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


@functools.cache
def _forward_params(cls) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


class Model:
    """Holds `hf` (the unmodified HF model), `tokenizer` and `adapter`; sizes are forwarded."""

    def __init__(self, hf, tokenizer, name: str = ""):
        self.hf, self.tokenizer, self.name = hf, tokenizer, name
        self.adapter = Adapter(hf)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        a = self.adapter
        self.n_layers, self.n_heads, self.d_head = a.n_layers, a.n_heads, a.d_head
        self.d_model, self.d_mlp = a.d_model, a.d_mlp

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, {self.adapter.model_type}, layers={self.n_layers}, "
                f"d_model={self.d_model}, H={self.n_heads}, d_mlp={self.d_mlp})")

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    # -- text in ---------------------------------------------------------------------------
    def chat_text(self, prompt: Prompt | str, system: str | None = None) -> str:
        """Apply the chat template (with the generation prompt) when the tokenizer has one; a
        Prompt's `prefill` follows, as the start of the assistant's reply."""
        user, system = (prompt.user, prompt.system) if isinstance(prompt, Prompt) else (prompt, system)
        messages = ([{"role": "system", "content": system}] if system else []) + \
            [{"role": "user", "content": user}]
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        else:  # a base model: plain paragraphs, after the BOS the tokenizer would have added
            text = self._bos + "\n\n".join(m["content"] for m in messages) + "\n\n"
        return text + (prompt.prefill if isinstance(prompt, Prompt) else "")

    @functools.cached_property
    def _bos(self) -> str:
        """The BOS token when the tokenizer adds one (Gemma: without it the model is lost);
        templated texts are encoded without special tokens, so chat_text writes it."""
        tok, bos = self.tokenizer, self.tokenizer.bos_token_id
        ids = tok("a", add_special_tokens=True)["input_ids"]
        return tok.bos_token if bos is not None and ids and ids[0] == bos else ""

    def encode(self, texts: Sequence[str], *, templated: bool = False, offsets: bool = False,
               padding_side: str | None = None):
        """Tokenize a batch with padding (the tokenizer's side unless `padding_side` is given);
        `templated` texts already carry special tokens. Texts that already start with the BOS
        the tokenizer adds (`chat_text` of a base model) get no second one."""
        texts = _validation.texts(texts, "texts")
        if not templated and self._bos:
            starts = [t.startswith(self._bos) for t in texts]
            if any(starts) and not all(starts):
                raise ValueError(f"some texts start with {self._bos!r} and some do not: pass "
                                 "them all with it (templated=True) or all without it")
            templated = all(starts)
        enc = self.tokenizer(texts, return_tensors="pt", padding=True,
                             add_special_tokens=not templated, return_offsets_mapping=offsets,
                             padding_side=padding_side or self.tokenizer.padding_side)
        n = enc["attention_mask"].sum(-1)
        if self.context_length is not None and int(n.max()) > self.context_length:
            i = int(n.argmax())
            raise ValueError(f"text {i} has {int(n[i])} tokens, more than the model's context "
                             f"of {self.context_length}: shorten it or split it")
        return enc

    @property
    def context_length(self) -> int | None:
        """The longest sequence the model's positions cover (max_position_embeddings or its
        architecture's name for it); None when the config says nothing."""
        cfg = self.hf.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if isinstance(getattr(cfg, key, None), int):
                return getattr(cfg, key)
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, base: bool = False,
                **kwargs):
        """One HF forward with position ids derived from the mask (padding-side independent);
        `base=True` runs the transformer without the unembedding (no logits)."""
        dev = self.device
        module = self.hf.base_model if base else self.hf
        kwargs.setdefault("use_cache", False)
        return module(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev),
                      position_ids=position_ids(attention_mask).to(dev), **kwargs)

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [..., V] (fp32) from final-normed hidden states [..., d_model], as the HF head
        computes them, final-logit soft-capping included (Gemma 2: cap * tanh(x / cap)). Unembed
        only the positions a metric reads: V is 262144 for Gemma."""
        logits = self.hf.get_output_embeddings()(hidden).float()
        cap = getattr(self.hf.config, "final_logit_softcapping", None)
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def hooks(self, mapping):
        """Context manager installing `{site: fn}` hooks; see `emofast.sites.hooks`."""
        return _sites.hooks(self.adapter, mapping)

    @contextmanager
    def overflow_watch(self) -> Iterator[list[torch.Tensor]]:
        """Yields a list to which each forward inside appends a [B] bool tensor (on the device,
        no host sync): the rows whose final residual (the final norm's input) at the last
        position holds inf or nan or overflows fp32 once squared. A norm of such a row is
        meaningless (RMSNorm of 1e30 is 0 or nan), and so is every logit read from it: an edit
        far too strong. Only the last position is checked: what sweeps and generation read."""
        rows: list[torch.Tensor] = []

        def check(module, args):
            x = args[0][:, -1].float()                                        # [B, d_model]
            rows.append(~torch.isfinite(x.pow(2).sum(-1)))
        handle = self.adapter.final_norm.register_forward_pre_hook(check)
        try:
            yield rows
        finally:
            handle.remove()

    # -- activations out -------------------------------------------------------------------
    @torch.inference_mode()
    def cache(self, texts: Sequence[str] | Mapping[str, torch.Tensor], sites: Sequence[str], *,
              pool: Pool = "last",
              spans: Sequence[tuple[int, int] | None] | None = None, batch_size: int = 16,
              templated: bool = False, progress: bool = True, dtype: torch.dtype = torch.float32,
              positions: Pool | None = None) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        """Run `texts` (strings, or a tokenised batch with input_ids and attention_mask
        [N, T]) and return `{site: activations}` read as `pool` says.

        pool: "last" (last real token) -> [N, *act]; "all" -> list of [T_i, *act];
          "mean" (over the real tokens) -> [N, *act];
          an int (negative counts from the end) -> [N, *act]; a list of ints -> [N, k, *act];
          a tensor [N] of per-text indices -> [N, *act]; "span" with `spans` (character
          spans in each text, mapped through the tokenizer's offsets) -> mean over the span's
          tokens, [N, *act]. *act is [d_model], [d_mlp] or [H, d_head] by site kind.
        `positions=` is the deprecated old name of `pool` (one release).
        """
        if positions is not None:
            _sites.deprecated(f"Model.cache(positions={positions!r}) is deprecated: use "
                              f"pool={positions!r}")
            pool = positions
        batch = texts if isinstance(texts, Mapping) else None
        if batch is not None:
            if "input_ids" not in batch or "attention_mask" not in batch:
                raise ValueError("a tokenised batch needs input_ids and attention_mask")
            if pool == "span":
                raise ValueError("pool='span' maps character spans: pass the texts, not tokens")
            texts = [None] * len(batch["input_ids"])  # rows, for counting and ordering
        texts = list(texts) if batch is not None else _validation.texts(texts, "cache texts")
        names = [str(_sites.parse_site(s, self.n_layers)) for s in sites]
        if not texts or not names:
            raise ValueError("cache needs at least one text and one site")
        if pool == "span" and (spans is None or len(spans) != len(texts)):
            raise ValueError("pool='span' needs spans, one (start, end) per text")
        per_text = isinstance(pool, torch.Tensor)
        if per_text and pool.shape != (len(texts),):
            raise ValueError(f"a pool tensor needs shape [{len(texts)}], got {tuple(pool.shape)}")
        # Longest-first batches waste little padding; results go back to the caller's order.
        lengths = batch["attention_mask"].sum(-1).tolist() if batch is not None else [len(t) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        last_layer = max(_sites.parse_site(n).layer for n in names)
        out: dict[str, list] = {n: [None] * len(texts) for n in names}
        bar = tqdm(total=len(texts), desc="cache", unit="text", disable=not progress)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            enc = ({"input_ids": batch["input_ids"][idx], "attention_mask": batch["attention_mask"][idx]}
                   if batch is not None else
                   self.encode([texts[i] for i in idx], templated=templated, offsets=pool == "span"))
            sel = _selector(enc, pool[idx] if per_text else pool,
                            [spans[i] for i in idx] if pool == "span" else None)
            store: dict[str, object] = {}

            def read(act, site, _store=store):
                got = sel(act)
                _store[str(site)] = ([g.to(dtype) for g in got] if isinstance(got, list)
                                     else got.to(dtype))

            def stop(act, site):
                raise _StopForward

            with self.hooks([(n, read) for n in names] + [(f"L{last_layer}.resid_post", stop)]):
                try:  # the base model: no unembedding; stop once the last site is read
                    self.forward(enc["input_ids"], enc["attention_mask"], base=True)
                except _StopForward:
                    pass
            for n in names:
                for j, i in enumerate(idx):
                    out[n][i] = store[n][j]
            bar.update(len(idx))
        bar.close()
        return {n: (v if pool == "all" else torch.stack(v)) for n, v in out.items()}


class _StopForward(Exception):
    """Raised by a hook to end a forward once every cached site has been read."""


def _selector(enc, pool, spans):
    """A function mapping a hooked activation [B, T, *act] to the requested pool."""
    mask = enc["attention_mask"].bool()                          # [B, T]
    lengths = mask.sum(-1)
    real = [row.nonzero().squeeze(-1) for row in mask]           # real token indices per row
    B = mask.shape[0]

    def absolute(rel: torch.Tensor) -> torch.Tensor:             # [B, k] relative -> absolute
        rel = torch.where(rel < 0, rel + lengths[:, None], rel)
        if (rel < 0).any() or (rel >= lengths[:, None]).any():
            raise ValueError(f"position out of range for a text of {int(lengths.min())} tokens")
        return torch.stack([real[b][rel[b]] for b in range(B)])

    if pool == "all":
        return lambda act: [act[b, real[b].to(act.device)] for b in range(B)]
    if pool == "mean":
        weights = mask.float() / lengths[:, None]
        return lambda act: torch.einsum("bt,bt...->b...", weights.to(act.device), act.float())
    if pool == "span":
        weights = torch.zeros(mask.shape)
        for b, (span, offs) in enumerate(zip(spans, enc["offset_mapping"])):
            if span is None:
                raise ValueError(f"text {b} has no span; pool='span' needs one for every text")
            hit = (offs[:, 0] < span[1]) & (offs[:, 1] > span[0]) & mask[b] & (offs[:, 1] > offs[:, 0])
            if not hit.any():
                raise ValueError(f"span {span} covers no token of text {b}")
            weights[b] = hit.float() / hit.sum()
        return lambda act: torch.einsum("bt,bt...->b...", weights.to(act.device), act.float())
    if pool == "last":
        idx, squeeze = absolute(torch.full((B, 1), -1)), True
    elif isinstance(pool, torch.Tensor):
        idx, squeeze = absolute(pool.long()[:, None]), True
    elif isinstance(pool, int):
        idx, squeeze = absolute(torch.full((B, 1), pool)), True
    elif isinstance(pool, (list, tuple)) and all(isinstance(p, int) for p in pool):
        idx, squeeze = absolute(torch.tensor(pool).expand(B, -1)), False
    else:
        raise ValueError(f"bad pool {pool!r}: 'last', 'mean', 'all', 'span', an int, a "
                         "list of ints or a tensor of per-text indices")
    rows = torch.arange(B)[:, None]

    def pick(act):
        got = act[rows.to(act.device), idx.to(act.device)]       # [B, k, *act]
        return got[:, 0] if squeeze else got
    return pick
