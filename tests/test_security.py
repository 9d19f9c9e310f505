"""The hosted member's HTTP: keys stay with base_url, bounded time and size, numbers only.

HTTP tests use real servers on 127.0.0.1 (threads that stop with the fixture).
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from skfusion import ConcatEmbedder
from skfusion.members import EmbeddingServiceError, OpenAIEmbeddingsMember

# -- HTTP servers -----------------------------------------------------------------------


def _embeddings(texts):
    data = [
        {"index": i, "embedding": [float(len(t)), 1.0, 0.5]} for i, t in enumerate(texts)
    ]
    return json.dumps({"data": data}).encode()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        server = self.server
        with server.lock:
            server.requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": body}
            )
        if self.command != "POST":  # a POST redirected as GET lands here
            self.answer(b"{}", status=405)
            return
        server.behaviour(self, json.loads(body)["input"])

    do_GET = do_POST  # noqa: N815

    def answer(self, payload, status=200, headers=()):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up and left: expected here


def _start(behaviour):
    server = _Server(("127.0.0.1", 0), _Handler)
    server.lock, server.requests, server.behaviour = threading.Lock(), [], behaviour
    server.sent = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    return server


@pytest.fixture
def servers():
    started = []

    def start(behaviour):
        started.append(_start(behaviour))
        return started[-1]

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def _ok(handler, texts):
    handler.answer(_embeddings(texts))


def _member(server, **kwargs):
    params = {"api_key_env": "SKFUSION_TEST_KEY", "max_retries": 0, "timeout": 10}
    return OpenAIEmbeddingsMember("m", base_url=server.base_url, **{**params, **kwargs})


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv("SKFUSION_TEST_KEY", "sk-secret-123")
    return "Bearer sk-secret-123"


# -- keys travel only to base_url -------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_not_followed_and_the_key_stays(servers, key, status):
    other = servers(_ok)  # another origin (another port), recording what it gets

    def redirect(handler, texts):
        target = f"{other.base_url}/embeddings"
        handler.answer(b"", status=status, headers=[("Location", target)])

    server = servers(redirect)
    with pytest.raises(EmbeddingServiceError, match=rf"HTTP {status}, a redirect to") as e:
        ConcatEmbedder([("api", _member(server))]).fit([])
    assert other.base_url in str(e.value) and "base_url" in str(e.value)
    assert e.value.status == status
    assert other.requests == []  # neither the key nor the texts went there
    assert server.requests[0]["headers"]["Authorization"] == key  # base_url got it


def test_key_goes_over_plain_http_only_to_this_machine(servers, key, monkeypatch):
    # A proxy on 127.0.0.1 stands in for the network between us and a remote host.
    proxy = servers(_ok)
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy.server_address[1]}")
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    remote = OpenAIEmbeddingsMember(
        "m", base_url="http://api.example.com/v1", api_key_env="SKFUSION_TEST_KEY",
        max_retries=0, timeout=10,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"plain http to 'api.example.com'.*allow_http"):
        ConcatEmbedder([("api", remote)]).fit([])
    assert proxy.requests == []
    # No key, nothing to protect: the request goes (through the proxy).
    ConcatEmbedder([("api", remote.set_params(api_key_env=None))]).fit([])
    assert "Authorization" not in proxy.requests[-1]["headers"]
    # The user allows it explicitly.
    remote.set_params(api_key_env="SKFUSION_TEST_KEY", allow_http_key=True)
    ConcatEmbedder([("api", remote)]).fit([])
    assert proxy.requests[-1]["path"] == "http://api.example.com/v1/embeddings"
    assert proxy.requests[-1]["headers"]["Authorization"] == key


# -- bounded time and size --------------------------------------------------------------


def _trickle(head):
    def behaviour(handler, texts):
        payload = _embeddings(texts)
        lines = f"HTTP/1.0 200 OK\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        slow, fast = (lines, b"") if head else (payload, lines)
        handler.wfile.write(fast)
        for i in range(len(slow)):  # one byte per 0.1 s; stops when the client leaves
            try:
                handler.wfile.write(slow[i : i + 1])
                handler.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)
        if not head:
            return
        handler.wfile.write(payload)

    return behaviour


@pytest.mark.parametrize("head", [False, True], ids=["body", "headers"])
def test_timeout_bounds_the_whole_request(servers, head):
    server = servers(_trickle(head))
    start = time.monotonic()
    with pytest.raises(EmbeddingServiceError, match=r"no complete answer within timeout=1"):
        ConcatEmbedder([("api", _member(server, timeout=1))]).fit([])
    # Before the fix: each byte reset the 1 s socket timeout (about 6 s here).
    assert time.monotonic() - start < 3


def test_timeout_is_retried_like_any_timeout(servers):
    calls = []

    def slow_then_ok(handler, texts):
        calls.append(1)
        (_trickle(False) if len(calls) == 1 else _ok)(handler, texts)

    server = servers(slow_then_ok)
    emb = ConcatEmbedder([("api", _member(server, timeout=1, max_retries=1, backoff=0))])
    assert emb.fit([]).n_features_out_ == 3 and len(calls) == 2


def _big(announced, size=64 * 2**20):
    def behaviour(handler, texts):
        handler.send_response(200)
        if announced:
            handler.send_header("Content-Length", str(size))
        handler.end_headers()  # otherwise the body ends when the connection closes
        chunk = b" " * 2**16
        for _ in range(size // len(chunk)):
            try:
                handler.wfile.write(chunk)
            except OSError:
                return
            handler.server.sent += len(chunk)

    return behaviour


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "streamed"])
def test_response_size_is_capped(servers, announced):
    server = servers(_big(announced))
    member = _member(server, max_response_bytes=100_000)
    with pytest.raises(
        EmbeddingServiceError, match=r"too large.*max_response_bytes=100000"
    ):
        ConcatEmbedder([("api", member)]).fit([])
    time.sleep(0.2)  # let the server notice the client left
    assert server.sent < 32 * 2**20  # stopped reading long before the 64 MiB


def test_max_response_bytes_is_validated(servers):
    server = servers(_ok)
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="max_response_bytes must be an int >= 1"):
            ConcatEmbedder([("api", _member(server, max_response_bytes=bad))]).fit([])
    with pytest.raises(ValueError, match="allow_http_key must be a bool"):
        ConcatEmbedder([("api", _member(server, allow_http_key="yes"))]).fit([])


# -- the response holds JSON numbers only -----------------------------------------------


@pytest.mark.parametrize(
    "item, match",
    [
        ({"index": 0, "embedding": [True, 0.5, 1.0]}, r"holds True \(bool\), not a number"),
        ({"index": 0, "embedding": [1.0, "0.5", 1.0]}, r"holds '0.5' \(str\), not a num"),
        ({"index": True, "embedding": [1.0, 0.5, 1.0]}, r"'index' that is not an integ"),
        ({"index": "0", "embedding": [1.0, 0.5, 1.0]}, r"'index' that is not an integ"),
    ],
)
def test_non_numbers_in_the_response_are_refused(servers, item, match):
    payload = json.dumps({"data": [item]}).encode()
    server = servers(lambda handler, texts: handler.answer(payload))
    with pytest.raises(EmbeddingServiceError, match=match):
        ConcatEmbedder([("api", _member(server))]).fit([])
