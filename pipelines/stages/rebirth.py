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
from pipelines.stages.caption import caption_videos
from pipelines.stages.frames_join import join_partitions
from pipelines.stages.io import read_dataset, row_count, write_dataset
from pipelines.stages.rollout import generate_answers, split_prompts
from pipelines.stages.train import run_train

TARGETS = pa.schema([("video_id", pa.string()), ("prompt", pa.string()), ("target", pa.string()), ("kind", pa.string())])


def as_targets(batch: pa.Table, prompt: str | None, kind: str) -> pa.Table:
    """Rows of (video_id, question or `prompt`, response or caption) as TARGETS rows of `kind`, without the empty
    outputs (an empty output teaches nothing but to stop at once)."""
    target = batch.column("response" if kind == "answer" else "caption")
    table = pa.table({"video_id": batch.column("video_id"),
                      "prompt": batch.column("question") if prompt is None else pa.array([prompt] * batch.num_rows),
                      "target": target, "kind": pa.array([kind] * batch.num_rows)}, schema=TARGETS)
    return table.filter(pc.not_equal(pc.utf8_trim_whitespace(pc.fill_null(target, "")), ""))


def write_targets(ctx: StageContext) -> int:
    """The final policy's own outputs on the training data (the engines must hold the final policy), streamed into
    rebirth/targets.parquet; returns the number of targets."""
    cfg, layout, out, policy = ctx.cfg, ctx.layout, ctx.out, ctx.policy_pool
    sampling = {"n": 1, "temperature": cfg.rebirth.temperature, "max_tokens": cfg.rebirth.max_tokens}
    n_answers = generate_answers(layout, policy, "train", sampling, ctx.round, out.final_answers)
    prompts, n_prompts = split_prompts(layout, "train")
    train_videos = (read_dataset(layout.videos, ["video_id"])
                    .join(prompts.select_columns(["video_id"]), "left_semi",
                          join_partitions(row_count(layout.videos) + n_prompts), on=("video_id",))
                    .materialize())
    caption_videos(layout, policy, {**sampling, "max_tokens": cfg.caption.max_tokens}, out.final_captions,
                   train_videos, train_videos.count())
    answers = read_dataset(out.final_answers, ["prompt_id", "response"]).join(
        prompts.select_columns(["prompt_id", "video_id", "question"]), "inner", join_partitions(n_answers),
        on=("prompt_id",))
    targets = answers.map_batches(as_targets, fn_args=(None, "answer"), batch_format="pyarrow").union(
        read_dataset(out.final_captions, ["video_id", "caption"]).map_batches(
            as_targets, fn_args=(CAPTION_REQUEST, "caption"), batch_format="pyarrow"))
    write_dataset(targets, out.targets, TARGETS, count=False)
    return row_count(out.targets)


@stage("rebirth")
def rebirth(ctx: StageContext) -> dict:
    """rebirth/policy: the starting model fine-tuned (SFT) on the final policy's answers and captions."""
    cfg = ctx.cfg
    ctx.out.dir.mkdir()
    n = write_targets(ctx)
    train = cfg.train.model_copy(update={"epochs": cfg.rebirth.epochs, "lr": cfg.rebirth.lr})
    info = run_train(cfg, ctx.layout, ctx.out, read_dataset(ctx.out.targets), engines=ctx.policy_pool.actors,
                     lora_base=ctx.start, reference=ctx.start, objective="sft", train=train, rows=n)
    return {"targets": n, **info}
