"""load_model(device_map=...): a model whose layers accelerate places (and whose inputs its hooks
move, AlignDevicesHook on every decoder layer as dispatch_model attaches them) gives the same
caches, steering, SAE feature edits and sweeps (loop, batched, chain) as the plain model; bad maps are refused.

On a CPU-only machine every part of the map is the CPU, so what is checked is the accelerate
path (its hooks around every layer, the engine's skipped layers and caches inside it), not a
transfer between devices; the `gpu` test splits the layers over the GPUs there are."""
import pytest
import torch
from accelerate.hooks import AlignDevicesHook, add_hook_to_module, remove_hook_from_submodules

from conftest import make_tiny
from emofast.models import load_model
from emofast.sweeps import KL, Edit, FeatureEdit, Steer, sweep
from oracles import loud, random_sae

PROMPTS = ["the quick brown fox jumps", "the quick brown cat", "a lazy dog", "xyzzy!"]


def _folder(tmp_path, family="llama"):
    m = loud(make_tiny(family))
    m.hf.save_pretrained(tmp_path)
    m.tokenizer.save_pretrained(tmp_path)
    return tmp_path


def _split_map(model, devices) -> dict:
    """{module: device}: the decoder layers in len(devices) consecutive parts."""
    L, prefix = model.n_layers, "model"
    out = {f"{prefix}.embed_tokens": devices[0], f"{prefix}.rotary_emb": devices[0]}
    out.update({f"{prefix}.layers.{i}": devices[i * len(devices) // L] for i in range(L)})
    out.update({f"{prefix}.norm": devices[-1], "lm_head": devices[-1]})
    return out


def _hook_layers(model, device_map: dict) -> None:
    """Accelerate's hooks as dispatch_model attaches them to placed (not offloaded) modules."""
    for name, dev in device_map.items():
        add_hook_to_module(model.hf.get_submodule(name),
                           AlignDevicesHook(execution_device=torch.device(dev)))
    add_hook_to_module(model.hf, AlignDevicesHook(io_same_device=True))


def _everything(model) -> dict:
    L, d = model.n_layers, model.d_model
    g = torch.Generator().manual_seed(0)
    v = torch.randn(d, generator=g)
    sae = random_sae(model, "L1.resid_post", "topk")
    variants = [[], [Edit(0, "attn_z", [1])], [Edit(L - 1, "mlp_act", [2, 5], "mean")],
                [Steer(1, v, 2.0)], [Edit(1, "mlp_act", [2]), Edit(L - 1, "attn_z", [0])],
                [FeatureEdit(sae, [0, 3, 5])], [FeatureEdit(sae, [1], "scale", factor=3.0)]]
    out = {e: sweep(model, PROMPTS, variants, KL(), engine=e, progress=False).per_prompt
           for e in ("loop", "batched", "chain")}
    out["last"] = sweep(model, PROMPTS, variants, KL(), scope="last", progress=False).per_prompt
    out.update(model.cache(PROMPTS, [f"L{L - 1}.resid_post", "L0.mlp_act"], pool="mean",
                           progress=False))
    with torch.no_grad(), model.hooks([("L1.resid_post", lambda act, site: act + 3 * v.to(act))]):
        out["steered"] = model.forward(*_enc(model)).logits[:, -1]
    return out


def _enc(model):
    enc = model.encode(PROMPTS, padding_side="left")
    return enc["input_ids"].to(model.device), enc["attention_mask"].to(model.device)


@pytest.mark.parametrize("parts", [2, 3])
def test_split_map_equals_one_device(tmp_path, parts):
    folder = _folder(tmp_path)
    plain = load_model(str(folder), progress=False)
    placed = load_model(str(folder), device_map=_split_map(plain, ["cpu"] * parts),
                        progress=False)
    _hook_layers(placed, _split_map(plain, ["cpu"] * parts))
    assert hasattr(placed.adapter.blocks[0], "_hf_hook")
    want, got = _everything(plain), _everything(placed)
    for key, w in want.items():
        torch.testing.assert_close(got[key], w, atol=1e-5, rtol=1e-5, msg=key)
    remove_hook_from_submodules(placed.hf)


def test_auto_on_this_machine(tmp_path):
    folder = _folder(tmp_path)
    m = load_model(str(folder), device_map="auto", progress=False)
    assert all(p.device.type != "meta" for p in m.hf.parameters())
    torch.testing.assert_close(_everything(m)["batched"],
                               _everything(load_model(str(folder), progress=False))["batched"])


def test_bad_maps(tmp_path):
    folder = str(_folder(tmp_path))
    with pytest.raises(ValueError, match="device or device_map, not both"):
        load_model(folder, device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="unknown device_map 'everywhere'"):
        load_model(folder, device_map="everywhere")
    with pytest.raises(ValueError, match="on disk"):
        load_model(folder, device_map={"model.layers.0": "disk"})
    with pytest.raises(TypeError, match="non-empty"):
        load_model(folder, device_map={})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            load_model(folder, device_map={"model.layers.0": 0})


@pytest.mark.gpu
def test_split_over_gpus(tmp_path):
    """The layers over every visible GPU (one GPU: two parts on it, through the same hooks)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    folder = _folder(tmp_path)
    n = torch.cuda.device_count()
    plain = load_model(str(folder), device="cuda:0", dtype="float32", progress=False)
    devices = [f"cuda:{i}" for i in range(n)] if n > 1 else ["cuda:0", "cuda:0"]
    placed = load_model(str(folder), device_map=_split_map(plain, devices), dtype="float32",
                        progress=False)
    if n == 1:
        _hook_layers(placed, _split_map(plain, devices))
    want, got = _everything(plain), _everything(placed)
    for key, w in want.items():
        torch.testing.assert_close(got[key].to(w.device), w, atol=1e-4, rtol=1e-4, msg=key)
