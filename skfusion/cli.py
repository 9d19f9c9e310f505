"""The ``skfusion`` command: fit, encode, evaluate, search, demo.

Every subcommand prints one clear line and exits with status 2 on a user error (missing
file, bad JSON line, unknown member, model and index that do not belong together).
"""

import argparse
import json
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


class CLIError(Exception):
    """A user error: reported on one line, exit status 2."""


def _load_model(path):
    import joblib
    from sklearn.pipeline import Pipeline

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"--model: no such file: {path}")
    try:
        model = joblib.load(path)
    except Exception as exc:  # a truncated or foreign file
        raise CLIError(f"--model: {path} is not a skfusion model file ({exc})") from exc
    if not isinstance(model, Pipeline) or not hasattr(model[0], "encode_queries"):
        raise CLIError(
            f"--model: {path} holds a {type(model).__name__}, not a pipeline written by "
            "`skfusion fit`."
        )
    return model


def _read_texts(path, name):
    """(ids or None, texts) from a .txt (one per line) or .jsonl[.gz] file."""
    from .datasets import load_passages

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{name}: no such file: {path}")
    texts = load_passages(path)
    ids = None
    if ".jsonl" in path.name:
        import gzip

        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if rows and all("_id" in r for r in rows):
            ids = [str(r["_id"]) for r in rows]
    return ids, texts


def _build_pipeline(args):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline, make_pipeline

    from .decoder import MatryoshkaDecoder
    from .embedder import ConcatEmbedder
    from .lsh import RandomProjectionLSH
    from .quantize import PercentileQuantizer

    members = [(f"m{i}", m) for i, m in enumerate(args.member)]
    if args.lexical_member:
        lexical = make_pipeline(
            TfidfVectorizer(sublinear_tf=True),
            TruncatedSVD(args.lexical_member, random_state=args.random_state),
        )
        members.append(("lexical", lexical))
    if not members:
        raise CLIError("give at least one --member or --lexical-member")
    weights = args.weights
    if weights is not None and len(weights) != len(members):
        raise CLIError(
            f"--weights: {len(weights)} weights for {len(members)} members; give one "
            "per member, in order (--member ..., then --lexical-member)."
        )
    quiet = False if args.quiet else None
    steps = [
        (
            "embed",
            ConcatEmbedder(
                members, weights=weights, cache_dir=args.cache_dir, show_progress_bar=quiet
            ),
        )
    ]
    if args.output_dim:
        stops = tuple(s for s in args.stops if s <= args.n_components)
        steps.append(
            (
                "dec",
                MatryoshkaDecoder(
                    n_components=args.n_components,
                    stops=stops,
                    output_dim=args.output_dim,
                    random_state=args.random_state,
                ),
            )
        )
    if args.bits:
        steps.append(
            ("quant", PercentileQuantizer(bits=args.bits, random_state=args.random_state))
        )
    elif args.lsh_bits:
        steps.append(
            ("lsh", RandomProjectionLSH(args.lsh_bits, random_state=args.random_state))
        )
    return Pipeline(steps)


def _fit(args):
    import joblib

    _, passages = _read_texts(args.train, "--train")
    pipe = _build_pipeline(args).fit(passages)
    joblib.dump(pipe, args.out)
    width = pipe.transform(passages[:1]).shape[1]
    print(f"fitted on {len(passages)} passages -> {args.out} (output width {width})")
    return 0


def _encode(args):
    import numpy as np

    from .evaluation import encode

    model = _load_model(args.model)
    if args.scheduler is not None or args.workers is not None:
        from .distributed import encode_on_cluster

        n = encode_on_cluster(
            model, [args.input], args.out, role=args.role, scheduler=args.scheduler,
            n_workers=args.workers, progress=not args.quiet,
        )  # fmt: skip
        print(f"encoded {n} texts as {args.role}s -> shards in {args.out}")
        return 0
    ids, texts = _read_texts(args.input, "--input")
    out = encode(model, texts, args.role)
    np.save(args.out, out)
    if ids is not None:
        Path(str(args.out) + ".ids.json").write_text(json.dumps(ids))
    print(
        f"encoded {len(texts)} texts as {args.role}s -> {args.out} {out.shape} {out.dtype}"
    )
    return 0


def _evaluate(args):
    from .datasets import load_beir
    from .evaluation import evaluate_retrieval

    model = _load_model(args.model)
    data = load_beir(args.beir, split=args.split)
    scores = evaluate_retrieval(model, data, metrics=("ndcg@10", "recall@100"))
    full = 4 * model[0].n_features_out_
    scores["compression"] = full / scores["bytes_per_vector"]
    print(json.dumps({k: round(v, 6) for k, v in scores.items()}))
    return 0


def _search(args):
    import numpy as np

    from .evaluation import _final_quantizer, encode
    from .search import search

    model = _load_model(args.model)
    index = Path(args.index)
    if not index.is_file():
        raise CLIError(f"--index: no such file: {index}")
    database = np.load(index)
    query = encode(model, [args.query], "query")
    if database.ndim != 2 or database.shape[1] != query.shape[1]:
        raise CLIError(
            f"--index: {index} has rows of width {database.shape[-1]} but the model "
            f"outputs width {query.shape[1]}; encode the index with this model."
        )
    if database.dtype != query.dtype:
        raise CLIError(
            f"--index: {index} holds {database.dtype} but the model outputs "
            f"{query.dtype}; encode the index with this model."
        )
    sidecar = Path(str(index) + ".ids.json")
    ids = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    scores, rows = search(
        query, database, k=min(args.k, len(database)), quantizer=_final_quantizer(model)
    )
    for s, i in zip(scores[0], rows[0], strict=True):
        print(f"{ids[i] if ids else i}\t{s:.4f}")
    return 0


def _demo(args):
    from .demo import run_demo

    run_demo(cache_dir=args.cache_dir, quiet=args.quiet)
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skfusion",
        description="Concatenate, compress and quantize small text-embedding models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help):
        p = sub.add_parser(name, help=help)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=func)
        return p

    fit = add("fit", _fit, "fit a pipeline on unlabelled passages")
    fit.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME_OR_PATH",
        help="a sentence-transformers model (hub name or local path)",
    )
    fit.add_argument(
        "--lexical-member",
        type=int,
        metavar="DIM",
        help="add a TF-IDF -> TruncatedSVD(DIM) member",
    )
    fit.add_argument("--weights", type=float, nargs="+", help="one weight per member")
    fit.add_argument("--train", required=True, help="passages .jsonl[.gz] or .txt")
    fit.add_argument("--n-components", type=int, default=768)
    fit.add_argument(
        "--stops", type=int, nargs="+", default=[32, 64, 128, 200, 256, 300, 384, 512, 768]
    )
    fit.add_argument(
        "--output-dim", type=int, help="decoder output width (no decoder if unset)"
    )
    codes = fit.add_mutually_exclusive_group()
    codes.add_argument("--bits", type=int, help="percentile codes of B bits per dimension")
    codes.add_argument("--lsh-bits", type=int, help="random-projection sign bits")
    fit.add_argument("--cache-dir", help="embedding cache folder")
    fit.add_argument("--random-state", type=int, default=0)
    fit.add_argument("--out", required=True, help="model file (joblib)")

    enc = add("encode", _encode, "encode texts with a fitted model")
    enc.add_argument("--model", required=True)
    enc.add_argument("--input", required=True, help="texts .jsonl[.gz] or .txt")
    enc.add_argument("--role", choices=("query", "document"), default="document")
    enc.add_argument("--out", required=True, help=".npy file (a directory with a cluster)")
    cluster = enc.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler to run on")
    cluster.add_argument(
        "--workers", type=int, metavar="N", help="run on a local Dask cluster of N workers"
    )

    ev = add("evaluate", _evaluate, "nDCG@10, recall@100 and size on a BEIR folder")
    ev.add_argument("--model", required=True)
    ev.add_argument("--beir", required=True, help="BEIR folder")
    ev.add_argument("--split", default="test")

    se = add("search", _search, "top-k ids of an encoded index for one query")
    se.add_argument("--model", required=True)
    se.add_argument("--index", required=True, help=".npy written by `skfusion encode`")
    se.add_argument("--query", required=True)
    se.add_argument("-k", type=int, default=10)

    demo = add("demo", _demo, "the main job on the bundled sample and the offline MiniLM")
    demo.add_argument("--cache-dir", default=None, help="embedding cache folder")
    return parser


def _silence_libraries():
    # The command owns its process, so turning off library progress output is fine here.
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quiet:
        _silence_libraries()
    try:
        return args.func(args)
    except (CLIError, FileNotFoundError, ValueError, ImportError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception held
        print(f"skfusion {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
