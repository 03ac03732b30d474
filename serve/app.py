"""The Ray Serve application for an aligned policy: OpenAI-compatible `/v1/chat/completions` and `/v1/models`.

    HTTP → ChatIngress (FastAPI: bearer auth, bounded body, validation, video → frames in a pool of crash-isolated
                        child processes)
         → PolicyEngine (one vLLM engine per replica, autoscaled; concurrent requests batched with serve.batch)

The engine is the same `VLLMEngine` that generates rollouts during training, so the served model sees videos
exactly as it did then (frames sampled and resized by rlaif's decoder, not by a server-side loader). Every refusal
is a 4xx in OpenAI's error shape, `{"error": {"message", "type", "code"}}`.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import os

from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPBearer
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException

from rlaif.config import ConfigError, ServeConfig
from rlaif.schemas import REFUSED_FINISH
from serve.api import (ChatCompletionRequest, ChatCompletionResponse, ErrorResponse, ModelCard, ModelList,
                             RequestError, VideoPart, completion_response, prompt_messages, video_parts)

from serve.target import ServeTarget

log = logging.getLogger(__name__)

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 408, 413, 422, 503)}
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


@serve.deployment(name="PolicyEngine")
class PolicyEngine:
    """One vLLM engine. Concurrent requests arrive one by one and run as a single `generate` batch; an input the
    engine refuses (e.g. a prompt over the context length) fails alone, not with its batch."""

    def __init__(self, target: ServeTarget, cfg: dict):
        from actors.vllm_engine import VLLMEngine
        from rlaif.policy_model import is_video_model

        from vllm.exceptions import VLLMClientError

        c = ServeConfig(**cfg)
        # What vLLM raises for an input it cannot take (too long, bad parameters): the request's fault.
        self.refusals = (ValueError, TypeError, VLLMClientError)
        self.engine = VLLMEngine(target.model, role="serve", max_model_len=c.max_model_len,
                                 video=is_video_model(target.model), lora_path=target.adapter)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def generate(self, requests: list[dict], samplings: list[dict]) -> list[list[dict] | dict]:
        return await asyncio.to_thread(self._generate, requests, samplings)

    def _generate(self, requests: list[dict], samplings: list[dict]) -> list[list[dict] | dict]:
        try:
            results = self.engine.generate(requests, samplings)
        except self.refusals:  # find which request it was
            results = [self._generate_one(r, s) for r, s in zip(requests, samplings)]
        # The engine answers a request it refuses (a prompt over the context length) with a refused sample.
        return [{"refused": r[0].get("error", r[0]["finish_reason"])[:500]}
                if isinstance(r, list) and r[0]["finish_reason"] in REFUSED_FINISH else r for r in results]

    def _generate_one(self, request: dict, sampling: dict) -> list[dict] | dict:
        try:
            return self.engine.generate([request], sampling)[0]
        except self.refusals as err:
            return {"refused": str(err)[:500]}

    def check_health(self) -> None:
        self.engine.health()


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

    @api.get("/health")
    async def health(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/models", response_model=ModelList, responses=ERRORS, dependencies=BEARER)
    async def models(self) -> ModelList:
        return ModelList(data=[ModelCard(id=self.target.model_id, created=0)])

    @api.post("/v1/chat/completions", response_model=ChatCompletionResponse, responses=ERRORS, dependencies=BEARER)
    async def chat(self, body: ChatCompletionRequest) -> ChatCompletionResponse:
        c = self.cfg
        if body.model is not None and body.model != self.target.model_id:
            raise RequestError(404, f"model {body.model!r} is not served here (this server serves "
                                    f"{self.target.model_id!r})", "model_not_found")
        max_tokens = body.max_tokens or c.default_max_tokens
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
        samples = await self.engine.generate.remote(request, sampling)
        if isinstance(samples, dict):
            raise RequestError(400, f"the model cannot take this request: {samples['refused']}")
        return completion_response(self.target.model_id, samples)


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
