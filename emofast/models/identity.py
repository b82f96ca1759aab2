"""What a model is, for the fingerprints of stored results: everything that changes a value.

    model_identity(model)   {"name", "model_type", sizes, "weights_sha256", "dtype", "device",
                             "quantization", "attn_implementation", "torch", "transformers"}

The weights' hash covers every parameter and buffer (names, dtypes, shapes, bytes), computed
afresh each time (about 0.4 s per 500 MB on a 2-core CPU): a cache keyed on torch's version
counters would miss edits made through `.data`.
"""
from __future__ import annotations

import hashlib

import torch


def weights_sha256(hf: torch.nn.Module) -> str:
    """sha256 of the module's state (parameters and buffers, in state_dict order)."""
    state = hf.state_dict(keep_vars=True)
    h, seen = hashlib.sha256(), {}
    with torch.no_grad():
        for name, t in state.items():
            t = t.detach()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            view = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
            if view in seen:  # a tied weight (embedding = unembedding): its bytes once
                h.update(f"same as {seen[view]}|".encode())
            elif t.numel():
                seen[view] = name
                h.update(t.cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def quantization_of(hf) -> dict | None:
    """The model's quantization scheme: its HF quantization_config (bitsandbytes, GGUF loaded
    as such), or emofast's own mark `emofast_quantization` (simulated schemes), else None."""
    own = getattr(hf, "emofast_quantization", None)
    if own is not None:
        return dict(own)
    q = getattr(hf.config, "quantization_config", None)
    if q is None:
        return None
    return q.to_dict() if hasattr(q, "to_dict") else dict(q)


def model_identity(model) -> dict:
    """The model's part of a fingerprint (see the module docstring)."""
    import transformers

    hf, p = model.hf, next(model.hf.parameters())
    q = quantization_of(hf)
    return {"name": model.name, "model_type": hf.config.model_type, "n_layers": model.n_layers,
            "d_model": model.d_model, "vocab_size": hf.config.vocab_size,
            "weights_sha256": weights_sha256(hf),
            "dtype": str(getattr(hf, "dtype", p.dtype)).replace("torch.", ""),
            "device": p.device.type,
            "quantization": None if q is None else {k: str(v) for k, v in sorted(q.items())},
            "attn_implementation": getattr(hf.config, "_attn_implementation", None),
            "torch": torch.__version__.split("+")[0], "transformers": transformers.__version__}
