"""Steering on the real embedded SmolLM2-135M-Instruct (slow)."""
import pytest
import torch

from emofast.analysis import EmotionDirections
from emofast.interventions import Steering

pytestmark = pytest.mark.slow


def test_real_steering_step(smollm):
    v = torch.randn(smollm.n_layers, 1, smollm.d_model)
    dirs = EmotionDirections(v / v.norm(dim=-1, keepdim=True), ["x"], list(range(smollm.n_layers)))
    enc = smollm.encode(["I opened the letter and read it."])
    with torch.no_grad():
        clean = smollm.forward(enc["input_ids"], enc["attention_mask"]).logits
        for alpha, changed in ((0.0, False), (2.0, True)):
            st = Steering.single(dirs, "x", [10, 11], alpha, smollm.n_layers, scale="rms")
            with st.take(slice(0, 1), 1).hooks(smollm):
                out = smollm.forward(enc["input_ids"], enc["attention_mask"]).logits
            assert (not torch.equal(out, clean)) == changed
