"""Caption stage: every ingested video gets a detailed caption, the text proxy the judge uses as evidence."""
from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray.data

from actors.pool import EngineClient, EnginePool
from rlaif.config import RunConfig
from rlaif.prompts import CAPTION_REQUEST, PROMPT_VERSION
from rlaif.schemas import CAPTIONS, frames_fps, frames_of

from pipelines.io import read_table, write_dataset, write_table

log = logging.getLogger(__name__)


class CaptionVideos(EngineClient):
    def __init__(self, engines: list, sampling: dict, model: str):
        super().__init__(engines)
        self.sampling = sampling
        self.model = model

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["video_id", "frames", "frames_shape", "duration_s"]).to_pylist()
        requests = [{"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": CAPTION_REQUEST}]}],
                     "frames": frames_of(r), "fps": frames_fps(r)} for r in rows]
        outs = self.call(requests, self.sampling)
        return pa.Table.from_pylist([{"video_id": r["video_id"], "caption": o[0]["text"].strip(), "model": self.model,
                                      "prompt_version": PROMPT_VERSION} for r, o in zip(rows, outs)], schema=CAPTIONS)


def captions_from_file(path: str, videos: pa.Table) -> pa.Table:
    """User captions, matched to ingested videos by video_id or by uri."""
    given = pq.read_table(path)
    key = "video_id" if "video_id" in given.column_names else "uri"
    if key not in given.column_names or "caption" not in given.column_names:
        raise ValueError(f"{path}: a captions file needs `caption` and `video_id` or `uri` columns")
    by_key = dict(zip(given.column(key).to_pylist(), given.column("caption").to_pylist()))
    rows = [{"video_id": v, "caption": by_key[k], "model": "file", "prompt_version": "file"}
            for v, k in zip(videos.column("video_id").to_pylist(), videos.column(key).to_pylist()) if k in by_key]
    return pa.Table.from_pylist(rows, schema=CAPTIONS)


def run_caption(cfg: RunConfig, run_dir: Path, pool: EnginePool | None) -> int:
    videos_path, out = run_dir / "videos.parquet", run_dir / "captions.parquet"
    if cfg.caption.source == "file":
        if not cfg.caption.file:
            raise ValueError("caption.source is 'file' but caption.file is not set")
        table = captions_from_file(cfg.caption.file, read_table(videos_path, ["video_id", "uri"]))
        write_table(table, out)
        return table.num_rows
    sampling = {"n": 1, "temperature": cfg.caption.temperature, "max_tokens": cfg.caption.max_tokens}
    ds = ray.data.read_parquet(str(videos_path)).map_batches(
        CaptionVideos, fn_constructor_kwargs={"engines": pool.actors, "sampling": sampling, "model": pool.model_path},
        batch_size=pool.cfg.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=len(pool.actors)), num_cpus=0.1)
    write_dataset(ds, out, CAPTIONS)
    n = read_table(out).num_rows
    empty = pc.sum(pc.equal(read_table(out, ["caption"]).column("caption"), "")).as_py() if n else 0
    log.info("captions: %d videos (%s empty)", n, empty)
    return n
