"""A streamed chat completion as OpenAI sends it: server-sent events, each `data: <chat.completion.chunk JSON>`.

    first, per choice     {"delta": {"role": "assistant", "content": ""}, "finish_reason": null}
    as text arrives       {"delta": {"content": "<new text>"}, "finish_reason": null}
    when a choice ends    {"delta": {}, "finish_reason": "stop" | "length"}
    with include_usage    a last chunk with "choices": [] and the request's "usage" ("usage": null in the others)
    then                  data: [DONE]

Every chunk of one stream has the same id, created time and model, and each choice carries its `index` (n > 1).
The events come from serve.engine_loop (actors.vllm_engine.VLLMEngine.step outputs of a streamed request).
"""
from __future__ import annotations

import json
import time
import uuid

DONE = "data: [DONE]\n\n"


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class ChunkStream:
    """The events of one streamed request, in order: `opening()`, `update(event)` for each engine event, `closing()`."""

    def __init__(self, model: str, n: int, include_usage: bool, created: int | None = None):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.model, self.n, self.include_usage = model, n, include_usage
        self.created = int(time.time()) if created is None else created
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": choices}
        if self.include_usage:
            chunk["usage"] = usage
        return sse(chunk)

    @staticmethod
    def _choice(index: int, delta: dict, finish_reason: str | None = None) -> dict:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    def opening(self) -> list[str]:
        return [self._chunk([self._choice(i, {"role": "assistant", "content": ""})]) for i in range(self.n)]

    def update(self, event: dict) -> list[str]:
        out = []
        self.prompt_tokens = event["prompt_tokens"]
        for sample in event["samples"]:
            self.completion_tokens += sample["n_tokens"]
            if sample["text"]:
                out.append(self._chunk([self._choice(sample["index"], {"content": sample["text"]})]))
            if sample["finish_reason"] is not None:
                out.append(self._chunk([self._choice(sample["index"], {}, sample["finish_reason"])]))
        return out

    def closing(self) -> list[str]:
        usage = {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                 "total_tokens": self.prompt_tokens + self.completion_tokens}
        return ([self._chunk([], usage)] if self.include_usage else []) + [DONE]

    @staticmethod
    def error(message: str) -> str:
        """What ends a stream that fails after it started (the status line, 200, is already sent): OpenAI's error
        object as an event, which the openai client raises as an APIError. No [DONE] follows."""
        return sse({"error": {"message": message, "type": "internal_error", "code": 500}})
