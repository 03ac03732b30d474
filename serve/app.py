"""The Ray Serve application for an aligned policy: OpenAI-compatible `/v1/chat/completions` and `/v1/models`.

    HTTP → ChatIngress (FastAPI: bearer auth, bounded body, validation, video → frames in a pool of crash-isolated
                        child processes; the answer as JSON or, with `stream`, as server-sent events)
         → PolicyEngine (one vLLM engine per replica, autoscaled; concurrent requests, streamed or not, share the
                         engine's running batch: serve/engine_loop.py)

The engine is the same `VLLMEngine` that generates rollouts during training, so the served model sees videos
exactly as it did then (frames sampled and resized by rlaif's decoder, not by a server-side loader). Every refusal
is a 4xx in OpenAI's error shape, `{"error": {"message", "type", "code"}}`, sent before any of a stream.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from rlaif.config import ConfigError, ServeConfig
from serve.api import (ChatCompletionRequest, ChatCompletionResponse, ErrorResponse, ModelCard, ModelList,
                       RequestError, VideoPart, completion_response, prompt_messages, video_parts)
from serve.engine_loop import EngineLoop
from serve.stream import ChunkStream
from serve.target import ServeTarget

log = logging.getLogger(__name__)

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 408, 413, 422, 503)}
# With `stream: true` the 200 is an event stream (serve/stream.py) instead of the JSON completion.
STREAMED = {"content": {"text/event-stream": {"schema": {
    "type": "string", "description": "`data: <chat.completion.chunk JSON>` events, then `data: [DONE]`"}}}}
# Declares the bearer scheme in the OpenAPI schema; the middleware below enforces it (before the body is read).
BEARER = [Depends(HTTPBearer(auto_error=False))]
api = FastAPI(title="ray-rlaif", version="1",
              description="Chat with the aligned video model (OpenAI chat completions; a user message may carry "
                          "one video as a `video_url` content part). Every /v1 route needs `Authorization: Bearer "
                          "<token>`.")


def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


class AuthAndBoundedBody:
    """Pure ASGI middleware, in front of every route: the bearer token before anything else is read (/v1 routes), then
    the body read in full before the app sees it, bounded by `max_body` bytes whether or not it declares a
    Content-Length (a chunked body is counted as it arrives and refused, 413, as soon as it passes the bound) and
    by `body_timeout_s` (a body that trickles in is refused, 408)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # The running app's state (Ray Serve runs a copy of `api` in the replica, not this module's object).
        state = scope["app"].state
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if scope["path"].startswith("/v1/"):
            expected = f"Bearer {state.token}"
            if not hmac.compare_digest(headers.get("authorization", "").encode(), expected.encode()):
                return await error(401, "missing or wrong bearer token", "authentication_error")(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > state.max_body):
            return await error(413, f"request body over {state.max_body} bytes")(scope, receive, send)
        chunks: list[bytes] = []

        async def read_body() -> str:
            size = 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return "gone"
                body = message.get("body", b"")
                size += len(body)
                if size > state.max_body:
                    return "too large"
                chunks.append(body)
                if not message.get("more_body", False):
                    return "done"

        try:
            outcome = await asyncio.wait_for(read_body(), state.body_timeout_s)
        except asyncio.TimeoutError:
            return await error(408, f"the request body did not arrive within {state.body_timeout_s:g} s")(
                scope, receive, send)
        if outcome == "gone":
            return None
        if outcome == "too large":
            return await error(413, f"request body over {state.max_body} bytes")(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the disconnect, when it comes

        return await self.app(scope, replay, send)


api.add_middleware(AuthAndBoundedBody)


@api.exception_handler(RequestError)
async def _request_error(_, err: RequestError):
    return error(err.status, err.message, err.kind)


@api.exception_handler(RequestValidationError)
async def _validation_error(_, err: RequestValidationError):
    problems = err.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return error(400, "the request body is not valid JSON")
    text = "; ".join(f"{'.'.join(str(x) for x in p['loc'][1:]) or 'body'}: {p['msg']}" for p in problems[:10])
    return error(422, text)


@api.exception_handler(HTTPException)
async def _http_error(_, err: HTTPException):
    return error(err.status_code, str(err.detail))


# Defined before the deployments: Serve captures what their methods use when the class is decorated.
async def server_sent_events(chunks: ChunkStream, first: dict, events) -> AsyncIterator[str]:
    """The stream after its first engine event: role chunks, content as it comes, then usage and [DONE]. Leaving
    early (the client went away) cancels the engine's stream, which aborts the request there."""
    try:
        for line in chunks.opening():
            yield line
        event = first
        while True:
            for line in chunks.update(event):
                yield line
            if event["finished"]:
                break
            event = await events.__anext__()
        for line in chunks.closing():
            yield line
    except Exception as err:  # after the 200: a bug or a failed engine, reported in the stream and logged
        log.exception("a streamed answer failed after it started")
        yield chunks.error(f"internal error: {err!r}"[:500])
    finally:
        events.cancel()


def engines_running() -> int:
    """Engine replicas of this application that Serve counts as running (started, passing health checks)."""
    app = serve.status().applications.get(serve.get_replica_context().app_name)
    deployment = app.deployments.get("PolicyEngine") if app else None
    return deployment.replica_states.get("RUNNING", 0) if deployment else 0


@serve.deployment(name="PolicyEngine")
class PolicyEngine:
    """One vLLM engine, run by serve.engine_loop: concurrent requests, streamed or not, share its batch (a request
    joins it between two engine steps); an input the engine refuses (e.g. a prompt over the context length) fails
    alone, not with the batch."""

    def __init__(self, target: ServeTarget, cfg: dict):
        from actors.vllm_engine import VLLMEngine
        from rlaif.policy_model import is_video_model

        from vllm.exceptions import VLLMClientError

        c = ServeConfig(**cfg)
        engine = VLLMEngine(target.model, role="serve", max_model_len=c.max_model_len,
                            video=is_video_model(target.model), lora_path=target.adapter)
        # What vLLM raises for an input it cannot take (too long, bad parameters): the request's fault.
        self.loop = EngineLoop(engine, refusals=(ValueError, TypeError, VLLMClientError))

    async def generate(self, request: dict, sampling: dict) -> list[dict] | dict:
        """The whole answer: `sampling['n']` samples {text, n_tokens, finish_reason, prompt_tokens}, or
        {"refused": why}."""
        async with aclosing(self.loop.events(request, sampling, stream=False)) as events:
            async for event in events:
                if "refused" in event:
                    return event
                if event["finished"]:
                    samples = sorted(event["samples"], key=lambda s: s["index"])
                    return [{**s, "prompt_tokens": event["prompt_tokens"]} for s in samples]
        raise RuntimeError("the engine ended a request without its answer")

    async def stream(self, request: dict, sampling: dict) -> AsyncIterator[dict]:
        """The answer as it is generated: {"refused": why} alone, or engine events (new text per choice) up to the
        one marked `finished`. A caller that stops reading (its client went away) aborts the request."""
        async with aclosing(self.loop.events(request, sampling, stream=True)) as events:
            async for event in events:
                yield event

    def check_health(self) -> None:
        self.loop.check()


@serve.deployment(name="ChatIngress")
@serve.ingress(api)
class ChatIngress:
    def __init__(self, engine, target: ServeTarget, cfg: dict, token: str):
        from serve.video import VideoLoader

        self.engine, self.target, self.cfg = engine, target, ServeConfig(**cfg)
        api.state.token = token
        # base64 inflates by 4/3; the rest of a request is small.
        api.state.max_body = self.cfg.max_video_bytes * 4 // 3 + (1 << 20)
        api.state.body_timeout_s = self.cfg.body_timeout_s
        self.videos = VideoLoader(self.cfg)
        self.videos.warm()

    def __del__(self):  # Ray Serve calls it when the replica shuts down: the decode children and temp files go
        videos = getattr(self, "videos", None)
        if videos is not None:
            videos.close()

    @api.get("/health", responses={503: {"description": "no engine replica is running"}})
    async def health(self) -> JSONResponse:
        """For load balancers, without a token: 200 while an engine replica runs and passes its health checks, 503
        otherwise. It says nothing else."""
        # An engine whose step failed fails Serve's health check (PolicyEngine.check_health), so it stops counting.
        if await asyncio.to_thread(engines_running) > 0:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "unavailable"}, status_code=503, headers={"Retry-After": "1"})

    @api.get("/v1/models", response_model=ModelList, responses=ERRORS, dependencies=BEARER)
    async def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.target.model_id, created=0)])

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses={**ERRORS, 200: STREAMED},
              dependencies=BEARER)
    async def chat(self, body: ChatCompletionRequest) -> ChatCompletionResponse | StreamingResponse:
        request, sampling = await self._engine_request(body)
        if not body.stream:
            samples = await self.engine.generate.remote(request, sampling)
            if isinstance(samples, dict):
                raise RequestError(400, f"the model cannot take this request: {samples['refused']}")
            return completion_response(self.target.model_id, samples)
        events = self.engine.options(stream=True).stream.remote(request, sampling)
        # Everything that can refuse the request has answered before the first event, so a refusal is still a 4xx;
        # the 200 and the stream start after it.
        first = await events.__anext__()
        if "refused" in first:
            events.cancel()
            raise RequestError(400, f"the model cannot take this request: {first['refused']}")
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        chunks = ChunkStream(self.target.model_id, body.n, include_usage)
        return StreamingResponse(server_sent_events(chunks, first, events), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def _engine_request(self, body: ChatCompletionRequest) -> tuple[dict, dict]:
        """The request and sampling parameters for the engine (the video decoded to frames), or a RequestError."""
        c = self.cfg
        if body.model is not None and body.model != self.target.model_id:
            raise RequestError(404, f"model {body.model!r} is not served here (this server serves "
                                    f"{self.target.model_id!r})", "model_not_found")
        max_tokens = body.new_tokens or c.default_max_tokens
        if max_tokens > c.max_tokens_limit:
            raise RequestError(422, f"max_tokens: at most {c.max_tokens_limit} (got {max_tokens})")
        num_frames = body.num_frames or c.num_frames
        if num_frames > c.max_frames:
            raise RequestError(422, f"num_frames: at most {c.max_frames} frames per video (got {num_frames})")
        videos = video_parts(body)
        if len(videos) > 1:
            raise RequestError(422, "at most one video per request")
        if any(m.role != "user" and isinstance(m.content, list) and any(isinstance(p, VideoPart) for p in m.content)
               for m in body.messages):
            raise RequestError(422, "videos may only be sent in user messages")
        request: dict = {"messages": prompt_messages(body)}
        if videos:
            frames, fps = await self.videos.load(videos[0].video_url.url, num_frames)
            request.update(frames=frames, fps=fps)
        sampling = {"n": body.n, "temperature": body.temperature, "top_p": body.top_p, "max_tokens": max_tokens,
                    "seed": body.seed}
        return request, sampling


def serve_token(cfg: ServeConfig) -> str:
    token = os.environ.get(cfg.token_env) or cfg.token
    if not token or len(token) < 16:
        raise ConfigError(f"no bearer token: set {cfg.token_env} (16+ characters) or serve.token; the endpoint "
                          f"never runs open")
    return token


def build_app(target: ServeTarget, cfg: ServeConfig):
    """The Serve application graph (not yet running)."""
    if cfg.min_replicas == cfg.max_replicas:
        scaling: dict = {"num_replicas": cfg.max_replicas}
    else:
        scaling = {"autoscaling_config": {"min_replicas": cfg.min_replicas, "max_replicas": cfg.max_replicas,
                                          "target_ongoing_requests": cfg.target_ongoing_requests}}
    engine = PolicyEngine.options(
        **scaling, max_ongoing_requests=cfg.max_ongoing_requests,
        ray_actor_options={"num_cpus": cfg.engine_cpus, "num_gpus": cfg.engine_gpus},
    ).bind(target, cfg.model_dump())
    # The ingress mostly awaits decodes and the engine: it may hold many requests, so the engines' batches fill.
    return ChatIngress.options(num_replicas=cfg.ingress_replicas, max_ongoing_requests=4 * cfg.max_ongoing_requests,
                               ray_actor_options={"num_cpus": 0.25}).bind(
        engine, target, cfg.model_dump(), serve_token(cfg))


def start(target: ServeTarget, cfg: ServeConfig, name: str = "rlaif", blocking: bool = False) -> str:
    """Starts (or replaces) the application on Ray Serve; returns its base URL."""
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(target, cfg), name=name, route_prefix="/", blocking=blocking)
    return f"http://{cfg.host}:{cfg.port}"


def openapi_schema() -> dict:
    return api.openapi()
