"""Model loading, the embedded default model, and the architecture adapters."""
from .adapters import ADAPTERS, Adapter
from .loading import DEFAULT_MODEL, load_model
from .model import POOLS, Model, kv_cache_kwargs, position_ids, returned_cache

__all__ = ["ADAPTERS", "Adapter", "DEFAULT_MODEL", "Model", "POOLS", "kv_cache_kwargs", "load_model",
           "position_ids", "returned_cache"]
