"""emofast.pipelines: a config in, typed results and a report folder out.

    from emofast.pipelines import DemoConfig, run_demo
    result = run_demo(model, DemoConfig.full(), "emofast-demo")

demo, directions, discover, circuits, features, quant, crossmodel. Each takes a config dataclass whose defaults are the quick
preset (`Config.full()` the full one; `emofast <command>` flags map one-to-one onto its fields)
and returns a typed result with `to_json()` (what report.json holds). Pipelines never import each
other: what two share lives in the library (e.g. `emofast.eval.select_steering`).
"""
from .circuits import CircuitsConfig, CircuitsResult, run_circuits
from .crossmodel import CrossModelConfig, CrossModelResult, run_crossmodel
from .demo import DemoConfig, DemoResult, run_demo
from .directions import DirectionsConfig, DirectionsResult, run_directions
from .discover import DiscoverConfig, DiscoverResult, run_discover
from .features import FeaturesConfig, FeaturesResult, run_features
from .quant import QuantConfig, QuantResult, run_quant_compare, run_quant_profile

__all__ = ["CircuitsConfig", "CircuitsResult", "CrossModelConfig", "CrossModelResult",
           "DemoConfig", "DemoResult", "DirectionsConfig", "DirectionsResult", "DiscoverConfig",
           "DiscoverResult", "FeaturesConfig", "FeaturesResult", "QuantConfig", "QuantResult",
           "run_circuits", "run_crossmodel", "run_demo", "run_directions", "run_discover",
           "run_features", "run_quant_compare", "run_quant_profile"]
