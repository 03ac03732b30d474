"""One round of the CPU demo: where its wall time goes, stage by stage, and how much of it each engine pool sat idle.

    python bench/round.py [--rounds 1] [--run DIR] [--config FILE] [--set key=value ...]

Runs `rlaif demo --run DIR --set loop.rounds=1` (pipelines/apps/cli.py) in this process, in a temporary run folder unless
--run names one (kept), then reads the run's manifest.json:
  - each stage's seconds (recorded by pipelines.orchestration.resume) and its share of the demo's wall time, measured here around
    the whole command; "outside stages" is the rest: test models, demo inputs, Ray start, engine pool start, shutdown;
  - per engine pool (policy, judge; the captioner is the policy pool): its engines' busy seconds (VLLMEngine's
    served.busy_s: time inside generate and weight loads) and the idle share 1 - busy / (engines x wall), where wall
    is the pool's life from ready to the end of the loop (the manifest's `pools`, written by run_loop before it
    shuts the pools down). An engine Ray restarted counts only its time since the restart.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from common import load_average, machine, table


def stage_rows(stages: dict, wall: float) -> list[dict]:
    rows = [{"stage": name, "seconds": float(s["seconds"]), "share": f"{100 * s['seconds'] / wall:.1f} %"}
            for name, s in stages.items() if "seconds" in s]
    rest = wall - sum(r["seconds"] for r in rows)
    return rows + [{"stage": "outside stages", "seconds": rest, "share": f"{100 * rest / wall:.1f} %"},
                   {"stage": "total (demo wall time)", "seconds": wall, "share": "100 %"}]


def pool_rows(pools: dict) -> list[dict]:
    rows = []
    for name, p in pools.items():
        life = p["until"] - p["ready_at"]
        busy = sum(e["served"]["busy_s"] for e in p["engines"])
        rows.append({"pool": name + (f" (also {', '.join(p['also'])})" if p["also"] else ""),
                     "engines": len(p["engines"]), "wall s": life, "busy s": busy,
                     "idle share": f"{100 * (1 - busy / (len(p['engines']) * life)):.1f} %"})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=1, help="loop.rounds")
    p.add_argument("--run", help="run folder, kept (default: a temporary one, removed afterwards)")
    p.add_argument("--config", help="demo config (YAML), as `rlaif demo --config`; the demo's defaults otherwise")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides")
    args = p.parse_args()

    import ray

    from pipelines.apps.cli import main as rlaif
    from rlaif.manifest import Manifest

    tmp = None if args.run else Path(tempfile.mkdtemp(prefix="rlaif-bench-round-"))
    run_dir = Path(args.run) if args.run else tmp / "run"
    argv = ["demo", "--run", str(run_dir), "--set", f"loop.rounds={args.rounds}"]
    argv += (["--config", args.config] if args.config else []) + [a for kv in args.set for a in ("--set", kv)]
    try:
        t0 = time.time()
        rc = rlaif(argv)
        wall = time.time() - t0
        manifest = Manifest(run_dir).data if rc == 0 else {}
    finally:
        ray.shutdown()  # the local Ray the demo started in this process
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if rc:
        return rc

    shown = [("RUN_DIR" if a == str(run_dir) and tmp else a) for a in argv]  # a temporary folder says nothing
    print(f"\n{machine()}; `rlaif {' '.join(shown)}`; {load_average()}\n")
    print(table(stage_rows(manifest["stages"], wall), ["stage", "seconds", "share"]))
    if "pools" not in manifest:
        print("\nno engine pool stats in the manifest (recorded by pipelines/orchestration/loop.py run_loop before shutdown)")
        return 1
    print()
    print(table(pool_rows(manifest["pools"]), ["pool", "engines", "wall s", "busy s", "idle share"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
