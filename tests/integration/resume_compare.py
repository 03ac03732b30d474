"""What the resume tests compare a resumed training round with: the same round run without interruption.

A resumed round must not merely say it resumed (`resumed_from_step`): its policy weights, its loss curve and the rows
it wrote must be the uninterrupted run's. Training on CPU is deterministic here (fp32 kernels on fixed shapes, the
same rows in the same order on every rank, a 2-rank gloo all-reduce, whose sum a + b == b + a is exact, per-step
seeds), so the expected difference is zero: weights are compared bit for bit, losses exactly, and the max abs diff
is printed as the figure to quote.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from pipelines.stages.io import read_table


def registered_step(train_storage) -> int:
    """The step of the latest checkpoint Ray Train has registered under `train_storage` (0: none yet), from its
    snapshot (written once a checkpoint is registered; a checkpoint folder alone may be half-uploaded). The train
    stage names its checkpoints checkpoint_step<N>."""
    steps = [0]
    for snapshot in Path(train_storage).rglob("checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, ValueError):  # being replaced right now
            continue
        name = latest.get("checkpoint_dir_name", "")
        if name.startswith("checkpoint_step"):
            steps.append(int(name.removeprefix("checkpoint_step")))
    return max(steps)


def policy_tensors(policy_dir) -> dict[str, torch.Tensor]:
    """Every tensor of a saved policy folder (the merged model, and the adapter/ of a LoRA round), by file and name."""
    policy_dir = Path(policy_dir)
    out = {}
    for f in sorted(policy_dir.rglob("*.safetensors")):
        for name, value in load_file(str(f)).items():
            out[f"{f.relative_to(policy_dir)}:{name}"] = value
    return out


def weights_diff(ours, theirs) -> dict:
    """Max abs difference of two policy folders' tensors, for the merged model and for the adapter alone."""
    a, b = policy_tensors(ours), policy_tensors(theirs)
    assert a and a.keys() == b.keys(), (sorted(a.keys() ^ b.keys())[:8], len(a), len(b))
    out = {}
    for part, adapter in (("model", False), ("adapter", True)):
        names = [k for k in a if k.startswith("adapter/") == adapter]
        if names:
            out[part] = {"tensors": len(names),
                         "max_abs_diff": max((a[k].double() - b[k].double()).abs().max().item() for k in names),
                         "bitwise_equal": all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in names)}
    return out


def loss_curve(history: list[dict]) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in history]


def compare_histories(ours: list[dict], theirs: list[dict]) -> dict:
    """Step by step: the same steps, the same loss (exactly), the same rows on every rank (batch digests)."""
    return {"steps": [h["step"] for h in ours] == [h["step"] for h in theirs],
            "losses_equal": loss_curve(ours) == loss_curve(theirs),
            "batches_equal": [h.get("batches") for h in ours] == [h.get("batches") for h in theirs],
            "max_loss_diff": max((abs(a["loss"] - b["loss"]) for a, b in zip(ours, theirs)), default=0.0)}


def same_rows(ours, theirs, keys: list[str], ignore: tuple[str, ...] = ("model",)) -> dict:
    """Two tables row for row (every column but `ignore`, which names run folders), in file order and sorted by
    `keys`."""
    a, b = read_table(ours), read_table(theirs)
    a, b = (t.drop_columns([c for c in ignore if c in t.column_names]) for t in (a, b))
    order = [(k, "ascending") for k in keys]
    return {"rows": (a.num_rows, b.num_rows), "file_order": a.equals(b),
            "sorted": a.sort_by(order).equals(b.sort_by(order))}


def curve_text(ours: list[dict], theirs: list[dict], restored_at: int) -> str:
    """The loss curves side by side; the steps up to `restored_at` came back from the checkpoint."""
    lines = []
    for a, b in zip(ours, theirs):
        when = "before the kill (restored from the checkpoint)" if a["step"] <= restored_at else "after the restore"
        lines.append(f"  step {a['step']:2d}: uninterrupted {b['loss']:.9f}  resumed {a['loss']:.9f}  "
                     f"{'==' if a['loss'] == b['loss'] else '!='}  {when}")
    return "\n".join(lines)


def report(title: str, weights: dict, curves: dict, rows: dict[str, dict], curve: str) -> str:
    w = "; ".join(f"{part}: {d['tensors']} tensors, max abs diff {d['max_abs_diff']:.3g}"
                  f"{' (bitwise equal)' if d['bitwise_equal'] else ''}" for part, d in weights.items())
    r = "; ".join(f"{name}: {d['rows'][0]} vs {d['rows'][1]} rows, equal row for row "
                  f"{'in file order' if d['file_order'] else 'sorted' if d['sorted'] else 'NO'}"
                  for name, d in rows.items())
    return (f"\n{title}\n policy weights vs the uninterrupted run: {w}\n loss curve: steps equal {curves['steps']}, "
            f"losses equal {curves['losses_equal']} (max diff {curves['max_loss_diff']:.3g}), rows per step equal "
            f"{curves['batches_equal']}\n{curve}" + (f"\n rows: {r}" if rows else ""))
