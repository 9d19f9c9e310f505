"""Tests of skfusion.index: the two-stage CodeIndex and the faiss index builders."""

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skfusion import AllocatedQuantizer, PercentileQuantizer, RandomProjectionLSH
from skfusion.index import CodeIndex, build_faiss_index, load_faiss_index, save_faiss_index
from skfusion.search import search, spread_weights

faiss = pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # Low-rank structure plus noise, like embeddings: neighbours are meaningful.
    basis = rng.standard_normal((8, 48))
    X = rng.standard_normal((1500, 8)) @ basis + 0.5 * rng.standard_normal((1500, 48))
    X = X.astype(np.float32)
    return X[:300], X[300:]  # calibration / queries, database


@pytest.mark.parametrize(
    "rescore, metric",
    [("float32", "cosine"), ("float16", "ip"), (PercentileQuantizer(bits=4), "asymmetric")],
)
@pytest.mark.parametrize(
    "shortlist",
    [PercentileQuantizer(bits=1, pack=True), RandomProjectionLSH(64, random_state=0)],
)
def test_covering_oversample_equals_one_stage_search(
    data, tmp_path, shortlist, rescore, metric
):
    calib, db = data
    index = CodeIndex(shortlist, rescore, rescore_metric=metric, directory=tmp_path)
    index.fit(calib).add(db[:700]).add(db[700:])
    assert index.n_vectors_ == db.shape[0]
    k = 10
    scores, idx = index.search(calib[:40], k, oversample=db.shape[0])
    # The same rows the index holds on disk, searched in one exact stage.
    if isinstance(rescore, str):
        fine, quantizer = db.astype(rescore).astype(np.float32), None
    else:
        fine, quantizer = index.rescore_.transform(db), index.rescore_
    ref_s, ref_i = search(calib[:40], fine, k, metric=metric, quantizer=quantizer)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-6, atol=1e-6)


def test_ties_go_to_the_lower_index(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((50, 16)).astype(np.float32)
    db = np.repeat(X[:5], 4, axis=0)  # every row four times
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), "float32", directory=tmp_path)
    index.fit(X).add(db)
    _, idx = index.search(X[:5], k=4, oversample=5)
    np.testing.assert_array_equal(idx, np.arange(20).reshape(5, 4))


def test_oversample_improves_recall_and_ram_is_the_code(data, tmp_path):
    calib, db = data
    index = CodeIndex(AllocatedQuantizer(bit_budget=64), "float32", directory=tmp_path).fit(
        calib
    )
    index.add(db)
    assert (index.ram_bytes_per_vector_, index.disk_bytes_per_vector_) == (8, 48 * 4)
    assert index.codes_.nbytes == 8 * db.shape[0]
    _, exact = search(calib, db, 10)

    def recall(o):
        _, idx = index.search(calib, 10, oversample=o)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(idx, exact, strict=True)])

    r1, r20 = recall(1), recall(20)
    assert r1 < r20 and r20 > 0.95


def test_rescore_rows_are_a_memmap_of_the_file(data, tmp_path):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=2, pack=True), PercentileQuantizer(bits=8))
    index.set_params(directory=tmp_path / "idx").fit(calib).add(db)
    path = Path(index.rescore_rows_.filename)
    assert isinstance(index.rescore_rows_, np.memmap)
    assert path.parent == (tmp_path / "idx").resolve()
    assert path.stat().st_size == db.shape[0] * 48 == index.disk_bytes_per_vector_ * len(db)
    np.testing.assert_array_equal(
        np.fromfile(path, dtype=np.uint8).reshape(len(db), 48), index.rescore_.transform(db)
    )


def test_save_load_round_trip_in_a_fresh_process(data, tmp_path):
    calib, db = data
    w = spread_weights(PercentileQuantizer(bits=4).fit(calib), beta=0.5)
    index = CodeIndex(
        PercentileQuantizer(bits=2, pack=True),
        PercentileQuantizer(bits=4),
        shortlist_weights=w,
        oversample=7,
    ).fit(calib)
    index.add(db)
    scores, idx = index.search(calib[:20], 5)
    index.save(tmp_path / "saved")
    np.save(tmp_path / "q.npy", calib[:20])
    code = (
        "import numpy as np, sys\n"
        "from skfusion.index import CodeIndex\n"
        f"i = CodeIndex.load({str(tmp_path / 'saved')!r})\n"
        f"s, x = i.search(np.load({str(tmp_path / 'q.npy')!r}), 5)\n"
        f"np.save({str(tmp_path / 's.npy')!r}, s)\n"
        f"np.save({str(tmp_path / 'x.npy')!r}, x)\n"
        "assert isinstance(i.rescore_rows_, np.memmap) and i.oversample == 7\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), idx)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), scores)
    # A loaded index grows (copy on write), and its folder only on save.
    loaded = CodeIndex.load(tmp_path / "saved").add(db[:3])
    assert loaded.n_vectors_ == len(db) + 3
    np.testing.assert_array_equal(loaded.rescore_rows_[-3:], loaded.rescore_rows_[:3])
    np.testing.assert_array_equal(loaded.codes_[-3:], loaded.codes_[:3])
    assert CodeIndex.load(tmp_path / "saved").n_vectors_ == len(db)
    loaded.save(tmp_path / "saved")
    assert CodeIndex.load(tmp_path / "saved").n_vectors_ == len(db) + 3
    assert _rows_file(tmp_path / "saved").stat().st_size == (len(db) + 3) * 48 // 2


def _double(X):
    return 2 * X


def _rows_file(folder, name="rows"):
    """The file of the saved version that meta.json names."""
    return (
        Path(folder) / json.loads((Path(folder) / "meta.json").read_text())["files"][name]
    )


def test_save_and_load_refuse_foreign_types(data, tmp_path):
    import skops.io as sio

    calib, db = data
    encoder = make_pipeline(FunctionTransformer(_double))
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), encoder=encoder).fit(calib)
    with pytest.raises(ValueError, match="does not trust"):
        index.save(tmp_path / "bad")
    index.set_params(encoder=None).fit(calib).add(db).save(tmp_path / "ok")
    # A tampered folder: a step naming a foreign function is refused, not built.
    sio.dump(FunctionTransformer(_double), _rows_file(tmp_path / "ok", "shortlist"))
    with pytest.raises(Exception, match="_double|untrusted|trust"):
        CodeIndex.load(tmp_path / "ok")


def test_from_pipeline_encodes_inputs(data):
    calib, db = data
    pipe = make_pipeline(StandardScaler(), PercentileQuantizer(bits=1, pack=True)).fit(
        calib
    )
    index = CodeIndex.from_pipeline(pipe, "float32").add(db)
    assert index.prefit and index.shortlist_ is pipe[-1]
    np.testing.assert_array_equal(index.codes_, pipe.transform(db))
    _, idx = index.search(db[:5], 1)
    np.testing.assert_array_equal(idx.ravel(), np.arange(5))
    with pytest.raises(TypeError, match="last step is a code transformer"):
        CodeIndex.from_pipeline(make_pipeline(StandardScaler().fit(calib)))


def test_clone_and_params(data):
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), oversample=3)
    c = clone(index)
    assert c.get_params()["oversample"] == 3 and not hasattr(c, "codes_")


@pytest.mark.parametrize(
    "params, call, match",
    [
        ({"oversample": 0}, "fit", "oversample"),
        ({"rescore": "float8"}, "fit", "rescore"),
        ({"shortlist_metric": "cosine"}, "fit", "shortlist_metric"),
        ({"rescore_metric": "asymmetric"}, "fit", "rescore_metric"),
        ({"shortlist_index": "hnsw"}, "fit", "shortlist_index='hnsw'"),
        ({"shortlist_weights": np.ones(3)}, "fit", "shortlist_weights"),
        ({"prefit": True}, "fit", "prefit=True but shortlist"),
        ({}, "fit_none", "fit needs calibration rows X"),
        ({}, "search_k", "k must be a positive integer"),
        ({}, "search_oversample", "oversample must be a positive integer"),
        ({}, "search_width", "queries has 5 columns"),
        ({}, "search_empty", "index is empty"),
        ({}, "add_nan", "X contains NaN"),
    ],
)
def test_validation_errors_name_the_parameter(data, params, call, match):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=2, pack=True), **params)
    with pytest.raises((ValueError, TypeError), match=match):
        if call == "fit":
            index.fit(calib)
        elif call == "fit_none":
            index.fit()
        else:
            index.fit(calib)
            if call == "search_empty":
                index.search(calib[:1])
            elif call == "add_nan":
                index.add(np.full((1, 48), np.nan, dtype=np.float32))
            else:
                index.add(db)
                queries, kw = calib[:2], {}
                if call == "search_k":
                    kw = {"k": 0}
                elif call == "search_oversample":
                    kw = {"oversample": 1.5}
                else:
                    queries = calib[:2, :5]
                index.search(queries, **kw)


def test_hnsw_shortlist_on_bits(data, tmp_path):
    calib, db = data
    lsh = RandomProjectionLSH(128, random_state=0)
    exact = CodeIndex(lsh, "float32").fit(calib).add(db)
    approx = CodeIndex(lsh, "float32", shortlist_index="hnsw").fit(calib).add(db)
    _, e = exact.search(calib[:50], 10, oversample=10)
    _, a = approx.search(calib[:50], 10, oversample=10)
    assert np.mean([len(set(x) & set(y)) for x, y in zip(a, e, strict=True)]) / 10 > 0.9


# -- faiss ------------------------------------------------------------------------
def _recall(idx, ref):
    return np.mean(
        [len(set(a) & set(b)) / ref.shape[1] for a, b in zip(idx, ref, strict=True)]
    )


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_binary_faiss_index_recall_and_reload(data, tmp_path, kind):
    calib, db = data
    lsh = RandomProjectionLSH(256, random_state=0).fit(calib)
    bits, qbits = lsh.transform(db), lsh.transform(calib[:100])
    index = build_faiss_index(bits, kind, quantizer=lsh, nprobe=16, ef_search=128)
    assert isinstance(index, faiss.IndexBinary) and index.ntotal == len(db)
    dist, idx = index.search(qbits, 10)
    agree, ref = search(qbits, bits, 10, metric="hamming")
    if kind == "flat":
        np.testing.assert_array_equal(256 - dist, agree)
    assert _recall(idx, ref) >= (1.0 if kind == "flat" else 0.85)
    save_faiss_index(index, tmp_path / "bits.faiss")
    reloaded = load_faiss_index(tmp_path / "bits.faiss")
    np.testing.assert_array_equal(reloaded.search(qbits, 10)[1], idx)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_float_faiss_index_recall_and_reload(data, tmp_path, kind):
    calib, db = data
    X = db / np.linalg.norm(db, axis=1, keepdims=True)
    Q = calib[:100] / np.linalg.norm(calib[:100], axis=1, keepdims=True)
    index = build_faiss_index(X, kind, nprobe=16, ef_search=128)
    scores, idx = index.search(Q, 10)
    _, ref = search(Q, X, 10, metric="ip")
    assert _recall(idx, ref) >= (0.99 if kind == "flat" else 0.85)
    save_faiss_index(index, tmp_path / "f.faiss")
    np.testing.assert_array_equal(
        load_faiss_index(tmp_path / "f.faiss").search(Q, 10)[1], idx
    )


def test_one_bit_codes_in_a_binary_index_rank_like_code_similarity(data):
    calib, db = data
    q = PercentileQuantizer(bits=1, pack=True).fit(calib)
    codes = q.transform(db)
    _, idx = build_faiss_index(codes, "flat", quantizer=q).search(
        q.transform(calib[:30]), 5
    )
    _, ref = search(q.transform(calib[:30]), codes, 5, metric="codes", quantizer=q)
    np.testing.assert_array_equal(idx, ref)


def test_faiss_builder_refuses_multibit_codes_and_bad_input(data):
    calib, db = data
    q = PercentileQuantizer(bits=2, pack=True).fit(calib)
    with pytest.raises(ValueError, match="Use CodeIndex for multi-bit codes"):
        build_faiss_index(q.transform(db), quantizer=q)
    with pytest.raises(TypeError, match="dtype int64"):
        build_faiss_index(np.zeros((5, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="kind"):
        build_faiss_index(db, "lsh")
    with pytest.raises(FileNotFoundError):
        load_faiss_index("/nonexistent/x.faiss")


def test_shortlist_search_is_the_first_stage(data):
    calib, db = data
    q = AllocatedQuantizer(bit_budget=32)
    index = CodeIndex(q, "float32").fit(calib).add(db)
    idx = index.shortlist_search(calib[:20], 7)
    _, ref = search(
        calib[:20], index.codes_, 7, metric="asymmetric", quantizer=index.shortlist_
    )
    np.testing.assert_array_equal(idx, ref)


def test_guide_search_at_scale_example_runs(tmp_path, monkeypatch, capsys):
    import re

    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "search-at-scale.md"
    code = re.findall(r"```python\n(.+?)\n```", guide.read_text(), flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "guide: search at scale", "exec"), {})
    assert capsys.readouterr().out.split() == ["16", "128", "[0", "1", "2", "3", "4]"]


def test_load_refuses_a_disk_file_of_another_index(data, tmp_path):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), "float16").fit(calib).add(db)
    index.save(tmp_path / "a")
    with open(_rows_file(tmp_path / "a"), "ab") as f:
        f.write(b"\0" * 96)  # one row too many
    with pytest.raises(ValueError, match="do not belong together"):
        CodeIndex.load(tmp_path / "a")


def test_refit_with_another_width(data):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True)).fit(calib)
    index.fit(calib[:, :16]).add(db[:, :16])
    assert index.n_features_in_ == 16 and index.n_vectors_ == len(db)


# -- no index corrupts another's files, nor an unsaved one its folder (issue 19) -------
def _folder_bytes(folder):
    """The saved files (not the private working files of live indexes)."""
    return {
        p.name: p.read_bytes()
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.endswith(".bin.tmp")
    }


def test_two_indexes_on_one_directory_do_not_truncate_each_other(data, tmp_path):
    # On a shared rescore.bin the second fit truncated the first index's mapped file
    # and its next search died of SIGBUS: run it in a subprocess so a crash fails here.
    calib, db = data
    np.save(tmp_path / "calib.npy", calib)
    np.save(tmp_path / "db.npy", db)
    code = f"""
import numpy as np
from skfusion import PercentileQuantizer
from skfusion.index import CodeIndex
calib, db = np.load({str(tmp_path / "calib.npy")!r}), np.load({str(tmp_path / "db.npy")!r})
folder = {str(tmp_path / "shared")!r}
a = CodeIndex(PercentileQuantizer(bits=1, pack=True), "float32", directory=folder)
a.fit(calib).add(db)
before = a.search(calib[:10], 5)
b = CodeIndex(PercentileQuantizer(bits=2, pack=True), "float32", directory=folder)
b.fit(calib).add(db[:7])
after = a.search(calib[:10], 5)
assert all((x == y).all() for x, y in zip(before, after))
a.add(db[:3])
assert b.n_vectors_ == 7 and b.search(db[:2], 1)[1].ravel().tolist() == [0, 1]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr)


def test_load_then_add_without_save_leaves_the_folder_intact(data, tmp_path):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), "float16").fit(calib)
    index.add(db[:500]).save(tmp_path / "idx")
    saved = _folder_bytes(tmp_path / "idx")
    expected = index.search(calib[:10], 5)
    loaded = CodeIndex.load(tmp_path / "idx").add(db[500:])
    assert loaded.n_vectors_ == len(db)
    del loaded  # its private working file goes with it
    assert not list((tmp_path / "idx").glob(".rescore-*"))
    assert _folder_bytes(tmp_path / "idx") == saved
    again = CodeIndex.load(tmp_path / "idx")
    assert again.n_vectors_ == 500
    for x, y in zip(again.search(calib[:10], 5), expected, strict=True):
        np.testing.assert_array_equal(x, y)


def test_fit_on_a_loaded_index_leaves_the_saved_rows_alone(data, tmp_path):
    calib, db = data
    CodeIndex(PercentileQuantizer(bits=1, pack=True), "float32").fit(calib).add(db).save(
        tmp_path / "idx"
    )
    saved = _folder_bytes(tmp_path / "idx")
    loaded = CodeIndex.load(tmp_path / "idx")
    loaded.set_params(prefit=False).fit(calib).add(db[:5])
    assert loaded.n_vectors_ == 5
    assert _rows_file(tmp_path / "idx").stat().st_size == len(db) * 48 * 4
    assert _folder_bytes(tmp_path / "idx") == saved
    assert CodeIndex.load(tmp_path / "idx").n_vectors_ == len(db)


def test_an_interrupted_save_leaves_the_previous_version(data, tmp_path):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), "float16").fit(calib)
    index.add(db[:100]).save(tmp_path / "idx")
    saved = _folder_bytes(tmp_path / "idx")
    # The encoder cannot be stored: the save fails after writing some of its files.
    bad = clone(index).set_params(encoder=make_pipeline(FunctionTransformer(_double)))
    bad.fit(calib).add(db[:7])
    with pytest.raises(ValueError, match="does not trust"):
        bad.save(tmp_path / "idx")
    assert _folder_bytes(tmp_path / "idx") == saved
    assert CodeIndex.load(tmp_path / "idx").n_vectors_ == 100


def test_saving_over_an_index_drops_its_files(data, tmp_path):
    # A stale encoder.skops of the previous index was loaded with the new one.
    calib, db = data
    scaler = StandardScaler().fit(calib)
    CodeIndex(PercentileQuantizer(bits=1, pack=True), encoder=scaler).fit(calib).add(
        db
    ).save(tmp_path / "idx")
    small = CodeIndex(PercentileQuantizer(bits=1, pack=True), "float32").fit(calib)
    small.add(db[:4]).save(tmp_path / "idx")
    again = CodeIndex.load(tmp_path / "idx")
    assert again.encoder is None and again.n_vectors_ == 4
    np.testing.assert_array_equal(again.search(db[:4], 1)[1].ravel(), [0, 1, 2, 3])
    names = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert len(names) == 5 and names[0] == ".skfusion-index.lock", names


def test_a_concurrent_save_is_refused_with_a_clear_error(data, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True)).fit(calib).add(db[:9])
    index.save(tmp_path / "idx")
    # Another writer holds the folder's lock (a separate open file, as another
    # process would).
    with open(tmp_path / "idx" / ".skfusion-index.lock", "a+b") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="being saved or loaded by another"):
            index.save(tmp_path / "idx")
    index.add(db[:1]).save(tmp_path / "idx")
    assert CodeIndex.load(tmp_path / "idx").n_vectors_ == 10


def test_version_1_folders_still_load(data, tmp_path):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), "float16").fit(calib)
    index.add(db[:20]).save(tmp_path / "idx")
    folder = tmp_path / "idx"
    meta = json.loads((folder / "meta.json").read_text())
    for name, old in (("shortlist", "shortlist.skops"), ("arrays", "arrays.npz")):
        (folder / meta["files"][name]).rename(folder / old)
    (folder / meta["files"]["rows"]).rename(folder / "rescore.bin")
    del meta["files"]
    meta["format"] = "skfusion-code-index-1"
    (folder / "meta.json").write_text(json.dumps(meta))
    loaded = CodeIndex.load(folder)
    np.testing.assert_array_equal(loaded.search(db[:3], 1)[1].ravel(), [0, 1, 2])
    loaded.add(db[:1]).save(folder)
    assert not (folder / "rescore.bin").exists()
    assert CodeIndex.load(folder).n_vectors_ == 21


def test_a_copy_writes_its_own_file_and_the_original_keeps_its_own(data, tmp_path):
    calib, db = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), directory=tmp_path)
    index.fit(calib).add(db[:50])
    for copy_ in (pickle.loads(pickle.dumps(index)), copy.deepcopy(index)):
        copy_.add(db[50:53])
        assert copy_.n_vectors_ == 53 and copy_.rescore_rows_.filename != (
            index.rescore_rows_.filename
        )
    index.add(db[50:51])
    assert index.n_vectors_ == 51
    np.testing.assert_array_equal(index.search(db[:51], 1)[1].ravel(), np.arange(51))
    path = Path(index.rescore_rows_.filename)
    del index
    assert not path.exists()  # the private working file goes with its index


# -- one engine: CodeIndex and search() agree --------------------------------------
@pytest.mark.parametrize("shortlist_index", ["exact", "ivf"])
@pytest.mark.parametrize(
    "rescore, metric, weighted",
    [
        ("float32", "cosine", False),
        ("float32", "cosine", True),
        ("float16", "ip", True),
        (PercentileQuantizer(bits=4), "asymmetric", False),
        (PercentileQuantizer(bits=4), "reconstruct", True),
    ],
)
def test_index_and_search_agree_exactly(
    data, tmp_path, rescore, metric, weighted, shortlist_index
):
    # Covering oversample: the rescoring sees every row, so CodeIndex must give
    # search()'s scores and indices to the bit, weights included.
    calib, db = data
    w = np.linspace(0.2, 2.0, db.shape[1]).astype(np.float32) if weighted else None
    index = CodeIndex(
        PercentileQuantizer(bits=1, pack=True),
        rescore,
        rescore_metric=metric,
        rescore_weights=w,
        shortlist_index=shortlist_index,
        nlist=8,
        nprobe=3,
        random_state=0,
        directory=tmp_path,
    ).fit(calib)
    index.add(db[:500]).add(db[500:])
    if isinstance(rescore, str):
        fine, quantizer = db.astype(rescore).astype(np.float32), None
    else:
        fine, quantizer = index.rescore_.transform(db), index.rescore_
    ref = search(calib[:40], fine, 10, metric=metric, quantizer=quantizer, weights=w)
    if shortlist_index == "ivf":
        index.set_params(nprobe=8)  # every list: the whole index
    got = index.search(calib[:40], 10, oversample=db.shape[0])
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[0], ref[0])


# -- the IVF shortlist --------------------------------------------------------------
@pytest.mark.parametrize(
    "shortlist",
    [
        PercentileQuantizer(bits=6),  # "codes": exact float32 scores
        AllocatedQuantizer(bit_budget=200, max_bits=6),  # "asymmetric", wide columns
    ],
    ids=["percentile", "allocated"],
)
def test_ivf_probing_every_list_is_the_exact_shortlist(data, shortlist):
    # Columns wider than 4 bits: 8-bit groups, scored with the metric's float32 scores.
    from skfusion._engine import VectorSpace

    calib, db = data
    exact = CodeIndex(shortlist, "float32").fit(calib).add(db)
    assert np.asarray(exact.shortlist_.bits_).max() > 4
    ivf = CodeIndex(shortlist, "float32", shortlist_index="ivf", nlist=12, nprobe=12)
    ivf.fit(calib).add(db[:400]).add(db[400:])
    assert ivf.nlist_ == 12 and ivf.centroids_.shape == (12, db.shape[1])
    np.testing.assert_array_equal(ivf.codes_, exact.codes_)
    # The same scores, best first, ties by lower index; a tie at the last place may
    # keep any of the tied rows.
    queries = exact._shortlist_queries(calib[:30])
    got, want = ivf.shortlist_search(calib[:30], 60), exact.shortlist_search(calib[:30], 60)
    space = VectorSpace(
        exact.shortlist_metric_, queries, exact.codes_, exact.shortlist_, None
    )
    for q, (a, b) in enumerate(zip(got, want, strict=True)):
        sa, sb = space.rows(a) @ space.Q[q], space.rows(b) @ space.Q[q]
        np.testing.assert_array_equal(sa, sb)
        tied = sa == sa[-1]
        np.testing.assert_array_equal(a[~tied], b[~tied])
        assert (np.diff(a[tied]) > 0).all()
    # A shortlist of every row leaves no tie at its last place: exact results.
    got = ivf.search(calib[:30], 10, oversample=len(db))
    for a, b in zip(got, exact.search(calib[:30], 10, oversample=len(db)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "shortlist",
    [
        PercentileQuantizer(bits=1, pack=True),  # "codes"
        AllocatedQuantizer(bit_budget=64),  # "asymmetric"
        RandomProjectionLSH(64, random_state=0),  # "hamming"
    ],
    ids=["percentile", "allocated", "lsh"],
)
def test_ivf_fast_scan_lists_keep_the_exact_shortlist_up_to_rounding(data, shortlist):
    # Columns of at most 4 bits: faiss fast-scan, whose 8-bit look-up tables round the
    # code scores, so the shortlist may swap rows whose scores nearly tie.
    calib, db = data
    exact = CodeIndex(shortlist, "float32").fit(calib).add(db)
    assert np.asarray(exact.shortlist_.bits_).max() <= 4
    ivf = CodeIndex(shortlist, "float32", shortlist_index="ivf", nlist=12, nprobe=12)
    ivf.fit(calib).add(db[:400]).add(db[400:])
    np.testing.assert_array_equal(ivf.codes_, exact.codes_)
    got, want = ivf.shortlist_search(calib[:30], 60), exact.shortlist_search(calib[:30], 60)
    assert np.mean([np.isin(a, b).mean() for a, b in zip(got, want, strict=True)]) > 0.9
    top = np.mean([np.isin(b[:10], a).mean() for a, b in zip(got, want, strict=True)])
    assert top > 0.97
    # A shortlist of every row: exact results.
    got = ivf.search(calib[:30], 10, oversample=len(db))
    for a, b in zip(got, exact.search(calib[:30], 10, oversample=len(db)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ivf_recall_improves_with_nprobe_and_nprobe_applies_after_fit(data):
    calib, db = data
    _, truth = search(calib, db, 10)
    index = CodeIndex(
        AllocatedQuantizer(bit_budget=64),
        "float32",
        shortlist_index="ivf",
        nlist=16,
        nprobe=1,
        random_state=0,
    )
    index.fit(calib).add(db)
    recalls = []
    for nprobe in (1, 4, 16):
        index.set_params(nprobe=nprobe)  # no refit: read at search time
        recalls.append(_recall(index.search(calib, 10)[1], truth))
    exact = CodeIndex(AllocatedQuantizer(bit_budget=64), "float32").fit(calib).add(db)
    assert recalls[0] < recalls[1] < recalls[2]
    assert recalls[2] == _recall(exact.search(calib, 10)[1], truth) > 0.9
    # The lists hold the only copy of the codes: 64 bits plus faiss's 8-byte id.
    np.testing.assert_array_equal(index.codes_, exact.codes_)
    assert index.n_vectors_ == len(db) and index.ram_bytes_per_vector_ == 8 + 8


def test_ivf_pads_queries_whose_lists_hold_too_few_rows(data):
    calib, db = data
    index = CodeIndex(
        PercentileQuantizer(bits=1, pack=True),
        shortlist_index="ivf",
        nlist=20,
        nprobe=1,
        random_state=0,
    )
    index.fit(calib).add(db[:40])
    idx = index.shortlist_search(calib[:10], 40)
    scores, found = index.search(calib[:10], 40, oversample=1)
    assert (idx == -1).any()  # no single list holds all 40 rows
    np.testing.assert_array_equal(found == -1, idx == -1)
    assert np.isneginf(scores[found == -1]).all() and np.isfinite(scores[found >= 0]).all()
    for row in idx:  # real rows first, each once
        real = row[row >= 0]
        assert len(set(real)) == len(real) and (row[len(real) :] == -1).all()


def test_ivf_save_load_round_trips_the_lists_without_pickle(data, tmp_path):
    calib, db = data
    index = CodeIndex(
        AllocatedQuantizer(bit_budget=64),
        "float16",
        shortlist_index="ivf",
        nlist=10,
        nprobe=2,
        random_state=0,
    )
    index.fit(calib).add(db[:600])
    index.save(tmp_path / "saved")
    with np.load(_rows_file(tmp_path / "saved", "arrays"), allow_pickle=False) as arrays:
        np.testing.assert_array_equal(arrays["ivf_centroids"], index.centroids_)
        assert arrays["ivf_order"].dtype == np.int32
    loaded = CodeIndex.load(tmp_path / "saved")
    assert (loaded.shortlist_index, loaded.nlist_, loaded.nprobe) == ("ivf", 10, 2)
    for a, b in zip(loaded.search(calib, 10), index.search(calib, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    # Both grow the same way, and the loaded one keeps filing new rows in its lists.
    loaded.add(db[600:]).set_params(nprobe=5)
    index.add(db[600:]).set_params(nprobe=5)
    for a, b in zip(loaded.search(calib, 10), index.search(calib, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    # Lists that do not match the codes are refused.
    path = _rows_file(tmp_path / "saved", "arrays")
    with np.load(path) as arrays:
        broken = dict(arrays)
    broken["ivf_order"] = broken["ivf_order"][::-1].copy()
    broken["ivf_order"][0] = broken["ivf_order"][1]
    with open(path, "wb") as f:
        np.savez(f, **broken)
    with pytest.raises(ValueError, match="IVF lists do not match"):
        CodeIndex.load(tmp_path / "saved")


def test_ivf_copies_keep_their_own_lists(data):
    calib, db = data
    index = CodeIndex(AllocatedQuantizer(bit_budget=64), shortlist_index="ivf", nlist=8)
    index.fit(calib).add(db[:200])
    before = index.search(calib[:20], 5)
    for copy_ in (pickle.loads(pickle.dumps(index)), copy.deepcopy(index)):
        for a, b in zip(copy_.search(calib[:20], 5), before, strict=True):
            np.testing.assert_array_equal(a, b)
        copy_.add(db[200:])
        assert copy_.n_vectors_ == len(db)
    assert index.n_vectors_ == 200 and index.codes_.shape == (200, 8)


class _RotatedCodes(PercentileQuantizer):
    """Code vectors that mix columns: no per-column table exists."""

    def code_vectors(self, codes):
        V = super().code_vectors(codes)
        return V @ np.linalg.qr(np.random.default_rng(0).normal(size=(V.shape[1],) * 2))[0]


def test_ivf_refuses_codes_whose_values_mix_columns(data):
    calib, _ = data
    index = CodeIndex(_RotatedCodes(bits=2), shortlist_index="ivf", nlist=4, nprobe=2)
    match = "not one value per column.*shortlist_index='exact'"
    with pytest.raises(ValueError, match=match):
        index.fit(calib)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"nlist": 0}, "'nlist' parameter"),
        ({"nprobe": 0}, "'nprobe' parameter"),
        ({"nlist": 301}, "nlist=301 exceeds the 300 rows"),
        ({"nlist": 4, "nprobe": 5}, "nprobe=5 exceeds the nlist_=4"),
    ],
)
def test_ivf_bad_nlist_or_nprobe_at_fit(data, params, match):
    calib, _ = data
    index = CodeIndex(PercentileQuantizer(bits=1, pack=True), shortlist_index="ivf")
    with pytest.raises(ValueError, match=match):
        index.set_params(**params).fit(calib)


def test_ivf_bad_nprobe_after_fit_and_training_rows(data):
    calib, db = data
    q = PercentileQuantizer(bits=1, pack=True)
    index = CodeIndex(q, shortlist_index="ivf", nlist=4, nprobe=2).fit(calib).add(db)
    for nprobe, match in ((5, "nprobe=5 exceeds the nlist_=4"), (1.5, "positive integer")):
        with pytest.raises(ValueError, match=match):
            index.set_params(nprobe=nprobe).search(calib[:2])
    # Lists are trained on the rows fit receives: prefit steps still need X.
    q.fit(calib)
    with pytest.raises(ValueError, match="trains its lists on the rows passed to fit"):
        CodeIndex(q, shortlist_index="ivf", prefit=True).fit()
    index = CodeIndex(q, shortlist_index="ivf", nlist=4, nprobe=4, prefit=True)
    assert index.fit(calib).shortlist_ is q and index.nlist_ == 4
    with pytest.raises(ValueError, match="X has 5 columns"):
        index.fit(calib[:, :5])
    pipe = make_pipeline(StandardScaler(), PercentileQuantizer(bits=1, pack=True)).fit(
        calib
    )
    index = CodeIndex.from_pipeline(pipe, shortlist_index="ivf", nlist=4, nprobe=4, X=calib)
    _, idx = index.add(db).search(db[:5], 1, oversample=20)
    np.testing.assert_array_equal(idx.ravel(), np.arange(5))
    # shortlist_index="ivf" set after fit: the lists were never trained.
    index = CodeIndex(q, "float32").fit(calib).add(db).set_params(shortlist_index="ivf")
    with pytest.raises(ValueError, match="set after fit"):
        index.search(calib[:2])
