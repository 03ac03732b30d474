"""Fetching an allowed video URL, inside a decode child process (serve/video.py's pool), then decoding it.

http(s) is fetched here with urllib, not by a decoder or fsspec: the URL fetched is the allow-list's normalised one,
every redirect hop is checked against the same allow-list before it is followed (a hop to a URL outside it refuses
the request, 403), and the body is streamed into a temp file the parent named, bounded by `max_bytes` whether or not
the server sends a Content-Length. Environment proxies are not used. s3:// and gs:// go through rlaif.decode's
object-store readers (bounded there), after the same check.

The child's whole call (fetch and decode) is bounded by the pool's timeout: a server that dribbles bytes costs its
own request a 4xx when the timeout kills the child, and holds one decode child, not the replica.
"""
from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request

from rlaif import decode
from rlaif.decode import DecodedVideo, DecodeSpec, VideoRejected, decode_video
from serve.urls import AllowList, URLRefused

FETCH_FAILED = "fetch_failed"
MAX_REDIRECTS = 5
CHUNK = 1 << 16


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL the allow-list allows, and fetches it in its normalised form."""

    max_redirections = MAX_REDIRECTS

    def __init__(self, allow: AllowList):
        self.allow = allow

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            target = self.allow.check(newurl)  # urllib has already made newurl absolute
        except URLRefused as err:
            fp.close()
            raise URLRefused(f"the video URL redirects to a URL this server does not fetch ({err})", 403) from None
        return super().redirect_request(req, fp, code, msg, headers, str(target))


def _opener(allow: AllowList) -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()  # only these handlers: no file://, ftp://, data:, env proxies
    for handler in (urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(context=ssl.create_default_context()),
                    _CheckedRedirects(allow), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


def fetch(url: str, prefixes: list[str], dest: str, max_bytes: int, timeout_s: float) -> str:
    """Downloads an allowed http(s) URL into `dest` (at most `max_bytes`); returns the final URL."""
    allow = AllowList(prefixes)
    target = allow.check(url)
    request = urllib.request.Request(str(target), headers={"User-Agent": "ray-rlaif-serve",
                                                           "Accept-Encoding": "identity"})
    try:
        with _opener(allow).open(request, timeout=timeout_s) as response, open(dest, "wb") as out:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise VideoRejected(decode.TOO_LARGE, f"{declared} bytes > max_file_bytes={max_bytes}")
            size = 0
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise VideoRejected(decode.TOO_LARGE, f"more than max_file_bytes={max_bytes}")
                out.write(chunk)
            if size == 0:
                raise VideoRejected(decode.EMPTY, "0 bytes")
            return response.geturl()
    except urllib.error.HTTPError as err:
        if err.code in (404, 410):
            raise VideoRejected(decode.MISSING, f"the video URL answered HTTP {err.code}") from None
        if err.code in (401, 403):
            raise VideoRejected(decode.UNREADABLE, f"the video URL answered HTTP {err.code}") from None
        raise VideoRejected(FETCH_FAILED, f"the video URL answered HTTP {err.code}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", err)
        raise VideoRejected(FETCH_FAILED, f"could not fetch the video URL: {type(reason).__name__}: {reason}") from None


def fetch_and_decode(url: str, prefixes: list[str], dest: str, spec: DecodeSpec, timeout_s: float) -> DecodedVideo:
    """The decode child's job for a URL: checked again here, fetched (http(s)) into `dest`, decoded."""
    target = AllowList(prefixes).check(url)
    if target.scheme in ("http", "https"):
        fetch(str(target), prefixes, dest, spec.max_file_bytes, timeout_s)
        return decode_video(dest, spec)
    return decode_video(str(target), spec)


def warm_up() -> None:
    """Run once in each new decode child: the decoders imported before the first request needs them."""
    import av  # noqa: F401
    import decord  # noqa: F401
