"""Interventions as sweep variants: a multi-layer Steering and a circuit Modulation (one row, or
one row per prompt), alone and mixed with Edits and Steers, through both engines, against
independent plain-HF oracles (unpadded forwards, hand-written hooks, metrics by hand)."""
import pytest
import torch

from conftest import make_tiny
from emofast.analysis import EmotionDirections, UnitDifferences
from emofast.data import EMOTIONS6
from emofast.interventions import Circuit, Modulation, Steering
from emofast.sweeps import KL, Edit, LogitDiff, Steer, sweep
from oracles import PROMPTS, by_hand, loud, scale_tol, steer_oracle


def _dirs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.n_layers, 2, model.d_model, generator=g)
    return EmotionDirections(v / v.norm(dim=-1, keepdim=True), ["joy", "anger"],
                             list(range(model.n_layers)))


def _diffs(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    L, E = model.n_layers, len(EMOTIONS6)
    return UnitDifferences(torch.randn(L, E, model.d_mlp, generator=g),
                           torch.randn(L, E, model.n_heads, model.d_head, generator=g),
                           list(EMOTIONS6))


def modulation_oracle(model, prompt, diffs, circuit, emotion, alpha, metric) -> float:
    """One unpadded forward; pre-hooks on the MLP down projections and the attention output
    projections add alpha x the emotion's difference at the circuit's units by hand."""
    x = model.tokenizer(prompt, return_tensors="pt")["input_ids"]
    e, d = diffs.index(emotion), model.d_head
    handles = []
    for layer, units in circuit.neurons.items():
        def add(module, args, layer=layer, units=units):
            z = args[0].clone()
            z[..., units] += alpha * diffs.mlp[layer, e, units]
            return (z,) + tuple(args[1:])
        handles.append(model.adapter.module(layer, "mlp_down").register_forward_pre_hook(add))
    for layer, heads in circuit.heads.items():
        def add_heads(module, args, layer=layer, heads=heads):
            z = args[0].clone()
            for h in heads.tolist():
                z[..., h * d:(h + 1) * d] += alpha * diffs.attn[layer, e, h]
            return (z,) + tuple(args[1:])
        handles.append(model.adapter.module(layer, "attn_out_proj")
                       .register_forward_pre_hook(add_heads))
    with torch.no_grad():
        clean = model.hf(input_ids=x).logits[0, -1].double()
        try:
            logits = model.hf(input_ids=x).logits[0, -1].double()
        finally:
            for h in handles:
                h.remove()
    return by_hand(metric, logits, clean)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_interventions_equal_the_oracles_in_both_engines(family, capsys):
    model = loud(make_tiny(family))
    dirs, diffs = _dirs(model), _diffs(model)
    circuit = Circuit({0: [1, 4], 2: [7]}, {1: [0, 3]})
    layers = [0, 2]
    steering = Steering.single(dirs, "anger", layers, 1.5, model.n_layers, scale="rms")
    modulation = Modulation.single(diffs, {e: circuit for e in EMOTIONS6}, "fear", 0.8)
    variants = [[], [steering], [modulation], [modulation, Edit(1, "attn_z", [2])],
                [steering, Steer(1, dirs.get("joy", 1), 2.0)]]
    metric = LogitDiff([65, 66], [67])
    steers = [Steer(layer, dirs.get("anger", layer), 1.5, "rms") for layer in layers]
    for engine in ("loop", "batched"):
        res = sweep(model, PROMPTS, variants, metric, engine=engine, batch_size=2, progress=False)
        for j, p in enumerate(PROMPTS):
            want = [steer_oracle(model, p, [], "all", metric),
                    steer_oracle(model, p, steers, "all", metric),
                    modulation_oracle(model, p, diffs, circuit, "fear", 0.8, metric)]
            got = res.per_prompt[:3, j].double()
            torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64),
                                       atol=scale_tol(torch.tensor(want)), rtol=0)
        if engine == "loop":
            loop = res
    torch.testing.assert_close(res.per_prompt, loop.per_prompt,
                               atol=scale_tol(loop.per_prompt), rtol=0)
    said = capsys.readouterr()
    assert (said.out + said.err).count("4 variant(s) hold Interventions the planner cannot pack") == 1
    assert (res.per_prompt[1:] - res.per_prompt[0]).abs().amax(1).min() > 1e-3


def test_one_row_per_prompt(tiny_llama):
    """A Steering with one row per prompt gives prompt i its own row: each column equals the
    sweep of that row alone."""
    model, dirs = loud(tiny_llama), _dirs(tiny_llama)
    rows = [("joy", [1], 2.0), (None, [], 0.0), ("anger", [0, 2], -1.0), ("joy", [2], 0.5),
            ("anger", [1], 3.0)]
    per_prompt = Steering.rows(dirs, rows, model.n_layers)
    res = sweep(model, PROMPTS, [[per_prompt]], KL(), batch_size=2, progress=False)
    for j, row in enumerate(rows):
        alone = sweep(model, PROMPTS[j:j + 1], [[Steering.rows(dirs, [row], model.n_layers)]],
                      KL(), progress=False)
        assert res.per_prompt[0, j] == pytest.approx(alone.per_prompt[0, 0].item(), abs=1e-5)
    assert res.per_prompt[0, 1].abs() < 1e-6


def test_results_json_names_the_intervention(tiny_llama, tmp_path):
    import json
    steering = Steering.single(_dirs(tiny_llama), "joy", [1], 1.0, tiny_llama.n_layers)
    sweep(tiny_llama, PROMPTS, [[steering, Edit(0, "mlp_act", [3])]], KL(), out=tmp_path,
          progress=False)
    [entry] = json.loads((tmp_path / "results.json").read_text())["variants"]
    assert entry["edits"][0] == {"intervention": "Steering", "scope": "all", "rows": 1,
                                 "sha1": steering.describe()["sha1"]}
    other = Steering.single(_dirs(tiny_llama, seed=5), "joy", [1], 1.0, tiny_llama.n_layers)
    assert other.describe()["sha1"] != steering.describe()["sha1"]  # other vectors, other id
    with pytest.raises(ValueError, match="different sweep"):   # so a resume cannot mix them
        sweep(tiny_llama, PROMPTS, [[other, Edit(0, "mlp_act", [3])]], KL(), out=tmp_path,
              progress=False)
    assert entry["edits"][1] == {"layer": 0, "site": "mlp_act", "unit": 3, "mode": "zero",
                                 "pos_start": 0}


def test_errors(tiny_llama):
    dirs = _dirs(tiny_llama)
    three = Steering.rows(dirs, [("joy", [0], 1.0)] * 3, tiny_llama.n_layers)
    with pytest.raises(ValueError, match="Steering has 3 rows; a sweep takes one row"):
        sweep(tiny_llama, PROMPTS, [[three]], KL(), progress=False)
    later = Steering.single(dirs, "joy", [0], 1.0, tiny_llama.n_layers, scope="generated")
    with pytest.raises(ValueError, match="scope 'generated' never acts"):
        sweep(tiny_llama, PROMPTS, [[later]], KL(), progress=False)
    with pytest.raises(TypeError, match="variant 0 is a single Steering"):
        sweep(tiny_llama, PROMPTS, [three], KL(), progress=False)
