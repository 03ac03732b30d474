"""`rlaif` command line: demo, run, ingest, and helpers to build the local test models and videos."""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
from pathlib import Path

import yaml

from rlaif.config import ConfigError, RunConfig, load_config, parse_config, set_dotted
from rlaif.layout import AuditLayout, ExperimentLayout, RunLayout
from rlaif.storage import RunPath
from rlaif.video_rows import InternalErrors

from pipelines.orchestration import console
from pipelines.orchestration.console import echo as print  # noqa: A001 - the commands' lines reach a quiet console
from pipelines.orchestration.resume import LayoutMismatch

log = logging.getLogger("rlaif")


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _config(args, defaults: dict | None = None) -> RunConfig:
    overrides = _overrides(args.set)
    if getattr(args, "config", None):
        return load_config(args.config, overrides)
    data: dict = copy.deepcopy(defaults or {})
    for k, v in overrides.items():
        set_dotted(data, k, v)
    return parse_config(data, origin="defaults + --set")


def _print_summary(manifest, run_dir: RunPath) -> None:
    from pipelines.apps.report import eval_table, run_warnings, stage_times

    _print_ingest(manifest.stage("ingest"), run_dir)
    if "loop" in manifest.data["stages"]:
        print("\nstage times:\n" + stage_times(manifest))
        print("\nper-round eval (held-out prompts):\n" + eval_table(run_dir))
    warnings = run_warnings(manifest)
    if warnings:
        print("\nWARNINGS:\n" + "\n".join(f"  {w}" for w in warnings))


def _print_ingest(stage: dict, run_dir: RunPath) -> None:
    from rlaif.decode import INTERNAL_ERROR

    print(f"\ningest: {stage['rows_in']} inputs -> {stage['rows_ok']} videos kept, "
          f"{stage['rows_quarantined']} quarantined ({stage['seconds']} s)")
    reasons = stage.get("reasons", {})
    for reason, n in reasons.items():
        if reason != INTERNAL_ERROR:
            print(f"  quarantined {n:3d} x {reason}")
    for code, n in stage.get("warnings", {}).items():
        print(f"  kept with a warning {n:3d} x {code}")
    if reasons.get(INTERNAL_ERROR):
        print(f"  INTERNAL ERRORS {reasons[INTERNAL_ERROR]:3d}: bugs in ray-rlaif or the configured decoder, not bad "
              f"input; please report them (quarantined as {INTERNAL_ERROR}, each with its traceback)")
    print(f"  {RunLayout(run_dir).videos}\n  {RunLayout(run_dir).quarantine}")


def cmd_demo(args) -> int:
    from pipelines.apps.demo import DEMO_OVERRIDES, prepare_demo
    from pipelines.orchestration.ray_env import init_ray
    from pipelines.orchestration.runner import run_pipeline
    from rlaif.models import resolve_model

    cfg = _config(args, DEMO_OVERRIDES)
    run_dir = RunPath.of(args.run or cfg.run_dir or "runs/demo")
    start = time.time()
    args.console.start(run_dir, RunLayout(run_dir).logs)
    roles = [("policy", cfg.models.policy)] + ([("judge", cfg.models.judge)] if cfg.needs_judge_engine() else [])
    with console.stage("models and inputs"):  # the first demo builds the warm policy here (minutes)
        for role, name in roles:
            log.info("%s model: %s", role, resolve_model(name))
        manifest_path = prepare_demo(cfg, run_dir)
    init_ray(cfg.ray)
    manifest = run_pipeline(cfg, run_dir, resume=args.resume, source=manifest_path)
    _print_summary(manifest, run_dir)
    print(f"\ndemo finished in {time.time() - start:.1f} s; run folder: {run_dir}")
    _print_report(run_dir)
    return 0


def cmd_run(args) -> int:
    from pipelines.orchestration.ray_env import init_ray
    from pipelines.orchestration.runner import run_pipeline

    cfg = _config(args)
    run_dir = RunPath.of(args.run or cfg.run_dir or f"runs/{cfg.name}")
    args.console.start(run_dir, RunLayout(run_dir).logs)
    init_ray(cfg.ray)
    manifest = run_pipeline(cfg, run_dir, resume=args.resume)
    _print_summary(manifest, run_dir)
    _print_report(run_dir)
    return 0


def _print_report(run_dir: RunPath) -> None:
    layout = RunLayout(run_dir)
    if layout.report_html.exists():  # written by the loop after every eval (pipelines.apps.run_report)
        print(f"report: {layout.report_html} (self-contained page), {layout.report} (Markdown, images in "
              f"{layout.report_assets})")


def cmd_report(args) -> int:
    from pipelines.apps.run_report import write_report

    run_dir = RunPath.of(args.run)
    write_report(run_dir)  # a folder without manifest.json: FileNotFoundError, a clear error
    _print_report(run_dir)
    return 0


def cmd_experiment(args) -> int:
    from pipelines.apps.experiment import run_experiment
    from pipelines.orchestration.ray_env import init_ray

    cfg = _config(args)
    folder = RunPath.of(args.run or cfg.run_dir or f"runs/{cfg.name}")
    start = time.time()
    args.console.start(folder, ExperimentLayout(folder).logs)
    init_ray(cfg.ray)
    results = run_experiment(cfg, folder, resume=args.resume)
    from pipelines.apps.experiment_report import arm_table

    if results["main_arm"]:
        print("\nheld-out exact match (background, colour, shape, motion), start -> each round, paired change:\n"
              + arm_table(results["seeds"]))
    for check, value in results["bar"].items():
        print(f"{check}: {value}")
    layout = ExperimentLayout(folder)
    plot = f", plot: {layout.plot}" if results["main_arm"] else " (no arms: no plot)"
    print(f"\nexperiment finished in {time.time() - start:.1f} s; report: {layout.report}{plot}")
    return 0


def cmd_judge_audit(args) -> int:
    from pipelines.apps.judge_audit import audit_markdown, run_judge_audit
    from pipelines.orchestration.ray_env import init_ray

    cfg = _config(args)
    folder = RunPath.of(args.run or f"runs/{cfg.name}-judge-audit")
    args.console.start(folder, AuditLayout(folder).logs)
    init_ray(cfg.ray)
    print("\n" + audit_markdown(run_judge_audit(cfg, folder, resume=args.resume)))
    print(f"\njudged answers: {AuditLayout(folder).judged('<judge>')}; tables: {AuditLayout(folder).table}")
    return 0


def cmd_ingest(args) -> int:
    from pipelines.orchestration.ray_env import init_ray
    from pipelines.orchestration.runner import run_pipeline

    cfg = _config(args)
    run_dir = RunPath.of(args.run)
    args.console.start(run_dir, RunLayout(run_dir).logs)
    init_ray(cfg.ray)
    manifest = run_pipeline(cfg, run_dir, resume=args.resume, source=args.source, loop=False)
    _print_ingest(manifest.stage("ingest"), run_dir)
    return 0


def cmd_serve(args) -> int:
    import json
    import signal

    from serve.target import resolve_target

    if args.openapi:
        from serve.app import openapi_schema

        Path(args.openapi).write_text(json.dumps(openapi_schema(), indent=2, sort_keys=True) + "\n")
        print(f"OpenAPI schema written to {args.openapi}")
        return 0
    if not args.target:
        raise ConfigError("rlaif serve needs a run folder, model folder, adapter folder or built-in model name")
    from pipelines.orchestration.ray_env import init_ray
    from serve.app import start

    cfg = _config(args)
    target = resolve_target(args.target, use_adapter=args.adapter, model_id=cfg.serve.model_name)
    init_ray(cfg.ray)
    url = start(target, cfg.serve)
    print(f"serving {target.model}{' + adapter ' + target.adapter if target.adapter else ''} as "
          f"{target.model_id!r} at {url}/v1 (OpenAPI: {url}/openapi.json); Ctrl-C stops", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    from ray import serve

    serve.shutdown()
    return 0


def cmd_plan(args) -> int:
    from rlaif.gpu_memory import plan_memory
    from rlaif.placement import describe, pack, run_actors

    cfg = _config(args)
    plan = pack(run_actors(cfg), args.nodes, args.cpus_per_node, args.gpus_per_node)
    print(f"placement plan of {args.config} on {args.nodes} node(s) x ({args.cpus_per_node:g} CPUs, "
          f"{args.gpus_per_node} GPUs):\n")
    print(describe(cfg, plan))
    memory, memory_fits = plan_memory(cfg, args.gpu_memory_gb)
    print("\n" + memory)
    if not memory_fits:
        print("DOES NOT FIT in GPU memory: see the rows marked NO (more trainer workers with ZeRO-3, "
              "train.gradient_checkpointing, a smaller micro-batch or fewer frames; a larger tensor_parallel_size)")
    return 0 if plan.fits and memory_fits else 1


def cmd_models(args) -> int:
    from rlaif.models import resolve_model

    for name in args.names:
        print(f"{name}: {resolve_model(name)}")
    return 0


def cmd_videos(args) -> int:
    from rlaif.testkit.broken_videos import write_broken_corpus
    from rlaif.testkit.synthetic_videos import write_synthetic_corpus

    out = Path(args.out)
    videos = write_synthetic_corpus(out / "synthetic", args.n, seed=args.seed)
    print(f"{len(videos)} synthetic clips with ground truth in {out / 'synthetic'} (truth.parquet)")
    if args.broken:
        cases = write_broken_corpus(out / "broken", videos[0].path, seed=args.seed)
        print(f"{len(cases)} broken inputs in {out / 'broken'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlaif", description="Align a video LMM with AI feedback, on Ray.")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and every library's log on the console (by default it goes to the run "
                        "folder's logs/, and the console shows one line per stage)")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, config_required=False):
        if config_required:
            sp.add_argument("config", help="run config (YAML)")
        else:
            sp.add_argument("--config", help="run config (YAML); defaults otherwise")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. ingest.num_frames=4")
        sp.add_argument("--resume", action="store_true", help="skip stages finished with the same config")

    d = sub.add_parser("demo", help="the CPU demo: makes its own videos and test models, then runs the pipeline")
    d.add_argument("--run", help="run folder (default runs/demo)")
    common(d)
    d.set_defaults(fn=cmd_demo)

    r = sub.add_parser("run", help="run the pipeline described by a config")
    r.add_argument("--run", help="run folder (default: run_dir from the config, else runs/<name>)")
    common(r, config_required=True)
    r.set_defaults(fn=cmd_run)

    rp = sub.add_parser("report", help="(re)write a run folder's report.md and report.html: per-round table, plots, "
                                       "held-out answers before and after; from a finished or interrupted run")
    rp.add_argument("run", help="run folder (e.g. runs/demo, or an experiment arm's seed_0/arms/<name>)")
    rp.set_defaults(fn=cmd_report)

    e = sub.add_parser("experiment", help="does the loop learn? warm-start a policy, run the loop once per arm "
                                          "(judge, reference, ...) and report held-out accuracy against ground truth")
    e.add_argument("config", help="experiment config (YAML), e.g. configs/experiment.yaml")
    e.add_argument("--run", help="experiment folder (default: run_dir from the config, else runs/<name>)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    e.add_argument("--resume", action="store_true", help="skip stages finished with the same config")
    e.set_defaults(fn=cmd_experiment)

    ja = sub.add_parser("judge-audit", help="before spending compute: how often does each judge of the config's "
                                            "`audit` section score a right answer above a wrong one, per kind")
    ja.add_argument("config", help="config (YAML) with an `audit` section, e.g. configs/experiment.yaml")
    ja.add_argument("--run", help="audit folder (default runs/<name>-judge-audit)")
    ja.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. audit.videos=20")
    ja.add_argument("--resume", action="store_true", help="skip judges already audited with the same config")
    ja.set_defaults(fn=cmd_judge_audit)

    i = sub.add_parser("ingest", help="ingest alone: decode and sample videos into RUN/videos.parquet")
    i.add_argument("source", help="folder, glob, Parquet manifest (column uri/path/video) or one file")
    i.add_argument("--run", required=True, help="run folder")
    common(i)
    i.set_defaults(fn=cmd_ingest)

    s = sub.add_parser("serve", help="serve an aligned policy: OpenAI-compatible /v1/chat/completions on Ray Serve")
    s.add_argument("target", nargs="?", help="run folder (its final policy), model folder, adapter folder, or "
                                             "built-in model name")
    s.add_argument("--adapter", action="store_true", help="serve a run's final policy as base + LoRA adapter")
    s.add_argument("--openapi", metavar="FILE", help="write the OpenAPI schema to FILE and exit")
    s.add_argument("--config", help="config (YAML) whose `serve` section is used; defaults otherwise")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. serve.port=8001")
    s.set_defaults(fn=cmd_serve)

    pl = sub.add_parser("plan", help="dry run: resolve a config's actors and pack them onto a cluster shape")
    pl.add_argument("config", help="run config (YAML)")
    pl.add_argument("--nodes", type=int, default=1)
    pl.add_argument("--cpus-per-node", type=float, default=96)
    pl.add_argument("--gpus-per-node", type=int, default=8)
    pl.add_argument("--gpu-memory-gb", type=float, default=80, help="memory of one GPU (default 80: H100/A100-80G)")
    pl.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    pl.set_defaults(fn=cmd_plan)

    m = sub.add_parser("models", help="build (once, cached) and print the local test models: tiny-qwen2-vl, "
                                      "tiny-qwen2-vl-b, tiny-qwen2-vl-captioner, tiny-qwen2-vl-warm, tiny-judge, "
                                      "smollm2-135m-instruct")
    m.add_argument("names", nargs="*", default=["tiny-qwen2-vl", "tiny-judge", "smollm2-135m-instruct"])
    m.set_defaults(fn=cmd_models)

    v = sub.add_parser("videos", help="write synthetic clips with ground truth (and optionally a broken corpus)")
    v.add_argument("out")
    v.add_argument("--n", type=int, default=12)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--broken", action="store_true")
    v.set_defaults(fn=cmd_videos)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # The commands that run pipeline work start the console (args.console.start) once their folder is known: from
    # then on it is quiet unless -v (pipelines.orchestration.console), and an error that ends the command is one
    # short block on it naming the failed stage and the log with the traceback.
    with console.session(args.command, verbose=args.verbose) as args.console:
        try:
            return args.fn(args)
        except ConfigError as err:
            print(f"rlaif: {err}", file=sys.stderr)
            return 2
        except (ValueError, FileNotFoundError, LayoutMismatch) as err:
            if not args.console.failed(err):
                print(f"rlaif: error: {err}", file=sys.stderr)
            return 2
        except InternalErrors as err:  # bugs of ray-rlaif met while decoding: the run stops, the tables are written
            if not args.console.failed(err):
                print(f"rlaif: {err}", file=sys.stderr)
            return 1
        except Exception as err:  # a bug: quiet, its traceback goes to the log and the console says where
            if not args.console.failed(err):
                raise
            return 1


if __name__ == "__main__":
    sys.exit(main())
