"""Load on the Ray Serve endpoint, and its overhead against calling the engine directly.

    python bench/serve_load.py [--model tiny-qwen2-vl] [--clients 8] [--seconds 30] [--max-tokens 16]

Phases, one after another on the same machine, same request (a synthetic clip uploaded as base64, a question,
greedy, max_tokens):
  1. endpoint, 1 client           (latency of one request through HTTP, auth, validation, decode, Serve, vLLM)
  2. endpoint, N clients          (requests/s, p50/p99 latency, errors)
  3. direct, 1 request at a time  (decode_video + VLLMEngine.generate in this process: no HTTP, no Serve)
  4. direct, N requests per call  (the engine's own batching, the best the endpoint could do)
and prints the endpoint/direct ratios.
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def load(url: str, body: dict, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    stop = time.time() + seconds

    def client():
        nonlocal errors
        session = requests.Session()
        while time.time() < stop:
            t0 = time.perf_counter()
            r = session.post(f"{url}/v1/chat/completions", json=body,
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=300)
            dt = time.perf_counter() - t0
            with lock:
                if r.status_code == 200:
                    latencies.append(dt)
                else:
                    errors += 1

    start = time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - start
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / wall,
            "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)}


def direct(model: str, video: Path, question: str, max_tokens: int, clients: int, seconds: float) -> tuple[dict, dict]:
    from actors.vllm_engine import VLLMEngine
    from pipelines.orchestration.ray_env import WORKER_ENV
    from rlaif.config import ServeConfig
    from rlaif.decode import DecodeSpec, decode_video

    os.environ.update({k: v for k, v in WORKER_ENV.items() if k.startswith("VLLM")})
    cfg = ServeConfig()
    engine = VLLMEngine(model, role="bench", max_model_len=cfg.max_model_len)
    spec = DecodeSpec(num_frames=cfg.num_frames, height=cfg.frame_height, width=cfg.frame_width)
    sampling = {"n": 1, "temperature": 0.0, "max_tokens": max_tokens}

    def request() -> dict:
        v = decode_video(str(video), spec)
        return {"messages": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
                "frames": v.frames, "fps": len(v.frames) / v.duration_s}

    results = []
    for batch in (1, clients):
        latencies, stop, start = [], time.time() + seconds, time.time()
        while time.time() < stop:
            t0 = time.perf_counter()
            engine.generate([request() for _ in range(batch)], sampling)
            latencies += [time.perf_counter() - t0] * batch
        wall = time.time() - start
        results.append({"requests": len(latencies), "errors": 0, "rps": len(latencies) / wall,
                        "p50_ms": 1000 * percentile(latencies, 0.5), "p99_ms": 1000 * percentile(latencies, 0.99)})
    return results[0], results[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-qwen2-vl")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--port", type=int, default=8011)
    args = p.parse_args()

    from ray import serve

    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import RayConfig, ServeConfig
    from rlaif.testkit.synthetic_videos import write_synthetic_corpus
    from serve.app import start
    from serve.target import resolve_target

    clip = write_synthetic_corpus(Path(tempfile.mkdtemp()), 1, seed=0)[0].path
    question = "What colour is the background?"
    body = {"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()}},
        {"type": "text", "text": question}]}], "max_tokens": args.max_tokens, "temperature": 0}

    init_ray(RayConfig())
    cfg = ServeConfig(port=args.port, token=TOKEN, max_ongoing_requests=max(16, 2 * args.clients))
    url = start(resolve_target(args.model), cfg)
    load(url, body, 1, 3)  # warm-up
    one = load(url, body, 1, args.seconds)
    many = load(url, body, args.clients, args.seconds)
    serve.shutdown()
    d_one, d_many = direct(resolve_target(args.model).model, clip, question, args.max_tokens, args.clients, args.seconds)

    rows = [("endpoint, 1 client", one), (f"endpoint, {args.clients} clients", many),
            ("direct, 1 per call", d_one), (f"direct, {args.clients} per call", d_many)]
    from common import load_average, machine  # bench/ is this script's folder, first on sys.path

    print(f"\n{machine()}; model {args.model}, max_tokens {args.max_tokens}, {args.seconds:g} s per phase; "
          f"{load_average()}")
    print(f"| phase | requests | errors | req/s | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['requests']} | {r['errors']} | {r['rps']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
    print(f"\nendpoint overhead, 1 client: p50 latency {one['p50_ms'] / d_one['p50_ms']:.2f}x direct "
          f"(+{one['p50_ms'] - d_one['p50_ms']:.0f} ms)")
    print(f"endpoint throughput, {args.clients} clients: {many['rps'] / d_many['rps']:.2f}x direct batched "
          f"({many['rps']:.2f} vs {d_many['rps']:.2f} req/s)")


if __name__ == "__main__":
    main()
