"""Reading and writing the run folder's tables, on a local disk or an object store (rlaif.storage). Every output
is written to a hidden staging sibling and published when complete, whether Ray Data workers or the driver write it."""
from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from actors.progress import counted
from rlaif.storage import RunPath, publish, staging_path


# Rows in a row group of the tables without frames (text and numbers: at most a few KB a row). The frames' tables
# set their own (pipelines.stages.ingest.frame_group_rows).
GROUP_ROWS = 8192


def write_dataset(ds: ray.data.Dataset, final: RunPath | str, schema: pa.Schema | None = None,
                  count: bool = True, group_rows: int = GROUP_ROWS, file_bytes: int | None = None) -> None:
    """Ray Data writes the shards; an empty result still leaves a readable table (typed when `schema` is given).
    The rows are counted as they are written, for the console's progress line (`count`: False when the stage counted
    them upstream already).

    A write task writes a file of the blocks it gets, in row groups of `group_rows` rows: Parquet would otherwise
    write each chunk of a block as a row group, and a block from a map stage is a chunk per batch (an engine's or a
    decoder's, a few rows), each a footer entry and a batch to read. Blocks are collected until a write task has
    `group_rows` rows, or `file_bytes` bytes (in memory) where given, so that a stream of many small blocks is a few
    files: a round's blocks are small on purpose (a few engine batches, so that answers stream on to the judge), and
    a file a block made judgments of 28,800 rows 198 files. The count is a separate zero-CPU map, so that it counts
    each block as it comes, not when a write task has gathered a file's rows."""
    final = RunPath.of(final)
    staged = staging_path(final)
    per_file = {"min_bytes_per_file": file_bytes} if file_bytes else {"min_rows_per_file": group_rows}
    (counted(ds) if count else ds).write_parquet(str(staged), row_group_size=group_rows, **per_file)
    if not staged.glob("*.parquet"):
        staged.mkdir()
        pq.write_table((schema or pa.schema([])).empty_table(), str(staged / "empty.parquet"), filesystem=staged.fs)
    publish(staged, final)


def write_table(table: pa.Table, final: RunPath | str) -> None:
    final = RunPath.of(final)
    staged = staging_path(final)
    staged.mkdir()
    pq.write_table(table, (staged / "part-0.parquet").path, filesystem=staged.fs)
    publish(staged, final)


def read_table(path: RunPath | str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """A stored table whole, in this process: for small tables (a summary, a Ray task's keyed side of a join, see
    pipelines.stages.joins). `filters`: pyarrow's row filters, e.g. [("split", "==", "eval")]."""
    path = RunPath.of(path)
    files = [p for p in path.glob("*.parquet")]
    if not files:
        return pa.table({})
    return pq.ParquetDataset(path.path, filesystem=path.fs, filters=filters).read(columns=columns)


def read_matching(path: RunPath | str, key: str, values: list, columns: list[str]) -> pa.Table:
    """The rows of a stored table whose `key` is in `values` (a few), in this process, read a row group at a time:
    `key` alone first, then `columns` of only the groups that hold a match, so that the memory is about a group
    per match, not the table's: 6 videos of a 16k-prompt run's frames (row groups of 32 MiB) held +144-242 MiB,
    where pyarrow's filtered dataset read (read-ahead over every group) held +559-651 MiB."""
    path, wanted, parts = RunPath.of(path), pa.array(values), []
    for file in sorted(path.glob("*.parquet"), key=str) if path.is_dir() and values else []:
        parquet = pq.ParquetFile(file.path, filesystem=file.fs)
        for group in range(parquet.metadata.num_row_groups):
            hits = pc.is_in(parquet.read_row_group(group, columns=[key]).column(0), value_set=wanted)
            if pc.any(hits).as_py():
                parts.append(parquet.read_row_group(group, columns=columns).filter(hits))
    return pa.concat_tables(parts) if parts else pa.table({})


def parquet_files(path: RunPath | str) -> list[RunPath]:
    """A user's Parquet input, a file or a folder of them (in name order)."""
    path = RunPath.of(path)
    return sorted(path.glob("*.parquet"), key=str) if path.is_dir() else [path]


def column_names(path: RunPath | str) -> list[str]:
    """The columns of a Parquet file, or of a folder's first file, from its footer ([] for an empty folder)."""
    first = parquet_files(path)[:1]
    return pq.read_schema(first[0].path, filesystem=first[0].fs).names if first else []


def read_dataset(path: RunPath | str, columns: list[str] | None = None) -> ray.data.Dataset:
    """A stored table as a Ray Data stream, read block by block by Ray Data's workers (never whole in the driver)."""
    return ray.data.read_parquet(str(RunPath.of(path)), columns=columns)


def row_count(path: RunPath | str, where: pc.Expression | None = None) -> int:
    """The rows of a stored table: from its parquet footers, or, with `where` (e.g. pc.field("split") == "eval"),
    by a scan of the columns it names, batch by batch (the driver's memory stays flat)."""
    path = RunPath.of(path)
    files = [p for p in path.glob("*.parquet")]
    if where is None:
        return sum(pq.read_metadata(p.path, filesystem=p.fs).num_rows for p in files)
    return pads.dataset([p.path for p in files], filesystem=path.fs, format="parquet").count_rows(filter=where)


def scan(path: RunPath | str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A stored table's `columns`, batch by batch, in this process: for the driver's counts (memory flat). A file at
    a time, on this thread: pyarrow's dataset scanner (read-ahead over files, its thread pools) held 37 MiB of the
    driver to read one small column of 4,000 rows in 10 files, this 13 MiB (docs/scale.md)."""
    for file in sorted(RunPath.of(path).glob("*.parquet"), key=str):
        parquet = pq.ParquetFile(file.path, filesystem=file.fs)
        if parquet.metadata.num_rows:  # an empty output's file may have no columns at all (write_dataset)
            yield from parquet.iter_batches(columns=columns, use_threads=False)
