"""Circuit assembly and modulation against plain HF forwards with hand-written hooks."""
import json

import pytest
import torch

from conftest import make_tiny
from emofast.analysis import UnitDifferences, unit_differences
from emofast.data import EMOTIONS6, Skeleton, sev_prompts
from emofast.discovery import assemble_circuit, emotion_metrics, sublayer_importance
from emofast.interventions import Circuit, Modulation, generate
from emofast.pipelines import CircuitsConfig, run_circuits
from emofast.sweeps import LogitDiff

TEXTS = ["The parcel arrived on Tuesday morning.", "Please close the window."]


def _diffs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    L, E = model.n_layers, len(EMOTIONS6)
    return UnitDifferences(torch.randn(L, E, model.d_mlp, generator=g),
                           torch.randn(L, E, model.n_heads, model.d_head, generator=g), list(EMOTIONS6))


def _logits(model, texts=TEXTS):
    enc = model.encode(texts)
    with torch.no_grad():
        return model.forward(enc["input_ids"], enc["attention_mask"]).logits


def _input_hook_logits(model, layer, part, fn, texts=TEXTS):
    """Independent oracle: a plain pre-hook on an HF module replacing its input by fn(input)."""
    handle = model.adapter.module(layer, part).register_forward_pre_hook(
        lambda module, args: (fn(args[0]),) + tuple(args[1:]))
    try:
        return _logits(model, texts)
    finally:
        handle.remove()


def _modulated_logits(model, mod, texts=TEXTS):
    with mod.take(slice(0, len(texts)), len(texts)).hooks(model):
        return _logits(model, texts)


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "gpt_neo", "llama"])  # each attn_z layout
def test_single_neuron_and_head_modulation_match_hand_hooks(family):
    tiny, alpha, e = make_tiny(family), 3.0, EMOTIONS6.index("fear")
    diffs = _diffs(tiny)
    got = _modulated_logits(tiny, Modulation.single(diffs, Circuit({1: [5]}), "fear", alpha))

    def add_neuron(x):
        y = x.clone()
        y[..., 5] = y[..., 5] + alpha * diffs.mlp[1, e, 5]
        return y
    assert torch.equal(got, _input_hook_logits(tiny, 1, "mlp_down", add_neuron))

    h, d = 1, tiny.d_head
    got = _modulated_logits(tiny, Modulation.single(diffs, Circuit(heads={2: [h]}), "fear", alpha))

    def add_head(x):
        y = x.clone()
        y[..., h * d:(h + 1) * d] = y[..., h * d:(h + 1) * d] + alpha * diffs.attn[2, e, h]
        return y
    assert torch.equal(got, _input_hook_logits(tiny, 2, "attn_out_proj", add_head))


def test_alpha_zero_is_exact_and_rows_are_independent(tiny_llama):
    m, diffs = tiny_llama, _diffs(tiny_llama)
    circuits = {e: Circuit({0: [1, 2], 2: [7]}, {1: [0, 3]}) for e in EMOTIONS6}
    clean = _logits(m)
    assert torch.equal(_modulated_logits(m, Modulation.single(diffs, circuits, "anger", 0.0)), clean)
    # A row with alpha 0 that still goes through the kernel, beside a modulated row.
    mixed = Modulation(diffs, circuits, torch.tensor([3, 3]), torch.tensor([0.0, 2.0]))
    got = _modulated_logits(m, mixed)
    assert torch.equal(got[0], clean[0]) and not torch.allclose(got[1], clean[1])
    alone = _modulated_logits(m, Modulation.single(diffs, circuits, "fear", 2.0))
    torch.testing.assert_close(got[1], alone[1], atol=1e-5, rtol=1e-5)  # batch row vs broadcast
    plain = generate(m, TEXTS, max_new_tokens=4, progress=False)
    mod = Modulation.rows(diffs, circuits, [("anger", 0.0), (None, 1.0)])
    assert generate(m, TEXTS, intervention=mod, max_new_tokens=4, progress=False) == plain


def test_assemble_respects_budget_and_sublayers():
    g = torch.Generator().manual_seed(1)
    neurons, heads = torch.randn(3, 10, generator=g), torch.randn(3, 4, generator=g)
    c = assemble_circuit(neurons, heads, 5, 3)
    assert c.n_neurons == 5 and c.n_heads == 3
    picked = sorted(layer * 10 + n for layer, u in c.neurons.items() for n in u.tolist())
    assert picked == sorted(neurons.flatten().topk(5).indices.tolist())
    # Only attention of layer 1 and the MLP of layer 2 are eligible; budget 50 > 10 eligible.
    c = assemble_circuit(neurons, heads, 50, 2, sublayers=(torch.tensor([0., 5., 0.]),
                                                           torch.tensor([1., 0., 9.])), n_sublayers=2)
    assert list(c.neurons) == [2] and c.neurons[2].tolist() == list(range(10))
    assert list(c.heads) == [1] and c.heads[1].tolist() == heads[1].topk(2).indices.sort().values.tolist()
    assert assemble_circuit(neurons, heads, 0, 0).n_neurons == 0
    with pytest.raises(ValueError, match="budget_neurons must be an int >= 0"):
        assemble_circuit(neurons, heads, -1, 3)
    with pytest.raises(ValueError, match="same L"):
        assemble_circuit(neurons, heads[:2], 1, 1)
    with pytest.raises(ValueError, match="n_sublayers must be in 1..6"):
        assemble_circuit(neurons, heads, 1, 1, sublayers=(torch.zeros(3), torch.zeros(3)), n_sublayers=7)


def test_circuit_json_round_trip_and_errors(tiny_llama):
    c = Circuit({3: [5, 1, 5]}, {0: torch.tensor([2])})
    assert c.neurons[3].tolist() == [1, 5] and c.neurons[3].dtype == torch.long
    back = Circuit.from_json(json.loads(json.dumps(c.to_json())))
    assert back == c and c.to_json() == {"neurons": {"3": [1, 5]}, "heads": {"0": [2]}}
    with pytest.raises(ValueError, match="integers >= 0"):
        Circuit({0: [-1]})
    diffs = _diffs(tiny_llama)
    with pytest.raises(ValueError, match=r"layer 3 out of range: model has 3 layers \(0..2\)"):
        Modulation.single(diffs, c, "anger", 1.0)
    with pytest.raises(ValueError, match="head 4 at layer 0 out of range"):
        Modulation.single(diffs, Circuit(heads={0: [4]}), "anger", 1.0)
    with pytest.raises(ValueError, match="unknown emotion 'joy'"):
        Modulation.single(diffs, Circuit({0: [1]}), "joy", 1.0)
    with pytest.raises(ValueError, match="no circuit for emotion 'fear'"):
        Modulation.rows(diffs, {"anger": Circuit({0: [1]})}, [("fear", 1.0)])


def test_sublayer_importance_equals_hand_ablation(tiny_llama):
    m, prompts = tiny_llama, ["Hello there, friend.", "A short one"]
    metric = LogitDiff([65, 66], [70])
    imp = sublayer_importance(m, prompts, metric, progress=False)
    assert imp.attn.shape == imp.mlp.shape == (m.n_layers,) and imp.emotions is None

    def value(logits):                                                 # [1, T, V]
        x = logits[0, -1]
        return (x[[65, 66]].mean() - x[70]).item()

    zero = lambda x: torch.zeros_like(x)  # noqa: E731
    for layer, part, got in ((1, "mlp_down", imp.mlp[1]), (2, "attn_out_proj", imp.attn[2])):
        effect = sum(value(_input_hook_logits(m, layer, part, zero, [p])) - value(_logits(m, [p]))
                     for p in prompts) / len(prompts)
        assert abs(got.item() - effect) < 1e-4
    per = sublayer_importance(m, {"anger": prompts, "fear": prompts[:1]},
                              {"anger": metric, "fear": LogitDiff([70], [65])}, progress=False)
    assert per.attn.shape == (2, m.n_layers) and per.emotions == ["anger", "fear"]
    torch.testing.assert_close(per.mlp[0], imp.mlp)
    with pytest.raises(ValueError, match="per-emotion prompts need a metric per emotion"):
        sublayer_importance(m, {"anger": prompts}, metric, progress=False)


def test_unit_differences_match_hand_means(tiny_llama):
    m = tiny_llama
    skeletons = [Skeleton("s0", "t", "A walk.", {"positive": "Sun.", "neutral": "Cloud.",
                                                 "negative": "Rain."})]  # short: fast
    diffs = unit_differences(m, skeletons, progress=False)
    assert diffs.mlp.shape == (m.n_layers, 6, m.d_mlp)
    assert diffs.attn.shape == (m.n_layers, 6, m.n_heads, m.d_head)
    prompts = sev_prompts(skeletons, instructed=False, prefill=True)
    seen = []
    handle = m.adapter.module(1, "mlp_down").register_forward_pre_hook(
        lambda mod, args: seen.append(args[0][0]))
    try:
        for p in prompts:  # one token per byte: the prefill is the last len(bytes) tokens
            _logits(m, [m.chat_text(p)])
            seen[-1] = seen[-1][-len(p.prefill.encode()):].mean(0)
    finally:
        handle.remove()
    acts = torch.stack(seen)                                           # [N, d_mlp]
    for g in {p.group for p in prompts}:
        rows = [i for i, p in enumerate(prompts) if p.group == g]
        acts[rows] -= acts[rows].mean(0).clone()
    for i, e in enumerate(EMOTIONS6):
        rows = [j for j, p in enumerate(prompts) if p.emotion == e]
        torch.testing.assert_close(diffs.mlp[1, i], acts[rows].mean(0) - acts.mean(0),
                                   atol=1e-5, rtol=1e-4)


def test_emotion_metrics_tokens():
    m = make_tiny("llama")
    with pytest.raises(ValueError, match="share first token"):
        emotion_metrics(m)                       # one byte per token: "angry" and "afraid" share "a"
    metrics = emotion_metrics(m, {"anger": ("x",), "fear": ("y", "z")})
    vocab = m.tokenizer.get_vocab()
    assert metrics["fear"].tokens_a.tolist() == sorted([vocab["y"], vocab["z"]])
    assert metrics["fear"].tokens_b.tolist() == [vocab["x"]]
    shared = emotion_metrics(m, {"anger": ("x",), "fear": ("y", "z")}, shared=True)
    assert shared["feeling"].tokens.tolist() == sorted(vocab[c] for c in "xyz")


def test_run_circuits_writes_a_report(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path / "cache"))
    cfg = CircuitsConfig(n_direction_skeletons=2, n_train_skeletons=1, n_val_skeletons=1,
                         n_test_skeletons=1, budget_neurons=4, budget_heads=2, alphas=(2.0,),
                         steering_grid=((0.0, 0.34, 1.0),), max_new_tokens=3, n_ppl_texts=4,
                         feeling_words=tuple((w,) for w in "ABCDEF"))  # one byte token each
    r = run_circuits(make_tiny("llama"), cfg, tmp_path / "out", progress=False)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(saved["control"]["per_emotion"]) == set(EMOTIONS6) == set(saved["circuits"])
    for e in EMOTIONS6:
        row = saved["control"]["per_emotion"][e]
        assert {"modulation", "steering", "prompting", "modulation_distinct2"} <= set(row)
        assert Circuit.from_json(saved["circuits"][e]).n_neurons <= 4
        assert set(saved["control"]["preservation"]["modulation"][e]) == {"ppl_clean", "ppl_edited",
                                                                          "kl_mean"}
    assert saved["importance"]["metrics"] == ["feeling"] and len(saved["importance"]["attn"][0]) == 3
    assert r.elapsed_s > 0 and r.mode == "custom" and saved["config"]["budget_heads"] == 2
    for png in ("sublayer_importance", "sublayer_importance_emotions", "control_accuracy"):
        assert (tmp_path / "out" / f"{png}.png").is_file()
    assert "control_accuracy.png" in (tmp_path / "out" / "index.html").read_text()


def test_sublayer_importance_old_positions_spelling(tiny_llama):
    metric = LogitDiff([65], [66])
    new = sublayer_importance(tiny_llama, TEXTS, metric, scope="from:1", progress=False)
    with pytest.warns(DeprecationWarning, match="use scope='from:1'"):
        old = sublayer_importance(tiny_llama, TEXTS, metric, positions=1, progress=False)
    assert torch.equal(new.attn, old.attn) and torch.equal(new.mlp, old.mlp)
