"""The judge client against a local stub of an OpenAI-compatible server (127.0.0.1, ephemeral port)."""

import pytest

from glimpseprune.eval.judge import LLMJudge, load_prompt, parse_score

from .stub_server import StubServer

MAX_REQUESTS = 20  # the stub refuses anything beyond this, so a retry loop gone wrong cannot spin forever


@pytest.fixture
def stub():
    with StubServer(max_requests=MAX_REQUESTS) as server:
        yield server


def make_judge(stub, cache_dir, **kwargs):
    kwargs = {"timeout": 5, "retry_backoff": 0.0, **kwargs}
    return LLMJudge(stub.base_url, "judge-model-x", cache_dir=cache_dir, **kwargs)


QUESTION = "What colour is the bus on the left?"
REFERENCE = "The bus on the left is yellow."
PREDICTION = "It is a yellow school bus."


def test_request_shape_and_score(stub, tmp_path):
    stub.replies = [(200, "score: 0.9")]
    judge = make_judge(stub, tmp_path, seed=7)
    result = judge.score(QUESTION, REFERENCE, PREDICTION)

    assert (result.score, result.ok, result.cached, result.error) == (0.9, True, False, None)
    assert result.raw == "score: 0.9"
    (request,) = stub.requests
    assert request["path"] == "/v1/chat/completions"
    assert "Authorization" not in request["headers"]
    body = request["body"]
    assert body["model"] == "judge-model-x"
    assert body["temperature"] == 0
    assert body["max_tokens"] == 32
    assert body["seed"] == 7
    prompt = " ".join(m["content"] for m in body["messages"])
    for text in (QUESTION, REFERENCE, PREDICTION, "score: <number between 0 and 1>"):
        assert text in prompt
    assert judge.stats.requests == 1
    assert judge.metadata == {
        "judge_model": "judge-model-x",
        "prompt_version": "v1",
        "base_url": stub.base_url,
        "temperature": 0,
    }


def test_cache_hits_skip_the_network_across_instances(stub, tmp_path):
    stub.replies = [(200, "Score: 0.5")]
    judge = make_judge(stub, tmp_path)
    first = judge.score(QUESTION, REFERENCE, PREDICTION)
    second = judge.score(QUESTION, REFERENCE, PREDICTION)
    assert (first.score, first.cached) == (0.5, False)
    assert (second.score, second.cached, second.ok) == (0.5, True, True)
    assert len(stub.requests) == 1
    assert (judge.stats.requests, judge.stats.cache_hits) == (1, 1)

    fresh = make_judge(stub, tmp_path)
    third = fresh.score(QUESTION, REFERENCE, PREDICTION)
    assert (third.score, third.cached) == (0.5, True)
    assert len(stub.requests) == 1
    assert (fresh.stats.requests, fresh.stats.cache_hits) == (0, 1)


def test_cache_key_covers_every_field(stub, tmp_path):
    stub.replies = [(200, "score: 1"), (200, "score: 0")]
    judge = make_judge(stub, tmp_path)
    assert judge.score(QUESTION, REFERENCE, PREDICTION).score == 1.0
    assert judge.score(QUESTION, REFERENCE, "It is red.").score == 0.0
    assert len(stub.requests) == 2
    keys = {
        judge.cache_key("q", "r", "p"),
        judge.cache_key("q", "r", "p2"),
        judge.cache_key("q", "r2", "p"),
        judge.cache_key("q2", "r", "p"),
        make_judge(stub, tmp_path, max_tokens=8).cache_key("q", "r", "p"),  # same model and prompt: same key
    }
    assert len(keys) == 4


def test_truncated_cache_line_is_ignored(stub, tmp_path):
    stub.replies = [(200, "score: 0.25"), (200, "score: 0.75")]
    judge = make_judge(stub, tmp_path)
    judge.score(QUESTION, REFERENCE, PREDICTION)
    with (tmp_path / "judge_cache.jsonl").open("a") as f:
        f.write('{"key": "abc", "ra')  # a crash mid-append
    fresh = make_judge(stub, tmp_path)
    assert fresh.score(QUESTION, REFERENCE, PREDICTION).cached
    assert fresh.score(QUESTION, REFERENCE, "another answer").score == 0.75


def test_malformed_reply_scores_zero(stub, tmp_path):
    stub.replies = [(200, "I think it's good")]
    judge = make_judge(stub, tmp_path)
    result = judge.score(QUESTION, REFERENCE, PREDICTION)
    assert (result.score, result.ok, result.raw) == (0.0, False, "I think it's good")
    assert "score" in result.error
    assert judge.stats.malformed == 1
    assert judge.stats.errors == 0


def test_score_is_clamped(stub, tmp_path):
    stub.replies = [(200, "Score: 1.7")]
    judge = make_judge(stub, tmp_path)
    result = judge.score(QUESTION, REFERENCE, PREDICTION)
    assert (result.score, result.ok) == (1.0, True)


def test_server_error_retries_then_scores_zero(stub, tmp_path):
    stub.replies = [(500, "boom")] * 3 + [(200, "score: 0.8")]
    judge = make_judge(stub, tmp_path, max_retries=2)
    result = judge.score(QUESTION, REFERENCE, PREDICTION)
    assert (result.score, result.ok, result.cached) == (0.0, False, False)
    assert "500" in result.error
    assert len(stub.requests) == 3  # one attempt + two retries
    assert (judge.stats.requests, judge.stats.errors) == (3, 1)

    # Failures are not cached: the next call asks again and gets the real verdict.
    again = judge.score(QUESTION, REFERENCE, PREDICTION)
    assert (again.score, again.ok) == (0.8, True)
    assert len(stub.requests) == 4


def test_transient_error_recovers_within_retries(stub, tmp_path):
    stub.replies = [(503, "busy"), (200, "score: 0.6")]
    judge = make_judge(stub, tmp_path, max_retries=2)
    result = judge.score(QUESTION, REFERENCE, PREDICTION)
    assert (result.score, result.ok) == (0.6, True)
    assert (judge.stats.requests, judge.stats.errors) == (2, 0)


def test_client_error_is_not_retried(stub, tmp_path):
    stub.replies = [(400, "bad request"), (200, "score: 1")]
    judge = make_judge(stub, tmp_path, max_retries=2)
    result = judge.score(QUESTION, REFERENCE, PREDICTION)
    assert (result.ok, len(stub.requests), judge.stats.errors) == (False, 1, 1)
    assert "400" in result.error


def test_unreachable_server_is_an_error(tmp_path):
    with StubServer(max_requests=MAX_REQUESTS) as server:
        base_url = server.base_url
    judge = LLMJudge(base_url, "m", cache_dir=tmp_path, timeout=2, max_retries=1, retry_backoff=0.0)
    result = judge.score("q", "r", "p")
    assert (result.score, result.ok) == (0.0, False)
    assert (judge.stats.requests, judge.stats.errors) == (2, 1)


def test_api_key_from_environment(stub, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "secret-123")
    stub.replies = [(200, "score: 1")]
    make_judge(stub, tmp_path, api_key_env="MY_JUDGE_KEY").score("q", "r", "p")
    assert stub.requests[0]["headers"]["Authorization"] == "Bearer secret-123"

    monkeypatch.delenv("MY_JUDGE_KEY")
    with pytest.raises(ValueError, match="MY_JUDGE_KEY"):
        make_judge(stub, tmp_path, api_key_env="MY_JUDGE_KEY")


def test_as_scorer_takes_the_best_reference(stub, tmp_path):
    stub.replies = [(200, "score: 0.2"), (200, "score: 0.7")]
    scorer = make_judge(stub, tmp_path).as_scorer()
    assert scorer.needs_question
    assert scorer.metadata["prompt_version"] == "v1"
    assert scorer("yellow", ["red", "yellow"], question=QUESTION) == 0.7
    assert all(QUESTION in r["body"]["messages"][0]["content"] for r in stub.requests)


def test_parse_score():
    assert parse_score("score: 0.85") == 0.85
    assert parse_score("SCORE : .5") == 0.5
    assert parse_score("Reasoning... Score:1") == 1.0
    assert parse_score("score: 3") == 1.0
    assert parse_score("score: -0.5") is None  # no negative scores: treated as malformed
    assert parse_score("the answer is good") is None


def test_prompt_file_is_versioned():
    template = load_prompt("v1")
    assert "{question}" in template and "{reference}" in template and "{prediction}" in template
    assert "version" not in template.splitlines()[0]  # the header is not sent to the judge
    with pytest.raises(ValueError, match="available: v1"):
        load_prompt("v999")


def test_temperature_cannot_be_raised(tmp_path):
    with pytest.raises(TypeError):
        LLMJudge("http://127.0.0.1:9/v1", "m", cache_dir=tmp_path, temperature=0.7)


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


def _closed_port_url(scheme: str) -> str:
    """A 127.0.0.1 URL nothing listens on: only a proxy can answer a request to it."""
    with StubServer() as gone:
        port = gone.server.server_port
    return f"{scheme}://127.0.0.1:{port}/v1"


def test_http_proxy_and_no_proxy_are_honoured(stub, tmp_path, monkeypatch):
    """HTTP_PROXY: the request goes to the proxy (the stub plays it) with the absolute URL and the proxy
    credentials; the judge's own address has no server, so only the proxied request can be answered. NO_PROXY
    naming the host sends it direct (refused), and the proxy sees nothing more."""
    import base64

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    proxy = stub.base_url.removesuffix("/v1").replace("http://", "http://judge%20user:p%40ss@")
    monkeypatch.setenv("http_proxy", proxy)
    target = _closed_port_url("http")
    stub.replies = [(200, "score: 0.75")]
    judge = LLMJudge(target, "m", cache_dir=tmp_path / "a", timeout=5, max_retries=0, retry_backoff=0.0)
    result = judge.score("q", "r", "p")
    assert (result.score, result.ok) == (0.75, True), result.error
    (request,) = stub.requests
    assert request["path"] == f"{target}/chat/completions"
    assert request["headers"]["Host"] == target.split("/")[2]
    assert request["headers"]["Proxy-Authorization"] == "Basic " + base64.b64encode(b"judge user:p@ss").decode()
    assert request["body"]["model"] == "m"

    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    direct = LLMJudge(target, "m", cache_dir=tmp_path / "b", timeout=5, max_retries=0, retry_backoff=0.0)
    failed = direct.score("q", "r", "p")
    assert not failed.ok and "Connection" in failed.error and len(stub.requests) == 1


def test_https_goes_through_a_connect_tunnel(stub, tmp_path, monkeypatch):
    """HTTPS_PROXY: the judge asks the proxy for a CONNECT tunnel to the judge's host (TLS stays end to end); this
    proxy refuses, which is a judge failure naming the tunnel, not a score."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", stub.base_url.removesuffix("/v1"))
    target = _closed_port_url("https")
    judge = LLMJudge(target, "m", cache_dir=tmp_path, timeout=5, max_retries=0, retry_backoff=0.0)
    result = judge.score("q", "r", "p")
    assert not result.ok and "502" in result.error, result.error
    (request,) = stub.requests
    assert (request["method"], request["path"]) == ("CONNECT", target.split("/")[2])
