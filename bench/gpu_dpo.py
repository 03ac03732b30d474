"""A DPO step of a 2B-class video LMM on one GPU: step time, tokens/s and model FLOPs utilisation (MFU).

    python bench/gpu_dpo.py [--size 2b|tiny] [--finetune lora|full] [--frames 16] [--height 336 --width 336]
                            [--micro-batch 2] [--answer-tokens 256] [--no-checkpointing] [--steps 10] [--warmup 3]
                            [--peak-tflops 989] [--json FILE]

Needs only torch, transformers and peft (no Ray, vLLM or DeepSpeed), so it runs on a bare GPU machine. The model is a
Qwen2-VL with Qwen2-VL-2B-Instruct's published architecture and random weights in bf16 (the weights' values do not
change the work); the step is the trainer's (pipelines.stages.train): a forward of chosen and rejected sequences
(video + question + answer) in one batch, the answer tokens' log-probs, rlaif.dpo's sigmoid DPO against reference
log-probs computed once before the timed steps (as the pairs stage precomputes them), backward, gradient clipping
1.0 and fused AdamW. Gradient checkpointing is on unless --no-checkpointing (train.gradient_checkpointing).

MFU = model FLOPs per step / (median step time × the GPU's dense bf16 peak, --peak-tflops: H200/H100 SXM 989).
Model FLOPs per token: 2·P forward, and backward 4·P for full fine-tuning, 2·P (activation gradients only; frozen
weights get none) for LoRA; recomputation under checkpointing (another 2·P) is not counted as useful work, as MFU's
definition (Chowdhury et al., PaLM) has it. Attention's s² term is left out (a few % at these lengths).

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
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
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
                pixel_values_videos=pixels.to(device, dtype), video_grid_thw=grid.to(device)), answer.to(device), ids.shape[1]


def answer_logps(model, inputs, answer) -> torch.Tensor:
    logits = model(**inputs).logits[:, :-1].float()
    targets = inputs["input_ids"][:, 1:]
    logps = torch.gather(logits.log_softmax(-1), 2, targets.unsqueeze(-1)).squeeze(-1)
    return (logps * answer[:, 1:]).sum(-1)


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
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.size == "2b" and device == "cpu":
        sys.exit("gpu_dpo: --size 2b needs a GPU (use --size tiny to check the script on a CPU)")
    model, config = build(args.size, args.finetune, not args.no_checkpointing, device, dtype)
    inputs, answer, seq_len = batch(config, args, device, dtype)
    with torch.no_grad():  # the reference's log-probs, precomputed as the pairs stage does
        ref = answer_logps(model, inputs, answer)
    params = sum(p.numel() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.0, fused=device == "cuda")
    times = []
    for step in range(args.warmup + args.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        logps = answer_logps(model, inputs, answer)
        out = dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], beta=0.1)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    tokens = 2 * args.micro_batch * seq_len
    flops = (2 + (4 if args.finetune == "full" else 2)) * params * tokens
    median = statistics.median(times)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": args.size,
              "finetune": args.finetune, "gradient_checkpointing": not args.no_checkpointing,
              "dtype": str(dtype).removeprefix("torch."), "params": params, "tokens_per_step": tokens,
              "step_s_min": min(times), "step_s_median": median, "step_s_max": max(times),
              "tokens_per_s": tokens / median, "mfu": flops / median / (args.peak_tflops * 1e12) if device == "cuda" else None,
              "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
              "loss_last": out.loss.item(), "steps": args.steps, "warmup": args.warmup}
    print("| " + " | ".join(result) + " |\n|" + "---|" * len(result))
    print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in result.values()) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
