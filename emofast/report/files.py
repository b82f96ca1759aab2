"""Final files, written whole or not at all: JSON, tensors, any file through `atomic_path`.

Every final file emofast writes goes to a temporary name beside it and is renamed into place
(`os.replace`, atomic on POSIX), so a kill or an error never leaves a half-written file.

Metrics are written with `write_json(path, obj)`. Torch tensors, numpy arrays and numpy
scalars become plain numbers / nested lists, tuples become lists; keys keep their insertion
order (sort_keys=False) so a report reads in the order it was built. Anything else raises a
TypeError that names where in `obj` it sits (e.g. `obj["layers"][3]["model"]`); nothing is
ever pickled or silently stringified.

    write_json(out / "report.json", {"best_layer": 12, "acc": torch.tensor([0.5, 0.9])})
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

__all__ = ["atomic_path", "write_json", "to_jsonable", "save_tensors", "load_tensors"]


def _key_path(path: tuple[str | int, ...]) -> str:
    """Render a key path like ('layers', 3, 'model') as obj["layers"][3]["model"]."""
    return "obj" + "".join(f"[{p}]" if isinstance(p, int) else f"[{json.dumps(p)}]" for p in path)


def to_jsonable(obj: Any, path: tuple[str | int, ...] = ()) -> Any:
    """Convert `obj` to plain JSON types (dict, list, str, int, float, bool, None).

    Non-finite floats (NaN, inf) become None, since strict JSON has no spelling for them.
    Raises TypeError naming the key path of the first unsupported value.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):  # numpy scalars: np.float32(0.5), np.int64(3), np.bool_
        return to_jsonable(obj.item(), path)
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist(), path)  # 0-d tensor -> scalar
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            return [to_jsonable(v, path + (i,)) for i, v in enumerate(obj.tolist())]
        return to_jsonable(obj.tolist(), path)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, path + (i,)) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
                k = str(int(k))
            elif not isinstance(k, str):
                raise TypeError(
                    f"cannot write JSON: key {k!r} of type {type(k).__name__} at "
                    f"{_key_path(path)}; use str or int keys"
                )
            out[k] = to_jsonable(v, path + (k,))
        return out
    raise TypeError(
        f"cannot write JSON: {_key_path(path)} is a {type(obj).__module__}."
        f"{type(obj).__qualname__}; convert it to a number, string, list or dict first "
        "(tensors and numpy arrays are converted automatically)"
    )


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as pretty JSON (indent=2, keys in insertion order) to `path`.

    Parent directories are created. Returns the path written. The file is only replaced
    once the whole object converted, so a TypeError leaves no half-written file.
    """
    path = Path(path)
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends
    without an error, removed otherwise. Parent directories are created.

        with atomic_path(out / "plot.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """safetensors' `save_file`, atomically (contiguous CPU copies of `tensors`)."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata=metadata)
    return path


def load_tensors(path: str | Path) -> dict:
    """safetensors' `load_file` with the file named in the error when it is not a whole
    safetensors file (truncated, garbage, missing)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e}): it was truncated "
                         "or overwritten; write it again") from None
