"""Dataset files and loaders: the shipped datasets, external formats, and malformed input."""
import json
from pathlib import Path

import pytest

from emofast.data import (EMOTIONS6, EXPRESSION_OPENERS, load_dataset, load_skeletons,
                          sev_prompts)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "emotion-circuits"


def test_basic4_shipped_dataset():
    data = load_dataset("basic4")
    counts = {label: sum(e.label == label for e in data) for label in
              ("gratitude", "anger", "apology", "neutral")}
    assert min(counts.values()) >= 100 and len(counts) == 4
    assert len({e.text for e in data}) == len(data)
    for e in data:
        if e.label == "neutral":
            assert e.span is None
        else:
            word = e.text[e.span[0]:e.span[1]]
            assert word.strip() == word and word, e.text
    assert len({len(e.text.split()) for e in data}) > 15      # varied lengths


def test_emo6_shipped_dataset():
    """emo6 (for the recognition task): 120 texts per Ekman emotion, 8 topics evenly, a third
    without an emotion word, a fixed 80 / 40 train / test split per emotion."""
    data = load_dataset("emo6")
    assert len(data) == 720 and len({e.text for e in data}) == 720
    for emotion in EMOTIONS6:
        rows = [e for e in data if e.label == emotion]
        assert len(rows) == 120
        assert sum(not e.meta["explicit"] for e in rows) == 40
        assert sum(e.meta["split"] == "test" for e in rows) == 40
        topics = {t: sum(e.meta["topic"] == t for e in rows) for t in
                  {e.meta["topic"] for e in data}}
        assert len(topics) == 8 and set(topics.values()) == {15}
    implicit = [e.text.lower() for e in data if not e.meta["explicit"]]
    for word in ("angry", "furious", "sad", "happy", "afraid", "scared", "surprised",
                 "disgusted", "joy", "fear"):
        assert not any(f" {word} " in f" {t} " for t in implicit), word
    assert len({len(e.text.split()) for e in data}) > 25      # varied lengths


def test_sev6_shipped_skeletons_and_prompts():
    train, test = load_skeletons("sev6", split="train"), load_skeletons("sev6", split="test")
    assert len(train) + len(test) >= 40 and test
    assert not {s.skeleton_id for s in train} & {s.skeleton_id for s in test}
    prompts = sev_prompts(train[:2])
    assert len(prompts) == 2 * 3 * 6
    assert prompts[0].system.startswith(f"Always reply in {EMOTIONS6[0]}.")
    assert prompts[0].user == f"{train[0].scenario}\n{train[0].event['positive']}"
    plain = sev_prompts(train[:2], emotions=None, instructed=False)
    assert len(plain) == 6 and all("Always" not in p.system for p in plain)
    filled = sev_prompts(train[:2], instructed=False, prefill=True)
    assert filled[0].prefill == EXPRESSION_OPENERS[filled[0].emotion][0]
    assert filled[18].prefill == EXPRESSION_OPENERS[filled[18].emotion][1]   # rotates per skeleton


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/emotion-circuits not beside the repo")
def test_external_paper_files_load():
    assert len(load_dataset(SHARED / "prompted_sev_accepted.jsonl")) == 2847
    assert len(load_dataset(SHARED / "prompted_test_accepted.jsonl")) == 2850
    assert len(load_dataset(SHARED / "prompted_test_rejected.jsonl", accepted_only=False)) == 30
    steered = load_dataset(SHARED / "steered_test_labeled.jsonl", accepted_only=False)
    assert len(steered) == 160 * 18 and {e.label for e in steered} == set(EMOTIONS6)
    assert len(load_skeletons(SHARED / "sev.jsonl")) == 160
    assert len(load_skeletons(SHARED / "test_set.jsonl")) == 160


def test_malformed_input_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "a"}\n{"text": "broken"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        load_dataset(bad)
    bad.write_text('{"text": "ok", "label": "a"}\n\n{"text": "no label"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:3: missing key\(s\) \['label'\]"):
        load_dataset(bad)
    bad.write_text(json.dumps({"text": "abc", "label": "a", "span": [2, 9]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: span \[2, 9\] is not"):
        load_dataset(bad)
    with pytest.raises(ValueError, match="use load_skeletons"):
        load_dataset(Path(__file__).parents[2] / "emofast" / "data" / "sev6.jsonl")
    with pytest.raises(FileNotFoundError, match="neither a built-in dataset"):
        load_dataset("basic5")
    with pytest.raises(ValueError, match="no skeleton has split 'dev'"):
        load_skeletons("sev6", split="dev")
