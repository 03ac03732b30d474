"""Train stage: Ray Train workers running DeepSpeed (ZeRO-2 or ZeRO-3) on a LoRA of the policy (or, with
train.finetune "full", on all of its weights).

    driver: pairs.parquet + frames → Ray Data → TorchTrainer(train_worker) → round_r/policy/ (merged HF folder)
    worker: load the LoRA's base, attach a fresh LoRA (or the previous round's), DeepSpeed steps on its data shard
            (rlaif.objectives: DPO family + SFT terms, or plain SFT for rebirth tuning), checkpoints via ray.train;
            at the end rank 0 merges the LoRA into the weights, extrapolates them if configured, saves the new
            policy, and broadcasts the merged weights in a few buckets (one object-store put each) to every policy
            engine: one control call per engine (with loop.sync adapter, each engine hot-loads the adapter instead).

Reference log-probs come with the pairs (pipelines.stages.pairs), so no reference model is held here.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass

import pyarrow as pa
import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from rlaif.config import RunConfig as RlaifConfig
from rlaif.config import TrainConfig
from rlaif.layout import PolicyLayout, RoundLayout, RunLayout
from rlaif.models import resolve_model
from rlaif.storage import RunPath, local_folder, local_staging, publish_folder

from pipelines.stages.base import StageContext, stage
from pipelines.stages.frames_join import rows_with_frames
from pipelines.stages.io import read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """What every Ray Train worker of one training run gets (train_loop_config={"job": TrainJob})."""

    train: TrainConfig  # the optimisation settings (for rebirth and the warm start, a modified copy of cfg.train)
    seed: int
    objective: str  # "dpo": rows are pairs (rlaif.objectives.preference_loss); "sft": rows are prompt/target
    lora_base: str  # folder of the model the LoRA (or full fine-tuning) starts from
    lora_init: str | None  # a previous round's adapter to keep training (train.merge_each_round false)
    reference: str  # θ_ref of MMAIP-V's extrapolation
    policy_out: str  # where the new policy is saved (round_<r>/policy)
    extrapolation_alpha: float | None  # MMAIP-V's α (DPO only), None: no extrapolation
    engines: list  # the policy engines to bring to the new policy (none for the warm start)
    bucket_mb: int  # loop.sync_bucket_mb
    sync_transport: str  # loop.sync_transport
    adapter_sync: bool  # the engines keep the starting policy and hot-load adapters trained on it (loop.sync adapter)


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
        # torch's AdamW (DeepSpeed's own CPU Adam is a JIT-compiled op), fused: one kernel over all the parameters
        # instead of a loop over tensors (a SmolLM2 full fine-tuning step on 2 cores: 3.8 s instead of 4.3 s).
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": 0.0, "torch_adam": True, "fused": True}},
        "zero_optimization": {"stage": t.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": t.use_gpu},
        "steps_per_print": 10**9,
    }


def lora_config(t: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, target_modules=t.lora_target,
                      bias="none")


def trained_weights(engine, t: TrainConfig, job: TrainJob):
    """All ranks: gather what was trained (ZeRO-3 shards it). Rank 0: (the new policy as a transformers model on a
    fresh copy of the base weights, its adapter when it is a LoRA (merged into it later), the base's processor);
    other ranks: Nones."""
    import deepspeed
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    from rlaif.policy_model import load_policy

    full = t.finetune == "full"
    params = list(engine.module.parameters()) if full else [p for n, p in engine.module.named_parameters() if "lora_" in n]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None, enabled=t.zero_stage == 3):
        trained = engine.module.state_dict() if full else get_peft_model_state_dict(engine.module)
        state = {k: v.detach().float().clone() for k, v in trained.items()}
    if ray.train.get_context().get_world_rank() != 0:
        return None, None, None
    base, processor = load_policy(job.lora_base)
    if full:
        base.load_state_dict(state)
        return base, None, processor
    peft_model = get_peft_model(base, lora_config(t))
    set_peft_model_state_dict(peft_model, state)
    return peft_model, peft_model, processor


def export_and_sync(engine, t: TrainConfig, job: TrainJob) -> dict:
    """Rank 0: extrapolate the new weights when asked (MMAIP-V), save the new policy (merged, plus the adapter of a
    LoRA), and bring the engines to it: the merged weights broadcast, or (loop.sync adapter, engines holding the
    weights the LoRA was trained on) the adapter hot-loaded."""
    from actors.weight_sync import broadcast_weights, hot_load_adapter
    from rlaif.extrapolate import extrapolate
    from rlaif.policy_model import load_policy

    model, adapter, processor = trained_weights(engine, t, job)
    if model is None:
        return {}
    start = time.time()
    alpha = job.extrapolation_alpha
    reference = load_policy(job.reference)[0].state_dict() if alpha else None  # θ_ref of the extrapolation
    # Saved on the local disk first, then published to the run folder (which may be an object store).
    final = RunPath.of(job.policy_out)
    staged = local_staging(final)
    if adapter is not None:
        # An extrapolated policy is no longer base + adapter: its adapter is kept under another name (θ_dpo's record).
        layout = PolicyLayout(staged)
        adapter.save_pretrained((layout.dpo_adapter if alpha else layout.adapter).local)
        model = adapter.merge_and_unload()
    if alpha:
        model.load_state_dict(extrapolate(reference, model.state_dict(), alpha))
    model.save_pretrained(staged)
    processor.save_pretrained(staged)
    publish_folder(staged, final)
    if not job.engines:
        synced = {}
    elif job.adapter_sync and adapter is not None and not alpha:  # the engines hold lora_base: add the adapter
        synced = hot_load_adapter(job.engines, str(PolicyLayout(final).adapter), label=str(final))
    else:
        synced = broadcast_weights(job.engines, model.state_dict().items(), job.bucket_mb, label=str(final),
                                   transport=job.sync_transport)
    return {"save_s": time.time() - start, **synced}


def train_worker(config: dict) -> None:
    """One Ray Train worker: DPO (objective "dpo", rows are pairs) or SFT (objective "sft", rows are prompt/target)
    of a LoRA under DeepSpeed, checkpointed through ray.train, exported and broadcast at the end."""
    import deepspeed
    import torch
    from peft import PeftModel, get_peft_model
    from ray.train import Checkpoint

    from rlaif.objectives import preference_loss, sft_loss
    from rlaif.policy_model import is_video_model, load_policy

    job: TrainJob = config["job"]
    t = job.train
    if not t.use_gpu:
        _skip_deepspeed_shm_build()
    torch.manual_seed(job.seed)
    ctx = ray.train.get_context()
    model, processor = load_policy(job.lora_base)
    video = is_video_model(job.lora_base)
    if job.lora_init:  # merge_each_round=False: the LoRA of the previous round keeps training
        model = PeftModel.from_pretrained(model, local_folder(job.lora_init), is_trainable=True)
    elif t.finetune == "lora":
        model = get_peft_model(model, lora_config(t))  # (finetune "full": every weight trains)
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
            # One folder name for all ranks, so that their shards land together.
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{step}")

    shard = ray.train.get_dataset_shard("train")
    step, history = 0, []
    for _ in range(t.epochs):
        for batch in shard.iter_batches(batch_size=t.micro_batch_size, batch_format="pyarrow"):
            if step < start_step:
                step += 1
                continue
            started = time.perf_counter()
            rows = batch.to_pylist()
            if job.objective == "sft":
                loss, metrics = sft_loss(engine, processor, rows, video)
            else:
                loss, metrics = preference_loss(engine, processor, rows, t, video)
            engine.backward(loss)
            engine.step()
            step += 1
            history.append({"step": step, **metrics, "step_s": time.perf_counter() - started})  # throughput, per step
            if step % t.checkpoint_every == 0:
                save({"step": step, **history[-1]}, step)
    sync = export_and_sync(engine, t, job)
    final = {"step": step, "resumed_from_step": start_step, "history": history if ctx.get_world_rank() == 0 else [],
             **sync}
    save(final, step)


def run_train(cfg: RlaifConfig, layout: RunLayout, out: RoundLayout, data: pa.Table, *, engines: list, lora_base: str,
              reference: str, objective: str = "dpo", train: TrainConfig | None = None,
              lora_init: str | None = None) -> dict:
    """Trains a LoRA on `lora_base` (starting from the adapter `lora_init` when given) over `data` (rows with a
    video_id of the run's videos), writes out.policy, and broadcasts it to `engines`. `reference` is θ_ref of the
    extrapolation."""
    t = train or cfg.train
    workers = min(t.workers, data.num_rows)
    if workers == 0:
        log.warning("train: no training rows; the policy stays as it is")
        return {"steps": 0, "skipped": "no rows"}
    if workers < t.workers:
        log.warning("train: only %d rows, using %d worker(s) instead of %d", data.num_rows, workers, t.workers)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": TrainJob(
            train=t, seed=cfg.seed, objective=objective, lora_base=lora_base, lora_init=lora_init, reference=reference,
            policy_out=str(out.policy), extrapolation_alpha=t.extrapolation_alpha if objective == "dpo" else None,
            engines=engines, bucket_mb=cfg.loop.sync_bucket_mb, sync_transport=cfg.loop.sync_transport,
            adapter_sync=cfg.loop.sync == "adapter" and lora_base == resolve_model(cfg.models.policy))},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker,
                                                           **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        datasets={"train": rows_with_frames(layout.videos, data)},
        # Ray Train resumes a run of the same name from its last checkpoint (a driver killed mid-training, then
        # --resume); the config hash in the name keeps a changed config from resuming another config's training.
        run_config=RunConfig(name=f"{cfg.name}-{out.dir.name}-{cfg.hash()}", storage_path=str(layout.train_storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=1), failure_config=FailureConfig(max_failures=2)),
    )
    start = time.time()
    result = trainer.fit()
    metrics = dict(result.metrics)
    history = metrics.pop("history", [])
    if history:
        log.info("train (%s): %d steps, loss %.4f -> %.4f, sync %.2f s (%d buckets, %d bytes)", objective,
                 len(history), history[0]["loss"], history[-1]["loss"], metrics.get("sync_s", 0),
                 metrics.get("sync_buckets", 0), metrics.get("sync_bytes", 0))
    return {"fit_seconds": round(time.time() - start, 2), "workers": workers, "rows": data.num_rows,
            "history": history, **metrics}


@stage("train", "loop.sync", "loop.sync_transport", "models.policy")
def train(ctx: StageContext) -> dict:
    """One DPO round on round_<r>/pairs.parquet -> round_<r>/policy, broadcast to the policy engines. With
    merge_each_round the LoRA is fresh on the round's starting policy (mrDPO); without it the previous round's adapter
    keeps training on the starting model. With train.caption_sft_weight each pair also carries its video's
    ground-truth caption."""
    from pipelines.stages.caption import reference_captions

    cfg = ctx.cfg
    pairs = read_table(ctx.out.pairs)
    if cfg.train.caption_sft_weight and pairs.num_rows:
        truth = reference_captions(cfg, ctx.layout)
        pairs = pairs.append_column("gt_caption", pa.array([truth.get(v) for v in pairs.column("video_id").to_pylist()],
                                                           pa.string()))
    if cfg.train.merge_each_round:
        lora_base, lora_init = ctx.policy, None
    else:
        lora_base, lora_init = ctx.start, ctx.adapter
    engines = ctx.policy_pool.actors if ctx.pools.get("policy") else []  # (no pool: nothing to broadcast to)
    return run_train(cfg, ctx.layout, ctx.out, pairs, engines=engines, lora_base=lora_base, lora_init=lora_init,
                     reference=ctx.reference)
