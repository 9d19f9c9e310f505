"""The on-disk embedding cache: hits, keys, corruption, kills and concurrent writers."""

import json
import logging
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.pipeline import make_pipeline

import skfusion
from skfusion._cache import CACHE_FILENAME, EmbeddingCache, namespace, text_keys
from skfusion.embedder import ConcatEmbedder


def _lsa(k=8):
    return make_pipeline(TfidfVectorizer(), TruncatedSVD(k, random_state=0))


def _rows(cache_dir):
    with sqlite3.connect(cache_dir / CACHE_FILENAME) as conn:
        return conn.execute("SELECT COUNT(*) FROM embedding").fetchone()[0]


def _no_model_may_run(emb, monkeypatch):
    """Make every member fail if asked to embed anything."""

    def boom(*args, **kwargs):
        raise AssertionError("a model ran although every embedding was cached")

    for m in emb.members_:
        model = m.loaded(emb._settings())
        if isinstance(model, SentenceTransformer):
            monkeypatch.setattr(model, "forward", boom)
        else:
            monkeypatch.setattr(model, "transform", boom)


# -- the store itself -----------------------------------------------------------------


def test_store_round_trip_and_namespaces(tmp_path):
    keys = text_keys(["a", "b", "c"])
    assert len(set(keys)) == 3 and all(len(k) == 16 for k in keys)
    space = namespace("fingerprint", "query: ")
    assert space != namespace("fingerprint", "")
    assert namespace("ab", "c") != namespace("a", "bc")
    values = np.random.default_rng(0).random((2, 5), dtype=np.float32)
    with EmbeddingCache(tmp_path) as cache:
        cache.put(space, keys[:2], values)
        # Both read paths: a range scan (most of the namespace asked for) and
        # key lookups (a small part of it).
        for asked in (keys, keys[1:2]):
            out = np.full((len(asked), 5), -1.0, dtype=np.float32)
            found, bad = cache.get(space, asked, out)
            assert bad == 0
            for i, key in enumerate(asked):
                if key in keys[:2]:
                    assert found[i]
                    np.testing.assert_array_equal(out[i], values[keys.index(key)])
                else:
                    assert not found[i] and (out[i] == -1).all()  # left as it was
        many = text_keys([str(i) for i in range(50)])
        cache.put(space, many, np.ones((50, 5), dtype=np.float32))
        out = np.zeros((2, 5), dtype=np.float32)
        found, _ = cache.get(space, [keys[0], keys[2]], out)  # lookup path
        assert found.tolist() == [True, False]
        np.testing.assert_array_equal(out[0], values[0])
        found, _ = cache.get(namespace("other"), keys, np.zeros((3, 5), np.float32))
        assert not found.any()
        # A row of another width is never reshaped: it is simply not found.
        found, bad = cache.get(space, keys, np.zeros((3, 4), np.float32))
        assert not found.any() and bad == 0
        # Writing into a column block of a wider array works (a member's block).
        wide = np.zeros((3, 9), dtype=np.float32)
        found, _ = cache.get(space, keys, wide[:, 2:7])
        np.testing.assert_array_equal(wide[:2, 2:7], values)
        assert not wide[:, :2].any() and not wide[:, 7:].any() and not wide[2].any()


def test_lone_surrogates_and_empty_text_have_keys():
    keys = text_keys(["", "\ud800", "x"])
    assert len(set(keys)) == 3


# -- hits and what the key depends on -------------------------------------------------


def test_second_transform_runs_no_model(
    tiny_model_paths, tiny_corpus, tmp_path, monkeypatch
):
    emb = ConcatEmbedder(
        [*tiny_model_paths, _lsa()], cache_dir=tmp_path, show_progress_bar=False
    ).fit(tiny_corpus)
    first = emb.transform(tiny_corpus)
    assert _rows(tmp_path) == 3 * len(set(tiny_corpus))
    uncached = ConcatEmbedder([*tiny_model_paths, _lsa()]).fit(tiny_corpus)
    np.testing.assert_allclose(first, uncached.transform(tiny_corpus), atol=1e-6)
    blob = pickle.dumps(emb)

    _no_model_may_run(emb, monkeypatch)
    np.testing.assert_array_equal(emb.transform(tiny_corpus), first)
    # Weights and normalisation apply after the cache: still no model runs.
    emb.set_params(weights=[2.0, 1.0, 0.5], normalize=False)
    raw = emb.transform(tiny_corpus)
    emb.set_params(weights=None, normalize=True)
    np.testing.assert_array_equal(emb.transform(tiny_corpus), first)
    assert not np.allclose(raw, first)
    # A pickled copy (models reloaded by reference) hits the same entries.
    twin = pickle.loads(blob)
    _no_model_may_run(twin, monkeypatch)
    np.testing.assert_array_equal(twin.transform(tiny_corpus), first)


def test_key_changes_with_prompt_fit_state_and_length(
    tiny_prompted_model_path, tiny_corpus, tmp_path
):
    texts = tiny_corpus[:10]
    emb = ConcatEmbedder(
        [("p", tiny_prompted_model_path), ("lsa", _lsa())], cache_dir=tmp_path
    ).fit(tiny_corpus)
    emb.transform(texts)
    assert _rows(tmp_path) == 20
    emb.encode_queries(texts)  # new prompt for "p"; "lsa" has none, so it hits
    assert _rows(tmp_path) == 30
    emb.set_params(max_seq_length=4).transform(texts)  # truncation changes "p"
    assert _rows(tmp_path) == 40
    emb.set_params(max_seq_length=None).fit(tiny_corpus[:30]).transform(texts)
    assert _rows(tmp_path) == 50  # "lsa" refit on other texts: new fingerprint
    emb.set_params(prompts={"lsa": {"query": "q "}}).encode_queries(texts)
    assert _rows(tmp_path) == 60


def test_instance_member_changed_in_place_is_not_served_stale(
    tiny_model_paths, tiny_corpus, tmp_path
):
    import torch

    model = SentenceTransformer(tiny_model_paths[0], device="cpu")
    emb = ConcatEmbedder([model], cache_dir=tmp_path).fit(tiny_corpus)
    before = emb.transform(tiny_corpus[:5])
    with torch.no_grad():
        next(model.parameters()).mul_(-1.5)
    after = emb.transform(tiny_corpus[:5])
    expected = model.encode(tiny_corpus[:5])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(after, expected, atol=1e-5)
    assert np.abs(after - before).max() > 1e-3


def test_non_finite_vectors_are_never_stored(tmp_path):
    keys = text_keys(["a", "b"])
    space = namespace("fingerprint")
    for bad in (np.nan, np.inf, -np.inf):
        values = np.ones((2, 3), dtype=np.float32)
        values[1, 2] = bad
        with EmbeddingCache(tmp_path) as cache:
            with pytest.raises(ValueError, match=r"non-finite vectors \(row 1 of 2\)"):
                cache.put(space, keys, values)
    assert _rows(tmp_path) == 0  # not even the finite row: one transaction


def test_non_finite_entries_of_older_versions_are_recomputed(tiny_corpus, tmp_path, caplog):
    # Before validation, a member's NaN was cached and served even after the member
    # recovered. Such an entry (with a valid checksum, as an older version wrote it)
    # is now rejected like a corrupt one, recomputed and overwritten.
    from skfusion._cache import _checksums  # to write as an older version did

    emb = ConcatEmbedder([("lsa", _lsa(4))], cache_dir=tmp_path).fit(tiny_corpus)
    expected = emb.transform(tiny_corpus)
    db = tmp_path / CACHE_FILENAME
    with sqlite3.connect(db) as conn:
        space, key, vector = conn.execute(
            "SELECT namespace, key, vector FROM embedding"
        ).fetchone()
        poisoned = np.frombuffer(vector, "<f4").copy()
        poisoned[1] = np.nan
        checksum = _checksums(
            space,
            np.frombuffer(key, "<u4")[None],
            poisoned.view("<u4")[None],
        )[0]
        conn.execute(
            "UPDATE embedding SET vector = ?, checksum = ? WHERE namespace = ? AND key = ?",
            (poisoned.tobytes(), int(checksum), space, key),
        )
    with caplog.at_level(logging.WARNING, logger="skfusion"):
        got = emb.transform(tiny_corpus)
    assert "1 entries" in caplog.text
    np.testing.assert_allclose(got, expected, atol=1e-6)
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT vector FROM embedding").fetchall()
    assert all(np.isfinite(np.frombuffer(v, "<f4")).all() for (v,) in stored)


# -- corruption and kills -------------------------------------------------------------


def test_corrupt_entries_are_recomputed_and_overwritten(
    tiny_model_paths, tiny_corpus, tmp_path, caplog
):
    emb = ConcatEmbedder([tiny_model_paths[0]], cache_dir=tmp_path).fit(tiny_corpus)
    expected = emb.transform(tiny_corpus)
    db = tmp_path / CACHE_FILENAME
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT namespace, key, vector FROM embedding").fetchall()
        (s1, k1, v1), (s2, k2, v2), (s3, k3, _), (s4, k4, _) = rows[:4]
        set_vector = "UPDATE embedding SET vector = ? WHERE namespace = ? AND key = ?"
        flipped = bytes([v1[0] ^ 0x01]) + v1[1:]  # bit rot
        conn.execute(set_vector, (flipped, s1, k1))
        conn.execute(set_vector, (v2[:20], s2, k2))  # torn
        conn.execute(set_vector, ("not a vector", s3, k3))  # wrong type
        # Another width: not this member's vector, so not found, then overwritten.
        conn.execute(
            "UPDATE embedding SET dim = 7 WHERE namespace = ? AND key = ?", (s4, k4)
        )
    with caplog.at_level(logging.WARNING, logger="skfusion"):
        got = emb.transform(tiny_corpus)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert "3 entries" in caplog.text and "integrity" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="skfusion"):
        again = emb.transform(tiny_corpus)  # overwritten: all valid now
    assert caplog.text == ""
    np.testing.assert_array_equal(again, got)
    with sqlite3.connect(db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM embedding WHERE dim != 32 OR length(vector) != 128"
        ).fetchone() == (0,)


def test_unreadable_database_warns_and_computes(tiny_corpus, tmp_path):
    (tmp_path / CACHE_FILENAME).write_bytes(b"this is not a database" * 100)
    emb = ConcatEmbedder([TfidfVectorizer()], cache_dir=tmp_path).fit(tiny_corpus)
    with pytest.warns(UserWarning, match="embedding cache.*without the cache"):
        got = emb.transform(tiny_corpus)
    expected = ConcatEmbedder([TfidfVectorizer()]).fit(tiny_corpus).transform(tiny_corpus)
    np.testing.assert_array_equal(got, expected)


def test_kill_mid_write_leaves_no_partial_entry(tiny_corpus, tmp_path):
    emb = ConcatEmbedder([_lsa()], cache_dir=tmp_path).fit(tiny_corpus)
    expected = emb.transform(tiny_corpus)
    n_rows = _rows(tmp_path)
    # A writer zeroes every vector and adds a row, then dies before committing.
    script = textwrap.dedent(
        f"""
        import os, signal
        from skfusion._cache import EmbeddingCache
        cache = EmbeddingCache({str(tmp_path)!r})
        cache._conn.execute("BEGIN IMMEDIATE")
        cache._conn.execute("UPDATE embedding SET vector = zeroblob(length(vector))")
        cache._conn.execute(
            "INSERT INTO embedding SELECT namespace, x'00', dim, dtype, checksum, "
            "vector FROM embedding LIMIT 1"
        )
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert proc.returncode == -9
    assert _rows(tmp_path) == n_rows
    np.testing.assert_array_equal(emb.transform(tiny_corpus), expected)


# -- several processes ------------------------------------------------------------------

_WORKER = """
import json, os, pickle, sys, time
import numpy as np
import skfusion.embedder
skfusion.embedder._COMMIT_EVERY_S = 0.0  # commit every chunk: many transactions
emb, texts = pickle.load(open(sys.argv[1], "rb")), json.load(open(sys.argv[2]))
open(sys.argv[3] + ".ready", "w").close()
while not os.path.exists(sys.argv[4]):  # start together
    time.sleep(0.01)
start = time.time()
np.save(sys.argv[3], emb.transform(texts))
json.dump([start, time.time()], open(sys.argv[3] + ".times", "w"))
"""


def test_concurrent_writers(tiny_corpus, tmp_path):
    # Three processes embed overlapping texts into one cache at the same time, in many
    # small transactions (batch_size=1 and no commit interval: a commit every 32
    # texts per member).
    texts = [f"{t} #{i}" for i in range(30) for t in tiny_corpus[:40]]
    emb = ConcatEmbedder(
        [_lsa(), TfidfVectorizer(max_features=64)],
        cache_dir=tmp_path / "cache",
        batch_size=1,
        show_progress_bar=False,
    ).fit(texts)
    (tmp_path / "emb.pkl").write_bytes(pickle.dumps(emb))
    slices = [texts[:800], texts[400:], texts[200:1000]]
    procs, go = [], tmp_path / "go"
    for i, part in enumerate(slices):
        (tmp_path / f"in{i}.json").write_text(json.dumps(part))
        args = [str(tmp_path / n) for n in ("emb.pkl", f"in{i}.json", f"out{i}.npy")]
        procs.append(subprocess.Popen([sys.executable, "-c", _WORKER, *args, str(go)]))
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"out{i}.npy.ready").exists() for i in range(3)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    go.touch()
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0]
    times = [json.loads((tmp_path / f"out{i}.npy.times").read_text()) for i in range(3)]
    assert max(t[0] for t in times) < min(t[1] for t in times), "writers did not overlap"
    reference = emb.set_params(cache_dir=None).transform(texts)
    position = {t: i for i, t in enumerate(texts)}
    for i, part in enumerate(slices):
        got = np.load(tmp_path / f"out{i}.npy")
        np.testing.assert_allclose(got, reference[[position[t] for t in part]], atol=1e-6)
    assert _rows(tmp_path / "cache") == 2 * len(texts)
    # Everything the writers stored reads back valid.
    warm = emb.set_params(cache_dir=tmp_path / "cache").transform(texts)
    np.testing.assert_allclose(warm, reference, atol=1e-6)


def test_cache_dir_is_created_and_tilde_expanded(tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    emb = ConcatEmbedder([TfidfVectorizer()], cache_dir="~/deep/cache").fit(tiny_corpus)
    emb.transform(tiny_corpus[:3])
    assert (tmp_path / "deep" / "cache" / CACHE_FILENAME).exists()
    assert emb.cache_dir == "~/deep/cache"
    assert os.path.getsize(tmp_path / "deep" / "cache" / CACHE_FILENAME) > 0


_FIT_AND_ENCODE = """
import json, sys
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.pipeline import make_pipeline
from skfusion.embedder import ConcatEmbedder
texts = json.load(open(sys.argv[1]))
emb = ConcatEmbedder(
    [
        TfidfVectorizer(),
        CountVectorizer(stop_words="english"),
        make_pipeline(TfidfVectorizer(), TruncatedSVD(8, random_state=0)),
    ],
    cache_dir=sys.argv[2],
    show_progress_bar=False,
).fit(texts)
emb.transform(texts)
print(json.dumps(emb.fingerprints_))
"""


def test_sklearn_members_hit_the_cache_across_processes(tiny_corpus, tmp_path):
    # Refit in a new process (a rerun, a GridSearchCV worker), a vectorizer member
    # has the same fitted state, so it must find the vectors stored by the first.
    (tmp_path / "texts.json").write_text(json.dumps(tiny_corpus))
    args = [sys.executable, "-c", _FIT_AND_ENCODE, str(tmp_path / "texts.json")]
    args.append(str(tmp_path / "cache"))
    runs = [
        subprocess.run(args, check=True, capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == second
    assert _rows(tmp_path / "cache") == 3 * len(set(tiny_corpus))  # no second copy


_FULL_DISK = """
import json, sys, warnings
import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from skfusion.embedder import ConcatEmbedder
texts = [f"text number {i} about package {i % 97} and {i % 89}" for i in range(3000)]
emb = ConcatEmbedder([TfidfVectorizer()], cache_dir=sys.argv[1], show_progress_bar=False)
emb.fit(texts)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    X = emb.transform(texts)
reference = emb.set_params(cache_dir=None).transform(texts)
print(json.dumps({"warnings": [str(w.message) for w in caught],
                  "same": bool(np.array_equal(X, reference))}))
"""


def _can_mount_tmpfs(tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c",
         f"mount -t tmpfs -o size=64k tmpfs {tmp_path}"],
        capture_output=True,
    )  # fmt: skip
    return probe.returncode == 0


def test_full_disk_reports_the_cause(tmp_path):
    # A real full file system: a 256 kB tmpfs mounted in a private mount namespace.
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    if not _can_mount_tmpfs(mnt):
        pytest.skip("needs unshare and unprivileged tmpfs mounts")
    root = os.path.dirname(os.path.dirname(os.path.abspath(skfusion.__file__)))
    script = (
        f"mount -t tmpfs -o size=256k tmpfs {mnt} && "
        f'{sys.executable} -c "$0" {mnt / "cache"}'
    )
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
         _FULL_DISK],
        capture_output=True, text=True, timeout=300, cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["same"]  # the embeddings are right, computed without the cache
    (message,) = report["warnings"]
    assert "database or disk is full" in message and "free space" in message
    assert "rollback" not in message


def _slow_features(texts):
    time.sleep(0.02 * len(texts))  # a slow model: 50 texts/s
    return np.array([[len(t), t.count("e") + 1.0] for t in texts])


def test_a_slow_member_commits_about_every_two_seconds(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from sklearn.preprocessing import FunctionTransformer

    texts = [f"passage {i}" for i in range(500)]  # about 10 s of encoding
    emb = ConcatEmbedder(
        [FunctionTransformer(_slow_features)], cache_dir=tmp_path, show_progress_bar=False
    ).fit(texts[:1])
    seen = []  # (seconds since start, rows committed)
    with ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        job = pool.submit(emb.transform, texts)
        while not job.done():
            time.sleep(0.1)
            try:
                seen.append((time.monotonic() - start, _rows(tmp_path)))
            except sqlite3.OperationalError:
                pass  # the database or its table is not created yet
        job.result()
    took = time.monotonic() - start
    assert took > 8
    first = next(t for t, n in seen if n > 0)
    assert first < 5, f"first commit after {first:.1f} s of a {took:.1f} s run"
    # Several commits while it ran, not one at the end.
    assert len({n for t, n in seen if 0 < n < len(texts)}) >= 3
    assert _rows(tmp_path) == len(texts)
