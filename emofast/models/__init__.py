"""Model loading, the embedded models, and the architecture adapters."""
from .adapters import ADAPTERS, Adapter
from .embedded import ALIASES, install_embedded
from .loading import DEFAULT_MODEL, load_model
from .model import POOLS, Model, kv_cache_kwargs, position_ids, returned_cache

__all__ = ["ADAPTERS", "ALIASES", "Adapter", "DEFAULT_MODEL", "Model", "POOLS", "install_embedded",
           "kv_cache_kwargs", "load_model", "position_ids", "returned_cache"]
