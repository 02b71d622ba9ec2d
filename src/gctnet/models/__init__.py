"""Model definitions and the registry (``create_model``, ``list_models``)."""
from .registry import ModelEntry, create_model, get_model_entry, list_models, register_model

__all__ = ["ModelEntry", "create_model", "get_model_entry", "list_models", "register_model"]
