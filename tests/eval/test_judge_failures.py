"""Judge failures are stored as failures and retried; every request has an overall deadline; resume checks rows."""

import json
import socket
import threading
import time

import pytest

from glimpseprune.errors import ConfigError
from glimpseprune.eval.judge import LLMJudge
from glimpseprune.eval.runner import read_done, run_evaluation

from .stub_server import StubServer
from .test_runner import config, write_dataset
from .test_runner_judge import judge_spec


class TrickleServer:
    """127.0.0.1: answers each connection one byte every ``interval`` seconds, at most ``max_bytes`` bytes, then
    closes; serves at most ``max_connections`` connections and stops by itself (bounded however a client behaves)."""

    def __init__(self, head: bytes, interval: float = 2.0, max_bytes: int = 12, max_connections: int = 2):
        self.head, self.interval, self.max_bytes, self.max_connections = head, interval, max_bytes, max_connections
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(30)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        try:
            for _ in range(self.max_connections):
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(5)
                    conn.recv(65536)  # the request (small)
                    conn.sendall(self.head)
                    for i in range(self.max_bytes):
                        time.sleep(self.interval)
                        conn.sendall(b"x" if self.head else b"HTTP/1.1 200 OK\r\n"[i:i + 1])
        except OSError:
            pass  # the client went away (its deadline), or no more connections came
        finally:
            self.sock.close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.sock.close()


@pytest.mark.parametrize("head", [b"", b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"],
                         ids=["status-line", "body"])
def test_trickling_server_hits_the_overall_deadline(tmp_path, head):
    with TrickleServer(head) as server:
        judge = LLMJudge(server.base_url, "m", cache_dir=tmp_path, timeout=10, deadline=3, max_retries=0)
        start = time.monotonic()
        result = judge.score("q", "r", "p")
        elapsed = time.monotonic() - start
    assert not result.ok and "deadline" in result.error, result.error
    assert 2.5 < elapsed < 6.0  # the per-read timeout (10 s) never fires: each byte arrives within 2 s
    assert judge.stats.errors == 1


def _rows(tmp_path, gp):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    return data, run_evaluation(gp, config(tmp_path, data))


def test_resume_checks_each_row_and_names_the_file(gp, tmp_path):
    data, first = _rows(tmp_path, gp)
    path = next(iter(first.files.values()))
    path = type(tmp_path)(path)
    good = path.read_text()
    for bad, needle in [('{"answer": "x"}', "lacks"), ("[1, 2, 3]", "JSON list"), ("garbage{", "not valid JSON"),
                        ('{"id": "s0"} {}', "not valid JSON"),
                        (json.dumps({**json.loads(good.splitlines()[0]), "scores": {"exact_match": "1"}}), "score")]:
        path.write_text(bad + "\n" + good)
        with pytest.raises(ConfigError, match=needle) as info:
            read_done(path)
        assert f"{path}:1" in str(info.value)
        with pytest.raises(ConfigError):
            run_evaluation(gp, config(tmp_path, data))
    path.write_text(good + '{"id": "s4", "answ')  # a torn last line from a killed run is ignored
    assert len(read_done(path)) == 5


def test_http_500_is_stored_as_failure_and_retried(gp, tmp_path):
    data = write_dataset(tmp_path / "data", ["x"] * 5)
    with StubServer(max_requests=40) as stub:
        stub.replies = [(500, "boom")] + [(200, "score: 0.5")] * 4
        result = run_evaluation(gp, config(tmp_path, data, judge=judge_spec(stub, tmp_path)))
    failed = [r for r in result.rows if r.get("failures")]
    assert len(failed) == 1 and failed[0]["scores"]["judge"] is None and "500" in failed[0]["failures"]["judge"]
    with StubServer(reply=lambda n: "score: 1", max_requests=40) as stub:
        again = run_evaluation(gp, config(tmp_path, data, judge=judge_spec(stub, tmp_path)))
        assert len(stub.bodies) == 1
    by_id = {r["id"]: r["scores"]["judge"] for r in again.rows}
    assert by_id[failed[0]["id"]] == 1.0 and sorted(by_id.values()) == [0.5] * 4 + [1.0]
