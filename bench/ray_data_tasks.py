"""How many tasks and blocks each Ray Data operator made, from a Ray session's Ray Data logs (issue 23: each task and
each block costs the driver memory and time of its own, so a stage's counts should not grow with small files).

    python bench/ray_data_tasks.py SESSION_DIR [--since HH:MM:SS] [--until HH:MM:SS]

SESSION_DIR is a Ray session folder (the `session_latest` link in Ray's temp folder, for the last run) of a finished
run. Ray Data logs each operator's metrics when it completes (`logs/ray-data/ray-data-dataset_*.log`); this prints
them in the order they completed: the time, the operator (a read is fused with the maps after it), its tasks, the
blocks it made, and their rows. A line is not always in its own dataset's file, so the datasets are not told apart:
read the operators' names and times against the run's console.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

METRIC = re.compile(r"'(num_tasks_finished|num_task_outputs_generated|rows_task_outputs_generated)': (\d+)")
COMPLETED = re.compile(r"^\d{4}-\d\d-\d\d (\d\d:\d\d:\d\d),\d+\s.*Operator \w+\[(.+)\] completed\. Operator Metrics:")


def completed_operators(logs: Path) -> list[tuple[str, str, int, int, int]]:
    """(time, operator, tasks, blocks made, rows made) of every operator that completed, in time order."""
    out = set()
    for log in logs.glob("ray-data-dataset_*.log"):
        lines = log.read_text(errors="replace").splitlines()
        for line, following in zip(lines, lines[1:]):
            if m := COMPLETED.match(line):
                metrics = {k: int(v) for k, v in METRIC.findall(following)}  # the dict is not a Python literal
                out.add((m.group(1), m.group(2), metrics.get("num_tasks_finished", 0),
                         metrics.get("num_task_outputs_generated", 0), metrics.get("rows_task_outputs_generated", 0)))
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("session", type=Path)
    ap.add_argument("--since", default="00:00:00", help="operators that completed at or after this time (HH:MM:SS)")
    ap.add_argument("--until", default="99:99:99", help="... and at or before this one")
    args = ap.parse_args()
    ops = [op for op in completed_operators(args.session / "logs" / "ray-data") if args.since <= op[0] <= args.until]
    print("| completed | operator | tasks | blocks made | rows made |\n|---|---|---|---|---|")
    for t, name, tasks, blocks, rows in ops:
        print(f"| {t} | {name} | {tasks} | {blocks} | {rows} |")
    print(f"\n{sum(o[2] for o in ops)} tasks, {sum(o[3] for o in ops)} blocks in all")


if __name__ == "__main__":
    main()
