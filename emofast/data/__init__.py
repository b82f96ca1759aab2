"""Datasets: the ones this project wrote (JSONL beside this file) and loaders for external formats.

    from emofast.data import load_dataset, load_skeletons, sev_prompts
    basic4 = load_dataset("basic4")                 # list[Example]: text, label, span
    sev = load_skeletons("sev6", split="train")     # list[Skeleton]
    prompts = sev_prompts(sev)                      # 18 elicitation prompts per skeleton
    prose = general_texts(20, 300)                  # general English (pydoc_data.topics)

Formats (one JSON object per line; a malformed line is an error naming file and line):
- labelled text: {"text", "label"[, "span": [start, end]]}, span = characters of the
  emotion-bearing word(s), end exclusive.
- SEV skeleton (arXiv 2510.11328): {"skeleton_id", "theme", "scenario",
  "event": {"positive", "neutral", "negative"}[, "split"]}.
- judged reply (the paper's prompted_*_accepted.jsonl): {"gen_text", "emotion", "valence",
  "skeleton_id", "judge": {"match"}, ...}.
- steered replies (the paper's steered_test_labeled.jsonl): {"event_valences": {valence:
  {emotion: text}}, "valence_labels": {valence: {emotion: {"match"}}}, ...}.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

EMOTIONS6 = ("anger", "sadness", "happiness", "fear", "surprise", "disgust")
VALENCES = ("positive", "neutral", "negative")
BUILTIN = {"basic4": "basic4.jsonl", "sev6": "sev6.jsonl", "emo6": "emo6.jsonl"}
SYSTEM_TEMPLATE = "Always reply in {emotion}.\nKeep the reply to at most two sentences."
NEUTRAL_SYSTEM = "Keep the reply to at most two sentences."
# Short first-person openings of a reply that expresses each emotion. Prefilled after a SEV
# prompt they put a model in the state of expressing the emotion, even a model too small to
# follow "Always reply in {emotion}" (SmolLM2-135M mostly apologises instead).
EXPRESSION_OPENERS = {
    "anger": ("This is absolutely infuriating!", "I'm so angry right now.",
              "How dare they do this to me!", "I am furious about this.", "This makes my blood boil."),
    "sadness": ("This makes me so sad.", "I feel heartbroken.", "I'm so sad and disappointed.",
                "My heart feels heavy.", "It just breaks my heart."),
    "happiness": ("This makes me so happy!", "I'm overjoyed!", "What wonderful news, I'm delighted!",
                  "I feel so cheerful right now.", "This fills me with joy!"),
    "fear": ("This terrifies me.", "I'm so scared right now.", "I feel a chill of dread.",
             "I'm afraid of what comes next.", "This fills me with fear."),
    "surprise": ("Wow, I did not see that coming!", "What a shock!", "I'm completely astonished!",
                 "Whoa, that's so unexpected!", "I can't believe it, what a surprise!"),
    "disgust": ("That is disgusting and gross.", "I am disgusted by this.",
                "That is so gross, it makes me want to throw up.", "How revolting and nasty.",
                "Eww, that is disgusting."),
}


@dataclass
class Example:
    """One labelled text. `span` is a character span (end exclusive); `group` ties rows that
    share a scenario-event (used for group-centred directions)."""
    text: str
    label: str
    span: tuple[int, int] | None = None
    group: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Skeleton:
    """A scenario with a positive, neutral and negative event (SEV format)."""
    skeleton_id: str
    theme: str
    scenario: str
    event: dict[str, str]
    split: str | None = None


@dataclass
class Prompt:
    """One chat prompt: `system` may be None (no instruction). `emotion` is the instructed or
    targeted emotion; `group` identifies the scenario-event shared across emotions; `prefill`
    is text placed at the start of the assistant's reply."""
    system: str | None
    user: str
    emotion: str | None
    valence: str
    skeleton_id: str
    prefill: str = ""

    @property
    def group(self) -> str:
        return f"{self.skeleton_id}/{self.valence}"


def _resolve(name_or_path: str | Path) -> Path:
    if str(name_or_path) in BUILTIN:
        return Path(__file__).with_name(BUILTIN[str(name_or_path)])
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a built-in dataset ({', '.join(BUILTIN)}) nor a file")
    return path


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's text; bytes that are not UTF-8 name the file and line."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset "
                         f"{e.start}): save the file as UTF-8") from None


def read_lines(path: str | Path) -> list[str]:
    """The lines of a UTF-8 text file (see `read_text`)."""
    return read_text(path).splitlines()


def read_json(path: str | Path):
    """A UTF-8 JSON file's value; bad JSON names the file and line."""
    path = Path(path)
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; bad JSON or bytes name file and
    line."""
    path = Path(path)
    for lineno, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def _require(obj: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; the line has {sorted(obj)}")


def _labelled(path: Path) -> list[Example]:
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        _require(obj, ("text", "label"), where)
        for key in ("text", "label"):
            if not isinstance(obj[key], str) or not obj[key]:
                raise ValueError(f"{where}: {key!r} must be a non-empty string, got {obj[key]!r}")
        span = obj.get("span")
        if span is not None:
            if (not isinstance(span, list) or len(span) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)
                    or not 0 <= span[0] < span[1] <= len(obj["text"])):
                raise ValueError(f"{where}: span {span} is not [start, end] inside the text "
                                 f"(length {len(obj['text'])})")
            span = (int(span[0]), int(span[1]))
        meta = {k: v for k, v in obj.items() if k not in ("text", "label", "span", "group")}
        out.append(Example(obj["text"], obj["label"], span, obj.get("group"), meta))
    return out


def _judged(path: Path, accepted_only: bool) -> list[Example]:
    out = []
    for lineno, obj in read_jsonl(path):
        _require(obj, ("gen_text", "emotion", "valence", "skeleton_id"), f"{path}:{lineno}")
        if accepted_only and obj.get("judge", {}).get("match", 1) != 1:
            continue
        out.append(Example(obj["gen_text"], obj["emotion"], None,
                           f"{obj['skeleton_id']}/{obj['valence']}",
                           {"valence": obj["valence"], "skeleton_id": obj["skeleton_id"]}))
    return out


def _steered(path: Path, accepted_only: bool) -> list[Example]:
    out = []
    for lineno, obj in read_jsonl(path):
        _require(obj, ("skeleton_id", "event_valences"), f"{path}:{lineno}")
        labels = obj.get("valence_labels", {})
        for valence, by_emotion in obj["event_valences"].items():
            for emotion, text in by_emotion.items():
                match = labels.get(valence, {}).get(emotion, {}).get("match", 1)
                if accepted_only and match != 1:
                    continue
                out.append(Example(text, emotion, None, f"{obj['skeleton_id']}/{valence}",
                                   {"valence": valence, "judge_match": match}))
    return out


def load_dataset(name_or_path: str | Path, *, accepted_only: bool = True) -> list[Example]:
    """Load labelled texts from a built-in name ("basic4") or a JSONL file in any supported
    format (sniffed from the first line). `accepted_only` keeps judged replies with match 1."""
    path = _resolve(name_or_path)
    first = next(read_jsonl(path), (0, None))[1]
    if first is None:
        raise ValueError(f"{path}: no records")
    if "gen_text" in first:
        return _judged(path, accepted_only)
    if "event_valences" in first:
        return _steered(path, accepted_only)
    if "scenario" in first and "event" in first:
        raise ValueError(f"{path} holds SEV skeletons, not labelled texts: use load_skeletons()")
    return _labelled(path)


def neutral_sentences(n: int | None = None) -> list[str]:
    """basic4's neutral sentences (the first n): ordinary text for language-model preservation."""
    return [e.text for e in load_dataset("basic4") if e.label == "neutral"][:n]


def load_skeletons(name_or_path: str | Path = "sev6", *, split: str | None = None) -> list[Skeleton]:
    """Load SEV skeletons; `split` ("train"/"test") keeps only that split (error if none have it)."""
    path = _resolve(name_or_path)
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        _require(obj, ("skeleton_id", "scenario", "event"), where)
        _require(obj["event"], VALENCES, f"{where} (event)")
        out.append(Skeleton(obj["skeleton_id"], obj.get("theme", ""), obj["scenario"],
                            {v: obj["event"][v] for v in VALENCES}, obj.get("split")))
    if split is not None:
        kept = [s for s in out if s.split == split]
        if not kept:
            raise ValueError(f"{path}: no skeleton has split {split!r} "
                             f"(splits present: {sorted({str(s.split) for s in out})})")
        return kept
    return out


def sev_prompts(skeletons: list[Skeleton], *, emotions: tuple[str, ...] | None = EMOTIONS6,
                valences: tuple[str, ...] = VALENCES, instructed: bool = True,
                prefill: bool = False) -> list[Prompt]:
    """Elicitation prompts: each skeleton x valence x emotion. With `instructed=False` the system
    prompt carries no emotion (the unsteered/steered condition) but the target emotion is kept.
    `prefill` starts each reply with one of EXPRESSION_OPENERS[emotion], rotating per skeleton."""
    out = []
    for k, s in enumerate(skeletons):
        for valence in valences:
            user = f"{s.scenario}\n{s.event[valence]}"
            for emotion in emotions or (None,):
                system = SYSTEM_TEMPLATE.format(emotion=emotion) if instructed and emotion else NEUTRAL_SYSTEM
                opener = ""
                if prefill:
                    if emotion not in EXPRESSION_OPENERS:
                        raise ValueError(f"no expression openers for emotion {emotion!r}: have "
                                         f"{', '.join(EXPRESSION_OPENERS)}")
                    opener = EXPRESSION_OPENERS[emotion][k % len(EXPRESSION_OPENERS[emotion])]
                out.append(Prompt(system, user, emotion, valence, s.skeleton_id, opener))
    return out


def labelled_sample(spec: str, emotions: Sequence[str], n: int | None, seed: int
                    ) -> list[Example]:
    """DATASET[:SPLIT] (a built-in name or a labelled JSONL; SPLIT filters its 'split' field)
    -> up to n texts per emotion (a seeded sample; n None: all), grouped by emotion in
    `emotions` order."""
    name, _, split = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
    examples = load_dataset(name)
    if split:
        examples = [e for e in examples if e.meta.get("split") == split]
        if not examples:
            raise ValueError(f"{name} has no texts of split {split!r}")
    out = []
    for emotion in emotions:
        mine = [e for e in examples if e.label == emotion]
        if not mine:
            raise ValueError(f"{spec} has no texts labelled {emotion!r}")
        if n is not None and n < len(mine):
            mine = random.Random(f"{seed}:{emotion}").sample(mine, n)
        out += mine
    return out


def general_texts(n: int, chars: int) -> list[str]:
    """n paragraphs of pydoc_data.topics spread over its topics, each cut to at most `chars`
    characters at a word boundary."""
    import pydoc_data.topics as topics

    paras = [p.strip() for name in sorted(topics.topics) for p in topics.topics[name].split("\n\n")
             if len(p.strip()) >= 200 and not p.lstrip().startswith((">>>", "..."))]
    step = max(1, len(paras) // n)
    out = []
    for p in paras[::step][:n]:
        p = " ".join(p.split())
        out.append(p if len(p) <= chars else p[:chars].rsplit(" ", 1)[0])
    return out
