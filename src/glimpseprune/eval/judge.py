"""LLM-as-judge scoring of free-form answers, through any OpenAI-compatible chat-completions endpoint.

The judge sends a versioned prompt (``prompts/judge_<version>.txt``) holding the question, the reference answer and
the candidate answer, and reads back ``score: <number between 0 and 1>``. Works with vLLM, SGLang, llama.cpp
servers or hosted APIs alike: only ``POST {base_url}/chat/completions`` is used, through the standard library,
via the proxy ``HTTP_PROXY`` / ``HTTPS_PROXY`` name (``NO_PROXY`` honoured) as ``urllib`` resolves them.

Rules this module enforces (docs/method.md §14.1 and §18, rows 7 and 8):

* **Deterministic.** Temperature is always 0 and cannot be raised. The reference sampled its judge at temperature
  0.7, so re-running its evaluation gives different numbers; a metric has to be reproducible.
* **Versioned.** The prompt file declares its version; :attr:`LLMJudge.metadata` (judge model, prompt version, base
  URL) must be written next to every reported score.
* **Cached.** Verdicts are stored on disk, keyed by the SHA-256 of (model, prompt version, question, reference,
  prediction). A repeated evaluation never hits the network, also from a new process. HTTP failures are not cached.
* **Never a training reward.** Do not use the same judge (model and prompt) as a reward for RL: the GlimpsePrune+
  reference did, and a policy optimised against its evaluator learns the evaluator, which inflates its scores.

Failures are failures, never a score: a malformed reply, an HTTP error or a timeout (after retries) gives a result
with ``ok=False`` (``score`` 0 there means nothing) and is counted in :attr:`LLMJudge.stats`; the runner's scorer
raises :class:`JudgeFailure`, so the evaluation stores the row's judge score as missing with the error, keeps going
(one bad request does not abort a 9,000-item evaluation) and asks again on resume. Neither failures nor replies
without a score are cached. Every attempt has an overall ``deadline`` (connect + send + whole reply): the socket
``timeout`` alone bounds each read, so a server trickling a byte at a time would otherwise hold a run forever.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
import time
import http.client
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .scorers import _as_list

PROMPT_DIR = Path(__file__).with_name("prompts")
CACHE_FILE = "judge_cache.jsonl"
_SCORE_RE = re.compile(r"score\s*:\s*([0-9]*\.?[0-9]+)")


def load_prompt(version: str) -> str:
    """The prompt template of ``prompts/judge_<version>.txt``, checked against the version its header declares.

    The file starts with ``version: <version>`` and a ``---`` line; the rest is the template, with the fields
    ``{question}``, ``{reference}`` and ``{prediction}``.
    """
    path = PROMPT_DIR / f"judge_{version}.txt"
    if not path.is_file():
        available = sorted(p.stem.removeprefix("judge_") for p in PROMPT_DIR.glob("judge_*.txt"))
        raise ValueError(f"no judge prompt version {version!r}; available: {', '.join(available)}")
    header, separator, template = path.read_text(encoding="utf-8").partition("\n---\n")
    if not separator or header.strip() != f"version: {version}":
        raise ValueError(f"{path} must start with a 'version: {version}' line followed by a '---' line")
    return template.strip()


def parse_score(reply: str) -> float | None:
    """The first ``score: <x>`` of a reply (case-insensitive), clamped to [0, 1]; None when there is none."""
    match = _SCORE_RE.search(reply.lower())
    if match is None:
        return None
    return min(1.0, max(0.0, float(match.group(1))))


class JudgeFailure(Exception):
    """The judge gave no verdict (HTTP error, timeout, deadline, reply without a score): not a score of 0."""


class _HTTPStatus(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(f"HTTP {code}: {reason}")
        self.code = code


@dataclass(frozen=True)
class JudgeResult:
    score: float  # in [0, 1]; 0 when not ok
    raw: str  # the judge's reply ("" when the request failed)
    cached: bool  # the reply came from the disk cache
    ok: bool  # False for an HTTP failure or a reply without a score
    error: str | None = None


@dataclass
class JudgeStats:
    requests: int = 0  # HTTP requests sent, retries included
    cache_hits: int = 0
    malformed: int = 0  # replies without a parsable score
    errors: int = 0  # items whose request failed after all retries


class LLMJudge:
    """Scores (question, reference, prediction) triples with a chat model at temperature 0.

    ``base_url`` is the API root, e.g. ``http://localhost:8000/v1``. The API key is ``api_key`` or else the
    environment variable named by ``api_key_env``; with neither, no Authorization header is sent (local servers).
    ``max_retries`` extra attempts follow a failed request, waiting ``retry_backoff`` × attempt seconds; client
    errors (HTTP 4xx except 429) are not retried because repeating the request cannot fix them. ``seed`` is passed
    to servers that accept one; greedy decoding is already deterministic, the seed only pins servers that sample
    anyway.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        cache_dir: str | os.PathLike,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 30,
        deadline: float = 120,
        max_retries: int = 2,
        prompt_version: str = "v1",
        max_tokens: int = 32,
        seed: int | None = None,
        retry_backoff: float = 1.0,
    ):
        if api_key is None and api_key_env is not None:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ValueError(f"environment variable {api_key_env!r} holding the judge API key is not set")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if not deadline > 0 or not timeout > 0:
            raise ValueError(f"timeout and deadline must be positive seconds, got {timeout} and {deadline}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prompt_version = prompt_version
        self.template = load_prompt(prompt_version)
        self.timeout = timeout
        self.deadline = deadline
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.seed = seed
        self.retry_backoff = retry_backoff
        self.stats = JudgeStats()
        self._api_key = api_key
        self._lock = threading.Lock()
        self._cache_path = Path(cache_dir) / CACHE_FILE
        self._cache = self._load_cache()

    @property
    def metadata(self) -> dict:
        """What to record next to every judged score."""
        return {
            "judge_model": self.model,
            "prompt_version": self.prompt_version,
            "base_url": self.base_url,
            "temperature": 0,
        }

    def cache_key(self, question: str, reference: str, prediction: str) -> str:
        # JSON-encoding the tuple keeps the fields apart: no separator string inside an answer can forge a key.
        fields = [self.model, self.prompt_version, question, reference, prediction]
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()

    def render(self, question: str, reference: str, prediction: str) -> str:
        return self.template.format(question=question, reference=reference, prediction=prediction)

    def score(self, question: str, reference: str, prediction: str) -> JudgeResult:
        key = self.cache_key(question, reference, prediction)
        raw = self._cache.get(key)
        cached = raw is not None
        if cached:
            self._count("cache_hits")
        else:
            raw, error = self._request(self.render(question, reference, prediction))
            if raw is None:
                self._count("errors")
                return JudgeResult(score=0.0, raw="", cached=False, ok=False, error=error)
        value = parse_score(raw)
        if value is None:
            self._count("malformed")
            return JudgeResult(score=0.0, raw=raw, cached=cached, ok=False, error="no 'score: <number>' in reply")
        if not cached:
            self._store(key, raw)  # only verdicts: a reply without a score is asked again next time
        return JudgeResult(score=value, raw=raw, cached=cached, ok=True)

    def as_scorer(self):
        """A scorer ``f(prediction, references, question="") -> float``, the maximum over the references; raises
        :class:`JudgeFailure` when any verdict is missing.

        It has the shape of the string scorers plus a ``question`` keyword; its ``needs_question`` attribute tells a
        runner to pass it, and ``metadata`` carries the judge's identity for the results file.
        """

        def judge_scorer(prediction: str, references: str | list[str], question: str = "") -> float:
            results = [self.score(question, ref, prediction) for ref in _as_list(references)]
            failed = [r.error for r in results if not r.ok]
            if failed:  # a missing verdict could have been the maximum: the item has no judge score
                raise JudgeFailure(failed[0])
            return max(r.score for r in results)

        judge_scorer.needs_question = True
        judge_scorer.metadata = self.metadata
        return judge_scorer

    # ----------------------------------------------------------------------------------------------------------------

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)

    def _load_cache(self) -> dict[str, str]:
        cache: dict[str, str] = {}
        if self._cache_path.is_file():
            with self._cache_path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        cache[entry["key"]] = entry["raw"]
                    except (ValueError, KeyError, TypeError):
                        continue  # a line cut short by a crash mid-append; the item is simply judged again
        return cache

    def _store(self, key: str, raw: str) -> None:
        entry = {"key": key, "raw": raw, "judge_model": self.model, "prompt_version": self.prompt_version}
        with self._lock:
            self._cache[key] = raw
            self._cache_path.parent.mkdir(parents=True, exist_ok=True)
            with self._cache_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def _request(self, prompt: str) -> tuple[str | None, str | None]:
        """(reply, None) on success, (None, last error) once every attempt has failed."""
        error = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.retry_backoff * attempt)
            self._count("requests")
            try:
                return self._post(prompt), None
            except _HTTPStatus as e:
                error = str(e)
                if e.code < 500 and e.code != 429:
                    break
            except (OSError, ValueError, KeyError, IndexError, TypeError, http.client.HTTPException) as e:
                error = f"{type(e).__name__}: {e}"  # network, timeout, deadline, bad JSON/shape
        return None, error

    def _connection(self, url: urllib.parse.SplitResult):
        """(connection, request target, extra headers) for ``url``: direct, or through the proxy the environment
        names for its scheme (``HTTP_PROXY`` / ``HTTPS_PROXY``, lower case too; hosts in ``NO_PROXY`` go direct), as
        ``urllib`` resolves them. Plain HTTP goes to the proxy with the absolute URL; HTTPS opens a CONNECT tunnel
        through it, so TLS still runs end to end with the judge. Credentials in the proxy URL become a Basic
        ``Proxy-Authorization`` header."""
        https = url.scheme == "https"
        target = url.path + (f"?{url.query}" if url.query else "")
        proxies = urllib.request.getproxies_environment()
        proxy = proxies.get(url.scheme)
        if not proxy or urllib.request.proxy_bypass_environment(url.hostname, proxies):
            kind = http.client.HTTPSConnection if https else http.client.HTTPConnection
            return kind(url.hostname, url.port, timeout=self.timeout), target, {}
        via = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if not via.hostname:
            raise ValueError(f"{url.scheme.upper()}_PROXY is not a proxy URL: {proxy!r}")
        auth = {}
        if via.username is not None:
            user = urllib.parse.unquote(via.username)
            secret = urllib.parse.unquote(via.password or "")
            auth["Proxy-Authorization"] = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode("ascii")
        if https:
            conn = http.client.HTTPSConnection(via.hostname, via.port or 80, timeout=self.timeout)
            conn.set_tunnel(url.hostname, url.port or 443, headers=auth)
            return conn, target, {}
        conn = http.client.HTTPConnection(via.hostname, via.port or 80, timeout=self.timeout)
        return conn, urllib.parse.urlunsplit(url._replace(fragment="")), auth

    def _post(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        if self.seed is not None:
            body["seed"] = self.seed
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = urllib.parse.urlsplit(f"{self.base_url}/chat/completions")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"judge URL must be http(s)://host[:port]/..., got {self.base_url!r}")
        conn, path, proxy_headers = self._connection(url)
        headers.update(proxy_headers)
        expired = threading.Event()

        def cut() -> None:  # the deadline: shutting the socket down wakes a read blocked in another thread
            expired.set()
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        timer = threading.Timer(self.deadline, cut)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", path, body=json.dumps(body).encode("utf-8"), headers=headers)
            response = conn.getresponse()
            data = response.read()
            if expired.is_set():
                raise TimeoutError(f"no complete reply within the {self.deadline:g} s deadline")
            if response.status >= 400:
                raise _HTTPStatus(response.status, response.reason)
        except (OSError, http.client.HTTPException) as err:
            if expired.is_set():
                raise TimeoutError(f"no complete reply within the {self.deadline:g} s deadline") from err
            raise
        finally:
            timer.cancel()
            conn.close()
        payload = json.loads(data)
        content = payload["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"reply content is {type(content).__name__}, not text")
        return content

