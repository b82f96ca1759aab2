"""The brittleness test on synthetic arms with a planted answer."""
import math
import random

import pytest

from emofast.quant.arms import Arm
from emofast.quant.profile import EMOTION_METRICS, ArmResult
from emofast.quant.verdict import brittleness_test


def arm(kind, kl, value, region=None, bits=3, name=None, rng=None):
    metrics = {"kl_general": kl}
    for m in EMOTION_METRICS:
        metrics[m] = value
    noise = (lambda: rng.gauss(0, 0.002)) if rng else (lambda: 0.0)
    halves = {m: [value + noise(), value + noise()] for m in EMOTION_METRICS}
    a = Arm(name or f"{kind} {region}", kind, "rtn:3:32:asym", (0,), region=region, bits=bits)
    return ArmResult(a, {}, {}, {}, {}, {}, {}, {}, metrics, halves, 0.0)


def synthetic(late_drop: float, seed: int = 0, n_null: int = 30):
    rng = random.Random(seed)
    out = []
    for i in range(n_null):
        kl = math.exp(rng.uniform(-3, 0))
        out.append(arm("random", kl, 0.9 - 0.05 * math.log(kl) * -1 + rng.gauss(0, 0.01),
                       name=f"random {i}", rng=rng))

    def expected(kl):
        return 0.9 + 0.05 * math.log(kl)
    for region, kl in (("early", 0.8), ("middle", 0.3), ("late", 0.1)):
        drop = late_drop if region == "late" else 0.0
        for bits, f in ((2, 3.0), (3, 1.0), (4, 0.3)):
            out.append(arm("region", kl * f, expected(kl * f) - drop, region, bits,
                           name=f"{region} rtn{bits}", rng=rng))
    return out


def test_a_planted_late_loss_is_supported():
    t = brittleness_test(synthetic(late_drop=0.2, n_null=70), headline_bits=3, n_boot=300)
    row = t["metrics"]["feature_r_emotion"]
    assert row["residual"]["late"] == pytest.approx(-0.2, abs=0.02)
    assert row["p_late"] == 1 / 71 and row["p_late_holm"] == pytest.approx(3 / 71)
    assert row["holds"] and t["verdict"].startswith("Supported")
    assert t["smallest_possible_p"] == pytest.approx(1 / 71)
    assert row["reliability"] > 0.9             # halves agree: the planted values dominate


def test_no_late_loss_is_not_supported_and_the_resolution_is_named():
    t = brittleness_test(synthetic(late_drop=0.0), headline_bits=3, n_boot=300)
    assert not any(r["holds"] for r in t["metrics"].values())
    assert t["verdict"].startswith("Not supported")
    few = brittleness_test(synthetic(late_drop=0.2, n_null=5), headline_bits=3, n_boot=100)
    assert "cannot establish either claim" in few["verdict"]


def test_matched_kl_table_interpolates_each_third():
    t = brittleness_test(synthetic(late_drop=0.0), headline_bits=3, n_boot=50)
    table = t["matched_kl"]
    late = table["by_metric"]["direction_cosine"]["late"]
    kl = table["kl"]
    for x, v in zip(kl, late):
        if v == v:                                          # inside late's KL range
            assert v == pytest.approx(0.9 + 0.05 * math.log(x), abs=1e-6)


def test_the_test_refuses_without_a_null():
    with pytest.raises(ValueError, match="random arms"):
        brittleness_test([a for a in synthetic(0.1) if a.arm.kind != "random"],
                         headline_bits=3)
