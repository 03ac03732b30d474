"""Ingest stage: video sources → Ray Data → decoded, sampled frames in `videos.parquet`; rejects in `quarantine.parquet`.

    list (driver) → the object store → (video_id, uri) blocks of one decode task each, made by read tasks
                  → map_batches(VideoRowDecoder) on an autoscaling actor pool, ingest.batch_size videos a call
                  → a hidden Parquet folder, written as the videos decode (removed at the end)
    that folder → filter ok → store_frames (ingest.frame_storage) → videos.parquet/  (written by the workers)
                → filter bad → quarantine.parquet/  (video_id, uri, reason, error, traceback)

Each decode actor decodes in a child process (rlaif.isolation): a decoder segfault or hang costs one row, which is
quarantined with its reason; the actor, the batch and the run go on. Outputs are published atomically.

A video whose decoding raised an exception outside the decoder libraries' calls is a bug, not bad input
(rlaif.video_rows): it is quarantined as `internal_error` with its traceback, counted apart, and when more than
`ingest.max_internal_error_share` of the inputs have one, ingest raises `InternalErrors` once both tables are
written. Kept videos may carry warnings (rlaif.decode: short_stream, resolution_change, ...), counted per code.

With `caption` (a run whose engines are started before ingest), decoded batches stream on to the captioning engines
(pipelines.stages.caption.CaptionDuringIngest) while later videos still decode, and the captions go to captions.parquet.
"""
from __future__ import annotations

import collections
import functools
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data.block import BlockMetadata
from ray.data.expressions import col

from actors.progress import counted, expect
from rlaif.config import IngestConfig
from rlaif.decode import INTERNAL_ERROR, DecodeSpec
from rlaif.frames import RAW, decode_frames, encode_frames
from rlaif.placement import decoder_pool, task_rows
from rlaif.schemas import CAPTIONS, DECODED, QUARANTINE, QUARANTINE_COLUMNS, VIDEOS
from rlaif.sources import input_table, list_video_uris
from rlaif.layout import RunLayout
from rlaif.storage import RunPath, staging_path
from rlaif.video_rows import InternalErrors, VideoRowDecoder

from pipelines.stages.base import StageContext, stage
from pipelines.stages.io import read_dataset, read_table, row_count, scan, write_dataset

if TYPE_CHECKING:
    from pipelines.stages.caption import CaptionDuringIngest

log = logging.getLogger(__name__)
DECODED_FILE_BYTES = 128 * 2**20  # decoded rows (in memory) a file of the decoded stream's hidden folder holds
# Decoded frames (raw) in a Parquet row group of the tables that hold them. A block of decoded rows is a chunk per
# decode batch of a few videos, and Parquet wrote each chunk as a row group (videos.parquet had 1,000 of 4 rows at
# 4,000 videos; each is a footer entry and a batch to read). Ray Data packs row groups into read tasks of up to
# 128 MiB, so a group stays well under that and a large table still reads in parallel; and the driver reads the
# run report's few videos a group at a time (io.read_matching), holding about a group for each (32 MiB groups
# held +144-242 MiB there at 16k prompts, 8 MiB +50-79).
FRAME_GROUP_BYTES = 8 * 2**20


@dataclass
class IngestResult:
    n_inputs: int
    n_ok: int
    n_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)  # quarantine reasons, internal_error included
    videos_path: str = ""
    quarantine_path: str = ""
    captions_path: str = ""  # written only when ingest captioned as it decoded
    n_internal_errors: int = 0  # quarantined as internal_error: bugs, not bad input
    first_internal_error: dict | None = None  # {uri, error, traceback} of the first one (by video_id)
    warnings: dict[str, int] = field(default_factory=dict)  # kept videos per warning code


def decode_spec(cfg: IngestConfig) -> DecodeSpec:
    return DecodeSpec(num_frames=cfg.num_frames, sampling=cfg.sampling, sample_fps=cfg.sample_fps,
                      height=cfg.frame_height, width=cfg.frame_width, max_file_bytes=cfg.max_file_bytes,
                      max_source_frames=cfg.max_source_frames, reject_blank=True)


def frame_group_rows(cfg: IngestConfig) -> int:
    """Videos per row group of the tables with frames: FRAME_GROUP_BYTES of raw frames (JPEG frames are smaller)."""
    return max(1, FRAME_GROUP_BYTES // (cfg.num_frames * cfg.frame_height * cfg.frame_width * 3))


def store_frames(batch: pa.Table, encoding: str, jpeg_quality: int) -> pa.Table:
    """Decoded VIDEOS rows (raw frames) with their frames stored as `encoding` (ingest.frame_storage)."""
    if encoding != RAW:
        shapes, frames = batch.column("frames_shape").to_pylist(), batch.column("frames").to_pylist()
        encoded = [encode_frames(decode_frames(f, s, RAW), encoding, jpeg_quality) for f, s in zip(frames, shapes)]
        batch = batch.set_column(batch.schema.get_field_index("frames"), "frames", pa.array(encoded, pa.large_binary()))
    return batch.set_column(batch.schema.get_field_index("frames_encoding"), "frames_encoding",
                            pa.array([encoding] * batch.num_rows, pa.string()))


class InputBlocks(ray.data.Datasource):
    """The input list as one block of `task_rows` rows per decode task, each made by a read task from the one copy
    of the table in the object store. (`from_arrow` of the batches' slices made the driver put a block per batch,
    and that held ~50 KB of the driver's native memory per block until the stage ended: +50 MiB at 4,000 videos in
    batches of 4.)"""

    def __init__(self, inputs: pa.Table, task_rows: int):
        self.ref, self.n, self.size, self.schema = ray.put(inputs), inputs.num_rows, task_rows, inputs.schema
        self.nbytes = inputs.nbytes
        # At least one block: an empty input list still gives an empty block with the inputs' schema.
        self.num_blocks = max(1, -(-self.n // task_rows))

    def estimate_inmemory_data_size(self) -> int:
        return self.nbytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: ray.data.DataContext | None = None) -> list[ray.data.ReadTask]:
        tasks = []
        for start in range(0, self.num_blocks * self.size, self.size):
            rows = max(0, min(self.size, self.n - start))
            tasks.append(ray.data.ReadTask(functools.partial(_input_rows, self.ref, start, rows),
                                           BlockMetadata(num_rows=rows, size_bytes=None, exec_stats=None),
                                           schema=self.schema, per_task_row_limit=per_task_row_limit))
        return tasks


def _input_rows(inputs: ray.ObjectRef, start: int, rows: int) -> list[pa.Table]:
    # take: a block of its own rows (a slice would share, and might carry, the whole list's buffers)
    return [ray.get(inputs).take(pa.array(range(start, start + rows), pa.int64()))]


def write_decoded(decoded: ray.data.Dataset, folder: RunPath, captioned: bool, writers: int, group_rows: int) -> None:
    """The decoded stream (DECODED rows, with the captions' columns when `captioned`) as Parquet in `folder`, by at
    most `writers` tasks at a time, in row groups of `group_rows`; an empty typed table when there was nothing to
    decode."""
    # A write is I/O: no CPU asked (the decoders and engines hold them), and a cap, or Ray Data would start a worker
    # process for each of many such small tasks at once. A decode task's block is small (a few to a few hundred
    # videos): they are combined into files of DECODED_FILE_BYTES, so that the reads back are a few tasks, not one
    # per decode task, and into row groups of group_rows rather than one per decode batch.
    decoded.write_parquet(str(folder), ray_remote_args={"num_cpus": 0}, concurrency=writers,
                          min_bytes_per_file=DECODED_FILE_BYTES, row_group_size=group_rows)
    if not folder.glob("*.parquet"):
        schema = pa.schema(list(DECODED) + [f for f in CAPTIONS if f.name not in DECODED.names]) if captioned else DECODED
        folder.mkdir()
        pq.write_table(schema.empty_table(), (folder / "empty.parquet").path, filesystem=folder.fs)


def check_internal_errors(result: IngestResult, max_share: float) -> None:
    """Raises InternalErrors when more than `max_share` of the inputs failed with an internal error."""
    n, total = result.n_internal_errors, result.n_inputs
    if not n or n <= max_share * total:
        return
    first = result.first_internal_error or {}
    raise InternalErrors(
        f"ingest: {n} of {total} inputs ({n / total:.1%}) failed with an internal error, over "
        f"ingest.max_internal_error_share={max_share:g}. These are bugs in ray-rlaif or in the configured decoder, "
        f"not bad input (please report them); each is in {result.quarantine_path} with reason {INTERNAL_ERROR!r} and "
        f"its traceback, the videos that decoded are in {result.videos_path}. The first, {first.get('uri')}: "
        f"{first.get('error')}\n{first.get('traceback') or ''}")


def _warning_counts(warnings: list[list[str] | None]) -> dict[str, int]:
    codes = collections.Counter(w.split(":", 1)[0] for ws in warnings if ws for w in ws)
    return dict(sorted(codes.items()))


def run_ingest(cfg: IngestConfig, run_dir: RunPath | str, source: str | list[str] | None = None,
               caption: CaptionDuringIngest | None = None) -> IngestResult:
    layout = RunLayout(run_dir)
    source = source if source is not None else cfg.source
    if source is None:
        raise ValueError("ingest needs a source: set ingest.source in the config or pass SOURCE")
    inputs = input_table(list_video_uris(source, cfg.extensions), cfg.limit or None)
    n_inputs = inputs.num_rows
    log.info("ingest: %d inputs from %s", n_inputs, source)
    expect(n_inputs, "videos")

    decoders = decoder_pool(cfg)  # as `rlaif plan` shows it
    # A decode task takes several batches when the inputs are many: the driver's memory grows with the tasks.
    # (Ray Data gives a task one block, and the decoder batch_size videos of it at a time.)
    blocks = InputBlocks(inputs, task_rows(n_inputs, cfg.batch_size, decoders.max_size))
    del inputs  # the object store holds the one copy
    listed = ray.data.read_datasource(blocks, num_cpus=0, concurrency=decoders.max_size,
                                      override_num_blocks=blocks.num_blocks)
    decoded = (
        listed.map_batches(
            VideoRowDecoder,
            fn_constructor_kwargs={"spec": decode_spec(cfg), "timeout_s": cfg.decode_timeout_s, "decoder": cfg.decoder},
            batch_size=cfg.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(min_size=decoders.min_size, max_size=decoders.max_size),
            num_cpus=decoders.cpus,
            udf_modifying_row_count=False,
            # An actor lost to a node failure is replaced and its batch retried: Ray Data's default for an actor
            # pool (max_restarts and max_task_retries -1); passing it again is a deprecated ray_remote_args.
        )
    )
    if caption is not None:
        decoded = caption.add_to(decoded)
    layout.dir.mkdir()
    videos, quarantine = layout.videos, layout.quarantine
    # The decoded stream is written once, as it decodes, to a hidden folder (removed at the end, or by a resume's
    # clean-up when the driver died), and the three tables are read from it. Materialising the stream instead kept
    # every decoded frame in the object store (spilled to disk past its size) and a reference to each block in the
    # driver until the end; now only the blocks in flight are held.
    decoded_dir = staging_path(layout.dir / "decoded.parquet")
    group_rows = frame_group_rows(cfg)
    write_decoded(counted(decoded), decoded_dir, caption is not None, decoders.max_size, group_rows)
    try:
        ok = read_dataset(decoded_dir, VIDEOS.names).filter(expr=col("status") == "ok")
        # Encoded after captioning (the captioner saw the decoded frames), in Ray Data tasks: the decoders are done.
        stored = ok.map_batches(
            store_frames, fn_kwargs={"encoding": cfg.frame_storage, "jpeg_quality": cfg.jpeg_quality},
            batch_size=cfg.batch_size, batch_format="pyarrow", num_cpus=1 if cfg.frame_storage != RAW else 0.1)
        # Counted as they decoded. Row groups of group_rows (store_frames returns a chunk a batch), and files of at
        # least DECODED_FILE_BYTES where there are more.
        write_dataset(stored, videos, VIDEOS, count=False, group_rows=group_rows, file_bytes=DECODED_FILE_BYTES)
        # The quarantine and the captions hold no frames: their columns alone are read back.
        rejected = read_dataset(decoded_dir, ["status", *QUARANTINE_COLUMNS]).filter(expr=col("status") != "ok")
        write_dataset(rejected.select_columns(QUARANTINE_COLUMNS), quarantine, QUARANTINE, count=False,
                      file_bytes=DECODED_FILE_BYTES)
        captions = ""
        if caption is not None:
            captions = str(layout.captions)
            kept = read_dataset(decoded_dir, ["status", *CAPTIONS.names]).filter(expr=col("status") == "ok")
            write_dataset(kept.select_columns(CAPTIONS.names), captions, CAPTIONS, count=False,
                          file_bytes=DECODED_FILE_BYTES)
    finally:
        decoded_dir.remove()

    # Counts, scanned a column at a time (the driver's memory stays flat); only internal errors are read whole.
    bad: collections.Counter = collections.Counter()
    for batch in scan(quarantine, ["reason"]):
        bad.update(batch.column(0).to_pylist())
    warnings: collections.Counter = collections.Counter()
    for batch in scan(videos, ["warnings"]):
        warnings.update(_warning_counts(batch.column(0).to_pylist()))
    internal = sorted(read_table(quarantine, filters=[("reason", "==", INTERNAL_ERROR)]).to_pylist(),
                      key=lambda r: r["video_id"]) if bad[INTERNAL_ERROR] else []
    first = {k: internal[0][k] for k in ("uri", "error", "traceback")} if internal else None
    result = IngestResult(n_inputs=n_inputs, n_ok=row_count(videos), n_quarantined=sum(bad.values()),
                          reasons=dict(sorted(bad.items())),
                          videos_path=str(videos), quarantine_path=str(quarantine), captions_path=captions,
                          n_internal_errors=len(internal), first_internal_error=first,
                          warnings=dict(sorted(warnings.items())))
    if result.n_ok + result.n_quarantined != result.n_inputs:
        raise RuntimeError(f"ingest lost rows: {result.n_inputs} in, {result.n_ok} ok + {result.n_quarantined} quarantined")
    if internal:
        log.error("ingest: %d internal error(s) (bugs, not bad input) in %s; the first, %s: %s", len(internal),
                  quarantine, internal[0]["uri"], internal[0]["error"])
    check_internal_errors(result, cfg.max_internal_error_share)
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
            "reasons": result.reasons, "internal_errors": result.n_internal_errors, "warnings": result.warnings,
            "captioned": bool(result.captions_path)}
