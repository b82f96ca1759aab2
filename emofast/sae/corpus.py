"""Text to train SAEs on: documents from a file, a folder, a `datasets` dataset or the built-in
default.

    docs = load_corpus("default")          # offline on any machine, see below
    docs = load_corpus("notes.txt")        # documents split at blank lines
    docs = load_corpus("data.jsonl")       # one document per line: {"text": ...}
    docs = load_corpus("folder/")          # every .txt and .jsonl below it, sorted by path
    docs = load_corpus("hf:json", data_files="shards/*.jsonl")      # local files via `datasets`
    docs = load_corpus("hf:wikitext:wikitext-103-raw-v1", max_docs=50_000)   # hub, streamed

"hf:NAME[:CONFIG]" loads with `datasets.load_dataset(NAME, CONFIG, split=, data_files=,
streaming=True)` (the optional `datasets` package: pip install datasets): local builders (json,
text, csv, parquet with data_files) work offline, hub datasets stream when online and stop after
max_docs documents; `column` names the text field, empty texts are dropped.

The default corpus ships with every CPython and with emofast: the 79 topics of
`pydoc_data.topics` (general English prose about Python) cut into paragraphs, plus the texts of
emofast's own emotion datasets (basic4 sentences, each sev6 scenario with each of its events)
for the emotional register: 3264 documents, 513k characters, 121k SmolLM2 tokens.
"""
from __future__ import annotations

from pathlib import Path

from ..data import load_dataset, load_skeletons, read_jsonl, read_text
from ..validation import positive_int

DEFAULT = "default"
HF_PREFIX = "hf:"


def load_corpus(spec: str | Path = DEFAULT, *, split: str = "train", column: str = "text",
                data_files: str | list[str] | None = None, max_docs: int | None = None
                ) -> list[str]:
    """Documents (non-empty strings) of `spec` (see the module docstring); split, column,
    data_files are for "hf:" datasets, max_docs for any source (the first max_docs)."""
    if max_docs is not None:
        positive_int(max_docs, "max_docs")
    if str(spec).startswith(HF_PREFIX):
        return _datasets(str(spec)[len(HF_PREFIX):], split, column, data_files, max_docs)
    if data_files is not None:
        raise ValueError("data_files is for 'hf:' corpora (e.g. 'hf:json')")
    return _local(spec)[:max_docs]


def _local(spec: str | Path) -> list[str]:
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
        raise FileNotFoundError(f"corpus {str(spec)!r}: neither 'default', 'hf:<dataset>' nor a "
                                "file or folder")
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
    docs += [e.text for e in load_dataset("basic4") if e.label != "neutral"]  # held out (below)
    for s in load_skeletons("sev6"):
        docs += [f"{s.scenario} {event}" for event in s.event.values()]
    return docs


def _datasets(name: str, split: str, column: str, data_files, max_docs: int | None) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError("an 'hf:' corpus needs the datasets package: pip install datasets "
                          "(or: pip install 'emofast[corpora]')") from None
    path, _, config = name.partition(":")
    if not path:
        raise ValueError("an 'hf:' corpus names a dataset: hf:NAME[:CONFIG], e.g. hf:json")
    where = f"corpus hf:{name}"
    try:
        ds = datasets.load_dataset(path, config or None, split=split, data_files=data_files,
                                   streaming=True)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as e:
        raise ValueError(f"{where} (split {split!r}) could not be loaded: {e}") from None
    docs = []
    for i, row in enumerate(ds):
        if column not in row:
            raise ValueError(f"{where}: row {i} has no column {column!r} (it has "
                             f"{', '.join(map(repr, row))}): pass column=")
        text = row[column]
        if not isinstance(text, str):
            raise ValueError(f"{where}: row {i}'s {column!r} is {type(text).__name__}, not text")
        if text.strip():
            docs.append(text)
            if max_docs is not None and len(docs) >= max_docs:
                break
    if not docs:
        raise ValueError(f"{where} (split {split!r}) holds no text in column {column!r}")
    return docs
