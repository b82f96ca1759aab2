"""The recognition task against a plain HF forward per text (no padding, no batching), its
label-token rule, its metrics by hand, and its bad inputs."""
import pytest
import torch

from conftest import make_tiny
from emofast.data import Example
from emofast.eval.recognition import (RecognitionResult, label_tokens, recognition_prompt,
                                      recognize)

# the tests' byte-level tokenizer: first letters must differ (sadness / surprise share "s")
LABELS = ("anger", "happiness", "fear", "disgust")
TEXTS = ["I could scream at them.", "What a lovely sunny day with friends!",
         "Something is moving in the dark hallway.", "The bin smelled rotten and I gagged.",
         "ok", "They lied to me again, unbelievable."]
TRUTH = ["anger", "happiness", "fear", "disgust", "happiness", "anger"]


@pytest.fixture(scope="module")
def model():
    return make_tiny("llama")


def test_scores_equal_a_plain_forward_per_text(model):
    examples = [Example(t, lab) for t, lab in zip(TEXTS, TRUTH)]
    res = recognize(model, examples, labels=LABELS, batch_size=4, progress=False)
    cand = label_tokens(model.tokenizer, LABELS)
    for i, ex in enumerate(examples):
        ids = model.tokenizer(recognition_prompt(model, ex.text), add_special_tokens=False,
                              return_tensors="pt")["input_ids"]
        with torch.no_grad():
            last = model.hf(input_ids=ids).logits[0, -1]
        score = torch.stack([last[c].max() for c in cand.values()])
        t = LABELS.index(ex.label)
        assert res.predicted[i] == LABELS[int(score.argmax())]
        torch.testing.assert_close(res.log_prob_true[i], score.log_softmax(-1)[t], atol=1e-4,
                                   rtol=1e-4)
        wrong = torch.cat([score[:t], score[t + 1:]]).max()
        torch.testing.assert_close(res.margin[i], score[t] - wrong, atol=1e-4, rtol=1e-4)


def test_calibration_subtracts_content_free_scores(model):
    """calibrate=True: each label's score minus its mean score over "N/A", "" and "[MASK]",
    each read by a plain forward."""
    from emofast.eval.recognition import CONTENT_FREE
    examples = [Example(t, lab) for t, lab in zip(TEXTS, TRUTH)]
    res = recognize(model, examples, labels=LABELS, calibrate=True, progress=False)
    cand = label_tokens(model.tokenizer, LABELS)

    def score(text):
        ids = model.tokenizer(recognition_prompt(model, text), add_special_tokens=False,
                              return_tensors="pt")["input_ids"]
        with torch.no_grad():
            last = model.hf(input_ids=ids).logits[0, -1]
        return torch.stack([last[c].max() for c in cand.values()])
    prior = torch.stack([score(t) for t in CONTENT_FREE]).mean(0)
    for i, ex in enumerate(examples):
        s = score(ex.text) - prior
        assert res.predicted[i] == LABELS[int(s.argmax())]
        torch.testing.assert_close(res.log_prob_true[i], s.log_softmax(-1)[LABELS.index(
            ex.label)], atol=1e-4, rtol=1e-4)


def test_label_tokens_drop_shared_first_tokens(model):
    cand = label_tokens(model.tokenizer, LABELS)
    first = {lab: {model.tokenizer(s, add_special_tokens=False)["input_ids"][0]
                   for s in (lab, lab.capitalize())} for lab in LABELS}
    assert cand == {lab: sorted(first[lab]) for lab in LABELS}  # " x": the shared space byte
    with pytest.raises(ValueError, match="label 'sadness': every spelling's first token"):
        label_tokens(model.tokenizer, ("sadness", "surprise"))


def test_metrics_by_hand():
    res = RecognitionResult(("a", "b", "c"), ["a", "b", "b", "c", "a"], ["a", "b", "c", "c", "b"],
                            torch.zeros(5), torch.ones(5))
    assert res.accuracy == 3 / 5
    assert res.per_emotion == {"a": 1.0, "b": 0.5, "c": 0.5}
    assert res.confusion == {"a": {"a": 1, "b": 0, "c": 0}, "b": {"a": 1, "b": 1, "c": 0},
                             "c": {"a": 0, "b": 1, "c": 1}}
    assert res.to_json()["n"] == 5 and res.to_json()["mean_margin"] == 1.0


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="no examples"):
        recognize(model, [], labels=LABELS, progress=False)
    with pytest.raises(ValueError, match="example 0 has label 'joy', not one of anger"):
        recognize(model, [Example("x y", "joy")], labels=LABELS, progress=False)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        recognize(model, [Example("x y", "fear")], labels=LABELS, batch_size=0, progress=False)
