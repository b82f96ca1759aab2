"""`load_model`: any AutoModelForCausalLM hub id or local folder, or the embedded default.

Hub ids are tried from the local HF cache first. A hub that cannot be reached (HF_HUB_OFFLINE
set, or no network) gives one clear error at once instead of a storm of retries.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from ..validation import device as check_device
from .embedded import ALIASES, embedded_path
from .model import Model

DEFAULT_MODEL = "smollm2-135m-instruct"
QUANTIZATIONS = (None, "int8", "nf4", "fp4")
MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """None -> float32 on CPU, bfloat16 on CUDA; names such as "bf16" are accepted."""
    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _quantization_config(quantization: str | None, dtype: torch.dtype):
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}: one of {QUANTIZATIONS}")
    if quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization,
                              bnb_4bit_compute_dtype=dtype)


def load_model(name_or_path: str = DEFAULT_MODEL, *, dtype: str | torch.dtype | None = None,
               device: str | None = None, quantization: str | None = None,
               device_map: str | dict | None = None, progress: bool = True) -> Model:
    """Load a causal LM with its tokenizer and architecture adapter.

    name_or_path: a hub id, a local folder, or "smollm2-135m-instruct" (the embedded default).
    quantization: None, "int8", "nf4" or "fp4" (bitsandbytes; works on CPU and CUDA).
    device_map: instead of `device`, a model larger than one device: "auto", "balanced",
    "balanced_low_0", "sequential" or {module name: device} (accelerate places the modules and
    moves each layer's inputs to its device; `check_device_map`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device_map is not None:
        if device is not None:
            raise ValueError("give device or device_map, not both")
        device_map = check_device_map(device_map)
        device = main_device(device_map)
    device = check_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    source = str(embedded_path(name_or_path, progress=progress)) if name_or_path in ALIASES \
        else str(name_or_path)
    local = Path(source).expanduser().is_dir()
    if not local and Path(source).exists():
        raise ValueError(f"{source} is a file: pass the folder that holds config.json")
    if not local and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise FileNotFoundError(f"no model folder at {source!r} (it looks like a path, not a hub id)")
    source = str(Path(source).expanduser()) if local else source
    if not progress:  # transformers' own "Loading weights" bar
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()
    kwargs = dict(dtype=torch_dtype)
    qconfig = _quantization_config(quantization, torch_dtype)
    if qconfig is not None or device_map is not None:
        kwargs.update(device_map=device_map or device)
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig)
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, **kwargs)
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as cached_error:
        if local:
            raise
        if _offline():
            raise OSError(f"{source!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                          "is set: download it on a connected machine, or pass a local folder "
                          f"(built-in: {', '.join(ALIASES)})") from cached_error
        if not _hub_reachable():
            raise OSError(f"cannot reach the Hugging Face Hub to download {source!r} (no network?)"
                          f"; pass a local folder or use the embedded "
                          f"{DEFAULT_MODEL!r}") from cached_error
        hf = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tok = AutoTokenizer.from_pretrained(source)
    if device_map is not None:
        _check_placed(hf)
    elif qconfig is None:
        hf = hf.to(device)
    return Model(hf.eval(), tok, name=str(name_or_path))


def check_device_map(device_map: str | dict) -> str | dict:
    """A device map accelerate understands, on devices this machine has. Offloading ("disk", or
    "cpu" beside an accelerator, where accelerate keeps the weights off the module) is refused:
    emofast reads weights (unembedding, W_O, W_down) from the modules."""
    if isinstance(device_map, str):
        if device_map not in MAP_STRATEGIES:
            raise ValueError(f"unknown device_map {device_map!r}: one of "
                             f"{', '.join(MAP_STRATEGIES)}, or {{module name: device}}")
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise TypeError(f"device_map must be a strategy name or a non-empty {{module: device}} "
                        f"dict, got {device_map!r}")
    placed = {}
    for module, dev in device_map.items():
        if dev == "disk":
            raise ValueError(f"device_map puts {module!r} on disk: offloaded weights are not "
                             "readable by emofast; use devices only")
        placed[module] = check_device(f"cuda:{dev}" if isinstance(dev, int) else dev,
                                      f"device_map[{module!r}]")
    kinds = {torch.device(d).type for d in placed.values()}
    if "cpu" in kinds and len(kinds) > 1:
        raise ValueError("device_map mixes cpu with an accelerator: accelerate then offloads "
                         "the cpu modules (their weights leave the modules, which emofast "
                         "reads); put every module on an accelerator, or all on cpu")
    return placed


def main_device(device_map: str | dict) -> str:
    """The device whose kind sets the default dtype (bf16 on CUDA): a dict map's first; for a
    strategy, cuda when there is one. (Inputs go to `Model.device`, the first weight's.)"""
    if isinstance(device_map, dict):
        return next(iter(device_map.values()))
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_placed(hf) -> None:
    meta = [n for n, p in hf.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ValueError(f"the device map left {len(meta)} weights off their modules (offloaded: "
                         f"{meta[0]}, ...): the model does not fit the devices given; emofast "
                         "reads weights from the modules and cannot run offloaded ones")
