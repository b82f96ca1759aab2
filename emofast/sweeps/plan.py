"""Sweep planner: pack variants into chunks that each run as one batched forward.

    from emofast.sweeps.plan import Add, Edit, Variant, plan_sweep
    variants = [Variant([Edit(layer, "mlp_act", [n])]) for layer, n in neurons]
    variants += [Variant([Add(12, entry=0)])]     # add entry 0 of the sweep's addition table
    plan = plan_sweep(variants, n_layers=30, n_units={"mlp_act": 1536, "attn_z": 9, "resid_post": 1},
                      n_prompts=8, bytes_per_row_per_layer=64 * 576 * 4, memory_budget=8 << 30)
    for chunk in plan.chunks:   # chunk.variant_ids [V_c]: the batch rows, n_prompts each
        block = chunk.blocks[(12, "mlp_act")]     # block.mask [V_c, ceil(1536 / 32)] int32

Two kinds of edit:
- `Edit`: an ablation (mode zero / mean / patch) of units at mlp_act (neurons) or attn_z (heads);
- `Add`: an addition naming one entry of one of the sweep's tables: at site resid_post a residual
  addition (a steering vector, its strength and scale; `emofast.sweeps.steer` builds the table),
  at site "sae" an SAE feature edit of the layer (`emofast.sweeps.features`), which adds the
  change of its SAE's reconstruction to the SAE's site.

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
- per chunk and per (layer, site) it touches, a `Block`: the mode, the pos_start of each row
  (rows that do not edit there get the chunk's pos_start) and either, for ablations, a packed
  mask [V_c, ceil(n_units / 32)] int32 (unit u of row i is bit u % 32 of word [i, u // 32], least
  significant bit first) or, for additions, the entry of each row [V_c] int64 (-1: none).
- duplicate units in an edit are deduplicated; two edits of one variant at the same (layer,
  site) merge when mode and pos_start agree, else ValueError; two additions at one layer of one
  variant are an error.
The C++ op runs when `emofast._C` is loaded (its site and mode names are checked against SITES
and MODES then); `_plan_python` is the fallback and the test oracle.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Iterable, Literal, NamedTuple, Sequence

import torch

from ..kernels import cpp
from ..validation import integer

SITES: tuple[str, ...] = ("mlp_act", "attn_z", "resid_post", "sae")  # index = C++ SiteKind
MODES: tuple[str, ...] = ("zero", "mean", "patch", "add")      # index = C++ Mode
ABLATION_SITES = ("mlp_act", "attn_z")
ABLATION_MODES = ("zero", "mean", "patch")
TABLE_SITES = ("resid_post", "sae")   # their edits (mode add) name one entry of a table
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Edit:
    """An ablation of one variant at one (layer, site)."""
    layer: int                 # 0..n_layers-1
    site: Literal["mlp_act", "attn_z"]  # mlp_act: unit = neuron; attn_z: unit = head
    units: Sequence[int]       # unit indices, 0..n_units[site]-1; duplicates are ignored
    mode: Literal["zero", "mean", "patch"] = "zero"
    pos_start: int = 0         # edits real tokens >= pos_start (0 = all positions)

    def __post_init__(self):
        if self.site not in ABLATION_SITES:
            raise ValueError(f"unknown site {self.site!r}: an Edit ablates mlp_act (neurons) or "
                             "attn_z (heads); steer the residual stream with Steer(layer, "
                             "vector, alpha)")
        if self.mode not in ABLATION_MODES:
            raise ValueError(f"unknown mode {self.mode!r}: one of {', '.join(ABLATION_MODES)}")
        object.__setattr__(self, "layer", integer(self.layer, "Edit layer"))
        object.__setattr__(self, "pos_start", integer(self.pos_start, "Edit pos_start"))
        if isinstance(self.units, (str, bytes)) or not isinstance(self.units, Iterable):
            raise TypeError(f"Edit units must be a list of integers, got {self.units!r}")
        object.__setattr__(self, "units", tuple(integer(u, "Edit unit") for u in self.units))


@dataclass(frozen=True)
class Add:
    """Entry `entry` of one of the sweep's tables applied at `layer`, real tokens >= pos_start:
    site "resid_post", a residual addition (the planner's form of a `Steer`); site "sae", an SAE
    feature edit (the planner's form of a `FeatureEdit`)."""
    layer: int
    entry: int
    pos_start: int = 0
    site: str = "resid_post"
    mode = "add"

    def __post_init__(self):
        for name in ("layer", "entry", "pos_start"):
            object.__setattr__(self, name, integer(getattr(self, name), f"Add {name}"))
        if self.site not in TABLE_SITES:
            raise ValueError(f"Add site {self.site!r}: one of {', '.join(TABLE_SITES)}")

    @property
    def units(self) -> tuple[int]:
        return (self.entry,)


@dataclass(frozen=True)
class Variant:
    """One row group of the sweep: its edits (none = the clean run) and a label."""
    edits: Sequence[Edit | Add] = ()
    name: str = ""             # for results; the planner ignores it

    def __post_init__(self):
        object.__setattr__(self, "edits", tuple(self.edits))
        for e in self.edits:
            if not isinstance(e, (Edit, Add)):
                raise TypeError(f"variant {self.name!r}: edits must be Edit or Add objects, "
                                f"got {e!r}")


@dataclass
class Block:
    """What a chunk's rows do at one (layer, site)."""
    mode: str                              # one of MODES
    pos_start: torch.Tensor                # [V_c] int64, real-token start per row
    mask: torch.Tensor | None = None       # ablations: [V_c, words] int32 packed units
    entries: torch.Tensor | None = None    # additions: [V_c] int64 table entry, -1 = none

    def take(self, rows: slice) -> "Block":
        return Block(self.mode, self.pos_start[rows],
                     None if self.mask is None else self.mask[rows],
                     None if self.entries is None else self.entries[rows])


@dataclass
class Chunk:
    """Variants that run as one batch: V_c * n_prompts rows from layer first_layer on."""
    variant_ids: torch.Tensor                  # [V_c] int64, row i of every block = variant_ids[i]
    first_layer: int                           # layers < first_layer: clean, shared prefix
    pos_start: int                             # positions < pos_start: clean (KV cache)
    bytes: int                                 # V_c * n_prompts * bytes_per_row_per_layer * layers run
    blocks: dict[tuple[int, str], Block] = field(default_factory=dict)  # (layer, site) -> Block

    def take(self, rows: slice) -> "Chunk":
        """The variants `rows` of this chunk as a chunk of their own (OOM halving)."""
        return Chunk(self.variant_ids[rows], self.first_layer, self.pos_start, self.bytes,
                     {k: b.take(rows) for k, b in self.blocks.items()})


@dataclass
class Plan:
    """A planned sweep: every variant once, in `order`, cut into consecutive `chunks`."""
    order: torch.Tensor                        # [V] int64 variant ids in execution order
    chunks: list[Chunk]


class _Facts(NamedTuple):
    n_layers: int
    n_units: list[int]        # per SITES entry, 0 = not available
    seq_len: int              # 0 = not given
    n_prompts: int
    bytes_per_row_per_layer: int
    memory_budget: int


def plan_sweep(variants: Sequence[Variant | Sequence[Edit | Add]], *, n_layers: int,
               n_units: dict[str, int], n_prompts: int, bytes_per_row_per_layer: int,
               memory_budget: int, seq_len: int | None = None,
               impl: Literal["cpp", "python"] | None = None) -> Plan:
    """Plan a sweep (see the module docstring). `n_units` maps each site used to its unit count
    (d_mlp, H, the size of the addition table); `seq_len` (T), when given, bounds pos_start.
    impl=None runs the C++ op when the extension is loaded, else the Python planner; naming one
    raises if unavailable."""
    edits = [tuple(v.edits) if isinstance(v, Variant) else tuple(Variant(v).edits) for v in variants]
    unknown = set(n_units) - set(SITES)
    if unknown:
        raise ValueError(f"n_units has unknown site(s) {sorted(unknown)}: sites are {', '.join(SITES)}")
    facts = _Facts(n_layers, [operator.index(n_units.get(s, 0)) for s in SITES],
                   0 if seq_len is None else seq_len, n_prompts, bytes_per_row_per_layer,
                   memory_budget)
    if impl not in (None, "cpp", "python"):
        raise ValueError(f"impl must be 'cpp', 'python' or None, got {impl!r}")
    use_cpp = impl != "python" and cpp.has("plan_sweep")
    if impl == "cpp" and not use_cpp:
        raise RuntimeError("plan_sweep: impl='cpp' asked for but the C++ extension is not "
                           "loaded; run `make install`")
    return _plan_cpp(edits, facts) if use_cpp else _plan_python(edits, facts)


def _check_names(ops) -> None:
    """Run when emofast._C loads: its planner's enum names must equal SITES and MODES."""
    if not hasattr(ops, "plan_sweep"):
        return
    names = cpp.planner_names()
    if names is None or (tuple(names[0]), tuple(names[1])) != (SITES, MODES):
        raise RuntimeError(f"emofast._C's planner has sites and modes {names}, but "
                           f"emofast.sweeps.plan has {SITES} and {MODES}: the extension is "
                           "stale, rebuild it with `make install`")


cpp.on_load(_check_names)


def _plan_cpp(variants: list[tuple[Edit | Add, ...]], f: _Facts) -> Plan:
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
    order, chunks_t, blocks_t, pos_t, entries_t, masks_t = cpp.plan_sweep(
        torch.tensor(variant_offsets, **i64), torch.tensor(rows, **i64).view(-1, 4),
        torch.tensor(unit_offsets, **i64), torch.tensor(units, **i64), f.n_units, f.n_layers,
        f.seq_len, f.n_prompts, f.bytes_per_row_per_layer, f.memory_budget)
    blocks = blocks_t.tolist()
    chunks = []
    for begin, end, first_layer, pos_start, nbytes, b0, b1 in chunks_t.tolist():
        n = end - begin
        c = Chunk(order[begin:end], first_layer, pos_start, nbytes)
        for layer, kind, mode, words, m_off, r_off in blocks[b0:b1]:
            block = Block(MODES[mode], pos_t[r_off:r_off + n])
            if MODES[mode] == "add":
                block.entries = entries_t[r_off:r_off + n]
            else:
                block.mask = masks_t[m_off:m_off + n * words].view(n, words)  # [V_c, words]
            c.blocks[(layer, SITES[kind])] = block
        chunks.append(c)
    return Plan(order, chunks)


class _SiteEdit(NamedTuple):
    """A variant's merged edit at one (layer, site)."""
    mode: str
    pos_start: int
    units: set[int]
    first_edit: int           # index of the variant's first edit there (error messages)


@dataclass
class _OpenChunk:
    key: tuple[int, int, int]   # (first_layer, pos_start, mode bits)
    ids: list[int] = field(default_factory=list)
    bytes: int = 0
    modes: dict[tuple[int, str], str] = field(default_factory=dict)


def _plan_python(variants: list[tuple[Edit | Add, ...]], f: _Facts) -> Plan:
    """The planner in plain Python: the fallback and the oracle of the C++ op's tests."""
    if not variants:
        raise ValueError("empty variant list: nothing to plan (give at least one variant)")
    _check_facts(f)
    row_layer_bytes = _mul(f.n_prompts, f.bytes_per_row_per_layer,
                           "n_prompts x bytes_per_row_per_layer")
    keys, nbytes, merged = [], [], []
    for i, edits in enumerate(variants):
        sites: dict[tuple[int, str], _SiteEdit] = {}
        for j, e in enumerate(edits):
            _check_edit(e, f, f"variant {i}, edit {j}")
            prev = sites.setdefault((e.layer, e.site), _SiteEdit(e.mode, e.pos_start, set(), j))
            if prev.first_edit != j and e.mode == "add":
                raise ValueError(f"variant {i}, edit {j}: two additions at L{e.layer}.{e.site} "
                                 f"(edit {prev.first_edit} and here): add their vectors into "
                                 "one entry")
            if (prev.mode, prev.pos_start) != (e.mode, e.pos_start):
                raise ValueError(
                    f"variant {i}, edit {j}: L{e.layer}.{e.site} is edited twice with different "
                    f"mode/pos_start ({prev.mode} from {prev.pos_start} in edit "
                    f"{prev.first_edit}, {e.mode} from {e.pos_start} here): one (layer, site) "
                    "takes one mode and pos_start per variant")
            prev.units.update(e.units)
        first_layer = min((e.layer for e in edits), default=f.n_layers)
        keys.append((first_layer, min((e.pos_start for e in edits), default=0),
                     sum(1 << MODES.index(m) for m in {e.mode for e in edits})))
        n_run = f.n_layers - first_layer
        need = _mul(row_layer_bytes, n_run, "memory estimate")
        if need > f.memory_budget:
            raise ValueError(
                f"variant {i} alone needs {need} bytes (n_prompts {f.n_prompts} x "
                f"{f.bytes_per_row_per_layer} bytes per row per layer x {n_run} layers from "
                f"layer {first_layer}) but memory_budget is {f.memory_budget} bytes: over by "
                f"{need - f.memory_budget} bytes; raise memory_budget or lower n_prompts")
        nbytes.append(need)
        merged.append(sites)

    order = sorted(range(len(variants)), key=lambda i: (keys[i], i))
    groups: list[_OpenChunk] = []
    for i in order:
        g = groups[-1] if groups else None
        if not (g and g.key == keys[i] and g.bytes + nbytes[i] <= f.memory_budget
                and all(g.modes.get(s, m.mode) == m.mode for s, m in merged[i].items())):
            g = _OpenChunk(keys[i])
            groups.append(g)
        g.ids.append(i)
        g.bytes += nbytes[i]
        g.modes.update({s: m.mode for s, m in merged[i].items()})
    chunks = [_build_chunk(g, merged, f) for g in groups]
    return Plan(torch.tensor(order, dtype=torch.int64), chunks)


def _build_chunk(g: _OpenChunk, merged: list[dict], f: _Facts) -> Chunk:
    first_layer, pos_start, _ = g.key
    c = Chunk(torch.tensor(g.ids, dtype=torch.int64), first_layer, pos_start, g.bytes)
    for layer, site in sorted(g.modes, key=lambda s: (s[0], SITES.index(s[1]))):
        pos = torch.full((len(g.ids),), pos_start, dtype=torch.int64)
        rows = [(r, merged[i][(layer, site)]) for r, i in enumerate(g.ids)
                if (layer, site) in merged[i]]
        for r, m in rows:
            pos[r] = m.pos_start
        block = Block(g.modes[(layer, site)], pos)
        if block.mode == "add":
            block.entries = torch.full((len(g.ids),), -1, dtype=torch.int64)
            for r, m in rows:
                block.entries[r] = next(iter(m.units))
        else:
            words = -(-f.n_units[SITES.index(site)] // 32)
            bits = torch.zeros(len(g.ids), words * 32, dtype=torch.int64)  # [V_c, units rounded up]
            for r, m in rows:
                bits[r, sorted(m.units)] = 1
            packed = (bits.view(len(g.ids), words, 32) << torch.arange(32)).sum(-1)  # [V_c, words]
            block.mask = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
        c.blocks[(layer, site)] = block
    return c


def _mul(a: int, b: int, what: str) -> int:
    if abs(a * b) > _INT64_MAX:
        raise ValueError(f"{what} overflows int64 ({a} x {b})")
    return a * b


def _check_facts(f: _Facts) -> None:
    if f.n_layers <= 0:
        raise ValueError(f"n_layers must be > 0, got {f.n_layers}")
    if f.n_prompts <= 0:
        raise ValueError(f"n_prompts must be > 0, got {f.n_prompts}")
    if f.bytes_per_row_per_layer < 0:
        raise ValueError(f"bytes_per_row_per_layer must be >= 0, got {f.bytes_per_row_per_layer}")
    if f.memory_budget <= 0:
        raise ValueError(f"memory_budget must be > 0 bytes, got {f.memory_budget}")
    if f.seq_len < 0:
        raise ValueError(f"seq_len must be >= 0 (0 = not given), got {f.seq_len}")
    for site, n in zip(SITES, f.n_units):
        if n < 0:
            raise ValueError(f"n_units for {site} must be >= 0, got {n}")


def _check_edit(e: Edit | Add, f: _Facts, where: str) -> None:
    if not 0 <= e.layer < f.n_layers:
        raise ValueError(f"{where}: layer {e.layer} out of range: model has {f.n_layers} layers "
                         f"(0..{f.n_layers - 1})")
    n = f.n_units[SITES.index(e.site)]
    if n == 0:
        raise ValueError(f"{where}: site kind {e.site} has no unit count: give n_units for it")
    if (e.mode == "add") != (e.site in TABLE_SITES):
        raise ValueError(f"{where}: mode {e.mode} at site {e.site}: additions (mode add) go to "
                         "resid_post or sae, ablations (zero, mean, patch) to mlp_act or attn_z")
    if e.pos_start < 0:
        raise ValueError(f"{where}: pos_start {e.pos_start} must be >= 0 (0 = all positions)")
    if f.seq_len > 0 and e.pos_start >= f.seq_len:
        raise ValueError(f"{where}: pos_start {e.pos_start} out of range: seq_len is {f.seq_len} "
                         f"(0..{f.seq_len - 1})")
    if not e.units:
        raise ValueError(f"{where}: edit at L{e.layer}.{e.site} has no units (a variant with no "
                         "edits is the clean run)")
    for u in e.units:
        if not 0 <= u < n:
            raise ValueError(f"{where}: unit {u} out of range for L{e.layer}.{e.site}: {n} units "
                             f"(0..{n - 1})")
