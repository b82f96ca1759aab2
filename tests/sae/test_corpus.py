"""load_corpus: the built-in default (offline, no ../shared, the held-out neutral sentences left
out), local .txt / .jsonl files and folders, `datasets` corpora from local files, and every bad
source one clear error."""
import json
import sys

import pytest

from emofast.data import neutral_sentences
from emofast.sae.corpus import load_corpus


def test_default_corpus_is_built_in_and_leaves_the_held_out_text_out():
    docs = load_corpus()
    assert len(docs) == 3136 and sum(map(len, docs)) == 505514
    assert all(d.strip() for d in docs)
    assert not set(neutral_sentences()) & set(docs)
    assert load_corpus(max_docs=5) == docs[:5]


def test_local_files_and_folders(tmp_path):
    (tmp_path / "a.txt").write_text("first para\nstill first\n\nsecond\n\n\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text('{"text": "one"}\n{"text": "  "}\n{"text": "two"}\n')
    assert load_corpus(tmp_path / "a.txt") == ["first para\nstill first", "second"]
    assert load_corpus(tmp_path) == ["first para\nstill first", "second", "one", "two"]
    (tmp_path / "c.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match=r"c.jsonl:1: needs a string 'text'"):
        load_corpus(tmp_path / "c.jsonl")
    with pytest.raises(FileNotFoundError, match="neither 'default', 'hf:<dataset>'"):
        load_corpus(tmp_path / "nope")
    with pytest.raises(ValueError, match="data_files is for 'hf:' corpora"):
        load_corpus(tmp_path / "a.txt", data_files="x")
    with pytest.raises(ValueError, match="max_docs must be an integer >= 1"):
        load_corpus(max_docs=0)


def test_datasets_corpora_from_local_files(tmp_path):
    pytest.importorskip("datasets")   # installed by `make install`; optional for users
    rows = [{"body": f"document {i}", "n": i} for i in range(7)] + [{"body": "", "n": 7}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    files = str(tmp_path / "d.jsonl")
    assert load_corpus("hf:json", data_files=files, column="body") == [
        f"document {i}" for i in range(7)]
    assert load_corpus("hf:json", data_files=files, column="body", max_docs=3) == [
        "document 0", "document 1", "document 2"]
    (tmp_path / "t.txt").write_text("line one\nline two\n")
    assert load_corpus("hf:text", data_files=str(tmp_path / "t.txt")) == ["line one", "line two"]
    with pytest.raises(ValueError, match="has no column 'text' \\(it has 'body', 'n'\\)"):
        load_corpus("hf:json", data_files=files)
    with pytest.raises(ValueError, match="'n' is int, not text"):
        load_corpus("hf:json", data_files=files, column="n")
    with pytest.raises(ValueError, match="corpus hf:json .*could not be loaded"):
        load_corpus("hf:json", data_files=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="names a dataset"):
        load_corpus("hf:")


def test_datasets_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        load_corpus("hf:json", data_files="x.jsonl")
