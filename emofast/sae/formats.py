"""SAE folders on disk: SAELens (6.x written, 5.x and 6.x read) and EleutherAI sparsify.

    sae = load_sae("path/to/folder", model)       # the format is detected; the width checked
    sae = load_sae("smollm2-135m-instruct/L24.resid_post")   # trained into $EMOFAST_CACHE
    save_sae(sae, "out/L12", format="saelens")     # cfg.json + sae_weights.safetensors
    save_sae(sae, "out/layers.12", format="sparsify")

SAELens: cfg.json + sae_weights.safetensors (W_enc [d_in, d_sae], W_dec, b_enc, b_dec,
threshold). 6.x configs carry "architecture" (standard, topk with "k", jumprelu) and
metadata.hook_name (and metadata.sae_lens_version, by which SAELens tells a 6.x config from an
older one); TopK folders with rescale_acts_by_decoder_norm (SAELens's training default) have the
decoder norms folded into the weights on load, as SAELens's own _fold_norm_topk does, so encode
and decode give SAELens's values; 5.x configs are flat (activation_fn_str "topk" with activation_fn_kwargs.k,
hook_name or hook_point, hook_layer). Hook names are TransformerLens's:
blocks.L.hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out,
blocks.L.mlp.hook_post (mlp_act) and blocks.L.attn.hook_z (attn_z, flattened heads).
sparsify: a folder per hookpoint (layers.L = the output of layer L = resid_post, layers.L.mlp =
mlp_out) with cfg.json (k, num_latents or expansion_factor) and sae.safetensors (encoder.weight
[d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec): TopK after a ReLU, b_dec subtracted
from the input. A skip connection (W_skip) is refused: the SAE has none.
Every malformed folder is one ValueError naming the file and what was wrong.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..data import read_json
from ..models.embedded import cache_dir
from ..report.files import load_tensors, save_tensors, write_json
from ..sites import parse_site

# written into metadata.sae_lens_version: the SAELens release whose loader the format was checked
# against (bench/sae_peer_check.py); SAELens reads a config without it as pre-6.0 and drops the
# hook name
SAELENS_VERSION = "6.54.12"
SPARSITY = "sparsity.safetensors"
from .model import SAE, site_width

FORMATS = ("saelens", "sparsify")
SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
_TL_HOOKS = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid",
             "hook_resid_post": "resid_post", "hook_attn_out": "attn_out",
             "hook_mlp_out": "mlp_out", "mlp.hook_post": "mlp_act", "attn.hook_z": "attn_z"}
_DTYPES = {"float32": torch.float32, "torch.float32": torch.float32, "bfloat16": torch.bfloat16,
           "torch.bfloat16": torch.bfloat16, "float16": torch.float16,
           "torch.float16": torch.float16}


def site_of_hook(hook: str, where: str) -> str:
    """A TransformerLens hook name as an emofast site: blocks.12.hook_resid_post -> L12.resid_post."""
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", str(hook))
    if not m or m.group(2) not in _TL_HOOKS:
        raise ValueError(f"{where}: hook {hook!r} is not supported: one of blocks.L."
                         f"{{{', '.join(_TL_HOOKS)}}}")
    return f"L{m.group(1)}.{_TL_HOOKS[m.group(2)]}"


def hook_of_site(site: str) -> str:
    s = parse_site(site)
    hook = {v: k for k, v in _TL_HOOKS.items()}[s.kind]
    return f"blocks.{s.layer}.{hook}"


def load_sae(path: str | Path, model=None, *, device=None) -> SAE:
    """The SAE in folder `path` (SAELens or sparsify, detected); with `model`, its width must
    match the model's site."""
    path = Path(path) if Path(path).is_dir() else _cached(str(path))
    if (path / SAELENS_WEIGHTS).is_file():
        sae = _load_saelens(path)
    elif (path / SPARSIFY_WEIGHTS).is_file():
        sae = _load_sparsify(path)
    else:
        raise ValueError(f"{path} holds neither {SAELENS_WEIGHTS} (SAELens) nor "
                         f"{SPARSIFY_WEIGHTS} (sparsify)")
    if model is not None:
        site = parse_site(sae.site, model.n_layers)
        if site_width(model, site.kind) != sae.d_in:
            raise ValueError(f"{path}: the SAE reads {sae.d_in} features at {site}, this "
                             f"model has {site_width(model, site.kind)} there")
        device = device or model.device
    return sae.to(device) if device is not None else sae


def cached_sae_folder(model_name: str, site: str) -> Path:
    """Where `emofast sae train` keeps a model's trained SAEs: $EMOFAST_CACHE/saes/<model>/<site>."""
    return cache_dir() / "saes" / Path(model_name).name / str(parse_site(site))


def load_sae_set(model, folder: str = "") -> list:
    """Every SAE folder under `folder` (default: the model's cached set, what `emofast sae
    train` writes), each loaded and fitted to the model, sorted by folder name."""
    root = Path(folder) if folder else cached_sae_folder(model.name, "L0.resid_post").parent
    subs = sorted(p.parent for p in root.glob("*/cfg.json"))
    if not subs:
        raise FileNotFoundError(f"no SAE set at {root} (no */cfg.json): train one with "
                                "`emofast sae train` (about 15 minutes on a 2-core CPU) or "
                                "pass saes=FOLDER")
    return [load_sae(p, model, device=model.device) for p in subs]


def _cached(name: str) -> Path:
    """"<model>/<site>" (e.g. smollm2-135m-instruct/L24.resid_post) in the cache, or an error
    that gives the command training it."""
    model_name, _, site = name.rpartition("/")
    if not model_name or not re.fullmatch(r"L\d+\.\w+", site):
        raise FileNotFoundError(f"no SAE folder at {name} (nor a name like "
                                "smollm2-135m-instruct/L24.resid_post)")
    folder = cached_sae_folder(model_name, site)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no trained SAE {name} in {folder.parent}: train it with `emofast sae train "
            f"--model {model_name} --sites {site} --out {folder.parent}`")
    return folder


def save_sae(sae: SAE, folder: str | Path, *, format: str = "saelens",
             model_name: str | None = None, log_sparsity: torch.Tensor | None = None) -> Path:
    """Write `sae` to `folder` in `format` (SAELens 6.x by default, loadable by SAELens);
    `log_sparsity` [d_sae] (log10 of each latent's firing frequency, when known) goes to
    sparsity.safetensors as SAELens writes it."""
    if format not in FORMATS:
        raise ValueError(f"unknown SAE format {format!r}: one of {', '.join(FORMATS)}")
    folder = Path(folder)
    if format == "saelens":
        tensors = {n: p.detach() for n, p in sae.named_parameters()}
        save_tensors(folder / SAELENS_WEIGHTS, tensors)
        cfg = {"architecture": sae.architecture, "d_in": sae.d_in, "d_sae": sae.d_sae,
               "dtype": str(sae.W_enc.dtype).replace("torch.", ""), "device": "cpu",
               "apply_b_dec_to_input": sae.apply_b_dec_to_input,
               "normalize_activations": sae.normalize_activations,
               "reshape_activations": "hook_z" if parse_site(sae.site).kind == "attn_z" else "none",
               "metadata": {"sae_lens_version": SAELENS_VERSION, "model_name": model_name,
                            "hook_name": hook_of_site(sae.site), "emofast_site": sae.site}}
        if sae.architecture == "topk":
            cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
        write_json(folder / SAELENS_CFG, cfg)
        if log_sparsity is not None:
            if tuple(log_sparsity.shape) != (sae.d_sae,):
                raise ValueError(f"log_sparsity must be [d_sae] = [{sae.d_sae}], got "
                                 f"{list(log_sparsity.shape)}")
            save_tensors(folder / SPARSITY, {"sparsity": log_sparsity.detach().float().cpu()})
        return folder
    s = parse_site(sae.site)
    if sae.architecture != "topk" or s.kind not in ("resid_post", "mlp_out") \
            or not sae.apply_b_dec_to_input or sae.normalize_activations != "none":
        raise ValueError(f"{sae}: sparsify stores TopK SAEs on resid_post or mlp_out that "
                         "subtract b_dec from their input, without normalisation")
    save_tensors(folder / SPARSIFY_WEIGHTS, {
        "encoder.weight": sae.W_enc.detach().T, "encoder.bias": sae.b_enc.detach(),
        "W_dec": sae.W_dec.detach(), "b_dec": sae.b_dec.detach()})
    write_json(folder / "cfg.json", {"k": sae.k, "num_latents": sae.d_sae, "d_in": sae.d_in,
                                     "normalize_decoder": True, "skip_connection": False,
                                     "multi_topk": False, "emofast_site": sae.site})
    return folder


def _cfg(path: Path) -> dict:
    try:
        cfg = read_json(path)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return cfg


def _tensors(path: Path, need: tuple[str, ...]) -> dict:
    t = load_tensors(path)
    missing = [n for n in need if n not in t]
    if missing:
        raise ValueError(f"{path}: missing tensor(s) {missing}; it has {sorted(t)}")
    return t


def _load_saelens(path: Path) -> SAE:
    cfg_path = path / SAELENS_CFG
    cfg = _cfg(cfg_path)
    arch = cfg.get("architecture", "standard")
    k = cfg.get("k")
    if cfg.get("activation_fn_str") == "topk" or arch == "topk":  # 5.x: standard + topk kwargs
        arch = "topk"
        k = k if k is not None else (cfg.get("activation_fn_kwargs") or {}).get("k")
    # "meta": what emofast wrote before it was checked against SAELens (its folders still load)
    meta = next((m for m in (cfg.get("metadata"), cfg.get("meta")) if isinstance(m, dict)), {})
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if hook is None:
        raise ValueError(f"{cfg_path}: no hook name (metadata.hook_name in SAELens 6.x, "
                         "hook_name or hook_point in 5.x)")
    site = meta.get("emofast_site") or site_of_hook(hook, str(cfg_path))
    try:
        d_in, d_sae = int(cfg["d_in"]), int(cfg["d_sae"])
        sae = SAE(d_in, d_sae, architecture=arch, k=k, site=site,
                  apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
                  normalize_activations=cfg.get("normalize_activations") or "none",
                  dtype=_DTYPES.get(str(cfg.get("dtype", "float32")), torch.float32))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{cfg_path}: {' '.join(str(e).split())}") from None
    need = ("W_enc", "W_dec", "b_enc", "b_dec") + (("threshold",) if arch == "jumprelu" else ())
    t = _tensors(path / SAELENS_WEIGHTS, need)
    _fill(sae, {n: t[n] for n in need}, path / SAELENS_WEIGHTS)
    if cfg.get("rescale_acts_by_decoder_norm"):
        if arch != "topk":
            raise ValueError(f"{cfg_path}: rescale_acts_by_decoder_norm is a TopK option; this "
                             f"SAE is {arch}")
        _fold_decoder_norms(sae)
    return sae


def _fold_decoder_norms(sae: SAE) -> None:
    """SAELens's rescale_acts_by_decoder_norm (encode: pre * |W_dec_j|; decode: acts / |W_dec_j|)
    folded into the weights: W_enc columns and b_enc times the norms, W_dec rows divided."""
    with torch.no_grad():
        norms = sae.W_dec.norm(dim=-1)
        sae.W_enc *= norms
        sae.b_enc *= norms
        sae.W_dec /= norms[:, None]


def _load_sparsify(path: Path) -> SAE:
    cfg = _cfg(path / "cfg.json")
    t = _tensors(path / SPARSIFY_WEIGHTS, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"))
    if "W_skip" in t or cfg.get("skip_connection"):
        raise ValueError(f"{path}: a sparsify SAE with a skip connection is not supported")
    if cfg.get("transcode"):
        raise ValueError(f"{path}: a sparsify transcoder (transcode: true) maps one site to "
                         "another; only SAEs of one site are supported")
    if cfg.get("activation", "topk") != "topk":
        raise ValueError(f"{path}: sparsify activation {cfg.get('activation')!r} is not "
                         "supported: only topk")
    site = cfg.get("emofast_site") or _sparsify_site(path.name, path)
    d_sae, d_in = t["encoder.weight"].shape
    try:
        sae = SAE(d_in, d_sae, architecture="topk", k=cfg.get("k"), site=site,
                  dtype=t["W_dec"].dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path / 'cfg.json'}: {' '.join(str(e).split())}") from None
    _fill(sae, {"W_enc": t["encoder.weight"].T, "b_enc": t["encoder.bias"], "W_dec": t["W_dec"],
                "b_dec": t["b_dec"]}, path / SPARSIFY_WEIGHTS)
    return sae


def _sparsify_site(name: str, path: Path) -> str:
    m = re.fullmatch(r"(?:.*\.)?layers\.(\d+)(\.mlp)?", name)
    if not m:
        raise ValueError(f"{path}: hookpoint {name!r} is not supported: layers.L (resid_post) "
                         "or layers.L.mlp (mlp_out)")
    return f"L{m.group(1)}.{'mlp_out' if m.group(2) else 'resid_post'}"


def _fill(sae: SAE, tensors: dict, where: Path) -> None:
    with torch.no_grad():
        for name, value in tensors.items():
            p = getattr(sae, name)
            if tuple(value.shape) != tuple(p.shape):
                raise ValueError(f"{where}: {name} has shape {list(value.shape)}, the config "
                                 f"says {list(p.shape)}")
            p.copy_(value.to(p.dtype))
