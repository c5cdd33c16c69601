"""The OpenAI-compatible HTTP judge against a chat-completions server on loopback that each test starts and stops.

The server's judge is a rule the tests know: the response that contains "good" wins, both or neither is a tie.
Markers in a response steer the server: SLOW (first request sleeps past the client's timeout), FLAKY (first
request gets HTTP 500), GARBAGE (the body is not JSON), VAGUE (the reply names no verdict), FIRST (the server
always answers A, a position-biased judge).
"""

import http.server
import json
import re
import threading
import time

import numpy as np
import pytest

from metapl.data.schemas import PromptExample
from metapl.eval.http_judge import HttpJudge, JudgeError, parse_verdict


class _Server:
    """rule(a, b) -> the reply (default: the "good" rule of the module docstring)."""

    def __init__(self, status: int = 200, rule=None):
        self.requests, self.bodies, self.status, self.seen = 0, [], status, set()
        self.rule = rule
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                outer.bodies.append((self.path, dict(self.headers), body))
                user = body["messages"][-1]["content"]
                a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", user, re.S).group(1)
                b = re.search(r"\[Response B\]\n(.*?)\n\nWhich", user, re.S).group(1)
                first_time = user not in outer.seen
                outer.seen.add(user)
                if outer.status != 200:
                    return self._send(outer.status, b'{"error": "no"}')
                if "SLOW" in user and first_time:
                    time.sleep(1.0)
                if "FLAKY" in user and first_time:
                    return self._send(500, b'{"error": "overloaded"}')
                if "GARBAGE" in user:
                    return self._send(200, b"<html>not json</html>")
                if "VAGUE" in user:
                    reply = "Both have merits."
                elif "FIRST" in user:
                    reply = "A"
                elif outer.rule is not None:
                    reply = outer.rule(a, b)
                else:
                    reply = {(True, False): "A.", (False, True): "Response B"}.get(("good" in a, "good" in b), "Tie")
                message = {"role": "assistant", "content": reply}
                self._send(200, json.dumps({"choices": [{"message": message}]}).encode())

            def _send(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _prompts(n):
    return [PromptExample(prompt=f"question {i}", domain=f"d{i % 2}") for i in range(n)]


def _judge(url, **kw):
    return HttpJudge(url, "judge-model", **{"backoff": 0.0, "timeout": 5.0, **kw})


def test_parse_verdict_reads_lenient_replies_and_rejects_the_rest():
    assert [parse_verdict(r) for r in ["A", " b.", "Response A is better", "TIE", "tie."]] == [1.0, 0.0, 1.0, 0.5, 0.5]
    assert [parse_verdict(r) for r in ["", "Both", "I think A", "Apple"]] == [None, None, None, None]


def test_verdicts_in_both_orders_with_the_request_the_api_expects(monkeypatch):
    monkeypatch.setenv("METAPL_TEST_KEY", "sk-test")
    with _Server() as server:
        judge = _judge(server.url, api_key_env="METAPL_TEST_KEY")
        got = judge.compare(_prompts(4), ["a good one", "plain", "good", "plain"], ["plain", "a good one", "good", "x"])
        np.testing.assert_array_equal(got, [1.0, 0.0, 0.5, 0.5])
        assert server.requests == judge.requests == 6  # each pair in both orders; ("good", "good") ties unasked
        path, headers, body = server.bodies[0]
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == "Bearer sk-test"
        assert body["model"] == "judge-model" and body["temperature"] == 0.0
        assert [m["role"] for m in body["messages"]] == ["system", "user"]
        assert "question" in body["messages"][1]["content"]


def test_a_position_biased_judge_gives_a_tie_in_both_orders_and_a_win_in_one():
    with _Server() as server:
        np.testing.assert_array_equal(_judge(server.url).compare(_prompts(1), ["FIRST x"], ["y"]), [0.5])
        np.testing.assert_array_equal(_judge(server.url, both_orders=False).compare(_prompts(1), ["FIRST x"], ["y"]),
                                      [1.0])


def test_verdicts_are_cached_on_disk_and_reused(tmp_path):
    prompts, first, second = _prompts(3), ["good", "x", "y"], ["x", "good", "y"]
    with _Server() as server:
        one = _judge(server.url, cache_dir=tmp_path).compare(prompts, first, second)
        asked = server.requests
        again = _judge(server.url, cache_dir=tmp_path)  # a new judge (process) reads the cache file
        np.testing.assert_array_equal(again.compare(prompts, first, second), one)
        assert asked == 4 and server.requests == 4 and again.requests == 0  # ("y", "y") ties unasked
        again.compare(_prompts(4), first + ["good"], second + ["z"])  # only the new pair is asked
        assert server.requests == 6
    lines = (tmp_path / "verdicts.jsonl").read_text().splitlines()
    assert len(lines) == 6 and {json.loads(x)["model"] for x in lines} == {"judge-model"}


def test_a_timeout_and_a_server_error_are_retried():
    with _Server() as server:
        judge = _judge(server.url, timeout=0.3, both_orders=False)
        np.testing.assert_array_equal(judge.compare(_prompts(2), ["SLOW good", "FLAKY good"], ["x", "y"]), [1.0, 1.0])
        assert server.requests == 4  # one failed attempt each, then the answer


def test_a_malformed_reply_fails_after_its_retries_naming_the_comparison():
    with _Server() as server:
        with pytest.raises(JudgeError, match=r"comparison 1 .*domain 'd1'.*3 attempts.*not a chat completion"):
            _judge(server.url, retries=2, both_orders=False).compare(_prompts(2), ["good", "GARBAGE"], ["x", "y"])
        with pytest.raises(JudgeError, match="names neither A, B nor tie: 'Both have merits.'"):
            _judge(server.url, retries=0, both_orders=False).compare(_prompts(1), ["VAGUE"], ["y"])


def test_a_client_error_is_not_retried():
    with _Server(status=401) as server:
        with pytest.raises(JudgeError, match="HTTP 401 .not retried"):
            _judge(server.url, retries=3, both_orders=False).compare(_prompts(1), ["a"], ["b"])
        assert server.requests == 1


def test_no_server_is_a_clear_error():
    with _Server() as server:
        url = server.url
    with pytest.raises(JudgeError, match="no connection"):
        _judge(url, retries=1, both_orders=False).compare(_prompts(1), ["a"], ["b"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="timeout"):
        HttpJudge("http://127.0.0.1:1/v1", "m", timeout=0)
    with pytest.raises(ValueError, match=r"\{b\}"):
        HttpJudge("http://127.0.0.1:1/v1", "m", template="{prompt} {a}")
    with pytest.raises(ValueError, match="one pair per prompt"):
        HttpJudge("http://127.0.0.1:1/v1", "m").compare(_prompts(2), ["a"], ["b", "c"])


def test_a_cache_line_cut_by_a_killed_process_is_skipped_and_asked_again(tmp_path, capsys):
    with _Server() as server:
        _judge(server.url, cache_dir=tmp_path, both_orders=False).compare(_prompts(2), ["good", "x"], ["x", "good"])
        path = tmp_path / "verdicts.jsonl"
        lines = path.read_text().splitlines()
        path.write_text(lines[0] + "\n" + lines[1][:30] + "\n")
        again = _judge(server.url, cache_dir=tmp_path, both_orders=False)
        assert "verdicts.jsonl:2: unreadable cache line skipped" in capsys.readouterr().err
        np.testing.assert_array_equal(again.compare(_prompts(2), ["good", "x"], ["x", "good"]), [1.0, 0.0])
        assert again.requests == 1
