"""Many concurrent requests on one in-process vLLM engine, with continuous batching and token streaming.

vLLM's own server streams with AsyncLLM, which runs the engine core in a child process; the serving replica holds
the in-process `VLLMEngine` the training loop uses (same weights path, LoRA and video handling). This is the small
loop AsyncLLM would otherwise provide: requests are queued by the replica's event loop, and one driver task hands
them to the engine between steps, runs each step in a worker thread (the event loop stays free to take requests and
send chunks), and routes each step's outputs to the requests' queues. The engine is only ever touched from that one
thread, one call at a time, so no lock is needed. A request that arrives while others generate joins the batch at
the next step (continuous batching), streamed or not.
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

log = logging.getLogger(__name__)


class EngineFailed(RuntimeError):
    """A step of the engine raised: every request in it failed, and the replica reports itself unhealthy."""


class EngineLoop:
    """`engine`: an object with add_request / step / abort / has_unfinished (actors.vllm_engine.VLLMEngine);
    `refusals`: the exceptions with which the engine refuses one request (the request's fault, not the engine's)."""

    def __init__(self, engine, refusals: tuple[type[BaseException], ...]):
        self.engine, self.refusals = engine, refusals
        self.queues: dict[str, asyncio.Queue] = {}  # request id -> its events, until its consumer is done
        self.to_add: list[tuple[str, dict, dict, bool]] = []
        self.to_abort: list[str] = []
        self.driver: asyncio.Task | None = None
        self.failure: BaseException | None = None

    async def events(self, request: dict, sampling: dict, stream: bool) -> AsyncIterator[dict]:
        """The request's events: `{"refused": why}` alone, or step outputs (actors.vllm_engine.VLLMEngine.step)
        until one is `finished`: with `stream`, each new piece of text as it is generated, else one event with the
        whole answer. Leaving early (the client went away) aborts the request in the engine."""
        if self.failure is not None:
            raise EngineFailed(f"the engine failed earlier: {self.failure!r}")
        request_id = uuid.uuid4().hex
        queue: asyncio.Queue = asyncio.Queue()
        self.queues[request_id] = queue
        self.to_add.append((request_id, request, sampling, stream))
        self._drive()
        done = False
        try:
            while not done:
                event = await queue.get()
                if isinstance(event, BaseException):
                    done = True
                    raise event
                done = "refused" in event or event["finished"]
                yield event
        finally:
            del self.queues[request_id]
            if not done:  # abandoned mid-generation: free its place in the batch
                self.to_abort.append(request_id)
                self._drive()

    def _drive(self) -> None:
        if self.driver is None or self.driver.done():
            self.driver = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        busy = True
        while busy or self.to_add or self.to_abort:
            # A request whose consumer left before it reached the engine is not added at all.
            adds = [a for a in self.to_add if a[0] in self.queues]
            aborts = self.to_abort
            self.to_add, self.to_abort = [], []
            try:
                refused, outputs, busy = await asyncio.to_thread(self._step, adds, aborts)
            except Exception as err:  # not one request's fault: an engine failure, a bug
                log.exception("the engine failed; failing its %d requests", len(self.queues))
                self.failure = err
                failed = EngineFailed(f"the engine failed: {err!r}")
                for queue in self.queues.values():
                    queue.put_nowait(failed)
                return
            for request_id, why in refused:
                self._deliver(request_id, {"refused": why})
            for output in outputs:
                self._deliver(output["id"], output)

    def _deliver(self, request_id: str, event: dict) -> None:
        queue = self.queues.get(request_id)
        if queue is not None:  # else its consumer left (its abort is queued)
            queue.put_nowait(event)

    def _step(self, adds: list[tuple[str, dict, dict, bool]], aborts: list[str]
              ) -> tuple[list[tuple[str, str]], list[dict], bool]:
        """In the worker thread: the only code that calls the engine."""
        if aborts:
            self.engine.abort(aborts)
        refused = []
        for request_id, request, sampling, stream in adds:
            try:
                self.engine.add_request(request_id, request, sampling, stream=stream)
            except self.refusals as err:
                refused.append((request_id, str(err)[:500]))
        outputs = self.engine.step() if self.engine.has_unfinished() else []
        return refused, outputs, self.engine.has_unfinished()

    def check(self) -> None:
        """Raises if the engine failed (Serve's health check then replaces the replica)."""
        if self.failure is not None:
            raise EngineFailed(f"the engine failed: {self.failure!r}")
