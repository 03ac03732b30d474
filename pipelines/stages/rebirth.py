"""Rebirth tuning (video-SALMONN 2), the final stage: the final policy writes its answers to the training prompts
and its captions of the training videos, and the *starting* model is fine-tuned on them (SFT of a LoRA under
the same Ray Train + DeepSpeed trainer). The reborn policy goes to rebirth/policy, is broadcast to the policy
engines, and is evaluated like a round (rebirth/eval.json).

    rebirth/targets.parquet   video_id, prompt, target, kind (answer | caption)
"""
from __future__ import annotations


import pyarrow as pa
import pyarrow.compute as pc

from rlaif.prompts import CAPTION_REQUEST

from pipelines.stages.base import StageContext, stage
from pipelines.stages.caption import caption_videos, split_videos
from pipelines.stages.io import row_count, write_dataset
from pipelines.stages.joins import joined, mapped, ordered, stored
from pipelines.stages.rollout import generate_answers
from pipelines.stages.train import run_train

TARGETS = pa.schema([("video_id", pa.string()), ("prompt", pa.string()), ("target", pa.string()), ("kind", pa.string())])


def answer_targets(answers: pa.Table) -> pa.Table:
    """Answers joined with their prompts as TARGETS rows (an empty output teaches nothing but to stop at once, so it
    is left out)."""
    return _targets(answers.column("video_id"), answers.column("question"), answers.column("response"), "answer")


def caption_targets(captions: pa.Table) -> pa.Table:
    return _targets(captions.column("video_id"), pa.array([CAPTION_REQUEST] * captions.num_rows, pa.string()),
                    captions.column("caption"), "caption")


def _targets(video_ids, prompts, targets, kind: str) -> pa.Table:
    table = pa.table({"video_id": video_ids, "prompt": prompts, "target": targets,
                      "kind": pa.array([kind] * len(video_ids), pa.string())}, schema=TARGETS)
    return table.filter(pc.not_equal(pc.utf8_trim_whitespace(table.column("target")), ""))


def write_targets(ctx: StageContext) -> int:
    """The final policy's own outputs on the training data (the engines must hold the final policy), written to
    rebirth/targets.parquet; returns how many."""
    cfg, layout, out, policy = ctx.cfg, ctx.layout, ctx.out, ctx.policy_pool
    sampling = {"n": 1, "temperature": cfg.rebirth.temperature, "max_tokens": cfg.rebirth.max_tokens}
    generate_answers(layout, policy, "train", sampling, ctx.round, out.final_answers)
    answers = joined(stored(out.final_answers, ["prompt_id", "response"]),
                     stored(layout.prompts, ["prompt_id", "video_id", "question"]), "prompt_id")
    caption_videos(layout, policy, {**sampling, "max_tokens": cfg.caption.max_tokens}, out.final_captions,
                   split_videos(layout, "train"))
    parts = [mapped(answers, answer_targets), mapped(stored(out.final_captions, ["video_id", "caption"]),
                                                     caption_targets)]
    write_dataset(ordered(parts[0].union(parts[1])), out.targets, TARGETS, count=False)
    return row_count(out.targets)


@stage("rebirth")
def rebirth(ctx: StageContext) -> dict:
    """rebirth/policy: the starting model fine-tuned (SFT) on the final policy's answers and captions."""
    cfg = ctx.cfg
    ctx.out.dir.mkdir()
    targets = write_targets(ctx)
    train = cfg.train.model_copy(update={"epochs": cfg.rebirth.epochs, "lr": cfg.rebirth.lr})
    info = run_train(cfg, ctx.layout, ctx.out, stored(ctx.out.targets, rows=targets), engines=ctx.policy_pool.actors,
                     lora_base=ctx.start, reference=ctx.start, objective="sft", train=train)
    return {"targets": targets, **info}
