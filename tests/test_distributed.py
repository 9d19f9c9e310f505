"""skfusion.distributed on a real LocalCluster: two worker processes on 127.0.0.1.

The reference everywhere is one process calling ``pipeline.transform`` on all texts with
the same number of torch threads (1: conftest sets OMP_NUM_THREADS, and Dask's nanny sets
it for its workers): the cluster's output must equal it bit for bit, in input order.
"""

import copy
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")

import dask.bag as db  # noqa: E402
from distributed import Client, LocalCluster, get_task_stream  # noqa: E402
from sklearn.decomposition import TruncatedSVD  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skfusion import ConcatEmbedder, PercentileQuantizer  # noqa: E402
from skfusion.cli import main  # noqa: E402
from skfusion.datasets import load_passages  # noqa: E402
from skfusion.distributed import read_shards, transform  # noqa: E402
from skfusion.evaluation import encode  # noqa: E402
from skfusion.members import EncoderMember  # noqa: E402
from skfusion.persistence import dump  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def corpus(tiny_corpus):
    # ~250 rows: varied lengths (many ties), 20 duplicates, the empty string.
    rows = list(tiny_corpus)
    shift7, shift3 = tiny_corpus[7:] + tiny_corpus[:7], tiny_corpus[3:] + tiny_corpus[:3]
    rows += [f"{a} {b}" for a, b in zip(tiny_corpus, shift7, strict=True)]
    rows += [f"{a} {b} {a}" for a, b in zip(tiny_corpus, shift3, strict=True)]
    rows += [f"{a.upper()}" for a in tiny_corpus]
    rows += rows[5:25]
    return rows


@pytest.fixture(scope="module")
def embedder(tiny_model_paths, corpus):
    # batch_size=2: encoding tasks are whole model calls of 64 texts, so ~230 distinct
    # texts make 4 tasks and the tiny models' rows depend on their batch mates.
    lsa = make_pipeline(TfidfVectorizer(), TruncatedSVD(8, random_state=0))
    return ConcatEmbedder(
        [*tiny_model_paths, ("lsa", lsa)], batch_size=2, device="cpu",
        show_progress_bar=False,
    ).fit(corpus)  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(embedder, corpus):
    return make_pipeline(embedder, PercentileQuantizer(bits=4, random_state=0)).fit(corpus)


def _text_lengths(texts):
    return np.array([[len(t), 1.0] for t in texts])


class _ThreeBatchesPerCall(EncoderMember):
    """A user's member that asks for 3 batches per model call (as a remote one does)."""

    max_batches_per_call = 3


@pytest.mark.parametrize("texts_per_task", [None, 1, 400])
def test_tasks_are_whole_model_calls_of_the_embedders_plan(
    tiny_model_paths, corpus, texts_per_task
):
    from skfusion.distributed import _sketch, _tasks

    paged = _ThreeBatchesPerCall(query=_text_lengths, document=_text_lengths)
    emb = ConcatEmbedder(
        [*tiny_model_paths, ("paged", paged)], batch_size=2, show_progress_bar=False
    ).fit(corpus)
    plan = emb.call_plan(corpus)
    assert plan.call_sizes == (64, 64, 6)
    # The driver sees lengths and digests only, partition by partition.
    half = len(corpus) // 2
    sketches = [_sketch((None, corpus[:half]), 0), _sketch((None, corpus[half:]), 1)]
    lengths = np.concatenate([s[0] for s in sketches])
    digests = np.concatenate([s[1] for s in sketches])
    positions, sizes, row_rank = _tasks(
        emb.call_plan(digests, lengths=lengths), texts_per_task, threads=2
    )
    np.testing.assert_array_equal(positions, plan.unique[plan.order])
    ordered = [corpus[i] for i in positions]
    assert [ordered[r] for r in row_rank] == corpus
    assert sum(sizes) == len(plan.unique)
    assert len(sizes) >= (1 if texts_per_task == 400 else 2)
    # What each worker's transform does with its task (distinct texts, in order) is
    # exactly the plan's calls, member by member: whole calls of every member.
    task_calls = [[] for _ in plan.call_sizes]
    start = 0
    for size in sizes:
        task_plan = emb.call_plan(ordered[start : start + size])
        for m, calls in enumerate(task_plan.calls):
            task_calls[m] += [positions[start + call].tolist() for call in calls]
        start += size
    assert task_calls == [[c.tolist() for c in calls] for calls in plan.calls]


def _encode_keys(stream):
    return [t["key"] for t in stream.data if "skfusion-encode" in str(t["key"])]


def test_bag_bitwise_equal_to_one_process_in_input_order(client, embedder, corpus):
    reference = embedder.transform(corpus)
    with get_task_stream(client) as stream:
        # Default task size: a small corpus is still split, about four tasks a worker.
        codes = transform(embedder, db.from_sequence(corpus, npartitions=3), progress=False)
        out = codes.compute()
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert out.tobytes() == reference.tobytes()
    # The work was really split: several encoding tasks, on both workers.
    assert len(set(_encode_keys(stream))) >= 4
    workers = {t["worker"] for t in stream.data if "skfusion-encode" in str(t["key"])}
    assert len(workers) == 2


def test_dataframe_column_to_shards_with_ids(client, pipeline, corpus, tmp_path):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    ids = [f"doc-{i}" for i in range(len(corpus))]
    series = dd.from_pandas(pd.Series(corpus, index=ids), npartitions=4, sort=False)
    out = transform(pipeline, series, out_dir=tmp_path / "shards", progress=False)
    got_ids, codes = read_shards(out)
    assert got_ids == ids
    assert codes.dtype == np.uint8
    assert codes.tobytes() == pipeline.transform(corpus).tobytes()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["manifest.json"] + sorted(
        f"part-{i:05d}.npy{ext}" for i in range(4) for ext in ("", ".ids.json")
    )


def test_jsonl_files_with_role(client, pipeline, corpus, tmp_path):
    half = len(corpus) // 2
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    lines = [
        json.dumps({"_id": f"p{i}", "title": "T" if i % 3 == 0 else "", "text": t})
        for i, t in enumerate(corpus)
    ]
    first.write_text("\n".join(lines[:half]) + "\n")
    with gzip.open(second, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[half:]) + "\n")
    texts = load_passages(first) + load_passages(second)
    out = transform(
        pipeline, [first, second], out_dir=tmp_path / "out", role="document",
        progress=False,
    )  # fmt: skip
    ids, codes = read_shards(out)
    assert ids == [f"p{i}" for i in range(len(corpus))]
    assert codes.tobytes() == encode(pipeline, texts, "document").tobytes()


def _count_model_loads(dask_worker=None):
    # Counts SentenceTransformer constructions in this worker process from now on.
    from sentence_transformers import SentenceTransformer

    import skfusion.distributed as mod

    if not hasattr(mod, "_test_loads"):
        original = SentenceTransformer.__init__

        def counting(self, *args, **kwargs):
            mod._test_loads += 1
            original(self, *args, **kwargs)

        SentenceTransformer.__init__ = counting
    mod._test_loads = 0


def _loads(dask_worker=None):
    import skfusion.distributed as mod

    return mod._test_loads


def test_each_worker_loads_each_member_once(client, tiny_model_paths, corpus):
    fresh = ConcatEmbedder(tiny_model_paths, batch_size=2, show_progress_bar=False)
    fresh.fit(corpus[:2])
    client.run(_count_model_loads)
    with get_task_stream(client) as stream:
        transform(fresh, db.from_sequence(corpus, npartitions=5), texts_per_task=64,
                  progress=False).compute()  # fmt: skip
    ran = [t["worker"] for t in stream.data if "skfusion-encode" in str(t["key"])]
    assert len(ran) >= 4  # so some worker ran several encoding tasks
    # Two by-reference members, loaded once by each worker that encoded, however many
    # tasks it ran.
    loads = client.run(_loads)
    assert {w: loads[w] for w in set(ran)} == {w: 2 for w in set(ran)}
    assert all(n == 0 for w, n in loads.items() if w not in ran)


def test_worker_killed_mid_job_loses_and_duplicates_nothing(
    client, pipeline, corpus, tmp_path
):
    # batch_size=1 -> tasks of 32 texts: ~8 tasks, each long enough to kill a worker
    # while another task is still to run.
    slow = copy.deepcopy(pipeline).set_params(concatembedder__batch_size=1)
    rows = corpus * 2
    ids = list(range(len(rows)))
    reference = slow.transform(rows)
    pids_before = client.run(os.getpid)
    result, done = {}, threading.Event()

    def job():
        try:
            result["out"] = transform(
                slow, db.from_sequence(rows, npartitions=4), out_dir=tmp_path / "s",
                texts_per_task=32, progress=False,
            )  # fmt: skip
        except BaseException as exc:  # reported by the assertion below
            result["error"] = exc
        finally:
            done.set()

    def encode_states(dask_scheduler=None):
        return {
            str(k): (ts.state, ts.processing_on.address if ts.processing_on else None)
            for k, ts in dask_scheduler.tasks.items()
            if "skfusion-encode" in str(k)
        }

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    victim = None
    deadline = time.monotonic() + 120
    while victim is None and not done.is_set() and time.monotonic() < deadline:
        states = client.run_on_scheduler(encode_states)
        finished = sum(s == "memory" for s, _ in states.values())
        running = [w for s, w in states.values() if s == "processing" and w]
        if finished >= 1 and running:
            victim = running[0]
        else:
            time.sleep(0.02)
    assert victim is not None, "the job ended before a worker could be killed"
    os.kill(pids_before[victim], signal.SIGKILL)
    assert not done.is_set(), "the kill came after the job had finished"
    assert done.wait(180), "the job did not finish after the kill"
    assert "error" not in result, result.get("error")
    got_ids, codes = read_shards(result["out"])
    assert got_ids == ids
    assert codes.tobytes() == reference.tobytes()
    assert not [p.name for p in result["out"].iterdir() if p.name.endswith(".tmp")]
    # The killed process was replaced by a new one.
    client.wait_for_workers(2, timeout=60)
    assert pids_before[victim] not in client.run(os.getpid).values()


def test_progress_bar_shows_and_can_be_silenced(client, embedder, corpus, tmp_path, capsys):
    bag = db.from_sequence(corpus[:40], npartitions=2)
    transform(embedder, bag, out_dir=tmp_path / "quiet", progress=False)
    quiet = capsys.readouterr()
    assert "Completed" not in quiet.out + quiet.err
    # On stderr: stdout is the caller's (skfusion encode prints its result there).
    transform(embedder, bag, out_dir=tmp_path / "loud", progress=True)
    loud = capsys.readouterr()
    assert "Completed" in loud.err and "Completed" not in loud.out
    transform(embedder, bag, progress=True).compute()
    loud = capsys.readouterr()
    assert "Completed" in loud.err and "Completed" not in loud.out


def test_worker_local_caches(client, embedder, corpus, tmp_path):
    bag = db.from_sequence(corpus, npartitions=2)
    cache = tmp_path / "cache"
    first = transform(embedder, bag, cache_dir=cache, texts_per_task=64, progress=False)
    first = first.compute()
    # One cache per worker, named after the worker.
    assert sorted(p.name for p in cache.iterdir()) == ["0", "1"]
    again = transform(embedder, bag, cache_dir=cache, texts_per_task=64, progress=False)
    assert again.compute().tobytes() == first.tobytes()
    assert first.tobytes() == embedder.transform(corpus).tobytes()
    assert embedder.cache_dir is None  # the caller's pipeline is left as it was


def test_bad_input_is_refused_with_the_fix(client, embedder, corpus, tmp_path):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    frame = dd.from_pandas(pd.DataFrame({"text": corpus[:4]}), npartitions=1)
    with pytest.raises(ValueError, match=r"pass its text column, e.g. df\['text'\]"):
        transform(embedder, frame)
    with pytest.raises(ValueError, match=r"texts\[0\].*is not an existing file"):
        transform(embedder, [str(tmp_path / "missing.jsonl")])
    with pytest.raises(ValueError, match="texts must be a dask.bag"):
        transform(embedder, np.array(corpus[:3]))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="not an empty directory"):
        transform(embedder, db.from_sequence(corpus[:3]), out_dir=tmp_path / "full")
    with pytest.raises(NotFittedError):
        transform(ConcatEmbedder(["x"]), db.from_sequence(corpus[:3]))
    with pytest.raises(ValueError, match=r"input partition 0: texts\[1\] is None"):
        transform(embedder, db.from_sequence(["a", None], npartitions=1), progress=False)


def test_cli_encode_on_a_scheduler(client, pipeline, corpus, tmp_path, capsys):
    model = tmp_path / "model.skops"
    dump(pipeline, model)
    passages = tmp_path / "passages.jsonl"
    lines = [json.dumps({"_id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(corpus)]
    passages.write_text("".join(lines))
    out = tmp_path / "shards"
    address = client.scheduler_info()["address"]
    argv = ["encode", "--model", str(model), "--input", str(passages), "--out", str(out),
            "--role", "document", "--scheduler", address, "--quiet"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert f"encoded {len(corpus)} texts" in captured.out
    assert "Completed" not in captured.out + captured.err  # --quiet: no progress bar
    ids, codes = read_shards(out)
    assert ids == [f"p{i}" for i in range(len(corpus))]
    texts = load_passages(passages)
    assert codes.tobytes() == encode(pipeline, texts, "document").tobytes()
    with pytest.raises(SystemExit) as exc:
        main([*argv[:-3], "--workers", "0"])
    assert exc.value.code == 2
    assert "--workers: must be an integer >= 1" in capsys.readouterr().err


def _n_pipelines(dask_worker=None):
    import skfusion.distributed as mod

    return len(mod._PIPELINES)


def _wait_for_no_pipelines(client, timeout=30):
    # The release after a job that returned a dask.array runs when its last task ends.
    deadline = time.monotonic() + timeout
    while any(client.run(_n_pipelines).values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return client.run(_n_pipelines)


def test_workers_release_the_pipeline_after_each_job(client, embedder, corpus, tmp_path):
    # Every call's unpickled pipeline (and its loaded models) stayed on the workers.
    bag = db.from_sequence(corpus[:80], npartitions=2)
    codes = transform(embedder, bag, texts_per_task=64, progress=False)
    assert codes.compute().tobytes() == embedder.transform(corpus[:80]).tobytes()
    assert set(_wait_for_no_pipelines(client).values()) == {0}
    transform(embedder, bag, out_dir=tmp_path / "ok", progress=False)
    assert set(client.run(_n_pipelines).values()) == {0}
    # Failing jobs: the members cannot load on a device that does not exist.
    with pytest.raises(Exception, match="nodevice"):
        transform(embedder, bag, out_dir=tmp_path / "bad", device="nodevice",
                  progress=False)  # fmt: skip
    assert set(_wait_for_no_pipelines(client).values()) == {0}
    failing = transform(embedder, bag, device="nodevice", progress=False)
    with pytest.raises(Exception, match="nodevice"):
        failing.compute()
    assert set(_wait_for_no_pipelines(client).values()) == {0}


def test_passage_files_ids_are_checked_on_the_cluster(client, embedder, tmp_path):
    # Ids on some rows only became positions (skfusion encode refused the same file).
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"_id": "a", "text": "one"}\n{"text": "two"}\n')
    with pytest.raises(ValueError, match=r"_id on 1 of 2 rows \(line 2 has none\)"):
        transform(embedder, [mixed], out_dir=tmp_path / "s1", progress=False)
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"_id": 1, "text": "one"}\n{"_id": "1", "text": "two"}\n')
    with pytest.raises(ValueError, match=r"line 2: duplicate _id '1' \(first on line 1\)"):
        transform(embedder, [twice], out_dir=tmp_path / "s2", progress=False)
    null = tmp_path / "null.jsonl"
    null.write_text('{"_id": null, "text": "one"}\n')
    with pytest.raises(ValueError, match="line 1: _id is null"):
        transform(embedder, [null], out_dir=tmp_path / "s3", progress=False)


def test_cli_encode_on_local_workers_with_progress(pipeline, corpus, tmp_path):
    # Without --quiet it failed: "No clients found" (the bar looked for a default
    # client). The bar goes to stderr; stdout holds the result line only.
    model = tmp_path / "model.skops"
    dump(pipeline, model)
    passages = tmp_path / "passages.jsonl"
    lines = [json.dumps({"_id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(corpus)]
    passages.write_text("".join(lines))
    argv = [sys.executable, "-m", "skfusion", "encode", "--model", str(model), "--input",
            str(passages), "--workers", "2"]  # fmt: skip
    run = subprocess.run([*argv, "--out", str(tmp_path / "loud")], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == [
        f"encoded {len(corpus)} texts as documents -> shards in {tmp_path / 'loud'}"
    ]
    assert "100% Completed" in run.stderr
    ids, codes = read_shards(tmp_path / "loud")
    assert ids == [f"p{i}" for i in range(len(corpus))]
    reference = encode(pipeline, load_passages(passages), "document")
    assert codes.tobytes() == reference.tobytes()


def test_readme_dask_example_runs_as_a_script(pipeline, corpus, tmp_path):
    # As written it had no __main__ guard (Dask's spawned workers re-ran the script)
    # and loaded a model.joblib, which skfusion encode refuses.
    from pathlib import Path

    guide = Path(__file__).resolve().parents[1] / "docs" / "guide" / "distributed.md"
    code = re.findall(r"```python\n(.+?)\n```", guide.read_text(), flags=re.S)[0]
    (tmp_path / "encode_corpus.py").write_text(code + "\n")
    dump(pipeline, tmp_path / "model.skops")
    rows = [{"_id": f"d{i}", "text": t} for i, t in enumerate(corpus[:40])]
    for part in range(2):
        lines = [json.dumps(r) + "\n" for r in rows[part * 20 : (part + 1) * 20]]
        (tmp_path / f"corpus-{part}.jsonl").write_text("".join(lines))
    run = subprocess.run([sys.executable, "encode_corpus.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["40", "(40,", f"{pipeline.transform(['x']).shape[1]})"]
    ids, codes = read_shards(tmp_path / "codes")
    assert ids == [r["_id"] for r in rows]
    reference = encode(pipeline, [r["text"] for r in rows], "document")
    assert codes.tobytes() == reference.tobytes()
