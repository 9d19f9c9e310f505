"""LanceDB round trips: its exact search equals skfusion.search on the same rows."""

import numpy as np
import pytest

from skfusion import PercentileQuantizer, RandomProjectionLSH
from skfusion.search import search
from skfusion.vectorstore import search_lancedb, write_lancedb

pytest.importorskip("lancedb")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((6, 32))
    X = rng.standard_normal((700, 6)) @ basis + 0.7 * rng.standard_normal((700, 32))
    return X[:100].astype(np.float32), X[100:].astype(np.float32)


def _same_up_to_ties(scores, ids, ref_scores, ref_idx, names, atol):
    """Equal scores row by row; ids equal wherever the score is not tied."""
    np.testing.assert_allclose(scores, ref_scores, atol=atol, rtol=0)
    for s, got, want in zip(ref_scores, ids, ref_idx, strict=True):
        for j, name in enumerate(got):
            tied = np.sum(np.abs(s - s[j]) <= atol) > 1
            if not tied:
                assert name == names[want[j]]


@pytest.mark.parametrize(
    "make",
    [lambda: RandomProjectionLSH(128, random_state=0), lambda: PercentileQuantizer(bits=1)],
)
def test_binary_hamming_equals_skfusion_search(data, tmp_path, make):
    calib, db = data
    est = make().set_params(pack=True).fit(db)
    bits, qbits = est.transform(db), est.transform(calib)
    names = np.array([f"doc{i}" for i in range(len(db))])
    table = write_lancedb(tmp_path, "bits", bits, names)
    assert table.count_rows() == len(db)
    # 1-bit percentile codes are packed bits too (32 codes: no padding bits).
    q = est if "hamming" in est.code_metrics else None
    scores, ids = search_lancedb(table, qbits, k=10, n_bits=est.n_bits_)
    ref_s, ref_i = search(qbits, bits, 10, metric="hamming", quantizer=q)
    _same_up_to_ties(scores, ids, ref_s, ref_i, names, atol=0)


@pytest.mark.parametrize("metric", ["cosine", "ip"])
def test_float_equals_skfusion_search(data, tmp_path, metric):
    calib, db = data
    names = [f"d{i}" for i in range(len(db))]
    table = write_lancedb(tmp_path, "floats", db, names)
    scores, ids = search_lancedb(table, calib, k=10, metric=metric)
    ref_s, ref_i = search(calib, db, 10, metric=metric)
    # LanceDB scores in float32: compare at float32 resolution of the scores.
    atol = 1e-5 * max(1.0, float(np.abs(ref_s).max()))
    _same_up_to_ties(scores, ids, ref_s, ref_i, names, atol=atol)


def test_append_reopen_and_default_ids(data, tmp_path):
    calib, db = data
    lsh = RandomProjectionLSH(64, random_state=0).fit(db)
    write_lancedb(tmp_path, "t", lsh.transform(db[:300]))
    table = write_lancedb(tmp_path, "t", lsh.transform(db[300:]), mode="append")
    assert table.count_rows() == len(db)
    _, ids = search_lancedb(table, lsh.transform(db[[0, 450]]), k=1)
    assert ids.ravel().tolist() == ["0", "450"]
    with pytest.raises(ValueError, match="already exists|exist"):
        write_lancedb(tmp_path, "t", lsh.transform(db[:3]))


def test_bad_input(data, tmp_path):
    calib, db = data
    with pytest.raises(ValueError, match="one id per row"):
        write_lancedb(tmp_path, "x", db[:3], ["a"])
    with pytest.raises(TypeError, match="dtype int64"):
        write_lancedb(tmp_path, "x", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="mode"):
        write_lancedb(tmp_path, "x", db[:3], mode="replace")
    table = write_lancedb(tmp_path, "x", db[:3])
    with pytest.raises(TypeError, match="metric='hamming'"):
        search_lancedb(table, calib[:1], metric="hamming")
    with pytest.raises(ValueError, match="NaN"):
        search_lancedb(table, np.full((1, 32), np.nan))


def test_unpacked_codes_are_refused_without_their_quantizer(data, tmp_path):
    calib, db = data
    q = PercentileQuantizer(bits=2).fit(db)  # pack=False: one uint8 code per column
    with pytest.raises(ValueError, match="unpacked codes.*quantizer="):
        write_lancedb(tmp_path, "codes", q.transform(db))
    with pytest.raises(ValueError, match="unpacked codes.*quantizer="):
        search_lancedb(write_lancedb(tmp_path, "f", db), q.transform(calib))
    lsh = RandomProjectionLSH(64, pack=False, random_state=0).fit(db)
    with pytest.raises(TypeError, match="dtype bool.*quantizer="):
        write_lancedb(tmp_path, "bits", lsh.transform(db))


@pytest.mark.parametrize(
    "make",
    [
        lambda: PercentileQuantizer(bits=2),
        lambda: PercentileQuantizer(bits=3, pack=True),
        lambda: RandomProjectionLSH(64, pack=False, random_state=0),
        lambda: PercentileQuantizer(bits=1),
    ],
)
def test_codes_with_their_quantizer_search_as_skfusion_search(data, tmp_path, make):
    calib, db = data
    est = make().fit(db)
    codes, qcodes = est.transform(db), est.transform(calib)
    names = np.array([f"doc{i}" for i in range(len(db))])
    table = write_lancedb(tmp_path, "codes", codes, names, quantizer=est)
    scores, ids = search_lancedb(table, qcodes, k=10, quantizer=est)
    metric = est.symmetric_metric
    ref_s, ref_i = search(qcodes, codes, 10, metric=metric, quantizer=est)
    _same_up_to_ties(scores, ids, ref_s, ref_i, names, atol=1e-4)


def test_append_of_another_kind_or_width_is_refused(data, tmp_path):
    calib, db = data
    write_lancedb(tmp_path, "t", db)
    bits = RandomProjectionLSH(256, random_state=0).fit(db).transform(db)
    assert bits.shape[1] == db.shape[1]  # same width: only the kind differs
    with pytest.raises(ValueError, match="packed uint8 bits.*table holds float32"):
        write_lancedb(tmp_path, "t", bits, mode="append")
    with pytest.raises(ValueError, match="width 16 but the table holds .* width 32"):
        write_lancedb(tmp_path, "t", db[:, :16], mode="append")
    assert write_lancedb(tmp_path, "t", db[:5], mode="append").count_rows() == len(db) + 5


def test_queries_of_another_width_or_kind_name_the_table(data, tmp_path):
    calib, db = data
    table = write_lancedb(tmp_path, "t", db)
    with pytest.raises(ValueError, match="width 31 but the table holds float32 rows"):
        search_lancedb(table, calib[:2, :31])
    bits = np.full((2, 32), 0xAB, dtype=np.uint8)
    with pytest.raises(ValueError, match="packed uint8 bits"):
        search_lancedb(table, bits)


def test_zero_query_is_an_error_for_cosine_and_scores_zero_for_ip(data, tmp_path):
    calib, db = data
    table = write_lancedb(tmp_path, "t", db)
    queries = np.vstack([calib[:1], np.zeros((1, 32), np.float32)])
    with pytest.raises(ValueError, match="row 1 is all zeros.*metric='ip'"):
        search_lancedb(table, queries, k=3)
    scores, ids = search_lancedb(table, queries, k=3, metric="ip")
    assert scores.shape == ids.shape == (2, 3)
    np.testing.assert_allclose(scores[1], 0.0, atol=1e-6)


def test_many_queries_print_and_warn_nothing(data, tmp_path, capfd):
    import warnings

    calib, db = data
    lsh = RandomProjectionLSH(64, random_state=0).fit(db)
    bits = write_lancedb(tmp_path, "bits", lsh.transform(db))
    floats = write_lancedb(tmp_path, "floats", db)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        search_lancedb(bits, lsh.transform(calib), k=5)
        search_lancedb(floats, calib, k=5)
        search_lancedb(floats, calib, k=5, exact=False)
    out, err = capfd.readouterr()
    assert [str(w.message) for w in caught] == []
    assert out == "" and err == "", err[:300]
