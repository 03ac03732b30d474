"""Reading and writing the run folder's tables, on a local disk or an object store (rlaif.storage). Every output
is written to a hidden staging sibling and published when complete, whether Ray Data workers or the driver write it.

The stages of a round stream their tables through Ray Data (read_dataset) from storage to storage; the driver
counts rows from the parquet footers (row_count) and reads whole only small tables (read_table: a summary, a
held-out split bounded by the config)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data
from ray.data.aggregate import ValueCounter

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


def read_dataset(path: RunPath | str, columns: list[str] | None = None) -> ray.data.Dataset:
    """A stored table as a Ray Data stream, read by Ray Data's workers block by block (never whole in the driver)."""
    return ray.data.read_parquet(str(RunPath.of(path)), columns=columns)


def row_count(path: RunPath | str) -> int:
    """The rows of a stored table, from its parquet footers: no row is read."""
    return sum(pq.read_metadata(p.path, filesystem=p.fs).num_rows for p in RunPath.of(path).glob("*.parquet"))


def value_counts(ds: ray.data.Dataset, *columns: str) -> dict[str, dict]:
    """{column: {value: rows}} of each column (nulls left out), sorted by value: Ray Data aggregates in one pass over
    the data, the driver gets the counts."""
    agg = ds.aggregate(*(ValueCounter(c, alias_name=c) for c in columns))
    return {c: dict(sorted(zip(agg[c]["values"], agg[c]["counts"]))) if agg[c] else {} for c in columns}


def read_table(path: RunPath | str, columns: list[str] | None = None, filters: list | None = None) -> pa.Table:
    """A stored table whole in the driver: for small tables only (a summary, a bounded split). `filters` (pyarrow's
    row filters, e.g. [("split", "==", "eval")]) keep the other rows out of memory."""
    path = RunPath.of(path)
    files = [p for p in path.glob("*.parquet")]
    if not files:
        return pa.table({})
    return pq.ParquetDataset(path.path, filesystem=path.fs, filters=filters).read(columns=columns)
