"""Weight sync: the project's bucketed broadcast (both transports) vs one RPC per parameter, and vs the memcpy bound of
the same bytes.

    python bench/weight_sync.py [--model smollm2-135m-instruct] [--engines 1] [--bucket-mb 256] [--repeat 3]
                                [--warmup 1]
    python bench/weight_sync.py --fanout 1,2,3 [--model ...] [--repeat 3]   # sync time vs number of engines

Every method loads the same tensors into the same live vLLM engines (Ray actors, `actors.vllm_engine`), through the
same receive path (vLLM's weight-transfer API with rlaif's engine, actors/weight_sync/transfer_engine.py: vLLM's
layerwise in-place reload):
  - bucketed (actors.weight_sync.broadcast_weights): the weights in a few buckets, each put in the object store once
    (the tensors' own memory, unpacked: the put is the one copy), and one call per engine carrying every bucket;
  - collective (the same with loop.sync_transport collective): the weights packed into a few contiguous buckets, each
    one broadcast over a gloo group formed for the sync, sent from a Ray actor as the trainer's rank 0 sends them;
  - shared memory (loop.sync_transport shared_memory, actors/weight_sync/shared_memory.py): engines on the plain CPU
    kernel keep their parameters in shared memory and the sender writes each tensor straight into them, one copy;
    timed with the sender's mapping of the engine's file kept from its previous sync, and with it made anew (what a
    sender process pays on its first sync: a train stage's worker is a new process each round);
  - per-parameter RPC (OpenRLHF's `update_weight` pattern): one call per tensor per engine. Here each call only hands
    its tensor over and the engine loads them all once at the end, so the baseline pays the RPCs but not a
    per-tensor load: its time is a lower bound and the ratio a conservative one.
Fairness: every method gets --warmup untimed calls, then --repeat timed ones, interleaved (bucketed, collective,
per-parameter, engine load, LoRA, bucketed, ...), so drifting load falls on all of them; the table gives min, median
and max, and ratios of medians. The load average is printed with the figures. A sync is compared with per-parameter
RPC into engines of its own kernel (the plain kernel's rows with `rpc_plain`), since the RPC's last call loads.
The bound is the model's bytes over this machine's measured copy bandwidth: the time to copy the weights once.
--fanout K1,K2,...: instead, how a sync's time grows with the number of engines: max(K) engines are started, and
each transport syncs the first K of them, for every K, interleaved (object store K1, collective K1, object store K2,
...). The engines' own load (the layerwise reload, run by all K at once on the same cores) is reported beside each, so
what the transport adds is the difference.
Also timed: LoRA mode (loop.sync adapter), where an engine started with LoRA support hot-loads a rank --lora-rank
adapter of every linear layer (`WeightSyncEngine.load_adapter`) instead of receiving the merged weights; and the
plain CPU kernel (pools.*.cpu_gemm torch), whose engines take a sync as an in-place copy (no oneDNN repacking), with
what it costs: each kernel's generation speed on the same greedy prompts (--gen-prompts x --gen-tokens tokens).
"""
from __future__ import annotations

import argparse

from common import copy_bandwidth_gbs, interleaved, load_average, machine, ratio, spread, table

import ray  # noqa: E402
import torch  # noqa: E402

from actors.vllm_engine import VLLMEngine  # noqa: E402
from actors.weight_sync import broadcast_weights, pack_buckets, saved_weights, tensor_buckets  # noqa: E402
from actors.weight_sync import shared_memory  # noqa: E402


@ray.remote(num_cpus=0)
class WeightSender:
    """The collective transport's sender, in a process of its own as the trainer's rank 0 is."""

    def __init__(self, folder: str):
        self.state = saved_weights(folder)

    def sync(self, engines: list, bucket_mb: int, stats: bool = False) -> dict | None:
        out = broadcast_weights(engines, self.state.items(), bucket_mb, transport="collective")
        if out["sync_transport"] != "collective":  # its time would be the object store's
            raise RuntimeError(f"the collective transport fell back: {out['sync_fallback']}")
        return out if stats else None


class PerTensorEngine(VLLMEngine):
    """The engine with a per-parameter entry point: `receive` takes one tensor per call, `load_received` loads what
    was received through the same receiver the bucketed path uses."""

    def receive(self, name, tensor) -> None:
        self._received = getattr(self, "_received", []) + [(name, tensor)]

    def load_received(self) -> dict:
        received, self._received = self._received, []
        return self.load_weight_buckets(*tensor_buckets(received, bucket_bytes=1 << 62))


def adapter_engine(folder: str, video: bool, rank: int) -> tuple:
    """An engine started with LoRA support and a saved LoRA on every linear layer of the language model (non-zero B:
    an adapter that changes the outputs, as a trained one does): (engine, adapter folder, adapter bytes)."""
    import tempfile
    from pathlib import Path

    import torch
    from peft import LoraConfig, get_peft_model

    from rlaif.config import TrainConfig
    from rlaif.policy_model import load_policy

    model, _ = load_policy(folder)
    lora = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TrainConfig().lora_target))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)
    adapter = Path(tempfile.mkdtemp()) / "adapter"
    lora.save_pretrained(adapter)
    nbytes = sum(f.stat().st_size for f in adapter.glob("*.safetensors"))
    engine = ray.remote(max_restarts=0)(VLLMEngine).options(num_cpus=0.5).remote(
        folder, role="policy", max_model_len=512, video=video, adapter_rank=rank)
    ray.get(engine.health.remote())
    return engine, str(adapter), nbytes


def fanout(args, folder: str, state: dict, video: bool, nbytes: int) -> None:
    """Sync time with K engines for K in --fanout, both transports, interleaved."""
    counts = sorted({int(k) for k in args.fanout.split(",")})
    actor = ray.remote(max_restarts=0)(VLLMEngine)
    engines = [actor.options(num_cpus=0.5).remote(folder, role="policy", max_model_len=512, video=video)
               for _ in range(max(counts))]
    ray.get([e.health.remote() for e in engines])
    sender = WeightSender.remote(folder)
    loads: dict[str, list] = {}

    def sync(key, k, transport):
        def run():
            stats = (ray.get(sender.sync.remote(engines[:k], args.bucket_mb, stats=True)) if transport == "collective"
                     else broadcast_weights(engines[:k], state.items(), args.bucket_mb))
            loads.setdefault(key, []).append(stats["engine_load_s"])
        return run

    sides = {(f"{transport} x{k}", k, transport): None for k in counts for transport in ("object_store", "collective")}
    load_before = load_average()
    times = interleaved({key: sync(key, k, transport) for key, k, transport in sides}, args.repeat, args.warmup)
    for a in [sender, *engines]:
        ray.kill(a)
    print(f"\n{machine()}; {args.model}: {len(state)} tensors, {nbytes / 1e6:.1f} MB fp32, buckets of <= "
          f"{args.bucket_mb} MB; {args.warmup} untimed + {args.repeat} timed syncs per row, interleaved; "
          f"{load_before} before, {load_average()} after")
    rows = []
    for key, k, transport in sides:
        sp, load = spread(times[key]), spread(loads[key][args.warmup:])
        rows.append({"transport": transport, "engines": k, "runs": sp["n"], "sync s min": sp["min"],
                     "median": sp["median"], "max": sp["max"], "slowest engine's load s (median)": load["median"],
                     "median - load": sp["median"] - load["median"]})
    print(table(rows, ["transport", "engines", "runs", "sync s min", "median", "max",
                       "slowest engine's load s (median)", "median - load"]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--bucket-mb", type=int, default=256)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per method before the timed ones")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--gen-prompts", type=int, default=16, help="prompts of the generation rows (each kernel's speed)")
    p.add_argument("--gen-tokens", type=int, default=32, help="tokens generated per prompt in the generation rows")
    p.add_argument("--fanout", default="", help="e.g. 1,2,3: sync time vs number of engines, both transports")
    args = p.parse_args()

    from pipelines.orchestration.ray_env import init_ray
    from rlaif.config import RayConfig
    from rlaif.testkit.tiny_models import ensure_model

    folder = ensure_model(args.model)
    state = saved_weights(folder)
    nbytes = sum(t.nbytes for t in state.values())
    video = "vl" in args.model
    init_ray(RayConfig())
    if args.fanout:
        return fanout(args, folder, state, video, nbytes)
    actor = ray.remote(max_restarts=0)(PerTensorEngine)
    engines = [actor.options(num_cpus=0.5).remote(folder, role="policy", max_model_len=512, video=video)
               for _ in range(args.engines)]
    ray.get([e.health.remote() for e in engines])

    def bucketed():
        return broadcast_weights(engines, state.items(), args.bucket_mb)

    def per_parameter(group):
        def run():
            for name, tensor in state.items():
                ray.get([e.receive.remote(name, tensor) for e in group])
            ray.get([e.load_received.remote() for e in group])
        return run

    def engine_load(group):  # the engines' own load time (the same work on every side): how much of a sync is transport
        return max(s["seconds"] for s in ray.get([e.load_weight_buckets.remote(*tensor_buckets(state.items()))
                                                   for e in group]))

    # The same engines on the plain CPU kernel (pools.*.cpu_gemm torch): a sync copies in place, generation is slower.
    # Their parameters live in shared memory, for the shared-memory transport (the other rows load into them alike).
    plain = [actor.options(num_cpus=0.5).remote(folder, role="policy", max_model_len=512, video=video,
                                                cpu_gemm="torch", shared_weights=True) for _ in range(args.engines)]
    ray.get([e.health.remote() for e in plain])
    gen_requests = [{"messages": [{"role": "user", "content": f"Count from {i} to {i + 40}, one number a line."}]}
                    for i in range(args.gen_prompts)]
    gen_sampling = {"n": 1, "temperature": 0.0, "max_tokens": args.gen_tokens, "ignore_eos": True}
    generated: dict[str, list[int]] = {}

    def generate(key, engine):  # one engine's greedy answers; tokens counted for tokens/s
        def run():
            out = ray.get(engine.generate.remote(gen_requests, gen_sampling))
            generated.setdefault(key, []).append(sum(s[0]["n_tokens"] for s in out))
        return run

    unmapped_later = []  # mappings a "fresh" run let go of, freed at the end: a new sender process has none to free

    def shared(fresh: bool):
        def run():
            if fresh:
                unmapped_later.extend(shared_memory._MAPPED.values())
                shared_memory._MAPPED.clear()  # as in a new sender process
            out = broadcast_weights(plain, state.items(), args.bucket_mb, transport="shared_memory")
            if out["sync_transport"] != "shared_memory" or "sync_fallback" in out:
                raise RuntimeError(f"the shared-memory transport fell back: {out.get('sync_fallback')}")
        return run

    info = broadcast_weights(engines, state.items(), args.bucket_mb)
    broadcast_weights(plain, state.items(), args.bucket_mb)
    unpacked = tensor_buckets(state.items(), bucket_bytes=args.bucket_mb << 20)  # what the "put" row puts
    groups = [[state[s.name] for s in b.slots] for b in unpacked]

    def packed_torch():  # the same bytes, one torch-allocated buffer a bucket
        return [torch.cat([t.reshape(-1).view(torch.uint8) for t in group]) for group in groups]

    flat = [b.numpy() for b in packed_torch()]
    sender = WeightSender.remote(folder)
    lora_engine, adapter, adapter_bytes = adapter_engine(folder, video, args.lora_rank)
    names = {"bucketed": "bucketed broadcast",
             "collective": "bucketed, collective transport (gloo group, from an actor)",
             "rpc": "per-parameter RPC", "load": "engine load alone (layerwise reload)",
             "rpc_plain": "per-parameter RPC, plain CPU kernel",
             "lora": f"LoRA mode: hot-load a rank-{args.lora_rank} adapter",
             "bucketed_plain": "bucketed broadcast, plain CPU kernel (cpu_gemm torch)",
             "load_plain": "engine load alone, plain CPU kernel (in-place copy)",
             "shared": "shared memory: the sender writes into the engine's parameters (plain CPU kernel)",
             "shared_fresh": "shared memory, the engine's file mapped anew (a sender's first sync)",
             "pack": "of a collective sync: packing the buckets (its sender's copy; the object store's path skips it)",
             "put": "of a bucketed sync: ray.put of the tensors (the object store's copy, the only one)",
             "put_flat": "ray.put of the same bytes as one contiguous buffer a bucket (what a flat layout would put)",
             "pack_torch": "packing the buckets into torch-allocated buffers (what a flat layout would cost here)",
             "gen": f"generate {args.gen_prompts} x {args.gen_tokens} tokens, oneDNN kernel (default)",
             "gen_plain": f"generate {args.gen_prompts} x {args.gen_tokens} tokens, plain CPU kernel"}
    load_before = load_average()
    times = interleaved({
        "bucketed": lambda: bucketed() and None,
        "collective": lambda: ray.get(sender.sync.remote(engines, args.bucket_mb)) and None,
        "rpc": per_parameter(engines),
        "rpc_plain": per_parameter(plain),
        "load": lambda: engine_load(engines),
        "lora": lambda: ray.get(lora_engine.load_adapter.remote(adapter)) and None,
        "bucketed_plain": lambda: broadcast_weights(plain, state.items(), args.bucket_mb) and None,
        "load_plain": lambda: engine_load(plain),
        "shared": shared(fresh=False),
        "shared_fresh": shared(fresh=True),
        "pack": lambda: pack_buckets(state.items(), bucket_bytes=args.bucket_mb << 20) and None,
        "put": lambda: [ray.put(b) for b in unpacked] and None,  # the refs die at once: each put is freed again
        "put_flat": lambda: [ray.put(b) for b in flat] and None,
        "pack_torch": lambda: packed_torch() and None,
        "gen": generate("gen", engines[0]),
        "gen_plain": generate("gen_plain", plain[0]),
    }, args.repeat, args.warmup)
    for actor in [sender, lora_engine, *engines, *plain]:
        ray.kill(actor)
    med = {k: spread(v)["median"] for k, v in times.items()}
    bound = nbytes / (copy_bandwidth_gbs() * 1e9)
    print(f"\n{machine()}; {args.model}: {len(state)} tensors, {nbytes / 1e6:.1f} MB fp32, "
          f"{info['sync_buckets']} bucket(s) of <= {args.bucket_mb} MB, {args.engines} engine(s)")
    calls = {"bucketed": 1, "collective": 1, "rpc": len(state) + 1, "rpc_plain": len(state) + 1, "load": 1,
             "lora": 1, "bucketed_plain": 1, "load_plain": 1, "shared": 3, "shared_fresh": 3, "pack": "-", "put": "-",
             "put_flat": "-", "pack_torch": "-", "gen": 1, "gen_plain": 1}
    rows, speed = [], {}
    plain_kernel = ("rpc_plain", "bucketed_plain", "load_plain", "shared", "shared_fresh")
    for key, values in times.items():
        sp = spread(values)
        if key in ("gen", "gen_plain"):  # a generation row: tokens/s, not a sync
            rates = spread([n / t for n, t in zip(generated[key][args.warmup:], values)])
            speed[key] = rates["median"]
            rows.append({"method": names[key], "calls per engine": 1, "runs": sp["n"], "s min": sp["min"],
                         "median": sp["median"], "max": sp["max"], "median vs per-parameter RPC (same kernel)": "-",
                         "median vs copy bound": f"{rates['median']:.0f} tokens/s"})
            continue
        rows.append({"method": names[key] + (f" ({adapter_bytes / 1e6:.1f} MB)" if key == "lora" else ""),
                     "calls per engine": calls[key], "runs": sp["n"], "s min": sp["min"], "median": sp["median"],
                     "max": sp["max"],
                     # Each sync against per-parameter RPC into engines of its own kernel (the RPC's last call loads).
                     "median vs per-parameter RPC (same kernel)":
                         "-" if key in ("load", "load_plain", "pack", "put", "put_flat", "pack_torch")
                         else ratio(med["rpc_plain" if key in plain_kernel else "rpc"], sp["median"]),
                     "median vs copy bound": ratio(sp["median"], bound)})
    rows.append({"method": "copy bound (bytes / memcpy bandwidth)", "median": bound})
    print(f"{args.warmup} untimed + {args.repeat} timed calls per method, interleaved; {load_before} before, "
          f"{load_average()} after")
    print(table(rows, ["method", "calls per engine", "runs", "s min", "median", "max",
                       "median vs per-parameter RPC (same kernel)", "median vs copy bound"]))
    print(f"bucketed sync is {ratio(med['rpc'], med['bucketed'])} faster than per-parameter RPC (target >= 5x) and "
          f"{ratio(med['bucketed'], bound)} the copy bound (target <= 2x); the collective transport takes "
          f"{ratio(med['collective'], med['bucketed'])} the object store's time; LoRA mode syncs in "
          f"{1000 * med['lora']:.0f} ms ({ratio(med['bucketed'], med['lora'])} faster than the bucketed weights) "
          "(medians)")
    print(f"plain CPU kernel (pools.*.cpu_gemm torch): the engine's load is {ratio(med['load_plain'], bound)} the copy "
          f"bound ({ratio(med['load'], bound)} with oneDNN's repacking), the whole bucketed sync "
          f"{ratio(med['bucketed_plain'], bound)} ({ratio(med['bucketed'], bound)}), "
          f"{ratio(med['rpc_plain'], med['bucketed_plain'])} faster than per-parameter RPC on the same kernel; it "
          f"generates at {speed['gen_plain']:.0f} tokens/s against oneDNN's {speed['gen']:.0f} "
          f"({ratio(speed['gen_plain'], speed['gen'])}); of its sync, the object store's put takes "
          f"{ratio(med['put'], bound)} the copy bound, the engine's copy {ratio(med['load_plain'], bound)}, the rest "
          f"(calls, the engine's cache resets) {ratio(med['bucketed_plain'] - med['put'] - med['load_plain'], bound)};"
          f" packing, which the collective transport adds, {ratio(med['pack'], bound)} (medians)")
    print(f"shared memory (loop.sync_transport shared_memory, plain CPU kernel): the whole sync takes "
          f"{ratio(med['shared'], bound)} the copy bound (target <= 2x), {ratio(med['shared_fresh'], bound)} when the "
          f"sender maps the engine's file anew; {ratio(med['rpc_plain'], med['shared'])} faster than per-parameter RPC "
          f"on the same kernel (target >= 5x) and {ratio(med['bucketed_plain'], med['shared'])} faster than the "
          "object store into the same engines (medians)")
    print(f"the put of {len(state)} tensors in {len(unpacked)} buckets takes {ratio(med['put'], bound)} the copy bound, "
          f"the same bytes as {len(flat)} contiguous buffers {ratio(med['put_flat'], bound)}; packing them into "
          f"torch-allocated buffers first costs {ratio(med['pack_torch'], bound)} (medians)")


if __name__ == "__main__":
    main()
