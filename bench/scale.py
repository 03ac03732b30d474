"""How the whole pipeline grows with the number of prompts: per stage the wall time, rows/s, the run folder's bytes,
and the driver's peak memory, at several sizes, with a power-law fit of each (issue 23).

    python bench/scale.py [--prompts 1000,4000,16000] [--out bench/scale_results.md] [--questions-per-video 4]
                          [--work DIR] [--lock FILE] [--json FILE] [--doc docs/scale.md] [--timeout-s 5400]
                          [--set key=value ...]

Each size is one real `rlaif run` (pipelines/apps/cli.py) in its own process, on the CPU demo's configuration
(pipelines.apps.demo.DEMO_OVERRIDES: the warm tiny video LMM, the rlaif.scorers:CaptionSupport judge) with the small
settings below (SCALE; --set adds more), on inputs that rlaif.testkit makes:

- N prompts = N / questions-per-video synthetic clips (rlaif.testkit.synthetic_videos) x that many ground-truth
  questions each (pipelines.apps.demo.make_demo_inputs, capped by questions.max_per_video): videos and prompts grow
  together, so ingest and captioning are measured at scale too, not only the round. The clips are made once, for the
  largest size; a smaller size takes the first clips (clip i is the same whatever the corpus size).
- The driver's peak memory is the `rlaif run` process's own RSS (Ray's raylet, GCS and workers are other
  processes), polled every 0.2 s with psutil: a peak shorter than that can be missed.
- Stage seconds and rows come from the run's manifest.json; "outside stages" is the rest of the process's wall time
  (Python and Ray start, engine pools start, shutdown). Bytes are the run folder's, per table (du of each entry);
  each Parquet table's files, row groups and rows, from its footers.
- The fit is least squares of log y on log N, y ~ a N^b: b <= 1 is linear or better. Fixed costs (engine start,
  Ray Train start) make b < 1 at small N, so the marginal cost between the two largest sizes is printed too: that is
  the figure to extrapolate. One run per size: no spread is measured; the machine's load is printed before and after.

--lock FILE holds an flock on FILE around each run (not around input making), so other users of the machine's Ray
(integration tests) wait between sizes rather than for the whole bench. --json FILE keeps the raw results and merges
them with the sizes already in it, so sizes run in separate invocations end up in one table.
"""
from __future__ import annotations

import argparse
import copy
import fcntl
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, load_average, machine, table

# Small enough for 16k prompts to be possible on a 2-core CPU; every key is a real config key (rlaif/config.py).
SCALE = {
    "ingest.num_frames": 4,           # fewer frames: cheaper decode and prefill, same number of rows
    "ingest.decoders": 1,
    "caption.max_tokens": 16,
    "questions.eval_fraction": 0.1,   # held-out videos: base eval + one round's eval
    "rollout.samples_per_prompt": 2,  # K: the smallest the config allows
    "rollout.max_tokens": 8,
    "loop.rounds": 1,
    "loop.eval_max_tokens": 8,
    "train.epochs": 1,
    "train.micro_batch_size": 16,     # fewer, larger steps: train time is per step on a CPU
    "train.checkpoint_every": 1000,   # a checkpoint is a barrier; one at the end is enough here
}
POLL_S = 0.2


def make_inputs(root: Path, videos: int) -> tuple[Path, Path]:
    """The demo's inputs (synthetic clips, a manifest, ground-truth questions) for `videos` clips under root, made
    once and reused: (manifest, questions)."""
    from pipelines.apps.demo import make_demo_inputs
    from rlaif.config import DemoConfig

    done = root / "done.json"
    if done.exists() and json.loads(done.read_text())["videos"] >= videos:
        d = json.loads(done.read_text())
        return Path(d["manifest"]), Path(d["questions"])
    manifest, questions = make_demo_inputs(DemoConfig(synthetic_videos=videos, real_clips=False, broken_files=0),
                                           root)
    done.write_text(json.dumps({"videos": videos, "manifest": str(manifest), "questions": str(questions)}))
    return manifest, questions


def subset_inputs(manifest: Path, questions: Path, videos: int, qpv: int, out: Path) -> tuple[Path, Path, int]:
    """The first `videos` clips of the corpus and at most `qpv` of their questions each: (manifest, questions,
    prompts). The cap is applied here rather than by questions.max_per_video so that N is known before the run."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    m = pq.read_table(manifest).slice(0, videos)
    q = pq.read_table(questions)
    q = q.filter(pc.is_in(q.column("uri"), value_set=m.column("uri")))
    seen: dict[str, int] = {}
    keep = []
    for uri in q.column("uri").to_pylist():
        seen[uri] = seen.get(uri, 0) + 1
        keep.append(seen[uri] <= qpv)
    q = q.filter(pa.array(keep))
    pq.write_table(m, out / "manifest.parquet")
    pq.write_table(q, out / "questions.parquet")
    return out / "manifest.parquet", out / "questions.parquet", q.num_rows


def write_config(path: Path, manifest: Path, questions: Path, overrides: dict) -> None:
    """DEMO_OVERRIDES + SCALE + --set over the defaults, as a run config file (as tests/integration's tiny_config)."""
    import yaml

    from pipelines.apps.demo import DEMO_OVERRIDES
    from rlaif.config import parse_config, set_dotted

    data = copy.deepcopy(DEMO_OVERRIDES)
    for key, value in {**SCALE, **overrides}.items():
        set_dotted(data, key, value)
    data["name"] = "scale"
    cfg = parse_config(data, origin="bench/scale.py")
    cfg.ingest.source, cfg.questions.file = str(manifest), str(questions)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))


def run_watched(argv: list[str], log: Path, timeout_s: float) -> tuple[int, float, int]:
    """Runs argv (its output to log) and polls its own RSS: (exit code, wall seconds, peak RSS bytes). A run past
    timeout_s is stopped (SIGTERM, then SIGKILL, to its process group: the processes it started) and gets rc 124."""
    import psutil

    with log.open("wb") as out:
        t0 = time.time()
        # PYTHONPATH: Ray's workers import this checkout's code too (the one the bench runs from), even where the
        # project is installed elsewhere in editable mode.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO, env=env)
        ps, peak, rc = psutil.Process(proc.pid), 0, None
        while rc is None:
            try:
                peak = max(peak, ps.memory_info().rss)
            except psutil.Error:  # exited between poll() and memory_info()
                pass
            if time.time() - t0 > timeout_s:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                return 124, time.time() - t0, peak
            time.sleep(POLL_S)
            rc = proc.poll()
        return rc, time.time() - t0, peak


def run_entries(run_dir: Path) -> dict[str, Path]:
    """The tables of a run folder by name: each top-level entry, and each entry of a round's folder (round_0/pairs)."""
    out = {}
    for entry in sorted(run_dir.iterdir()):
        if entry.is_dir() and entry.name.startswith("round_"):
            out.update({f"{entry.name}/{e.name}": e for e in sorted(entry.iterdir())})
        else:
            out[entry.name] = entry
    return out


def folder_bytes(run_dir: Path) -> dict[str, int]:
    """Bytes per table (run_entries)."""
    def du(p: Path) -> int:
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    return {name: du(path) for name, path in run_entries(run_dir).items()}


def parquet_layout(run_dir: Path) -> dict[str, list[int]]:
    """Per Parquet table (the same names as folder_bytes): [files, row groups, rows], from the footers. A table of
    many small files or row groups costs a footer (entry) and a batch each wherever it is read (issue 23)."""
    import pyarrow.parquet as pq

    out = {}
    for name, path in run_entries(run_dir).items():
        files = sorted(path.rglob("*.parquet")) if path.is_dir() and name.endswith(".parquet") else []
        if files:
            metas = [pq.ParquetFile(f).metadata for f in files]
            out[name] = [len(files), sum(m.num_row_groups for m in metas), sum(m.num_rows for m in metas)]
    return out


def stage_rows(stage: dict) -> int | None:
    """The rows a stage wrote, whichever name its manifest entry gives them."""
    for key in ("rows", "rows_ok", "answers"):
        if key in stage:
            return stage[key]
    return None


def measure(n: int, args, inputs: tuple[Path, Path], work: Path) -> dict:
    videos = math.ceil(n / args.questions_per_video)
    size_dir = work / f"n{n}"
    shutil.rmtree(size_dir, ignore_errors=True)
    manifest, questions, prompts = subset_inputs(*inputs, videos, args.questions_per_video, size_dir / "inputs")
    config, run_dir = size_dir / "scale.yaml", size_dir / "run"
    write_config(config, manifest, questions, dict(kv for kv in args.overrides))
    argv = [sys.executable, "-m", "pipelines.apps.cli", "run", str(config), "--run", str(run_dir)]
    lock = open(args.lock, "a") if args.lock else None  # noqa: SIM115 - held across the run
    try:
        waited = time.time()
        if lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
        waited = time.time() - waited
        load_before = os.getloadavg()
        rc, wall, peak = run_watched(argv, size_dir / "rlaif.log", args.timeout_s)
        load_after = os.getloadavg()
    finally:
        if lock:
            lock.close()
    result = {"target": n, "prompts": prompts, "videos": videos, "rc": rc, "wall_s": wall, "driver_peak_rss": peak,
              "load_before": load_before, "load_after": load_after, "lock_wait_s": waited, "stages": {}, "bytes": {}}
    manifest_path = run_dir / "manifest.json"
    if manifest_path.exists():
        stages = json.loads(manifest_path.read_text())["stages"]
        result["stages"] = {name: {"seconds": s["seconds"], "rows": stage_rows(s),
                                   "driver_peak_mb": s.get("driver_peak_rss_mb"),
                                   "driver_peak_start_mb": s.get("driver_peak_rss_mb_at_start")}
                            for name, s in stages.items() if isinstance(s, dict) and "seconds" in s}
        result["bytes"] = folder_bytes(run_dir)
        result["layout"] = parquet_layout(run_dir)
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def fit(ns: list[float], ys: list[float]) -> float | None:
    """b of y ~ a N^b, least squares on log-log; None under two usable points."""
    import numpy as np

    pts = [(n, y) for n, y in zip(ns, ys) if y and y > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def marginal(ns: list[float], ys: list[float], per: float = 1000) -> float | None:
    """y's growth per `per` prompts between the two largest sizes: the cost with the fixed costs taken out."""
    if len(ns) < 2 or ys[-1] is None or ys[-2] is None or ns[-1] == ns[-2]:
        return None
    return (ys[-1] - ys[-2]) / (ns[-1] - ns[-2]) * per


STAGE_ORDER = ("ingest", "caption", "questions", "rollout", "judge", "rollout_judge", "pairs", "train", "eval")


def pipeline_order(stage: str) -> tuple:
    """The manifest lists stages by name; the tables list them in the order they run (round_base is the base eval)."""
    top, _, sub = stage.partition("/")
    if not sub:
        return (-2, STAGE_ORDER.index(top) if top in STAGE_ORDER else 99, stage)
    number = top.removeprefix("round_")
    return (int(number) if number.isdigit() else -1, STAGE_ORDER.index(sub) if sub in STAGE_ORDER else 99, stage)


def render(results: list[dict], command: str) -> str:
    ok = sorted((r for r in results if r["rc"] == 0), key=lambda r: r["prompts"])
    lines = [f"`{command}`; {machine()}; one run per size (no spread measured).", ""]
    for r in sorted(results, key=lambda r: r["target"]):
        lb, la = r["load_before"], r["load_after"]
        lines.append(f"- {r['prompts']} prompts ({r['videos']} clips): exit {r['rc']}, {r['wall_s']:.0f} s; load "
                     f"average {lb[0]:.1f} / {lb[1]:.1f} / {lb[2]:.1f} before, {la[0]:.1f} / {la[1]:.1f} / "
                     f"{la[2]:.1f} after (1/5/15 min, {os.cpu_count()} cores)")
    if not ok:
        return "\n".join(lines + ["", "no size finished"])
    ns = [r["prompts"] for r in ok]
    sizes = [f"{n} prompts" for n in ns]

    def section(title, names, value, unit, fmt=lambda v: v):
        rows = []
        for name in names:
            ys = [value(r, name) for r in ok]
            row = {title: name, **{s: (fmt(y) if y is not None else None) for s, y in zip(sizes, ys)}}
            b = fit(ns, ys)
            row["b (y ~ N^b)"] = f"{b:.2f}" if b is not None else None
            m = marginal(ns, ys)
            row[f"{unit} per 1k prompts (marginal)"] = fmt(m) if m is not None else None
            rows.append(row)
        return table(rows, [title, *sizes, "b (y ~ N^b)", f"{unit} per 1k prompts (marginal)"])

    stages = sorted({name for r in ok for name in r["stages"]}, key=pipeline_order)
    stage_s = lambda r, s: r["stages"].get(s, {}).get("seconds")  # noqa: E731
    rows_per_s = []
    for s in stages:
        row = {"stage": s}
        for size, r in zip(sizes, ok):
            st = r["stages"].get(s, {})
            row[size] = (f"{st['rows']} / {st['rows'] / st['seconds']:.3g}"
                         if st.get("rows") is not None and st.get("seconds") else None)
        rows_per_s.append(row)
    driver = [r["driver_peak_rss"] / 1e6 for r in ok]
    b_driver, m_driver = fit(ns, driver), marginal(ns, driver)
    # A stage under a second at every size is rounding (manifest seconds have 2 decimals), not growth.
    superlinear = [s for s in stages if max(stage_s(r, s) or 0 for r in ok) >= 1
                   and (fit(ns, [stage_s(r, s) for r in ok]) or 0) > 1.1]
    goals = ("Goals (issue 23): driver memory flat in N, every stage linear or better. Driver peak RSS: "
             + (f"b = {b_driver:.2f}, {m_driver:+.1f} MB per 1k prompts between the two largest sizes"
                if b_driver is not None else "needs two sizes")
             + f"; stages (of 1 s or more) with b > 1.1: {', '.join(superlinear) or 'none'}.")
    outside = lambda r, _: r["wall_s"] - sum(st["seconds"] for st in r["stages"].values())  # noqa: E731
    tables = sorted({t for r in ok for t in r["bytes"]})
    lines += ["", "Wall seconds per stage (manifest.json), with the fit and the marginal cost:", "",
              section("stage", stages, stage_s, "s"),
              "", "Wall seconds outside the stages, and of the whole `rlaif run` process:", "",
              section("part", ["outside stages", "whole run"],
                      lambda r, s: outside(r, s) if s == "outside stages" else r["wall_s"], "s"),
              "", "Rows written / rows per second, per stage:", "",
              table(rows_per_s, ["stage", *sizes]),
              "", "Driver (`rlaif run` process) peak RSS, MB:", "",
              section("process", ["driver peak RSS"], lambda r, _: r["driver_peak_rss"] / 1e6, "MB",
                      lambda v: round(v, 1)),
              *(["", "The driver's memory high-water mark at the end of each stage (its manifest record's "
                 "driver_peak_rss_mb, MiB): the stage where it rises is the one that holds memory:", "",
                 section("after stage", stages, lambda r, s: r["stages"].get(s, {}).get("driver_peak_mb"), "MiB",
                         lambda v: round(v, 1))]
                if any(st.get("driver_peak_mb") for r in ok for st in r["stages"].values()) else []),
              *(["", "The same at the start of each stage (driver_peak_rss_mb_at_start): a rise from the previous "
                 "stage's end to this stage's start happened between stages, in the runner:", "",
                 section("before stage", stages, lambda r, s: r["stages"].get(s, {}).get("driver_peak_start_mb"),
                         "MiB", lambda v: round(v, 1))]
                if any(st.get("driver_peak_start_mb") for r in ok for st in r["stages"].values()) else []),
              "", "Run folder bytes per table, MB:", "",
              section("table", tables, lambda r, t: (r["bytes"].get(t) or 0) / 1e6 or None, "MB",
                      lambda v: round(v, 3)),
              *(["", "Parquet files / row groups / rows per table (from the footers; each file is a footer to read and "
                 "each row group a footer entry and at least one batch, wherever the table is read):", "",
                 table([{"table": t, **{size: "{} / {} / {}".format(*r["layout"][t]) if t in r.get("layout", {})
                                         else None for size, r in zip(sizes, ok)}}
                        for t in sorted({t for r in ok for t in r.get("layout", {})})], ["table", *sizes])]
                if any(r.get("layout") for r in ok) else []),
              "", goals]
    return "\n".join(lines)


def paste(doc: Path, text: str) -> None:
    """Replaces what lies between the doc's scale-results markers with text (the doc's figures are the bench's)."""
    begin, end = "<!-- scale-results:begin -->", "<!-- scale-results:end -->"
    body = doc.read_text()
    if begin not in body or end not in body:
        raise SystemExit(f"{doc}: no {begin} ... {end} markers")
    head, rest = body.split(begin, 1)
    doc.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", default="1000,4000,16000", help="comma-separated sizes (prompts = clips x questions)")
    p.add_argument("--questions-per-video", type=int, default=4,
                   help="questions kept per clip (a clip has at most 5 ground-truth kinds)")
    p.add_argument("--out", default="bench/scale_results.md", help="the Markdown table, rewritten after every size")
    p.add_argument("--json", help="raw results, merged with the sizes already in it")
    p.add_argument("--doc", help="also paste the results into this Markdown file, between its scale-results markers "
                                 "(docs/scale.md)")
    p.add_argument("--work", help="inputs and run folders (default: a temporary folder, removed afterwards)")
    p.add_argument("--keep", action="store_true", help="keep each size's run folder (under --work)")
    p.add_argument("--lock", help="flock this file around each run")
    p.add_argument("--timeout-s", type=float, default=5400, help="a run taking longer is stopped and marked failed")
    p.add_argument("--set", dest="overrides", action="append", default=[], type=lambda kv: _kv(kv),
                   metavar="KEY=VALUE", help="config overrides on top of the bench's (rlaif/config.py keys)")
    args = p.parse_args()
    sizes = sorted({int(float(s)) for s in args.prompts.split(",") if s.strip()})
    shown = " ".join(["python bench/scale.py", f"--prompts {','.join(map(str, sizes))}",
                      f"--questions-per-video {args.questions_per_video}",
                      *[f"--set {k}={json.dumps(v)}" for k, v in args.overrides]])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    tmp = None if args.work else Path(tempfile.mkdtemp(prefix="rlaif-bench-scale-"))
    work = Path(args.work) if args.work else tmp
    results = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).exists() else []
    print(f"{machine()}; {load_average()} at the start", flush=True)
    try:
        t0 = time.time()
        inputs = make_inputs(work / "inputs", math.ceil(max(sizes) / args.questions_per_video))
        print(f"inputs for {max(sizes)} prompts made in {time.time() - t0:.0f} s (not in the table)", flush=True)
        for n in sizes:
            print(f"== {n} prompts", flush=True)
            r = measure(n, args, inputs, work)
            print(f"   exit {r['rc']}, {r['wall_s']:.0f} s, driver peak RSS {r['driver_peak_rss'] / 1e6:.0f} MB"
                  + (f"; log: {work / f'n{n}' / 'rlaif.log'}" if r["rc"] else ""), flush=True)
            results = [x for x in results if x["target"] != n] + [r]
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            Path(args.out).write_text("<!-- written by bench/scale.py; rerun it instead of editing -->\n"
                                      + render(results, shown) + "\n")
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{load_average()} at the end\n")
    print(render(results, shown))
    if args.doc:
        paste(Path(args.doc), render(results, shown))
    return 0 if all(r["rc"] == 0 for r in results) else 1


def _kv(pair: str):
    import yaml

    key, sep, value = pair.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {pair!r}")
    return key.strip(), yaml.safe_load(value)


if __name__ == "__main__":
    raise SystemExit(main())
