"""`emofast sae train`: TopK SAEs for several sites of a model, from one pass per batch
(emofast.sae.train), into a resumable folder; `emofast sae eval`: an SAE folder on held-out text.

    emofast sae train --sites L6.resid_post,L24.resid_post --out runs/saes
    emofast sae eval --sae runs/saes/L6.resid_post --texts held_out.txt
"""
from __future__ import annotations

from ..sae import evaluate_sae, load_sae
from ..sae.formats import cached_sae_folder
from ..sae.corpus import load_corpus
from ..sae.train import SAETrainConfig, train_saes
from . import common
from .common import add_config_flags, add_model_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("sae", help="train and evaluate sparse autoencoders")
    sub2 = p.add_subparsers(dest="sae_command", required=True)
    t = sub2.add_parser("train", help="train TopK SAEs for several sites at once")
    add_model_flags(t)
    t.add_argument("--corpus", default="default", help="'default' (offline: pydoc_data.topics "
                   "prose + emofast's emotion datasets, 121k SmolLM2 tokens), a .txt (documents "
                   "split at blank lines) or .jsonl ({\"text\"}) file, or a folder of them")
    t.add_argument("--out", default=None, help="folder: one SAELens folder per site, "
                   "train.json, checkpoints (a rerun resumes); default $EMOFAST_CACHE/saes/"
                   "<model>, where load_sae('<model>/<site>') finds them")
    t.add_argument("--repair", action="store_true", help="recompute a damaged checkpoint")
    add_config_flags(t, SAETrainConfig)
    t.set_defaults(fn=run_train)
    e = sub2.add_parser("eval", help="FVU, L0, dead latents and CE-loss score on held-out text")
    add_model_flags(e)
    e.add_argument("--sae", required=True, help="an SAE folder (SAELens or sparsify), or "
                   "<model>/<site> trained into $EMOFAST_CACHE")
    e.add_argument("--texts", default="default", help="held-out text, as --corpus takes it")
    e.add_argument("--out", default=None, help="write the evaluation as JSON here")
    e.set_defaults(fn=run_eval)


def run_train(args) -> int:
    cfg = config_from_args(args, SAETrainConfig)
    docs = load_corpus(args.corpus)
    model = common.load(args)
    out = args.out or cached_sae_folder(args.model, "L0.resid_post").parent
    res = train_saes(model, docs, cfg, out=out, progress=not args.quiet, repair=args.repair)
    for site in res.saes:
        last = res.history[-1][site]
        print(f"{site}: fvu {last['fvu']:.3f} (training batches), l0 {last['l0']:.1f}, dead "
              f"{last['dead']:.1%}")
    print(f"{res.tokens} tokens" + (f" ({res.resumed_from} resumed)" if res.resumed_from else "")
          + f"; wrote {out}")
    return 0


def run_eval(args) -> int:
    texts = load_corpus(args.texts)
    model = common.load(args)
    ev = evaluate_sae(model, load_sae(args.sae, model), texts, progress=not args.quiet)
    print(f"{ev.site}: fvu {ev.fvu:.3f}, l0 {ev.l0:.1f}, dead {ev.dead_fraction:.1%} over "
          f"{ev.n_tokens} tokens; CE clean {ev.ce_clean:.3f}, SAE {ev.ce_sae:.3f}, zero "
          f"{ev.ce_zero:.3f}: CE-loss score {ev.ce_loss_score:.3f}, KL {ev.kl_sae:.4f}")
    if args.out:
        from ..report.files import write_json
        write_json(args.out, {k: v for k, v in ev.to_json().items() if k != "density"})
    return 0
