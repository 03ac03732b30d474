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

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass

import pyarrow as pa
import ray
import ray.data
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from actors.progress import RowCounter, counter, expect
from rlaif.config import RunConfig as RlaifConfig
from rlaif.config import TrainConfig
from rlaif.layout import PolicyLayout, RoundLayout, RunLayout
from rlaif.models import resolve_model
from rlaif.objectives import GT_CAPTION_KEY
from rlaif.seeding import request_seed
from rlaif.storage import RunPath, local_folder, local_staging, publish_folder

from pipelines.stages.base import StageContext, stage
from pipelines.stages.caption import reference_captions
from pipelines.stages.joins import FRAME_COLUMNS, Rows, joined, partitions, rows_with_frames, stored, transformed

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
    sync_required: bool = False  # loop.sync_transport_required: a failed collective sync is an error, no fallback
    progress: RowCounter | None = None  # rank 0 counts its steps here, for the console's progress line


def _skip_deepspeed_shm_build() -> None:
    """DeepSpeed's CPU comm backend JIT-compiles a shared-memory op with g++ (~100 s cold) that gloo does not need."""
    import importlib
    import sys

    importlib.import_module("deepspeed.comm.torch")
    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None


def zero_stage(t: TrainConfig) -> int:
    """The ZeRO stage DeepSpeed runs: train.zero_stage, except ZeRO-2 on one fp32 worker, which runs as stage 0.
    ZeRO-2 partitions the optimizer state and gradients over the workers; with one worker there is nothing to
    partition, and it still keeps a flat fp32 copy of the weights, copies each gradient into it and the updated copy
    back after every step. Stage 0 steps torch's optimizer on the parameters themselves: a SmolLM2 full fine-tuning
    step on 2 cores went from 2.32 to 1.88 s (the step's optimizer part from 0.44 to 0.18 s). With bf16, stage 0 is
    DeepSpeed's BF16_Optimizer, with flat buffers of its own, so a bf16 worker keeps ZeRO-2."""
    return 0 if t.zero_stage == 2 and t.workers == 1 and not t.bf16 else t.zero_stage


def deepspeed_config(t: TrainConfig) -> dict:
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": 1.0,
        # torch's AdamW (DeepSpeed's own CPU Adam is a JIT-compiled op), fused: one kernel over all the parameters
        # instead of a loop over tensors (a SmolLM2 full fine-tuning step on 2 cores: 3.8 s instead of 4.3 s).
        "optimizer": {"type": "AdamW", "params": {"lr": t.lr, "weight_decay": 0.0, "torch_adam": True, "fused": True}},
        "zero_optimization": {"stage": zero_stage(t), "stage3_gather_16bit_weights_on_model_save": True},
        "bf16": {"enabled": t.bf16},
        "steps_per_print": 10**9,
    }


def train_step(engine, processor, rows: list[dict], t: TrainConfig, objective: str, video: bool, seed: int) -> dict:
    """One optimizer step of a DeepSpeed engine on `rows`: the objective's loss, backward, step; its figures. `seed`
    seeds dropout, so that a resumed run draws what the uninterrupted one did (bench/dpo.py's --alone runs it too)."""
    import torch

    from rlaif.objectives import preference_loss, sft_loss

    torch.manual_seed(seed)
    if objective == "sft":
        loss, metrics = sft_loss(engine, processor, rows, video)
    else:
        loss, metrics = preference_loss(engine, processor, rows, t, video)
    engine.backward(loss)
    engine.step()
    return metrics


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
                                   transport=job.sync_transport, required=job.sync_required)
    return {"save_s": time.time() - start, **synced}


def trainable_digests(engine, zero3: bool) -> dict[str, str]:
    """sha256 of each trainable parameter's whole value (gathered one at a time under ZeRO-3), by name: what a restore
    must give back bit for bit. Every rank calls it (the gather is collective)."""
    import deepspeed
    import torch

    out = {}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([p], enabled=zero3):
            value = p.detach().cpu().contiguous()
            h = hashlib.sha256(f"{tuple(value.shape)}{value.dtype}".encode())
            h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
            out[name] = h.hexdigest()
    return out


def strict_trainable_load(engine):
    """DeepSpeed's custom_load_fn for checkpoints saved with exclude_frozen_parameters: the module state must hold
    every trainable parameter and persistent buffer, and nothing the model lacks; only frozen parameters (the LoRA's
    base, loaded from lora_base and never changed by training) may be missing. DeepSpeed's own strict load would
    also demand the frozen weights, which the checkpoint leaves out by design."""
    frozen = {n for n, p in engine.module.named_parameters() if not p.requires_grad}

    def load(src: dict, dst) -> None:
        result = dst.load_state_dict(src, strict=False)  # (a shape mismatch raises even so)
        missing, unexpected = set(result.missing_keys) - frozen, set(result.unexpected_keys)
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not match the model: missing {sorted(missing)[:8]} "
                               f"({len(missing)}), unexpected {sorted(unexpected)[:8]} ({len(unexpected)})")
    return load


def batch_digest(batch: pa.Table) -> str:
    """A short fingerprint of a batch's rows without their frames (which rows, in which order): the history records
    it per rank, so a resumed run can check that it skips the very batches the checkpoint had trained on."""
    rows = batch.drop_columns([c for c in FRAME_COLUMNS if c != "video_id" and c in batch.column_names]).to_pylist()
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:12]


def train_worker(config: dict) -> None:
    """One Ray Train worker: DPO (objective "dpo", rows are pairs) or SFT (objective "sft", rows are prompt/target)
    of a LoRA under DeepSpeed, checkpointed through ray.train, exported and broadcast at the end.

    A restarted worker group (or a resumed run) continues from the last checkpoint exactly: the trainable weights and
    the optimizer state are loaded strictly and checked bit for bit against the digests saved with them, the loss
    history up to the checkpoint comes back from its client state, the data order is the same (ordered shards,
    ordered_ingest), and each step's randomness is seeded from (seed, rank, step), not from what
    ran before. So the steps after a restore are the uninterrupted run's steps."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from peft import PeftModel, get_peft_model
    from ray.train import Checkpoint

    from rlaif.policy_model import enable_gradient_checkpointing, is_video_model, load_policy

    job: TrainJob = config["job"]
    t = job.train
    if not t.use_gpu:
        _skip_deepspeed_shm_build()
    torch.manual_seed(job.seed)
    ctx = ray.train.get_context()
    rank, zero3 = ctx.get_world_rank(), t.zero_stage == 3
    model, processor = load_policy(job.lora_base)
    video = is_video_model(job.lora_base)
    if job.lora_init:  # merge_each_round=False: the LoRA of the previous round keeps training
        model = PeftModel.from_pretrained(model, local_folder(job.lora_init), is_trainable=True)
    elif t.finetune == "lora":
        model = get_peft_model(model, lora_config(t))  # (finetune "full": every weight trains)
    if t.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=deepspeed_config(t))
    start_step, history, restored = 0, [], {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a restarted worker group resumes from the last checkpoint of this round
        with checkpoint.as_directory() as d:
            path, client = engine.load_checkpoint(d, load_module_strict=True, custom_load_fn=strict_trainable_load(engine))
            if path is None:
                raise RuntimeError(f"train: no DeepSpeed checkpoint could be loaded from {d}")
        # The weights DeepSpeed restored (the module state, then the optimizer's fp32 partitions over it) must be
        # those saved: bit for bit, every trainable tensor.
        if "trainable_sha256" not in client:
            raise RuntimeError(f"train: the checkpoint in {d} has no digests of its weights (an earlier version wrote "
                               "it); its restore cannot be checked: start the round again without it")
        now, saved = trainable_digests(engine, zero3), client["trainable_sha256"]
        differ = sorted(n for n in now.keys() | saved.keys() if now.get(n) != saved.get(n))
        if differ:
            raise RuntimeError(f"train: {len(differ)} of {len(saved)} trainable tensors restored from the checkpoint of "
                               f"step {client['step']} differ from those saved: {differ[:8]}")
        if client.get("lora_base") != job.lora_base or client.get("lora_init") != job.lora_init:
            log.warning("train: the checkpoint was trained on %s (+ %s); resuming on %s (+ %s)", client.get("lora_base"),
                        client.get("lora_init"), job.lora_base, job.lora_init)
        start_step, history = client["step"], list(client["history"])
        restored = {"restored_tensors": len(saved), "restored_bitwise": True}

    def save(metrics: dict, step: int) -> None:
        state = {"step": step, "history": history, "trainable_sha256": trainable_digests(engine, zero3),
                 "lora_base": job.lora_base, "lora_init": job.lora_init}
        with tempfile.TemporaryDirectory() as tmp:  # every rank saves its shard; Ray merges them into one checkpoint
            # Frozen parameters are left out (a LoRA's checkpoint holds what trains, not the base model each time);
            # strict_trainable_load is the strict load of such a checkpoint.
            engine.save_checkpoint(tmp, tag=f"step{step}", client_state=state, exclude_frozen_parameters=True)
            # One folder name for all ranks, so that their shards land together.
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{step}")

    shard = ray.train.get_dataset_shard("train")
    step, replayed, reordered = 0, 0, 0
    for _ in range(t.epochs):
        for batch in shard.iter_batches(batch_size=t.micro_batch_size, batch_format="pyarrow"):
            if step < start_step:  # trained before the restore: the same batch must come back in the same place
                recorded = history[step].get("batches") if step < len(history) else None
                if recorded and rank < len(recorded):
                    replayed += 1
                    reordered += recorded[rank] != batch_digest(batch)
                step += 1
                if rank == 0 and job.progress:
                    job.progress.add(1)
                continue
            started = time.perf_counter()
            metrics = train_step(engine, processor, batch.to_pylist(), t, job.objective, video,
                                 request_seed(job.seed, "train", rank, step))
            step += 1
            if rank == 0 and job.progress:
                job.progress.add(1)
            step_s = time.perf_counter() - started  # throughput, per step
            batches = [None] * ctx.get_world_size()
            dist.all_gather_object(batches, batch_digest(batch))  # every rank's batch, in rank 0's history
            history.append({"step": step, **metrics, "step_s": step_s, "batches": batches})
            if step % t.checkpoint_every == 0:
                save({"step": step, **{k: v for k, v in history[-1].items() if k != "batches"}}, step)
    if start_step:  # every rank's replay check, summed (rank 0 reports it)
        counts = [None] * ctx.get_world_size()
        dist.all_gather_object(counts, (replayed, reordered))
        replayed, reordered = (sum(c[i] for c in counts) for i in (0, 1))
        if reordered:
            log.warning("train: %d of %d batches replayed after the restore differ from those the checkpoint trained "
                        "on", reordered, replayed)
    sync = export_and_sync(engine, t, job)
    final = {"step": step, "resumed_from_step": start_step, "history": history if rank == 0 else [],
             **({**restored, "replayed_batches": replayed, "replayed_batches_differ": reordered} if start_step else {}),
             **sync}
    save(final, step)


def ordered_ingest():
    """Ray Data options of the training shards: Ray Train's defaults with preserve_order, so that the split hands
    every rank the same rows in the same order in every epoch and after a restart (the output splitter then ignores
    locality and dispatches the blocks in order). What a restore skips is then what was trained before it."""
    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return options


def training_order(objective: str) -> list[str]:
    """The columns the training rows are sorted by: video by video (a micro-batch holds a few videos' rows, as
    the small plan's stored order did), then a key unique within the video: a pair's prompt_id (unique in a round);
    SFT rows that tie on (video_id, prompt, target) are the same row."""
    return ["video_id", "prompt_id"] if objective == "dpo" else ["video_id", "prompt", "target"]


def training_rows(layout: RunLayout, data: Rows, objective: str, block_rows: int) -> ray.data.Dataset:
    """`data` with its videos' frames, sorted by training_order in blocks of `block_rows` rows, so that Ray Train's
    ordered split (ordered_ingest) gives every rank the same rows in the same order in every run of the same
    inputs, and again after a restore. Sorted whatever the plan: a stored table's order is not (Ray Data's read,
    map and write of it reorder its blocks at times, even with preserve_order), and neither is a hash join's; a
    sort's blocks depend on its sampled boundaries, a fixed block size does not."""
    with_frames = rows_with_frames(layout.videos, data)
    # The sort's partitions by the rows (Ray Data would take 200 for a stream of unknown length: ~10 s on 6 rows).
    with_frames.context.default_hash_shuffle_parallelism = partitions(data.rows)
    return with_frames.sort(training_order(objective)).repartition(target_num_rows_per_block=block_rows)


def run_train(cfg: RlaifConfig, layout: RunLayout, out: RoundLayout, data: Rows | pa.Table, *, engines: list,
              lora_base: str, reference: str, objective: str = "dpo", train: TrainConfig | None = None,
              lora_init: str | None = None) -> dict:
    """Trains a LoRA on `lora_base` (starting from the adapter `lora_init` when given) over `data` (a stage's Rows, or
    a caller's small table; rows with a video_id of the run's videos), writes out.policy, and broadcasts it to
    `engines`. `reference` is θ_ref of the extrapolation."""
    if isinstance(data, pa.Table):  # a caller's own few rows (rebirth's targets, the warm start's SFT, a benchmark)
        data = Rows(data.num_rows, table=ray.put(data))
    rows = data.rows
    t = train or cfg.train
    workers = min(t.workers, rows)
    if workers == 0:
        log.warning("train: no training rows; the policy stays as it is")
        return {"steps": 0, "skipped": "no rows"}
    if workers < t.workers:
        log.warning("train: only %d rows, using %d worker(s) instead of %d", rows, workers, t.workers)
    expect(t.epochs * -(-(rows // workers) // t.micro_batch_size), "steps")  # each rank's equal shard
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": TrainJob(
            train=t, seed=cfg.seed, objective=objective, lora_base=lora_base, lora_init=lora_init, reference=reference,
            policy_out=str(out.policy), extrapolation_alpha=t.extrapolation_alpha if objective == "dpo" else None,
            engines=engines, bucket_mb=cfg.loop.sync_bucket_mb, sync_transport=cfg.loop.sync_transport,
            adapter_sync=cfg.loop.sync == "adapter" and lora_base == resolve_model(cfg.models.policy),
            sync_required=cfg.loop.sync_transport_required, progress=counter())},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker,
                                                           **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        datasets={"train": training_rows(layout, data, objective, t.micro_batch_size)},
        dataset_config=DataConfig(execution_options=ordered_ingest()),
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
    return {"fit_seconds": round(time.time() - start, 2), "workers": workers, "rows": rows,
            "history": history, **metrics}


@stage("train", "loop.sync", "loop.sync_transport", "models.policy")
def train(ctx: StageContext) -> dict:
    """One DPO round on round_<r>/pairs.parquet -> round_<r>/policy, broadcast to the policy engines. With
    merge_each_round the LoRA is fresh on the round's starting policy (mrDPO); without it the previous round's adapter
    keeps training on the starting model. With train.caption_sft_weight each pair also carries its video's
    ground-truth caption."""
    cfg = ctx.cfg
    pairs = stored(ctx.out.pairs)
    if cfg.train.caption_sft_weight and pairs.rows:
        # The user's ground-truth captions (caption.reference_file), matched to the pairs' videos.
        truth = reference_captions(cfg, ctx.layout)
        if truth is not None:
            pairs = joined(pairs, transformed(truth, as_gt_caption), "video_id", how="left")
    if cfg.train.merge_each_round:
        lora_base, lora_init = ctx.policy, None
    else:
        lora_base, lora_init = ctx.start, ctx.adapter
    engines = ctx.policy_pool.actors if ctx.pools.get("policy") else []  # (no pool: nothing to broadcast to)
    return run_train(cfg, ctx.layout, ctx.out, pairs, engines=engines, lora_base=lora_base, lora_init=lora_init,
                     reference=ctx.reference)


def as_gt_caption(truth: pa.Table) -> pa.Table:
    return truth.rename_columns(["video_id", GT_CAPTION_KEY])
