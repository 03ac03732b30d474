"""A local HTTP server for the serving tests' video URLs: files, redirects, a chunked body without Content-Length, and
videos that stall half-way until the test releases them (a slow upstream)."""
from __future__ import annotations

import collections
import http.server
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def sleep_then(seconds: float, value):
    """For the decode pool's tests: a call that takes a while in a child (here: nothing heavy to import)."""
    time.sleep(seconds)
    return value


def pid(_=None) -> int:
    import os

    return os.getpid()


class VideoWeb:
    """Serves `root` at `url` (http://127.0.0.1:PORT). Extra routes, under any folder:

    /<dir>/redirect?to=URL    302 to URL (absolute or relative); without `to`, to itself (a loop)
    /<dir>/chunked/<N>        N bytes, chunked, no Content-Length
    /<dir>/slow/<key>.mp4     the clip at /allowed/clip.mp4, half sent, then held until `release(key)`
    """

    def __init__(self, root: Path):
        self.root, self.hits = root, collections.Counter()
        self._arrived: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self._release: dict[str, threading.Event] = collections.defaultdict(threading.Event)
        self.finished: dict[str, float] = {}
        web = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                web.hits[parts.path] += 1
                segments = parts.path.split("/")
                if len(segments) >= 3 and segments[2] == "redirect":
                    to = parse_qs(parts.query).get("to", [self.path])[0]  # no target: a loop
                    self.send_response(302)
                    self.send_header("Location", to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if len(segments) == 4 and segments[2] == "chunked":
                    n = int(segments[3])
                    self.send_response(200)
                    self.send_header("Content-Type", "video/mp4")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for start in range(0, n, 1 << 16):
                            size = min(1 << 16, n - start)
                            self.wfile.write(f"{size:x}\r\n".encode() + b"\0" * size + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if len(segments) == 4 and segments[2] == "slow":
                    key = segments[3].removesuffix(".mp4")
                    data = (root / "allowed" / "clip.mp4").read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "video/mp4")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    try:
                        self.wfile.write(data[:len(data) // 2])
                        self.wfile.flush()
                        web._arrived[key].set()
                        web._release[key].wait(60)
                        self.wfile.write(data[len(data) // 2:])
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    web.finished[key] = time.monotonic()
                    return
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrived(self, key: str, timeout: float = 60) -> bool:
        return self._arrived[key].wait(timeout)

    def release(self, key: str) -> None:
        self._release[key].set()

    def close(self) -> None:
        for event in list(self._release.values()):
            event.set()
        self.server.shutdown()
        self.server.server_close()
