"""One case per class of bad input, fault and interruption, from the command line and from
Python: each ends in a one-line message that names what to fix (exit code 2 on the command
line; 130 for Ctrl-C), before any expensive work, and leaves an existing output folder as it
was. Tiny random models stand in for the real one (emofast.cli.common.load is patched)."""
import json
import subprocess
import sys

import pytest
import torch

import emofast.cli as cli
import emofast.cli.common
import emofast.cli.steer
import emofast.cli.sweep
from conftest import make_tiny
from emofast.analysis import EmotionDirections, LinearProbe
from emofast.interventions import Steering, generate
from emofast.models import load_model
from emofast.sweeps import KL, ProbeProb, sweep
from emofast.sweeps.store import SweepStore
from oracles import PROMPTS, loud


def no_directions(*args, **kwargs):
    raise AssertionError("directions were computed before the cheap checks")


@pytest.fixture
def tiny(monkeypatch):
    model = loud(make_tiny("llama"))
    monkeypatch.setattr(emofast.cli.common, "load", lambda args: model)
    monkeypatch.setattr(emofast.cli.steer, "default_directions", no_directions)
    monkeypatch.setattr(emofast.cli.sweep, "default_directions", no_directions)
    return model


@pytest.fixture
def random_directions(tiny, monkeypatch):
    v = torch.nn.functional.normalize(torch.randn(tiny.n_layers, 6, tiny.d_model), dim=-1)
    dirs = EmotionDirections(v, ["anger", "sadness", "happiness", "fear", "surprise", "disgust"],
                             list(range(tiny.n_layers)))
    for module in (emofast.cli.steer, emofast.cli.sweep):
        monkeypatch.setattr(module, "default_directions", lambda *a, **k: dirs)
    return dirs


def files(tmp_path):
    """Bad input files, by name."""
    out = {}
    for name, text in {"null.jsonl": '{"prompt": null}\n', "number.jsonl": '{"prompt": 3}\n',
                       "notjson.jsonl": '{"prompt": "ok"}\n{oops\n', "empty.jsonl": "",
                       "float.json": '[{"edits": [{"layer": 3.7, "site": "attn_z", "unit": 1.9}]}]',
                       "strlayer.json": '[{"edits": [{"layer": "1", "site": "attn_z", "unit": 0}]}]',
                       "boolunit.json": '[{"edits": [{"layer": 1, "site": "attn_z", "unit": true}]}]',
                       "site.json": '[{"edits": [{"layer": 1, "site": "attn", "unit": 0}]}]',
                       "key.json": '[{"edits": [{"layer": 1, "site": "attn_z", "unit": 0, '
                                   '"scale": 2}]}]',
                       "patch.json": '[{"edits": [{"layer": 1, "site": "attn_z", "unit": 0, '
                                     '"mode": "patch"}]}]'}.items():
        (tmp_path / name).write_text(text)
        out[name] = tmp_path / name
    (tmp_path / "latin1.txt").write_bytes(b"fine\n\xff\xfe bad\n")
    out["latin1.txt"] = tmp_path / "latin1.txt"
    return out


SWEEP = ["sweep", "--quiet", "--prompts", "PROMPTS", "--variants", "heads", "--out", "OUT"]
STEER = ["steer", "--quiet", "--emotion", "anger", "--layers", "1", "--alpha", "2", "--prompt",
         "hi", "--max-new-tokens", "3"]


def with_flags(base, **flags):
    """base with each --flag set (replaced if present, added if not)."""
    argv = list(base)
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if value is None:  # a switch
            argv.append(flag)
        elif flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    return argv


# (argv, exit code, words the one-line message holds)
CLI_CASES = [
    (with_flags(STEER, alpha="nan"), 2, "finite number"),
    (with_flags(STEER, alpha="inf"), 2, "finite number"),
    (with_flags(STEER, layers="40"), 2, "layer 40 out of range"),
    (with_flags(STEER, layers="2-1"), 2, "start after end"),
    (with_flags(STEER, max_new_tokens="0"), 2, "integer >= 1"),
    (with_flags(STEER, scope="from:2"), 2, "steering does not support scope from:2"),
    (with_flags(STEER, max_new_tokens="600"), 2, "passes the model's context of 512"),
    (with_flags(STEER, emotion="joy"), 2, "default sev6 directions have"),
    (with_flags(SWEEP, limit="0"), 2, "integer >= 1"),
    (with_flags(SWEEP, limit="-1"), 2, "integer >= 1"),
    (with_flags(SWEEP, batch_size="-1"), 2, "integer >= 1"),
    (with_flags(SWEEP, batch_size="2.5"), 2, "not an integer"),
    (with_flags(SWEEP, memory_budget="nan"), 2, "finite number"),
    (with_flags(SWEEP, memory_budget="0"), 2, "must be > 0"),
    (with_flags(SWEEP, variants="steer:anger:1", alphas="nan,2"), 2, "finite number"),
    (with_flags(SWEEP, variants="neurons:2-1"), 2, "start after end"),
    (with_flags(SWEEP, scope="bogus"), 2, "unknown scope"),
    (with_flags(SWEEP, metric="projection", emotion="anger", layer="99"), 2,
     "metric layer must be an integer in 0..2"),
    (with_flags(SWEEP, device="tpu"), 2, "unknown 'tpu'"),
    (with_flags(SWEEP, variants="steer:joy:1"), 2, "emotion(s) ['joy']: the default sev6"),
    (with_flags(SWEEP, metric="projection", emotion="joy"), 2, "emotion(s) ['joy']"),
    (with_flags(SWEEP, variants="steer:anger:1", metric="logit_diff"), 2,
     "needs tokens_a and tokens_b"),
    (with_flags(SWEEP, dtype="float64"), 2, "invalid choice"),
    (with_flags(SWEEP, prompts="missing.jsonl"), 2, "neither a built-in dataset"),
    (with_flags(SWEEP, prompts="null.jsonl"), 2, "null.jsonl:1: 'prompt' must be a string"),
    (with_flags(SWEEP, prompts="number.jsonl"), 2, "number.jsonl:1: 'prompt' must be a string"),
    (with_flags(SWEEP, prompts="notjson.jsonl"), 2, "notjson.jsonl:2: not valid JSON"),
    (with_flags(SWEEP, prompts="empty.jsonl"), 2, "holds no prompts"),
    (with_flags(SWEEP, prompts="latin1.txt"), 2, "latin1.txt:2: not UTF-8"),
    (with_flags(SWEEP, variants="float.json"), 2, "layer must be an integer, got 3.7"),
    (with_flags(SWEEP, variants="strlayer.json"), 2, "layer must be an integer, got '1'"),
    (with_flags(SWEEP, variants="boolunit.json"), 2, "unit must be an integer, got True"),
    (with_flags(SWEEP, variants="site.json"), 2, "site 'attn': one of mlp_act"),
    (with_flags(SWEEP, variants="key.json"), 2, "unknown key(s) ['scale']"),
    (with_flags(SWEEP, variants="patch.json"), 2, "mode 'patch': zero or mean"),
    (["judge", "train", "--train", "x.jsonl", "--out", "h", "--l2", "-1"], 2, "must be >= 0"),
    (["judge", "train", "--train", "x.jsonl", "--out", "h", "--max-iter", "0"], 2, ">= 1"),
    (["judge", "eval", "--data", "x.jsonl", "--batch-size", "0"], 2, ">= 1"),
]


def _resolve(argv, tmp_path, paths):
    out = []
    for a in argv:
        if a == "PROMPTS":
            a = str(tmp_path / "prompts.txt")
        elif a == "OUT":
            a = str(tmp_path / "out")
        elif a in paths:
            a = str(paths[a])
        elif a.endswith((".json", ".jsonl", ".txt")):
            a = str(tmp_path / a)
        out.append(a)
    return out


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".emofast.lock"}


@pytest.fixture
def existing_run(tiny, tmp_path):
    """A finished sweep in tmp_path/out (what a bad rerun must leave alone)."""
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    assert cli.main(_resolve(SWEEP, tmp_path, {})) == 0
    return snapshot(tmp_path / "out")


def run_cli(argv) -> int:
    """cli.main's exit code, argparse's refusals (SystemExit) included."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.parametrize("argv, code, words", CLI_CASES, ids=lambda x: None)
def test_cli_bad_input(existing_run, tmp_path, capsys, argv, code, words):
    capsys.readouterr()
    got = run_cli(_resolve(argv, tmp_path, files(tmp_path)))
    err = capsys.readouterr().err
    message = [line for line in err.splitlines() if "error" in line]
    assert got == code, err
    assert len(message) == 1 and words in message[0], err
    assert snapshot(tmp_path / "out") == existing_run


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_on_a_cpu_machine(tiny, capsys):
    assert run_cli(with_flags(STEER, device="cuda")) == 2
    assert "no CUDA device; use cpu" in capsys.readouterr().err


def test_cli_missing_directions_folder(tiny, tmp_path, capsys, monkeypatch):
    from emofast.analysis import default_directions
    monkeypatch.setattr(emofast.cli.steer, "default_directions", default_directions)
    assert run_cli(with_flags(STEER, directions=str(tmp_path / "nope"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0]


def test_cli_ignored_flags_warn(existing_run, tmp_path, capsys):
    argv = _resolve(with_flags(SWEEP, tokens_a="65", emotion="anger", alphas="2"), tmp_path, {})
    assert run_cli(argv + ["--out", str(tmp_path / "other")]) == 0
    err = capsys.readouterr().err
    for flag in ("--tokens-a", "--emotion", "--alphas"):
        assert f"warning: {flag} is ignored with --metric kl" in err


@pytest.mark.parametrize("layers", ["1", "0-2"])  # finite but past fp32 once squared; inf
def test_cli_steer_too_strong_is_an_error(random_directions, capsys, layers):
    assert run_cli(with_flags(STEER, alpha="1e30", layers=layers)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overflow" in err[0] and "lower alpha" in err[0], err


def test_cli_sweep_steer_too_strong_names_the_variant(random_directions, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    argv = _resolve(with_flags(SWEEP, variants="steer:anger:1", alphas="2,1e3,1e10,1e20"),
                    tmp_path, {})
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "variant 3 gives a non-finite metric" in err[0], err


def test_cli_damaged_part_refused_then_repaired(existing_run, tmp_path, capsys):
    out = tmp_path / "out"
    part = sorted((out / "parts").glob("*.safetensors"))[0]
    part.write_bytes(part.read_bytes()[:-4])
    damaged = snapshot(out)
    argv = _resolve(SWEEP, tmp_path, {})
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert part.name in err and "--repair" in err and len(err.strip().splitlines()) == 1
    assert snapshot(out) == damaged
    assert run_cli(argv + ["--repair"]) == 0
    assert json.loads((out / "results.json").read_bytes()) == \
        json.loads(existing_run["results.json"]) | {"elapsed_s": ANY, "variants_per_s": ANY,
                                                      "resumed": ANY}


def test_cli_second_writer_refused(existing_run, tmp_path, capsys):
    code = ("import sys, time; from emofast.report.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        assert run_cli(_resolve(SWEEP, tmp_path, {})) == 2
    finally:
        p.kill()
        p.wait()
    assert "is being written by pid" in capsys.readouterr().err
    assert snapshot(tmp_path / "out") == existing_run


def test_cli_ctrl_c_says_what_is_saved(tiny, tmp_path, capsys, monkeypatch):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    add, calls = SweepStore.add, []

    def add_then_interrupt(self, ids, values):
        add(self, ids, values)
        calls.append(len(ids))
        if len(calls) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(SweepStore, "add", add_then_interrupt)
    argv = _resolve(with_flags(SWEEP, engine="loop", variants="neurons:0-1"), tmp_path, {})
    assert run_cli(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"emofast sweep: sweep interrupted: {sum(calls)} of "
                   f"{2 * tiny.d_mlp} variants are saved in {tmp_path / 'out'}; "
                   "run the same sweep again to resume"]
    monkeypatch.setattr(SweepStore, "add", add)
    assert run_cli(argv) == 0
    assert f"{sum(calls)} resumed" in capsys.readouterr().out


class _Any:
    def __eq__(self, other):
        return True


ANY = _Any()


def _probe_at(site):
    d = 32
    return LinearProbe(torch.randn(2, d), torch.zeros(2), torch.zeros(d), torch.ones(d),
                       ["a", "b"], site=site)


def _returns_three(model):
    with model.hooks([("L1.resid_post", lambda act, site: 3)]):
        model.forward(*model.encode(["hi"]).values())


# (what to call on the tiny llama, exception, words of its message)
API_CASES = [
    (lambda m: m.cache("hello", ["L1.resid_post"]), TypeError, "got one string"),
    (lambda m: m.cache([None], ["L1.resid_post"]), TypeError, "cache texts[0] must be a string"),
    (_returns_three, TypeError, "hook on L1.resid_post returned a int"),
    (lambda m: m.cache(["x" * 600], ["L1.resid_post"]), ValueError,
     "600 tokens, more than the model's context of 512"),
    (lambda m: sweep(m, PROMPTS, [[]], ProbeProb(_probe_at("L2.resid_post"), "a", layer=0),
                     progress=False), ValueError, "fitted on L2.resid_post"),
    (lambda m: sweep(m, "hello", [[]], KL(), progress=False), TypeError, "got one string"),
    (lambda m: sweep(m, PROMPTS, [[]], KL(), batch_size=-1, progress=False), ValueError,
     "batch_size must be an integer >= 1"),
    (lambda m: sweep(m, PROMPTS, [[]], KL(), batch_size=2.0, progress=False), TypeError,
     "batch_size must be an integer, got 2.0"),
    (lambda m: generate(m, ["hi"], max_new_tokens=0, progress=False), ValueError,
     "max_new_tokens must be an integer >= 1"),
    (lambda m: generate(m, "hi", progress=False), TypeError, "list of prompts"),
    (lambda m: Steering.single(EmotionDirections(torch.ones(1, 1, 32) / 32 ** 0.5, ["joy"], [0]),
                               "joy", [0], float("nan")), ValueError, "finite"),
    (lambda m: load_model("anything", device="tpu"), ValueError, "unknown device 'tpu'"),
    (lambda m: load_model("anything", device="cuda:7"), ValueError, "cuda"),
]


@pytest.mark.parametrize("call, error, words", API_CASES)
def test_api_bad_input(tiny_llama, call, error, words):
    with pytest.raises(error) as info:
        call(tiny_llama)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_probe_site_survives_save_and_load(tmp_path):
    probe = _probe_at("L2.resid_post")
    probe.save(tmp_path / "probe")
    loaded = LinearProbe.load(tmp_path / "probe")
    assert loaded.site == "L2.resid_post" and loaded.layer == 2
    assert ProbeProb(loaded, "a").layer == 2  # read at its own layer by default


@pytest.mark.parametrize("argv, words", [
    (with_flags(STEER, prompt="", no_chat=None), "prompt 0 has no tokens"),
    (with_flags(SWEEP, variants="steer:anger:1", alphas="2,2"), "each number once"),
])
def test_cli_more_bad_input(random_directions, tmp_path, capsys, argv, words):
    argv = _resolve(argv, tmp_path, {})
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_cli_out_is_a_file(tiny, tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (tmp_path / "out").write_text("not a folder")
    assert run_cli(_resolve(SWEEP, tmp_path, {})) == 2
    assert "out is a file: give an output folder" in capsys.readouterr().err


def test_api_edit_fields_are_integers():
    from emofast.sweeps import Edit
    with pytest.raises(TypeError, match="Edit layer must be an integer, got 1.7"):
        Edit(1.7, "attn_z", [0])
    with pytest.raises(TypeError, match="Edit unit must be an integer, got True"):
        Edit(1, "attn_z", [True])
    assert Edit(torch.tensor(1), "attn_z", torch.tensor([0, 2])).units == (0, 2)
