"""Ray Data's two Parquet readers on a small table, as a stage reads one: read, a pass-through map, write.

    python bench/ray_data_read.py [--rows 6] [--repeat 5]

Ray 2.60 reads Parquet with its datasource V2 by default, which lists the files and reads their footers through a
pool of FooterReader actors started for each read; V1 lists them in the driver. pipelines.orchestration.ray_env
chooses V1 (RAY_DATA_USE_DATASOURCE_V2=0): this bench is the measurement behind that. Both sides run in one Ray
session (the reader is a DataContext setting, read when a dataset is planned), with the same table, one untimed
warm-up each, then interleaved timed rounds (V2 V1 V2 V1 ...); it prints each side's min / median / max and the
ratio of the medians.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=6, help="rows of the table read (a tiny run's pairs: 6)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds per side, interleaved")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from common import interleaved, load_average, machine, ratio, spread, table
    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import RayConfig

    init_ray(RayConfig())
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    work = Path(tempfile.mkdtemp(prefix="rlaif-bench-read-"))
    (work / "in").mkdir()
    pq.write_table(pa.table({"prompt_id": [f"p{i}" for i in range(args.rows)], "score": [1.0] * args.rows}),
                   work / "in" / "t.parquet")

    def read_map_write(v2: bool):
        def run():
            ctx.use_datasource_v2 = v2
            out = work / "out"
            shutil.rmtree(out, ignore_errors=True)
            ds = ray.data.read_parquet(str(work / "in")).map_batches(lambda b: b, batch_format="pyarrow")
            ds.write_parquet(str(out))
            assert pq.read_table(out).num_rows == args.rows
        return run

    try:
        times = interleaved({"V2 (Ray's default)": read_map_write(True), "V1 (ray-rlaif's)": read_map_write(False)},
                            args.repeat)
    finally:
        ctx.use_datasource_v2 = False
        shutil.rmtree(work, ignore_errors=True)
    print(f"{machine()}; {load_average()}")
    print(f"read + map + write of a {args.rows}-row Parquet table, seconds, {args.repeat} interleaved rounds a side "
          "after one warm-up each")
    rows = [{"reader": name, **spread(t)} for name, t in times.items()]
    print(table(rows, ["reader", "min", "median", "max", "n"]))
    v2, v1 = (spread(t)["median"] for t in times.values())
    print(f"V2 / V1, ratio of medians: {ratio(v2, v1)}")
    ray.shutdown()


if __name__ == "__main__":
    main()
