"""`ray job submit` end to end: a real local Ray cluster (`ray start --head` on free ports, its own temp dir), the tiny
demo sent with cluster/submit.sh with its run folder on an object store (a local S3 endpoint), the job waited for,
the run folder checked and served from, and the cluster stopped by the pids of its own processes (never a bare
`ray stop`, which would stop every Ray on the machine)."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from rlaif.storage import RunPath
from serve.target import resolve_target
from tests.integration.conftest import MACHINERY

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def own_processes(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in p.info["cmdline"] or []):
                out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_bucket):
    """The cluster's processes inherit the object store's endpoint and credentials, as a cloud node would have them."""
    temp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # short: Ray's socket paths must stay under 108 bytes
    gcs, dashboard, agent, client, metrics, runtime_env = free_ports(6)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RLAIF_CACHE": os.environ.get("RLAIF_CACHE", str(tmp_path_factory.mktemp("cache")))}
    env.pop("RAY_ADDRESS", None)
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
           f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={runtime_env}", "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}", env, temp
    finally:
        procs = own_processes(temp) + own_processes(f"--gcs-address=127.0.0.1:{gcs}")
        procs += [c for p in procs for c in _children(p)]
        for p in procs:
            _signal(p, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=5)
        for p in alive:
            _signal(p, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _signal(p: psutil.Process, sig: int) -> None:
    try:
        p.send_signal(sig)
    except psutil.NoSuchProcess:
        pass


def test_tiny_demo_runs_as_a_submitted_job(cluster, s3_bucket):
    address, env, _ = cluster
    run_dir = RunPath.of(f"{s3_bucket}/runs/submitted")
    start = time.time()
    job = subprocess.run(
        ["bash", str(REPO / "cluster" / "submit.sh"), "demo", "--run", str(run_dir),
         "--set", "demo.synthetic_videos=4", "--set", "demo.real_clips=false", "--set", "demo.broken_files=2",
         "--set", "loop.rounds=1", "--set", "rollout.max_tokens=8", "--set", "caption.max_tokens=16",
         "--set", "loop.eval_max_tokens=8", "--set", "questions.max_per_video=2",
         *(arg for key, value in MACHINERY.items() for arg in ("--set", f"{key}={value}"))],
        env={**env, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=900)
    log = job.stdout + job.stderr
    print(f"\nray job submit finished in {time.time() - start:.0f} s; job log tail:\n" + "\n".join(job.stdout.splitlines()[-40:]))
    assert job.returncode == 0, log[-4000:]
    assert "succeeded" in log
    manifest = (run_dir / "manifest.json").read_json()
    assert manifest["stages"]["loop"]["status"] == "done"
    assert manifest["stages"]["ingest"]["rows_ok"] == 4 and manifest["stages"]["ingest"]["rows_quarantined"] == 2
    assert (run_dir / "round_0" / "eval.json").exists() and (run_dir / "round_0" / "policy" / "model.safetensors").exists()
    assert manifest["final_policy"] == str(run_dir / "round_0" / "policy")
    # The inputs were uploaded too, and ingest read the videos from the object store.
    videos = pq.read_table(str(run_dir / "videos.parquet"), columns=["uri"]).column("uri").to_pylist()
    assert len(videos) == 4 and all(u.startswith(str(run_dir / "inputs")) for u in videos)
    print("run folder:\n" + "\n".join(sorted({str(p.relative_to(run_dir)).split("/")[0] + ("/" if p.is_dir() else "")
                                               for p in run_dir.glob("*")})))
    # `rlaif serve` takes the remote run folder: its final policy is served from a local copy.
    target = resolve_target(str(run_dir))
    assert target.adapter is None and (Path(target.model) / "config.json").exists()
