"""Where an engine's weight load goes, on CPU: one in-process `vllm.LLM` (the policy engine's settings), the saved
weights loaded into it again and again, timed by phase, and its generation speed, for each CPU linear kernel
(`pools.*.cpu_gemm`):
  - onednn (vLLM's default): vLLM's layerwise reload, what the transfer engine runs (actors/weight_sync/
    transfer_engine.py): `initialize_layerwise_reload`, `model.load_weights` (each layer is repacked into oneDNN's
    layout as soon as its weights are in), `finalize_layerwise_reload`, then the tied `lm_head`'s repacking;
  - torch (the plain kernel): `model.load_weights` alone, each tensor copied into its parameter in place.
After every load the engine must answer as before (the same weights), so a load that broke the model fails here.

    python bench/sync_profile.py [--model smollm2-135m-instruct] [--repeat 4]

Each kernel runs in a process of its own (the plain kernel is chosen for a whole process). The bound is the model's
bytes over this machine's copy bandwidth, measured in the same process.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from common import copy_bandwidth_gbs, machine


def profile(kernel: str, model_name: str, repeat: int) -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the in-process engine the pools run on CPU
    import torch
    from vllm import SamplingParams

    from actors.vllm_engine import VLLMEngine
    from actors.weight_sync import saved_weights, tensor_buckets
    from actors.weight_sync.buckets import unpack_bucket
    from actors.weight_sync.transfer_engine import repack_lm_head
    from rlaif.testkit.tiny_models import ensure_model

    folder = ensure_model(model_name)
    state = saved_weights(folder)
    nbytes = sum(t.nbytes for t in state.values())
    engine = VLLMEngine(folder, role="policy", max_model_len=512, video=False, threads=torch.get_num_threads(),
                        cpu_gemm=kernel)
    model = engine.llm.llm_engine.model_executor.driver_worker.worker.model_runner.model
    config = engine.llm.llm_engine.vllm_config.model_config
    buckets = tensor_buckets(state.items())

    def layerwise() -> list[float]:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        t = [time.perf_counter()]
        initialize_layerwise_reload(model)
        t.append(time.perf_counter())
        model.load_weights(kv for b in buckets for kv in unpack_bucket(b))
        t.append(time.perf_counter())
        finalize_layerwise_reload(model, config)
        t.append(time.perf_counter())
        repack_lm_head(model)
        t.append(time.perf_counter())
        return [b - a for a, b in zip(t, t[1:])]

    def in_place() -> list[float]:
        start = time.perf_counter()
        with torch.no_grad():
            model.load_weights(kv for b in buckets for kv in unpack_bucket(b))
        return [time.perf_counter() - start]

    prompts = [{"prompt_token_ids": list(range(100 + i, 164 + i))} for i in range(16)]
    greedy = SamplingParams(max_tokens=32, ignore_eos=True, temperature=0)

    def generate() -> tuple[float, list]:
        start = time.perf_counter()
        out = engine.llm.generate(prompts, greedy, use_tqdm=False)
        return 16 * 32 / (time.perf_counter() - start), [o.outputs[0].token_ids for o in out]

    bound = nbytes / (copy_bandwidth_gbs() * 1e9)
    _, first = generate()
    load, phases = (in_place, ["load_weights, in place"]) if kernel == "torch" else (
        layerwise, ["initialize", "load_weights (repacking each layer)", "finalize", "lm_head repack"])
    runs, speeds = [], []
    for _ in range(repeat + 1):  # the first is a warm-up
        runs.append(load())
        speed, answers = generate()
        speeds.append(speed)
        if answers != first:
            raise AssertionError(f"{kernel}: the engine answers differently after reloading the same weights")
    runs, speeds = runs[1:], speeds[1:]
    totals = [sum(r) for r in runs]
    med = statistics.median(totals)
    print(f"\n{kernel}: {nbytes / 1e6:.0f} MB; load median {med:.3f} s (min {min(totals):.3f}, max {max(totals):.3f}) "
          f"= {med / bound:.1f}x the copy bound ({bound * 1e3:.1f} ms); by phase (median s): "
          + ", ".join(f"{name} {statistics.median(p):.3f}" for name, p in zip(phases, zip(*runs)))
          + f"; greedy generation {statistics.median(speeds):.0f} tokens/s (median of {repeat}, 16 x 32 tokens)",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--kernel", choices=["onednn", "torch"], help="one kernel, in this process (default: both, each "
                                                                  "in a child process)")
    args = p.parse_args()
    if args.kernel:
        return profile(args.kernel, args.model, args.repeat)
    print(machine())
    for kernel in ("onednn", "torch"):
        out = subprocess.run([sys.executable, __file__, "--kernel", kernel, "--model", args.model, "--repeat",
                              str(args.repeat)], capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith(f"{kernel}:")]
        print("\n".join(lines) if out.returncode == 0 and lines else f"{kernel}: FAILED\n{out.stderr[-3000:]}")
        if out.returncode:
            sys.exit(out.returncode)


if __name__ == "__main__":
    main()
