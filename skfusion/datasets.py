"""Retrieval data in the BEIR layout, and the bundled debian-packages sample.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}`` per line),
``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/<split>.tsv`` (``query-id``,
``corpus-id``, ``score``, tab separated, with a header line); the jsonl files may be
gzipped (``.jsonl.gz``). :func:`load_beir` reads one split of such a folder,
:func:`load_sample` the small sample shipped with skfusion, :func:`load_passages`
unlabelled passages for fitting decoders and quantizers, and :func:`load_passage_ids`
their ids.
"""

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "RetrievalDataset",
    "load_beir",
    "load_passage_ids",
    "load_passages",
    "load_sample",
    "load_sample_passages",
    "sample_path",
]

_SAMPLE = "debian-sample"


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _find(folder: Path, stem: str) -> Path:
    """Return ``folder/stem.jsonl`` or ``folder/stem.jsonl.gz``, whichever exists."""
    candidates = (folder / f"{stem}.jsonl", folder / f"{stem}.jsonl.gz")
    found = [p for p in candidates if p.is_file()]
    folders = [p for p in candidates if p.is_dir()]
    if not found and folders:
        raise FileNotFoundError(f"{folders[0]} is a directory, not a file.")
    if not found:
        raise FileNotFoundError(
            f"No {stem}.jsonl or {stem}.jsonl.gz in {folder}: a BEIR folder needs "
            "corpus.jsonl[.gz], queries.jsonl[.gz] and qrels/<split>.tsv."
        )
    if len(found) == 2:
        raise ValueError(
            f"Both {found[0].name} and {found[1].name} exist in {folder}; remove "
            "one so that it is clear which to read."
        )
    return found[0]


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a (gzipped) jsonl."""
    with _open_text(path) as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{path}, line {lineno}: not valid JSON ({exc.msg})."
                ) from None
            if not isinstance(obj, dict):
                raise ValueError(
                    f"{path}, line {lineno}: expected a JSON object, got "
                    f"{type(obj).__name__}."
                )
            yield lineno, obj


def _field(path: Path, lineno: int, obj: dict, key: str, *, optional: bool = False) -> str:
    value = obj.get(key)
    if value is None and optional:
        return ""
    if key == "_id" and isinstance(value, int) and not isinstance(value, bool):
        # BEIR's own loader reads ids with str(); qrels ids are strings.
        return str(value)
    if not isinstance(value, str):
        what = "missing" if key not in obj else f"a {type(value).__name__}, not a string"
        raise ValueError(f"{path}, line {lineno}: field {key!r} is {what}.")
    return value


def _read_docs(path: Path, *, with_title: bool) -> tuple[list[str], list[str]]:
    ids, texts, seen = [], [], {}
    for lineno, obj in _read_jsonl(path):
        doc_id = _field(path, lineno, obj, "_id")
        if doc_id in seen:
            raise ValueError(
                f"{path}, line {lineno}: duplicate _id {doc_id!r} (first on line "
                f"{seen[doc_id]})."
            )
        seen[doc_id] = lineno
        text = _field(path, lineno, obj, "text")
        if with_title:
            # The way BEIR and MTEB join them.
            text = (_field(path, lineno, obj, "title", optional=True) + " " + text).strip()
        ids.append(doc_id)
        texts.append(text)
    return ids, texts


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != 3:
                raise ValueError(
                    f"{path}, line {lineno}: expected 3 tab-separated fields "
                    f"(query-id, corpus-id, score), got {len(parts)}: {line!r}."
                )
            qid, doc_id, grade = parts
            try:
                grade = int(grade)
            except ValueError:
                if lineno == 1:  # the header line ("query-id corpus-id score")
                    continue
                raise ValueError(
                    f"{path}, line {lineno}: score must be an integer, got {grade!r}."
                ) from None
            judged = qrels.setdefault(qid, {})
            if doc_id in judged:
                raise ValueError(
                    f"{path}, line {lineno}: duplicate judgement for query {qid!r} and "
                    f"document {doc_id!r}."
                )
            judged[doc_id] = grade
    return qrels


def _missing(kind: str, ids, known, qrels_path: Path, source: Path):
    absent = sorted(set(ids) - set(known))
    if absent:
        shown = ", ".join(repr(i) for i in absent[:5])
        raise ValueError(
            f"{len(absent)} {kind} id(s) in {qrels_path} are absent from {source} "
            f"(e.g. {shown}); the qrels and the {source.name} file do not belong "
            "together."
        )


@dataclass(frozen=True, repr=False)
class RetrievalDataset:
    """One split of a retrieval data set, as returned by :func:`load_beir`.

    Attributes
    ----------
    corpus_ids : list of str
        Document ids, in file order.
    corpus_texts : list of str
        Document texts, ``(title + " " + text).strip()`` as BEIR and MTEB join them.
    query_ids : list of str
        Ids of the queries that appear in the split's qrels, in file order.
    query_texts : list of str
        Their texts.
    qrels : dict of str to dict of str to int
        ``{query_id: {doc_id: grade}}``; a document is relevant when its grade is > 0.
    split : str
        The qrels split that was read.
    path : pathlib.Path
        The BEIR folder.

    Examples
    --------
    >>> from skfusion.datasets import load_sample
    >>> data = load_sample("dev")
    >>> len(data.query_ids) == len(data.query_texts), data.split
    (True, 'dev')
    >>> all(d in data.corpus_ids for q in data.qrels.values() for d in q)
    True
    """

    corpus_ids: list
    corpus_texts: list
    query_ids: list
    query_texts: list
    qrels: dict
    split: str
    path: Path

    def __repr__(self):
        return (
            f"RetrievalDataset(path={str(self.path)!r}, split={self.split!r}, "
            f"n_corpus={len(self.corpus_ids)}, n_queries={len(self.query_ids)})"
        )


def load_beir(path, split: str = "test") -> RetrievalDataset:
    """Read one split of a retrieval data set in the BEIR layout.

    Parameters
    ----------
    path : str or path-like
        A folder with ``corpus.jsonl[.gz]``, ``queries.jsonl[.gz]`` and
        ``qrels/<split>.tsv``.
    split : str, default="test"
        Which qrels file to read. Only the queries judged in it are returned.

    Returns
    -------
    dataset : RetrievalDataset
        Corpus ids and texts (title joined to text), queries of the split, and qrels.

    Raises
    ------
    FileNotFoundError
        When the folder or one of its files is missing.
    ValueError
        For a malformed line (the message gives the file and line number), a duplicate
        id, or a qrels id absent from the corpus or the queries.

    See Also
    --------
    load_sample : The bundled debian-packages sample, read with this function.
    skfusion.metrics.evaluate : Score a run against ``dataset.qrels``.

    Notes
    -----
    Integer ``_id`` values are read as strings, as BEIR's own loader does. Scores in the
    qrels must be integers (``pytrec_eval`` and MTEB require it).

    Examples
    --------
    >>> from skfusion.datasets import load_beir, sample_path
    >>> data = load_beir(sample_path(), split="dev")
    >>> len(data.query_ids), len(data.corpus_ids)
    (200, 2000)
    >>> qid = data.query_ids[0]
    >>> data.qrels[qid]
    {'ceni': 1}
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FileNotFoundError(
            f"BEIR folder {str(folder)!r} is a file; give the folder that holds "
            "corpus.jsonl[.gz], queries.jsonl[.gz] and qrels/."
        )
    if not folder.is_dir():
        raise FileNotFoundError(f"BEIR folder {str(folder)!r} does not exist.")
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a non-empty string such as 'test', got {split!r}.")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if qrels_path.is_dir():
        raise FileNotFoundError(f"{qrels_path} is a directory, not a qrels file.")
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise FileNotFoundError(
            f"No qrels file {qrels_path}; available splits: {available or 'none'}."
        )
    corpus_path = _find(folder, "corpus")
    queries_path = _find(folder, "queries")

    qrels = _read_qrels(qrels_path)
    corpus_ids, corpus_texts = _read_docs(corpus_path, with_title=True)
    all_qids, all_qtexts = _read_docs(queries_path, with_title=False)
    _missing("query", qrels, all_qids, qrels_path, queries_path)
    _missing(
        "document",
        (d for judged in qrels.values() for d in judged),
        corpus_ids,
        qrels_path,
        corpus_path,
    )
    keep = [i for i, qid in enumerate(all_qids) if qid in qrels]
    return RetrievalDataset(
        corpus_ids=corpus_ids,
        corpus_texts=corpus_texts,
        query_ids=[all_qids[i] for i in keep],
        query_texts=[all_qtexts[i] for i in keep],
        qrels=qrels,
        split=split,
        path=folder,
    )


def load_passages(path, *, limit: int | None = None) -> list[str]:
    """Read unlabelled passages, e.g. to fit a decoder or a quantizer.

    Parameters
    ----------
    path : str or path-like
        A ``.jsonl`` / ``.jsonl.gz`` file of ``{"text", "title"?}`` objects (title
        joined to text as in :func:`load_beir`), or a ``.txt`` / ``.txt.gz`` file with
        one passage per line (blank lines are skipped).
    limit : int, default=None
        Read only the first ``limit`` passages. ``None`` reads them all.

    Returns
    -------
    passages : list of str

    See Also
    --------
    load_sample_passages : The 2,000 training passages of the bundled sample.

    Examples
    --------
    >>> from skfusion.datasets import load_passages, sample_path
    >>> passages = load_passages(sample_path() / "train.jsonl.gz", limit=3)
    >>> len(passages)
    3
    """
    path = Path(path)
    if limit is not None and (
        not isinstance(limit, int) or isinstance(limit, bool) or limit < 0
    ):
        raise ValueError(f"limit must be None or an integer >= 0, got {limit!r}.")
    name = path.name.lower()
    if not name.endswith((".jsonl", ".jsonl.gz", ".txt", ".txt.gz")):
        raise ValueError(
            f"Cannot read passages from {path.name!r}: use a .jsonl, .jsonl.gz, .txt "
            "or .txt.gz file."
        )
    _check_file(path)
    passages: list[str] = []
    if limit == 0:
        return passages
    if ".jsonl" in name:
        for lineno, obj in _read_jsonl(path):
            text = _field(path, lineno, obj, "text")
            title = _field(path, lineno, obj, "title", optional=True)
            passages.append((title + " " + text).strip())
            if len(passages) == limit:
                break
    else:
        with _open_text(path) as f:
            for line in f:
                line = line.rstrip("\r\n")
                if line.strip():
                    passages.append(line)
                    if len(passages) == limit:
                        break
    return passages


def _check_file(path: Path):
    if path.is_dir():
        raise FileNotFoundError(f"Passage file {str(path)!r} is a directory, not a file.")
    if not path.is_file():
        raise FileNotFoundError(f"Passage file {str(path)!r} does not exist.")


def _bad_id(value):
    """What is wrong with an id (None if nothing)."""
    if value is None:
        return "null"
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if not value:
        return "empty"
    if not value.isprintable():
        return f"{value!r}, which holds a tab, line break or other non-printable character"
    return None


def load_passage_ids(path) -> list[str] | None:
    """Read the ``_id`` of every passage of a ``.jsonl[.gz]`` file, checked.

    The ids name the rows :func:`load_passages` reads from the same file, in order;
    ``skfusion encode`` and :func:`skfusion.distributed.transform` both read them
    here, so the two agree on every file.

    Parameters
    ----------
    path : str or path-like
        A ``.jsonl`` / ``.jsonl.gz`` passage file, or a ``.txt`` / ``.txt.gz`` one
        (which has no ids).

    Returns
    -------
    ids : list of str or None
        One id per passage (integer ids as strings, as :func:`load_beir` reads
        them); None for a ``.txt`` file or a ``.jsonl`` file where no row has an
        ``_id`` (rows are then named by position).

    Raises
    ------
    ValueError
        When only some rows have an ``_id``; when an ``_id`` is null, empty, neither
        a string nor an integer, or holds a tab, a line break or another
        non-printable character (an id is written on one line of tab-separated
        output, e.g. by ``skfusion search``); when two rows share an id. The message
        names the line(s) and the id.

    Examples
    --------
    >>> from skfusion.datasets import load_passage_ids, sample_path
    >>> load_passage_ids(sample_path() / "corpus.jsonl.gz")[:2]
    ['libjasypt-java', 'libjs-perfect-scrollbar']
    """
    path = Path(path)
    if ".jsonl" not in path.name.lower():
        return None
    _check_file(path)
    rows = list(_read_jsonl(path))
    with_id = [lineno for lineno, obj in rows if "_id" in obj]
    if not with_id:
        return None
    if len(with_id) != len(rows):
        first = next(lineno for lineno, obj in rows if "_id" not in obj)
        raise ValueError(
            f"{path} gives an _id on {len(with_id)} of {len(rows)} rows (line {first} "
            "has none); give every row an _id, or none (rows are then named by number)."
        )
    ids, seen = [], {}
    for lineno, obj in rows:
        value = obj["_id"]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        what = _bad_id(value)
        if what:
            raise ValueError(
                f"{path}, line {lineno}: _id is {what}; ids must be non-empty strings "
                "or integers on one line (no tabs or line breaks), as they are written "
                "one per line in tab-separated output."
            )
        if value in seen:
            raise ValueError(
                f"{path}, line {lineno}: duplicate _id {value!r} (first on line "
                f"{seen[value]}); every passage needs its own id."
            )
        seen[value] = lineno
        ids.append(value)
    return ids


def sample_path() -> Path:
    """Folder of the bundled debian-packages sample (BEIR layout).

    It holds 2,000 documents, 300 ``test`` and 200 ``dev`` queries with their qrels, and
    2,000 unlabelled training passages; its ``README.md`` says how it was made.

    Examples
    --------
    >>> from skfusion.datasets import sample_path
    >>> sorted(p.name for p in sample_path().iterdir() if p.suffix == ".gz")
    ['corpus.jsonl.gz', 'queries.jsonl.gz', 'train.jsonl.gz']
    """
    return Path(str(resources.files("skfusion") / "data" / _SAMPLE))


def load_sample(split: str = "test") -> RetrievalDataset:
    """Load the bundled debian-packages sample with :func:`load_beir`.

    Parameters
    ----------
    split : {"test", "dev"}, default="test"
        300 ``test`` queries or 200 ``dev`` queries, over the same 2,000 documents.

    Returns
    -------
    dataset : RetrievalDataset

    See Also
    --------
    load_sample_passages : Its unlabelled training passages.

    Examples
    --------
    >>> from skfusion.datasets import load_sample
    >>> data = load_sample("test")
    >>> len(data.query_ids), len(data.corpus_ids)
    (300, 2000)
    """
    if split not in ("test", "dev"):
        raise ValueError(f"split must be 'test' or 'dev', got {split!r}.")
    return load_beir(sample_path(), split=split)


def load_sample_passages(limit: int | None = None) -> list[str]:
    """The 2,000 unlabelled training passages of the bundled sample.

    Parameters
    ----------
    limit : int, default=None
        Read only the first ``limit`` passages.

    Returns
    -------
    passages : list of str

    Examples
    --------
    >>> from skfusion.datasets import load_sample_passages
    >>> len(load_sample_passages())
    2000
    """
    return load_passages(sample_path() / "train.jsonl.gz", limit=limit)
