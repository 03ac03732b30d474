"""Reading and writing the run folder's tables, on a local disk or an object store (rlaif.storage). Every output
is written to a hidden staging sibling and published when complete, whether Ray Data workers or the driver write it."""
from __future__ import annotations

import pyarrow as pa
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


def read_table(path: RunPath | str, columns: list[str] | None = None) -> pa.Table:
    path = RunPath.of(path)
    files = [p for p in path.glob("*.parquet")]
    if not files:
        return pa.table({})
    return pq.ParquetDataset(path.path, filesystem=path.fs).read(columns=columns)
