"""A run's report: report.md (images in report_assets/) and report.html (the same page, images inlined), in the run
folder. The loop rewrites it after every eval so a running job can be watched; `rlaif report RUN` rebuilds it from
any run folder, finished or not. It shows what exists: a run that has only evaluated its starting policy gets its
summary, table and gallery of starting answers; the training sections appear with the first trained round.

    the run          name, models, rounds, videos kept and quarantined, questions
    held-out answers the per-round eval table (pipelines.apps.report), judge score shares and figures per round
    gallery          a few held-out questions (rlaif.report.gallery.pick): frames, question, reference, the answer at
                     the start and after the last round, each with the judge's score and explanation
    training         pairs kept, loss and DPO reward margin / accuracy per step, per round
    stage times      seconds per stage, with what went wrong in stages that finished anyway
"""
from __future__ import annotations

import heapq
import logging
import time
from collections import Counter

import pyarrow.compute as pc
import pyarrow.dataset as pads

from rlaif.layout import RoundLayout, RunLayout
from rlaif.manifest import Manifest
from rlaif.metrics import exact_match
from rlaif.report import gallery, plots
from rlaif.report.page import code, image, table, text, to_html
from rlaif.schemas import frames_of
from rlaif.storage import RunPath

from pipelines.apps.report import eval_table, run_warnings, stage_times, stages_run
from pipelines.stages.io import read_matching

log = logging.getLogger(__name__)

GALLERY = 6  # held-out questions shown
GALLERY_POOL = 1000  # chosen among the held-out questions with the lowest prompt_ids (all of them in a small run)


def read_rows(path: RunPath, columns: list[str] | None = None, prompt_ids: list[str] | None = None) -> list[dict]:
    """A run-folder table's rows ([] when it is not written yet); `prompt_ids` reads only theirs. (A few videos'
    frames: io.read_matching, a row group at a time.)"""
    if not path.is_dir():
        return []
    where = pads.field("prompt_id").isin(prompt_ids) if prompt_ids is not None else None
    return pads.dataset(path.path, filesystem=path.fs, format="parquet").to_table(columns, filter=where).to_pylist()


def count_rows(path: RunPath, where=None) -> int:
    """A run-folder table's rows passing `where` (0 when it is not written yet), counted by a scan."""
    return pads.dataset(path.path, filesystem=path.fs, format="parquet").count_rows(filter=where) if path.is_dir() else 0


def score_counts(judgments: RunPath) -> Counter:
    """plots.score_counts of a judgments table, added up over a scan."""
    counts: Counter = Counter()
    for batch in pads.dataset(judgments.path, filesystem=judgments.fs, format="parquet").to_batches(columns=["score"]):
        counts += plots.score_counts(batch.column(0).to_pylist())
    return counts


def first_held_out(prompts: RunPath, n: int) -> list[dict]:
    """The `n` held-out prompts with the lowest prompt_ids, from a scan (the report's memory does not grow with the
    run): the gallery picks among them."""
    if not prompts.is_dir():
        return []
    kept: list[dict] = []
    columns = ["prompt_id", "video_id", "question", "reference_answer", "split"]
    for batch in pads.dataset(prompts.path, filesystem=prompts.fs, format="parquet").to_batches(columns=columns):
        held = [r for r in batch.to_pylist() if r["split"] == "eval"]
        kept = heapq.nsmallest(n, kept + held, key=lambda r: r["prompt_id"])
    return kept


def eval_folders(run: RunLayout) -> list[tuple[str, RoundLayout]]:
    """(label, folder) of every eval written so far, in order: the starting policy, each round, rebirth."""
    folders = [("base", run.base)] + [(f"round {r.dir.name.split('_')[1]}", r) for r in run.rounds()] + [
        ("rebirth", run.rebirth)]
    return [(label, f) for label, f in folders if f.eval_answers.exists()]


def training_stages(run: RunLayout, manifest: Manifest) -> list[tuple[str, dict]]:
    """(label, stage record) of every training stage recorded: each round's, in order, then rebirth's."""
    named = [(rd.dir.name.replace("_", " "), f"{rd.dir.name}/train") for rd in run.rounds()]
    named.append(("rebirth (SFT)", f"{run.rebirth.dir.name}/train"))
    return [(label, manifest.stage(name)) for label, name in named if manifest.stage(name)]


def status_line(manifest: Manifest) -> str:
    stages = manifest.data["stages"]
    if not stages:
        return "No stage has run yet."
    rebirth = manifest.data.get("config", {}).get("rebirth", {}).get("enabled")
    last = "rebirth/eval" if rebirth else "loop"
    unfinished = [name for name, stage in stages.items() if stage.get("status") != "done"]
    if stages.get(last, {}).get("status") == "done" and not unfinished:
        return "Finished."
    candidates = {name: stages[name] for name in unfinished} or stages  # a stage under way says most
    latest, record = max(candidates.items(), key=lambda kv: kv[1].get("at", 0))
    return (f"In progress or interrupted: the latest stage recorded is {code(latest)} ({record.get('status')}). "
            "This report shows what exists so far.")


def summary(run: RunLayout, manifest: Manifest) -> list[str]:
    cfg = manifest.data.get("config", {})
    models, loop, train, judge = (cfg.get(k, {}) for k in ("models", "loop", "train", "judge"))
    stages = manifest.data["stages"]
    ingest = stages.get("ingest", {})
    latest = max((stage.get("at", 0) for stage in stages.values()), default=0)
    n_prompts, n_held = count_rows(run.prompts), count_rows(run.prompts, pc.field("split") == "eval")
    scorer = judge.get("function") if judge.get("kind") == "function" else models.get("judge")
    lines = [f"- policy: {code(models.get('policy'))} ({text(train.get('finetune', '?'))} fine-tuning), "
             f"judge: {code(scorer)} ({text(judge.get('kind', '?'))})"
             + (f", captioner: {code(models['captioner'])}" if models.get("captioner") else ""),
             f"- rounds: {len(run.rounds())} started of {loop.get('rounds', '?')}"
             + (", then rebirth tuning" if cfg.get("rebirth", {}).get("enabled") else "")
             + (f"; {(latest - manifest.data['started']) / 60:.1f} min from the start to the latest stage recorded"
                if latest and "started" in manifest.data else "")]
    if ingest:
        reasons = ", ".join(f"{n} {text(r)}" for r, n in sorted(ingest.get("reasons", {}).items()))
        lines.append(f"- videos: {ingest.get('rows_ok')} kept of {ingest.get('rows_in')}, "
                     f"{ingest.get('rows_quarantined')} quarantined" + (f" ({reasons})" if reasons else ""))
    if n_prompts:
        refs = count_rows(run.prompts, (pc.field("split") == "eval") & pc.field("reference_answer").is_valid()
                         & (pc.field("reference_answer") != ""))
        lines.append(f"- questions: {n_prompts - n_held} train, {n_held} held out ({refs} with a reference answer)")
    return lines


def gallery_section(run: RunLayout, folders: list[tuple[str, RoundLayout]], images: dict) -> list[str]:
    """GALLERY held-out questions, each with its frames and its answers at the start and after the last eval."""
    held = first_held_out(run.prompts, GALLERY_POOL)
    ids = [p["prompt_id"] for p in held]
    answers = {label: {r["prompt_id"]: r for r in read_rows(f.eval_judgments, prompt_ids=ids)
                       or read_rows(f.eval_answers, prompt_ids=ids)} for label, f in folders}
    first, last = folders[0][0], folders[-1][0]
    n_held = count_rows(run.prompts, pc.field("split") == "eval")
    shown = gallery.pick([p for p in held if p["prompt_id"] in answers[first]],
                         {k: r["response"] for k, r in answers[first].items()},
                         {k: r["response"] for k, r in answers[last].items()}, GALLERY)
    # Frames are the run's largest rows: read a row group at a time, only the groups of the videos shown.
    videos = {v["video_id"]: v for v in read_matching(run.videos, "video_id", sorted({q["video_id"] for q in shown}),
                                                      ["video_id", "frames", "frames_shape"]).to_pylist()}
    order = (f", those whose answer changed from {first} to {last} first" if last != first else
             ": the starting policy's answers (after the first round, its answers next to the latest round's)")
    lines = [f"{len(shown)} of the {n_held} held-out questions{order}. The judge's score is 1-5; exact match "
             "compares with the reference answer, which no judge sees.", ""]
    for i, q in enumerate(shown, 1):
        lines += [f"### {i}. {text(q['question'])}", ""]
        if q["video_id"] in videos:
            asset = run.report_images.frames(i)
            images[asset] = gallery.frame_strip(frames_of(videos[q["video_id"]]))
            lines += [image(f"sampled frames of {q['video_id']}", str(asset.relative_to(run.dir))), ""]
        ref = q.get("reference_answer")
        lines += [f"video {code(q['video_id'])}; reference answer: " + (f"**{text(ref)}**" if ref else "none"), ""]
        rows = []
        for label in dict.fromkeys([first, last]):
            a = answers[label].get(q["prompt_id"])
            if a is None:
                continue
            score = a.get("score")
            right = ("-" if not ref else "yes" if exact_match(a["response"], ref) else "no")
            rows.append([label, text(a["response"], 300) or "*(empty)*", right,
                         f"{score:g}" if score is not None else text(a.get("status") or "not judged yet"),
                         text(a.get("explanation") or "", 300) or "-"])
        lines += [table(["policy", "answer", "exact match", "judge score", "judge's explanation"], rows), ""]
    return lines


def pairs_kept(run: RunLayout, manifest: Manifest) -> list[tuple[str, int | None, int | None]]:
    """(label, pairs kept, training questions) of every round whose pairs are written."""
    out = []
    for rd in run.rounds():
        made = manifest.stage(f"{rd.dir.name}/pairs")
        if made.get("status") == "done":
            out.append((rd.dir.name.replace("_", " "), made.get("rows"), made.get("prompts")))
        elif rd.pairs.exists():  # written, not yet recorded (the stage was stopped right after)
            out.append((rd.dir.name.replace("_", " "), count_rows(rd.pairs), None))
    return out


def training_section(run: RunLayout, manifest: Manifest, images: dict) -> list[str]:
    trained = training_stages(run, manifest)
    rows = []
    for label, s in trained:
        history = s.get("history") or []
        last = history[-1] if history else {}
        rows.append([label, str(len(history)),
                     f"{history[0]['loss']:.3f} → {last['loss']:.3f}" if history else "-",
                     f"{last['reward_margin']:.3f}" if "reward_margin" in last else "-",
                     f"{last['reward_accuracy']:.3f}" if "reward_accuracy" in last else "-",
                     text(s.get("skipped") or s.get("status", "-")), str(s.get("seconds", "-"))])
    kept = pairs_kept(run, manifest)
    if not rows and not kept:
        return ["No round has made its preference pairs yet.", ""]
    lines = [table(["training", "steps", "loss (first → last step)", "reward margin (last step)",
                    "reward accuracy (last step)", "status", "seconds"], rows), ""] if rows else []
    figures = run.report_images
    lines += figure(run, images, figures.pairs, plots.pairs(kept), "pairs kept per round")
    return lines + figure(run, images, figures.training,
                          plots.training([(label, s.get("history") or []) for label, s in trained]),
                          "loss and DPO reward margin per step")


def figure(run: RunLayout, images: dict, asset: RunPath, png: bytes | None, alt: str) -> list[str]:
    """report.md's lines showing `png` (nothing when there is nothing to draw yet); `images` gets it, to be written."""
    if png is None:
        return []
    images[asset] = png
    return [image(alt, str(asset.relative_to(run.dir))), ""]


def build(run: RunLayout) -> tuple[str, dict]:
    """report.md's text and its images (asset path -> PNG bytes)."""
    manifest = Manifest(run.dir)
    folders = eval_folders(run)
    images, figures = {}, run.report_images
    name = manifest.data.get("name") or run.dir.name
    lines = [f"# Run report: {text(name)}", "", status_line(manifest), "",
             f"Run folder {code(run.dir)}; written {time.strftime('%Y-%m-%d %H:%M:%S')}.", "", "## The run", "",
             *summary(run, manifest), "", "## Held-out answers per round", ""]
    if folders:
        lines += [eval_table(run.dir), ""]
        evals = [(label, f.eval.read_json()) for label, f in folders if f.eval.exists()]
        scores = {label: score_counts(f.eval_judgments) for label, f in folders if f.eval_judgments.exists()}
        lines += figure(run, images, figures.heldout, plots.heldout(evals), "held-out figures per round")
        lines += figure(run, images, figures.scores, plots.judge_scores(scores), "judge scores per round")
        lines += ["## Gallery: held-out questions before and after", "", *gallery_section(run, folders, images)]
    else:
        lines += ["No held-out eval yet: the starting policy is evaluated after ingest, captions and questions.", ""]
    lines += ["## Training", "", *training_section(run, manifest, images), "", "## Stage times", ""]
    ran = stages_run(manifest)
    if ran:
        lines += [stage_times(manifest), ""]
        lines += figure(run, images, figures.stage_times,
                        plots.stage_times([(n, float(s["seconds"])) for n, s in ran.items()]), "seconds per stage")
    warnings = run_warnings(manifest)
    if warnings:
        lines += ["**Warnings:**", "", *[f"- {text(w)}" for w in warnings], ""]
    return "\n".join(lines), images


def write_report(run_dir: RunPath | str) -> RunLayout:
    """Writes report.md, its images and report.html in the run folder (replacing an earlier report)."""
    run = RunLayout(run_dir)
    if not run.manifest.exists():
        raise FileNotFoundError(f"{run.dir}: not a run folder (no {run.manifest.name})")
    markdown, images = build(run)
    for asset, png in images.items():
        asset.write_bytes(png)
    run.report.write_text(markdown)
    relative = {str(asset.relative_to(run.dir)): png for asset, png in images.items()}
    run.report_html.write_text(to_html(markdown, relative, title=f"Run report: {run.dir.name}"))
    for stale in run.report_assets.glob("*"):  # images of an earlier report this one no longer shows
        if stale not in images:
            stale.remove()
    return run


def refresh_report(run_dir: RunPath | str) -> None:
    """write_report for a running job: a report that cannot be written is a bug in the report, never a reason to
    stop the run, so it is logged loudly with its traceback and the run goes on."""
    try:
        write_report(run_dir)
    except Exception:  # noqa: BLE001
        log.warning("the run report could not be written (a bug in ray-rlaif, please report it); the run goes on",
                    exc_info=True)
