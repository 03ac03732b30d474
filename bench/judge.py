"""Judge throughput: the judge stage's requests vs a judge that asks about every answer with the evidence first, on
the same engine settings, answers and model (the real SmolLM2-135M-Instruct by default).

    python bench/judge.py [--model smollm2-135m-instruct] [--videos 16] [--k 4] [--batch-size 64] [--repeat 3]

Judging is prompt work: a judging prompt is ~150 tokens of instructions, caption and question for a reply of ~15.
Inputs: synthetic scenes (rlaif.testkit.synthetic_videos: exact captions and questions), each question answered K times by
a stand-in policy that draws from the answers of that kind of question (so some answers repeat, as a warm policy's
samples do). Sides, one in-process engine each (the engine the judge pool runs, `actors.vllm_engine.VLLMEngine`):
  - every answer, evidence first: one request per answer, the rating instructions after the evidence (this
    project's judging prompt before version v3, and the usual LLaVA-Hound-style script's shape);
  - the judge stage: one request per distinct answer to a question (pipelines.stages.judge.judge_some), the instructions
    first (rlaif.prompts.judge_messages), so the engine's prefix cache holds them and each question's evidence,
    with vLLM's KV block size and with `pools.judge.block_size` 32.
Fairness: one engine per side, all built first with the same settings (fp32, --threads, max_num_seqs = batch size);
every timed run starts with the same one-request warm-up and an emptied prefix cache, and the sides run --repeat
times, interleaved, so drifting load falls on all of them; the table gives min, median and max seconds and ratios of
medians, with the load average. Scores: the judge stage's score of each answer is compared with the evidence-first
baseline's (a different prompt, so they can differ: the share that agrees says how much the prompt change moved the
verdicts) and with its own at block_size 32 (same prompt: should agree).
Answers/s counts every answer, judged or repeated. Every side is also put against the compute bound of judging every
answer in full (the first side's work): 2 x parameters FLOPs per reply token and 2 x non-embedding parameters per
prompt token (a prompt token needs no output layer), at the measured matmul peak. A side that skips work (repeated
answers, cached prefixes) can pass 100%.
"""
from __future__ import annotations

import argparse
import random
import time

from common import cpu_engine_env, interleaved, load_average, machine, matmul_peak_gflops, ratio, spread, table

from rlaif.prompts import JUDGE_INSTRUCTIONS, JUDGE_REQUEST, JUDGE_SYSTEM, judge_messages  # noqa: E402

# The judging prompt of version v2: evidence, question, answer, then the instructions.
EVIDENCE_FIRST = JUDGE_REQUEST + "\n\n" + JUDGE_INSTRUCTIONS


def answers(videos: int, k: int, seed: int = 0) -> list[dict]:
    """K answers per question of `videos` synthetic scenes, drawn from the answers to that kind of question."""
    from rlaif.testkit.synthetic_videos import caption_for, make_scene, questions_for

    rng = random.Random(seed)
    scenes = [make_scene(seed * 1000 + i) for i in range(videos)]
    questions = [(i, caption_for(s), q) for i, s in enumerate(scenes) for q in questions_for(s)]
    by_kind: dict[str, list[str]] = {}
    for _, _, q in questions:
        by_kind.setdefault(q["kind"], []).append(q["answer"])
    return [{"prompt_id": f"v{i}-q{j}", "caption": caption, "question": q["question"], "sample_idx": s,
             "response": q["answer"] if rng.random() < 0.4 else rng.choice(by_kind[q["kind"]]),
             "finish_reason": "stop"}
            for j, (i, caption, q) in enumerate(questions) for s in range(k)]


def run_side(engine, rows: list[dict], messages, dedup: bool, batch_size: int, max_tokens: int) -> dict:
    from pipelines.stages.judge import judge_some
    from rlaif.judging import parse_judgment
    from rlaif.prompts import judge_output_regex

    sampling = {"max_tokens": max_tokens, "temperature": 0.0, "regex": judge_output_regex(max_tokens)}
    asked = {"requests": 0, "prompt_tokens": 0, "reply_tokens": 0}

    def judge(batch):
        outs = engine.generate([{"messages": messages(r)} for r in batch], sampling)
        asked["requests"] += len(batch)
        asked["prompt_tokens"] += sum(o[0]["prompt_tokens"] for o in outs)
        asked["reply_tokens"] += sum(o[0]["n_tokens"] for o in outs)
        return [parse_judgment(o[0]["text"]) for o in outs], [1] * len(outs)

    engine.generate([{"messages": messages(rows[0])}], sampling)  # warm-up
    engine.llm.reset_prefix_cache()
    start = time.perf_counter()
    scores = []
    for i in range(0, len(rows), batch_size):
        batch = rows[i: i + batch_size]
        if dedup:
            verdicts = judge_some(batch, judge)
        else:
            found, _ = judge(batch)
            verdicts = [(v, 1, None) for v in found]
        scores += [v.score for v, _, _ in verdicts]
    return {**asked, "seconds": time.perf_counter() - start, "scores": scores}


def mean_score(scores: list) -> float | None:
    """The mean of the scores the judge gave (a reply it could not parse has none)."""
    given = [x for x in scores if x is not None]
    return sum(given) / len(given) if given else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--videos", type=int, default=16)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--repeat", type=int, default=3, help="timed runs per side, interleaved")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the engine (default: all cores)")
    args = p.parse_args()
    cpu_engine_env()

    from actors.vllm_engine import VLLMEngine
    from actors.weight_sync import saved_weights
    from rlaif.testkit.tiny_models import ensure_model

    folder = ensure_model(args.model)
    rows = answers(args.videos, args.k)
    weights = saved_weights(folder)
    params = sum(t.numel() for t in weights.values())
    embedding = sum(t.numel() for name, t in weights.items() if "embed_tokens" in name)
    peak = matmul_peak_gflops()

    def evidence_first(r):
        return [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": EVIDENCE_FIRST.format(caption=r["caption"], question=r["question"],
                                                                  reference="", answer=r["response"])}]

    def instructions_first(r):
        return judge_messages(r["caption"], r["question"], r["response"])

    sides = [("every answer, evidence first", evidence_first, False, None),
             ("judge stage (distinct answers, instructions first)", instructions_first, True, None),
             ("judge stage, block_size 32", instructions_first, True, 32)]
    engines = {name: VLLMEngine(folder, role="judge", video=False, max_model_len=1024, max_num_seqs=args.batch_size,
                                threads=args.threads, **({"block_size": block} if block else {}))
               for name, _, _, block in sides}
    results, seconds = {}, {}

    def side(name, messages, dedup):
        def timed():
            results[name] = run_side(engines[name], rows, messages, dedup, args.batch_size, args.max_tokens)
            return results[name]["seconds"]
        return timed

    load_before = load_average()
    seconds = interleaved({name: side(name, messages, dedup) for name, messages, dedup, _ in sides}, args.repeat,
                          warmup=0)
    med = {name: spread(v)["median"] for name, v in seconds.items()}
    first = results[sides[0][0]]
    # The seconds that judging every answer in full takes at the matmul peak.
    bound_s = 2 * ((params - embedding) * first["prompt_tokens"] + params * first["reply_tokens"]) / (peak * 1e9)
    distinct = len({(r["prompt_id"], r["response"]) for r in rows})
    print(f"\n{machine()}; {args.model}: {params / 1e6:.1f} M params ({embedding / 1e6:.1f} M embedding); "
          f"{len(rows)} answers ({distinct} distinct) to {len(rows) // args.k} questions about {args.videos} videos; "
          f"{first['prompt_tokens'] / len(rows):.0f} prompt + {first['reply_tokens'] / len(rows):.0f} reply tokens "
          f"per answer; fp32 matmul peak {peak:.0f} GFLOP/s -> judging every answer in full takes at least "
          f"{bound_s:.1f} s ({len(rows) / bound_s:.1f} answers/s)")
    print(f"1 warm-up request + {args.repeat} timed runs per side, interleaved; {load_before} before, "
          f"{load_average()} after")
    base = sides[0][0]
    table_rows = []
    for name, values in seconds.items():
        sp = spread(values)
        table_rows.append({"side": name, "requests": results[name]["requests"], "runs": sp["n"], "s min": sp["min"],
                           "median": sp["median"], "max": sp["max"], "answers/s (median)": len(rows) / sp["median"],
                           "median vs every answer": ratio(med[base], sp["median"]),
                           "vs compute bound": f"{100 * bound_s / sp['median']:.0f}%",
                           "mean score": mean_score(results[name]["scores"])})
    print(table(table_rows, ["side", "requests", "runs", "s min", "median", "max", "answers/s (median)",
                             "median vs every answer", "vs compute bound", "mean score"]))
    stage, block32 = (results[n]["scores"] for n, _, _, _ in sides[1:])
    agree = sum(a == b for a, b in zip(stage, results[base]["scores"])) / len(rows)
    close = sum(a is not None and b is not None and abs(a - b) <= 1 for a, b in zip(stage, results[base]["scores"])) / len(rows)
    same = sum(a == b for a, b in zip(stage, block32)) / len(rows)
    print(f"judge stage {ratio(med[base], med[sides[1][0]])} faster than judging every answer evidence first "
          f"(medians); the judge stage gives the evidence-first baseline's score to {100 * agree:.0f}% of answers "
          f"(within 1 point: {100 * close:.0f}%); block_size 32 gives the judge stage's score to {100 * same:.0f}%")


if __name__ == "__main__":
    main()
