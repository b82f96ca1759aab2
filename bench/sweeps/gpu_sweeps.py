"""CUDA: the paper's head-ablation workload on a random model with Llama-3.2-3B's shape.

    python bench/sweeps/gpu_sweeps.py [--prompts 16] [--tokens 80] [--out bench/results/gpu_sweeps.json]
    python bench/sweeps/gpu_sweeps.py --smoke     # a 2-layer model on CPU: checks the script

Model: LlamaForCausalLM, randomly initialised, bf16: 28 layers, 24 heads (8 KV heads), d_model
3072, d_mlp 8192, vocab 128256. Workload: all 672 heads zero-ablated one at a time, KL at the
last token, prompts of --tokens random tokens. For positions "all" and "last": engine="loop"
(the baseline) and engine="batched" in the same process, variants/s, the ratio, and the FLOP
rate of the work the batched engine executes (layers >= each variant's layer, positions >= its
first edited position, the last position's unembedding) against a bf16 GEMM ceiling measured
here (8192^3 matmul, bench/timing.py). Targets (issue 4): all >= 2.5x, last >= 20x, >= 50% of
the ceiling. `bench/gpu_check.py` runs `run()`.
"""
import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1])]
from emofast.models import Model  # noqa: E402
from emofast.sweeps import KL, Edit, sweep  # noqa: E402
from timing import ceilings  # noqa: E402

SHAPE = dict(num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
             hidden_size=3072, intermediate_size=8192, vocab_size=128256, head_dim=128,
             max_position_embeddings=2048, tie_word_embeddings=True)


SMOKE = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
             intermediate_size=128, vocab_size=1000, head_dim=16)


def layer_flops_per_token(cfg, context: int) -> float:
    d, h = cfg.hidden_size, cfg.head_dim
    proj = d * h * (2 * cfg.num_attention_heads + 2 * cfg.num_key_value_heads)   # q, o, k, v
    return 2 * (proj + 3 * d * cfg.intermediate_size) + 4 * context * cfg.num_attention_heads * h


def executed_flops(cfg, variants, P: int, T: int, last: bool) -> float:
    """FLOPs the batched engine runs: per variant, layers from its layer on, T (all) or 1
    (last) positions per prompt, plus the last position's unembedding."""
    total = 0.0
    for (e,) in variants:
        positions = 1 if last else T
        total += P * positions * (cfg.num_hidden_layers - e.layer) * layer_flops_per_token(cfg, T)
        total += P * 2 * cfg.hidden_size * cfg.vocab_size
    return total


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    _sync()
    t = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - t


def run(device: str = "cuda", small: bool = False, n_prompts: int = 16, tokens: int = 80,
        ceiling_tflops: float | None = None) -> dict:
    """{"model", "n_prompts", "tokens", "n_variants", "rows"}: per scope (all, last) the loop
    and batched times on the same model and prompts, their ratio and largest difference, and
    the batched engine's FLOP rate against a bf16 GEMM ceiling measured here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**({**SHAPE, **SMOKE} if small else SHAPE))
    dtype = torch.float32 if small else torch.bfloat16
    with torch.device(device):                   # initialise on the device: seconds, not minutes
        hf = LlamaForCausalLM(cfg)
    hf = hf.to(dtype).eval()
    model = Model(hf, _digit_tokenizer(), "random-llama-3.2-3b-shape")
    # prompts of exactly `tokens` tokens: space-separated digits, one token each
    g = torch.Generator().manual_seed(1)
    prompts = [" ".join(str(d) for d in torch.randint(0, 10, (tokens,), generator=g).tolist())
               for _ in range(n_prompts)]
    variants = [[Edit(layer, "attn_z", [h])] for layer in range(cfg.num_hidden_layers)
                for h in range(cfg.num_attention_heads)]
    ceiling = float("nan") if small else (ceiling_tflops or ceilings(device)["matmul_TFLOP_s"])
    rows = []
    for scope in ("all", "last"):
        kw = dict(scope=scope, batch_size=n_prompts, progress=False)
        sweep(model, prompts, variants[:4], KL(), engine="batched", **kw)        # warm up
        loop, t_loop = timed(lambda: sweep(model, prompts, variants, KL(), engine="loop", **kw))
        fast, t_fast = timed(lambda: sweep(model, prompts, variants, KL(), engine="batched", **kw))
        flops = executed_flops(cfg, variants, n_prompts, tokens, scope == "last")
        rows.append({
            "positions": scope, "loop_s": t_loop, "batched_s": t_fast,
            "ratio": t_loop / t_fast, "variants_per_s": len(variants) / t_fast,
            "batched_tflops": flops / t_fast / 1e12, "gemm_ceiling_tflops": ceiling,
            "fraction_of_ceiling": flops / t_fast / 1e12 / ceiling,
            "max_abs_diff": (fast.per_prompt - loop.per_prompt).abs().max().item()})
    return {"model": "random Llama-3.2-3B shape, " + str(dtype).replace("torch.", ""),
            "n_prompts": n_prompts, "tokens": tokens, "n_variants": len(variants), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=80)
    ap.add_argument("--out", default="bench/results/gpu_sweeps.json")
    ap.add_argument("--smoke", action="store_true", help="tiny model on CPU, nothing written")
    args = ap.parse_args()
    if args.smoke:
        result = run("cpu", small=True, n_prompts=3, tokens=6)
    else:
        result = run("cuda", n_prompts=args.prompts, tokens=args.tokens)
    for row in result["rows"]:
        print(json.dumps(row), flush=True)
    if args.smoke:
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({
        "date": date.today().isoformat(), "device": torch.cuda.get_device_name(),
        "torch": torch.__version__, **result}, indent=1))


def _digit_tokenizer():
    """A word-level tokenizer with one token per digit (no download needed)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, **{str(d): d + 1 for d in range(10)}}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", eos_token="<pad>")


if __name__ == "__main__":
    main()
