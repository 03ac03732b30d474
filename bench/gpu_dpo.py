"""A DPO step of a 2B-class video LMM on one GPU: step time, tokens/s and model FLOPs utilisation (MFU).

    python bench/gpu_dpo.py [--size 2b|tiny] [--finetune lora|full] [--frames 16] [--height 336 --width 336]
                            [--micro-batch 2] [--answer-tokens 256] [--no-checkpointing] [--steps 10] [--warmup 3]
                            [--peak-tflops 989] [--master fp32|none] [--every-logit] [--profile ROWS] [--json FILE]

Needs only torch, transformers and peft (no Ray, vLLM or DeepSpeed), so it runs on a bare GPU machine. The model is a
Qwen2-VL with Qwen2-VL-2B-Instruct's published architecture and random weights in bf16 (the weights' values do not
change the work); the step is the trainer's (pipelines.stages.train): a forward of chosen and rejected sequences
(video + question + answer) in one batch, the answer tokens' log-probs, rlaif.dpo's sigmoid DPO against reference
log-probs computed once before the timed steps (as the pairs stage precomputes them), backward, gradient clipping
1.0 and fused AdamW. Gradient checkpointing is on unless --no-checkpointing (train.gradient_checkpointing). As
DeepSpeed's bf16 mode does for the trainer (train.bf16), the optimizer steps fp32 master copies of the trainable
weights and copies them back into the bf16 model (--master none steps the bf16 weights themselves); peft keeps LoRA's
adapters in fp32 already, so they need no copy.

MFU = model FLOPs per step / (median step time × the GPU's dense bf16 peak, --peak-tflops: H200/H100 SXM 989); the
run also measures the peak it can reach (an 8192³ bf16 product) and gives the MFU against that.
Model FLOPs: the language model's P_text weights see every token of the sequence, the vision tower's P_vision weights
every patch (4 patches merge into one video token, so the tower sees 4× the video's tokens). Forward is 2·P per
token or patch; backward 4·P for full fine-tuning, and under LoRA 2·P_text (activation gradients only; frozen
weights get none) and nothing for the frozen tower, whose input needs no gradient. Recomputation under checkpointing
(another forward) is not counted as useful work, as MFU's definition (Chowdhury et al., PaLM) has it. Attention's s²
term is left out (in the tower's attention over a video's 4,608 patches it is not small: the figure is a floor).

Beside the measured peak memory it prints what `rlaif plan` estimates for the same step (rlaif.gpu_memory,
one worker, no ZeRO sharding), so the estimate that refuses plans is checked against a real step.

--size tiny runs the same step on a small configuration, on the CPU when there is no GPU: a check that the script
works, not a figure.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rlaif.dpo import dpo_loss  # noqa: E402
from rlaif.gpu_memory import GB, shape_from_config, trainer_memory  # noqa: E402
from rlaif.logprobs import logits_needed, sequence_logps, token_logps  # noqa: E402
from rlaif.policy_model import enable_gradient_checkpointing  # noqa: E402

QWEN2_VL_2B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                   tie_word_embeddings=True,
                   vision_config={"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
                                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2})
TINY = dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]}, tie_word_embeddings=True,
            vision_config={"depth": 2, "embed_dim": 64, "hidden_size": 128, "num_heads": 2, "mlp_ratio": 4,
                           "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2})


def build(size: str, finetune: str, checkpointing: bool, device: str, dtype):
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    spec = dict(QWEN2_VL_2B if size == "2b" else TINY)
    config = Qwen2VLConfig(**spec, text_config={k: v for k, v in spec.items() if k != "vision_config"},
                           image_token_id=spec["vocab_size"] - 3, video_token_id=spec["vocab_size"] - 2,
                           vision_start_token_id=spec["vocab_size"] - 4, vision_end_token_id=spec["vocab_size"] - 5)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2VLForConditionalGeneration(config).to(dtype)
    if finetune == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, bias="none", target_modules=(
            r"^(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$")))
    if checkpointing:
        enable_gradient_checkpointing(model)  # the trainer's
    model.config.use_cache = False
    return model, config


def batch(config, args, device, dtype):
    """Chosen and rejected sequences of `micro_batch` pairs: [vision start, video tokens, vision end, question,
    answer]; answers differ between chosen and rejected, the rest is shared."""
    v = config.vision_config
    grid_t, grid_h, grid_w = max(1, args.frames // v.temporal_patch_size), args.height // v.patch_size, args.width // v.patch_size
    video_tokens = grid_t * grid_h * grid_w // v.spatial_merge_size ** 2
    n = 2 * args.micro_batch
    g = torch.Generator().manual_seed(1)
    text = torch.randint(0, config.text_config.vocab_size - 8, (n, args.question_tokens + args.answer_tokens), generator=g)
    ids = torch.cat([torch.full((n, 1), config.vision_start_token_id), torch.full((n, video_tokens), config.video_token_id),
                     torch.full((n, 1), config.vision_end_token_id), text], dim=1)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, -args.answer_tokens:] = True
    patch_dim = 3 * v.temporal_patch_size * v.patch_size ** 2
    pixels = torch.randn(n * grid_t * grid_h * grid_w, patch_dim, generator=g)
    grid = torch.tensor([[grid_t, grid_h, grid_w]] * n)
    mm_types = (ids == config.video_token_id).long() * 2  # 2 marks video tokens (transformers' create_mm_token_type_ids)
    return dict(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device), mm_token_type_ids=mm_types.to(device),
                pixel_values_videos=pixels.to(device, dtype), video_grid_thw=grid.to(device)), answer.to(device), ids.shape[1], \
        pixels.shape[0]


def answer_logps(model, inputs, answer, every_logit: bool = False) -> torch.Tensor:
    """The trainer's: logits only from the first answer token on (logits_to_keep), log-softmax in fp32; with
    `every_logit`, every position's (how the figures of 4 December 2026 in docs/performance.md were measured)."""
    logits = model(**inputs, logits_to_keep=0 if every_logit else logits_needed(answer)).logits
    return sequence_logps(*token_logps(logits, inputs["input_ids"], answer))


def matmul_peak_tflops(device: str, n: int = 8192, repeat: int = 10) -> float:
    """The bf16 matrix rate this GPU reaches now: an n³ product, mean of `repeat` after 3 warm-ups."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * repeat / (time.perf_counter() - start) / 1e12


class MasterWeights:
    """fp32 master copies of the trainable weights that are not fp32 (DeepSpeed's bf16 optimizer): the optimizer
    steps the masters, whose values are then copied into the model's bf16 weights."""

    def __init__(self, trainable: list, enabled: bool):
        self.pairs = [(p, p.detach().float().clone()) for p in trainable if enabled and p.dtype != torch.float32]
        kept = {id(p) for p, _ in self.pairs}
        self.params = [m for _, m in self.pairs] + [p for p in trainable if id(p) not in kept]

    def grads_to_master(self) -> None:
        for p, m in self.pairs:
            m.grad, p.grad = p.grad.float(), None

    def master_to_model(self) -> None:
        with torch.no_grad():
            for p, m in self.pairs:
                p.copy_(m)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=["2b", "tiny"], default="2b")
    p.add_argument("--finetune", choices=["lora", "full"], default="lora")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--height", type=int, default=336)
    p.add_argument("--width", type=int, default=336)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--question-tokens", type=int, default=64)
    p.add_argument("--answer-tokens", type=int, default=256)
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--master", choices=["fp32", "none"], default="fp32",
                   help="fp32 master weights for the optimizer (DeepSpeed's bf16 mode), or none")
    p.add_argument("--every-logit", action="store_true",
                   help="compute every position's logits, not only the answers' (the trainer's logits_to_keep)")
    p.add_argument("--profile", type=int, default=0, metavar="ROWS",
                   help="after the timed steps, profile one more step and print its ROWS costliest operators")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.size == "2b" and device == "cpu":
        sys.exit("gpu_dpo: --size 2b needs a GPU (use --size tiny to check the script on a CPU)")
    model, config = build(args.size, args.finetune, not args.no_checkpointing, device, dtype)
    inputs, answer, seq_len, patches = batch(config, args, device, dtype)
    with torch.no_grad():  # the reference's log-probs, precomputed as the pairs stage does
        ref = answer_logps(model, inputs, answer, args.every_logit)
    params = sum(p.numel() for p in model.parameters())
    vision = sum(p.numel() for name, p in model.named_parameters() if ".visual." in f".{name}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    master = MasterWeights(trainable, args.master == "fp32")
    optimizer = torch.optim.AdamW(master.params, lr=1e-6, weight_decay=0.0, fused=device == "cuda")

    def train_step():
        logps = answer_logps(model, inputs, answer, args.every_logit)
        out = dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], beta=0.1)
        out.loss.backward()
        master.grads_to_master()
        torch.nn.utils.clip_grad_norm_(master.params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        master.master_to_model()
        return out

    times = []
    for step in range(args.warmup + args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = train_step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        if step == 0:
            first_loss = out.loss.item()
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
        with profile(activities=activities) as prof:
            train_step()
            if device == "cuda":
                torch.cuda.synchronize()
        key = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=args.profile, max_name_column_width=60))
    tokens = 2 * args.micro_batch * seq_len
    full = args.finetune == "full"
    flops = (2 + (4 if full else 2)) * (params - vision) * tokens + (2 + (4 if full else 0)) * vision * patches
    median = statistics.median(times)
    peak_memory = torch.cuda.max_memory_allocated() / GB if device == "cuda" else None
    measured_peak = matmul_peak_tflops(device) if device == "cuda" else None
    shape = shape_from_config(config.to_dict())
    estimate = trainer_memory(shape, workers=1, zero_stage=0, bf16=dtype == torch.bfloat16, finetune=args.finetune,
                              lora_r=64, micro_batch_size=args.micro_batch,
                              gradient_checkpointing=not args.no_checkpointing, frames=args.frames,
                              height=args.height, width=args.width,
                              text_tokens=args.question_tokens + args.answer_tokens + 2,
                              answer_tokens=seq_len - 1 if args.every_logit else args.answer_tokens)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": args.size,
              "finetune": args.finetune, "gradient_checkpointing": not args.no_checkpointing,
              "dtype": str(dtype).removeprefix("torch."), "params": params, "vision_params": vision,
              "tokens_per_step": tokens, "patches_per_step": patches, "model_tflop_per_step": flops / 1e12,
              "step_s_min": min(times), "step_s_median": median, "step_s_max": max(times),
              "master": args.master, "every_logit": args.every_logit, "micro_batch": args.micro_batch, "seq_len": seq_len,
              "tokens_per_s": tokens / median, "mfu": flops / median / (args.peak_tflops * 1e12) if device == "cuda" else None,
              "measured_peak_tflops": measured_peak,
              "mfu_of_measured_peak": flops / median / (measured_peak * 1e12) if measured_peak else None,
              "peak_memory_gb": peak_memory, "estimated_memory_gb": estimate.total / GB,
              "estimated_tokens": estimate.tokens,
              "loss_first": first_loss, "loss_last": out.loss.item(), "steps": args.steps, "warmup": args.warmup,
              "torch": torch.__version__, "transformers": transformers.__version__}
    print("estimate (rlaif.gpu_memory, GB): " + ", ".join(f"{name} {value / GB:.2f}" for name, value in estimate.rows()))
    print("| " + " | ".join(result) + " |\n|" + "---|" * len(result))
    print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in result.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
