"""Human-readable summaries of a run folder: stage times (with what went wrong in a stage that finished anyway)
and the per-round eval table."""
from __future__ import annotations

from rlaif.layout import RunLayout
from rlaif.manifest import Manifest
from rlaif.storage import RunPath

# (eval.json key, column header): ground truth first (what a user wants to know), then what the judge said.
EVAL_COLUMNS = [("round", "round"), ("answers", "answers"), ("exact_match", "exact match (ground truth)"),
                ("mean_score", "judge score (1-5)"), ("accuracy", "judge: share >= 3"),
                ("judge_agreement", "judge agrees with ground truth"), ("reference_match", "states the reference"),
                ("mean_tokens", "answer tokens"), ("parse_failure_rate", "judge parse failures")]
CAPTION_COLUMNS = ["caption_missing_rate", "caption_contradiction_rate", "caption_repetition_rate"]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def eval_rows(run_dir: RunPath) -> list[dict]:
    run = RunLayout(run_dir)
    paths = [run.base.eval] + [r.eval for r in run.rounds()]
    rows = [p.read_json() for p in paths if p.exists()]
    rebirth = run.rebirth.eval
    if rebirth.exists():
        rows.append({**rebirth.read_json(), "round": "rebirth"})
    return rows


def eval_table(run_dir: RunPath) -> str:
    rows = eval_rows(run_dir)
    columns = EVAL_COLUMNS + ([(c, c) for c in CAPTION_COLUMNS] if any(CAPTION_COLUMNS[0] in r for r in rows) else [])
    lines = ["| " + " | ".join(header for _, header in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        r = {**r, "round": "base" if r["round"] == -1 else r["round"]}
        lines.append("| " + " | ".join(_fmt(r.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def stage_warnings(stage: dict) -> list[str]:
    """What went wrong in a stage that finished anyway: a weight sync that fell back from the collective or
    shared-memory transport (`sync_fallback`, recorded by the train stage; its reason starts with the backend or
    transport that failed), ingest's internal errors (bugs, not bad input)."""
    out = []
    if stage.get("sync_fallback"):
        out.append(f"weight sync fell back to the object store: {stage['sync_fallback']}")
    if stage.get("internal_errors"):
        out.append(f"{stage['internal_errors']} internal error(s) in decoding: bugs, not bad input "
                   f"(quarantine.parquet)")
    return out


def run_warnings(manifest: Manifest) -> list[str]:
    """Every stage's warnings, as "stage: warning" lines."""
    return [f"{name}: {w}" for name, s in manifest.data["stages"].items() for w in stage_warnings(s)]


def stages_run(manifest: Manifest) -> dict[str, dict]:
    """The stages that finished or failed with their seconds recorded, in the order they ended."""
    timed = [(name, s) for name, s in manifest.data["stages"].items() if "seconds" in s]
    return dict(sorted(timed, key=lambda item: item[1].get("at", 0)))


def stage_times(manifest: Manifest) -> str:
    stages = stages_run(manifest)
    warned = any(stage_warnings(s) for s in stages.values())
    lines = ["| stage | seconds | rows |" + (" warnings |" if warned else ""),
             "|---|---|---|" + ("---|" if warned else "")]
    for name, s in stages.items():
        line = f"| {name} | {s['seconds']} | {s.get('rows', s.get('rows_in', s.get('pairs', '-')))} |"
        lines.append(line + (f" {'; '.join(stage_warnings(s)) or '-'} |" if warned else ""))
    return "\n".join(lines)
