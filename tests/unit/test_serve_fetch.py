"""Fetching allowed video URLs (serve/fetch.py) against a local HTTP server, and the decode pool (serve/video.py) with
real child processes: redirects re-checked per hop, bodies bounded without Content-Length, a slow call holding one
child and not the others, a full pool refusing at once."""
import asyncio
import os
import time
from urllib.parse import quote

import pytest

from rlaif import decode
from rlaif.config import ServeConfig
from rlaif.decode import VideoRejected
from rlaif.testkit.synthetic_videos import write_synthetic_corpus
from serve.api import RequestError
from serve.fetch import FETCH_FAILED, fetch
from serve.urls import URLRefused
from serve.video import DecodePool, PoolBusy, VideoLoader
from tests.serve_web import VideoWeb, pid, sleep_then


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    base = tmp_path_factory.mktemp("web")
    clip = write_synthetic_corpus(base / "src", 1, seed=1)[0].path.read_bytes()
    for folder in ("allowed", "other"):
        (base / folder).mkdir()
        (base / folder / "clip.mp4").write_bytes(clip)
    server = VideoWeb(base)
    yield server, clip
    server.close()


def redirect(web, to: str) -> str:
    return f"{web.url}/allowed/redirect?to={quote(to, safe='')}"


def test_fetches_an_allowed_url_and_follows_allowed_redirects(web, tmp_path):
    server, clip = web
    prefixes = [f"{server.url}/allowed/"]
    dest = str(tmp_path / "v")
    assert fetch(f"{server.url}/allowed/clip.mp4", prefixes, dest, 1 << 24, 10).endswith("/allowed/clip.mp4")
    assert open(dest, "rb").read() == clip
    for to in (f"{server.url}/allowed/clip.mp4", "/allowed/clip.mp4", "clip.mp4", "/allowed/sub/../clip.mp4"):
        assert fetch(redirect(server, to), prefixes, dest, 1 << 24, 10).endswith("/allowed/clip.mp4"), to
        assert open(dest, "rb").read() == clip


@pytest.mark.parametrize("to", ["/other/clip.mp4", "/allowed/../other/clip.mp4", "/allowed/%2e%2e/other/clip.mp4",
                                "http://localhost:{port}/allowed/clip.mp4", "http://u@127.0.0.1:{port}/allowed/clip.mp4",
                                "file:///etc/passwd", "https://127.0.0.1:{port}/allowed/clip.mp4"])
def test_a_redirect_out_of_the_allow_list_is_not_followed(web, tmp_path, to):
    server, _ = web
    port = server.url.rsplit(":", 1)[1]
    target = to.format(port=port)
    before = server.hits["/other/clip.mp4"]
    with pytest.raises((URLRefused, VideoRejected)) as err:
        fetch(redirect(server, target), [f"{server.url}/allowed/"], str(tmp_path / "v"), 1 << 24, 10)
    if isinstance(err.value, URLRefused):
        assert err.value.status in (400, 403) and "redirects to a URL this server does not fetch" in str(err.value)
    else:  # urllib itself refuses a redirect to file://, before the allow-list sees it
        assert target.startswith("file:") and err.value.reason == FETCH_FAILED
    assert server.hits["/other/clip.mp4"] == before  # never fetched


def test_bodies_are_bounded_without_content_length(web, tmp_path):
    server, _ = web
    prefixes = [f"{server.url}/allowed/"]
    dest = str(tmp_path / "v")
    assert fetch(f"{server.url}/allowed/chunked/1000", prefixes, dest, 1000, 10)
    assert os.path.getsize(dest) == 1000
    with pytest.raises(VideoRejected) as err:
        fetch(f"{server.url}/allowed/chunked/5000000", prefixes, dest, 1 << 20, 10)
    assert err.value.reason == decode.TOO_LARGE and os.path.getsize(dest) <= 1 << 20
    with pytest.raises(VideoRejected) as err:  # with a Content-Length: refused before reading
        fetch(f"{server.url}/allowed/clip.mp4", prefixes, dest, 100, 10)
    assert err.value.reason == decode.TOO_LARGE


def test_upstream_failures_are_rejections(web, tmp_path):
    server, _ = web
    prefixes = [f"{server.url}/allowed/"]
    with pytest.raises(VideoRejected) as err:
        fetch(f"{server.url}/allowed/nothing.mp4", prefixes, str(tmp_path / "v"), 1 << 20, 10)
    assert err.value.reason == decode.MISSING
    with pytest.raises(VideoRejected) as err:  # redirect loop
        fetch(f"{server.url}/allowed/redirect", prefixes, str(tmp_path / "v"), 1 << 20, 10)
    assert err.value.reason == FETCH_FAILED


def settled(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "never settled"
        time.sleep(0.01)


def test_a_slow_call_holds_one_child_and_a_full_pool_refuses_at_once():
    pool = DecodePool(workers=2, queue_size=1, timeout_s=30)
    try:
        assert pool.submit(pid).result(60) != os.getpid()  # children start lazily
        assert pool.submit(pid).result(60) != os.getpid()
        slow = pool.submit(sleep_then, 2, "slow")
        t0 = time.monotonic()
        assert pool.submit(sleep_then, 0, "fast").result(60) == "fast"
        assert time.monotonic() - t0 < 1.5 and not slow.done()  # the fast call did not wait for the slow one
        settled(lambda: pool.pending == 1)  # the slot is freed by a callback just after the result is set
        more = [pool.submit(sleep_then, 2, i) for i in range(2)]  # one running, one waiting: full
        t0 = time.monotonic()
        with pytest.raises(PoolBusy):
            pool.submit(sleep_then, 0, "refused")
        assert time.monotonic() - t0 < 0.5 and pool.busy_refusals == 1
        assert slow.result(60) == "slow" and [f.result(60) for f in more] == [0, 1]
        assert pool.submit(sleep_then, 0, "again").result(60) == "again"
        settled(lambda: pool.pending == 0)
    finally:
        pool.close()


def test_a_hung_call_is_killed_and_frees_its_child():
    from rlaif.isolation import ChildTimeout

    pool = DecodePool(workers=1, queue_size=0, timeout_s=5)  # the child's start counts: not too short
    try:
        with pytest.raises(ChildTimeout):
            pool.submit(sleep_then, 30, None).result(60)
        assert pool.submit(sleep_then, 0, "ok").result(60) == "ok" and pool.restarts == 1
    finally:
        pool.close()


def test_loader_maps_refusals_and_cleans_its_temp_files(web, tmp_path):
    server, clip = web
    loader = VideoLoader(ServeConfig(allowed_url_prefixes=[f"{server.url}/allowed/"], decode_workers=1,
                                     decode_timeout_s=30, max_video_bytes=1 << 20))
    try:
        frames, fps = asyncio.run(loader.load(f"{server.url}/allowed/clip.mp4", 4))
        assert frames.shape == (4, 112, 112, 3) and fps > 0
        for url, status in ((f"{server.url}/other/clip.mp4", 403), (redirect(server, "/other/clip.mp4"), 403),
                            (f"{server.url}/allowed/nothing.mp4", 404), (f"{server.url}/allowed/chunked/2000000", 413),
                            (f"{server.url}/allowed/%2fetc", 403), (f"{server.url}/allowed/a%zz", 400)):
            with pytest.raises(RequestError) as err:
                asyncio.run(loader.load(url, 4))
            assert err.value.status == status, (url, err.value.message)
        assert os.listdir(loader.tmp) == []
    finally:
        loader.close()


def test_the_body_bound_holds_without_content_length():
    """The ingress middleware on a stand-in app: auth first, then the body counted as it arrives (chunked, no
    Content-Length) and refused once over the bound; a body that trickles in past the deadline is a 408."""
    import httpx
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from serve.app import AuthAndBoundedBody

    async def echo(request: Request):
        return JSONResponse({"size": len(await request.body())})

    app = Starlette(routes=[Route("/v1/echo", echo, methods=["POST"])], middleware=[Middleware(AuthAndBoundedBody)])
    app.state.token, app.state.max_body, app.state.body_timeout_s = "t" * 16, 1000, 1.0
    auth = {"Authorization": "Bearer " + "t" * 16}

    async def chunks(n: int, delay: float = 0.0):
        for _ in range(n):
            await asyncio.sleep(delay)
            yield b"x" * 100

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            ok = await client.post("/v1/echo", content=chunks(10), headers=auth)
            over = await client.post("/v1/echo", content=chunks(11), headers=auth)
            declared = await client.post("/v1/echo", content=b"x" * 1001, headers=auth)
            no_token = await client.post("/v1/echo", content=chunks(1))
            slow = await client.post("/v1/echo", content=chunks(5, delay=0.3), headers=auth)
            return ok, over, declared, no_token, slow

    ok, over, declared, no_token, slow = asyncio.run(main())
    assert ok.status_code == 200 and ok.json() == {"size": 1000} and "content-length" not in ok.request.headers
    assert over.status_code == 413 and over.json()["error"]["code"] == 413
    assert "content-length" not in over.request.headers and over.request.headers["transfer-encoding"] == "chunked"
    assert declared.status_code == 413 and no_token.status_code == 401
    assert slow.status_code == 408 and slow.json()["error"]["code"] == 408
