"""Reading and writing the run folder's tables. Every output is written to a hidden staging sibling and renamed
into place when complete (rlaif.manifest.publish), whether Ray Data workers or the driver write it."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray.data

from rlaif.manifest import publish, staging_path


def write_dataset(ds: ray.data.Dataset, final: Path, schema: pa.Schema | None = None) -> None:
    """Ray Data writes the shards; an empty result still leaves a readable table (typed when `schema` is given)."""
    staged = staging_path(final)
    ds.write_parquet(str(staged))
    if not any(staged.glob("*.parquet")):
        staged.mkdir(parents=True, exist_ok=True)
        if schema is not None:
            pq.write_table(schema.empty_table(), staged / "empty.parquet")
    publish(staged, final)


def write_table(table: pa.Table, final: Path) -> None:
    staged = staging_path(final)
    staged.mkdir(parents=True)
    pq.write_table(table, staged / "part-0.parquet")
    publish(staged, final)


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not any(Path(path).glob("*.parquet")):
        return pa.table({})
    return pq.ParquetDataset(path).read(columns=columns)
