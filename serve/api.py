"""The serving API's request and response schemas: the subset of OpenAI's chat completions that the aligned video
model serves, strictly validated (unknown fields are errors, every number is bounded), so a malformed request is a
4xx with a message that names the field, never a 5xx.

A user message may carry one video as a content part, in OpenAI's `video_url` form (as vLLM's server takes it):

    {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA..."}}   uploaded bytes
    {"type": "video_url", "video_url": {"url": "file:///videos/clip.mp4"}}        a path under the allowed root
    {"type": "video_url", "video_url": {"url": "https://host/clip.mp4"}}          a URL under an allowed prefix

and `num_frames` (an extension) asks for how many frames to sample from it.
"""
from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str = Field(max_length=20_000)


class VideoURL(_Strict):
    url: str = Field(min_length=1, max_length=200_000_000,
                     description="data:video/...;base64,<bytes>, file:///path (allowed root), or an allowed URL")


class VideoPart(_Strict):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[Union[TextPart, VideoPart], Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, Field(max_length=20_000)] | Annotated[list[ContentPart], Field(min_length=1, max_length=64)]


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="A last chunk with the request's usage and no choices.")


class ChatCompletionRequest(_Strict):
    model: str | None = Field(None, max_length=512, description="Optional; must name the served model when given.")
    messages: list[Message] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, description="New tokens at most (bounded by the server's limit).")
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens.")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=8)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stream: bool = Field(False, description="Answer as server-sent events (`chat.completion.chunk`s, then "
                                            "`data: [DONE]`), token by token as the model generates.")
    stream_options: StreamOptions | None = Field(None, description="Only with `stream`.")
    num_frames: int | None = Field(None, ge=1, description="Frames to sample from the video (bounded by the server).")

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ (give one)")
        return self

    @property
    def new_tokens(self) -> int | None:
        """The asked bound on new tokens, under either name."""
        return self.max_tokens or self.max_completion_tokens


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    finish_reason: str | None


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ray-rlaif"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    code: int


class ErrorResponse(BaseModel):
    error: ErrorBody


class RequestError(Exception):
    """A request the server refuses: `status` is the HTTP code (4xx), `message` says why."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


@dataclass(frozen=True)
class VideoSource:
    kind: Literal["bytes", "path", "url"]
    data: bytes | None = None
    location: str | None = None


def video_parts(request: ChatCompletionRequest) -> list[VideoPart]:
    return [p for m in request.messages if isinstance(m.content, list) for p in m.content if isinstance(p, VideoPart)]


def parse_video_url(url: str, max_bytes: int) -> VideoSource:
    """Which kind of video a `video_url` names; uploaded bytes are decoded here, within `max_bytes`."""
    if url[:5].lower() == "data:":
        header, sep, payload = url.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(400, "a data: video URL must be base64 (data:video/mp4;base64,...)")
        if len(payload) * 3 // 4 > max_bytes:
            raise RequestError(413, f"video larger than the limit of {max_bytes} bytes")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(400, "the data: video URL is not valid base64") from None
        if not data:
            raise RequestError(400, "the uploaded video is empty")
        return VideoSource("bytes", data=data)
    if "\x00" in url:  # no file system or URL takes one; as a path it would reach open() and raise there
        raise RequestError(400, "the video URL contains a NUL character")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "file":
        return VideoSource("path", location=url[len("file://"):])
    if scheme in ("http", "https", "s3", "gs"):  # checked against the allow-list as a normalised URL (serve/urls.py)
        return VideoSource("url", location=url)
    if scheme:
        raise RequestError(400, f"unsupported video URL scheme: {url.split('://')[0][:40]}")
    return VideoSource("path", location=url)


def prompt_messages(request: ChatCompletionRequest) -> list[dict]:
    """Chat messages for the engine's chat template: the video part becomes the model's video placeholder."""
    out = []
    for m in request.messages:
        if isinstance(m.content, str):
            out.append({"role": m.role, "content": m.content})
        else:
            out.append({"role": m.role, "content": [{"type": "video"} if isinstance(p, VideoPart)
                                                    else {"type": "text", "text": p.text} for p in m.content]})
    return out


def completion_response(model: str, samples: list[dict]) -> ChatCompletionResponse:
    completion = sum(s["n_tokens"] for s in samples)
    return ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=model,
        choices=[Choice(index=i, message=ChoiceMessage(content=s["text"]), finish_reason=s["finish_reason"])
                 for i, s in enumerate(samples)],
        usage=Usage(prompt_tokens=samples[0].get("prompt_tokens", 0) if samples else 0, completion_tokens=completion,
                    total_tokens=completion + (samples[0].get("prompt_tokens", 0) if samples else 0)))
