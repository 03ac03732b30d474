"""Ingest stage: video sources → Ray Data → decoded, sampled frames in `videos.parquet`; rejects in `quarantine.parquet`.

    list (driver) → from_items → map_batches(VideoRowDecoder) on an autoscaling actor pool → materialize
                  → filter ok → videos.parquet/       (Parquet dataset folder, written by the workers)
                  → filter bad → quarantine.parquet/  (video_id, uri, reason, error)

Each decode actor decodes in a child process (rlaif.isolation): a decoder segfault or hang costs one row, which is
quarantined with its reason; the actor, the batch and the run go on. Outputs are published atomically.

With `caption` (a run whose engines are started before ingest), decoded batches stream on to the captioning engines
(pipelines.stages.caption.CaptionDuringIngest) while later videos still decode, and the captions go to captions.parquet.
"""
from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import ray
import ray.data

from rlaif.config import IngestConfig
from rlaif.decode import DecodeSpec
from rlaif.schemas import CAPTIONS, QUARANTINE, QUARANTINE_COLUMNS, VIDEOS
from rlaif.sources import list_video_uris, video_id_for
from rlaif.layout import RunLayout
from rlaif.storage import RunPath
from rlaif.video_rows import VideoRowDecoder

from pipelines.stages.base import StageContext, stage
from pipelines.stages.io import read_table, write_dataset

if TYPE_CHECKING:
    from pipelines.stages.caption import CaptionDuringIngest

log = logging.getLogger(__name__)



@dataclass
class IngestResult:
    n_inputs: int
    n_ok: int
    n_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    videos_path: str = ""
    quarantine_path: str = ""
    captions_path: str = ""  # written only when ingest captioned as it decoded


def decode_spec(cfg: IngestConfig) -> DecodeSpec:
    return DecodeSpec(num_frames=cfg.num_frames, sampling=cfg.sampling, sample_fps=cfg.sample_fps,
                      height=cfg.frame_height, width=cfg.frame_width, max_file_bytes=cfg.max_file_bytes,
                      max_source_frames=cfg.max_source_frames)


def run_ingest(cfg: IngestConfig, run_dir: RunPath | str, source: str | list[str] | None = None,
               caption: CaptionDuringIngest | None = None) -> IngestResult:
    layout = RunLayout(run_dir)
    source = source if source is not None else cfg.source
    if source is None:
        raise ValueError("ingest needs a source: set ingest.source in the config or pass SOURCE")
    uris = list_video_uris(source, cfg.extensions)
    if cfg.limit:
        uris = uris[: cfg.limit]
    items = [{"video_id": video_id_for(u), "uri": u} for u in uris]
    log.info("ingest: %d inputs from %s", len(items), source)

    n_blocks = max(1, -(-len(items) // cfg.batch_size))
    decoded = (
        ray.data.from_items(items, override_num_blocks=n_blocks)
        .map_batches(
            VideoRowDecoder,
            fn_constructor_kwargs={"spec": decode_spec(cfg), "timeout_s": cfg.decode_timeout_s, "decoder": cfg.decoder},
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cfg.decoders),
            num_cpus=1,
            udf_modifying_row_count=False,
            max_restarts=-1,  # an actor lost to a node failure is replaced; its batch is retried
        )
    )
    if caption is not None:
        decoded = caption.add_to(decoded)
    decoded = decoded.materialize()
    layout.dir.mkdir()
    videos, quarantine = layout.videos, layout.quarantine
    ok = decoded.filter(expr="status == 'ok'")
    write_dataset(ok.select_columns(VIDEOS.names), videos, VIDEOS)
    write_dataset(decoded.filter(expr="status != 'ok'").select_columns(QUARANTINE_COLUMNS), quarantine, QUARANTINE)

    captions = ""
    if caption is not None:
        captions = str(layout.captions)
        write_dataset(ok.select_columns(CAPTIONS.names), captions, CAPTIONS)
    bad = read_table(quarantine, ["reason"]).column("reason").to_pylist()
    n_ok = read_table(videos, ["video_id"]).num_rows
    result = IngestResult(n_inputs=len(items), n_ok=n_ok, n_quarantined=len(bad),
                          reasons=dict(sorted(collections.Counter(bad).items())),
                          videos_path=str(videos), quarantine_path=str(quarantine), captions_path=captions)
    if result.n_ok + result.n_quarantined != result.n_inputs:
        raise RuntimeError(f"ingest lost rows: {result.n_inputs} in, {result.n_ok} ok + {result.n_quarantined} quarantined")
    return result


@stage("ingest")
def ingest(ctx: StageContext) -> dict:
    """videos.parquet and quarantine.parquet from ctx.source (ingest.source if None); when the engine pools are up
    already (ctx.pools) and caption.during_ingest, captions.parquet too, as the videos decode."""
    from pipelines.stages.caption import CaptionDuringIngest, caption_sampling

    cfg = ctx.cfg
    caption = None
    if ctx.pools and cfg.caption.source == "model" and cfg.caption.during_ingest:
        caption = CaptionDuringIngest(ctx.captioner_pool, caption_sampling(cfg))
    result = run_ingest(cfg.ingest, ctx.layout.dir, ctx.source, caption)
    return {"rows_in": result.n_inputs, "rows_ok": result.n_ok, "rows_quarantined": result.n_quarantined,
            "reasons": result.reasons, "captioned": bool(result.captions_path)}
