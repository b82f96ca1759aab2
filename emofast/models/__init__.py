"""Model loading, the embedded default model, and the architecture adapters."""
from .adapters import ADAPTERS, Adapter
from .loading import DEFAULT_MODEL, load_model
from .model import Model

__all__ = ["ADAPTERS", "Adapter", "DEFAULT_MODEL", "Model", "load_model"]
