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


def write_dataset(ds: ray.data.Dataset, final: RunPath | str, schema: pa.Schema | None = None,
                  count: bool = True) -> None:
    """Ray Data writes the shards; an empty result still leaves a readable table (typed when `schema` is given).
    The rows are counted as they are written, for the console's progress line (`count`: False when the stage counted
    them upstream already)."""
    final = RunPath.of(final)
    staged = staging_path(final)
    (counted(ds) if count else ds).write_parquet(str(staged))
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
