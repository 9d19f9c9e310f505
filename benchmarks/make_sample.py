"""Rebuild the bundled sample ``skfusion/data/debian-sample`` from debian-packages.

The sample is small enough to ship in the wheel (about 0.5 MB) and big enough for the
demo and the tests to measure something real:

* queries: the first 300 queries of ``qrels/test.tsv`` and the first 200 of
  ``qrels/dev.tsv`` (in file order), with their qrels rows unchanged;
* corpus: every document those qrels name, plus other corpus documents drawn at random
  (``numpy.random.default_rng(0)``) until there are 2,000, kept in the original corpus
  order;
* train: the first 2,000 passages of ``train.jsonl.gz`` (unlabelled, for fitting
  decoders and quantizers; disjoint from the corpus by construction of the source data).

The output is byte-for-byte deterministic (gzip with ``mtime=0`` and no file name).

Usage::

    python -m benchmarks.make_sample [--source DIR]   # default: _features.data_dir()
"""

import argparse
import gzip
import io
import json
from pathlib import Path

import numpy as np

from ._bench import ROOT
from ._features import data_dir

N_QUERIES = {"test": 300, "dev": 200}
N_CORPUS = 2000
N_TRAIN = 2000
SEED = 0

DEFAULT_DEST = ROOT / "skfusion" / "data" / "debian-sample"


def _read_jsonl(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_gz(path, text):
    # mtime=0 and an empty file name keep the archive identical across rebuilds.
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            with io.TextIOWrapper(gz, encoding="utf-8", newline="\n") as f:
                f.write(text)


def _jsonl(rows):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def make_sample(source, dest):
    source, dest = Path(source), Path(dest)
    qrels = {}
    for split, n in N_QUERIES.items():
        lines = (source / "qrels" / f"{split}.tsv").read_text("utf-8").splitlines()
        header, rows = lines[0], [r for r in lines[1:] if r.strip()]
        kept, qids = [], []
        for row in rows:
            qid = row.split("\t")[0]
            if qid not in qids:
                if len(qids) == n:
                    break
                qids.append(qid)
            kept.append(row)
        qrels[split] = (header, kept)

    wanted_q = {r.split("\t")[0] for _, rows in qrels.values() for r in rows}
    wanted_d = {r.split("\t")[1] for _, rows in qrels.values() for r in rows}

    corpus = _read_jsonl(source / "corpus.jsonl.gz")
    others = [i for i, d in enumerate(corpus) if d["_id"] not in wanted_d]
    n_extra = N_CORPUS - len(wanted_d)
    extra = set(np.random.default_rng(SEED).choice(others, n_extra, replace=False).tolist())
    sample_corpus = [d for i, d in enumerate(corpus) if d["_id"] in wanted_d or i in extra]
    assert len(sample_corpus) == N_CORPUS, len(sample_corpus)

    queries = [q for q in _read_jsonl(source / "queries.jsonl.gz") if q["_id"] in wanted_q]
    assert len(queries) == len(wanted_q)

    train = []
    with gzip.open(source / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            if len(train) == N_TRAIN:
                break
            if line.strip():
                train.append(json.loads(line))

    (dest / "qrels").mkdir(parents=True, exist_ok=True)
    _write_gz(dest / "corpus.jsonl.gz", _jsonl(sample_corpus))
    _write_gz(dest / "queries.jsonl.gz", _jsonl(queries))
    _write_gz(dest / "train.jsonl.gz", _jsonl(train))
    for split, (header, rows) in qrels.items():
        text = "\n".join([header, *rows]) + "\n"
        (dest / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return {
        "corpus": len(sample_corpus),
        "queries": len(queries),
        "train": len(train),
        **{f"qrels/{s}": len(rows) for s, (_, rows) in qrels.items()},
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=None, help="debian-packages (default: found)"
    )
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    args = parser.parse_args(argv)
    counts = make_sample(args.source or data_dir(), args.dest)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
