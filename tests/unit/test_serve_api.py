"""Pure pieces of the serving endpoint: request schema, video URL parsing, the allow-list, target resolution."""
import base64
import json

import pytest
from pydantic import ValidationError

from rlaif.config import ConfigError, ServeConfig, parse_config
from serve.api import ChatCompletionRequest, RequestError, parse_video_url, prompt_messages, video_parts
from serve.target import resolve_target
from serve.video import VideoLoader


def test_request_schema_is_strict():
    ok = {"messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "clip.mp4"}},
                                                    {"type": "text", "text": "What moves?"}]}]}
    req = ChatCompletionRequest.model_validate(ok)
    assert prompt_messages(req) == [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    assert [p.video_url.url for p in video_parts(req)] == ["clip.mp4"]
    streamed = ChatCompletionRequest.model_validate({**ok, "stream": True, "stream_options": {"include_usage": True}})
    assert streamed.stream and streamed.stream_options.include_usage
    assert ChatCompletionRequest.model_validate({**ok, "max_completion_tokens": 5}).new_tokens == 5
    for bad in ({**ok, "temprature": 1}, {**ok, "max_tokens": 0}, {**ok, "stream_options": {"include_usage": True}},
                {**ok, "stream": True, "stream_options": {"include_usage": True, "other": 1}},
                {**ok, "max_tokens": 4, "max_completion_tokens": 5}, {"messages": []},
                {"messages": [{"role": "tool", "content": "x"}]},
                {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate(bad)


def test_video_url_kinds_and_limits():
    data = b"\x00\x01video bytes"
    src = parse_video_url("data:video/mp4;base64," + base64.b64encode(data).decode(), max_bytes=100)
    assert src.kind == "bytes" and src.data == data
    assert parse_video_url("file:///v/a.mp4", 100).location == "/v/a.mp4"
    assert parse_video_url("a.mp4", 100).kind == "path"
    assert parse_video_url("https://host/a.mp4", 100).kind == "url"
    cases = {"data:video/mp4;base64," + base64.b64encode(b"x" * 200).decode(): 413,
             "data:video/mp4;base64,@@@@": 400, "data:video/mp4,rawbytes": 400, "data:video/mp4;base64,": 400,
             "ftp://host/a.mp4": 400, "\x00": 400, "file:///v/a\x00.mp4": 400, "https://host/\x00": 400}
    for url, status in cases.items():
        with pytest.raises(RequestError) as err:
            parse_video_url(url, max_bytes=100)
        assert err.value.status == status, url


def test_local_paths_must_stay_under_the_allowed_root(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.mp4").write_bytes(b"x")
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    loader = VideoLoader(ServeConfig(allowed_video_root=str(root), allowed_url_prefixes=["https://ok.example/"]))
    assert loader.allowed_path("sub/a.mp4") == str((root / "sub" / "a.mp4").resolve())
    assert loader.allowed_path(str(root / "sub" / "a.mp4")).endswith("a.mp4")
    for escape in ("../secret.mp4", str(tmp_path / "secret.mp4"), "link.mp4", "/etc/passwd"):
        with pytest.raises(RequestError) as err:
            loader.allowed_path(escape)
        assert err.value.status == 403, escape
    assert loader.allowed_url("https://ok.example/a.mp4")
    with pytest.raises(RequestError):
        loader.allowed_url("https://ok.example.evil/a.mp4")
    with pytest.raises(RequestError) as err:
        VideoLoader(ServeConfig()).allowed_path("a.mp4")
    assert err.value.status == 403


def test_serve_config_bounds():
    with pytest.raises(ConfigError):
        parse_config({"serve": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ConfigError):
        parse_config({"serve": {"num_frames": 64, "max_frames": 32}})
    with pytest.raises(ConfigError):
        parse_config({"serve": {"token": "short"}})


def test_targets(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    adapter = tmp_path / "round_1" / "policy" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model), "r": 8}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({"name": "demo", "final_policy": str(adapter.parent)}))
    (adapter.parent / "config.json").write_text("{}")

    assert resolve_target(str(model)) == resolve_target(str(model), model_id="model")
    assert resolve_target(str(model)).adapter is None
    lora = resolve_target(str(adapter))
    assert lora.model == str(model) and lora.adapter == str(adapter.resolve())
    merged = resolve_target(str(run))
    assert merged.model == str(adapter.parent) and merged.adapter is None and merged.model_id == "demo"
    as_adapter = resolve_target(str(run), use_adapter=True)
    assert as_adapter.adapter == str(adapter.resolve()) and as_adapter.model_id == "demo"
    with pytest.raises(ValueError, match="not a run folder"):
        resolve_target(str(tmp_path / "nothing"))
