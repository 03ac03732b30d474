"""Caption stage: every ingested video gets a detailed caption, the text proxy the judge uses as evidence.

Captions are written by the ingest stream itself when the pools are up before ingest (`CaptionDuringIngest`: each
decoded batch goes to a captioning engine while later videos still decode), or afterwards from videos.parquet
(`caption_videos`: a run resumed after ingest). The same actor writes i-SRT's per-round re-descriptions
(pipelines.stages.describe) and the captions that caption evaluation checks (pipelines.stages.caption_eval)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data

from actors.pool import EngineClient, EnginePool
from actors.progress import expect
from rlaif.config import RunConfig
from rlaif.layout import RunLayout
from rlaif.prompts import PROMPT_VERSION, caption_messages, retrospect_messages
from rlaif.schemas import CAPTIONS, frames_fps, frames_of
from rlaif.seeding import seeded
from rlaif.storage import RunPath

from pipelines.stages.base import StageContext, stage
from pipelines.stages.frames_join import FRAME_COLUMNS
from pipelines.stages.io import read_table, write_dataset, write_table

log = logging.getLogger(__name__)


class CaptionVideos(EngineClient):
    """Captions a batch of videos; with `previous` ({video_id: description}) the engine instead re-describes each
    video given its previous description (i-SRT's self-retrospection)."""

    def __init__(self, engines: list, sampling: dict, model: str | None = None, previous: dict[str, str] | None = None):
        super().__init__(engines)
        # No model given: the engines' own (this waits for an engine still starting, not the driver).
        self.model = model or ray.get(engines[0].health.remote())["model"]
        self.sampling, self.previous = sampling, previous

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["video_id", "frames", "frames_shape", "duration_s"]).to_pylist()
        requests = [{"messages": retrospect_messages(self.previous[r["video_id"]]) if self.previous else caption_messages(),
                     "frames": frames_of(r), "fps": frames_fps(r)} for r in rows]
        version = f"{PROMPT_VERSION}-retrospect" if self.previous else PROMPT_VERSION
        outs = self.call(requests, [seeded(self.sampling, r["video_id"], version, self.model) for r in rows])
        return pa.Table.from_pylist([{"video_id": r["video_id"], "caption": o[0]["text"].strip(), "model": self.model,
                                      "prompt_version": version} for r, o in zip(rows, outs)], schema=CAPTIONS)


class CaptionDecoded(CaptionVideos):
    """Ingest's streamed form: a batch of decoded rows (schemas.VIDEOS) comes back whole with the CAPTIONS columns
    added, captioned where the video decoded and null where it is quarantined."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        ok = batch.filter(pc.equal(batch.column("status"), "ok"))
        captioned = {r["video_id"]: r for r in super().__call__(ok).to_pylist()} if ok.num_rows else {}
        rows = [captioned.get(v, {}) for v in batch.column("video_id").to_pylist()]
        for name in CAPTIONS.names[1:]:
            batch = batch.append_column(CAPTIONS.field(name), pa.array([r.get(name) for r in rows], pa.string()))
        return batch


@dataclass
class CaptionDuringIngest:
    """What ingest needs to caption as it decodes: the captioning pool (its engines may still be starting) and the
    caption sampling."""

    pool: EnginePool
    sampling: dict

    def add_to(self, decoded: ray.data.Dataset) -> ray.data.Dataset:
        return self.pool.map_batches(decoded, CaptionDecoded, sampling=self.sampling)


def caption_sampling(cfg: RunConfig) -> dict:
    return {"n": 1, "temperature": cfg.caption.temperature, "max_tokens": cfg.caption.max_tokens}


def caption_videos(layout: RunLayout, pool: EnginePool, sampling: dict, out: RunPath,
                   video_ids: list[str] | None = None, previous: dict[str, str] | None = None) -> int:
    """Captions (or, with `previous`, re-describes) the ingested videos, or those of `video_ids`, into `out`."""
    ds = ray.data.read_parquet(str(layout.videos), columns=FRAME_COLUMNS)
    if video_ids is not None:
        wanted = sorted(video_ids)
        ds = ds.filter(expr=f"video_id in {wanted!r}" if wanted else "video_id == ''")
    expect(len(video_ids) if video_ids is not None else read_table(layout.videos, ["video_id"]).num_rows)
    ds = pool.map_batches(ds, CaptionVideos, sampling=sampling, model=pool.model_path, previous=previous)
    write_dataset(ds, out, CAPTIONS)
    return read_table(out, ["video_id"]).num_rows


def captions_from_file(path: str, videos: pa.Table) -> pa.Table:
    """User captions, matched to ingested videos by video_id or by uri (whichever of the file's columns matches
    more videos: a ground-truth file may carry its own video ids beside the uris)."""
    given = pq.read_table(path)
    keys = [k for k in ("video_id", "uri") if k in given.column_names]
    if not keys or "caption" not in given.column_names:
        raise ValueError(f"{path}: a captions file needs `caption` and `video_id` or `uri` columns")
    key = max(keys, key=lambda k: len(set(given.column(k).to_pylist()) & set(videos.column(k).to_pylist())))
    by_key = dict(zip(given.column(key).to_pylist(), given.column("caption").to_pylist()))
    rows = [{"video_id": v, "caption": by_key[k], "model": "file", "prompt_version": "file"}
            for v, k in zip(videos.column("video_id").to_pylist(), videos.column(key).to_pylist()) if k in by_key]
    return pa.Table.from_pylist(rows, schema=CAPTIONS)


def reference_captions(cfg: RunConfig, layout: RunLayout) -> dict[str, str]:
    """{video_id: ground-truth caption} from caption.reference_file, for the ingested videos it covers."""
    if not cfg.caption.reference_file:
        return {}
    table = captions_from_file(cfg.caption.reference_file, read_table(layout.videos, ["video_id", "uri"]))
    return dict(zip(table.column("video_id").to_pylist(), table.column("caption").to_pylist()))


@stage("models", "caption")
def caption(ctx: StageContext) -> int:
    """Captions from caption.file, or from the captioner pool; captions the ingest stream of this run wrote already
    (ctx.captioned_during_ingest) are only counted."""
    cfg, out = ctx.cfg, ctx.layout.captions
    if cfg.caption.source == "file":
        table = captions_from_file(cfg.caption.file, read_table(ctx.layout.videos, ["video_id", "uri"]))
        write_table(table, out)
        return table.num_rows
    n = (read_table(out, ["video_id"]).num_rows if ctx.captioned_during_ingest
         else caption_videos(ctx.layout, ctx.captioner_pool, caption_sampling(cfg), out))
    empty = pc.sum(pc.equal(read_table(out, ["caption"]).column("caption"), "")).as_py() if n else 0
    log.info("captions: %d videos (%s empty)", n, empty)
    return n
