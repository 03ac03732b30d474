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
from pipelines.stages.joins import (FRAME_COLUMNS, Rows, joined, numbered, per_group, rows_with_frames, stored,
                                   transformed)
from pipelines.stages.io import column_names, read_dataset, row_count, write_dataset

log = logging.getLogger(__name__)


class CaptionVideos(EngineClient):
    """Captions a batch of videos; with `retrospect` the engine instead re-describes each video given its previous
    description, the batch's `caption` column (i-SRT's self-retrospection)."""

    def __init__(self, engines: list, sampling: dict, model: str | None = None, retrospect: bool = False):
        super().__init__(engines)
        # No model given: the engines' own (this waits for an engine still starting, not the driver).
        self.model = model or ray.get(engines[0].health.remote())["model"]
        self.sampling, self.retrospect = sampling, retrospect

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(FRAME_COLUMNS + (["caption"] if self.retrospect else [])).to_pylist()
        requests = [{"messages": retrospect_messages(r["caption"]) if self.retrospect else caption_messages(),
                     "frames": frames_of(r), "fps": frames_fps(r)} for r in rows]
        version = f"{PROMPT_VERSION}-retrospect" if self.retrospect else PROMPT_VERSION
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
                   videos: Rows | list[str] | None = None, retrospect: bool = False) -> int:
    """Captions the ingested videos, or those of `videos` (Rows with a video_id column, or ids), into `out`; with
    `retrospect` re-describes them given their previous description (`videos`' caption column)."""
    if videos is None:
        ds = read_dataset(layout.videos, FRAME_COLUMNS)
        expect(row_count(layout.videos))
    else:
        if isinstance(videos, list):  # a caller's own few ids
            videos = Rows(len(videos), table=ray.put(pa.table({"video_id": pa.array(sorted(videos), pa.string())})))
        videos = videos.executed()  # counted, then joined to the frames: a large table's stream runs once
        expect(videos.count())
        ds = rows_with_frames(layout.videos, videos)
    ds = pool.map_batches(ds, CaptionVideos, sampling=sampling, model=pool.model_path, retrospect=retrospect)
    write_dataset(ds, out, CAPTIONS)
    return row_count(out)


def split_videos(layout: RunLayout, split: str) -> Rows:
    """The video_id of every video of `split` ("train" | "eval"), once each (a video's prompts all share its split)."""
    return per_group(stored(layout.prompts, ["video_id"], [("split", "==", split)]), "video_id", distinct_videos)


def distinct_videos(table: pa.Table) -> pa.Table:
    return pa.table({"video_id": pc.unique(table.column("video_id")).sort()}) if table.num_rows else table


def captions_from_file(path: str, videos: RunPath) -> Rows:
    """User captions, matched to the ingested videos by video_id or by uri (whichever of the file's columns matches
    more videos: a ground-truth file may carry its own video ids beside the uris), one per video (the file's last)."""
    names = column_names(path)
    keys = [k for k in ("video_id", "uri") if k in names]
    if not keys or "caption" not in names:
        raise ValueError(f"{path}: a captions file needs `caption` and `video_id` or `uri` columns")

    def matches(key: str) -> int:
        return joined(numbered(path, [key]), stored(videos, [key]), key).count()  # numbered: any Parquet file

    key = max(keys, key=matches) if len(keys) > 1 else keys[0]
    given = joined(numbered(path, [key, "caption"]), stored(videos, ["video_id", "uri"] if key == "uri" else ["video_id"]),
                   key)
    return per_group(given, "video_id", last_caption)


def last_caption(table: pa.Table) -> pa.Table:
    """The CAPTIONS row of each video in `table` (video_id, caption, row): its last caption in the file."""
    last = {r["video_id"]: r["caption"] for r in sorted(table.to_pylist(), key=lambda r: r["row"])}
    return pa.table({"video_id": pa.array(list(last), pa.string()), "caption": pa.array(list(last.values()), pa.string()),
                     "model": pa.array(["file"] * len(last), pa.string()),
                     "prompt_version": pa.array(["file"] * len(last), pa.string())}).cast(CAPTIONS)


def reference_captions(cfg: RunConfig, layout: RunLayout) -> Rows | None:
    """video_id, reference: caption.reference_file's caption of each ingested video it covers (None without a
    file), for caption evaluation and the caption term: Rows, never read into the driver."""
    if not cfg.caption.reference_file:
        return None
    return transformed(captions_from_file(cfg.caption.reference_file, layout.videos), as_reference)


def as_reference(captions: pa.Table) -> pa.Table:
    return pa.table({"video_id": captions.column("video_id"), "reference": captions.column("caption")})


@stage("models", "caption")
def caption(ctx: StageContext) -> int:
    """Captions from caption.file, or from the captioner pool; captions the ingest stream of this run wrote already
    (ctx.captioned_during_ingest) are only counted."""
    cfg, out = ctx.cfg, ctx.layout.captions
    if cfg.caption.source == "file":
        write_dataset(captions_from_file(cfg.caption.file, ctx.layout.videos).stream(), out, CAPTIONS)
        return row_count(out)
    n = (row_count(out) if ctx.captioned_during_ingest
         else caption_videos(ctx.layout, ctx.captioner_pool, caption_sampling(cfg), out))
    empty = row_count(out, pc.field("caption") == "") if n else 0
    log.info("captions: %d videos (%s empty)", n, empty)
    return n
