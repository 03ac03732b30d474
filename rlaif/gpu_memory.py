"""Estimated GPU memory of a training worker and of an engine, for `rlaif plan` to refuse a plan that cannot fit.

A DPO step on one trainer worker (N workers, DeepSpeed ZeRO stage z, mixed precision: weights and gradients in
`b` bytes, bf16 = 2, with an fp32 master copy and Adam's two moments per trainable weight):

    weights      P·b                 (ZeRO-3 shards them: P·b / N)
    gradients    T·b / N             (ZeRO-2 and 3 shard gradients)
    optimizer    T·(4 + 4 + 4) / N   (fp32 master, Adam m and v; in fp32 training the weights are the master: T·8 / N)
    activations  what a language-model layer keeps for its backward pass, per token (at b = 2; twice that at 4):
                     20·h + 4·kv + 8·f            (norms and their fp32 copies, q, k, v, attention out; the gated
                                                   MLP's gate, up, activation and product, f wide)
                   + 16·h + 2·f + 28·r            under LoRA (peft's fp32 copies of the adapters' inputs, their
                                                   rank-r outputs)
                 measured with saved-tensor hooks on transformers' Qwen2 layer (tests/unit/test_gpu_memory.py checks
                 it), where GPT-style layers keep 34·h (Korthikanti et al. 2022, without the attention-score term:
                 SDPA and flash attention never materialise it). With gradient checkpointing each layer keeps only its
                 input, L·s·h·b, plus one layer recomputed at a time; without, every layer's, L·s·(per token)
    vision       only when the tower trains (full fine-tuning), per patch (4 patches merge into a video token): each of
                 its D blocks keeps 34·d·b/2 (Korthikanti's ViT layer, not measured for this tower), or under
                 checkpointing its input, d·b, plus one block recomputed
    logits       the answer positions' only (the trainer's logits_to_keep), a per sequence: 2·m·a·V·(b + 8) for the
                 logits, their fp32 copy and the fp32 log-softmax kept for backward (its gradient reuses what is freed)
    overhead     CUDA context, allocator fragmentation, communication buffers: 10% of the above + 2 GB

where P is every parameter, T the trainable ones (all for full fine-tuning; LoRA's r·(in + out) per adapted linear
layer otherwise), L the language model's layers, h its width, kv its key/value width, f its MLP width, V its
vocabulary, m the micro-batch (pairs), s the tokens of one micro-batch: 2·m sequences (chosen and rejected) ×
(video tokens + question + answer), and d the vision tower's width. Under LoRA the tower is frozen and keeps nothing
for the backward pass. These are estimates to catch a plan that cannot fit (a 7B policy without ZeRO-3 on 24 GB
cards, a trainer without checkpointing at 16 frames), not a promise that one fits: `bench/gpu_dpo.py` measures a real
step and prints this estimate beside it (docs/performance.md has the H200 figures: before the overhead, within 8%
of the measured peak in five configurations of LoRA and full fine-tuning, with and without checkpointing).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """The dimensions that decide memory: the language model's, and the vision tower's parameter count."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied_embeddings: bool = False
    vision_params: float = 0.0
    vision_width: int = 1280  # the tower's d and depth (every Qwen2-VL and Qwen2.5-VL tower has 32 blocks of 1280)
    vision_layers: int = 32
    patch: int = 14          # vision patch size: video tokens per frame = (H/patch)·(W/patch) / merge
    merge: int = 4           # Qwen2-VL merges 2x2 patches into one token
    temporal_patch: int = 2  # ... and two frames into one

    @property
    def kv_dim(self) -> int:
        return self.hidden // self.heads * self.kv_heads

    @property
    def layer_params(self) -> float:
        h = self.hidden
        return 2 * h * h + 2 * h * self.kv_dim + 3 * h * self.ffn + 2 * h + (h + 2 * self.kv_dim)  # + norms, qkv biases

    @property
    def params(self) -> float:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return embeddings + self.layers * self.layer_params + self.hidden + self.vision_params

    def layer_activation_bytes(self, lora_r: int | None, bytes_per_value: int) -> float:
        """Bytes one language-model layer keeps for its backward pass, per token (module docstring)."""
        kept = 20 * self.hidden + 4 * self.kv_dim + 8 * self.ffn
        if lora_r is not None:
            kept += 16 * self.hidden + 2 * self.ffn + 28 * lora_r
        return kept * bytes_per_value / 2

    def lora_params(self, r: int) -> float:
        """A LoRA of rank r on every linear layer of the language model (q, k, v, o, gate, up, down)."""
        h, kv, f = self.hidden, self.kv_dim, self.ffn
        per_layer = r * ((h + h) * 2 + (h + kv) * 2 + (h + f) * 3)
        return self.layers * per_layer

    def video_tokens(self, frames: int, height: int, width: int) -> int:
        per_frame = (height // self.patch) * (width // self.patch) / self.merge
        return int(per_frame * max(1, frames // self.temporal_patch))


# Published configs (config.json) of the models the GPU presets name, so a plan is checked without downloading them.
KNOWN_SHAPES = {
    "Qwen/Qwen2.5-VL-7B-Instruct": ModelShape(3584, 28, 28, 4, 18944, 152064, vision_params=0.676e9),
    "Qwen/Qwen2.5-VL-3B-Instruct": ModelShape(2048, 36, 16, 2, 11008, 151936, tied_embeddings=True, vision_params=0.669e9),
    "Qwen/Qwen2-VL-2B-Instruct": ModelShape(1536, 28, 12, 2, 8960, 151936, tied_embeddings=True, vision_params=0.675e9),
    "Qwen/Qwen2-VL-7B-Instruct": ModelShape(3584, 28, 28, 4, 18944, 152064, vision_params=0.676e9),
    "Qwen/Qwen2.5-7B-Instruct": ModelShape(3584, 28, 28, 4, 18944, 152064),
    "Qwen/Qwen2.5-72B-Instruct": ModelShape(8192, 80, 64, 8, 29568, 152064),
}


def vision_params(vision: dict, text_hidden: int) -> float:
    """A Qwen2-VL / Qwen2.5-VL vision tower's parameters from its config: the blocks (attention 4·d², an MLP of
    ratio 4 or a gated one of `intermediate_size`), the patch embedding and the merger into the language model."""
    if not vision:
        return 0.0
    qwen25 = "embed_dim" not in vision  # Qwen2.5-VL calls the tower's width hidden_size; Qwen2-VL embed_dim
    d = vision["hidden_size"] if qwen25 else vision["embed_dim"]
    mlp = 3 * d * vision["intermediate_size"] if qwen25 else 2 * d * d * vision.get("mlp_ratio", 4)
    blocks = vision.get("depth", 0) * (4 * d * d + mlp)
    patch = vision.get("in_chans", vision.get("in_channels", 3)) * vision.get("temporal_patch_size", 2) * \
        vision.get("patch_size", 14) ** 2 * d
    merged = d * vision.get("spatial_merge_size", 2) ** 2
    out = vision.get("out_hidden_size", text_hidden) if qwen25 else vision.get("hidden_size", text_hidden)
    return float(blocks + patch + merged * merged + merged * out)


def shape_from_config(config: dict) -> ModelShape:
    """A ModelShape from a transformers config.json (a Qwen2-VL's language settings sit at its top level, or in
    `text_config` in newer files)."""
    text = config.get("text_config") or config
    vision = config.get("vision_config") or {}
    return ModelShape(hidden=text["hidden_size"], layers=text["num_hidden_layers"], heads=text["num_attention_heads"],
                      kv_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
                      ffn=text["intermediate_size"], vocab=text["vocab_size"],
                      tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
                      vision_params=vision_params(vision, text["hidden_size"]), patch=vision.get("patch_size", 14),
                      vision_width=vision.get("embed_dim", vision.get("hidden_size", 0)),
                      vision_layers=vision.get("depth", 0))


def model_shape(name: str, folder: str | None = None) -> ModelShape | None:
    """The shape of `name`: from its config.json when `folder` (where it resolved to) has one, else from the table
    of known models; None when neither knows it."""
    path = os.path.join(folder or name, "config.json")
    if os.path.isfile(path):
        with open(path) as f:
            return shape_from_config(json.load(f))
    return KNOWN_SHAPES.get(name)


@dataclass
class TrainerMemory:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    tokens: int  # per micro-batch (chosen + rejected sequences)

    @property
    def overhead(self) -> float:
        return 0.1 * (self.weights + self.gradients + self.optimizer + self.activations + self.logits) + 2 * GB

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits + self.overhead

    def rows(self) -> list[tuple[str, float]]:
        return [("weights", self.weights), ("gradients", self.gradients), ("optimizer state", self.optimizer),
                ("activations", self.activations), ("answer logits", self.logits), ("overhead", self.overhead),
                ("total", self.total)]


def trainer_memory(shape: ModelShape, *, workers: int, zero_stage: int, bf16: bool, finetune: str, lora_r: int,
                   micro_batch_size: int, gradient_checkpointing: bool, frames: int, height: int, width: int,
                   text_tokens: int, answer_tokens: int) -> TrainerMemory:
    """Bytes per trainer worker for one DPO step (module docstring). `text_tokens` counts a sequence's tokens besides
    the video's, `answer_tokens` those of its answer among them."""
    b = 2 if bf16 else 4
    trainable = shape.params if finetune == "full" else shape.lora_params(lora_r)
    weights = shape.params * b / (workers if zero_stage == 3 else 1)
    if finetune == "lora":  # the adapter's own weights are not sharded by the base's partitioning in this estimate
        weights += trainable * b
    gradients = trainable * b / workers
    optimizer = trainable * (12 if bf16 else 8) / workers
    sequences, video_tokens = 2 * micro_batch_size, shape.video_tokens(frames, height, width)
    tokens = sequences * (video_tokens + text_tokens)
    per_layer_kept = tokens * shape.hidden * b
    one_layer = tokens * shape.layer_activation_bytes(lora_r if finetune == "lora" else None, b)
    activations = (shape.layers * per_layer_kept + one_layer) if gradient_checkpointing else shape.layers * one_layer
    if finetune == "full" and shape.vision_params:  # a trained tower keeps its blocks' activations too
        patches = sequences * video_tokens * shape.merge
        block = patches * shape.vision_width * 34 * b / 2
        activations += (shape.vision_layers * patches * shape.vision_width * b + block) if gradient_checkpointing \
            else shape.vision_layers * block
    logits = sequences * (answer_tokens + 1) * shape.vocab * (b + 8)
    return TrainerMemory(weights, gradients, optimizer, activations, logits, tokens)


def engine_weights_per_gpu(shape: ModelShape, tensor_parallel: int) -> float:
    """bf16 weights of an engine, per GPU of its tensor-parallel group."""
    return shape.params * 2 / tensor_parallel


# Tokens of a training sequence besides the video: the chat template and the question (the answer is
# rollout.max_tokens at most).
PROMPT_TEXT_TOKENS = 64


def plan_memory(cfg, gpu_memory_gb: float) -> tuple[str, bool]:
    """`rlaif plan`'s memory check of `cfg` (a RunConfig) on GPUs of `gpu_memory_gb`: each GPU engine's weights per
    GPU against its share of the GPU, and a trainer worker's estimate (module docstring) against the GPU; returns the
    table and whether everything fits. CPU-only parts and models of unknown shape are listed, not judged."""
    from rlaif.placement import plan_pools, started_pools

    t, gpu = cfg.train, gpu_memory_gb * GB
    lines = [f"GPU memory per worker (estimate; GPUs of {gpu_memory_gb:g} GB):", "",
             "| part | model | GB per GPU | room on the GPU | fits |", "|---|---|---|---|---|"]
    fits = True
    for pool in started_pools(plan_pools(cfg)):
        if pool.engine_gpus == 0:
            continue
        shape = model_shape(pool.model)
        share = (pool.cfg.gpu_memory_utilization or 0.9) * min(1.0, pool.cfg.num_gpus) * gpu
        if shape is None:
            lines.append(f"| {pool.role} engine weights | {pool.model} | unknown shape | {share / GB:.1f} | ? |")
            continue
        need = engine_weights_per_gpu(shape, pool.cfg.tensor_parallel_size)
        ok = need < share
        fits &= ok
        lines.append(f"| {pool.role} engine weights (TP{pool.cfg.tensor_parallel_size}) | {pool.model} | {need / GB:.1f} "
                     f"| {share / GB:.1f} (KV cache gets the rest) | {'yes' if ok else 'NO'} |")
    if t.use_gpu:
        shape = model_shape(cfg.models.policy)
        if shape is None:
            lines.append(f"| trainer worker | {cfg.models.policy} | unknown shape | {gpu_memory_gb:g} | ? |")
        else:
            bf16 = t.bf16
            m = trainer_memory(shape, workers=t.workers, zero_stage=t.zero_stage, bf16=bf16, finetune=t.finetune,
                               lora_r=t.lora_r, micro_batch_size=t.micro_batch_size,
                               gradient_checkpointing=t.gradient_checkpointing, frames=cfg.ingest.num_frames,
                               height=cfg.ingest.frame_height, width=cfg.ingest.frame_width,
                               text_tokens=cfg.rollout.max_tokens + PROMPT_TEXT_TOKENS,
                               answer_tokens=cfg.rollout.max_tokens)
            room = gpu * min(1.0, t.gpus_per_worker)
            ok = m.total < room
            fits &= ok
            how = (f"ZeRO-{t.zero_stage} over {t.workers}, {'bf16' if bf16 else 'fp32'}, {t.finetune}"
                   f"{f' r={t.lora_r}' if t.finetune == 'lora' else ''}, {m.tokens} tokens a micro-batch, gradient "
                   f"checkpointing {'on' if t.gradient_checkpointing else 'OFF'}")
            for part, value in m.rows()[:-1]:
                lines.append(f"| trainer: {part} | | {value / GB:.1f} | | |")
            lines.append(f"| trainer worker total ({how}) | {cfg.models.policy} | {m.total / GB:.1f} | "
                         f"{room / GB:.1f} | {'yes' if ok else 'NO'} |")
    if len(lines) == 4:
        lines.append("| (no GPU parts: engines and trainer on CPUs) | | | | |")
    return "\n".join(lines), fits
