"""What the CPU kernel benchmarks share: the faces they compare (the C++ op when the extension is
built, the torch reference: the baseline) and one benchmarked call of the chosen face."""
import pytest

from emofast.kernels import cpp


def faces(op: str, *extra: str) -> list:
    """The impl parameters of a benchmark of `op` ("cpp" skipped without the extension)."""
    return [pytest.param("cpp", marks=pytest.mark.skipif(not cpp.has(op),
                                                         reason="emofast._C not built")),
            "torch", *extra]


def run_face(benchmark, group: str, impl: str, public, reference, args: tuple, kw: dict):
    """Benchmark `impl` of the op on (args, kw) in benchmark group `group`; returns its output
    and the reference's, to compare."""
    benchmark.group = group
    if impl == "torch":
        out = benchmark(reference, *args, **kw)
    else:
        out = benchmark(public, *args, impl=impl, **kw)
    return out, reference(*args, **kw)
