"""Model loading, the embedded default model, and the architecture adapters."""
from .adapters import ADAPTERS, Adapter
from .loading import DEFAULT_MODEL, load_model
from .model import POOLS, Model, position_ids

__all__ = ["ADAPTERS", "Adapter", "DEFAULT_MODEL", "Model", "POOLS", "load_model", "position_ids"]
