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
    assert all(line.split("\t")[0].startswith("p") for line in lines)


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
    return code, [line.split("\t")[0] for line in captured.out.splitlines()]


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
