"""TopK SAEs for SmolLM2 at L6 and L15 resid_post (8 x d_model, k 32), one epoch of the default
corpus, then evaluate_sae on emofast's neutral sentences (held out: not in the corpus).

    .venv/bin/python bench/sae_train_cpu.py
"""
import time, json
import emofast as ef
m = ef.load_model(progress=False)
docs = ef.load_corpus()
held = ef.neutral_sentences()
print("held-out", len(held), type(held[0]))
cfg = ef.SAETrainConfig(sites=("L6.resid_post", "L15.resid_post"), expansion=8, k=32, epochs=1)
t = time.perf_counter()
res = ef.train_saes(m, docs, cfg, out="bench/results/sae_train_cpu", progress=False)
train_s = time.perf_counter() - t
out = {"train_s": train_s, "tokens": res.tokens}
for site, sae in res.saes.items():
    ev = ef.evaluate_sae(m, sae, held, progress=False)
    out[site] = {k: v for k, v in ev.to_json().items() if k != "density"}
print(json.dumps(out, indent=1))\nopen("bench/results/sae_train_cpu.json", "w").write(json.dumps(out, indent=1) + "\\n")
