"""What every pipeline shares (not a pipeline itself): config fields, presets, the report folder.

A config is a dataclass whose defaults are the quick preset, with one `option(default, help)` per
field (the help is the `emofast` flag's help: flags map one-to-one onto fields), `Literal`
choices, a `__post_init__` that raises on invalid combinations and `full()` built with
`dataclasses.replace`.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import time
from pathlib import Path
from typing import Any, Protocol

from ..data import EMOTIONS6
from ..discovery import EMOTION_WORDS
from ..report.lock import folder_lock
from ..validation import finite, finite_all, positive_int


FEELING_WORDS = tuple(EMOTION_WORDS[e] for e in EMOTIONS6)


def feeling_words_option():
    """The field of the feeling-word metric (`emofast.discovery.emotion_metrics`)."""
    return option(FEELING_WORDS, "the metric's feeling words per emotion, in the order "
                  "anger;sadness;happiness;fear;surprise;disgust, e.g. angry,mad;sad;happy;"
                  "scared;surprised;disgusted (each word's first token must be its own)")


def words_by_emotion(config) -> dict[str, tuple[str, ...]]:
    """{emotion: words} of a config's feeling_words, or ValueError unless each emotion has some."""
    words = config.feeling_words
    if len(words) != len(EMOTIONS6) or not all(words):
        raise ValueError(f"feeling_words needs words for each of {', '.join(EMOTIONS6)}, got "
                         f"{words}")
    return dict(zip(EMOTIONS6, words))


def option(default: Any, help: str):
    """A config field with its documentation (tuples and other immutables as defaults)."""
    return dataclasses.field(default=default, metadata={"help": help})


def preset_name(config) -> str:
    """"quick" or "full" when `config` equals that preset, else "custom" (for the report)."""
    if config == type(config)():
        return "quick"
    return "full" if config == type(config).full() else "custom"


def check_numbers(config, *positive_ints: str) -> None:
    """Every float field (and tuple of floats) finite, each named field an int >= 1
    (`emofast.validation`), so a bad config fails before any model work."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float):
            finite(value, f.name)
        elif isinstance(value, tuple) and value and all(isinstance(x, float) for x in value):
            finite_all(value, f.name)
    for name in positive_ints:
        positive_int(getattr(config, name), name)


def report_folder(out: str | Path) -> tuple[float, Path]:
    """(start time, the folder) for a pipeline that writes `out`, created if need be."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return time.perf_counter(), out


def writes_report(run):
    """Decorate a run_* function: its `out` folder is locked for the call (one writer per
    folder, `emofast.report.lock`)."""
    signature = inspect.signature(run)

    @functools.wraps(run)
    def locked(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with folder_lock(bound.arguments["out"]):
            return run(*args, **kwargs)
    return locked


class Report(Protocol):
    """A pipeline's typed result, as another pipeline's report may embed it (by its JSON)."""

    def to_json(self) -> dict: ...


def checked(config, config_cls, where: str):
    """`config` (None: the quick preset), or a TypeError that names the call's new shape: the
    report folder used to be the second argument of the run_* functions."""
    if config is None:
        return config_cls()
    if not isinstance(config, config_cls):
        raise TypeError(f"{where}(model, config, out): config must be a {config_cls.__name__} "
                        f"(or None for the quick preset), got {config!r}; the report folder is "
                        "the third argument now")
    return config
