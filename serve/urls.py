"""The video URL allow-list: `serve.allowed_url_prefixes` and every requested URL are compared as parsed, normalised
URLs, never as raw strings, and the URL that is then fetched is the normalised one, so what was checked is what is
fetched.

Normalising (RFC 3986, plus refusals where servers disagree on meaning):

- scheme and host lowercased, a trailing dot of the host dropped; the port made explicit (80 for http, 443 for https);
- scheme, host and port must equal the prefix's exactly (`allowed.example.com.evil.com` is another host);
- no userinfo (`user@host`): refused, so `https://allowed@evil/` cannot pass for `allowed`;
- percent-escapes of unreserved characters decoded (`%2e` is `.`, `%41` is `A`), the others kept (upper-cased);
  an encoded `/` or `\\`, an encoded control character or a double encoding (`%252e`) is refused;
- `.` and `..` segments resolved (`/videos/../secret` is `/secret`); a segment that only some servers read as a dot
  segment (`..;x`) is refused;
- raw backslashes, whitespace, control and non-ASCII characters are refused (percent-encode them);
- the fragment is dropped (never sent); the query is kept for the fetch and plays no part in the match;
- the path must lie under the prefix's path on a segment boundary: `/videos/` and `/videos` both allow
  `/videos/a.mp4`, neither allows `/videos-evil/a.mp4`.

Redirects are followed only to URLs that pass the same check (serve/fetch.py).

Stdlib only: it also runs in the decode child processes.
"""
from __future__ import annotations

import ipaddress
import re
import string
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "s3": None, "gs": None}
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_HOST_NAME = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_HEX = frozenset(string.hexdigits)


class URLRefused(ValueError):
    """A video URL this server does not fetch: `status` 400 (malformed) or 403 (not allowed)."""

    def __init__(self, message: str, status: int = 403):
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # pickles back from the decode child with its status
        return type(self), (str(self), self.status)


@dataclass(frozen=True)
class NormalURL:
    scheme: str
    host: str  # lowercase; an IPv6 address without its brackets
    port: int | None  # explicit for http(s); None for s3/gs
    path: str  # normalised, starts with "/"
    query: str = ""

    def __str__(self) -> str:
        """The URL to fetch: the normalised one (the default port left implicit, as clients write it)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if self.port is None or self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.path}" + (f"?{self.query}" if self.query else "")

    def under(self, prefix: "NormalURL") -> bool:
        """Same scheme, host and port; the path at or below the prefix's, on a segment boundary."""
        if (self.scheme, self.host, self.port) != (prefix.scheme, prefix.host, prefix.port):
            return False
        if prefix.path.endswith("/"):
            return self.path.startswith(prefix.path)
        return self.path == prefix.path or self.path.startswith(prefix.path + "/")


def _host(raw: str | None, url: str) -> str:
    if not raw:
        raise URLRefused(f"no host in URL {url!r}", 400)
    host = raw.lower()
    if "%" in host:  # an escape in a host name, or an IPv6 zone id
        raise URLRefused(f"bad host {raw!r} in URL {url!r}", 400)
    if ":" in host:  # urlsplit only yields a colon for a bracketed IPv6 literal
        try:
            return str(ipaddress.IPv6Address(host))  # the compressed form
        except ValueError:
            raise URLRefused(f"bad IPv6 host in URL {url!r}", 400) from None
    host = host[:-1] if host.endswith(".") else host
    if not _HOST_NAME.match(host):
        raise URLRefused(f"bad host {raw!r} in URL {url!r}", 400)
    return host


def _unescape(path: str, url: str) -> str:
    """Unreserved characters decoded; the other escapes kept, upper-cased; meaning-changing escapes refused."""
    out, i = [], 0
    while i < len(path):
        c = path[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        pair = path[i + 1:i + 3]
        if len(pair) != 2 or not set(pair) <= _HEX:
            raise URLRefused(f"bad percent-escape in URL {url!r}", 400)
        byte = int(pair, 16)
        if chr(byte) in _UNRESERVED:
            out.append(chr(byte))
        elif byte in (0x2F, 0x5C):
            raise URLRefused(f"an encoded slash or backslash in the path of {url!r} is not accepted")
        elif byte < 0x20 or byte == 0x7F:
            raise URLRefused(f"an encoded control character in the path of {url!r} is not accepted")
        elif byte == 0x25 and len(path) >= i + 5 and set(path[i + 3:i + 5]) <= _HEX:
            raise URLRefused(f"a double percent-encoding in the path of {url!r} is not accepted")
        else:
            out.append("%" + pair.upper())
        i += 3
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4 on an absolute path: `.` and `..` resolved, `..` stopping at the root, a trailing slash kept
    where the last segment was a dot segment (`/a/b/..` is `/a/`)."""
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def normalise(url: str) -> NormalURL:
    """The normalised form of an http(s)/s3/gs URL, or URLRefused."""
    if not url.isascii() or any(c in url for c in "\\") or any(not c.isprintable() or c.isspace() for c in url):
        raise URLRefused(f"URL {url[:200]!r} has a backslash, whitespace, control or non-ASCII character "
                         f"(percent-encode them)", 400)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise URLRefused(f"unsupported URL scheme {parts.scheme!r}", 400)
    if "@" in parts.netloc:
        raise URLRefused("a URL with userinfo (user@host) is not accepted")
    host = _host(parts.hostname, url)
    try:
        port = parts.port
    except ValueError:
        raise URLRefused(f"bad port in URL {url!r}", 400) from None
    if DEFAULT_PORTS[scheme] is None:
        if port is not None:
            raise URLRefused(f"a {scheme}:// URL takes no port", 400)
    elif port is None:
        port = DEFAULT_PORTS[scheme]
    path = _remove_dot_segments(_unescape(parts.path or "/", url))  # with a host, the path is empty or absolute
    if any(seg.split(";")[0] in (".", "..") for seg in path.split("/")):
        raise URLRefused(f"a dot segment with parameters in the path of {url!r} is not accepted")
    return NormalURL(scheme, host, port, path, parts.query)


class AllowList:
    """`serve.allowed_url_prefixes`, parsed once. `check(url)` is the normalised URL to fetch, or URLRefused."""

    def __init__(self, prefixes: list[str]):
        self.prefixes = [parse_prefix(p) for p in prefixes]

    def check(self, url: str) -> NormalURL:
        if not self.prefixes:
            raise URLRefused("this server fetches no URLs (serve.allowed_url_prefixes is empty)")
        target = normalise(url)
        if not any(target.under(p) for p in self.prefixes):
            raise URLRefused("this server does not fetch that URL (not under serve.allowed_url_prefixes)")
        return target

    def __bool__(self) -> bool:
        return bool(self.prefixes)


def parse_prefix(prefix: str) -> NormalURL:
    """A configured prefix: an http(s)/s3/gs URL with a host, without userinfo, query or fragment."""
    try:
        parsed = normalise(prefix)
    except URLRefused as err:
        raise ValueError(f"serve.allowed_url_prefixes: {prefix!r}: {err}") from None
    if "?" in prefix or "#" in prefix:
        raise ValueError(f"serve.allowed_url_prefixes: {prefix!r}: a prefix has no query or fragment")
    return parsed
