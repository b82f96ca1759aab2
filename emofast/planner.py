"""Sweep planner: pack ablation variants into chunks that each run as one batched forward.

    from emofast.planner import Edit, Variant, plan_sweep
    variants = [Variant([Edit(layer, "mlp_act", [n])]) for layer, n in neurons]
    plan = plan_sweep(variants, n_layers=30, n_units={"mlp_act": 1536, "attn_z": 9},
                      n_prompts=8, bytes_per_row_per_layer=64 * 576 * 4, memory_budget=8 << 30)
    for chunk in plan.chunks:   # chunk.variant_ids [V_c]: the batch rows, n_prompts each
        mask = chunk.masks[(12, "mlp_act")]   # [V_c, ceil(1536 / 32)] int32, for masked_ablate

How (the same in the C++ core csrc/planner/planner.h and in `_plan_python` here):
- each variant gets a group key (first_layer, pos_start, mode_set): its lowest edited layer
  (layers below run once, shared), its lowest pos_start (positions below come from the clean KV
  cache) and the set of modes it uses. A variant without edits is the clean run: key
  (n_layers, 0, {}), a group of its own.
- variants run in order of (group key, variant id); chunks are cut greedily from that order:
  one group key per chunk, chunk bytes = V_c * n_prompts * bytes_per_row_per_layer *
  (n_layers - first_layer) <= memory_budget, and one mode per (layer, site) per chunk (mode_set
  in the key keeps single-mode variants apart; a multi-mode variant that would clash starts a
  new chunk).
- per chunk and per (layer, site) it touches: a packed mask [V_c, ceil(n_units / 32)] int32 (unit
  u of row i is bit u % 32 of word [i, u // 32], least significant bit first), the mode, and the
  pos_start of each row (rows that do not edit there get the chunk's pos_start).
- duplicate units in an edit are deduplicated; two edits of one variant at the same (layer,
  site) merge when mode and pos_start agree, else ValueError.
The C++ op runs when `emofast._C` is loaded; `_plan_python` is the fallback and the test oracle.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

SiteName = Literal["mlp_act", "attn_z", "resid"]
ModeName = Literal["zero", "mean", "patch", "scale", "steer"]
SITES: tuple[str, ...] = ("mlp_act", "attn_z", "resid")  # index = C++ SiteKind
MODES: tuple[str, ...] = ("zero", "mean", "patch", "scale", "steer")  # index = C++ Mode
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Edit:
    """One intervention of a variant at one (layer, site)."""
    layer: int                 # 0..n_layers-1
    site: SiteName             # mlp_act: unit = neuron; attn_z: unit = head; resid: unit = dim
    units: Sequence[int]       # unit indices, 0..n_units[site]-1; duplicates are ignored
    mode: ModeName = "zero"
    pos_start: int = 0         # edits positions >= pos_start (0 = all positions)

    def __post_init__(self):
        if self.site not in SITES:
            raise ValueError(f"unknown site {self.site!r}: one of {', '.join(SITES)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}: one of {', '.join(MODES)}")
        object.__setattr__(self, "layer", operator.index(self.layer))
        object.__setattr__(self, "pos_start", operator.index(self.pos_start))
        object.__setattr__(self, "units", tuple(operator.index(u) for u in self.units))


@dataclass(frozen=True)
class Variant:
    """One row group of the sweep: its edits (none = the clean run) and a label."""
    edits: Sequence[Edit] = ()
    name: str = ""             # for results; the planner ignores it

    def __post_init__(self):
        object.__setattr__(self, "edits", tuple(self.edits))
        for e in self.edits:
            if not isinstance(e, Edit):
                raise TypeError(f"variant {self.name!r}: edits must be Edit objects, got {e!r}")


@dataclass
class Chunk:
    """Variants that run as one batch: V_c * n_prompts rows from layer first_layer on."""
    variant_ids: torch.Tensor                  # [V_c] int64, row i of every mask = variant_ids[i]
    first_layer: int                           # layers < first_layer: clean, shared prefix
    pos_start: int                             # positions < pos_start: clean (KV cache)
    bytes: int                                 # V_c * n_prompts * bytes_per_row_per_layer * layers run
    masks: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # [V_c, words] int32
    modes: dict[tuple[int, str], str] = field(default_factory=dict)
    pos_starts: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)  # [V_c] int64


@dataclass
class Plan:
    """A planned sweep: every variant once, in `order`, cut into consecutive `chunks`."""
    order: torch.Tensor                        # [V] int64 variant ids in execution order
    chunks: list[Chunk]


def plan_sweep(variants: Sequence[Variant | Sequence[Edit]], *, n_layers: int,
               n_units: dict[str, int], n_prompts: int, bytes_per_row_per_layer: int,
               memory_budget: int, seq_len: int | None = None,
               impl: Literal["cpp", "python"] | None = None) -> Plan:
    """Plan a sweep (see the module docstring). `n_units` maps each site used to its unit count
    (d_mlp, H, d_model); `seq_len` (T), when given, bounds pos_start. impl=None runs the C++ op
    when the extension is loaded, else the Python planner; naming one raises if unavailable."""
    edits = [tuple(v.edits) if isinstance(v, Variant) else tuple(Variant(v).edits) for v in variants]
    unknown = set(n_units) - set(SITES)
    if unknown:
        raise ValueError(f"n_units has unknown site(s) {sorted(unknown)}: sites are {', '.join(SITES)}")
    units_per_kind = [operator.index(n_units.get(s, 0)) for s in SITES]
    facts = (n_layers, units_per_kind, 0 if seq_len is None else seq_len, n_prompts,
             bytes_per_row_per_layer, memory_budget)
    if impl not in (None, "cpp", "python"):
        raise ValueError(f"impl must be 'cpp', 'python' or None, got {impl!r}")
    ops = None
    if impl != "python":
        from .kernels._dispatch import cpp_ops

        ops = cpp_ops()
        if ops is not None and not hasattr(ops, "plan_sweep"):
            ops = None
        if ops is None and impl == "cpp":
            raise RuntimeError("plan_sweep: impl='cpp' asked for but the C++ extension is not "
                               "loaded; run `make install`")
    return _plan_cpp(ops, edits, *facts) if ops is not None else _plan_python(edits, *facts)


def _plan_cpp(ops, variants: list[tuple[Edit, ...]], n_layers, n_units, seq_len, n_prompts,
              bytes_per_row_per_layer, memory_budget) -> Plan:
    """Flatten to CSR tensors, run torch.ops.emofast.plan_sweep, unflatten (encoding: see
    csrc/planner_bindings.cpp)."""
    variant_offsets, rows, unit_offsets, units = [0], [], [0], []
    for edits in variants:
        for e in edits:
            rows.append((e.layer, SITES.index(e.site), MODES.index(e.mode), e.pos_start))
            units.extend(e.units)
            unit_offsets.append(len(units))
        variant_offsets.append(len(rows))
    i64 = dict(dtype=torch.int64)
    order, chunks_t, blocks_t, pos_t, masks_t = ops.plan_sweep(
        torch.tensor(variant_offsets, **i64), torch.tensor(rows, **i64).view(-1, 4),
        torch.tensor(unit_offsets, **i64), torch.tensor(units, **i64), n_units, n_layers,
        seq_len, n_prompts, bytes_per_row_per_layer, memory_budget)
    blocks = blocks_t.tolist()
    chunks = []
    for begin, end, first_layer, pos_start, nbytes, b0, b1 in chunks_t.tolist():
        rows_c = end - begin
        c = Chunk(order[begin:end], first_layer, pos_start, nbytes)
        for layer, kind, mode, words, m_off, r_off in blocks[b0:b1]:
            key = (layer, SITES[kind])
            c.masks[key] = masks_t[m_off:m_off + rows_c * words].view(rows_c, words)  # [V_c, words]
            c.modes[key] = MODES[mode]
            c.pos_starts[key] = pos_t[r_off:r_off + rows_c]  # [V_c]
        chunks.append(c)
    return Plan(order, chunks)


def _plan_python(variants: list[tuple[Edit, ...]], n_layers, n_units, seq_len, n_prompts,
                 bytes_per_row_per_layer, memory_budget) -> Plan:
    """The planner in plain Python: the fallback and the oracle of the C++ op's tests."""
    if not variants:
        raise ValueError("empty variant list: nothing to plan (give at least one variant)")
    _check_facts(n_layers, n_units, seq_len, n_prompts, bytes_per_row_per_layer, memory_budget)
    row_layer_bytes = _mul(n_prompts, bytes_per_row_per_layer, "n_prompts x bytes_per_row_per_layer")
    keys, nbytes, sites = [], [], []  # per variant; sites: (layer, site) -> [mode, pos, units, j]
    for i, edits in enumerate(variants):
        merged = {}
        for j, e in enumerate(edits):
            _check_edit(e, n_layers, n_units, seq_len, f"variant {i}, edit {j}")
            prev = merged.setdefault((e.layer, e.site), [e.mode, e.pos_start, set(), j])
            if (prev[0], prev[1]) != (e.mode, e.pos_start):
                raise ValueError(
                    f"variant {i}, edit {j}: L{e.layer}.{e.site} is edited twice with different "
                    f"mode/pos_start ({prev[0]} from {prev[1]} in edit {prev[3]}, {e.mode} from "
                    f"{e.pos_start} here): one (layer, site) takes one mode and pos_start per variant")
            prev[2].update(e.units)
        first_layer = min((e.layer for e in edits), default=n_layers)
        key = (first_layer, min((e.pos_start for e in edits), default=0),
               sum(1 << MODES.index(m) for m in {e.mode for e in edits}))
        n_run = n_layers - first_layer
        need = _mul(row_layer_bytes, n_run, "memory estimate")
        if need > memory_budget:
            raise ValueError(
                f"variant {i} alone needs {need} bytes (n_prompts {n_prompts} x "
                f"{bytes_per_row_per_layer} bytes per row per layer x {n_run} layers from layer "
                f"{first_layer}) but memory_budget is {memory_budget} bytes: over by "
                f"{need - memory_budget} bytes; raise memory_budget or lower n_prompts")
        keys.append(key)
        nbytes.append(need)
        sites.append(merged)

    order = sorted(range(len(variants)), key=lambda i: (keys[i], i))
    groups = []  # [key, ids, bytes, {(layer, site): mode}]
    for i in order:
        g = groups[-1] if groups else None
        if not (g and g[0] == keys[i] and g[2] + nbytes[i] <= memory_budget
                and all(g[3].get(s, m[0]) == m[0] for s, m in sites[i].items())):
            g = [keys[i], [], 0, {}]
            groups.append(g)
        g[1].append(i)
        g[2] += nbytes[i]
        g[3].update({s: m[0] for s, m in sites[i].items()})

    chunks = []
    for (first_layer, pos_start, _), ids, chunk_bytes, modes in groups:
        c = Chunk(torch.tensor(ids, dtype=torch.int64), first_layer, pos_start, chunk_bytes)
        for layer, site in sorted(modes, key=lambda s: (s[0], SITES.index(s[1]))):
            words = -(-n_units[SITES.index(site)] // 32)
            bits = torch.zeros(len(ids), words * 32, dtype=torch.int64)  # [V_c, units rounded up]
            pos = torch.full((len(ids),), pos_start, dtype=torch.int64)
            for r, i in enumerate(ids):
                if (layer, site) in sites[i]:
                    _, pos_i, units, _ = sites[i][(layer, site)]
                    pos[r] = pos_i
                    bits[r, sorted(units)] = 1
            packed = (bits.view(len(ids), words, 32) << torch.arange(32)).sum(-1)  # [V_c, words]
            c.masks[(layer, site)] = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
            c.modes[(layer, site)] = modes[(layer, site)]
            c.pos_starts[(layer, site)] = pos
        chunks.append(c)
    return Plan(torch.tensor(order, dtype=torch.int64), chunks)


def _mul(a: int, b: int, what: str) -> int:
    if abs(a * b) > _INT64_MAX:
        raise ValueError(f"{what} overflows int64 ({a} x {b})")
    return a * b


def _check_facts(n_layers, n_units, seq_len, n_prompts, bytes_per_row_per_layer, memory_budget):
    if n_layers <= 0:
        raise ValueError(f"n_layers must be > 0, got {n_layers}")
    if n_prompts <= 0:
        raise ValueError(f"n_prompts must be > 0, got {n_prompts}")
    if bytes_per_row_per_layer < 0:
        raise ValueError(f"bytes_per_row_per_layer must be >= 0, got {bytes_per_row_per_layer}")
    if memory_budget <= 0:
        raise ValueError(f"memory_budget must be > 0 bytes, got {memory_budget}")
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0 (0 = not given), got {seq_len}")
    for site, n in zip(SITES, n_units):
        if n < 0:
            raise ValueError(f"n_units for {site} must be >= 0, got {n}")


def _check_edit(e: Edit, n_layers, n_units, seq_len, where: str):
    if not 0 <= e.layer < n_layers:
        raise ValueError(f"{where}: layer {e.layer} out of range: model has {n_layers} layers "
                         f"(0..{n_layers - 1})")
    n = n_units[SITES.index(e.site)]
    if n == 0:
        raise ValueError(f"{where}: site kind {e.site} has no unit count: give n_units for it")
    if e.pos_start < 0:
        raise ValueError(f"{where}: pos_start {e.pos_start} must be >= 0 (0 = all positions)")
    if seq_len > 0 and e.pos_start >= seq_len:
        raise ValueError(f"{where}: pos_start {e.pos_start} out of range: seq_len is {seq_len} "
                         f"(0..{seq_len - 1})")
    if not e.units:
        raise ValueError(f"{where}: edit at L{e.layer}.{e.site} has no units (a variant with no "
                         "edits is the clean run)")
    for u in e.units:
        if not 0 <= u < n:
            raise ValueError(f"{where}: unit {u} out of range for L{e.layer}.{e.site}: {n} units "
                             f"(0..{n - 1})")
