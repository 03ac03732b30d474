"""The streaming endpoint's pure parts: the chunk stream, read back by the official openai client (its SSE parser and
its own stream accumulator, over an in-memory transport), and the engine loop's scheduling, on a stand-in engine
that generates one numbered token per request per step."""
import asyncio
import json
import time

import httpx
import openai
import pytest

from serve.engine_loop import EngineFailed, EngineLoop
from serve.stream import DONE, ChunkStream

# What a streamed n=2 request's engine events look like (actors.vllm_engine.VLLMEngine.step): new text per choice.
EVENTS = [
    {"id": "r", "finished": False, "prompt_tokens": 7, "samples": [{"index": 1, "text": "Hel", "n_tokens": 1,
                                                                    "finish_reason": None}]},
    {"id": "r", "finished": False, "prompt_tokens": 7, "samples": [{"index": 0, "text": "A red", "n_tokens": 2,
                                                                    "finish_reason": None}]},
    {"id": "r", "finished": False, "prompt_tokens": 7, "samples": [{"index": 1, "text": "", "n_tokens": 1,
                                                                    "finish_reason": None}]},  # a held-back byte
    {"id": "r", "finished": False, "prompt_tokens": 7, "samples": [{"index": 0, "text": " ball.", "n_tokens": 2,
                                                                    "finish_reason": "stop"}]},
    {"id": "r", "finished": True, "prompt_tokens": 7, "samples": [{"index": 1, "text": "lo ✓", "n_tokens": 2,
                                                                   "finish_reason": "length"}]},
]


def streamed_body(include_usage: bool, events=EVENTS) -> str:
    chunks = ChunkStream("tiny", n=2, include_usage=include_usage, created=123)
    return "".join(chunks.opening() + [line for e in events for line in chunks.update(e)] + chunks.closing())


def client_over(body: str) -> openai.OpenAI:
    """The official client, its HTTP answered in memory with `body` as an event stream."""
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())

    return openai.OpenAI(base_url="http://test/v1", api_key="k",
                         http_client=httpx.Client(transport=httpx.MockTransport(answer)))


def test_chunks_are_what_the_openai_client_reads():
    body = streamed_body(include_usage=True)
    assert body.endswith(DONE)
    events = [e.removeprefix("data: ") for e in body.split("\n\n") if e]
    raw = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["created"] == 123 and c["model"] == "tiny" for c in raw)
    assert len({c["id"] for c in raw}) == 1
    assert [c["choices"][0]["delta"] for c in raw[:2]] == [{"role": "assistant", "content": ""}] * 2
    assert all(c["usage"] is None for c in raw[:-1])

    stream = client_over(body).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                       stream=True, n=2, stream_options={"include_usage": True})
    chunks = list(stream)
    text = {0: "", 1: ""}
    finish = {}
    for chunk in chunks[:-1]:
        (choice,) = chunk.choices
        text[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert text == {0: "A red ball.", 1: "Hello ✓"} and finish == {0: "stop", 1: "length"}
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == {
        "prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15, "completion_tokens_details": None,
        "prompt_tokens_details": None}


def test_the_openai_stream_helper_assembles_the_completion():
    """openai's `chat.completions.stream` checks the chunks as it merges them into one ChatCompletion (and raises on
    a `length` finish, so here both choices stop)."""
    events = json.loads(json.dumps(EVENTS).replace('"length"', '"stop"'))
    client = client_over(streamed_body(include_usage=False, events=events))
    with client.chat.completions.stream(model="tiny", messages=[{"role": "user", "content": "hi"}], n=2) as stream:
        final = stream.get_final_completion()
    assert [(c.index, c.message.role, c.message.content, c.finish_reason) for c in final.choices] == [
        (0, "assistant", "A red ball.", "stop"), (1, "assistant", "Hello ✓", "stop")]
    assert "usage" not in streamed_body(include_usage=False)  # only asked for


def test_an_error_after_the_start_is_raised_by_the_client():
    chunks = ChunkStream("tiny", n=1, include_usage=False)
    body = "".join(chunks.opening()) + chunks.error("internal error: boom")
    stream = client_over(body).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                       stream=True)
    with pytest.raises(openai.APIError, match="boom"):
        list(stream)


class CountingEngine:
    """Stands in for VLLMEngine's add_request/step/abort/has_unfinished: each step, every running request gets one
    token `t<k>`; a request ends at max_tokens. `fail_at`: the step number at which step raises."""

    def __init__(self, fail_at: int | None = None, step_s: float = 0.0):
        self.step_s = step_s
        self.running: dict[str, dict] = {}
        self.added, self.aborted, self.steps, self.fail_at = [], [], 0, fail_at

    def add_request(self, request_id, request, sampling, stream=False):
        if request.get("too_long"):
            raise ValueError("prompt too long")
        self.added.append(request_id)
        self.running[request_id] = {"n": 0, "max": sampling["max_tokens"], "stream": stream, "text": ""}

    def step(self):
        time.sleep(self.step_s)
        self.steps += 1
        if self.steps == self.fail_at:
            raise RuntimeError("engine broke")
        out = []
        for rid, r in list(self.running.items()):
            r["n"] += 1
            piece = f"t{r['n']} "
            r["text"] += piece
            done = r["n"] == r["max"]
            if done:
                del self.running[rid]
            if r["stream"] or done:
                out.append({"id": rid, "finished": done, "prompt_tokens": 3, "samples": [{
                    "index": 0, "text": piece if r["stream"] else r["text"], "n_tokens": 1 if r["stream"] else r["n"],
                    "finish_reason": "length" if done else None}]})
        return out

    def abort(self, ids):
        self.aborted += ids
        for rid in ids:
            self.running.pop(rid, None)

    def has_unfinished(self):
        return bool(self.running)


async def collect(loop: EngineLoop, request: dict, max_tokens: int, stream: bool, log: list, name: str) -> list:
    out = []
    async for event in loop.events(request, {"max_tokens": max_tokens}, stream=stream):
        log.append(name)
        out.append(event)
    return out


def test_engine_loop_batches_streams_and_refuses_alone():
    async def main():
        engine = CountingEngine(step_s=0.005)
        loop = EngineLoop(engine, refusals=(ValueError,))
        log: list = []
        first = loop.events({}, {"max_tokens": 40}, stream=True)
        head = [await first.__anext__(), await first.__anext__()]  # the first one is generating when the others come
        others = asyncio.gather(collect(loop, {}, 2, True, log, "later"), collect(loop, {}, 3, False, log, "whole"),
                                collect(loop, {"too_long": True}, 2, True, log, "refused"))
        rest = [e async for e in first if not log.append("first")]
        return engine, head + rest, *(await others), log

    engine, first, later, whole, refused, log = asyncio.run(main())
    assert "".join(e["samples"][0]["text"] for e in first) == "".join(f"t{i} " for i in range(1, 41))
    assert [e["finished"] for e in later] == [False, True]
    assert whole == [{"id": whole[0]["id"], "finished": True, "prompt_tokens": 3, "samples": [
        {"index": 0, "text": "t1 t2 t3 ", "n_tokens": 3, "finish_reason": "length"}]}]
    assert refused == [{"refused": "prompt too long"}]
    # Continuous batching: the later requests joined the first one's steps (no step of their own) and were done
    # while it still generated.
    assert engine.steps == 40 and log[-1] == "first"
    assert engine.aborted == []


def test_engine_loop_aborts_an_abandoned_stream_and_reports_a_failed_engine():
    async def abandon():
        engine = CountingEngine()
        loop = EngineLoop(engine, refusals=(ValueError,))
        events = loop.events({}, {"max_tokens": 50}, stream=True)
        await events.__anext__()
        await events.aclose()  # the client went away
        await loop.driver
        return engine

    engine = asyncio.run(abandon())
    assert len(engine.aborted) == 1 and engine.aborted == engine.added and not engine.running and engine.steps < 5

    async def broken():
        loop = EngineLoop(CountingEngine(fail_at=2), refusals=(ValueError,))
        with pytest.raises(EngineFailed, match="engine broke"):
            await collect(loop, {}, 5, True, [], "x")
        with pytest.raises(EngineFailed):
            loop.check()
        with pytest.raises(EngineFailed):  # new requests are refused at once
            await collect(loop, {}, 5, True, [], "y")

    asyncio.run(broken())
