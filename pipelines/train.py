"""Train stage: one DPO round with Ray Train workers running DeepSpeed (ZeRO-2 or ZeRO-3) on a LoRA of the policy.

    driver: pairs.parquet + frames → Ray Data → TorchTrainer(dpo_worker) → round_r/policy/ (merged HF folder)
    worker: load policy_in, attach a fresh LoRA, DeepSpeed steps on its data shard, checkpoints via ray.train;
            at the end rank 0 merges the LoRA into the weights, saves the new policy, and broadcasts the merged
            weights in a few buckets (one object-store put each) to every policy engine: one control call per engine.

Reference log-probs come with the pairs (pipelines.pairs), so no reference model is held here.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from rlaif.config import RunConfig as RlaifConfig
from rlaif.config import TrainConfig

from pipelines.frames_join import rows_with_frames
from pipelines.io import read_table

log = logging.getLogger(__name__)


def _skip_deepspeed_shm_build() -> None:
    """DeepSpeed's CPU comm backend JIT-compiles a shared-memory op with g++ (~100 s cold) that gloo does not need."""
    import importlib
    import sys

    importlib.import_module("deepspeed.comm.torch")
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def deepspeed_config(t: TrainConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": 0.0, "torch_adam": True}},
        "zero_optimization": {"stage": t.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": t.use_gpu},
        "steps_per_print": 10**9,
    }


def lora_config(t: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, target_modules=t.lora_target,
                      bias="none")


def export_and_sync(engine, t: TrainConfig, policy_in: str, policy_out: str, engines: list, bucket_mb: int) -> dict:
    """All ranks: gather the LoRA (ZeRO-3 shards it). Rank 0: merge it into a fresh copy of the round's starting
    weights, save the new policy (merged, plus the adapter), and broadcast the merged weights to the engines."""
    import deepspeed
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from actors.weight_sync import broadcast_weights
    from rlaif.manifest import publish, staging_path
    from rlaif.policy_model import load_policy

    lora = [p for n, p in engine.module.named_parameters() if "lora_" in n]
    with deepspeed.zero.GatheredParameters(lora, modifier_rank=None, enabled=t.zero_stage == 3):
        state = {k: v.detach().float().clone() for k, v in get_peft_model_state_dict(engine.module).items()}
    if ray.train.get_context().get_world_rank() != 0:
        return {}
    start = time.time()
    base, processor = load_policy(policy_in)
    peft_model = get_peft_model(base, lora_config(t))
    set_peft_model_state_dict(peft_model, state)
    final = Path(policy_out)
    staged = staging_path(final)
    peft_model.save_pretrained(staged / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(staged)
    processor.save_pretrained(staged)
    publish(staged, final)
    return {"save_s": time.time() - start, **broadcast_weights(engines, merged.state_dict().items(), bucket_mb)}


def dpo_worker(config: dict) -> None:
    import tempfile

    import deepspeed
    import torch
    from peft import get_peft_model
    from ray.train import Checkpoint

    from rlaif.dpo import dpo_loss
    from rlaif.policy_model import answer_logps, is_video_model, load_policy, pair_batch

    t = TrainConfig(**config["train"])
    if not t.use_gpu:
        _skip_deepspeed_shm_build()
    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    model, processor = load_policy(config["policy_in"])
    video = is_video_model(config["policy_in"])
    model = get_peft_model(model, lora_config(t))
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=deepspeed_config(t))
    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group resumes from the last checkpoint of this round
        with checkpoint.as_directory() as d:
            _, client = engine.load_checkpoint(d, load_module_strict=False)
        start_step = client["step"]

    def save(metrics: dict, step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:  # every rank saves its shard; Ray merges them into one checkpoint
            engine.save_checkpoint(tmp, tag=f"step{step}", client_state={"step": step}, exclude_frozen_parameters=True)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))

    shard = ray.train.get_dataset_shard("train")
    average = t.loss_type == "ipo"
    step, history = 0, []
    for _ in range(t.epochs):
        for batch in shard.iter_batches(batch_size=t.micro_batch_size, batch_format="pyarrow"):
            if step < start_step:
                step += 1
                continue
            rows = batch.to_pylist()
            n = len(rows)
            total, mean = answer_logps(engine, pair_batch(processor, rows, video))
            policy = mean if average else total
            ref_c = torch.tensor([r["ref_logp_chosen"] for r in rows])
            ref_r = torch.tensor([r["ref_logp_rejected"] for r in rows])
            out = dpo_loss(policy[:n], policy[n:], ref_c, ref_r, beta=t.beta, loss_type=t.loss_type,
                           label_smoothing=t.label_smoothing)
            loss = out.loss
            if t.sft_weight:
                loss = loss + t.sft_weight * -mean[:n].mean()
            engine.backward(loss)
            engine.step()
            step += 1
            history.append({"step": step, "loss": float(loss), "dpo_loss": float(out.loss),
                            "reward_margin": float(out.margin), "reward_accuracy": float(out.accuracy)})
            if step % t.checkpoint_every == 0:
                save({"step": step, **history[-1]}, step)
    sync = export_and_sync(engine, t, config["policy_in"], config["policy_out"], config["engines"], config["bucket_mb"])
    final = {"step": step, "history": history if ctx.get_world_rank() == 0 else [], **sync}
    save(final, step)


def run_train(cfg: RlaifConfig, run_dir: Path, round_dir: Path, policy_in: str, engines: list) -> dict:
    pairs = read_table(round_dir / "pairs.parquet")
    t = cfg.train
    workers = min(t.workers, pairs.num_rows)
    if workers == 0:
        log.warning("train: no preference pairs this round; the policy stays as it is")
        return {"steps": 0, "skipped": "no pairs"}
    if workers < t.workers:
        log.warning("train: only %d pairs, using %d worker(s) instead of %d", pairs.num_rows, workers, t.workers)
    dataset = rows_with_frames(run_dir / "videos.parquet", pairs)
    trainer = TorchTrainer(
        dpo_worker,
        train_loop_config={"train": t.model_dump(), "seed": cfg.seed, "policy_in": policy_in,
                           "policy_out": str(round_dir / "policy"), "engines": engines,
                           "bucket_mb": cfg.loop.sync_bucket_mb},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=t.use_gpu, resources_per_worker={"CPU": t.cpus_per_worker}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        datasets={"train": dataset},
        run_config=RunConfig(name=f"{cfg.name}-{round_dir.name}", storage_path=str((run_dir / "ray_train").resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=1), failure_config=FailureConfig(max_failures=2)),
    )
    start = time.time()
    result = trainer.fit()
    metrics = dict(result.metrics)
    history = metrics.pop("history", [])
    if history:
        log.info("train: %d steps, loss %.4f -> %.4f, reward margin %.4f -> %.4f, sync %.2f s (%d buckets, %d bytes)",
                 len(history), history[0]["loss"], history[-1]["loss"], history[0]["reward_margin"],
                 history[-1]["reward_margin"], metrics.get("sync_s", 0), metrics.get("sync_buckets", 0),
                 metrics.get("sync_bytes", 0))
    return {"fit_seconds": round(time.time() - start, 2), "workers": workers, "pairs": pairs.num_rows, "history": history, **metrics}
