"""models.identity: the weights' hash changes with any weight, dtype or tie, and nothing else."""
import hashlib

import torch

from conftest import make_tiny
from emofast.models.identity import model_identity, weights_sha256


def by_hand(hf) -> str:
    """sha256 as the docstring says, written out: name, dtype, shape, bytes; a tie by name."""
    h, seen = hashlib.sha256(), {}
    for name, t in hf.state_dict(keep_vars=True).items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key in seen:
            h.update(f"same as {seen[key]}|".encode())
        else:
            seen[key] = name
            h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_hash_equals_hand_computation_and_sees_every_change():
    model = make_tiny("llama")
    first = weights_sha256(model.hf)
    assert first == by_hand(model.hf) == weights_sha256(model.hf)
    model.hf.model.layers[1].mlp.up_proj.weight.data[3, 4] += 1e-3   # through .data too
    assert weights_sha256(model.hf) not in (first,)
    other = make_tiny("llama", seed=1)
    assert weights_sha256(other.hf) != weights_sha256(make_tiny("llama").hf)


def test_identity_names_dtype_device_and_quantization():
    model = make_tiny("gpt2")
    ident = model_identity(model)
    assert ident["dtype"] == "float32" and ident["device"] == "cpu"
    assert ident["quantization"] is None and ident["model_type"] == "gpt2"
    model.hf.to(torch.bfloat16)
    assert model_identity(model)["dtype"] == "bfloat16"
