"""Model names → loadable folders: the one function production code calls to find a model.

A config names a model as a local folder, a hub id (on a cluster with a hub), a folder in remote storage (s3://...,
fetched once into a local cache), or a built-in test model (`tiny-qwen2-vl`, `tiny-qwen2-vl-warm`, `smollm2-135m-instruct`,
...: rlaif.testkit.tiny_models.MODEL_BUILDERS, built once from code into the cache on first use).
"""
from __future__ import annotations

from rlaif.testkit.tiny_models import MODEL_BUILDERS, ensure_model


def resolve_model(name_or_path: str) -> str:
    """A folder that transformers and vLLM can load for `name_or_path` (a hub id passes through unchanged)."""
    return ensure_model(name_or_path)


def is_built_in(name: str) -> bool:
    """Whether `name` is one of the test models built from code (not a path or a hub id)."""
    return name in MODEL_BUILDERS


def built_in_names() -> list[str]:
    return sorted(MODEL_BUILDERS)
