"""`emofast sae train`: SAEs for several sites of a model, from one pass per batch
(emofast.sae.train), into a resumable folder, each evaluated on held-out text; `emofast sae
eval`: an SAE folder on held-out text.

    emofast sae train --sites L6.resid_post,L24.resid_post --out runs/saes
    emofast sae eval --sae runs/saes/L6.resid_post --texts held_out.txt
"""
from __future__ import annotations

from pathlib import Path

from ..data import neutral_sentences
from ..report.files import write_json
from ..sae import evaluate_sae, load_sae
from ..sae.formats import cached_sae_folder
from ..sae.corpus import load_corpus
from ..sae.train import SAETrainConfig, train_saes
from ..processes import is_rank0
from ..validation import arg, positive_int
from . import common
from .common import add_config_flags, add_model_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("sae", help="train and evaluate sparse autoencoders")
    sub2 = p.add_subparsers(dest="sae_command", required=True)
    t = sub2.add_parser("train", help="train TopK SAEs for several sites at once (under "
                        "torchrun: across the processes, --parallel data or sites)")
    add_model_flags(t)
    t.add_argument("--corpus", default="default", help="'default' (offline: pydoc_data.topics "
                   "prose + emofast's emotion datasets, 120k SmolLM2 tokens), a .txt (documents "
                   "split at blank lines) or .jsonl ({\"text\"}) file, a folder of them, or "
                   "hf:NAME[:CONFIG], a `datasets` dataset (hf:json with --corpus-files: local)")
    t.add_argument("--corpus-split", default="train", help="hf: corpora: the split")
    t.add_argument("--corpus-column", default="text", help="hf: corpora: the text column")
    t.add_argument("--corpus-files", nargs="+", default=None, help="hf: corpora: data_files")
    t.add_argument("--max-docs", type=arg(positive_int), default=None,
                   help="the corpus's first N documents only")
    t.add_argument("--out", default=None, help="folder: one SAELens folder per site, "
                   "train.json, checkpoints (a rerun resumes); default $EMOFAST_CACHE/saes/"
                   "<model>, where load_sae('<model>/<site>') finds them")
    t.add_argument("--activations", default="auto", help="folder caching the activations as "
                   "shards, so the model runs once for all epochs (auto: <out>/activations when "
                   "epochs > 1, about 1.6 GB for the default set; none: no cache)")
    t.add_argument("--repair", action="store_true", help="recompute a damaged checkpoint")
    t.add_argument("--no-eval", action="store_true", help="skip evaluating each SAE on the "
                   "held-out neutral sentences (written to <out>/<site>/evaluation.json)")
    add_config_flags(t, SAETrainConfig)
    t.set_defaults(fn=run_train)
    e = sub2.add_parser("eval", help="FVU, L0, dead latents and CE-loss score on held-out text")
    add_model_flags(e)
    e.add_argument("--sae", required=True, help="an SAE folder (SAELens or sparsify), or "
                   "<model>/<site> trained into $EMOFAST_CACHE")
    e.add_argument("--texts", default="neutral", help="held-out text: 'neutral' (basic4's "
                   "neutral sentences, left out of the default corpus) or as --corpus takes it")
    e.add_argument("--out", default=None, help="write the evaluation as JSON here")
    e.set_defaults(fn=run_eval)


def run_train(args) -> int:
    cfg = config_from_args(args, SAETrainConfig)
    docs = load_corpus(args.corpus, split=args.corpus_split, column=args.corpus_column,
                       data_files=args.corpus_files, max_docs=args.max_docs)
    model = common.load(args)
    out = Path(args.out or cached_sae_folder(args.model, "L0.resid_post").parent)
    activations = None if args.activations == "none" else args.activations
    res = train_saes(model, docs, cfg, out=out, activations=activations,
                     progress=not args.quiet, repair=args.repair)
    if not is_rank0():       # under torchrun: rank 0 reports and evaluates
        return 0
    print(f"{res.tokens} tokens" + (f" ({res.resumed_from} resumed)" if res.resumed_from else "")
          + f"; wrote {out}")
    cache = out / "activations" if activations == "auto" else activations
    if cache is not None and Path(cache).is_dir():
        size = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
        print(f"activation cache kept for reuse: {cache} ({size / 1e9:.2f} GB; delete it when "
              "done, or pass --activations none)")
    for site, sae in res.saes.items():
        last = res.history[-1][site]
        line = (f"{site}: training fvu {last['fvu']:.3f}, l0 {last['l0']:.1f}, dead "
                f"{last['dead']:.1%}")
        if not args.no_eval:   # held out: the default corpus leaves the neutral sentences out
            ev = evaluate_sae(model, sae, neutral_sentences(), progress=False)
            write_json(out / site / "evaluation.json", {"texts": "neutral_sentences",
                                                        **_summary(ev)})
            line += f"; held-out {_line(ev)}"
        print(line)
    return 0


def _summary(ev) -> dict:
    """The evaluation without the per-latent densities (their histogram stays)."""
    return {k: v for k, v in ev.to_json().items() if k != "density"}


def _line(ev) -> str:
    return (f"fvu {ev.fvu:.3f}, l0 {ev.l0:.1f}, dead {ev.dead_fraction:.1%} over {ev.n_tokens} "
            f"tokens; CE clean {ev.ce_clean:.3f}, SAE {ev.ce_sae:.3f}, zero {ev.ce_zero:.3f}: "
            f"CE-loss score {ev.ce_loss_score:.3f}, KL {ev.kl_sae:.4f}")


def run_eval(args) -> int:
    texts = neutral_sentences() if args.texts == "neutral" else load_corpus(args.texts)
    model = common.load(args)
    ev = evaluate_sae(model, load_sae(args.sae, model), texts, progress=not args.quiet)
    print(f"{ev.site}: {_line(ev)}")
    if args.out:
        write_json(args.out, _summary(ev))
    return 0
