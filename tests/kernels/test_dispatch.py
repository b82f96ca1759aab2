"""The dispatch rule shared by every op: per call, by device; forced impls raise when unavailable."""
import warnings

import pytest
import torch

from emofast.kernels import cpp, dispatch, steer_add


@pytest.fixture
def no_extension(monkeypatch):
    """Pretend emofast._C failed to load."""
    monkeypatch.setattr(cpp, "_state", {})

    def fail(*a, **k):
        raise ImportError("simulated: no emofast._C")

    import builtins
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__",
                        lambda name, *a, **k: fail() if name == "emofast._C" else real_import(name, *a, **k))


def test_missing_extension_falls_back_to_torch_and_says_so_once(no_extension):
    x = torch.zeros(2, 3, 4)
    with pytest.warns(UserWarning, match="C\\+\\+ extension not loaded"):
        assert dispatch.choose("steer_add", x, None) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # a second call must stay silent
        assert dispatch.choose("steer_add", x, None) == "torch"
        out = steer_add(x, torch.tensor([0, -1]), torch.ones(1, 4), 2.0)
    assert out[0].eq(2).all() and out[1].eq(0).all()
    with pytest.raises(RuntimeError, match="impl='cpp' asked for but the C\\+\\+ extension is not loaded"):
        dispatch.choose("steer_add", x, "cpp")


def test_forced_impls_and_environment_override(monkeypatch):
    x = torch.zeros(2, 3)
    assert dispatch.choose("steer_add", x, "torch") == "torch"
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.choose("steer_add", x, "cuda")
    monkeypatch.setenv("EMOFAST_DISABLE_TRITON", "1")
    with pytest.raises(RuntimeError, match="EMOFAST_DISABLE_TRITON is set"):
        dispatch.choose("steer_add", x, "triton")
    monkeypatch.delenv("EMOFAST_DISABLE_TRITON")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="needs CUDA tensors"):
        dispatch.choose("steer_add", x, "triton")


def test_a_stale_extension_is_refused_once_with_the_reason(monkeypatch):
    """A build whose planner names do not match (or that predates planner_names) is not used:
    one warning that says why and how to fix it, then the torch reference everywhere."""
    monkeypatch.setattr(cpp, "_state", {})
    monkeypatch.setattr(cpp, "planner_names", lambda: None)      # a build from before it
    with pytest.warns(UserWarning, match="extension is stale, rebuild it with `make install`"):
        assert cpp.ops() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cpp.has("steer_add")
        assert dispatch.choose("steer_add", torch.zeros(2, 3, 4), None) == "torch"
