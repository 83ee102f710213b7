"""Embedding models: what each one is (specs), which ones this database holds (registry), and moving between them."""

from embed_assets.lib.models.specs import ModelSpec, resolve_model, spec_for_model_id

__all__ = ["ModelSpec", "resolve_model", "spec_for_model_id"]
