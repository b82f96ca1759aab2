"""TopK SAE training steps per second: emofast's trainer against the same math in plain torch.

    .venv/bin/python bench/sae_train_step.py            # CPU, SmolLM2 shapes; writes
                                                        # bench/results/sae_train_step-cpu.json
    python bench/sae_train_step.py --device cuda        # d_in 3072 (Llama-3.2-3B), d_sae 65536,
                                                        # k 64, bf16 (bench/gpu_check.py runs it)

One step = encode, top-k, decode, the FVU loss, backward, the decoder-row projection, Adam and
the renormalisation: the same math three ways, on the same random activations, in one run:
  emofast        `emofast.sae.methods.SiteTrainer` (fused kernels forward and backward; on CPU
                 the W_enc and W_dec gradients touch only the latents used)
  torch-dense    pre-activations, torch.topk, the codes scattered into a dense [N, d_sae] matrix
                 and multiplied by W_dec (SAELens's decode), autograd
  torch-bag      the same with F.embedding_bag as the decoder (sparsify's eager decode)
No latent is dead (AuxK off for all three). bf16 on CUDA: bf16 copies of the fp32 weights for
the encoder and decoder, the loss and Adam in fp32 (the trainer's dtype "auto"). Shapes (N
tokens per step, d_in, d_sae, k): CPU 1024 x 576 x 4608 x 32; CUDA 4096 x 3072 x 65536 x 64;
--small: a seconds-long smoke run. Memory per token (CUDA): peak allocation of a step beyond the
weights and Adam state, / N.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from timing import median_ms  # noqa: E402

SHAPES = {"cpu": (1024, 576, 4608, 32), "cuda": (4096, 3072, 65536, 64),
          "small": (64, 32, 256, 8)}


def _plain_step(decode: str, dtype):
    """A plain-torch TopK step over the parameters p (dict) with an Adam `opt`."""
    def step(p, opt, x):
        W_enc, b_enc, W_dec, b_dec = (p[n].to(dtype) for n in ("W_enc", "b_enc", "W_dec",
                                                                "b_dec"))
        pre = (x.to(dtype) - b_dec) @ W_enc + b_enc
        top = pre.topk(k=p["k"], dim=-1)
        vals = top.values.relu()
        if decode == "dense":
            codes = torch.zeros_like(pre).scatter(1, top.indices, vals)
            x_hat = codes @ W_dec + b_dec
        else:
            x_hat = F.embedding_bag(top.indices, W_dec, per_sample_weights=vals,
                                    mode="sum") + b_dec
        loss = (x - x_hat.float()).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            w = p["W_dec"]
            w.grad -= (w.grad * w).sum(-1, keepdim=True) * w
            opt.step()
            w /= w.norm(dim=-1, keepdim=True)
    return step


def run(device: str = "cpu", small: bool = False) -> dict:
    from emofast.sae.methods import SiteTrainer, compute_dtype, new_sae
    from emofast.sae.train import SAETrainConfig

    dev = torch.device(device)
    N, d_in, d_sae, k = SHAPES["small" if small else dev.type]
    dtype = compute_dtype("auto", dev)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, d_in, generator=g).to(dev)
    cfg = SAETrainConfig(method="topk", k=k, auxk_coeff=0.0, dead_tokens=10 ** 12,
                         warmup_steps=1)
    sae, scale = new_sae("L0.resid_post", d_in, cfg, x.cpu(), 0, d_sae=d_sae)  # not a multiple
    trainer = SiteTrainer(sae.to(dev), cfg, total_steps=10 ** 6, scale=scale)
    steps = {"emofast": lambda: trainer.step(x)}
    for decode in ("dense", "bag"):
        p = {n: t.detach().clone().requires_grad_() for n, t in sae.named_parameters()}
        opt = torch.optim.Adam([p[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec")], lr=1e-4)
        p["k"] = k
        plain = _plain_step(decode, dtype)
        steps[f"torch-{decode}"] = (lambda p=p, opt=opt, plain=plain: plain(p, opt, x))
    rows = []
    for name, fn in steps.items():
        if dev.type == "cuda":
            torch.cuda.synchronize()
            fn()                                             # Adam state allocated
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        ms = median_ms(fn, dev)
        row = {"impl": name, "ms_per_step": ms, "tokens_per_s": N / (ms * 1e-3)}
        if dev.type == "cuda":
            row["bytes_per_token"] = (torch.cuda.max_memory_allocated() - base) / N
        rows.append(row)
    base_ms = {r["impl"]: r["ms_per_step"] for r in rows}
    for r in rows:
        r["ratio_vs_torch_dense"] = base_ms["torch-dense"] / r["ms_per_step"]
        r["ratio_vs_torch_bag"] = base_ms["torch-bag"] / r["ms_per_step"]
    return {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "date": date.today().isoformat(), "dtype": str(dtype).replace("torch.", ""),
            "shape": dict(zip(("tokens_per_step", "d_in", "d_sae", "k"), (N, d_in, sae.d_sae, k))),
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--small", action="store_true", help="tiny shapes (a smoke run)")
    ap.add_argument("--out", default=None, help="JSON (default bench/results/"
                    "sae_train_step-<device>.json; --small: none)")
    args = ap.parse_args()
    doc = run(args.device, args.small)
    for r in doc["rows"]:
        print(f"{r['impl']:12s} {r['ms_per_step']:9.2f} ms/step {r['tokens_per_s']:11.0f} tok/s"
              f"  {r['ratio_vs_torch_dense']:5.2f}x dense  {r['ratio_vs_torch_bag']:5.2f}x bag")
    out = args.out or (None if args.small else
                       ROOT / "bench" / "results" / f"sae_train_step-{torch.device(args.device).type}.json")
    if out:
        Path(out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
