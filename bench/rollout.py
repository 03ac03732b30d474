"""Rollout tokens/s: the policy pool vs a bare `vllm.LLM.generate` (the pool's overhead) and vs transformers
`generate` (what a hand-glued loop would use), on the same model, prompts, K samples per prompt and lengths.

    python bench/rollout.py [--model smollm2-135m-instruct] [--prompts 32] [--k 4] [--max-tokens 64]
                            [--skip-transformers] [--threads N] [--repeat 3]

Every side samples K answers of exactly --max-tokens tokens per prompt (end-of-sequence ignored, temperature 1), so
tokens/s counts the same work, fp32 on every side, --threads torch threads on every side (default: all cores).
Fairness: every side is built first (model loaded, engine started), then warmed up with the same 2-prompt call, then
timed --repeat times, interleaved (transformers, bare vLLM, pool direct, pool via Ray Data, transformers, ...), so
drifting load falls on all of them; the table gives min, median and max and ratios of medians, with the load average.
Sides, all in this process or its Ray actors:
  - transformers: `model.generate` on the left-padded batch, num_return_sequences=K;
  - bare vLLM: one in-process `vllm.LLM` with the engine settings the pool uses (float32, eager, uni executor);
  - pool: `actors.pool.EnginePool` (a Ray actor per engine, pools.*.threads = --threads), called directly with every
    prompt, and driven the way the rollout stage drives it: a Ray Data stage forwarding batches of --batch-size
    prompts through `EnginePool.map_batches` (each timed run includes the stage's start, as every rollout stage pays
    it).
Each figure is also printed against the compute bound: matmul peak / (2 x parameters) tokens/s.
Prompts are text chat questions, so the same prompts reach the text and the video models.
"""
from __future__ import annotations

import argparse
import os
import time

from common import cpu_engine_env, interleaved, load_average, machine, matmul_peak_gflops, ratio, spread, table

QUESTIONS = ["What colour is the {} in the video?", "How many {}s are there?", "Which way does the {} move?",
             "Describe the {} in one sentence.", "Is the {} bigger than the background?"]
THINGS = ["circle", "square", "triangle", "star", "car", "bird", "ball", "cube"]


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(THINGS[i % len(THINGS)])}]
            for i in range(n)]


def transformers_side(folder: str, chats, k: int, max_tokens: int):
    """(warm-up, timed run) of transformers `generate`; the model is loaded here, outside the timing."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from rlaif.policy_model import is_video_model

    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    cls = AutoModelForImageTextToText if is_video_model(folder) else AutoModelForCausalLM
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def generate(some) -> float:
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in some]
        batch = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            start = time.perf_counter()
            out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=k,
                                 max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=pad)
            seconds = time.perf_counter() - start
        assert out.shape[1] - batch["input_ids"].shape[1] == max_tokens
        return len(some) * k * max_tokens / seconds

    return lambda: generate(chats[:2]), lambda: generate(chats)


def vllm_side(folder: str, chats, k: int, max_tokens: int, max_num_seqs: int):
    """(warm-up, timed run) of one in-process `vllm.LLM` with the pool's engine settings."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, dtype="float32", enforce_eager=True, distributed_executor_backend="uni", seed=0,
              max_model_len=512, max_num_seqs=max_num_seqs)
    params = SamplingParams(n=k, temperature=1.0, max_tokens=max_tokens, ignore_eos=True)

    def generate(some) -> float:
        start = time.perf_counter()
        outs = llm.chat(some, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        assert all(len(c.token_ids) == max_tokens for o in outs for c in o.outputs)
        return len(some) * k * max_tokens / seconds

    return lambda: generate(chats[:2]), lambda: generate(chats)


def pool_sides(folder: str, chats, k: int, max_tokens: int, max_num_seqs: int, batch_size: int, threads: int):
    """(warm-up, {side: timed run}, the engine's health, shutdown) of the policy pool, called directly and through
    a Ray Data stage."""
    import pyarrow as pa
    import ray
    import ray.data

    from actors.pool import EngineClient, EnginePool
    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import EnginePoolConfig, RayConfig

    init_ray(RayConfig())
    cfg = EnginePoolConfig(max_model_len=512, max_num_seqs=max_num_seqs, batch_size=batch_size, threads=threads)
    pool = EnginePool("policy", folder, cfg, video=False)
    sampling = {"n": k, "temperature": 1.0, "max_tokens": max_tokens, "ignore_eos": True}

    class Answer(EngineClient):  # what pipelines.stages.rollout.AnswerPrompts does, minus the video frames
        def __call__(self, batch: pa.Table) -> pa.Table:
            outs = self.call([{"messages": m} for m in batch.column("messages").to_pylist()], sampling)
            return pa.table({"n_tokens": [s["n_tokens"] for samples in outs for s in samples]})

    def direct(some) -> float:
        start = time.perf_counter()
        n = sum(s["n_tokens"] for samples in pool.generate([{"messages": c} for c in some], sampling) for s in samples)
        return n / (time.perf_counter() - start)

    def through_ray_data() -> float:
        ds = ray.data.from_items([{"messages": c} for c in chats])
        start = time.perf_counter()
        n_tokens = pool.map_batches(ds, Answer, batch_size=batch_size).sum("n_tokens")
        seconds = time.perf_counter() - start
        assert n_tokens == len(chats) * k * max_tokens
        return n_tokens / seconds

    health = ray.get(pool.actors[0].health.remote())
    return (lambda: direct(chats[:2]), {"policy pool, one direct actor call": lambda: direct(chats),
                                        "policy pool via Ray Data (the rollout stage's path)": through_ray_data},
            health, pool.shutdown)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per Ray Data batch sent to an engine")
    p.add_argument("--threads", type=int, default=None, help="torch threads of every side (default: all cores)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per side, interleaved")
    p.add_argument("--skip-transformers", action="store_true")
    args = p.parse_args()
    cpu_engine_env()
    threads = args.threads or os.cpu_count() or 1

    import torch

    from actors.weight_sync import saved_weights
    from rlaif.testkit.tiny_models import ensure_model

    torch.set_num_threads(threads)  # transformers and the in-process vLLM; before vLLM starts, which fixes it
    folder = ensure_model(args.model)
    chats = prompts(args.prompts)
    params = sum(t.numel() for t in saved_weights(folder).values())
    peak = matmul_peak_gflops()
    bound = peak * 1e9 / (2 * params)
    warmups, sides = [], {}
    if not args.skip_transformers:
        warm, run = transformers_side(folder, chats, args.k, args.max_tokens)
        warmups.append(warm)
        sides["transformers generate"] = run
    warm, run = vllm_side(folder, chats, args.k, args.max_tokens, args.max_num_seqs)
    warmups.append(warm)
    sides["bare vllm.LLM"] = run
    warm, pooled, health, shutdown = pool_sides(folder, chats, args.k, args.max_tokens, args.max_num_seqs,
                                                args.batch_size, threads)
    warmups.append(warm)
    sides.update(pooled)
    load_before = load_average()
    for warm in warmups:  # the same warm-up call on every side
        warm()
    try:
        results = interleaved(sides, args.repeat, warmup=0)
    finally:
        shutdown()
    med = {name: spread(v)["median"] for name, v in results.items()}
    base = med.get("transformers generate")
    bare = med["bare vllm.LLM"]
    print(f"\n{machine()}; {args.model}: {params / 1e6:.1f} M params, fp32; {args.prompts} prompts x K={args.k} x "
          f"{args.max_tokens} tokens; fp32 matmul peak {peak:.0f} GFLOP/s -> compute bound {bound:.0f} tokens/s; "
          f"{threads} threads on every side (pool engine reports {health.get('threads')}); 1 warm-up call + "
          f"{args.repeat} timed runs per side, interleaved; {load_before} before, {load_average()} after")
    rows = []
    for name, values in results.items():
        sp = spread(values)
        rows.append({"side": name, "runs": sp["n"], "tokens/s min": sp["min"], "median": sp["median"],
                     "max": sp["max"], "median vs transformers": ratio(sp["median"], base) if base else "-",
                     "median vs bare vLLM": ratio(sp["median"], bare),
                     "median of compute bound": f"{100 * sp['median'] / bound:.0f}%"})
    print(table(rows, ["side", "runs", "tokens/s min", "median", "max", "median vs transformers",
                       "median vs bare vLLM", "median of compute bound"]))
    pool = med["policy pool via Ray Data (the rollout stage's path)"]
    print(f"pool overhead vs bare vLLM: {100 * (1 - pool / bare):.1f}% (target <= 15%); pool at "
          f"{100 * pool / bound:.0f}% of the compute bound (target >= 50% on CPU)"
          + (f"; pool {ratio(pool, base)} transformers generate" if base else "") + " (medians)")


if __name__ == "__main__":
    main()
