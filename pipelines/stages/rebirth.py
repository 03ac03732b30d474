"""Rebirth tuning (video-SALMONN 2), the final stage: the final policy writes its answers to the training prompts
and its captions of the training videos, and the *starting* model is fine-tuned on them (SFT of a LoRA under
the same Ray Train + DeepSpeed trainer). The reborn policy goes to rebirth/policy, is broadcast to the policy
engines, and is evaluated like a round (rebirth/eval.json).

    rebirth/targets.parquet   video_id, prompt, target, kind (answer | caption)
"""
from __future__ import annotations


import pyarrow as pa
import pyarrow.compute as pc

from actors.pool import EnginePool
from rlaif.config import RunConfig
from rlaif.prompts import CAPTION_REQUEST
from rlaif.storage import RunPath

from pipelines.stages.caption import caption_videos
from pipelines.stages.io import read_table, write_table
from pipelines.stages.rollout import generate_answers
from pipelines.stages.train import run_train

TARGETS = pa.schema([("video_id", pa.string()), ("prompt", pa.string()), ("target", pa.string()), ("kind", pa.string())])


def write_targets(cfg: RunConfig, run_dir: RunPath, out_dir: RunPath, policy: EnginePool, round_idx: int) -> pa.Table:
    """The final policy's own outputs on the training data (the engines must hold the final policy)."""
    sampling = {"n": 1, "temperature": cfg.rebirth.temperature, "max_tokens": cfg.rebirth.max_tokens}
    answers_path = out_dir / "final_answers.parquet"
    generate_answers(run_dir, policy, "train", sampling, round_idx, answers_path)
    prompts = read_table(run_dir / "prompts.parquet", ["prompt_id", "video_id", "question", "split"])
    answers = read_table(answers_path, ["prompt_id", "response"]).join(prompts, "prompt_id")
    rows = [{"video_id": r["video_id"], "prompt": r["question"], "target": r["response"], "kind": "answer"}
            for r in answers.to_pylist()]
    train_videos = sorted(set(prompts.filter(pc.equal(prompts.column("split"), "train")).column("video_id").to_pylist()))
    captions_path = out_dir / "final_captions.parquet"
    caption_videos(run_dir, policy, {**sampling, "max_tokens": cfg.caption.max_tokens}, captions_path, train_videos)
    rows += [{"video_id": r["video_id"], "prompt": CAPTION_REQUEST, "target": r["caption"], "kind": "caption"}
             for r in read_table(captions_path, ["video_id", "caption"]).to_pylist()]
    # An empty output teaches nothing but to stop at once; it is left out.
    table = pa.Table.from_pylist([r for r in rows if r["target"].strip()], schema=TARGETS)
    write_table(table, out_dir / "targets.parquet")
    return table


def run_rebirth(cfg: RunConfig, run_dir: RunPath, out_dir: RunPath, policy: EnginePool, start: str) -> dict:
    out_dir.mkdir()
    targets = write_targets(cfg, run_dir, out_dir, policy, cfg.loop.rounds)
    train = cfg.train.model_copy(update={"epochs": cfg.rebirth.epochs, "lr": cfg.rebirth.lr})
    info = run_train(cfg, run_dir, out_dir, targets, engines=policy.actors, lora_base=start, reference=start,
                     objective="sft", train=train)
    return {"targets": targets.num_rows, **info}
