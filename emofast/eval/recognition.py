"""Emotion recognition: the model reads a text and a question and answers with one of six labels.

    res = recognize(model, load_dataset("emo6"))             # or any labelled Examples
    res.accuracy, res.per_emotion, res.confusion             # confusion[true][predicted]
    res.log_prob_true, res.margin                            # per text
    recognize(model, examples, intervention=steering)        # the same under any Intervention
    recognize(model, examples, calibrate=True)               # label-logit calibration control

The prompt is the chat template (when the tokenizer has one) around
    "{text}\\n\\nWhich emotion does this text express: anger, sadness, happiness, fear, surprise or
    disgust? Answer with one word."
and the answer is read at the next position, where the reply begins: each label scores the
highest logit among the first tokens of its spellings ("anger", "Anger", " anger", " Anger":
whether the reply's first token carries a leading space depends on the tokenizer and template).
A first token shared by two labels' spellings is dropped from both (it cannot tell them apart);
a label left with none is an error. The prediction is the best-scoring label; per text,
`log_prob_true` is the true label's log-probability renormalised over the labels' scores and
`margin` its score minus the best wrong label's.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from ..data import EMOTIONS6, Example
from ..interventions.base import Intervention, check_intervention
from ..validation import positive_int

QUESTION = ("Which emotion does this text express: anger, sadness, happiness, fear, surprise or "
            "disgust? Answer with one word.")


class RecognitionResult(NamedTuple):
    labels: tuple[str, ...]
    predicted: list[str]
    truth: list[str]
    log_prob_true: torch.Tensor       # [n] log P(true label) over the labels' scores
    margin: torch.Tensor              # [n] score(true) - max score(wrong labels)

    @property
    def accuracy(self) -> float:
        return sum(p == t for p, t in zip(self.predicted, self.truth)) / len(self.truth)

    @property
    def per_emotion(self) -> dict[str, float]:
        """Accuracy over the texts of each true label (labels without texts left out)."""
        out = {}
        for label in self.labels:
            rows = [p == t for p, t in zip(self.predicted, self.truth) if t == label]
            if rows:
                out[label] = sum(rows) / len(rows)
        return out

    @property
    def confusion(self) -> dict[str, dict[str, int]]:
        """confusion[true][predicted] = count."""
        table = {t: {p: 0 for p in self.labels} for t in self.labels}
        for p, t in zip(self.predicted, self.truth):
            table[t][p] += 1
        return table

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "per_emotion": self.per_emotion, "n": len(self.truth),
                "confusion": self.confusion,
                "mean_log_prob_true": float(self.log_prob_true.mean()),
                "mean_margin": float(self.margin.mean())}


def label_tokens(tokenizer, labels: Sequence[str] = EMOTIONS6) -> dict[str, list[int]]:
    """Each label's candidate first answer tokens (see the module docstring)."""
    spellings = {lab: {lab, lab.capitalize(), " " + lab, " " + lab.capitalize()} for lab in labels}
    first = {lab: {tokenizer(s, add_special_tokens=False)["input_ids"][0] for s in sp}
             for lab, sp in spellings.items()}
    out = {}
    for lab, ids in first.items():
        shared = set().union(*(v for other, v in first.items() if other != lab))
        out[lab] = sorted(ids - shared)
        if not out[lab]:
            raise ValueError(f"label {lab!r}: every spelling's first token is shared with another "
                             "label, so the answer's first token cannot tell them apart")
    return out


def recognition_prompt(model, text: str) -> str:
    return model.chat_text(f"{text}\n\n{QUESTION}")


CONTENT_FREE = ("N/A", "", "[MASK]")   # Zhao et al. 2021's content-free inputs


@torch.no_grad()
def recognize(model, examples: Sequence[Example], *, labels: Sequence[str] = EMOTIONS6,
              intervention: Intervention | None = None, calibrate: bool = False,
              batch_size: int = 16, progress: bool = True) -> RecognitionResult:
    """See the module docstring. Every example's label must be one of `labels`. `calibrate`
    subtracts from each label's score its mean score on the content-free inputs CONTENT_FREE
    (contextual calibration, Zhao et al. 2021), under the same intervention (which then holds
    one row)."""
    labels = tuple(labels)
    examples = list(examples)
    if not examples:
        raise ValueError("recognize: no examples")
    for i, ex in enumerate(examples):
        if ex.label not in labels:
            raise ValueError(f"example {i} has label {ex.label!r}, not one of {', '.join(labels)}")
    batch_size = positive_int(batch_size, "batch_size")
    iv = check_intervention(intervention, "recognize", len(examples), "examples")
    if calibrate and iv is not None and iv.n_rows() != 1:
        raise ValueError("recognize(calibrate=True) needs a one-row intervention (the "
                         "content-free inputs run under it too)")
    candidates = label_tokens(model.tokenizer, labels)
    score = _scores(model, [recognition_prompt(model, ex.text) for ex in examples], candidates,
                    iv, batch_size, progress)
    if calibrate:
        score = score - _scores(model, [recognition_prompt(model, t) for t in CONTENT_FREE],
                                candidates, iv, batch_size, False).mean(0)
    truth_idx = torch.tensor([labels.index(ex.label) for ex in examples])
    log_prob = score.log_softmax(-1).gather(1, truth_idx[:, None]).squeeze(1)
    wrong = score.scatter(1, truth_idx[:, None], float("-inf")).max(-1).values
    return RecognitionResult(labels, [labels[int(i)] for i in score.argmax(-1)],
                             [ex.label for ex in examples], log_prob,
                             score.gather(1, truth_idx[:, None]).squeeze(1) - wrong)


def _scores(model, prompts: list[str], candidates: dict[str, list[int]],
            iv: Intervention | None, batch_size: int, progress: bool) -> torch.Tensor:
    """[n, labels]: each label's best first-token logit at the reply's first position."""
    scores = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="recognize", disable=not progress):
        enc = model.encode(prompts[start:start + batch_size], templated=True, padding_side="left")
        rows = None if iv is None else iv.take(slice(start, start + enc["input_ids"].shape[0]),
                                               enc["input_ids"].shape[0])
        with nullcontext() if rows is None else rows.hooks(model):
            logits = model.forward(enc["input_ids"], enc["attention_mask"],
                                   logits_to_keep=1).logits[:, -1].float()
        scores.append(torch.stack([logits[:, ids].max(-1).values
                                   for ids in candidates.values()], -1).cpu())   # [B, labels]
    return torch.cat(scores)
