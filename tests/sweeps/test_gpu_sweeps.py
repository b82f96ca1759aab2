"""Sweeps on the GPU: the batched engine (Triton faces inside the forward) equals the loop
reference and the plain-HF oracle, fp32 and bf16, for the families with each attention layout.
`bench/gpu_check.py` runs these; on CPU only in its smoke mode."""
import pytest
import torch

from conftest import make_tiny
from emofast.sweeps import KL, LogitDiff, Steer
from oracles import PROMPTS, SCOPES, loud, oracle, random_variants, run_both, scale_tol

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_batched_equals_loop_and_oracle_fp32(gpu, family, scope):
    model = loud(make_tiny(family))
    model.hf.to(gpu)
    variants = random_variants(model, 12, seed=3, per_edit_pos=scope == "per_edit")
    g = torch.Generator().manual_seed(4)
    variants += [[Steer(1, torch.randn(model.d_model, generator=g), 1.5, "rms")]]
    for metric in (KL(), LogitDiff([65, 66], [67])):
        loop, batched = run_both(model, variants, metric, scope, batch_size=2)
        tol = scale_tol(loop.per_prompt)
        torch.testing.assert_close(batched.per_prompt, loop.per_prompt, atol=tol, rtol=0)
    ablations = variants[:-1]
    model.hf.to("cpu")                         # the oracle: unpadded CPU forwards, fp32
    want = oracle(model, PROMPTS, ablations, KL(), scope).float()
    model.hf.to(gpu)
    loop, batched = run_both(model, ablations, KL(), scope, batch_size=2)
    torch.testing.assert_close(batched.per_prompt, want, atol=scale_tol(want), rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_equals_loop_bf16(gpu, family):
    """bf16: both engines round at the same places except the kernels' fused arithmetic; they
    agree to bf16 precision of the metric."""
    model = loud(make_tiny(family))
    model.hf.to(gpu, torch.bfloat16)
    variants = random_variants(model, 10, seed=9)
    loop, batched = run_both(model, variants, LogitDiff([65, 66], [67]), "last", batch_size=2)
    tol = 2 ** -6 * max(1.0, loop.per_prompt.abs().max().item())
    torch.testing.assert_close(batched.per_prompt, loop.per_prompt, atol=tol, rtol=0)


@pytest.mark.parametrize("scope", ["all", "last"])
def test_feature_edits_on_cuda_equal_the_cpu_oracle(gpu, scope):
    """SAE feature edits on CUDA (the Triton sae_encode inside the forward): both engines ==
    the plain-HF oracle with the SAEs written out by hand, run on CPU."""
    from sweeps.test_feature_edits import feature_oracle, feature_variants
    model = loud(make_tiny("llama"))
    variants = feature_variants(model, per_edit=False)
    want = feature_oracle(model, PROMPTS, variants, KL(), scope)
    model.hf.to(gpu)
    for v in variants:
        for e in v:
            e.sae.to(gpu)
    for res in run_both(model, variants, KL(), scope, batch_size=2):
        torch.testing.assert_close(res.per_prompt.double().cpu(), want,
                                   atol=scale_tol(want), rtol=0)
