"""The video URL allow-list (serve/urls.py) as pure logic: prefixes and requested URLs compared as parsed, normalised
URLs (scheme, host, port exact; the path under the prefix's on a segment boundary; no userinfo), and the URL that is
fetched is the normalised one."""
import pytest

from rlaif.config import ConfigError, ServeConfig, parse_config
from serve.urls import AllowList, NormalURL, URLRefused, normalise, parse_prefix

ALLOW = AllowList(["https://allowed.example.com/videos/", "http://127.0.0.1:8080/clips", "s3://bucket/media/"])


@pytest.mark.parametrize("url, fetched", [
    ("https://allowed.example.com/videos/a.mp4", "https://allowed.example.com/videos/a.mp4"),
    ("HTTPS://Allowed.Example.COM/videos/a.mp4", "https://allowed.example.com/videos/a.mp4"),  # case of scheme, host
    ("https://allowed.example.com./videos/a.mp4", "https://allowed.example.com/videos/a.mp4"),  # trailing dot
    ("https://allowed.example.com:443/videos/a.mp4", "https://allowed.example.com/videos/a.mp4"),  # default port
    ("https://allowed.example.com/videos/./sub/../a.mp4", "https://allowed.example.com/videos/a.mp4"),
    ("https://allowed.example.com/videos/%61.mp4", "https://allowed.example.com/videos/a.mp4"),  # unreserved decoded
    ("https://allowed.example.com/videos/a%20b.mp4", "https://allowed.example.com/videos/a%20b.mp4"),
    ("https://allowed.example.com/videos/a%3fb.mp4", "https://allowed.example.com/videos/a%3Fb.mp4"),  # kept, upper
    ("https://allowed.example.com/videos/a.mp4?sig=x/../y#frag", "https://allowed.example.com/videos/a.mp4?sig=x/../y"),
    ("https://allowed.example.com/videos//a.mp4", "https://allowed.example.com/videos//a.mp4"),
    ("http://127.0.0.1:8080/clips", "http://127.0.0.1:8080/clips"),  # the prefix itself (no trailing slash)
    ("http://127.0.0.1:8080/clips/x/y.mp4", "http://127.0.0.1:8080/clips/x/y.mp4"),
    ("s3://bucket/media/a.mp4", "s3://bucket/media/a.mp4"),
    ("s3://BUCKET/media/x/../a.mp4", "s3://bucket/media/a.mp4"),
])
def test_allowed_urls_are_fetched_in_normalised_form(url, fetched):
    assert str(ALLOW.check(url)) == fetched


@pytest.mark.parametrize("url, status", [
    ("https://allowed.example.com.evil.com/videos/a.mp4", 403),  # host suffix trick
    ("https://evil.com/allowed.example.com/videos/a.mp4", 403),
    ("https://evilallowed.example.com/videos/a.mp4", 403),
    ("https://sub.allowed.example.com/videos/a.mp4", 403),  # hosts match exactly, not as domains
    ("https://allowed.example.com@evil.com/videos/a.mp4", 403),  # userinfo
    ("https://user:pw@allowed.example.com/videos/a.mp4", 403),
    ("https://allowed.example.com%40evil.com/videos/a.mp4", 400),  # an escape in the host
    ("https://evil.com#@allowed.example.com/videos/a.mp4", 403),  # the fragment is not the host
    ("https://evil.com?@allowed.example.com/videos/a.mp4", 403),
    ("https://allowed.example.com:8443/videos/a.mp4", 403),  # port
    ("https://allowed.example.com:80/videos/a.mp4", 403),
    ("http://allowed.example.com/videos/a.mp4", 403),  # scheme
    ("http://127.0.0.1/clips/a.mp4", 403),  # default port 80, not 8080
    ("http://localhost:8080/clips/a.mp4", 403),  # names are not resolved: exact host only
    ("https://allowed.example.com/videos/../secret.mp4", 403),  # .. escape
    ("https://allowed.example.com/videos/%2e%2e/secret.mp4", 403),  # encoded ..
    ("https://allowed.example.com/videos/%2E%2e/%2e%2E/secret.mp4", 403),
    ("https://allowed.example.com/videos/.%2e/secret.mp4", 403),
    ("https://allowed.example.com/videos/..;x/secret.mp4", 403),  # read as .. by some servers
    ("https://allowed.example.com/videos/%2e%2e;/secret.mp4", 403),
    ("https://allowed.example.com/videos/..%2fsecret.mp4", 403),  # encoded slash
    ("https://allowed.example.com/videos/..%5csecret.mp4", 403),  # encoded backslash
    ("https://allowed.example.com/videos/%252e%252e/secret.mp4", 403),  # double encoding
    ("https://allowed.example.com/videos/a%00.mp4", 403),  # encoded NUL
    ("https://allowed.example.com/videos-evil/a.mp4", 403),  # not on a segment boundary
    ("https://allowed.example.com/videos", 403),  # the prefix is /videos/, a folder
    ("https://allowed.example.com/Videos/a.mp4", 403),  # paths are case-sensitive
    ("http://127.0.0.1:8080/clipsevil/a.mp4", 403),  # a prefix without a slash still ends on a segment
    ("http://127.0.0.1:8080/clips-x", 403),
    ("http://127.0.0.1:8080/clips/../a.mp4", 403),
    ("s3://bucket/media-x/a.mp4", 403),
    ("s3://other/media/a.mp4", 403),
    ("gs://bucket/media/a.mp4", 403),
    ("https://allowed.example.com\\@evil.com/videos/a.mp4", 400),  # backslash
    ("https://allowed.example.com/videos/a b.mp4", 400),  # whitespace
    ("https://allowed.example.com/videos/\u00e9.mp4", 400),  # non-ASCII
    ("https://allowed.example.com/videos/a%zz.mp4", 400),  # bad escape
    ("https://allowed.example.com:99999/videos/a.mp4", 400),  # bad port
    ("https://allowed.example.com:x/videos/a.mp4", 400),
    ("https:///videos/a.mp4", 400),  # no host
    ("s3://bucket:9000/media/a.mp4", 400),
    ("ftp://allowed.example.com/videos/a.mp4", 400),
    ("https://[::1%25eth0]/videos/a.mp4", 400),
])
def test_urls_that_name_somewhere_else_are_refused(url, status):
    with pytest.raises(URLRefused) as err:
        ALLOW.check(url)
    assert err.value.status == status, (url, str(err.value))


def test_dot_segments_resolve_as_rfc3986_says():
    cases = {"/a/b/../c": "/a/c", "/a/./b": "/a/b", "/a/b/..": "/a/", "/a/b/.": "/a/b/", "/..": "/", "/../../a": "/a",
             "/a//b/../c": "/a//c", "/a/b/": "/a/b/", "": "/", "/%2e/a": "/a", "/a/%2E%2E/%2e%2e/b": "/b"}
    for path, expected in cases.items():
        assert normalise(f"http://h{path}").path == expected, path


def test_hosts_and_ports_normalise():
    assert normalise("http://[0:0::1]:81/").host == "::1"
    assert str(normalise("http://[::1]:81/a")) == "http://[::1]:81/a"
    assert normalise("https://h/").port == 443 and normalise("http://h/").port == 80
    assert str(normalise("http://h:80/a")) == "http://h/a" and str(normalise("http://h:81/a")) == "http://h:81/a"
    assert normalise("s3://b/k").port is None
    assert NormalURL("https", "h", 443, "/v/a").under(parse_prefix("https://h"))  # a bare host allows all of it


def test_an_empty_allow_list_allows_nothing():
    with pytest.raises(URLRefused) as err:
        AllowList([]).check("https://allowed.example.com/videos/a.mp4")
    assert err.value.status == 403 and not AllowList([])


def test_refusals_pickle_back_from_the_decode_child_with_their_status():
    import pickle

    err = pickle.loads(pickle.dumps(URLRefused("nope", 400)))
    assert isinstance(err, URLRefused) and err.status == 400 and str(err) == "nope"


@pytest.mark.parametrize("prefix", ["https://u@h/videos/", "https://h/videos/?x=1", "https://h/v#f", "ftp://h/",
                                    "h/videos/", "/videos/", "https:///videos/", "https://h:0x50/", "https://h\\x/"])
def test_bad_prefixes_are_config_errors(prefix):
    with pytest.raises(ConfigError, match="allowed_url_prefixes"):
        parse_config({"serve": {"allowed_url_prefixes": [prefix]}})
    with pytest.raises(ValueError):
        parse_prefix(prefix)


def test_decode_pool_settings_are_bounded():
    assert ServeConfig().decode_workers == 2 and ServeConfig().decode_queue == 8
    for bad in ({"decode_workers": 0}, {"decode_queue": -1}, {"body_timeout_s": 0}):
        with pytest.raises(ConfigError):
            parse_config({"serve": bad})
