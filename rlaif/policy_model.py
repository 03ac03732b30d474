"""Loading the policy with transformers, and scoring (video, question, answer) pairs with it: the shared piece of
the reference stage, the DPO trainer and the tests that check vLLM against transformers."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from rlaif.logprobs import logits_needed, sequence_logps, token_logps
from rlaif.schemas import frames_of
from rlaif.storage import local_folder
from rlaif.vlm_inputs import collate, encode_answer, encode_example, encode_prompt, model_inputs, pack_shared_prefix


def is_video_model(path: str) -> bool:
    return "vision_config" in json.loads((Path(local_folder(path)) / "config.json").read_text())


def load_policy(path: str, dtype: torch.dtype = torch.float32):
    """(model, processor): a video LMM with its processor, or a text LM with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    path = local_folder(path)  # a model folder in a remote run folder is loaded from a local copy
    if is_video_model(path):
        return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype), AutoProcessor.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


def enable_gradient_checkpointing(model) -> None:
    """train.gradient_checkpointing: each layer's activations are recomputed in the backward pass. Non-reentrant:
    the reentrant form gives a LoRA no gradients when the layer's inputs do not require grad (frozen embeddings).

    transformers' gradient_checkpointing_enable also hooks every input embedding, the vision tower's patch embedding
    included, so that its output requires grad: what the reentrant form needs, and the non-reentrant one does not.
    Behind a frozen tower (a LoRA on the language model) the hook makes the backward pass run through the whole tower,
    recomputing it first: 1.6x the time of a LoRA step of a 2B Qwen2-VL at 16 frames on an H200 at 2 pairs a
    micro-batch, 2x at 4 (bench/gpu_dpo.py, docs/performance.md).
    So the hooks go; gradients are the same without them (tests/unit/test_gpu_memory.py)."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.disable_input_require_grads()
    model.config.use_cache = False


def pad_id(processor) -> int:
    tok = getattr(processor, "tokenizer", processor)
    return tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)


def pair_batch(processor, rows: list[dict], video: bool, shared_prefix: bool = False) -> dict[str, torch.Tensor]:
    """2B sequences: the chosen answers of `rows`, then their rejected answers. `shared_prefix` (text models only):
    one packed row in which each prompt is computed once for both answers (rlaif.vlm_inputs.pack_shared_prefix);
    answer_token_logps gives the same (2B, ...) log-probs either way."""
    def frames(r):
        return frames_of(r) if video else None

    if shared_prefix:
        if video:  # the video's tokens would need M-RoPE positions continued past the prompt for each answer
            raise ValueError("shared_prefix packing is for text models; a video model takes the unpacked batch")
        packed = []
        for r in rows:
            prompt = encode_prompt(processor, r["question"], None)["input_ids"][0]
            packed.append((prompt, encode_answer(processor, r["chosen"]), encode_answer(processor, r["rejected"])))
        return pack_shared_prefix(packed)
    examples = [encode_example(processor, r["question"], r["chosen"], frames(r)) for r in rows]
    examples += [encode_example(processor, r["question"], r["rejected"], frames(r)) for r in rows]
    return collate(examples, pad_id(processor))


def answer_token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each predicted token, mask of the answer tokens among them), both (B, K-1), from one forward that
    computes logits only from the batch's first answer token on (rlaif.logprobs.logits_needed). A shared-prefix batch
    (pair_batch(..., shared_prefix=True)) gives (2B, longest answer) tables of the same log-probs and mask."""
    if "sources" in batch:
        return packed_answer_token_logps(model, batch)
    keep = logits_needed(batch["answer_mask"])
    return token_logps(model(**model_inputs(batch), logits_to_keep=keep).logits, batch["input_ids"], batch["answer_mask"])


def packed_answer_token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The log-probs of a shared-prefix batch, from one forward of its packed row with a custom 4D attention mask
    (transformers uses a 4D mask as given) and the answers' own position ids. Logits are computed only at the
    positions that predict an answer token (`logits_to_keep` as an index tensor; the prompt's last position twice:
    it predicts both answers' first token), then scattered into a (2B, longest answer) table, zero-masked."""
    dtype = next(model.parameters()).dtype
    # Additive form (0 / most negative), which eager and SDPA attention both take as is.
    allowed = batch["allowed"]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=bias,
                   logits_to_keep=batch["sources"]).logits[0]
    picked = torch.log_softmax(logits.float(), dim=-1).gather(1, batch["targets"].unsqueeze(1)).squeeze(1)
    shape = (int(batch["sequence"].max()) + 1, int(batch["slot"].max()) + 1)
    index = (batch["sequence"].to(picked.device), batch["slot"].to(picked.device))
    token_lp = picked.new_zeros(shape).index_put(index, picked)  # out of place: gradients flow
    mask = torch.zeros(shape, dtype=torch.float32, device=picked.device).index_put(index, torch.ones_like(picked))
    return token_lp, mask


def answer_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: (sum, mean) of answer-token log-probs, from one forward pass."""
    lp, mask = answer_token_logps(model, batch)
    return sequence_logps(lp, mask), sequence_logps(lp, mask, average=True)


def target_batch(processor, rows: list[dict], video: bool, prompt_key: str, target_key: str) -> dict[str, torch.Tensor]:
    """One sequence per row: (video,) row[prompt_key] as the user turn, row[target_key] as the answer to learn."""
    examples = [encode_example(processor, r[prompt_key], r[target_key], frames_of(r) if video else None) for r in rows]
    return collate(examples, pad_id(processor))
