"""`emofast quant`: does quantization that hits late layers silently break emotion features,
directions and circuits? A profile of many arms, and a one-arm comparison.

    result = run_quant_profile(model, QuantConfig(), "emofast-quant")      # or QuantConfig.full()
    summary = run_quant_compare(model, "rtn:3:32", layers="20-29", modules="mlp", out="cmp")

The reference is the model as loaded (for the embedded SmolLM2: its Q4_1 weights dequantized to
fp32, so "unquantized" means those values). On general text (pydoc_data.topics paragraphs, the
prose every CPython ships) and emotion text (emo6) every arm (`emofast.quant.arms`) is measured
by `emofast.quant.profile.measure`; the brittleness test (`emofast.quant.verdict`) compares the
thirds with random layer sets at matched output KL. On the "deep" arms (the thirds at the
headline bit width by default) also, against the reference:
- causal (`emofast.quant.causal`): every head's exact zero-ablation effect on each emotion's
  recognition metric (Kendall tau, Jaccard@10) and the reference's top causal SAE features'
  exact effects, through the batched sweep engine on the quantized model;
- behaviour: emotion-recognition accuracy (emo6 test texts) and steering efficacy, the judge's
  accuracy over alpha (`emofast.eval.matched_damage`) steering with the reference's sev6
  directions and with sev6 directions re-derived on the arm (the same skeletons; layers
  0.4-0.57 of depth, rms-scaled).
Writes DIR/report.json, PNGs and DIR/index.html.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .. import report
from ..analysis import sev_directions
from ..data import EMOTIONS6, general_texts, labelled_sample, load_skeletons, neutral_sentences
from ..eval.control import steering_configs
from ..eval.judge import EmotionJudge
from ..eval.matched_damage import matched_damage
from ..eval.recognition import recognize
from ..interventions import Steering
from ..models import Model
from ..quant import matched_noise, quantize
from ..quant.apply import check_arm
from ..quant.arms import Arm, standard_arms
from ..quant.causal import causal_change, causal_reference
from ..quant.profile import ArmResult, prepare, measure
from ..quant.schemes import BNB, GGUF, parse_scheme
from ..quant.verdict import brittleness_test
from ..sae import load_sae_set
from ._config import check_numbers, checked, option, preset_name, report_folder, writes_report
from ._quant_report import write_index, write_plots

ARM_KINDS = ("null_check", "region", "noise", "window", "single", "module", "whole", "random")
# llama.cpp `perplexity --kl-divergence`, Llama-3-8B, mean KLD (the anchors)
LLAMA_CPP_ANCHORS = {"q8_0": ("q8_0", 0.0014), "q4_0": ("q4_K_M", 0.031),
                     "rtn:2:32:asym": ("q2_K", 0.445)}


@dataclass
class QuantConfig:
    """The defaults are the quick preset (at most 15 minutes on a 2-core CPU, SAEs trained)."""
    saes: str = option("", "folder of the SAE set (default: the model's set in $EMOFAST_CACHE/"
                       "saes; none there: feature survival is left out)")
    n_general: int = option(20, "general-text paragraphs (pydoc_data.topics)")
    general_chars: int = option(300, "characters per general paragraph (cut at a word)")
    emotion: str = option("emo6:train", "emotion texts: DATASET[:SPLIT]")
    n_emotion: int = option(10, "emotion texts per emotion")
    emotions: tuple[str, ...] = option(EMOTIONS6, "the emotions of the texts, recognition and "
                                       "steering")
    bits: tuple[int, ...] = option((2, 3, 4), "rtn bit widths of the region and whole arms")
    headline: int = option(3, "the bit width of the test, windows, singles, modules, null")
    group: int = option(32, "rtn group size along the input dimension")
    arms: tuple[str, ...] = option(ARM_KINDS, f"arm kinds to run: some of {', '.join(ARM_KINDS)}")
    schemes: tuple[str, ...] = option(("q4_0", "q5_0", "q8_0", "int8", "nf4"), "whole-model arms "
                                      "besides rtn: GGUF formats and bitsandbytes schemes")
    n_random: int = option(20, "random layer sets of a third's size (the null)")
    window: int = option(0, "sliding-window width in layers (0: a sixth of the depth)")
    stride: int = option(0, "sliding-window stride (0: the width)")
    single_step: int = option(10, "single-layer arms every N layers (and the last layer)")
    modules: tuple[str, ...] = option(("attn", "mlp", "down", "embed"), "module-kind arms")
    threshold: float = option(0.9, "Pearson r at which a feature survives")
    per_emotion: int = option(4, "emotion features per emotion and SAE")
    deep: tuple[str, ...] = option(("early", "middle", "late"), "arms measured causally and "
                                   "behaviourally: thirds (at the headline bits) or arm names")
    n_causal: int = option(4, "recognition prompts per emotion for the causal measures")
    n_candidates: int = option(4, "top causal features per SAE and emotion")
    causal_scope: str = option("last", "scope of the causal head and feature ablations (last: "
                               "the answer position; all: every token)")
    n_recognition: int = option(5, "held-out recognition texts per emotion (emo6 test)")
    steer_alphas: tuple[float, ...] = option((0.5, 1.0), "steering strengths (rms-scaled)")
    n_direction_skeletons: int = option(6, "sev6 train skeletons the steering directions are "
                                        "derived from, on the reference and on each arm")
    n_skeletons: int = option(1, "held-out sev6 skeletons for steering (3 prompts each)")
    max_new_tokens: int = option(16, "reply length of the steering test")
    n_neutral: int = option(12, "neutral sentences for the steering's KL")
    n_boot: int = option(2000, "bootstrap resamples")
    batch_size: int = option(8, "texts per forward")
    seed: int = option(0, "random layer sets, matched features, noise")

    def __post_init__(self):
        check_numbers(self, "n_general", "general_chars", "n_emotion", "group", "n_random",
                      "single_step", "per_emotion", "n_causal", "n_candidates",
                      "n_recognition", "n_skeletons", "n_direction_skeletons", "max_new_tokens",
                      "n_neutral", "n_boot",
                      "batch_size")
        bad = [k for k in self.arms if k not in ARM_KINDS]
        if bad:
            raise ValueError(f"arms {bad}: each one of {', '.join(ARM_KINDS)}")
        bad = [s for s in self.schemes if s not in GGUF + BNB]
        if bad:
            raise ValueError(f"schemes {bad}: whole-model arms take {', '.join(GGUF + BNB)} "
                             "(rtn arms come from bits and group)")
        for k in self.bits:
            parse_scheme(f"rtn:{k}:{self.group}")
        if self.headline not in self.bits:
            raise ValueError(f"headline {self.headline} must be one of bits {self.bits}")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold is a Pearson r in (0, 1], got {self.threshold}")
        if not self.emotions or set(self.emotions) - set(EMOTIONS6):
            raise ValueError(f"emotions must be some of {EMOTIONS6}, got {self.emotions}")
        if self.causal_scope not in ("last", "all"):
            raise ValueError(f"causal_scope is 'last' or 'all', got {self.causal_scope!r}")

    @classmethod
    def full(cls) -> "QuantConfig":
        return dataclasses.replace(
            cls(), n_general=64, general_chars=400, n_emotion=30, n_random=100, single_step=1,
            stride=2, schemes=("q4_0", "q5_0", "q8_0", *BNB), n_causal=8, n_candidates=8,
            causal_scope="all", n_recognition=20, steer_alphas=(0.25, 0.5, 1.0, 2.0),
            n_skeletons=3, n_direction_skeletons=36, max_new_tokens=24, n_neutral=24,
            deep=("early", "middle", "late", "whole nf4", "whole q4_0"))


@dataclass
class QuantResult:
    model: str
    mode: str
    config: QuantConfig
    reference: dict
    arms: list[ArmResult]
    test: dict | None
    deep: dict
    anchors: list[dict]
    stage_s: dict[str, float]
    elapsed_s: float

    def arm(self, name: str) -> ArmResult:
        return next(a for a in self.arms if a.arm.name == name)

    def to_json(self) -> dict:
        return {"model": self.model, "mode": self.mode, "config": dataclasses.asdict(self.config),
                "reference": self.reference, "arms": [a.to_json() for a in self.arms],
                "test": self.test, "deep": self.deep, "anchors": self.anchors,
                "stage_s": self.stage_s, "elapsed_s": self.elapsed_s}


def _optional_saes(model: Model, folder: str) -> list:
    try:
        return load_sae_set(model, folder)
    except FileNotFoundError:
        if folder:
            raise
        return []


def arm_model(model: Model, arm: Arm, seed: int) -> Model:
    """The quantized (or noised) Model of an arm."""
    q = quantize(model, arm.scheme, arm.layers, list(arm.modules))
    return matched_noise(model, q, seed) if arm.kind == "noise" else q


def _arms(model: Model, cfg: QuantConfig) -> list[Arm]:
    L = model.n_layers
    singles = sorted(set(range(0, L, cfg.single_step)) | {L - 1})
    arms = standard_arms(L, bits=cfg.bits, headline=cfg.headline, group=cfg.group,
                         n_random=cfg.n_random, window=cfg.window or None,
                         stride=cfg.stride or None, singles=singles, modules=cfg.modules,
                         formats=cfg.schemes, noise="noise" in cfg.arms, seed=cfg.seed)
    # the null check is a row of every report, whatever the kinds asked for
    arms = [a for a in arms if a.kind in cfg.arms or a.kind == "null_check"]
    for a in arms:                     # every arm's bad input before any model work
        try:
            check_arm(model, a.scheme, a.layers, list(a.modules))
        except ValueError as e:
            raise ValueError(f"arm {a.name!r}: {e}") from None
    return arms


def _deep_names(cfg: QuantConfig) -> list[str]:
    return [f"{d} rtn{cfg.headline}" if d in ("early", "middle", "late") else d
            for d in cfg.deep]


@writes_report
def run_quant_profile(model: Model, config: QuantConfig | None = None,
                      out: str | Path = "emofast-quant", *, progress: bool = True) -> QuantResult:
    """The whole profile (module docstring)."""
    cfg = checked(config, QuantConfig, "run_quant_profile")
    start, out = report_folder(out)
    clock = report.Stopwatch()
    arms = _arms(model, cfg)
    saes = _optional_saes(model, cfg.saes)
    examples = labelled_sample(cfg.emotion, cfg.emotions, cfg.n_emotion, cfg.seed)
    data = clock.run("reference", prepare, model, general_texts(cfg.n_general,
                                                                cfg.general_chars),
                     examples, saes, per_emotion=cfg.per_emotion, threshold=cfg.threshold,
                     batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    deep_names = _deep_names(cfg)
    unknown = [d for d in deep_names if d not in {a.name for a in arms}]
    if unknown:
        raise ValueError(f"deep arms {unknown} are not among the arms run ({len(arms)} arms; "
                         "kinds " + ", ".join(cfg.arms) + ")")
    results = []
    t0 = time.perf_counter()
    for arm in tqdm(arms, desc="quant arms", unit="arm", disable=not progress):
        q = arm_model(model, arm, cfg.seed)
        results.append(measure(q, data, arm))
        del q
    clock.seconds["arms"] = round(time.perf_counter() - t0, 1)
    test = None
    if {"region", "random"} <= set(cfg.arms):
        test = clock.run("test", brittleness_test, results, headline_bits=cfg.headline,
                         n_boot=cfg.n_boot, seed=cfg.seed)
    deep = clock.run("deep arms", _deep, model, cfg, data, saes,
                     [r for r in results if r.arm.name in deep_names], progress)
    reference = {"n_tokens_general": len(data.general.tokens.text),
                 "n_tokens_emotion": len(data.emotion.tokens.text),
                 "n_texts_general": data.general.tokens.n_texts,
                 "n_texts_emotion": data.emotion.tokens.n_texts,
                 "sae_sites": [s.site for s in saes], "massive_dims": data.massive,
                 "direction_layers": data.layers, "direction_ceiling": data.ceiling,
                 "features": data.chosen.to_json(), "seconds": round(data.seconds, 1)}
    result = QuantResult(model.name, preset_name(cfg), cfg, reference, results, test, deep,
                         _anchors(results), clock.seconds, round(time.perf_counter() - start, 1))
    write_plots(out, result)
    report.write_json(out / "report.json", result.to_json())
    write_index(out, result)
    return result


def _anchors(results: list[ArmResult]) -> list[dict]:
    rows = []
    for r in results:
        if r.arm.kind == "whole" and r.arm.scheme in LLAMA_CPP_ANCHORS:
            name, kld = LLAMA_CPP_ANCHORS[r.arm.scheme]
            rows.append({"emofast_arm": r.arm.name, "bits_per_weight": r.info["bits_per_weight"],
                         "kl_mean": r.general["kl_mean"], "kl_p99": r.general["kl_p99"],
                         "same_top": r.general["same_top"], "llama_cpp_format": name,
                         "llama3_8b_kl_mean": kld})
    return rows


def _directions(model: Model, cfg: QuantConfig):
    """sev6 directions (`emofast.analysis.sev_directions`) on the first n train skeletons."""
    skeletons = load_skeletons("sev6", split="train")[:cfg.n_direction_skeletons]
    return sev_directions(model, skeletons, progress=False)


def _steering(model: Model, cfg: QuantConfig, directions: dict, judge, progress) -> dict:
    """Judge accuracy over alpha with each of `directions` ({name: EmotionDirections}) over
    layers 0.4-0.57 of depth, rms-scaled."""
    window = steering_configs(((0.4, 0.57, 1.0),), model.n_layers)[0][0]
    methods = {name: (lambda d: lambda rows: Steering.rows(
        d, [(e, window, a) for e, a in rows], model.n_layers, scale="rms"))(dirs)
        for name, dirs in directions.items()}
    md = matched_damage(model, judge, methods, {name: cfg.steer_alphas for name in methods},
                        load_skeletons("sev6", split="test")[:cfg.n_skeletons],
                        neutral_sentences(cfg.n_neutral), emotions=cfg.emotions,
                        max_new_tokens=cfg.max_new_tokens, progress=progress)
    return md.to_json()


def _behaviour(model: Model, cfg: QuantConfig, directions: dict, judge, progress) -> dict:
    held = labelled_sample("emo6:test", cfg.emotions, cfg.n_recognition, cfg.seed)
    rec = recognize(model, held, labels=cfg.emotions, batch_size=cfg.batch_size,
                    progress=False)
    return {"recognition_accuracy": rec.accuracy, "recognition_n": len(held),
            "steering": _steering(model, cfg, directions, judge, progress)}


def _deep(model: Model, cfg: QuantConfig, data, saes, deep: list[ArmResult], progress) -> dict:
    """Causal and behavioural measures of the reference and each deep arm."""
    if not deep:
        return {}
    judge = EmotionJudge.load()
    ref_dirs = _directions(model, cfg)
    causal_examples = labelled_sample("emo6:test", cfg.emotions, cfg.n_causal, cfg.seed + 1)
    ref_causal = causal_reference(model, saes, causal_examples, labels=cfg.emotions,
                                  n_candidates=cfg.n_candidates,
                                  scope=cfg.causal_scope, batch_size=cfg.batch_size)
    out = {"reference": {"causal": ref_causal.to_json(),
                         "behaviour": _behaviour(model, cfg, {"reference directions": ref_dirs},
                                                 judge, progress)}, "arms": {}}
    for r in tqdm(deep, desc="deep arms", disable=not progress):
        q = arm_model(model, r.arm, cfg.seed)
        t0 = time.perf_counter()
        causal = causal_change(q, ref_causal, cfg.batch_size)
        t1 = time.perf_counter()
        out["arms"][r.arm.name] = {
            "causal": causal,
            "behaviour": _behaviour(q, cfg, {"reference directions": ref_dirs,
                                             "re-derived directions": _directions(q, cfg)},
                                    judge, progress),
            "seconds": {"causal": round(t1 - t0, 1),
                        "behaviour": round(time.perf_counter() - t1, 1)}}
        del q
    return out


@writes_report
def run_quant_compare(model: Model, scheme: str, layers=None, modules=None,
                      out: str | Path = "emofast-quant-compare", *,
                      config: QuantConfig | None = None, progress: bool = True) -> dict:
    """One arm's summary (KL, same-top, direction cosine, feature survival, recognition
    accuracy) against the reference; writes DIR/summary.json."""
    cfg = checked(config, QuantConfig, "run_quant_compare")
    start, out = report_folder(out)
    parse_scheme(scheme)
    q = quantize(model, scheme, layers, modules)   # bad scheme / layers fail before any work
    saes = _optional_saes(model, cfg.saes)
    data = prepare(model, general_texts(cfg.n_general, cfg.general_chars),
                   labelled_sample(cfg.emotion, cfg.emotions, cfg.n_emotion, cfg.seed), saes,
                   per_emotion=cfg.per_emotion, threshold=cfg.threshold,
                   batch_size=cfg.batch_size, seed=cfg.seed, progress=progress)
    info = q.hf.emofast_quantization
    arm = Arm("compare", "compare", info["scheme"], None if info["layers"] is None else
              tuple(info["layers"]), tuple(info["modules"]))
    r = measure(q, data, arm)
    held = labelled_sample("emo6:test", cfg.emotions, cfg.n_recognition, cfg.seed)
    acc_ref, acc_q = (recognize(m, held, labels=cfg.emotions, batch_size=cfg.batch_size,
                                progress=False).accuracy for m in (model, q))
    g, m = r.general, r.metrics
    summary = {"scheme": info["scheme"], "layers": info["layers"], "modules": info["modules"],
               "bits_per_weight": info["bits_per_weight"], "bytes_model": info["bytes_model"],
               "kl_mean": g["kl_mean"], "kl_median": g["kl_median"], "kl_p99": g["kl_p99"],
               "same_top": g["same_top"], "ppl_ref": g["ppl_ref"], "ppl_quant": g["ppl_quant"],
               "emotion_kl_mean": r.emotion["kl_mean"],
               "direction_cosine": m["direction_cosine"],
               "direction_ceiling": sum(data.ceiling) / len(data.ceiling),
               "probe_frozen": m["probe_frozen"], "probe_refit": m["probe_refit"],
               "feature_survival": m["feature_survival_all"],
               "feature_survival_emotion": m["feature_survival_emotion"],
               "feature_survival_matched": m["feature_survival_matched"],
               "survival_threshold": cfg.threshold, "sae_sites": [s.site for s in saes],
               "recognition_accuracy_ref": acc_ref, "recognition_accuracy_quant": acc_q,
               "recognition_n": len(held), "n_tokens": g["n_tokens"] + r.emotion["n_tokens"],
               "drift_rel_l2_last": m["drift_last"], "model": model.name,
               "elapsed_s": round(time.perf_counter() - start, 1)}
    report.write_json(out / "summary.json", summary)
    return summary
