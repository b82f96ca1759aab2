"""A resumable store of parts: results saved piece by piece, each one verified when read back.

    DIR/store.json                {"format", "kind", "fingerprint"}: what the parts are results
                                  of; a store opened with another fingerprint refuses
    DIR/manifest.json             {"parts": {name: {"sha256", "bytes", "shapes"}}}
    DIR/parts/<name>.safetensors  one part (its tensors)

Sweeps store their finished chunks here, SAE training its checkpoints. Every file is written to
a temporary name and renamed (a kill leaves whole files only); a part counts only once the
manifest lists it, so a part renamed just before a kill is recomputed, never trusted. On open
every listed part is checked against its sha256 and shapes (`keep=False`: checked, then left on
disk until `get` reads it, checked again, for parts too big to hold all at once: an activation
cache): a missing part is recomputed (said
once); a truncated, garbage or changed one stops with a StoreError naming it, unless
`repair=True`, which drops exactly the bad parts so that they are recomputed. Part names are
chosen by the caller from what the part holds (a sweep: its variant ids and prompts), so a
rerun writes each part under its own name and never over another one. The caller holds
`folder_lock` (emofast.report.lock) while it writes.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load as load_bytes

from .files import save_tensors, write_json

STORE_FORMAT = 2  # 1: the sweep folders before checksums (sweep.json + parts/NNNNN)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class StoreError(ValueError):
    """Stored results that cannot be trusted or do not belong to this run."""


class PartStore:
    """The verified parts under `folder` of a store of `kind` with `fingerprint`."""

    def __init__(self, folder, kind: str, fingerprint: dict, *, repair: bool = False,
                 check: Callable[[str, dict], str | None] | None = None, log=None,
                 keep: bool = True):
        """`check(name, tensors)` returns what is wrong with a part whose checksum is right
        (e.g. variant ids out of range), or None. `log` prints one line (default stderr)."""
        self.dir = Path(folder)
        self.parts_dir = self.dir / "parts"
        self.kind, self._log = kind, log or (lambda s: print(s, file=sys.stderr))
        self.keep = keep
        self._open(fingerprint)
        self.manifest = self._read_manifest(repair)
        self.tensors: dict[str, dict] = {}
        self._verify(repair, check)

    def _open(self, fingerprint: dict) -> None:
        head = {"format": STORE_FORMAT, "kind": self.kind,
                "fingerprint": json.loads(json.dumps(fingerprint))}
        path = self.dir / "store.json"
        if not path.exists():
            if (self.dir / "manifest.json").exists():
                raise StoreError(f"{path} is missing but {self.dir} holds stored parts: the "
                                 "folder is damaged; delete it or give another output folder")
            if (self.dir / "sweep.json").exists() or any(self.dir.glob("parts/*.safetensors")):
                raise StoreError(f"{self.dir} was written by an emofast without verified stores "
                                 "(no checksums): its results cannot be checked; delete it or "
                                 "give another output folder")
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            write_json(path, head)
            return
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise StoreError(f"{path} is not readable JSON: the folder is damaged; delete it or "
                             "give another output folder") from None
        if old.get("format") != STORE_FORMAT or old.get("kind") != self.kind:
            raise StoreError(f"{self.dir} holds a {old.get('kind')} store of format "
                             f"{old.get('format')}, not a {self.kind} store of format "
                             f"{STORE_FORMAT}: give another output folder")
        diff = _differences(old.get("fingerprint", {}), head["fingerprint"])
        if diff:
            raise StoreError(f"{self.dir} holds results of a different {self.kind} ("
                             f"{'; '.join(diff)}): give another output folder or delete it")
        self.parts_dir.mkdir(parents=True, exist_ok=True)

    def _read_manifest(self, repair: bool) -> dict:
        path = self.dir / "manifest.json"
        if not path.exists():
            return {}
        try:
            parts = json.loads(path.read_text(encoding="utf-8"))["parts"]
            if not isinstance(parts, dict):
                raise ValueError
            return parts
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            if not repair:
                raise StoreError(f"{path} is damaged: rerun with --repair (repair=True) to "
                                 "recompute every part") from None
            self._log(f"repair: {path} is damaged; every part is recomputed")
            return {}

    def _verify(self, repair: bool, check) -> None:
        missing, bad = [], []
        for name, entry in self.manifest.items():
            path = self.part_path(name)
            if not path.is_file():
                missing.append(name)
                continue
            problem, tensors = _read_part(path, entry)
            if problem is None and check is not None:
                problem = check(name, tensors)
            if problem is None:
                if self.keep:
                    self.tensors[name] = tensors
            else:
                bad.append((name, problem))
        if missing:
            self._log(f"{self.dir}: {len(missing)} stored part(s) are missing ("
                      f"{_some(missing)}): their results are recomputed")
        if bad and not repair:
            name, problem = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise StoreError(f"{self.part_path(name)} {problem}{more}: rerun with --repair "
                             "(repair=True) to recompute exactly the bad parts")
        if bad:
            self._log(f"repair: recomputing {len(bad)} bad part(s) of {self.dir} "
                      f"({_some([n for n, _ in bad])})")
            for name, _ in bad:
                self.part_path(name).unlink(missing_ok=True)
        if missing or bad:
            for name in missing + [n for n, _ in bad]:
                del self.manifest[name]
            self._write_manifest()

    def get(self, name: str) -> dict[str, torch.Tensor]:
        """A listed part's tensors (read from disk and checked again when not kept)."""
        if name in self.tensors:
            return self.tensors[name]
        if name not in self.manifest:
            raise KeyError(f"{self.dir} has no part {name!r}")
        problem, tensors = _read_part(self.part_path(name), self.manifest[name])
        if problem is not None:
            raise StoreError(f"{self.part_path(name)} {problem} (changed while in use): rerun "
                             "with --repair (repair=True) to recompute it")
        return tensors

    def part_path(self, name: str) -> Path:
        return self.parts_dir / f"{name}.safetensors"

    def put(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        """Store a part (atomically), then list it in the manifest (atomically)."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"part name {name!r}: letters, digits, '_', '.' and '-' only")
        path = save_tensors(self.part_path(name), tensors)
        data = path.read_bytes()
        self.manifest[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                               "shapes": {k: list(v.shape) for k, v in tensors.items()}}
        if self.keep:
            self.tensors[name] = {k: v.detach().cpu() for k, v in tensors.items()}
        self._write_manifest()

    def drop(self, name: str) -> None:
        """Forget a part (the manifest first, then the file): e.g. a checkpoint superseded."""
        self.manifest.pop(name, None)
        self.tensors.pop(name, None)
        self._write_manifest()
        self.part_path(name).unlink(missing_ok=True)

    def _write_manifest(self) -> None:
        write_json(self.dir / "manifest.json", {"parts": self.manifest})


def _read_part(path: Path, entry: dict) -> tuple[str | None, dict | None]:
    """(what is wrong, None) or (None, the part's tensors)."""
    data = path.read_bytes()
    if len(data) != entry.get("bytes"):
        return f"has {len(data)} bytes, the manifest says {entry.get('bytes')} (truncated?)", None
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        return "fails its sha256 checksum (changed since it was written)", None
    try:
        tensors = load_bytes(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        return f"is not a safetensors file ({e})", None
    shapes = {k: list(v.shape) for k, v in tensors.items()}
    if shapes != entry.get("shapes"):
        return f"holds tensors {shapes}, the manifest says {entry.get('shapes')}", None
    return None, tensors


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: stored X, now Y' for every key that differs, nested dicts as dotted keys."""
    def short(v):
        s = json.dumps(v)
        return s if len(s) <= 40 else s[:37] + "..."
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: stored {short(a)}, now {short(b)}")
    return out


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")
