"""The ``skfusion`` command: fit, encode, evaluate, search, demo.

Every subcommand prints one clear line and exits with status 2 on a user error (missing
file, bad JSON line, unknown member, model and index that do not belong together).
Models are written and read as ``.skops`` files (:mod:`skfusion.persistence`); a pickle
(joblib) model runs any code it holds when loaded, so it is read only with
``--trust-pickle``. An index is one ``.npz`` holding the vectors, their ids and the
fingerprint of the model that encoded them, so ``search`` refuses an index from
another model.
"""

import argparse
import glob
import json
import sys
import tempfile
from pathlib import Path

__all__ = ["build_parser", "main"]

# --n-components when not given: the decoder's own default width.
_DEFAULT_WIDTH = 768


class CLIError(Exception):
    """A user error: reported on one line, exit status 2."""


def _int_at_least(low, high=None):
    """An argparse type: an int in ``[low, high]``, with the range in its error."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {value}")
        return value

    return parse


def _out_path(value, suffix, flag):
    """The file ``flag`` names, with ``suffix`` added if it has none, checked writable.

    Checked before any work, so a long fit or encode never ends in "cannot write".
    """
    path = Path(value)
    if not path.suffix:
        path = path.with_name(path.name + suffix)
    elif path.suffix.lower() != suffix:
        raise CLIError(f"{flag}: {value} must be a {suffix} file (or have no suffix).")
    if path.exists() and not path.is_file():
        raise CLIError(f"{flag}: {path} exists and is not a file.")
    folder = path.parent
    if not folder.is_dir():
        raise CLIError(f"{flag}: the folder {folder} does not exist.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CLIError(f"{flag}: cannot write in {folder}: {exc.strerror}.") from exc
    return path


def _load_model(args):
    from sklearn.pipeline import Pipeline

    path = Path(args.model)
    if not path.is_file():
        raise CLIError(f"--model: no such file: {path}")
    if path.suffix.lower() == ".skops":
        from . import persistence

        try:
            model = persistence.load(path)
        except ValueError as exc:  # types it does not trust
            raise CLIError(f"--model: {exc}") from exc
        except Exception as exc:  # a truncated or foreign file
            raise CLIError(
                f"--model: {path} is not a skfusion model file ({type(exc).__name__}: "
                f"{exc})"
            ) from exc
    elif not args.trust_pickle:
        # Checked before opening the file: unpickling is what runs a payload.
        raise CLIError(
            f"--model: {path} is not a .skops file. Loading a pickle (joblib) file runs "
            "any code it holds; pass --trust-pickle only for a file you made yourself, "
            "or refit with `skfusion fit ... --out MODEL.skops`."
        )
    else:
        import joblib

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


def _read_passages(path, flag, limit=None):
    from .datasets import load_passages

    path = Path(path)
    if not path.is_file():
        raise CLIError(f"{flag}: no such file: {path}")
    try:
        return load_passages(path, limit=limit)
    except UnicodeDecodeError as exc:
        raise CLIError(
            f"{flag}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "convert it to UTF-8."
        ) from exc


def _read_ids(path):
    """The ``_id`` of every row of a .jsonl[.gz] file, or None (no ids, or a .txt)."""
    import gzip

    name = path.name.lower()
    if ".jsonl" not in name:
        return None
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    has_id = ["_id" in r for r in rows]
    if not any(has_id):
        return None
    if not all(has_id):
        # Row numbers for some rows and ids for others would be ambiguous.
        raise CLIError(
            f"--input: {path} gives an _id on {sum(has_id)} of {len(rows)} rows; give "
            f"every row an _id, or none (rows are then named by number)."
        )
    return [str(r["_id"]) for r in rows]


def _read_texts(path, flag):
    """(ids or None, texts) from a .txt (one per line) or .jsonl[.gz] file."""
    texts = _read_passages(path, flag)
    return _read_ids(Path(path)), texts


def _training_passages(patterns, limit):
    """Passages of every file (or glob) in order, at most ``limit`` in all."""
    files = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise CLIError(f"--train: no file matches {pattern}")
            files.extend(matches)
        else:
            files.append(pattern)
    passages = []
    for path in files:
        left = None if limit is None else limit - len(passages)
        if left == 0:
            break
        passages.extend(_read_passages(path, "--train", limit=left))
    return passages


def _decoder_settings(args):
    """n_components and stops for the decoder, checked against each other."""
    n = args.n_components if args.n_components is not None else _DEFAULT_WIDTH
    if args.output_dim is None:
        if args.n_components is not None or args.stops is not None:
            raise CLIError(
                "--n-components and --stops configure the decoder, which is added only "
                "with --output-dim; give --output-dim too."
            )
        return None
    if args.output_dim > n:
        raise CLIError(
            f"--output-dim {args.output_dim} exceeds --n-components {n}: the decoder "
            "outputs at most n_components dims; lower --output-dim or raise "
            "--n-components."
        )
    if args.stops is None:
        return n, "auto"  # the paper's stops below n_components, plus n_components
    stops = tuple(args.stops)
    outside = [s for s in stops if s > n]
    if outside:
        raise CLIError(
            f"--stops {' '.join(map(str, outside))} exceed --n-components {n}; give stops "
            "<= --n-components, or raise --n-components."
        )
    if any(b <= a for a, b in zip(stops, stops[1:], strict=False)):
        raise CLIError(
            f"--stops must be strictly increasing, got {' '.join(map(str, stops))}."
        )
    return n, stops


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
    decoder = _decoder_settings(args)
    quiet = False if args.quiet else None
    steps = [
        (
            "embed",
            ConcatEmbedder(
                members, weights=weights, cache_dir=args.cache_dir, show_progress_bar=quiet
            ),
        )
    ]
    if decoder is not None:
        n_components, stops = decoder
        steps.append(
            (
                "dec",
                MatryoshkaDecoder(
                    n_components=n_components,
                    stops=stops,
                    output_dim=args.output_dim,
                    random_state=args.random_state,
                ),
            )
        )
    if args.bits is not None:
        steps.append(
            ("quant", PercentileQuantizer(bits=args.bits, random_state=args.random_state))
        )
    elif args.lsh_bits is not None:
        steps.append(
            ("lsh", RandomProjectionLSH(args.lsh_bits, random_state=args.random_state))
        )
    return Pipeline(steps)


def _fit(args):
    from .persistence import dump

    pipe = _build_pipeline(args)
    out = _out_path(args.out, ".skops", "--out")
    passages = _training_passages(args.train, args.max_passages)
    if not passages:
        raise CLIError("--train: the files hold no passages.")
    pipe.fit(passages)
    dump(pipe, out)
    width = pipe.transform(passages[:1]).shape[1]
    print(f"fitted on {len(passages)} passages -> {out} (output width {width})")
    return 0


def _encode(args):
    from .evaluation import encode
    from .persistence import save_index

    model = _load_model(args)
    if args.scheduler is not None or args.workers is not None:
        from .distributed import encode_on_cluster

        n = encode_on_cluster(
            model, [args.input], args.out, role=args.role, scheduler=args.scheduler,
            n_workers=args.workers, progress=not args.quiet,
        )  # fmt: skip
        print(f"encoded {n} texts as {args.role}s -> shards in {args.out}")
        return 0
    out = _out_path(args.out, ".npz", "--out")
    ids, texts = _read_texts(args.input, "--input")
    if not texts:
        raise CLIError(f"--input: {args.input} holds no texts.")
    vectors = encode(model, texts, args.role)
    save_index(out, vectors, ids=ids, model=model)
    print(
        f"encoded {len(texts)} texts as {args.role}s -> {out} {vectors.shape} "
        f"{vectors.dtype}"
    )
    return 0


def _evaluate(args):
    from .datasets import load_beir
    from .evaluation import evaluate_retrieval

    model = _load_model(args)
    data = load_beir(args.beir, split=args.split)
    scores = evaluate_retrieval(model, data, metrics=("ndcg@10", "recall@100"))
    full = 4 * model[0].n_features_out_
    scores["compression"] = full / scores["bytes_per_vector"]
    print(json.dumps({k: round(v, 6) for k, v in scores.items()}))
    return 0


def _search(args):
    from .evaluation import code_step, encode
    from .persistence import load_index
    from .search import search

    model = _load_model(args)
    index = Path(args.index)
    if (
        not index.is_file()
        and not index.suffix
        and index.with_name(index.name + ".npz").is_file()
    ):
        index = index.with_name(index.name + ".npz")  # as `encode --out` named it
    if not index.is_file():
        raise CLIError(f"--index: no such file: {index}")
    try:
        database, ids = load_index(index, model=model)
    except ValueError as exc:
        raise CLIError(f"--index: {exc}") from exc
    if len(database) == 0:
        raise CLIError(f"--index: {index} holds no rows; encode a non-empty input.")
    query = encode(model, [args.query], "query")
    scores, rows = search(
        query, database, k=min(args.k, len(database)), quantizer=code_step(model)
    )
    for s, i in zip(scores[0], rows[0], strict=True):
        print(f"{ids[i]}\t{s:.4f}")
    return 0


def _demo(args):
    from .demo import run_demo

    run_demo(cache_dir=args.cache_dir, quiet=args.quiet, readme=args.update_readme)
    return 0


def _export_web(args):
    from .web import export_web

    model = _load_model(args)
    ids, texts = _read_texts(args.corpus, "--corpus")
    if not texts:
        raise CLIError(f"--corpus: {args.corpus} holds no texts.")
    export_web(
        model, args.outdir, texts, ids=ids, node_modules=args.node_modules,
        title=args.title, force=args.force,
    )  # fmt: skip
    print(f"wrote {args.outdir}; serve it with: python -m http.server -d {args.outdir}")
    return 0


_TRUST_PICKLE_HELP = (
    "also load a pickle (joblib) --model file. UNSAFE: unpickling runs any code the file "
    "holds; use only for files you made yourself. Without it only .skops files load."
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skfusion",
        description="Concatenate, compress and quantize small text-embedding models.",
        epilog="Models are .skops files, which load without running code; a pickle "
        "(joblib) model loads only with --trust-pickle, which runs any code it holds.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help, model=False):
        p = sub.add_parser(name, help=help)
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if model:
            p.add_argument("--model", required=True, help=".skops file from `skfusion fit`")
            p.add_argument("--trust-pickle", action="store_true", help=_TRUST_PICKLE_HELP)
        p.set_defaults(func=func)
        return p

    positive = _int_at_least(1)
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
        type=positive,
        metavar="DIM",
        help="add a TF-IDF -> TruncatedSVD(DIM) member",
    )
    fit.add_argument("--weights", type=float, nargs="+", help="one weight per member")
    fit.add_argument(
        "--train",
        required=True,
        nargs="+",
        metavar="FILE_OR_GLOB",
        help="passages: .jsonl[.gz] or .txt[.gz] files or globs (quoted), read in order",
    )
    fit.add_argument(
        "--max-passages",
        type=_int_at_least(1),
        metavar="N",
        help="fit on the first N passages of the --train files (default: all)",
    )
    fit.add_argument(
        "--output-dim",
        type=positive,
        help="add a Matryoshka decoder with this output width (no decoder if unset)",
    )
    fit.add_argument("--n-components", type=positive, help="decoder width (default 768)")
    fit.add_argument(
        "--stops",
        type=positive,
        nargs="+",
        help="decoder Matryoshka stops, increasing, each <= --n-components (default: "
        "the decoder's stops='auto', the paper's stops below --n-components, and it)",
    )
    codes = fit.add_mutually_exclusive_group()
    codes.add_argument(
        "--bits", type=_int_at_least(1, 8), help="percentile codes of B (1..8) bits per dim"
    )
    codes.add_argument("--lsh-bits", type=positive, help="random-projection sign bits")
    fit.add_argument("--cache-dir", help="embedding cache folder")
    fit.add_argument("--random-state", type=int, default=0)
    fit.add_argument("--out", required=True, help="model file (.skops; added if no suffix)")

    enc = add("encode", _encode, "encode texts with a fitted model", model=True)
    enc.add_argument("--input", required=True, help="texts .jsonl[.gz] or .txt")
    enc.add_argument("--role", choices=("query", "document"), default="document")
    enc.add_argument(
        "--out",
        required=True,
        help="index file (.npz: vectors, ids, model fingerprint; .npz added if no suffix); "
        "with --scheduler / --workers, a directory of shards",
    )
    cluster = enc.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler to run on")
    cluster.add_argument(
        "--workers",
        type=_int_at_least(1),
        metavar="N",
        help="run on a local Dask cluster of N workers",
    )

    ev = add(
        "evaluate", _evaluate, "nDCG@10, recall@100 and size on a BEIR folder", model=True
    )
    ev.add_argument("--beir", required=True, help="BEIR folder")
    ev.add_argument("--split", default="test")

    se = add("search", _search, "top-k ids of an encoded index for one query", model=True)
    se.add_argument("--index", required=True, help=".npz written by `skfusion encode`")
    se.add_argument("--query", required=True)
    se.add_argument("-k", type=positive, default=10)

    demo = add("demo", _demo, "the main job on the bundled sample and the offline MiniLM")
    demo.add_argument("--cache-dir", default=None, help="embedding cache folder")
    demo.add_argument(
        "--update-readme",
        metavar="README",
        help="also write this run's table into README's demo block (between its "
        "demo:begin and demo:end lines)",
    )
    web = add("export-web", _export_web, "a static search page running MODEL in a browser")
    web.add_argument("model", help=".skops file from `skfusion fit`")
    web.add_argument("outdir", help="folder to write (index.html, ONNX models, codes)")
    web.add_argument("--corpus", required=True, help="documents .jsonl[.gz] or .txt")
    web.add_argument(
        "--node-modules",
        help="npm folder with onnxruntime-web and @huggingface/transformers "
        "(default: $SKFUSION_NODE_MODULES, then ./node_modules)",
    )
    web.add_argument(
        "--title",
        default="skfusion search",
        help="the page's title and heading (shown as text, never as HTML)",
    )
    web.add_argument("--trust-pickle", action="store_true", help=_TRUST_PICKLE_HELP)
    web.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty folder that is no earlier export, replacing its "
        "files of the same names (index.html, skfusion.json, ...)",
    )
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
