"""LLM-as-judge scoring of free-form answers, through any OpenAI-compatible chat-completions endpoint.

The judge sends a versioned prompt (``prompts/judge_<version>.txt``) holding the question, the reference answer and
the candidate answer, and reads back ``score: <number between 0 and 1>``. Works with vLLM, SGLang, llama.cpp
servers or hosted APIs alike: only ``POST {base_url}/chat/completions`` is used, through the standard library.

Rules this module enforces (docs/method.md §14.1 and §18, rows 7 and 8):

* **Deterministic.** Temperature is always 0 and cannot be raised. The reference sampled its judge at temperature
  0.7, so re-running its evaluation gives different numbers; a metric has to be reproducible.
* **Versioned.** The prompt file declares its version; :attr:`LLMJudge.metadata` (judge model, prompt version, base
  URL) must be written next to every reported score.
* **Cached.** Verdicts are stored on disk, keyed by the SHA-256 of (model, prompt version, question, reference,
  prediction). A repeated evaluation never hits the network, also from a new process. HTTP failures are not cached.
* **Never a training reward.** Do not use the same judge (model and prompt) as a reward for RL: the GlimpsePrune+
  reference did, and a policy optimised against its evaluator learns the evaluator, which inflates its scores.

Failures never raise: a malformed reply or an HTTP error (after retries) scores 0 with ``ok=False`` and is counted
in :attr:`LLMJudge.stats`, so one bad request does not abort a 9,000-item evaluation, and the counts show whether
the run is trustworthy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import urllib.error
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
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prompt_version = prompt_version
        self.template = load_prompt(prompt_version)
        self.timeout = timeout
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
            self._store(key, raw)
        value = parse_score(raw)
        if value is None:
            self._count("malformed")
            return JudgeResult(score=0.0, raw=raw, cached=cached, ok=False, error="no 'score: <number>' in reply")
        return JudgeResult(score=value, raw=raw, cached=cached, ok=True)

    def as_scorer(self):
        """A scorer ``f(prediction, references, question="") -> float``, the maximum over the references.

        It has the shape of the string scorers plus a ``question`` keyword; its ``needs_question`` attribute tells a
        runner to pass it, and ``metadata`` carries the judge's identity for the results file.
        """

        def judge_scorer(prediction: str, references: str | list[str], question: str = "") -> float:
            return max(self.score(question, ref, prediction).score for ref in _as_list(references))

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
            except urllib.error.HTTPError as e:
                e.close()
                error = f"HTTP {e.code}: {e.reason}"
                if e.code < 500 and e.code != 429:
                    break
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:  # network, timeout, bad JSON/shape
                error = f"{type(e).__name__}: {e}"
        return None, error

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
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions", data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            payload = json.load(response)
        content = payload["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError(f"reply content is {type(content).__name__}, not text")
        return content

