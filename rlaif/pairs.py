"""Preference pairs from judged samples: best vs worst answer per prompt.

Only scored answers count (a judge's parsed score, or the rule score of an empty answer); a truncated answer (cut at
max_tokens) may be rejected but is not chosen (unless `truncated_chosen`): DPO would teach the policy to ramble until
it is cut. A pair needs a score margin of at least `min_margin` (ties carry no preference and are
dropped). Among equally scored best answers the shortest is chosen and among the worst the longest is rejected, and
pairs whose chosen answer is much longer than the rejected one can be dropped: both push against the verbosity that
judges reward and i-SRT warns about.
"""
from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from rlaif.schemas import TRUNCATED_FINISH

SELECTED_PAIRS = pa.schema([  # the selection; pipelines.stages.pairs adds video, question and reference log-probs (schemas.PAIRS)
    ("prompt_id", pa.string()),
    ("chosen", pa.string()),
    ("rejected", pa.string()),
    ("score_chosen", pa.float64()),
    ("score_rejected", pa.float64()),
    ("chosen_tokens", pa.int64()),
    ("rejected_tokens", pa.int64()),
])


def select_pairs(judged: pa.Table, min_margin: float = 1.0, max_length_ratio: float | None = None,
                 truncated_chosen: bool = False) -> pa.Table:
    """`judged` has prompt_id, response, score, n_tokens and (optionally) finish_reason. Returns one row per kept
    prompt (SELECTED_PAIRS schema)."""
    if min_margin <= 0:
        raise ValueError("min_margin must be positive: a tie is not a preference")
    columns = ["prompt_id", "response", "score", "n_tokens"] + (["finish_reason"] if "finish_reason" in judged.column_names else [])
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in judged.select(columns).to_pylist():
        if row["score"] is not None:
            groups[row["prompt_id"]].append(row)
    out = []
    for prompt_id in sorted(groups):
        rows = groups[prompt_id]
        complete = rows if truncated_chosen else [r for r in rows if r.get("finish_reason") != TRUNCATED_FINISH]
        if not complete:
            continue
        best = min(complete, key=lambda r: (-r["score"], r["n_tokens"], r["response"]))
        worst = min(rows, key=lambda r: (r["score"], -r["n_tokens"], r["response"]))
        if best["score"] - worst["score"] < min_margin:
            continue
        if max_length_ratio and best["n_tokens"] > max_length_ratio * max(1, worst["n_tokens"]):
            continue
        out.append({"prompt_id": prompt_id, "chosen": best["response"], "rejected": worst["response"],
                    "score_chosen": float(best["score"]), "score_rejected": float(worst["score"]),
                    "chosen_tokens": best["n_tokens"], "rejected_tokens": worst["n_tokens"]})
    return pa.Table.from_pylist(out, schema=SELECTED_PAIRS)
