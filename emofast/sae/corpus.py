"""Text to train SAEs on: documents from a file, a folder or the built-in default.

    docs = load_corpus("default")          # offline on any machine, see below
    docs = load_corpus("notes.txt")        # documents split at blank lines
    docs = load_corpus("data.jsonl")       # one document per line: {"text": ...}
    docs = load_corpus("folder/")          # every .txt and .jsonl below it, sorted by path

The default corpus ships with every CPython and with emofast: the 79 topics of
`pydoc_data.topics` (general English prose about Python) cut into paragraphs, plus the texts of
emofast's own emotion datasets (basic4 sentences, each sev6 scenario with each of its events)
for the emotional register: 3264 documents, 513k characters, 121k SmolLM2 tokens.
"""
from __future__ import annotations

from pathlib import Path

from ..data import load_dataset, load_skeletons, read_jsonl, read_text

DEFAULT = "default"


def load_corpus(spec: str | Path = DEFAULT) -> list[str]:
    """Documents (non-empty strings) of `spec` (see the module docstring)."""
    if str(spec) == DEFAULT:
        return _default()
    path = Path(spec)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl"))
        if not files:
            raise ValueError(f"corpus folder {path} holds no .txt or .jsonl files")
        docs = [d for f in files for d in _file(f)]
    elif path.is_file():
        docs = _file(path)
    else:
        raise FileNotFoundError(f"corpus {str(spec)!r}: neither 'default' nor a file or folder")
    if not docs:
        raise ValueError(f"corpus {path} holds no text")
    return docs


def _file(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        docs = []
        for lineno, obj in read_jsonl(path):
            text = obj.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: needs a string 'text', got {text!r}")
            docs.append(text)
        return [d for d in docs if d.strip()]
    if path.suffix != ".txt":
        raise ValueError(f"corpus file {path}: .txt or .jsonl")
    return _paragraphs(read_text(path))


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _default() -> list[str]:
    import pydoc_data.topics

    docs = [p for name in sorted(pydoc_data.topics.topics)
            for p in _paragraphs(pydoc_data.topics.topics[name])]
    docs += [e.text for e in load_dataset("basic4")]
    for s in load_skeletons("sev6"):
        docs += [f"{s.scenario} {event}" for event in s.event.values()]
    return docs
