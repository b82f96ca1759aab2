"""The four training methods on data with a known answer (planted sparse features), AuxK reviving
latents killed on purpose, the straight-through pseudo-derivatives against their formulas, and
the training scale folded back into the saved SAE."""
import pytest
import torch

from emofast.sae.methods import METHODS, SiteTrainer, _JumpReLU, _Step, new_sae
from emofast.sae.train import SAETrainConfig

D_IN, ATOMS, K_TRUE = 24, 48, 3


def planted(seed=0, noise=0.01):
    """A random unit dictionary [ATOMS, D_IN] and a sampler of x = codes @ D + noise + offset with
    K_TRUE-sparse positive codes."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(ATOMS, D_IN, generator=g)
    atoms /= atoms.norm(dim=-1, keepdim=True)

    def sample(n):
        idx = torch.rand(n, ATOMS, generator=g).argsort(-1)[:, :K_TRUE]
        codes = torch.zeros(n, ATOMS).scatter_(1, idx, 1 + 2 * torch.rand(n, K_TRUE, generator=g))
        return codes @ atoms + noise * torch.randn(n, D_IN, generator=g) + 0.3
    return atoms, sample


def trained(method, steps=400, **kw):
    atoms, sample = planted()
    kw = {"k": K_TRUE, **kw} if method in ("topk", "batchtopk") else kw
    cfg = SAETrainConfig(method=method, expansion=2, lr=3e-3, warmup_steps=20,
                         dead_tokens=2000, **kw)
    sae, scale = new_sae("L0.resid_post", D_IN, cfg, sample(256), 0)
    tr = SiteTrainer(sae, cfg, steps, scale)
    for _ in range(steps):
        tr.step(sample(256))
    return atoms, sample, tr


def matched(atoms, sae):
    """Fraction of planted atoms that some decoder row matches at cosine >= 0.9."""
    rows = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
    return float(((atoms @ rows.T).max(-1).values >= 0.9).float().mean())


@pytest.mark.parametrize("method", METHODS)
def test_planted_features_are_recovered(method):
    atoms, sample, tr = trained(method)            # the default penalties
    sae = tr.result()
    assert matched(atoms, sae) >= 0.9
    x = sample(1000)
    with torch.no_grad():
        fvu = (sae(x) - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        l0 = (sae.encode(x, sparse=False) if method != "topk" else
              sae.encode(x).values).gt(0).sum(-1).float().mean()
    assert fvu < 0.15
    assert l0 < ATOMS / 2                          # sparse: far fewer than the 96 latents


def test_batchtopk_is_saved_as_jumprelu_with_its_running_threshold():
    _, sample, tr = trained("batchtopk", steps=150)
    sae = tr.result()
    assert sae.architecture == "jumprelu" and tr.sae.architecture == "jumprelu"
    thr = float(tr.running_threshold) / tr.scale
    torch.testing.assert_close(sae.threshold, torch.full((sae.d_sae,), thr))
    with torch.no_grad():
        l0 = sae.encode(sample(2000)).gt(0).sum(-1).float().mean()
    assert K_TRUE / 2 < l0 < 2 * K_TRUE              # the threshold keeps about k per token


@pytest.mark.parametrize("method", ["topk", "standard", "jumprelu"])
def test_result_reads_raw_activations(method):
    """result() folds the training scale: result(x) = the training SAE on x * scale, / scale."""
    _, sample, tr = trained(method, steps=30)
    x = sample(64)
    with torch.no_grad():
        torch.testing.assert_close(tr.result()(x), tr.sae(x * tr.scale) / tr.scale,
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.result().W_dec, tr.sae.W_dec)


def test_auxk_revives_latents_killed_on_purpose():
    def dead_after(auxk_coeff):
        atoms, sample = planted(1)
        cfg = SAETrainConfig(method="topk", k=K_TRUE, expansion=2, lr=3e-3, warmup_steps=1,
                             dead_tokens=256, auxk_coeff=auxk_coeff)
        sae, scale = new_sae("L0.resid_post", D_IN, cfg, sample(256), 0)
        with torch.no_grad():   # half the latents never win the top k (pre small, positive)
            sae.W_enc[:, : sae.d_sae // 2] *= 0.02
            sae.b_enc[: sae.d_sae // 2] = 0.05
        tr = SiteTrainer(sae, cfg, 300, scale)
        for _ in range(300):
            stats = tr.step(sample(256))
        return stats["dead"]
    assert dead_after(0.0) >= 0.45                    # without AuxK they stay dead
    assert dead_after(1 / 32) < 0.1


def test_pseudo_derivatives_equal_their_formulas():
    torch.manual_seed(0)
    bw = 0.5
    z = torch.tensor([[0.1, 0.9, 1.3, 2.0]], requires_grad=True)
    theta = torch.tensor([0.3, 1.0, 1.0, 1.0], requires_grad=True)
    out = _JumpReLU.apply(z, theta, bw)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 1.3, 2.0]]))
    out.sum().backward()
    # inside the window |z - theta| < bw / 2: entries 0 (0.2), 1 (0.1), 2 (0.3 > 0.25: outside)
    torch.testing.assert_close(z.grad, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    torch.testing.assert_close(theta.grad, torch.tensor([-0.3 / bw, -1.0 / bw, 0.0, 0.0]))
    theta.grad = None
    step = _Step.apply(z, theta, bw)
    torch.testing.assert_close(step, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    step.sum().backward()
    torch.testing.assert_close(theta.grad, torch.tensor([-1 / bw, -1 / bw, 0.0, 0.0]))


def test_bad_method_settings():
    with pytest.raises(ValueError, match="unknown method 'gated'"):
        SAETrainConfig(method="gated")
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        SAETrainConfig(bandwidth=0.0)
    with pytest.raises(ValueError, match="l1_coeff must be >= 0"):
        SAETrainConfig(l1_coeff=-1.0)


def test_bf16_compute_trains_like_fp32():
    """compute_dtype="bfloat16" (what "auto" picks on CUDA) on the CPU kernels: fp32 weights, bf16
    encoder/decoder, the same features found."""
    atoms, _, tr = trained("topk", steps=200, compute_dtype="bfloat16")
    assert tr.sae.W_enc.dtype == torch.float32
    assert matched(atoms, tr.result()) >= 0.9


def test_jumprelu_ignores_bf16_compute():
    """jumprelu trains in fp32 whatever compute_dtype says: its straight-through window
    (bandwidth 1e-3) is finer than bf16's grid (0.004 near 1), which would bias theta's
    pseudo-derivative; the bf16 request gives the fp32 step exactly."""
    _, sample = planted()
    x = sample(512)
    grads = []
    for dtype in ("float32", "bfloat16"):
        cfg = SAETrainConfig(method="jumprelu", expansion=2, compute_dtype=dtype)
        sae, scale = new_sae("L0.resid_post", D_IN, cfg, x, 0)
        with torch.no_grad():
            sae.threshold.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(3))
        tr = SiteTrainer(sae, cfg, 10, scale)
        tr.step(x)
        grads.append(sae.threshold.grad.clone())
    assert grads[0].abs().sum() > 0 and torch.equal(grads[0], grads[1])
