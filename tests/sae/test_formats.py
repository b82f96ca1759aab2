"""SAE folders: SAELens 6.x written and read back, 5.x flat configs read, sparsify both ways,
TransformerLens hook names mapped to sites; every malformed folder one clear error."""
import json

import pytest
import torch

from conftest import make_tiny
from emofast.report.files import load_tensors, save_tensors
from emofast.sae import SAE, load_sae, save_sae
from emofast.sae.formats import hook_of_site, site_of_hook
from test_model import random_sae


@pytest.mark.parametrize("arch, site", [("topk", "L1.resid_post"), ("jumprelu", "L2.attn_z"),
                                        ("standard", "L0.mlp_act")])
def test_saelens_round_trip(tmp_path, arch, site):
    sae = random_sae(12, 40, arch, "layer_norm", k=5 if arch == "topk" else None, site=site)
    save_sae(sae, tmp_path / "s", model_name="tiny")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["metadata"]["hook_name"] == hook_of_site(site)
    assert set(load_tensors(tmp_path / "s" / "sae_weights.safetensors")) == \
        {"W_enc", "W_dec", "b_enc", "b_dec"} | ({"threshold"} if arch == "jumprelu" else set())
    back = load_sae(tmp_path / "s")
    assert (back.site, back.architecture, back.k) == (sae.site, arch, sae.k)
    x = torch.randn(4, 12)
    with torch.no_grad():
        assert torch.equal(back(x), sae(x))


def test_saelens_5x_flat_config(tmp_path):
    sae = random_sae(12, 40, "topk", k=6, site="L3.resid_post")
    save_sae(sae, tmp_path / "s")
    flat = {"architecture": "standard", "activation_fn_str": "topk",
            "activation_fn_kwargs": {"k": 6}, "d_in": 12, "d_sae": 40,
            "hook_name": "blocks.3.hook_resid_post", "hook_layer": 3, "dtype": "torch.float32",
            "apply_b_dec_to_input": True, "normalize_activations": "none"}
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(flat))
    back = load_sae(tmp_path / "s")
    assert (back.site, back.architecture, back.k) == ("L3.resid_post", "topk", 6)
    x = torch.randn(2, 12)
    with torch.no_grad():
        assert torch.equal(back(x), sae(x))


def test_sparsify_round_trip_and_layout(tmp_path):
    sae = random_sae(12, 40, "topk", k=5, site="L2.resid_post")
    save_sae(sae, tmp_path / "layers.2", format="sparsify")
    t = load_tensors(tmp_path / "layers.2" / "sae.safetensors")
    assert t["encoder.weight"].shape == (40, 12) and t["W_dec"].shape == (40, 12)
    cfg = json.loads((tmp_path / "layers.2" / "cfg.json").read_text())
    del cfg["emofast_site"]  # as sparsify writes it: the folder name says the hookpoint
    (tmp_path / "layers.2" / "cfg.json").write_text(json.dumps(cfg))
    back = load_sae(tmp_path / "layers.2")
    assert back.site == "L2.resid_post" and back.k == 5
    x = torch.randn(3, 12)
    with torch.no_grad():
        assert torch.equal(back(x), sae(x))
        # sparsify's own encode, written out: relu(encoder(x - b_dec)), top k, decode
        pre = torch.relu((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"])
        top = pre.topk(5, dim=-1)
        want = (torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ t["W_dec"]
                + t["b_dec"])
        torch.testing.assert_close(back(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hook, site", [("blocks.12.hook_resid_post", "L12.resid_post"),
                                        ("blocks.0.hook_resid_pre", "L0.resid_pre"),
                                        ("blocks.3.hook_mlp_out", "L3.mlp_out"),
                                        ("blocks.3.mlp.hook_post", "L3.mlp_act"),
                                        ("blocks.5.attn.hook_z", "L5.attn_z"),
                                        ("blocks.2.hook_resid_mid", "L2.resid_mid")])
def test_hook_names(hook, site):
    assert site_of_hook(hook, "cfg") == site and hook_of_site(site) == hook


def _saved(tmp_path, **cfg_changes):
    sae = random_sae(12, 40, "topk", k=5, site="L1.resid_post")
    save_sae(sae, tmp_path / "s")
    cfg_path = tmp_path / "s" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(cfg_changes)
    cfg_path.write_text(json.dumps(cfg))
    return tmp_path / "s"


def test_malformed_folders(tmp_path):
    with pytest.raises(ValueError, match="unknown SAE architecture 'gated'"):
        load_sae(_saved(tmp_path / "a", architecture="gated"))
    with pytest.raises(ValueError, match="hook 'blocks.1.hook_q' is not supported"):
        load_sae(_saved(tmp_path / "b", metadata={"hook_name": "blocks.1.hook_q"}))
    with pytest.raises(ValueError, match="cfg.json: .*d_in"):
        folder = _saved(tmp_path / "c")
        cfg = json.loads((folder / "cfg.json").read_text())
        del cfg["d_in"]
        (folder / "cfg.json").write_text(json.dumps(cfg))
        load_sae(folder)
    folder = _saved(tmp_path / "d")
    (folder / "cfg.json").write_text("{oops")
    with pytest.raises(ValueError, match="cfg.json:1: not valid JSON"):
        load_sae(folder)
    folder = _saved(tmp_path / "e")
    t = load_tensors(folder / "sae_weights.safetensors")
    del t["b_enc"]
    save_tensors(folder / "sae_weights.safetensors", t)
    with pytest.raises(ValueError, match=r"missing tensor\(s\) \['b_enc'\]"):
        load_sae(folder)
    with pytest.raises(ValueError, match="W_enc has shape"):
        load_sae(_saved(tmp_path / "f", d_in=13))
    with pytest.raises(ValueError, match="neither sae_weights.safetensors"):
        (tmp_path / "g").mkdir()
        load_sae(tmp_path / "g")
    model = make_tiny("llama")
    with pytest.raises(ValueError, match="reads 12 features at L1.resid_post, this model has 32"):
        load_sae(_saved(tmp_path / "h"), model)


def test_sparsify_refusals(tmp_path):
    with pytest.raises(ValueError, match="sparsify stores TopK SAEs"):
        save_sae(SAE(12, 40, architecture="standard"), tmp_path / "x", format="sparsify")
    sae = random_sae(12, 40, "topk", k=5, site="L2.resid_post")
    folder = save_sae(sae, tmp_path / "layers.2", format="sparsify")
    t = load_tensors(folder / "sae.safetensors")
    save_tensors(folder / "sae.safetensors", {**t, "W_skip": torch.zeros(12, 12)})
    with pytest.raises(ValueError, match="skip connection is not supported"):
        load_sae(folder)
    with pytest.raises(ValueError, match="unknown SAE format"):
        save_sae(sae, tmp_path / "y", format="npz")


def test_cached_names(tmp_path, monkeypatch):
    from emofast.sae.formats import cached_sae_folder
    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="emofast sae train --model tiny --sites "
                       "L1.resid_post --out .*saes/tiny"):
        load_sae("tiny/L1.resid_post")
    sae = random_sae(12, 40, "topk", k=5, site="L1.resid_post")
    save_sae(sae, cached_sae_folder("tiny", "L1.resid_post"))
    assert load_sae("tiny/L1.resid_post").site == "L1.resid_post"
    with pytest.raises(FileNotFoundError, match="no SAE folder at nowhere"):
        load_sae("nowhere")


def test_saelens_6x_metadata_and_sparsity(tmp_path):
    """What SAELens 6.x reads: the hook under "metadata" with a sae_lens_version (without it
    SAELens parses the config as pre-6.0 and drops the hook); the log10 densities beside."""
    sae = random_sae(12, 40, "topk", k=5, site="L1.resid_post")
    folder = save_sae(sae, tmp_path / "s", log_sparsity=torch.linspace(-5, 0, 40))
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert cfg["rescale_acts_by_decoder_norm"] is False and "meta" not in cfg
    torch.testing.assert_close(load_tensors(folder / "sparsity.safetensors")["sparsity"],
                               torch.linspace(-5, 0, 40))
    with pytest.raises(ValueError, match=r"log_sparsity must be \[d_sae\] = \[40\]"):
        save_sae(sae, tmp_path / "t", log_sparsity=torch.zeros(3))
    del cfg["metadata"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no hook name"):
        load_sae(folder)


def test_rescale_acts_by_decoder_norm_equals_saelens_math(tmp_path):
    """SAELens TopK with rescale_acts_by_decoder_norm: encode = topk(pre * |W_dec_j|), decode =
    (acts / |W_dec_j|) @ W_dec + b_dec (written out here, SAELens's published math)."""
    sae = random_sae(12, 40, "topk", k=5, site="L1.resid_post")
    folder = save_sae(sae, tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "rescale_acts_by_decoder_norm": True}))
    back = load_sae(folder)
    x = torch.randn(9, 12)
    norms = sae.W_dec.norm(dim=-1)
    with torch.no_grad():
        pre = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc) * norms
        top = pre.topk(5, dim=-1)
        acts = torch.zeros(9, 40).scatter(1, top.indices, top.values.relu())
        x_hat = (acts / norms) @ sae.W_dec + sae.b_dec
        enc = back.encode(x)
        torch.testing.assert_close(torch.zeros(9, 40).scatter(1, enc.indices, enc.values), acts,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(x), x_hat, atol=1e-5, rtol=1e-5)
    del cfg["k"]
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "standard",
                                                 "rescale_acts_by_decoder_norm": True}))
    with pytest.raises(ValueError, match="rescale_acts_by_decoder_norm is a TopK option"):
        load_sae(folder)


@pytest.mark.parametrize("change, match", [({"transcode": True}, "transcoder"),
                                           ({"activation": "groupmax"}, "'groupmax'")])
def test_sparsify_variants_that_are_not_topk_saes(tmp_path, change, match):
    sae = random_sae(12, 40, "topk", k=5, site="L2.resid_post")
    folder = save_sae(sae, tmp_path / "layers.2", format="sparsify")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ValueError, match=match):
        load_sae(folder)


def test_folders_of_earlier_emofast_still_load(tmp_path):
    """Before the SAELens check emofast wrote its hook under "meta"; those folders still load."""
    sae = random_sae(12, 40, "topk", k=5, site="L1.resid_post")
    folder = save_sae(sae, tmp_path / "s")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["meta"] = cfg.pop("metadata")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(folder).site == "L1.resid_post"
