"""The ``skfusion`` command end to end on tiny local models and a tiny BEIR folder."""

import gzip
import json

import joblib
import numpy as np
import pytest

from skfusion.cli import main
from skfusion.datasets import load_sample, sample_path


@pytest.fixture
def passages_file(tmp_path, tiny_corpus):
    path = tmp_path / "passages.jsonl"
    path.write_text(
        "".join(
            json.dumps({"_id": f"p{i}", "text": t}) + "\n"
            for i, t in enumerate(tiny_corpus)
        )
    )
    return path


@pytest.fixture
def model_file(tmp_path, passages_file, tiny_model_paths):
    out = tmp_path / "model.joblib"
    argv = [
        "fit", "--member", tiny_model_paths[0], "--lexical-member", "8",
        "--train", str(passages_file), "--n-components", "16", "--stops", "4", "8", "16",
        "--output-dim", "8", "--bits", "2", "--out", str(out), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_fit_writes_a_pipeline_that_loads(model_file):
    pipe = joblib.load(model_file)
    assert [name for name, _ in pipe.steps] == ["embed", "dec", "quant"]
    codes = pipe.transform(["a tiny sentence"])
    assert codes.dtype == np.uint8 and codes.shape == (1, 8) and codes.max() <= 3


def test_encode_then_search_returns_ids(tmp_path, model_file, passages_file, capsys):
    codes = tmp_path / "codes.npy"
    assert main(["encode", "--model", str(model_file), "--input", str(passages_file),
                 "--role", "document", "--out", str(codes)]) == 0  # fmt: skip
    assert np.load(codes).shape[1] == 8
    capsys.readouterr()
    query = json.loads(passages_file.read_text().splitlines()[3])["text"]
    assert main(["search", "--model", str(model_file), "--index", str(codes),
                 "--query", query, "-k", "3"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert all(line.split("\t")[0].startswith("p") for line in lines)


def test_evaluate_prints_metrics_and_size(tmp_path, model_file, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_file), "--beir", str(sample_path()),
                 "--split", "dev"]) == 0  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"ndcg@10", "recall@100", "bytes_per_vector", "compression"}
    assert 0.0 <= scores["ndcg@10"] <= 1.0
    assert scores["bytes_per_vector"] == 2  # 8 dims x 2 bits
    pipe = joblib.load(model_file)
    assert scores["compression"] == 4 * pipe[0].n_features_out_ / 2
    assert len(load_sample("dev").query_ids) == 200


def _error(capsys):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("skfusion ")]
    assert len(errors) == 1, err
    return errors[0]


def test_missing_train_file_is_a_one_line_error(tmp_path, tiny_model_paths, capsys):
    argv = ["fit", "--member", tiny_model_paths[0], "--train", str(tmp_path / "nope.jsonl"),
            "--out", str(tmp_path / "m.joblib")]  # fmt: skip
    assert main(argv) == 2
    assert "nope.jsonl" in _error(capsys)


def test_bad_json_line_names_its_line(tmp_path, tiny_model_paths, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    argv = ["fit", "--member", tiny_model_paths[0], "--train", str(bad),
            "--out", str(tmp_path / "m.joblib")]  # fmt: skip
    assert main(argv) == 2
    assert "line 2" in _error(capsys)


def test_unknown_member_is_a_one_line_error(tmp_path, passages_file, capsys):
    argv = ["fit", "--member", str(tmp_path / "no-such-model"), "--train",
            str(passages_file), "--out", str(tmp_path / "m.joblib")]  # fmt: skip
    assert main(argv) == 2
    assert "no-such-model" in _error(capsys)


def test_index_from_another_model_is_refused(tmp_path, model_file, capsys):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((5, 3), dtype=np.uint8))
    assert main(["search", "--model", str(model_file), "--index", str(wrong),
                 "--query", "x"]) == 2  # fmt: skip
    assert "width" in _error(capsys)


def test_model_file_that_is_not_a_pipeline_is_refused(tmp_path, capsys):
    other = tmp_path / "other.joblib"
    joblib.dump({"not": "a model"}, other)
    assert main(["evaluate", "--model", str(other), "--beir", str(sample_path())]) == 2
    assert "not a pipeline" in _error(capsys)


def test_gzipped_passages_are_read(tmp_path, tiny_corpus, tiny_model_paths):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in tiny_corpus)
    out = tmp_path / "m.joblib"
    argv = ["fit", "--member", tiny_model_paths[1], "--train", str(path),
            "--lsh-bits", "64", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert joblib.load(out).transform(["x"]).shape == (1, 8)
