"""What `rlaif serve TARGET` serves: a run folder (its final policy: the reborn one if rebirth ran), a model folder
(merged weights), a peft adapter folder (base + LoRA, the base named in its adapter_config.json), or a built-in
model name."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlaif.layout import PolicyLayout, RunLayout
from rlaif.models import built_in_names, is_built_in, resolve_model
from rlaif.storage import local_folder


@dataclass(frozen=True)
class ServeTarget:
    model: str  # the weights the engine loads (the base, in adapter mode)
    adapter: str | None  # a peft LoRA folder applied on top, or None for merged weights
    model_id: str  # the id clients see in /v1/models and send as `model`


def resolve_target(target: str, use_adapter: bool = False, model_id: str | None = None) -> ServeTarget:
    """`use_adapter` serves a run's final policy as base + adapter instead of its merged weights. A run folder may be
    remote (s3://...): its final policy is served from a local copy."""
    if is_built_in(target):
        return ServeTarget(resolve_model(target), None, model_id or target)
    run = RunLayout(target)
    if run.manifest.exists():
        manifest = run.manifest.read_json()
        final = manifest.get("reborn_policy") or manifest.get("final_policy")
        if not final:
            raise ValueError(f"{target}: the run has no final policy yet (its loop has not finished)")
        name = model_id or manifest.get("name") or run.dir.name
        if use_adapter:
            adapter = PolicyLayout(final).adapter
            if not (adapter / "adapter_config.json").exists():
                raise ValueError(f"{final} has no LoRA adapter (an extrapolated or untrained policy): serve it merged")
            return resolve_target(local_folder(str(adapter)), model_id=name)
        return ServeTarget(resolve_model(final), None, name)
    path = Path(local_folder(target))
    if (path / "adapter_config.json").exists():
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not (Path(base) / "config.json").exists():
            raise ValueError(f"{target}: the adapter's base model {base!r} is not a local model folder")
        return ServeTarget(base, str(path.resolve()), model_id or path.resolve().parent.name)
    if (path / "config.json").exists():
        return ServeTarget(str(path.resolve()), None, model_id or path.resolve().name)
    raise ValueError(f"{target}: not a run folder, a model folder, an adapter folder or a built-in model "
                     f"({', '.join(built_in_names())})")
