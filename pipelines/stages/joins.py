"""How a stage puts tables together (prompts with their videos' frames and captions, answers with their judging
context, judged answers into pairs), without any table passing whole through the driver.

A `Rows` is one of a stage's tables on its way: one Arrow table in the object store when it is small, a Ray Data
stream when it is large. The plan is chosen by the row count (from the parquet footers), as Spark chooses a broadcast
join below `spark.sql.autoBroadcastJoinThreshold`:

  - small (at most `ray.broadcast_join_rows` rows): Ray tasks read, join and group it whole, in the object store,
    and a stream that needs it (the videos' frames, a stream of answers) gets it by reference, each batch joined to
    it where the batch is processed. No shuffle, no Ray Data job for it, so a small run starts no aggregator actors
    and pays no executor start-up; the order is the stored tables' (video by video, each video's rows in the
    table's order).
  - large: Ray Data's hash join (`Dataset.join`) in partitions of about ROWS_PER_PARTITION rows, and its groupby,
    so that no process holds the table whole. The order is lost.
A stored table's order is not the same from run to run either (Ray Data's reads, maps and writes reorder blocks at
times, even with preserve_order): what needs one order sorts (the training rows, pipelines.stages.train).

The driver holds only object references and counts either way.
"""
from __future__ import annotations

import operator
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data import DataContext
from ray.data.expressions import col

from pipelines.stages.io import parquet_files, read_dataset, read_table, row_count, write_dataset, write_table
from rlaif.storage import RunPath

FRAME_COLUMNS = ["video_id", "frames", "frames_shape", "duration_s"]
BROADCAST_ROWS_KEY = "rlaif.broadcast_join_rows"  # set per run from ray.broadcast_join_rows (set_broadcast_rows)
DEFAULT_BROADCAST_ROWS = 200_000
ROWS_PER_PARTITION = 2000  # rows per hash-join partition (each is joined in one aggregator and held while it is)
MAX_PARTITIONS = 200


def set_broadcast_rows(rows: int) -> None:
    """The largest table kept whole in the object store, for the joins this process plans (ray.broadcast_join_rows)."""
    DataContext.get_current().set_config(BROADCAST_ROWS_KEY, rows)


def broadcast_rows() -> int:
    return int(DataContext.get_current().get_config(BROADCAST_ROWS_KEY, DEFAULT_BROADCAST_ROWS))


def partitions(rows: int) -> int:
    """Hash partitions for a join or group of about `rows` rows: few for a small one (each costs an aggregator's
    work), more as it grows (each partition is held in memory while it is joined)."""
    return max(1, min(MAX_PARTITIONS, -(-rows // ROWS_PER_PARTITION)))


@dataclass(frozen=True)
class Rows:
    """A table of about `rows` rows (an upper bound after an inner join): one Arrow table in the object store
    (`table`, small) or a Ray Data stream (`dataset`, large)."""
    rows: int
    table: ray.ObjectRef | None = None
    dataset: ray.data.Dataset | None = None

    @property
    def small(self) -> bool:
        return self.table is not None

    def stream(self) -> ray.data.Dataset:
        """As a Ray Data stream, either way."""
        return ray.data.from_arrow_refs([self.table]) if self.small else self.dataset

    def executed(self) -> Rows:
        """A large table's stream executed once into the object store, for a caller that reads it twice (counts it,
        then uses it); a small table as it is."""
        return self if self.small else Rows(self.rows, dataset=self.dataset.materialize())

    def count(self) -> int:
        """The exact row count (a task counts a small table; Ray Data a large one, which it executes)."""
        return ray.get(_num_rows.remote(self.table)) if self.small else self.dataset.count()


@ray.remote(num_cpus=0)
def _num_rows(table: pa.Table) -> int:
    return table.num_rows


@ray.remote(num_cpus=0)
def _read(path: str, columns: list[str] | None, filters: list | None) -> pa.Table:
    return read_table(path, columns, filters)


@ray.remote(num_cpus=0)
def apply(fn: Callable[..., Any], table: pa.Table, *args) -> Any:
    """fn(table, *args) in a task, for a small table in the object store (Rows.table)."""
    return fn(table, *args)


COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
               ">=": operator.ge}


def stored(path: RunPath | str, columns: list[str] | None = None, filters: list | None = None,
           rows: int | None = None) -> Rows:
    """A stored table (its `columns`, the rows passing pyarrow's `filters`, e.g. [("split", "==", "eval")]). Its
    size is the stored table's (`rows`, or counted from the footers), an upper bound of the filtered one's."""
    rows = row_count(path) if rows is None else rows
    if rows <= broadcast_rows():
        return Rows(rows, table=_read.remote(str(RunPath.of(path)), columns, filters))
    filters = filters or []
    ds = read_dataset(path, None if columns is None else [*columns, *(c for c, _, _ in filters if c not in columns)])
    for column, op, value in filters:  # pyarrow's filter triples as Ray Data expressions (its strings are deprecated)
        ds = ds.filter(expr=COMPARISONS[op](col(column), value))
    return Rows(rows, dataset=ds if columns is None else ds.select_columns(columns))


def numbered(path: RunPath | str, columns: list[str], index: str = "row") -> Rows:
    """A Parquet file or folder of the user's (e.g. a questions file) with each row's place in it as column `index`
    (0, 1, ... in file, row-group and row order), sized from its footers. Large: Ray Data reads it a row group per
    task, each numbered from where its group starts."""
    groups, start = [], 0
    for f in parquet_files(path):
        meta = pq.read_metadata(f.path, filesystem=f.fs)
        for g in range(meta.num_row_groups):
            groups.append({"file": str(f), "group": g, "start": start})
            start += meta.row_group(g).num_rows
    if start <= broadcast_rows():
        return Rows(start, table=_read_numbered.remote(groups, columns, index))
    ds = ray.data.from_items(groups, override_num_blocks=len(groups))
    return Rows(start, dataset=ds.map_batches(_read_numbered_batch, fn_args=(columns, index), batch_size=1,
                                              batch_format="pyarrow"))


def _read_groups(groups: list[dict], columns: list[str], index: str) -> pa.Table:
    tables = []
    for g in groups:
        f = RunPath.of(g["file"])
        table = pq.ParquetFile(f.path, filesystem=f.fs).read_row_group(g["group"], columns=columns)
        tables.append(table.append_column(index, pa.array(range(g["start"], g["start"] + table.num_rows), pa.int64())))
    return pa.concat_tables(tables) if tables else pa.table({})


@ray.remote(num_cpus=0)
def _read_numbered(groups: list[dict], columns: list[str], index: str) -> pa.Table:
    return _read_groups(groups, columns, index)


def _read_numbered_batch(batch: pa.Table, columns: list[str], index: str) -> pa.Table:
    return _read_groups(batch.to_pylist(), columns, index)


def collected(ds: ray.data.Dataset, rows: int, schema: pa.Schema) -> Rows:
    """A stream executed once, as Rows of at most `rows` rows: its blocks concatenated into one table in the object
    store by a task when small, else kept as Ray Data blocks (materialised)."""
    if rows <= broadcast_rows():
        return Rows(rows, table=_concat.remote(schema, *ds.to_arrow_refs()))
    return Rows(rows, dataset=ds.materialize())


@ray.remote(num_cpus=0)
def _concat(schema: pa.Schema, *tables: pa.Table) -> pa.Table:
    tables = [t.select(schema.names).cast(schema) for t in tables if t.num_rows]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def ordered(ds: ray.data.Dataset) -> ray.data.Dataset:
    """`ds` executed with its blocks in their order (this dataset's own context: other datasets are unaffected)."""
    ds.context.execution_options.preserve_order = True
    return ds


def join_batch(batch: pa.Table, side: pa.Table | ray.ObjectRef, on: str, how: str = "inner") -> pa.Table:
    """`batch` joined to the rows of `side` with the same `on` (all of them: one batch row may become several), in
    the batch's order and then the side's; `how` "left" keeps batch rows without a match (their side columns null).
    By row positions rather than Arrow's hash join, which takes no list columns (frames_shape) beside the key."""
    side = ray.get(side) if isinstance(side, ray.ObjectRef) else side
    if on not in side.column_names:  # an empty side (a table of no rows and no columns)
        return batch.slice(0, 0) if how == "inner" else batch
    keys = batch.column(on).to_pylist()
    wanted = pa.array(sorted({k for k in keys if k is not None}), side.schema.field(on).type)
    mask = pc.is_in(side.column(on), value_set=wanted)
    matches: dict = defaultdict(list)
    for position, key in zip(pc.indices_nonzero(mask).to_pylist(), side.column(on).filter(mask).to_pylist()):
        matches[key].append(position)
    left, right = [], []
    for i, key in enumerate(keys):
        found = matches.get(key)
        if found:
            left += [i] * len(found)
            right += found
        elif how == "left":
            left.append(i)
            right.append(None)
    out = batch.take(pa.array(left, pa.int64()))
    extra = side.drop_columns([on]).take(pa.array(right, pa.int64()))
    for field, column in zip(extra.schema, extra.columns):
        if field.name not in out.column_names:
            out = out.append_column(field, column)
    return out


def attach(stream: ray.data.Dataset, side: Rows, on: str, stream_rows: int, how: str = "inner") -> ray.data.Dataset:
    """Each row of `stream` (about `stream_rows`) with the `side` columns of its key (`how` "left": rows without a
    match kept, with nulls). A small side goes to the stream's batches by reference and the order is kept; a large
    one is Ray Data's hash join, unordered."""
    if side.small:
        return stream.map_batches(join_batch, fn_kwargs={"side": side.table, "on": on, "how": how},
                                  batch_format="pyarrow", num_cpus=0.1)
    return stream.join(side.dataset, "inner" if how == "inner" else "left_outer", partitions(stream_rows + side.rows),
                       on=(on,))


def joined(left: Rows, right: Rows, on: str, how: str = "inner") -> Rows:
    """`left` with `right`'s columns of its key (attach): by a task when both are small."""
    if left.small and right.small:
        return Rows(left.rows, table=apply.remote(join_batch, left.table, right.table, on, how))
    return Rows(left.rows, dataset=attach(left.stream(), right, on, left.rows, how))


def mapped(rows: Rows, fn: Callable[[pa.Table], pa.Table]) -> ray.data.Dataset:
    """fn over `rows` (a function of a table that treats each row on its own), as a Ray Data stream: one task for a
    small table, batch by batch for a large one."""
    return transformed(rows, fn).stream()


def transformed(rows: Rows, fn: Callable[[pa.Table], pa.Table]) -> Rows:
    """fn over `rows` (as `mapped`), kept as Rows: by a task when small (its table stays in the object store)."""
    if rows.small:
        return Rows(rows.rows, table=apply.remote(fn, rows.table))
    return Rows(rows.rows, dataset=rows.dataset.map_batches(fn, batch_format="pyarrow"))


def per_group(rows: Rows, key: str, fn: Callable[..., pa.Table], *args) -> Rows:
    """fn(table of one or more whole groups, *args) over `rows` grouped by `key`: fn must treat each group on its own
    and return a table. Small: one task over the whole table; large: Ray Data's groupby, a group at a time."""
    if rows.small:
        return Rows(rows.rows, table=apply.remote(fn, rows.table, *args))
    return Rows(rows.rows, dataset=rows.dataset.groupby(key).map_groups(fn, fn_args=args, batch_format="pyarrow"))


def rows_with_frames(videos_path: RunPath, items: Rows) -> ray.data.Dataset:
    """`items` (rows with a video_id column) with their videos' frames; items whose video is not in videos.parquet
    are dropped. Small: the videos are read in their stored order, a few a batch, each expanded into its items (in
    the items' order), so each video's frames are read once; large: a hash join, unordered."""
    videos = read_dataset(videos_path, FRAME_COLUMNS)
    if items.small:
        return videos.map_batches(join_batch, fn_kwargs={"side": items.table, "on": "video_id"},
                                  batch_format="pyarrow", batch_size=4, num_cpus=0.1)
    return items.dataset.join(videos, "inner", partitions(items.rows), on=("video_id",))


def copy_table(source: RunPath, target: RunPath, schema: pa.Schema) -> None:
    """`schema`'s columns of the stored table `source` written to `target`: by a task when small, else by Ray Data."""
    if row_count(source) <= broadcast_rows():
        ray.get(_copy.remote(str(source), str(target), schema))
    else:
        write_dataset(ordered(read_dataset(source, schema.names)), target, schema, count=False)


@ray.remote(num_cpus=0)
def _copy(source: str, target: str, schema: pa.Schema) -> None:
    write_table(read_table(source, schema.names).cast(schema), target)
