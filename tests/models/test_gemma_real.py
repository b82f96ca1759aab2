"""The real Gemma-3-270M (`emofast models install gemma3-270m`; skipped when it is not
installed): the batched sweep against a plain HF ablation written here by hand."""
import pytest
import torch

from emofast.models import ALIASES
from emofast.models.embedded import cache_dir
from emofast.sweeps import KL, Edit, sweep

pytestmark = pytest.mark.slow

PROMPTS = ["I opened the letter and read that my best friend had died.",
           "The train to the coast leaves at nine every morning.",
           "Thank you so much for staying late to help me move!"]
# chosen here, away from the suite's random variants: local and global layers, a head set
VARIANTS = [[Edit(0, "attn_z", [0])], [Edit(5, "attn_z", [2])], [Edit(11, "attn_z", [1, 3])],
            [Edit(17, "attn_z", [3])], [Edit(3, "mlp_act", [7, 100, 2047])],
            [Edit(5, "attn_z", [0]), Edit(12, "mlp_act", list(range(0, 2048, 3)))]]


@pytest.fixture(scope="module")
def gemma():
    import emofast

    if not (ALIASES["gemma3-270m"].installed() or (cache_dir() / "gemma3-270m").is_dir()):
        pytest.skip("gemma3-270m is not installed: emofast models install gemma3-270m")
    return emofast.load_model("gemma3-270m", progress=False)


def _plain_hf_last_logprobs(model, variant):
    """Zero heads at o_proj's input and neurons at down_proj's input, every position, with
    hooks on the HF modules (no emofast sites); one prompt per forward, no padding."""
    hf, rows = model.hf, []
    for text in PROMPTS:
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        handles = []
        for e in variant:
            layer = hf.model.layers[e.layer]
            mod = layer.self_attn.o_proj if e.site == "attn_z" else layer.mlp.down_proj
            width = model.d_head if e.site == "attn_z" else 1
            cols = torch.tensor([u * width + i for u in e.units for i in range(width)])

            def zero(module, args, cols=cols):
                x = args[0].clone()
                x[..., cols] = 0
                return (x,)
            handles.append(mod.register_forward_pre_hook(zero))
        try:
            with torch.no_grad():
                rows.append(hf(input_ids=ids).logits[0, -1].float().log_softmax(-1))
        finally:
            for h in handles:
                h.remove()
    return torch.stack(rows)


def test_batched_sweep_equals_plain_hf_ablation(gemma):
    clean = _plain_hf_last_logprobs(gemma, [])
    want = torch.stack([(clean.exp() * (clean - _plain_hf_last_logprobs(gemma, v))).sum(-1)
                        for v in VARIANTS])                                       # KL(clean||v)
    got = sweep(gemma, PROMPTS, VARIANTS, KL(), engine="batched", progress=False).per_prompt
    torch.testing.assert_close(got, want, atol=2e-4 * max(1.0, float(want.abs().max())), rtol=1e-3)
    assert float(want.max()) > 1e-3          # the ablations do something
