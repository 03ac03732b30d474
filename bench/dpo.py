"""DPO training throughput: this project's trainer (the production path) against TRL's DPOTrainer, on the same model,
pairs, batch, steps, objective and optimizer, beside the machine's compute bound, each side run --repeat times,
interleaved.

    python bench/dpo.py [--model smollm2-135m-instruct] [--pairs 64] [--steps 8] [--batch 4] [--workers 1 2]
                        [--threads N] [--finetune full|lora] [--repeat 3] [--trl-ref-in-step] [--shared-prefix on off]
                        [--alone]

Same on every side: sigmoid DPO with rlaif's TrainConfig defaults (beta, lr), constant lr, torch's AdamW *fused*
(weight decay 0; rlaif's DeepSpeed config asks for it, TRL gets optim="adamw_torch_fused"), gradient clipping 1.0,
fp32, --threads torch threads per process, full fine-tuning (--finetune lora: a LoRA of r = 8 on both sides, built by
pipelines.stages.train.lora_config); `steps` steps of `batch` pairs (with W workers, batch/W per worker), the pairs in
the same order (no shuffling), so the losses of a step can be compared. Pairs are synthetic text (fixed seed, prompt
~32 tokens, answers ~16); the first steps x batch of them are used (cycled when there are fewer).
Not the same, because one side has no such setting: rlaif computes logits only from the batch's first answer token
on (`logits_to_keep`); TRL's DPOTrainer has no such option and computes the prompt's logits too. rlaif's
train.shared_prefix (default on; --shared-prefix off, or on off for both as separate sides) computes each pair's
prompt once, chosen and rejected packed behind it in one padding-free row (rlaif.vlm_inputs.pack_shared_prefix);
TRL's DPOTrainer has no shared-prefix option and computes the prompt for each answer (its padding_free is disabled
in TRL 1.16: it warns and pads).

Sides:
- rlaif: pipelines.stages.train.run_train on a local Ray (pipelines.orchestration.ray_env.init_ray): TorchTrainer
  workers running DeepSpeed ZeRO-2 over gloo, fed by Ray Data. Its reference log-probs come with the pairs, computed
  before the round by the pairs stage's own scorer (pipelines.stages.pairs.ReferenceLogps), so a step is a policy
  forward + backward. Ray sets a worker's OMP threads to its CPUs (--threads).
- TRL, precomputed ref: precompute_ref_log_probs=True, the same split of work as rlaif (the baseline).
- TRL, ref in step (--trl-ref-in-step): a reference model scores every batch inside the step.
- rlaif's step alone (--alone): the train worker's step (preference_loss, DeepSpeed's backward and step, the same
  DeepSpeed config, one rank of gloo) in a fresh Python process of its own, without Ray Train, Ray Data or a Ray
  worker around it: beside the rlaif row, what the worker's surroundings cost. Its wall s counts the process start.
TRL runs in a fresh Python process of its own for every run (in_subprocess) with --threads torch threads, beside
the same live local Ray the rlaif side uses: a TRL run in the bench's own process kept ~3.7 GB after it, and the
rlaif run that followed was slower.

Fairness: every side runs --repeat times, interleaved (TRL, rlaif, TRL, rlaif, ...), so load that drifts during the
run falls on both; each run is a fresh start (model load, trainer set-up) and its step 1 is the warm-up on every side,
not timed. A run's tokens/s is its tokens per step over its mean step time of steps 2..n; the table gives min,
median and max over the runs, and the ratio of medians. The load average is printed with the figures.

run_train takes rows with a video_id joined to videos.parquet; a text model ignores frames, so every pair points to
one empty "video" (which also keeps the pairs in order through Ray Data). The worker's history times each step from
its batch to the end of its optimizer step (step_s); TRL's steps are timed by a callback, begin to end.

tokens: the real (unpadded) prompt + answer tokens of chosen and rejected per step, the prompt counted twice on
every side (so tokens/s is pairs/s times one constant, whichever way a side computes them). Compute bound: matmul
peak (same threads, times workers) / FLOPs per token, with ~6 x params for the policy's forward + backward (LoRA: ~4, frozen
weights get no weight gradient) plus 2 x params when the reference forward is in the step. wall s: the whole call
(rlaif: Ray Train and DeepSpeed start-up, model load, training, the final checkpoint and policy save; TRL: model
load, trainer set-up with tokenising and any precompute, training), median over the runs. Losses: the first and last
step's of the last run (rlaif: rank 0's micro-batch); every run of a side gives the same losses up to rounding.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built-in models are local; read before pipelines.orchestration.ray_env's import

from common import interleaved, load_average, machine, matmul_peak_gflops, ratio, spread, table  # noqa: E402 (also puts the repository on sys.path)

WORDS = ("the a red blue green small large circle square ball star line moves left right up down slowly quickly "
         "then after before video frame shows bright dark corner centre edge background turns stops").split()


def synthetic_pairs(tok, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)

    def text(tokens: int) -> str:  # random words until the text is `tokens` tokens long
        words = []
        while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
            words.append(rng.choice(WORDS))
        return " ".join(words).capitalize() + "."

    # Zero-padded ids: the train stage sorts the pairs by prompt_id, and so keeps them in the order TRL reads them.
    return [{"prompt_id": f"p{i:06d}", "video_id": "text", "question": text(32), "chosen": text(16),
             "rejected": text(16)} for i in range(n)]


def run_rlaif(path: str, pairs, a, workers: int, shared_prefix: bool) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    import pipelines.stages.train as train
    from rlaif.config import RunConfig, TrainConfig
    from rlaif.layout import RoundLayout, RunLayout

    t = TrainConfig(workers=workers, cpus_per_worker=a.threads, micro_batch_size=a.batch // workers,
                    finetune=a.finetune, shared_prefix=shared_prefix)
    tmp = tempfile.TemporaryDirectory(prefix="bench-dpo-")  # Ray Train's checkpoint holds the optimizer state
    run = RunLayout(tmp.name)
    pq.write_table(pa.table({"video_id": ["text"], "frames": pa.array([b""], pa.binary()),
                             "frames_shape": pa.array([[0, 0, 0, 3]], pa.list_(pa.int32())), "duration_s": [0.0]}),
                   str(run.videos))
    try:
        start = time.perf_counter()
        out = train.run_train(RunConfig(name="bench-dpo", seed=a.seed, train=t), run, RoundLayout(run.dir / f"w{workers}"),
                              pairs, engines=[], lora_base=path, reference=path, train=t)
        wall = time.perf_counter() - start
    finally:
        tmp.cleanup()
    # Each step's clock (loss to optimizer step) is in the worker's history, as in every run's manifest.
    path_name = "shared-prefix packed" if shared_prefix else "unpacked"
    return {"trainer": f"rlaif (Ray Train + DeepSpeed), {path_name}", "workers": workers, "threads": a.threads,
            "step_s": [h["step_s"] for h in out["history"]], "losses": [h["loss"] for h in out["history"]],
            "wall s": wall, "ref_in_step": False}


def step_alone(path: str, rows: list[dict], a) -> dict:
    """rlaif's DeepSpeed step (the train worker's train_step, on the same config) in a plain process of its own,
    without Ray Train, Ray Data or a Ray worker (run by in_subprocess). What separates the step's own cost from the
    Ray Train worker's surroundings."""
    import deepspeed
    import torch

    from pipelines.stages.train import _skip_deepspeed_shm_build, deepspeed_config, lora_config, train_step
    from rlaif.config import TrainConfig
    from rlaif.policy_model import load_policy
    from rlaif.seeding import request_seed

    torch.set_num_threads(a.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("BENCH_PORT", "29533"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    _skip_deepspeed_shm_build()
    t = TrainConfig(workers=1, cpus_per_worker=a.threads, micro_batch_size=a.batch, finetune=a.finetune)
    torch.manual_seed(a.seed)
    model, processor = load_policy(path)
    if a.finetune == "lora":
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(t))
    deepspeed.init_distributed(dist_backend="gloo")
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=deepspeed_config(t))
    step_s, losses = [], []
    for step in range(a.steps):
        started = time.perf_counter()
        metrics = train_step(engine, processor, rows[step * a.batch:(step + 1) * a.batch], t, "dpo", False,
                             request_seed(a.seed, "train", 0, step))
        step_s.append(time.perf_counter() - started)
        losses.append(metrics["loss"])
    return {"trainer": "rlaif's step alone (DeepSpeed, no Ray Train), shared-prefix packed", "workers": 1,
            "threads": torch.get_num_threads(), "step_s": step_s, "losses": losses, "ref_in_step": False}


def in_subprocess(side: str, table, a) -> dict:
    """One run of a side (`trl`, `trl_ref`: run_trl; `alone`: step_alone) in a fresh Python process, its result read
    back: every run starts from a clean process, as each rlaif run's Ray Train worker does, and leaves nothing behind
    (a TRL run in the bench's own process kept ~3.7 GB after it, and the rlaif run that followed was slower). Its
    wall s counts the process start."""
    import json
    import socket
    import subprocess
    import sys

    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="bench-dpo-side-") as tmp:
        rows_file, out_file = os.path.join(tmp, "rows.parquet"), os.path.join(tmp, "out.json")
        pq.write_table(table, rows_file)
        with socket.socket() as sock:  # a free port for step_alone's one-rank gloo group
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        start = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--model", a.model, "--steps", str(a.steps), "--batch", str(a.batch),
                        "--threads", str(a.threads), "--finetune", a.finetune, "--seed", str(a.seed),
                        "--child", side, rows_file, out_file], check=True, env={**os.environ, "BENCH_PORT": str(port)})
        wall = time.perf_counter() - start
        with open(out_file) as f:
            return {**json.load(f), "wall s": wall}


def child(side: str, rows_file: str, out_file: str, a) -> None:
    """in_subprocess's other end."""
    import json

    import pyarrow.parquet as pq
    import torch

    from rlaif.testkit.tiny_models import ensure_model

    torch.set_num_threads(a.threads)
    path, rows = ensure_model(a.model), pq.read_table(rows_file).to_pylist()
    r = step_alone(path, rows, a) if side == "alone" else run_trl(path, rows, a, ref_in_step=side == "trl_ref")
    with open(out_file, "w") as f:
        json.dump(r, f)


def run_trl(path: str, rows: list[dict], a, ref_in_step: bool) -> dict:
    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from pipelines.stages.train import lora_config
    from rlaif.config import TrainConfig
    from rlaif.policy_model import load_policy

    class InOrder(DPOTrainer):
        def _get_train_sampler(self, dataset=None):  # rlaif reads its pairs in order; so does TRL here
            return torch.utils.data.SequentialSampler(self.train_dataset if dataset is None else dataset)

    class Clock(TrainerCallback):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_step_begin(self, *args, **kwargs):
            self.starts.append(time.perf_counter())

        def on_step_end(self, *args, **kwargs):
            self.ends.append(time.perf_counter())

    t = TrainConfig(finetune=a.finetune)
    start = time.perf_counter()
    torch.manual_seed(a.seed)
    policy, tok = load_policy(path)
    # Full fine-tuning: a second copy scores the batch; a LoRA's reference is the policy with its adapter disabled.
    ref = load_policy(path)[0] if ref_in_step and a.finetune == "full" else None

    def prompt(q):  # TRL's non-conversational form, as in tests/unit/test_trl_agreement.py
        return tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)

    data = datasets.Dataset.from_list([{"prompt": prompt(r["question"]), "chosen": r["chosen"],
                                        "rejected": r["rejected"]} for r in rows])
    out = tempfile.TemporaryDirectory(prefix="bench-trl-")
    args = DPOConfig(output_dir=out.name, beta=t.beta, learning_rate=t.lr,
                     lr_scheduler_type="constant", optim="adamw_torch_fused", weight_decay=0.0, max_grad_norm=1.0,
                     per_device_train_batch_size=a.batch, max_steps=a.steps, logging_steps=1, save_strategy="no",
                     report_to=[], use_cpu=True, bf16=False, max_length=None, gradient_checkpointing=False,
                     precompute_ref_log_probs=not ref_in_step, seed=a.seed, disable_tqdm=True)
    clock = Clock()
    trainer = InOrder(model=policy, ref_model=ref, args=args, train_dataset=data, processing_class=tok,
                      peft_config=lora_config(t) if a.finetune == "lora" else None, callbacks=[clock])
    trainer.train()
    wall = time.perf_counter() - start
    out.cleanup()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"trainer": f"TRL DPOTrainer, {'ref in step' if ref_in_step else 'precomputed ref'}", "workers": 1,
            "threads": torch.get_num_threads(), "step_s": [e - s for s, e in zip(clock.starts, clock.ends)],
            "losses": losses, "wall s": wall, "ref_in_step": ref_in_step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4, help="pairs per step, all workers together")
    p.add_argument("--workers", type=int, nargs="+", default=[1])
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: cores / max workers)")
    p.add_argument("--finetune", choices=["full", "lora"], default="full")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per side, interleaved")
    p.add_argument("--trl-ref-in-step", action="store_true", help="also run TRL with the reference in the step")
    p.add_argument("--shared-prefix", choices=["on", "off"], nargs="+", default=["on"],
                   help="rlaif's train.shared_prefix: on (each prompt computed once for both answers), off (chosen "
                        "and rejected as separate padded sequences), or both as separate sides")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alone", action="store_true",
                   help="also run rlaif's step in a plain process without Ray Train (what the worker's surroundings cost)")
    p.add_argument("--child", nargs=3, metavar=("SIDE", "ROWS", "OUT"), help=argparse.SUPPRESS)  # in_subprocess's
    a = p.parse_args()
    if a.child:
        return child(*a.child, a)
    if any(a.batch % w for w in a.workers):
        p.error("--batch must be a multiple of every --workers value")
    if a.steps < 2:
        p.error("--steps must be at least 2: step 1 is the warm-up")
    a.threads = a.threads or max(1, (os.cpu_count() or 1) // max(a.workers))

    import pyarrow as pa
    import ray
    import torch

    from pipelines.stages.pairs import ReferenceLogps
    from pipelines.orchestration.ray_env import MIN_LOCAL_CPUS, init_ray
    from rlaif.config import RayConfig
    from rlaif.policy_model import pair_batch
    from rlaif.testkit.tiny_models import ensure_model

    torch.set_num_threads(a.threads)  # TRL, the matmul peak and the reference scoring: the workers' thread count
    path = ensure_model(a.model)
    scorer = ReferenceLogps(path, average=False, batch_pairs=a.batch)  # the pairs stage's own reference scoring
    params = sum(w.numel() for w in scorer.model.parameters())  # tied embeddings counted once: one matmul, the head
    pool = synthetic_pairs(scorer.processor, a.pairs, a.seed)
    rows = [pool[i % len(pool)] for i in range(a.steps * a.batch)]
    start = time.perf_counter()
    pairs = scorer(pa.Table.from_pylist(rows))
    ref_s = time.perf_counter() - start
    tokens = sum(int(pair_batch(scorer.processor, [r], False)["attention_mask"].sum()) for r in rows) / a.steps
    del scorer
    peak = matmul_peak_gflops() * 1e9
    policy_flops = 6 if a.finetune == "full" else 4
    load_before = load_average()

    start = time.perf_counter()
    init_ray(RayConfig(num_cpus=max(MIN_LOCAL_CPUS, max(a.workers) * a.threads + 2)))  # + Ray Data's tasks
    ray_s = time.perf_counter() - start
    runs: dict[str, dict] = {}  # side -> its last run's result; tokens/s of every run under "runs"

    def side(name, fn):
        def measured():
            r = fn()
            steady = r["step_s"][1:]  # step 1 is every side's warm-up
            r["runs"] = runs.get(name, {}).get("runs", []) + [tokens / statistics.mean(steady)]
            r["walls"] = runs.get(name, {}).get("walls", []) + [r["wall s"]]
            runs[name] = r
            return r["runs"][-1]
        return measured

    sides = {"TRL precomputed": side("TRL precomputed", lambda: in_subprocess("trl", pa.Table.from_pylist(rows), a))}
    if a.trl_ref_in_step:
        sides["TRL ref in step"] = side("TRL ref in step",
                                        lambda: in_subprocess("trl_ref", pa.Table.from_pylist(rows), a))
    if a.alone:
        sides["rlaif alone"] = side("rlaif alone", lambda: in_subprocess("alone", pairs, a))
    for w in a.workers:
        for sp in a.shared_prefix:
            name = f"rlaif w{w}" + ("" if len(a.shared_prefix) == 1 else f" shared prefix {sp}")
            sides[name] = side(name, lambda w=w, sp=sp: run_rlaif(path, pairs, a, w, sp == "on"))
    try:
        interleaved(sides, a.repeat, warmup=0)
    finally:
        ray.shutdown()

    # The peak again after the runs, and the better of the two: the bound is what the machine can do, and one read
    # under a passing load says less.
    peak = max(peak, matmul_peak_gflops() * 1e9)
    baseline = statistics.median(runs["TRL precomputed"]["runs"])
    results = []
    for name, r in runs.items():
        s = spread(r["runs"])
        flops_per_token = (policy_flops + 2 * r["ref_in_step"]) * params
        rlaif = name.startswith("rlaif")
        logits = "answer tokens only (logits_to_keep)" if rlaif else "every token (no such option)"
        prompt = (("once per pair (shared prefix)" if "shared-prefix" in r["trainer"] else "twice per pair") if rlaif
                  else "twice per pair (no shared-prefix option)")
        results.append({
            "model": a.model, "trainer": r["trainer"], "workers": r["workers"], "threads": r["threads"],
            "optimizer": "AdamW fused", "logits": logits, "prompt computed": prompt, "steps": len(r["losses"]),
            "runs": s["n"],
            "tokens/s min": round(s["min"]), "median": round(s["median"]), "max": round(s["max"]),
            "median vs TRL precomputed": ratio(s["median"], baseline),
            "% of bound (median)": 100 * s["median"] / (r["workers"] * peak / flops_per_token),
            "first loss": f"{r['losses'][0]:.4f}", "last loss": f"{r['losses'][-1]:.4f}",
            "wall s (median)": statistics.median(r["walls"])})

    print(f"{machine()}; {a.threads} torch threads per process; matmul peak {peak / 1e9:.1f} GFLOP/s; "
          f"{load_before} before the runs, {load_average()} after")
    print(f"{a.model}: {params / 1e6:.2f} M params, {a.finetune} fine-tuning, fp32; {a.steps} steps x {a.batch} pairs, "
          f"{tokens:.0f} tokens/step (prompt + answers, chosen and rejected); {a.repeat} runs per side, interleaved, "
          f"step 1 of each untimed; reference scoring for rlaif (pairs stage, not in the rows below) {ref_s:.2f} s; "
          f"local Ray start {ray_s:.1f} s")
    print(table(results, ["model", "trainer", "workers", "threads", "optimizer", "logits", "prompt computed", "runs",
                          "tokens/s min", "median", "max", "median vs TRL precomputed", "% of bound (median)", "first loss",
                          "last loss", "wall s (median)"]))


if __name__ == "__main__":
    main()
