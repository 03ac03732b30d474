"""What every benchmark shares: the physical bounds of the machine it runs on, measured in the same run, and one way
to print a figure beside its baseline and its bound.

- matmul peak: the best of a few large fp32 (or bf16) matmuls, in GFLOP/s; a decoder's compute bound is
  peak / (2 x parameters) tokens/s (one multiply-add per weight per token).
- copy bandwidth: the best of a few copies of a large buffer (read + write both counted, as a memcpy moves them), in
  GB/s; a weight sync's bound is bytes / bandwidth.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best_of(fn, repeat: int = 5) -> float:
    """The fastest of `repeat` timed calls (after one warm-up), in seconds: the least disturbed measurement."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak_gflops(n: int = 4096, dtype: str = "float32", device: str = "cpu") -> float:
    """n = 4096: smaller products leave a 2-core CPU's peak unreached (2048 measured 125-186 GFLOP/s here, 4096
    ~180, AVX2 FMA's theoretical ~190), and a bound below what an engine reaches says nothing."""
    import torch

    a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)

    def run():
        (a @ b).sum().item()  # .item() waits for the device

    return 2 * n**3 / best_of(run) / 1e9


def copy_bandwidth_gbs(nbytes: int = 256 << 20) -> float:
    """Bytes copied per second by a memcpy of `nbytes`, each byte counted once (as a weight sync's bytes are)."""
    import torch

    src = torch.empty(nbytes, dtype=torch.uint8).random_()
    dst = torch.empty_like(src)
    return nbytes / best_of(lambda: dst.copy_(src)) / 1e9


def machine() -> str:
    import torch

    return f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table, floats to 3 significant digits, so a result can be pasted into the README as it is."""
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def cpu_engine_env() -> None:
    """The environment the project's engines run with in Ray workers (pipelines.orchestration.ray_env.WORKER_ENV), for a
    benchmark that starts a bare vLLM engine in its own process: baseline and pool then differ only by the pool."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipelines.orchestration.ray_env import WORKER_ENV

    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)


def load_average() -> str:
    """The machine's 1/5/15-minute load averages, printed beside every figure: a figure read on a busy machine says
    so, and interleaved sides (see `interleaved`) share whatever the load was."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min) on {os.cpu_count()} cores"


def interleaved(sides: dict, repeat: int, warmup: int = 1) -> dict[str, list]:
    """Each side's `warmup` untimed calls, then `repeat` timed rounds A B C A B C ...: every side gets the same
    warm-up and the same repetitions, and load that drifts during the run falls on all of them alike. A side is a
    function returning its own measurement, or None for its wall seconds. Returns each side's measurements in order."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    out: dict[str, list] = {name: [] for name in sides}
    for _ in range(repeat):
        for name, fn in sides.items():
            t0 = time.perf_counter()
            value = fn()
            out[name].append(time.perf_counter() - t0 if value is None else value)
    return out


def spread(values: list[float]) -> dict:
    """min / median / max of repeated measurements, the columns every bench table prints."""
    import statistics

    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def spread_text(values: list[float], fmt: str = "{:.3g}") -> str:
    s = spread(values)
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"
