"""Loading the policy with transformers, and scoring (video, question, answer) pairs with it: the shared piece of
the reference stage, the DPO trainer and the tests that check vLLM against transformers."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlaif.logprobs import logits_needed, sequence_logps, token_logps
from rlaif.schemas import frames_of
from rlaif.storage import local_folder
from rlaif.vlm_inputs import collate, encode_example, model_inputs


def is_video_model(path: str) -> bool:
    return "vision_config" in json.loads((Path(local_folder(path)) / "config.json").read_text())


def load_policy(path: str, dtype: torch.dtype = torch.float32):
    """(model, processor): a video LMM with its processor, or a text LM with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    path = local_folder(path)  # a model folder in a remote run folder is loaded from a local copy
    if is_video_model(path):
        return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype), AutoProcessor.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


def pad_id(processor) -> int:
    tok = getattr(processor, "tokenizer", processor)
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def pair_batch(processor, rows: list[dict], video: bool) -> dict[str, torch.Tensor]:
    """2B sequences: the chosen answers of `rows`, then their rejected answers."""
    def frames(r):
        return frames_of(r) if video else None

    examples = [encode_example(processor, r["question"], r["chosen"], frames(r)) for r in rows]
    examples += [encode_example(processor, r["question"], r["rejected"], frames(r)) for r in rows]
    return collate(examples, pad_id(processor))


def answer_token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each predicted token, mask of the answer tokens among them), both (B, K-1), from one forward that
    computes logits only from the batch's first answer token on (rlaif.logprobs.logits_needed)."""
    keep = logits_needed(batch["answer_mask"])
    return token_logps(model(**model_inputs(batch), logits_to_keep=keep).logits, batch["input_ids"], batch["answer_mask"])


def answer_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: (sum, mean) of answer-token log-probs, from one forward pass."""
    lp, mask = answer_token_logps(model, batch)
    return sequence_logps(lp, mask), sequence_logps(lp, mask, average=True)


def target_batch(processor, rows: list[dict], video: bool, prompt_key: str, target_key: str) -> dict[str, torch.Tensor]:
    """One sequence per row: (video,) row[prompt_key] as the user turn, row[target_key] as the answer to learn."""
    examples = [encode_example(processor, r[prompt_key], r[target_key], frames_of(r) if video else None) for r in rows]
    return collate(examples, pad_id(processor))
