"""Tests for skfusion.datasets: the BEIR loader, passages, and the bundled sample."""

import gzip
import json
from pathlib import Path

import pytest

from skfusion.datasets import (
    RetrievalDataset,
    load_beir,
    load_passages,
    load_sample,
    load_sample_passages,
    sample_path,
)

FULL = Path(__file__).resolve().parents[2] / "shared" / "data" / "debian-packages"


def _write(path: Path, text: str, gz: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "first doc"},
    {"_id": "d2", "title": "", "text": "second doc"},
    {"_id": "d3", "text": "third doc"},
]
QUERIES = [
    {"_id": "q1", "text": "find alpha"},
    {"_id": "q2", "text": "find second"},
    {"_id": "q3", "text": "only in dev"},
]
QRELS_TEST = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq2\td3\t0\n"
QRELS_DEV = "query-id\tcorpus-id\tscore\nq3\td3\t1\n"


@pytest.fixture
def beir(tmp_path):
    def make(gz=False, corpus=CORPUS, queries=QUERIES, qrels=QRELS_TEST):
        ext = ".jsonl.gz" if gz else ".jsonl"
        _write(tmp_path / f"corpus{ext}", _jsonl(corpus), gz)
        _write(tmp_path / f"queries{ext}", _jsonl(queries), gz)
        _write(tmp_path / "qrels" / "test.tsv", qrels)
        _write(tmp_path / "qrels" / "dev.tsv", QRELS_DEV)
        return tmp_path

    return make


@pytest.mark.parametrize("gz", [False, True])
def test_load_beir_reads_plain_and_gzip(beir, gz):
    data = load_beir(beir(gz=gz), split="test")
    assert isinstance(data, RetrievalDataset)
    assert data.corpus_ids == ["d1", "d2", "d3"]
    # Title joined to text the way BEIR/MTEB do: (title + " " + text).strip().
    assert data.corpus_texts == ["Alpha first doc", "second doc", "third doc"]
    # Only the queries judged in the split, in file order.
    assert data.query_ids == ["q1", "q2"]
    assert data.query_texts == ["find alpha", "find second"]
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 0}}
    assert data.split == "test"
    assert "n_corpus=3" in repr(data) and "n_queries=2" in repr(data)


def test_load_beir_split_selects_queries(beir):
    data = load_beir(beir(), split="dev")
    assert data.query_ids == ["q3"]
    assert data.qrels == {"q3": {"d3": 1}}


def test_integer_ids_are_read_as_strings(beir):
    corpus = [{"_id": 7, "text": "seven"}]
    queries = [{"_id": 1, "text": "q"}]
    path = beir(corpus=corpus, queries=queries, qrels="1\t7\t1\n")
    (path / "qrels" / "dev.tsv").unlink()
    data = load_beir(path)
    assert data.corpus_ids == ["7"] and data.query_ids == ["1"]
    assert data.qrels == {"1": {"7": 1}}


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_beir(tmp_path / "nope")


def test_missing_corpus_raises(beir):
    path = beir()
    (path / "corpus.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"corpus\.jsonl or corpus\.jsonl\.gz"):
        load_beir(path)


def test_both_plain_and_gzip_raise(beir):
    path = beir()
    _write(path / "corpus.jsonl.gz", _jsonl(CORPUS), gz=True)
    with pytest.raises(ValueError, match="remove one"):
        load_beir(path)


def test_missing_split_lists_available(beir):
    with pytest.raises(FileNotFoundError, match=r"available splits: \['dev', 'test'\]"):
        load_beir(beir(), split="train")


def test_bad_split_type_raises(beir):
    with pytest.raises(ValueError, match="split must be a non-empty string"):
        load_beir(beir(), split=None)


def test_bad_json_line_names_line_number(beir):
    path = beir()
    text = _jsonl(CORPUS[:2]) + "\n" + '{"_id": "d3", "text": oops}\n'
    _write(path / "corpus.jsonl", text)
    with pytest.raises(ValueError, match=r"corpus\.jsonl, line 4: not valid JSON"):
        load_beir(path)


def test_non_object_line_raises(beir):
    path = beir()
    _write(path / "queries.jsonl", _jsonl(QUERIES) + "[1, 2]\n")
    with pytest.raises(ValueError, match="line 4: expected a JSON object, got list"):
        load_beir(path)


def test_missing_text_field_names_line(beir):
    corpus = [*CORPUS[:2], {"_id": "d3", "body": "x"}]
    with pytest.raises(ValueError, match=r"line 3: field 'text' is missing"):
        load_beir(beir(corpus=corpus))


def test_non_string_text_raises(beir):
    corpus = [*CORPUS[:2], {"_id": "d3", "text": 5}]
    with pytest.raises(ValueError, match="line 3: field 'text' is a int, not a string"):
        load_beir(beir(corpus=corpus))


def test_duplicate_id_raises(beir):
    corpus = [*CORPUS, {"_id": "d1", "text": "again"}]
    with pytest.raises(ValueError, match=r"line 4: duplicate _id 'd1' \(first on line 1\)"):
        load_beir(beir(corpus=corpus))


def test_qrels_bad_score_names_line(beir):
    qrels = QRELS_TEST + "q1\td2\thigh\n"
    with pytest.raises(ValueError, match="line 5: score must be an integer, got 'high'"):
        load_beir(beir(qrels=qrels))


def test_qrels_wrong_field_count(beir):
    with pytest.raises(ValueError, match="line 2: expected 3 tab-separated fields"):
        load_beir(beir(qrels="query-id\tcorpus-id\tscore\nq1 0 d1 1\n"))


def test_qrels_duplicate_judgement(beir):
    with pytest.raises(ValueError, match="duplicate judgement for query 'q1'"):
        load_beir(beir(qrels=QRELS_TEST + "q1\td1\t0\n"))


def test_qrels_query_absent_from_queries(beir):
    with pytest.raises(ValueError, match=r"1 query id\(s\).*absent.*'qX'"):
        load_beir(beir(qrels=QRELS_TEST + "qX\td1\t1\n"))


def test_qrels_doc_absent_from_corpus(beir):
    with pytest.raises(ValueError, match=r"2 document id\(s\).*'dX', 'dY'"):
        load_beir(beir(qrels=QRELS_TEST + "q1\tdX\t1\nq1\tdY\t1\n"))


# --- passages ---------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_passages_jsonl(tmp_path, gz):
    path = tmp_path / ("p.jsonl.gz" if gz else "p.jsonl")
    _write(path, _jsonl(CORPUS), gz)
    assert load_passages(path) == ["Alpha first doc", "second doc", "third doc"]
    assert load_passages(path, limit=2) == ["Alpha first doc", "second doc"]
    assert load_passages(path, limit=0) == []


@pytest.mark.parametrize("gz", [False, True])
def test_load_passages_txt_skips_blank_lines(tmp_path, gz):
    path = tmp_path / ("p.txt.gz" if gz else "p.txt")
    _write(path, "one passage\n\n  \ntwo  passage \r\nthree\n", gz)
    assert load_passages(path) == ["one passage", "two  passage ", "three"]
    assert load_passages(str(path), limit=1) == ["one passage"]


def test_load_passages_errors(tmp_path):
    with pytest.raises(ValueError, match=r"use a \.jsonl, \.jsonl\.gz, \.txt"):
        load_passages(tmp_path / "p.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_passages(tmp_path / "missing.txt")
    _write(tmp_path / "p.txt", "a\n")
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="limit must be None or an integer"):
            load_passages(tmp_path / "p.txt", limit=bad)
    _write(tmp_path / "bad.jsonl", '{"text": "ok"}\n{"title": "no text"}\n')
    with pytest.raises(ValueError, match="line 2: field 'text' is missing"):
        load_passages(tmp_path / "bad.jsonl")


# --- bundled sample -----------------------------------------------------------------


def test_sample_is_complete_and_consistent():
    test, dev = load_sample("test"), load_sample("dev")
    assert (len(test.query_ids), len(dev.query_ids)) == (300, 200)
    assert test.corpus_ids == dev.corpus_ids and len(test.corpus_ids) == 2000
    assert not set(test.query_ids) & set(dev.query_ids)
    for data in (test, dev):
        assert set(data.qrels) == set(data.query_ids)
        assert all(any(g > 0 for g in j.values()) for j in data.qrels.values())
        assert all(t.strip() for t in data.query_texts + data.corpus_texts)
    passages = load_sample_passages()
    assert len(passages) == 2000 and len(set(passages)) > 1900
    # Training passages must not leak corpus documents.
    assert not set(passages) & set(test.corpus_texts)
    assert load_sample_passages(limit=5) == passages[:5]
    assert (sample_path() / "README.md").is_file()


def test_load_sample_bad_split():
    with pytest.raises(ValueError, match="split must be 'test' or 'dev'"):
        load_sample("train")


@pytest.mark.skipif(not FULL.is_dir(), reason="full debian-packages data not present")
def test_make_sample_rebuilds_bundled_sample_byte_for_byte(tmp_path):
    from benchmarks.make_sample import make_sample  # the benchmarks package's script

    make_sample(FULL, tmp_path)
    for rel in (
        "corpus.jsonl.gz",
        "queries.jsonl.gz",
        "train.jsonl.gz",
        "qrels/test.tsv",
        "qrels/dev.tsv",
    ):
        assert (tmp_path / rel).read_bytes() == (sample_path() / rel).read_bytes(), rel
    # The sample's qrels are a prefix of the full data's.
    full = load_beir(FULL, split="test")
    sample = load_sample("test")
    assert sample.query_ids == full.query_ids[:300]
    assert all(sample.qrels[q] == full.qrels[q] for q in sample.query_ids)
