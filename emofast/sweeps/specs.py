"""The short spellings of a sweep's inputs (what `emofast sweep` takes), as library functions.

    prompts = load_prompts("basic4", model, chat=False, limit=8)
    variants = variants_from_spec("neurons:20-29", model)            # one per (layer, neuron)
    variants = variants_from_spec("steer:anger:10-19", model, directions=lambda: dirs,
                                  alphas=[2, 4, 8], scale="rms")
    metric = metric_from_spec("logit_diff", model, tokens_a=" happy", tokens_b=" sad")

`directions` is a zero-argument callable returning EmotionDirections, called only when a steer
variant or a projection metric needs it (the command loads the cached sev6 directions then).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

from ..analysis.directions import EmotionDirections
from ..analysis.probes import LinearProbe
from ..data import (BUILTIN, load_dataset, load_skeletons, read_json, read_jsonl, read_lines,
                    sev_prompts)
from ..models import Model
from ..sites import parse_layers
from ..validation import finite, integer, positive_int, text
from .metrics import KL, LogitDiff, LogProb, Metric, ProbeProb, Projection
from .plan import SITES, Edit
from .steer import Steer, steer_grid

METRICS = ("kl", "logit_diff", "logprob", "projection", "probe")
Directions = Callable[[], EmotionDirections]


def load_prompts(spec: str, model: Model, *, chat: bool = False,
                 limit: int | None = None) -> list[str]:
    """Prompt texts from a built-in dataset (basic4: its sentences; sev6: the uninstructed SEV
    prompts), a .txt file (one per line) or a JSONL file (key "prompt" or "text"); `chat`
    applies the model's chat template."""
    if spec == "sev6":
        prompts = sev_prompts(load_skeletons(spec), emotions=None, instructed=False)
        texts = [model.chat_text(p) if chat else p.user for p in prompts]
    else:
        path = Path(spec)
        if spec in BUILTIN:
            texts = [e.text for e in load_dataset(spec)]
        elif path.suffix == ".txt" and path.is_file():
            texts = [line for line in read_lines(path) if line.strip()]
        elif path.is_file():
            texts = []
            for lineno, obj in read_jsonl(path):
                key = "prompt" if "prompt" in obj else "text"
                if key not in obj:
                    raise ValueError(f"{path}:{lineno}: needs a 'prompt' or 'text' key, has "
                                     f"{sorted(obj)}")
                texts.append(text(obj[key], f"{path}:{lineno}: {key!r}"))
        else:
            raise FileNotFoundError(f"prompts {spec!r}: neither a built-in dataset "
                                    f"({', '.join(BUILTIN)}) nor a file")
        texts = [model.chat_text(t) for t in texts] if chat else texts
    if not texts:
        raise ValueError(f"prompts {spec!r} holds no prompts")
    if limit is None:
        return texts
    limit = positive_int(limit, "limit")
    if limit > len(texts):
        warnings.warn(f"limit {limit}: prompts {spec!r} holds only {len(texts)}; using all",
                      stacklevel=2)
    return texts[:limit]


def variants_from_spec(spec: str, model: Model, mode: str = "zero", *,
                       directions: Directions | None = None, alphas: Sequence[float] = (4.0,),
                       scale: str = "abs") -> list[list]:
    """"heads": one variant per (layer, head); "neurons:LAYERS" (e.g. neurons:20-29): one per
    (layer, neuron); "steer:EMOTIONS:LAYERS" (e.g. steer:anger,happiness:10-19): one Steer per
    (emotion, layer, alpha); FILE.json: [{"edits": [...]}], an edit {"layer", "site", "unit"}
    (units of one (layer, site, mode, pos_start) merged into one edit; optional "mode" and
    "pos_start", default `mode` and 0) or a Steer {"layer", "site": "resid_post", "emotion" (or
    "label", as results.json writes it), "alpha"[, "scale" or "rms", "pos_start"]}. Steers
    take their vectors from `directions()`."""
    if spec == "heads":
        return [[Edit(layer, "attn_z", [h], mode)] for layer in range(model.n_layers)
                for h in range(model.n_heads)]
    if spec.startswith("neurons:"):
        layers = parse_layers(spec.split(":", 1)[1], model.n_layers)
        return [[Edit(layer, "mlp_act", [n], mode)] for layer in layers
                for n in range(model.d_mlp)]
    if spec.startswith("steer:"):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[1]:
            raise ValueError(f"variants {spec!r}: write steer:EMOTIONS:LAYERS, e.g. "
                             "steer:anger,happiness:10-19")
        layers = parse_layers(parts[2], model.n_layers)
        return steer_grid(_need(directions, spec)(), parts[1].split(","), layers, alphas,
                          scale=scale)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"variants {spec!r} is not 'heads', 'neurons:LAYERS', "
                                "'steer:EMOTIONS:LAYERS' or a JSON file")
    items = read_json(path)
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a non-empty JSON list of {{\"edits\": [...]}}")
    return [_variant_from_json(item, f"{path}: variant {i}", mode, directions)
            for i, item in enumerate(items)]


_EDIT_KEYS = {"layer", "site", "unit"}
_STEER_KEYS = {"layer", "site", "emotion", "label", "alpha", "scale", "rms"}
# what results.json adds: an edit's mode and pos_start are used; a steer's unit (its row of
# steer_vectors) is not: the emotion and alpha say what it adds
_RESULT_KEYS = {"mode", "pos_start", "unit"}


def _variant_from_json(item, where: str, mode: str, directions: Directions | None) -> list:
    edits = item.get("edits") if isinstance(item, dict) else None
    if not isinstance(edits, list):
        raise ValueError(f"{where} needs an 'edits' list ([] is the clean run), got {item!r}")
    units: dict[tuple[int, str, str, int], list[int]] = {}
    steers = []
    for j, e in enumerate(edits):
        at = f"{where}, edit {j}"
        if isinstance(e, dict) and e.get("site") == "resid_post":
            _known_keys(e, _STEER_KEYS | _RESULT_KEYS, at)
            steers.append(_steer_from_json(e, at, directions))
            continue
        if not isinstance(e, dict) or not _EDIT_KEYS <= set(e):
            raise ValueError(f"{at}: needs layer, site, unit; got {e!r}")
        _known_keys(e, _EDIT_KEYS | _RESULT_KEYS, at)
        if e["site"] not in SITES[:2]:
            raise ValueError(f"{at}: site {e['site']!r}: one of mlp_act (neurons), attn_z "
                             "(heads), resid_post (a steer)")
        edit_mode = e.get("mode", mode)  # an edit's own mode (as results.json writes it) wins
        if edit_mode not in ("zero", "mean"):
            raise ValueError(f"{at}: mode {edit_mode!r}: zero or mean (patching needs sources, "
                             "which the sweep's Python API takes)")
        key = (integer(e["layer"], f"{at}: layer"), e["site"], edit_mode,
               integer(e.get("pos_start", 0), f"{at}: pos_start", lo=0))
        units.setdefault(key, []).append(integer(e["unit"], f"{at}: unit"))
    return [Edit(layer, site, us, m, p) for (layer, site, m, p), us in units.items()] + steers


def _known_keys(e: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(e) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; an edit has {sorted(known)}")


def _steer_from_json(e: dict, where: str, directions: Directions | None) -> Steer:
    emotion = e.get("emotion", e.get("label"))
    if not {"layer", "alpha"} <= set(e) or emotion is None:
        raise ValueError(f"{where}: a resid_post edit (a Steer) needs layer, emotion, alpha; "
                         f"got {e!r}")
    layer, alpha = integer(e["layer"], f"{where}: layer"), finite(e["alpha"], f"{where}: alpha")
    pos_start = integer(e.get("pos_start", 0), f"{where}: pos_start", lo=0)
    emotion = text(emotion, f"{where}: emotion")
    if not isinstance(e.get("rms", False), bool):
        raise ValueError(f"{where}: rms must be true or false, got {e['rms']!r}")
    scale = e.get("scale", "rms" if e.get("rms", False) else "abs")
    if scale not in ("abs", "rms") or ("rms" in e and (scale == "rms") != e["rms"]):
        raise ValueError(f"{where}: scale must be 'abs' or 'rms' (and agree with rms), got {e!r}")
    dirs = _need(directions, "a Steer")()
    dirs.require_site("resid_post", "steering adds to resid_post")
    return Steer(layer, dirs.get(emotion, layer), alpha, scale, pos_start, label=emotion)


def _need(directions: Directions | None, what: str) -> Directions:
    if directions is None:
        raise ValueError(f"{what} needs emotion directions: pass directions=")
    return directions


def token_ids(spec: str, model: Model, what: str) -> list[int]:
    """Comma-separated items, each a token id or a text that is exactly one token."""
    ids = []
    for item in spec.split(","):
        if item.strip().isdigit():
            ids.append(int(item))
            continue
        toks = model.tokenizer(item, add_special_tokens=False)["input_ids"]
        if len(toks) != 1:
            raise ValueError(f"{what}: {item!r} is {len(toks)} tokens {toks}; give single-token "
                             "texts (mind the leading space) or token ids")
        ids.append(toks[0])
    return ids


def metric_from_spec(name: str, model: Model, *, tokens_a: str | None = None,
                     tokens_b: str | None = None, emotion: str | None = None,
                     layer: int | None = None, directions: Directions | None = None,
                     probe: str | None = None) -> Metric:
    """kl | logit_diff (tokens_a vs tokens_b) | logprob (tokens_a) | projection (on emotion's
    direction at `layer`, default the last) | probe (a saved LinearProbe's P(emotion))."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}: one of {', '.join(METRICS)}")
    if name == "kl":
        return KL()
    if name == "logit_diff":
        if not (tokens_a and tokens_b):
            raise ValueError("metric logit_diff needs tokens_a and tokens_b (--tokens-a/-b)")
        return LogitDiff(token_ids(tokens_a, model, "tokens_a"),
                         token_ids(tokens_b, model, "tokens_b"))
    if name == "logprob":
        if not tokens_a:
            raise ValueError("metric logprob needs tokens_a (--tokens-a, the target tokens)")
        return LogProb(token_ids(tokens_a, model, "tokens_a"))
    if not emotion:
        raise ValueError(f"metric {name} needs an emotion (--emotion)")
    if layer is not None:  # before any direction is computed
        integer(layer, "metric layer", lo=0, hi=model.n_layers - 1)
    if name == "projection":
        layer = model.n_layers - 1 if layer is None else layer
        return Projection(_need(directions, "metric projection")().get(emotion, layer),
                          layer=layer)
    if not probe:
        raise ValueError("metric probe needs a probe (--probe: a probe saved by `emofast "
                         "directions`, e.g. DIR/probe; read at its own layer by default)")
    return ProbeProb(LinearProbe.load(probe), emotion, layer=layer)
