"""Model inputs for scoring and training answers: (video, question, answer) → token ids, answer mask, video tensors.

The prompt goes through the model's processor (which expands the video placeholder into the video's tokens); the
answer is tokenized on its own and appended, so the boundary between prompt and answer is exact and the answer mask
covers precisely the answer tokens plus the end-of-turn token that teaches the model to stop.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rlaif.prompts import video_question_messages

END_OF_TURN = "<|im_end|>"


def _tokenizer(processor):
    return getattr(processor, "tokenizer", processor)


def encode_prompt(processor, question: str, frames: np.ndarray | None) -> dict[str, torch.Tensor]:
    """The policy's prompt for one (video, question); a text-only model (no frames) gets the question alone."""
    if frames is None:
        messages = [{"role": "user", "content": question}]
        text = _tokenizer(processor).apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return {"input_ids": torch.tensor([_tokenizer(processor)(text, add_special_tokens=False)["input_ids"]])}
    text = processor.apply_chat_template(video_question_messages(question), tokenize=False, add_generation_prompt=True)
    enc = processor(text=[text], videos=[frames], return_tensors="pt", videos_kwargs={"do_sample_frames": False})
    # mm_token_type_ids marks which tokens are video: Qwen2-VL's M-RoPE needs it to place them in time and space.
    return {k: v for k, v in enc.items() if k in ("input_ids", "mm_token_type_ids", "pixel_values_videos", "video_grid_thw")}


def encode_answer(processor, answer: str, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """The answer's tokens and the end of turn, tokenized on their own (the exact prompt/answer boundary)."""
    return torch.tensor(_tokenizer(processor)(answer + END_OF_TURN, add_special_tokens=False)["input_ids"], dtype=dtype)


def encode_example(processor, question: str, answer: str, frames: np.ndarray | None) -> dict[str, Any]:
    """One sequence: prompt + answer + end of turn, with `answer_mask` marking the tokens that are scored."""
    prompt = encode_prompt(processor, question, frames)
    prompt_ids = prompt["input_ids"][0]
    answer_ids = encode_answer(processor, answer, prompt_ids.dtype)
    ids = torch.cat([prompt_ids, answer_ids])
    mask = torch.zeros_like(ids)
    mask[len(prompt_ids):] = 1
    out = {"input_ids": ids, "answer_mask": mask}
    if frames is not None:
        out["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"][0], torch.zeros_like(answer_ids)])
        out["pixel_values_videos"] = prompt["pixel_values_videos"]
        out["video_grid_thw"] = prompt["video_grid_thw"]
    return out


def collate(examples: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; video patches of all examples concatenated (Qwen2-VL's flattened layout)."""
    longest = max(len(e["input_ids"]) for e in examples)
    n = len(examples)
    batch = {
        "input_ids": torch.full((n, longest), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, longest), dtype=torch.long),
        "answer_mask": torch.zeros((n, longest), dtype=torch.long),
    }
    for i, e in enumerate(examples):
        k = len(e["input_ids"])
        batch["input_ids"][i, :k] = e["input_ids"]
        batch["attention_mask"][i, :k] = 1
        batch["answer_mask"][i, :k] = e["answer_mask"]
    if "pixel_values_videos" in examples[0]:
        batch["mm_token_type_ids"] = torch.zeros((n, longest), dtype=examples[0]["mm_token_type_ids"].dtype)
        for i, e in enumerate(examples):
            batch["mm_token_type_ids"][i, : len(e["input_ids"])] = e["mm_token_type_ids"]
        batch["pixel_values_videos"] = torch.cat([e["pixel_values_videos"] for e in examples])
        batch["video_grid_thw"] = torch.cat([e["video_grid_thw"] for e in examples])
    return batch


def pack_shared_prefix(pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Shared-prefix packing of (prompt, chosen, rejected) token ids: one row [p1 c1 r1 p2 c2 r2 ...], no padding,
    where each prompt is computed once and both of its answers attend to it.

    Attention (`allowed`, (1, 1, T, T) bool, True = may attend): a token sees the earlier tokens of its own pair's
    prompt and of its own part (prompt, chosen or rejected); a rejected token never sees the chosen answer, and no
    token sees another pair. Positions: the prompt is 0..P-1 and both answers start at P, so each answer gets the
    rotary positions (and therefore the hidden states) it has in its own unpacked sequence [prompt, answer].

    The answer tokens to score are listed flat (N of them, chosen answers of all pairs then rejected ones, in order):
    `sources` is the position whose logits predict the token (the previous token of its own sequence: for an answer's
    first token the prompt's last, not the token before it in the row), `targets` its id, and (`sequence`, `slot`)
    where it goes in a (2B, longest answer) table: sequence i < B is pair i's chosen answer, B + i its rejected one.
    """
    n = len(pairs)
    ids, positions, pair_of, part_of = [], [], [], []
    scored = [[None] * n, [None] * n]  # [part - 1][pair] -> (sources, targets) of that answer
    offset = 0
    for i, (prompt, chosen, rejected) in enumerate(pairs):
        p = len(prompt)
        ids.append(prompt)
        positions.append(torch.arange(p))
        part_of.append(torch.zeros(p, dtype=torch.long))
        start = offset + p
        for part, answer in ((1, chosen), (2, rejected)):
            a = len(answer)
            ids.append(answer)
            positions.append(torch.arange(p, p + a))
            part_of.append(torch.full((a,), part, dtype=torch.long))
            # The first answer token is predicted by the prompt's last position, the others by their predecessor.
            sources = torch.cat([torch.tensor([offset + p - 1]), torch.arange(start, start + a - 1)])
            scored[part - 1][i] = (sources, answer)
            start += a
        pair_of.append(torch.full((start - offset,), i, dtype=torch.long))
        offset = start
    pair_of, part_of = torch.cat(pair_of), torch.cat(part_of)
    t = len(pair_of)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    same_pair = pair_of[:, None] == pair_of[None, :]
    visible_part = (part_of[None, :] == 0) | (part_of[:, None] == part_of[None, :])
    answers = scored[0] + scored[1]
    return {
        "input_ids": torch.cat(ids).long().unsqueeze(0),
        "position_ids": torch.cat(positions).unsqueeze(0),
        "allowed": (causal & same_pair & visible_part)[None, None],
        "sources": torch.cat([s for s, _ in answers]),
        "targets": torch.cat([a for _, a in answers]).long(),
        "sequence": torch.cat([torch.full((len(a),), k, dtype=torch.long) for k, (_, a) in enumerate(answers)]),
        "slot": torch.cat([torch.arange(len(a)) for _, a in answers]),
    }


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes (everything but the answer mask)."""
    return {k: v for k, v in batch.items() if k != "answer_mask"}
