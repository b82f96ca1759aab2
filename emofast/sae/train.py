"""`train_saes`: SAEs for many sites of one model, fed by one forward pass per batch.

    result = train_saes(model, load_corpus(), SAETrainConfig(sites=("L6.resid_post",
                        "L24.resid_post")), out="runs/saes")
    result.saes["L6.resid_post"]          # an SAE; out/L6.resid_post/ holds it (SAELens format)

Methods: topk (default), batchtopk, standard (ReLU + decoder-norm-weighted L1) and jumprelu; see
emofast.sae.methods for each one's loss and parametrisation.

With `out`, a checkpoint (every SAE's parameters, Adam's state, the dead-latent and firing
counters, where the data stream is) is stored after every `checkpoint_every` fills in a
verified store (emofast.report.parts): a run started again with the same arguments resumes
from it and ends with the same SAEs as an uninterrupted run. Each site's SAE is written to
out/<site>/ (SAELens format, sparsity.safetensors with the last epoch's log10 firing
frequencies) and out/train.json holds the config and the per-fill history. With several epochs
the activations are cached as shards (`activations`, emofast.sae.buffer): the model runs once.
Inside a torch.distributed program (`torchrun -m emofast sae train`) the ranks share the forwards
and train data- or site-parallel (`SAETrainConfig.parallel`, emofast.sae.distributed); rank 0
holds the folder, so a run resumes with any world size.
"""
from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from ..models.identity import model_identity
from ..report.files import write_json
from ..report.lock import folder_lock
from ..report.parts import PartStore
from ..sites import parse_site
from ..validation import Interrupted, finite, positive_int
from ..processes import barrier, world
from .buffer import activation_fills, token_windows
from .distributed import PARALLEL, DataParallel, broadcast, gather_all, site_owners
from .formats import save_sae
from .methods import METHODS, SiteTrainer, new_sae
from .model import SAE, site_width


@dataclass(frozen=True)
class SAETrainConfig:
    sites: tuple[str, ...] = field(default=(), metadata={
        "help": "sites to train, e.g. L6.resid_post,L24.resid_post (default: 6 resid_post "
                "layers from early to the last)"})
    expansion: int = field(default=8, metadata={"help": "d_sae = expansion x d_in"})
    method: Literal["topk", "batchtopk", "standard", "jumprelu"] = field(default="topk", metadata={
        "help": "topk | batchtopk (saved as jumprelu) | standard (ReLU + L1) | jumprelu"})
    k: int = field(default=32, metadata={"help": "active latents per token (topk, batchtopk)"})
    epochs: int = field(default=10, metadata={"help": "passes over the corpus (the model runs "
                                               "once: later epochs read cached activations)"})
    batch_tokens: int = field(default=1024, metadata={"help": "tokens per optimiser step"})
    buffer_tokens: int = field(default=16384, metadata={"help": "tokens shuffled together"})
    batch_docs: int = field(default=16, metadata={"help": "token windows per forward"})
    max_length: int = field(default=256, metadata={"help": "tokens per window"})
    lr: float | None = field(default=None, metadata={"help": "default 1.6e-3 / sqrt(d_sae / 2^14)"})
    warmup_steps: int = field(default=20, metadata={"help": "linear warmup of the lr"})
    auxk_coeff: float = field(default=1 / 32, metadata={"help": "weight of the AuxK loss"})
    l1_coeff: float = field(default=0.1, metadata={
        "help": "standard: weight of the decoder-norm-weighted L1 penalty (tuned on planted "
                "features only)"})
    l0_coeff: float = field(default=0.01, metadata={
        "help": "jumprelu: weight of the L0 penalty (tuned on planted features only)"})
    bandwidth: float = field(default=1e-3, metadata={
        "help": "jumprelu: width of the straight-through kernel (scaled units)"})
    init_threshold: float = field(default=1e-3, metadata={
        "help": "jumprelu: initial thresholds (scaled units)"})
    compute_dtype: Literal["auto", "float32", "bfloat16"] = field(default="auto", metadata={
        "help": "encoder/decoder compute dtype: auto = bf16 on CUDA, fp32 on CPU"})
    dead_tokens: int = field(default=50_000, metadata={"help": "tokens without firing = dead"})
    checkpoint_every: int = field(default=8, metadata={"help": "fills between checkpoints"})
    seed: int = field(default=0, metadata={"help": "seeds the window order, the shuffles and "
                                                   "the initialisation"})
    parallel: Literal["data", "sites"] = field(default="data", metadata={
        "help": "under torchrun: data (every SAE trains on each rank's rows of every batch) or "
                "sites (each rank trains its share of the sites); ignored in one process"})

    def __post_init__(self):
        for name in ("expansion", "k", "epochs", "batch_tokens", "buffer_tokens", "batch_docs",
                     "max_length", "warmup_steps", "dead_tokens", "checkpoint_every"):
            positive_int(getattr(self, name), name)
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}: one of {', '.join(METHODS)}")
        if self.parallel not in PARALLEL:
            raise ValueError(f"unknown parallel {self.parallel!r}: one of {', '.join(PARALLEL)}")
        for name in ("auxk_coeff", "l1_coeff", "l0_coeff"):
            if finite(getattr(self, name), name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("bandwidth", "init_threshold"):
            if finite(getattr(self, name), name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr is not None and finite(self.lr, "lr") <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.buffer_tokens < self.batch_tokens:
            raise ValueError("buffer_tokens must be >= batch_tokens")
        for s in self.sites:
            parse_site(s)


class SAETrainResult(NamedTuple):
    saes: dict[str, SAE]
    history: list[dict]      # per fill: epoch, tokens, and per site fvu, l0, dead fraction
    tokens: int              # tokens trained on (per site)
    log_sparsity: dict[str, torch.Tensor]   # per site [d_sae]: log10 firing frequency, last epoch
    resumed_from: int        # tokens already trained on in the checkpoint resumed from (0: none)


def train_saes(model, corpus: Sequence[str], config: SAETrainConfig | None = None, *,
               out: str | Path | None = None, activations: str | Path | None = "auto",
               progress: bool = True, repair: bool = False) -> SAETrainResult:
    """See the module docstring. `activations`: a folder caching every fill's activations as
    safetensors shards (the model then runs once, not once per epoch; a later run with the same
    model, corpus and sites reuses them); "auto": out/activations when out is given and
    epochs > 1; None: no cache."""
    cfg = config or SAETrainConfig()
    if not isinstance(cfg, SAETrainConfig):
        raise TypeError(f"config must be an SAETrainConfig, got {cfg!r}")
    if not cfg.sites:
        cfg = dataclasses.replace(cfg, sites=default_sites(model.n_layers))
    for s in cfg.sites:
        parse_site(s, model.n_layers)
    windows = token_windows(model, corpus, cfg.max_length, seed=cfg.seed)
    if activations == "auto":
        activations = Path(out) / "activations" if out is not None and cfg.epochs > 1 else None
    ranks = world()
    owns_files = ranks is None or ranks[0] == 0   # under torchrun: rank 0 reads and writes
    with ExitStack() as stack:
        identity = model_identity(model) if owns_files and (
            out is not None or activations is not None) else None
        cache = store = None
        if activations is not None and owns_files:
            stack.enter_context(folder_lock(activations))
            cache = PartStore(activations, "sae-activations", {
                "model": identity, "windows_sha256": _sha(windows), "sites": list(cfg.sites),
                "batch_docs": cfg.batch_docs, "buffer_tokens": cfg.buffer_tokens},
                repair=repair, keep=False)
        if out is not None and owns_files:
            stack.enter_context(folder_lock(out))
            fp = {"model": identity, "config": _fingerprinted(cfg),
                  "windows_sha256": _sha(windows)}
            store = PartStore(out, "sae-train", fp, repair=repair)
        result = _train(model, windows, cfg, store, cache, progress and owns_files, ranks)
        if out is not None and owns_files:
            for site, sae in result.saes.items():
                save_sae(sae, Path(out) / site, model_name=model.name,
                         log_sparsity=result.log_sparsity[site])
            write_json(Path(out) / "train.json", {"config": dataclasses.asdict(cfg),
                                                 "tokens": result.tokens,
                                                 "resumed_from": result.resumed_from,
                                                 "history": result.history})
    if ranks is not None:
        barrier("rank 0 writing the SAEs")
    return result


def _fingerprinted(cfg: SAETrainConfig) -> dict:
    """The config as the checkpoint's fingerprint holds it: `parallel` only changes the order
    of sums, so a run resumes with any split and world size."""
    return {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(cfg))).items()
            if k != "parallel"}


def default_sites(n_layers: int, n: int = 6) -> tuple[str, ...]:
    """n resid_post layers evenly spread from about a sixth of the depth to the last
    (SmolLM2's 30: 5, 10, 15, 19, 24, 29)."""
    first, last = n_layers // 6, n_layers - 1
    layers = sorted({round(first + i * (last - first) / (n - 1)) for i in range(n)})
    return tuple(f"L{layer}.resid_post" for layer in layers)


def _sha(windows) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(windows).encode()).hexdigest()


class _Split(NamedTuple):
    """Who trains what: this rank's sites, the data-parallel sums (None: the whole batch)."""
    rank: int
    mine: list[str]
    dp: DataParallel | None
    spread: bool                 # sites mode: other ranks own the other sites


def _split(model, cfg: SAETrainConfig, ranks) -> _Split:
    if ranks is None:
        return _Split(0, list(cfg.sites), None, False)
    rank, world_size = ranks
    if cfg.parallel == "data":
        return _Split(rank, list(cfg.sites), DataParallel(rank, world_size), False)
    widths = {s: site_width(model, parse_site(s).kind) for s in cfg.sites}
    owner = site_owners(list(cfg.sites), widths, world_size)
    return _Split(rank, [s for s in cfg.sites if owner[s] == rank], None, True)


def _train(model, windows, cfg: SAETrainConfig, store, cache, progress: bool, ranks=None
           ) -> SAETrainResult:
    n_tokens_epoch = sum(len(w) - 1 for w in windows)            # an upper bound (specials)
    total_steps = max(1, cfg.epochs * n_tokens_epoch // cfg.batch_tokens)
    split = _split(model, cfg, ranks)
    trainers: dict[str, SiteTrainer] = {}
    history: list[dict] = []
    start, tokens, resumed = (0, 0), 0, 0
    last = _latest(store)
    checkpoints = store is not None
    if ranks is not None:
        last, checkpoints = broadcast((last, checkpoints), split.rank)
    if last is not None:
        meta = json.loads(bytes(last["meta"].tolist()).decode())
        start, tokens, history, resumed = tuple(meta["next"]), meta["tokens"], meta["history"], \
            meta["tokens"]
        for site in split.mine:
            i = cfg.sites.index(site)
            trainers[site] = _site_trainer(model, site, cfg, None, i, total_steps, split.dp)
            trainers[site].restore(f"s{i}", last)
    bar = tqdm(total=cfg.epochs * n_tokens_epoch, initial=tokens, unit="tok", desc="train SAEs",
               disable=not progress)
    fills, batches = 0, bool(trainers)
    try:
        for fill in activation_fills(model, windows, cfg.sites, batch_docs=cfg.batch_docs,
                                     buffer_tokens=cfg.buffer_tokens,
                                     batch_tokens=cfg.batch_tokens, seed=cfg.seed,
                                     epochs=cfg.epochs, start=start, cache=cache, ranks=ranks):
            if not batches and fill.batches:
                batches = True
                trainers = {site: _site_trainer(model, site, cfg, fill.batches[0][site],
                                                cfg.sites.index(site), total_steps, split.dp)
                            for site in split.mine}
            if fill.first_window == 0:
                for tr in trainers.values():
                    tr.new_epoch()
            if not fill.batches:          # a fill smaller than one batch: nothing to report
                continue
            tokens = _train_fill(fill, trainers, split, cfg, history, tokens, bar)
            fills += 1
            if checkpoints and fills % cfg.checkpoint_every == 0:
                _checkpoint(store, _states(trainers, cfg, split), (fill.epoch, fill.next_window),
                            tokens, history)
    except KeyboardInterrupt:
        if store is None:
            raise
        raise Interrupted(f"SAE training interrupted after {tokens} tokens; the last checkpoint "
                          f"is in {store.dir}: run the same command again to resume") from None
    finally:
        bar.close()
    if not batches:
        raise ValueError("the corpus gave no batch: lower batch_tokens / buffer_tokens")
    done = {s: (t.result(), t.log_sparsity()) for s, t in trainers.items()}
    if split.spread:
        done = {k: v for part in gather_all(done) for k, v in part.items()}
    return SAETrainResult({s: done[s][0] for s in cfg.sites}, history, tokens,
                          {s: done[s][1] for s in cfg.sites}, resumed)


def _train_fill(fill, trainers, split: _Split, cfg, history: list, tokens: int, bar) -> int:
    """Every batch of the fill through this rank's trainers; the fill's mean statistics per
    site (gathered from the other ranks' sites) appended to `history`. Returns the tokens."""
    stats = {s: [] for s in trainers}
    for batch in fill.batches:
        for site, tr in trainers.items():
            stats[site].append(tr.step(batch[site]))
        tokens += cfg.batch_tokens
        bar.update(cfg.batch_tokens)
    means = {s: {k: sum(d[k] for d in v) / max(1, len(v)) for k in ("fvu", "l0", "dead")}
             for s, v in stats.items()}
    if split.spread:
        means = {k: v for part in gather_all(means) for k, v in part.items()}
    row = {"epoch": fill.epoch, "tokens": tokens, **{s: means[s] for s in cfg.sites}}
    history.append(row)
    bar.set_postfix({"fvu": " ".join(f"{row[s]['fvu']:.3f}" for s in cfg.sites),
                     "l0": " ".join(f"{row[s]['l0']:.0f}" for s in cfg.sites),
                     "dead": " ".join(f"{row[s]['dead']:.1%}" for s in cfg.sites)})
    return tokens


def _states(trainers, cfg, split: _Split) -> dict:
    """Every site's trainer state under its checkpoint prefix (gathered in sites mode)."""
    t = {}
    for site, tr in trainers.items():
        t.update(tr.state(f"s{cfg.sites.index(site)}"))
    if split.spread:
        t = {k: v for part in gather_all(t) for k, v in part.items()}
    return t


def _site_trainer(model, site, cfg, first, i: int, total_steps: int, dp=None) -> SiteTrainer:
    d_in = site_width(model, parse_site(site).kind)
    sae, scale = new_sae(site, d_in, cfg, torch.ones(1, d_in) if first is None else first,
                         cfg.seed + i)
    return SiteTrainer(sae.to(model.device), cfg, total_steps, scale, ranks=dp)


def _latest(store) -> dict | None:
    if store is None or not store.tensors:
        return None
    return store.tensors[max(store.tensors)]


def _checkpoint(store, states: dict, next_pos, tokens, history) -> None:
    """Rank 0 (or the one process) stores every site's state; other ranks hold no store."""
    if store is None:
        return
    t = dict(states)
    meta = json.dumps({"next": list(next_pos), "tokens": tokens, "history": history}).encode()
    t["meta"] = torch.tensor(list(meta), dtype=torch.uint8)
    name = f"checkpoint-{tokens:012d}"
    store.put(name, t)
    for old in [n for n in store.tensors if n != name]:
        store.drop(old)
