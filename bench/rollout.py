"""Rollout tokens/s: the policy pool vs a bare `vllm.LLM.generate` (the pool's overhead) and vs transformers
`generate` (what a hand-glued loop would use), on the same model, prompts, K samples per prompt and lengths.

    python bench/rollout.py [--model smollm2-135m-instruct] [--prompts 32] [--k 4] [--max-tokens 64]
                            [--skip-transformers] [--pool-threads N]

Every side samples K answers of exactly --max-tokens tokens per prompt (end-of-sequence ignored, temperature 1), so
tokens/s counts the same work. Sides, one after another in this process:
  - transformers: `model.generate` on the left-padded batch, num_return_sequences=K;
  - bare vLLM: one in-process `vllm.LLM` with the engine settings the pool uses (float32, eager, uni executor);
  - pool: `actors.pool.EnginePool` (a Ray actor per engine), called once directly with every prompt, then driven the
    way the rollout stage drives it: a Ray Data stage forwarding batches of --batch-size prompts through
    `EngineClient.call` (its time includes the stage's start, as every rollout stage pays it).
Each figure is also printed against the compute bound: matmul peak / (2 x parameters) tokens/s.
Prompts are text chat questions, so the same prompts reach the text and the video models.
"""
from __future__ import annotations

import argparse
import time

from common import cpu_engine_env, machine, matmul_peak_gflops, ratio, table

QUESTIONS = ["What colour is the {} in the video?", "How many {}s are there?", "Which way does the {} move?",
             "Describe the {} in one sentence.", "Is the {} bigger than the background?"]
THINGS = ["circle", "square", "triangle", "star", "car", "bird", "ball", "cube"]


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)].format(THINGS[i % len(THINGS)])}]
            for i in range(n)]


def transformers_tokens_per_s(folder: str, chats, k: int, max_tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    from rlaif.policy_model import is_video_model

    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    cls = AutoModelForImageTextToText if is_video_model(folder) else AutoModelForCausalLM
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    batch = tok(texts, return_tensors="pt", padding=True)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.inference_mode():
        start = time.perf_counter()
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, num_return_sequences=k,
                             max_new_tokens=max_tokens, min_new_tokens=max_tokens, pad_token_id=pad)
        seconds = time.perf_counter() - start
    assert out.shape[1] - batch["input_ids"].shape[1] == max_tokens
    return len(chats) * k * max_tokens / seconds


def vllm_tokens_per_s(folder: str, chats, k: int, max_tokens: int, max_num_seqs: int) -> float:
    from vllm import LLM, SamplingParams

    llm = LLM(model=folder, dtype="float32", enforce_eager=True, distributed_executor_backend="uni", seed=0,
              max_model_len=512, max_num_seqs=max_num_seqs)
    params = SamplingParams(n=k, temperature=1.0, max_tokens=max_tokens, ignore_eos=True)
    llm.chat(chats[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.chat(chats, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    assert all(len(c.token_ids) == max_tokens for o in outs for c in o.outputs)
    del llm
    return len(chats) * k * max_tokens / seconds


def pool_tokens_per_s(folder: str, chats, k: int, max_tokens: int, max_num_seqs: int, batch_size: int,
                      threads: int | None) -> tuple[float, dict]:
    import pyarrow as pa
    import ray
    import ray.data

    from actors.pool import EngineClient, EnginePool
    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import EnginePoolConfig, RayConfig

    init_ray(RayConfig())
    cfg = EnginePoolConfig(max_model_len=512, max_num_seqs=max_num_seqs, batch_size=batch_size,
                           **({"threads": threads} if threads else {}))
    pool = EnginePool("policy", folder, cfg, video=False)
    sampling = {"n": k, "temperature": 1.0, "max_tokens": max_tokens, "ignore_eos": True}

    class Answer(EngineClient):  # what pipelines.stages.rollout.AnswerPrompts does, minus the video frames
        def __call__(self, batch: pa.Table) -> pa.Table:
            outs = self.call([{"messages": m} for m in batch.column("messages").to_pylist()], sampling)
            return pa.table({"n_tokens": [s["n_tokens"] for samples in outs for s in samples]})

    pool.generate([{"messages": chats[0]}], sampling)  # warm-up
    start = time.perf_counter()
    direct = sum(s["n_tokens"] for samples in pool.generate([{"messages": c} for c in chats], sampling) for s in samples)
    direct_tps = direct / (time.perf_counter() - start)
    ds = ray.data.from_items([{"messages": c} for c in chats])
    start = time.perf_counter()
    n_tokens = ds.map_batches(Answer, fn_constructor_kwargs={"engines": pool.actors}, batch_size=batch_size,
                              batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=len(pool.actors)),
                              num_cpus=0.1).sum("n_tokens")
    seconds = time.perf_counter() - start
    assert n_tokens == len(chats) * k * max_tokens
    health = ray.get(pool.actors[0].health.remote())
    pool.shutdown()
    return {"policy pool, one direct actor call": direct_tps, "policy pool via Ray Data (the rollout stage's path)":
            n_tokens / seconds}, health


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--max-num-seqs", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32, help="prompts per Ray Data batch sent to an engine")
    p.add_argument("--pool-threads", type=int, default=None, help="pools.*.threads (default: the config's)")
    p.add_argument("--skip-transformers", action="store_true")
    args = p.parse_args()
    cpu_engine_env()

    from actors.weight_sync import saved_weights
    from rlaif.testkit.tiny_models import ensure_model

    folder = ensure_model(args.model)
    chats = prompts(args.prompts)
    params = sum(t.numel() for t in saved_weights(folder).values())
    peak = matmul_peak_gflops()
    bound = peak * 1e9 / (2 * params)
    results = {}
    if not args.skip_transformers:
        results["transformers generate"] = transformers_tokens_per_s(folder, chats, args.k, args.max_tokens)
    results["bare vllm.LLM"] = vllm_tokens_per_s(folder, chats, args.k, args.max_tokens, args.max_num_seqs)
    pooled, health = pool_tokens_per_s(folder, chats, args.k, args.max_tokens, args.max_num_seqs, args.batch_size,
                                       args.pool_threads)
    results.update(pooled)
    base = results.get("transformers generate")
    bare = results["bare vllm.LLM"]
    print(f"\n{machine()}; {args.model}: {params / 1e6:.1f} M params; {args.prompts} prompts x K={args.k} x "
          f"{args.max_tokens} tokens; fp32 matmul peak {peak:.0f} GFLOP/s -> compute bound {bound:.0f} tokens/s; "
          f"pool engine: {health.get('threads')} threads")
    rows = [{"side": name, "tokens/s": tps, "vs transformers": ratio(tps, base) if base else "-",
             "vs bare vLLM": ratio(tps, bare), "of compute bound": f"{100 * tps / bound:.0f}%"}
            for name, tps in results.items()]
    print(table(rows, ["side", "tokens/s", "vs transformers", "vs bare vLLM", "of compute bound"]))
    pool = results["policy pool via Ray Data (the rollout stage's path)"]
    print(f"pool overhead vs bare vLLM: {100 * (1 - pool / bare):.1f}% (target <= 15%); pool at "
          f"{100 * pool / bound:.0f}% of the compute bound (target >= 50% on CPU)"
          + (f"; pool {ratio(pool, base)} transformers generate" if base else ""))


if __name__ == "__main__":
    main()
