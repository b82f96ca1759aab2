"""Shared prompt prefixes: tokens that several prompts of a batch begin with, run once per
variant.

Prompts built from templates share long beginnings (a system prompt, a scenario's first
sentence; the instructed sev6 prompts of one skeleton share ~45 of ~72 tokens). Under an edit
that acts by real-token position (zero, mean, steer, SAE feature edit: not a patch from a
per-prompt source), position i of two prompts that agree on tokens 0..i holds the same state,
so the batched engine runs a chunk in two forwards (`emofast.sweeps.batched`):
1. the prefix of each group of prompts, one row per (variant, group), keeping its keys/values;
2. each prompt's suffix, one row per (variant, prompt), attending to its group's prefix cache.
Exact for causal attention (the float sums differ in order only). Groups: the prompts' token
sequences sorted, cut into runs of neighbours that share at least MIN_SHARED tokens so that the
most tokens are shared; used only when the two runs, padding included, compute at least
MIN_SAVED fewer positions than the batch.

Layouts: the clean run's batch is [P, T] left-padded; the prefix run is [G, Tp] left-padded
(group g's prefix: its first row's first len_g real tokens); the suffix run is [P, Ts]
left-padded after the prefix, so row i's attention mask is prefix_mask[g_i] + suffix_mask[i].
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..models import position_ids
from .batches import Batch

MIN_SHARED = 8      # tokens a group's prompts must share
MIN_SAVED = 0.1     # fraction of the batch's real tokens sharing must save


class PrefixGroups(NamedTuple):
    """One batch's prompts grouped by a shared prefix (module docstring: the layouts)."""
    group: torch.Tensor          # [P] group of each prompt
    lens: torch.Tensor           # [G] prefix length (real tokens) of each group, >= 1
    prefix_ids: torch.Tensor     # [G, Tp]
    prefix_mask: torch.Tensor    # [G, Tp]
    prefix_src: torch.Tensor     # [G, Tp] column in the clean layout of the group's first row
    first_row: torch.Tensor      # [G] that row
    suffix_ids: torch.Tensor     # [P, Ts]
    suffix_mask: torch.Tensor    # [P, Ts]
    suffix_src: torch.Tensor     # [P, Ts] column of each suffix position in the clean layout
    suffix_pos: torch.Tensor     # [P, Ts] position ids of the suffix run

    def prefix_of(self, x: torch.Tensor) -> torch.Tensor:
        """A clean-layout tensor [P, T, ...] -> the prefix layout [G, Tp, ...]."""
        return x[self.first_row[:, None], self.prefix_src]

    def suffix_of(self, x: torch.Tensor) -> torch.Tensor:
        """A clean-layout tensor [P, T, ...] -> the suffix layout [P, Ts, ...]."""
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        return x[rows, self.suffix_src]

    def prefix_starts(self, p_row: torch.Tensor, V_c: int) -> torch.Tensor:
        """Real-token edit starts [V_c * G] -> first edited column of the prefix run."""
        Tp = self.prefix_ids.shape[1]
        pad = (Tp - self.lens).repeat(V_c)
        return (pad + p_row).clamp(max=Tp)

    def suffix_starts(self, p_row: torch.Tensor, V_c: int) -> torch.Tensor:
        """Real-token edit starts [V_c * P] -> first edited column of the suffix run."""
        Ts = self.suffix_ids.shape[1]
        pad = (Ts - self.suffix_mask.sum(-1)).repeat(V_c)
        done = self.lens[self.group].repeat(V_c)
        return (pad + (p_row - done).clamp(min=0)).clamp(max=Ts)

    def suffix_attention_mask(self) -> torch.Tensor:
        """[P, Tp + Ts]: the group's prefix mask, then the row's suffix mask."""
        return torch.cat([self.prefix_mask[self.group], self.suffix_mask], 1)


def prefix_groups(batch: Batch, *, min_shared: int = MIN_SHARED,
                  min_saved: float = MIN_SAVED) -> PrefixGroups | None:
    """The batch's prompts grouped by shared prefixes, or None when the two runs (padding
    included) would not save `min_saved` of the batch's [P, T] positions."""
    ids, pad = batch.ids, batch.pad.tolist()
    P, T = ids.shape
    seqs = [ids[i, pad[i]:].tolist() for i in range(P)]
    if P < 2 or min(map(len, seqs)) < 2:        # a prefix and a suffix of >= 1 token each
        return None
    order = sorted(range(P), key=lambda i: seqs[i])
    groups, lens = _best_partition([seqs[i] for i in order], min_shared)
    groups = [[order[j] for j in g] for g in groups]
    Tp, Ts = max(lens), max(len(seqs[g[0]]) - n for g, n in zip(groups, lens))
    if len(groups) * Tp + P * Ts > (1 - min_saved) * P * T:
        return None
    return _layouts(batch, groups, lens)


def _best_partition(seqs: list[list[int]], min_shared: int) -> tuple[list[list[int]], list[int]]:
    """Sorted sequences cut into consecutive groups maximising the tokens shared, sum of
    (size - 1) x prefix length; a group of several shares >= min_shared tokens and leaves each
    member >= 1 token of its own. Singletons get a 1-token prefix (no empty prefix row)."""
    n = len(seqs)
    adjacent = [_common(a, b) for a, b in zip(seqs, seqs[1:])]
    best, cut = [0] * (n + 1), [0] * (n + 1)
    for i in range(1, n + 1):
        best[i], cut[i] = best[i - 1], i - 1                      # seqs[i-1] alone
        shared = len(seqs[i - 1]) - 1
        for j in range(i - 2, -1, -1):                            # group seqs[j..i-1]
            shared = min(shared, adjacent[j], len(seqs[j]) - 1)
            if shared < min_shared:
                break
            if best[j] + (i - j - 1) * shared > best[i]:
                best[i], cut[i] = best[j] + (i - j - 1) * shared, j
    groups, lens, i = [], [], n
    while i > 0:
        j = cut[i]
        members = list(range(j, i))
        lens.append(1 if len(members) == 1 else min(
            [len(seqs[k]) - 1 for k in members] + adjacent[j:i - 1]))
        groups.append(members)
        i = j
    return groups[::-1], lens[::-1]


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _layouts(batch: Batch, groups: list[list[int]], lens: list[int]) -> PrefixGroups:
    dev, (P, T) = batch.ids.device, batch.ids.shape
    pad = batch.pad
    group = torch.empty(P, dtype=torch.long)
    for g, rows in enumerate(groups):
        group[rows] = g
    group, lens_t = group.to(dev), torch.tensor(lens, device=dev)
    first = torch.tensor([rows[0] for rows in groups], device=dev)
    Tp = int(lens_t.max())
    cols = torch.arange(Tp, device=dev)
    p_pad = Tp - lens_t                                                    # [G]
    prefix_mask = (cols[None] >= p_pad[:, None]).long()
    prefix_src = (pad[first, None] + cols[None] - p_pad[:, None]).clamp(0, T - 1)
    prefix_ids = batch.ids[first[:, None], prefix_src] * prefix_mask
    n_suffix = T - pad - lens_t[group]                                     # [P] >= 1
    Ts = int(n_suffix.max())
    cols = torch.arange(Ts, device=dev)
    s_pad = Ts - n_suffix
    suffix_mask = (cols[None] >= s_pad[:, None]).long()
    suffix_src = (T - Ts + cols[None]).expand(P, -1).clamp(min=0)
    suffix_ids = batch.ids[torch.arange(P, device=dev)[:, None], suffix_src] * suffix_mask
    full = torch.cat([prefix_mask[group], suffix_mask], 1)
    return PrefixGroups(group, lens_t, prefix_ids, prefix_mask, prefix_src, first, suffix_ids,
                        suffix_mask, suffix_src, position_ids(full)[:, Tp:])
