"""All 270 SmolLM2 heads x 4 short prompts, KL metric: engine="batched" vs engine="loop", same run.

    .venv/bin/python bench/sweep_heads_cpu.py

Prints wall time per engine, their ratio and the largest difference between them, for edits at
all positions and at the last position only.
"""
import time

import emofast as ef
from emofast.planner import Edit
from emofast.sweep import KL, sweep

PROMPTS = ["I can't believe they cancelled my flight again.", "Thank you for the lovely flowers!",
           "The report is due on Friday.", "I'm so sorry I forgot your birthday."]


def main() -> None:
    model = ef.load_model(progress=False)
    variants = [[Edit(layer, "attn_z", [h])] for layer in range(model.n_layers)
                for h in range(model.n_heads)]
    for positions in ("all", "last"):
        took, values = {}, {}
        for engine in ("batched", "loop"):
            start = time.perf_counter()
            values[engine] = sweep(model, PROMPTS, variants, KL(), engine=engine,
                                   positions=positions, progress=False).values
            took[engine] = time.perf_counter() - start
        diff = (values["batched"] - values["loop"]).abs().max().item()
        print(f"positions={positions}: loop {took['loop']:.1f} s, batched {took['batched']:.1f} s, "
              f"ratio {took['loop'] / took['batched']:.2f}x, max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
