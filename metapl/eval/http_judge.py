"""An LLM as pairwise judge behind an OpenAI-compatible chat-completions API (OpenAI, vLLM, llama.cpp's server,
TGI's OpenAI route, ...), as in the papers' GPT-4 evaluations: shown a prompt and two responses, it names the better.

    judge = HttpJudge("https://api.openai.com/v1", "gpt-4o", cache_dir="runs/judge_cache")
    verdicts = judge.compare(prompts, policy_responses, reference_responses)   # [n] in {0, ½, 1}

Each comparison is asked in both orders by default (A/B then B/A) and the two verdicts are averaged, so a judge
that always prefers the first position gives ½, not a win (`both_orders=False` halves the requests); two identical
answers tie at ½ without a request (a method against itself costs nothing). Replies are read leniently ("A",
"b.", "Response A", "Tie") and anything else counts as malformed. Transient failures (a timeout, a refused
connection, HTTP 429 or 5xx, a malformed reply) are retried `retries` times with exponential backoff (a numeric
Retry-After is honoured); other HTTP errors (401, 404, ...) fail at once. A failure that outlasts its retries
raises `JudgeError` naming the comparison, the URL and what came back.

Verdicts are cached on disk (`cache_dir/verdicts.jsonl`, one JSON line per request, keyed by the sha256 of the
model, the messages and the sampling settings), so re-evaluating a run asks only what was not asked before.
The API key is read from the environment variable `api_key_env` (default OPENAI_API_KEY); none is sent if unset.
Only the Python standard library is used.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import http.client
import json
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

import numpy as np

from metapl.data.schemas import PromptExample
from metapl.eval.judges import Judge

SYSTEM = "You are an impartial evaluator. You read one prompt and two responses to it and decide which is better."

TEMPLATE = """Compare the two responses to the prompt below. {criterion}

[Prompt]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better? Reply with a single word: A, B, or tie."""

CRITERION = "Prefer the response that follows the prompt's intent better; do not let length decide."

_VERDICT = re.compile(r"^\W*(?:response\s+)?(a|b|tie)\b", re.IGNORECASE)


class JudgeError(RuntimeError):
    """A comparison the HTTP judge could not obtain: which one, from where, and what came back."""


def parse_verdict(reply: str) -> float | None:
    """1.0 for A, 0.0 for B, 0.5 for a tie; None when the reply names none of them first."""
    m = _VERDICT.match(reply or "")
    if m is None:
        return None
    return {"a": 1.0, "b": 0.0, "tie": 0.5}[m.group(1).lower()]


class _Transient(Exception):
    """A failure worth retrying; `wait` is the server's Retry-After in seconds, if it gave one."""

    def __init__(self, message: str, wait: float | None = None):
        super().__init__(message)
        self.wait = wait


@dataclasses.dataclass
class HttpJudge(Judge):
    """Pairwise LLM judge (see the module docstring). base_url: the API root, e.g. "http://127.0.0.1:8000/v1"
    (requests go to base_url + "/chat/completions"); model: the model name the server expects; criterion: the
    instruction of what "better" means, put into `template`; timeout: seconds per request; retries: further
    attempts after a transient failure; backoff: seconds before the first retry, doubled each time; workers:
    requests in flight at once; cache_dir: where verdicts are kept (None: no cache)."""

    base_url: str
    model: str
    criterion: str = CRITERION
    template: str = TEMPLATE
    system: str = SYSTEM
    both_orders: bool = True
    timeout: float = 60.0
    retries: int = 3
    backoff: float = 1.0
    workers: int = 4
    max_tokens: int = 8
    cache_dir: str | Path | None = None
    api_key_env: str = "OPENAI_API_KEY"
    progress: bool = False

    def __post_init__(self):
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0 or self.workers < 1:
            raise ValueError("HttpJudge: timeout must be > 0, retries and backoff >= 0, workers >= 1")
        for field in ("{prompt}", "{a}", "{b}"):
            if field not in self.template:
                raise ValueError(f"HttpJudge: the template has no {field} field")
        self.name = f"http:{self.model}"
        self.url = self.base_url.rstrip("/") + "/chat/completions"
        self._lock = threading.Lock()
        self._cache: dict[str, dict] = {}
        self._cache_file = None if self.cache_dir is None else Path(self.cache_dir) / "verdicts.jsonl"
        if self._cache_file is not None and self._cache_file.exists():
            for n, line in enumerate(self._cache_file.read_text().splitlines(), 1):
                try:
                    row = json.loads(line)
                    self._cache[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):  # a line cut by a killed process: asked again
                    print(f"[judge] {self._cache_file}:{n}: unreadable cache line skipped", file=sys.stderr)
        self.requests = 0  # requests actually sent (cache hits are not)

    # ------------------------------------------------------------------------------------------------ public

    def compare(self, prompts: Sequence[PromptExample], first: Sequence[str], second: Sequence[str]) -> np.ndarray:
        self._check(prompts, first, second)
        differ = [i for i, (a, b) in enumerate(zip(first, second)) if a != b]  # identical answers tie, unasked
        asks = [(i, prompts[i], first[i], second[i]) for i in differ]
        if self.both_orders:
            asks += [(i, prompts[i], second[i], first[i]) for i in differ]
        bodies = [self._body(p, a, b) for _, p, a, b in asks]
        keys = [self._key(body) for body in bodies]
        todo = {}  # each request not in the cache, asked once however often it recurs
        for key, body, (i, p, _, _) in zip(keys, bodies, asks):
            if key not in self._cache and key not in todo:
                todo[key] = (body, f"comparison {i} (domain {p.domain!r}, prompt {p.prompt[:40]!r}) at {self.url}")
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            for _ in self._progress(pool.map(lambda item: self._verdict(item[0], *item[1]), todo.items()),
                                    len(todo)):
                pass
        verdicts = np.asarray([float(self._cache[key]["verdict"]) for key in keys], dtype=float)
        n = len(differ)
        out = np.full(len(prompts), 0.5)
        out[differ] = verdicts[:n]
        if self.both_orders:  # the swapped order's verdict is about `second` in position A
            out[differ] = 0.5 * (verdicts[:n] + (1.0 - verdicts[n:]))
        return out

    def messages(self, prompt: PromptExample, a: str, b: str) -> list[dict]:
        """The chat messages of one comparison, response `a` in position A."""
        user = self.template.format(criterion=self.criterion, prompt=prompt.prompt, a=a, b=b)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    # ------------------------------------------------------------------------------------------------ internals

    def _progress(self, verdicts, total: int):
        step = max(1, total // 10)
        for done, v in enumerate(verdicts, 1):
            if self.progress and (done % step == 0 or done == total):
                print(f"[judge {self.model}] {done}/{total} requests answered", file=sys.stderr, flush=True)
            yield v

    def _body(self, prompt: PromptExample, a: str, b: str) -> dict:
        return {"model": self.model, "messages": self.messages(prompt, a, b), "temperature": 0.0,
                "max_tokens": self.max_tokens}

    @staticmethod
    def _key(body: dict) -> str:
        return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _verdict(self, key: str, body: dict, where: str) -> float:
        """Asks one request (with retries), caches and returns its verdict."""
        for attempt in range(self.retries + 1):
            try:
                reply = self._ask(body)
                verdict = parse_verdict(reply)
                if verdict is None:
                    raise _Transient(f"a reply that names neither A, B nor tie: {reply[:80]!r}")
                break
            except _Transient as e:
                if attempt == self.retries:
                    raise JudgeError(f"{where}: failed after {self.retries + 1} attempts; last: {e}") from None
                time.sleep(e.wait if e.wait is not None else self.backoff * 2 ** attempt)
            except JudgeError as e:
                raise JudgeError(f"{where}: {e}") from None
        row = {"key": key, "model": self.model, "verdict": verdict, "reply": reply}
        with self._lock:
            self._cache[key] = row
            if self._cache_file is not None:
                self._cache_file.parent.mkdir(parents=True, exist_ok=True)
                with self._cache_file.open("a") as f:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return verdict

    def _ask(self, body: dict) -> str:
        """The reply text of one request; raises _Transient (retry) or JudgeError (give up)."""
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers, method="POST")
        with self._lock:
            self.requests += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:200].decode("utf-8", "replace")
            if e.code == 429 or e.code >= 500:
                retry_after = e.headers.get("Retry-After") if e.headers else None
                wait = float(retry_after) if retry_after and retry_after.strip().isdigit() else None
                raise _Transient(f"HTTP {e.code}: {detail}", wait) from None
            raise JudgeError(f"HTTP {e.code} (not retried): {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Transient(f"no reply within {self.timeout:g} s or no connection: {reason}") from None
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            raise _Transient(f"a body that is not a chat completion: {raw[:80]!r}") from None


__all__ = ["CRITERION", "SYSTEM", "TEMPLATE", "HttpJudge", "JudgeError", "parse_verdict"]
