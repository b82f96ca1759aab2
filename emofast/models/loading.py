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
               progress: bool = True) -> Model:
    """Load a causal LM with its tokenizer and architecture adapter.

    name_or_path: a hub id, a local folder, or "smollm2-135m-instruct" (the embedded default).
    quantization: None, "int8", "nf4" or "fp4" (bitsandbytes; works on CPU and CUDA).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    if qconfig is not None:
        kwargs.update(quantization_config=qconfig, device_map=device)
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
    if qconfig is None:
        hf = hf.to(device)
    return Model(hf.eval(), tok, name=str(name_or_path))
