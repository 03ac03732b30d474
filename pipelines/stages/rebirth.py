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
from pipelines.stages.io import read_table, write_table
from pipelines.stages.rollout import generate_answers
from pipelines.stages.train import run_train

TARGETS = pa.schema([("video_id", pa.string()), ("prompt", pa.string()), ("target", pa.string()), ("kind", pa.string())])


def write_targets(ctx: StageContext) -> pa.Table:
    """The final policy's own outputs on the training data (the engines must hold the final policy)."""
    cfg, layout, out, policy = ctx.cfg, ctx.layout, ctx.out, ctx.policy_pool
    sampling = {"n": 1, "temperature": cfg.rebirth.temperature, "max_tokens": cfg.rebirth.max_tokens}
    generate_answers(layout, policy, "train", sampling, ctx.round, out.final_answers)
    prompts = read_table(layout.prompts, ["prompt_id", "video_id", "question", "split"])
    answers = read_table(out.final_answers, ["prompt_id", "response"]).join(prompts, "prompt_id")
    rows = [{"video_id": r["video_id"], "prompt": r["question"], "target": r["response"], "kind": "answer"}
            for r in answers.to_pylist()]
    train_videos = sorted(set(prompts.filter(pc.equal(prompts.column("split"), "train")).column("video_id").to_pylist()))
    caption_videos(layout, policy, {**sampling, "max_tokens": cfg.caption.max_tokens}, out.final_captions, train_videos)
    rows += [{"video_id": r["video_id"], "prompt": CAPTION_REQUEST, "target": r["caption"], "kind": "caption"}
             for r in read_table(out.final_captions, ["video_id", "caption"]).to_pylist()]
    # An empty output teaches nothing but to stop at once; it is left out.
    table = pa.Table.from_pylist([r for r in rows if r["target"].strip()], schema=TARGETS)
    write_table(table, out.targets)
    return table


@stage("rebirth")
def rebirth(ctx: StageContext) -> dict:
    """rebirth/policy: the starting model fine-tuned (SFT) on the final policy's answers and captions."""
    cfg = ctx.cfg
    ctx.out.dir.mkdir()
    targets = write_targets(ctx)
    train = cfg.train.model_copy(update={"epochs": cfg.rebirth.epochs, "lr": cfg.rebirth.lr})
    info = run_train(cfg, ctx.layout, ctx.out, targets, engines=ctx.policy_pool.actors, lora_base=ctx.start,
                     reference=ctx.start, objective="sft", train=train)
    return {"targets": targets.num_rows, **info}
