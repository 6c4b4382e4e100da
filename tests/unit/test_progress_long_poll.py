"""/progress as a long poll, end to end between the trainer's real server and the operator's
client: a new step is delivered as soon as the trainer has it, an unchanged one waits the
asked time and answers 304, and a server that ignores the headers still works (plain poll)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from finetune_api.contract import PROGRESS_MAX_WAIT, prefer_wait
from finetune_operator import metrics
from finetune_operator.progress import ProgressAnswer, ProgressTarget, fetch_progress
from finetune_trainer.progress import ProgressReporter

pytestmark = pytest.mark.unit

ARGS: Any = SimpleNamespace()


def fetch(url: str, etag: str | None = None, wait: float = 0.0) -> ProgressAnswer | None:
    async def once() -> ProgressAnswer | None:
        async with aiohttp.ClientSession() as session:
            return await fetch_progress(session, ProgressTarget("uid", "pod", url), 5.0, etag, wait)

    return asyncio.run(once())


def polls(outcome: str) -> float:
    """The operator's finetune_operator_progress_polls_total{outcome} so far."""
    value = metrics.REGISTRY.get_sample_value(
        "finetune_operator_progress_polls_total", {"outcome": outcome}
    )
    return value or 0.0


def started_reporter() -> tuple[ProgressReporter, Any, str]:
    reporter = ProgressReporter("127.0.0.1", 0)
    reporter.start()
    state = SimpleNamespace(global_step=7, max_steps=100, epoch=0.1)
    reporter.on_train_begin(ARGS, state, ARGS)
    return reporter, state, f"http://127.0.0.1:{reporter.port}/progress"


def test_a_new_step_answers_the_waiting_poll_at_once() -> None:
    reporter, state, url = started_reporter()
    try:
        first = fetch(url)
        assert first is not None and first.data is not None and first.etag
        assert first.data["step"] == 7

        def next_step() -> None:
            time.sleep(0.3)
            state.global_step = 8
            reporter.on_step_end(ARGS, state, ARGS)

        threading.Thread(target=next_step).start()
        began = time.monotonic()
        answer = fetch(url, first.etag, wait=20.0)
        took = time.monotonic() - began
        assert answer is not None and answer.data is not None
        assert answer.data["step"] == 8 and answer.etag != first.etag
        assert 0.25 <= took < 10.0  # waited for the step, not for the 20 s asked
    finally:
        reporter.stop()


def test_an_unchanged_progress_waits_the_asked_time_then_answers_304() -> None:
    reporter, _, url = started_reporter()
    try:
        first = fetch(url)
        assert first is not None
        unchanged = polls("unchanged")
        began = time.monotonic()
        answer = fetch(url, first.etag, wait=0.5)
        assert time.monotonic() - began >= 0.5
        assert answer == ProgressAnswer(None, first.etag)
        assert polls("unchanged") == unchanged + 1  # what an operator's /metrics shows
        # Without an ETag (a first poll, or a new pod) the answer comes at once.
        began = time.monotonic()
        again = fetch(url, None, wait=5.0)
        assert again is not None and again.data is not None
        assert time.monotonic() - began < 2.0
    finally:
        reporter.stop()


def test_a_trainer_that_ignores_the_headers_is_polled_as_before() -> None:
    document = {"phase": "Training", "step": 3}

    class OldTrainer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), OldTrainer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        began = time.monotonic()
        answer = fetch(f"http://127.0.0.1:{server.server_address[1]}/progress", '"x"', 20.0)
        assert answer == ProgressAnswer(document, None)
        assert time.monotonic() - began < 5.0
    finally:
        server.shutdown()
        server.server_close()


def test_a_trainer_that_does_not_answer_in_time_counts_as_a_timeout() -> None:
    """The operator's metrics tell a trainer too slow to answer from one that refuses."""
    release = threading.Event()

    class Stuck(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            release.wait(10)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Stuck)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/progress"

    async def once() -> ProgressAnswer | None:
        async with aiohttp.ClientSession() as session:
            return await fetch_progress(session, ProgressTarget("uid", "pod", url), 0.3)

    timeouts, errors = polls("timeout"), polls("error")
    try:
        assert asyncio.run(once()) is None
        assert polls("timeout") == timeouts + 1
    finally:
        release.set()
        server.shutdown()
        server.server_close()
    assert fetch(url) is None  # nothing listens any more: refused
    assert polls("error") == errors + 1


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, 0.0),
        ("wait=12", 12.0),
        ("respond-async, wait=2.5", 2.5),
        ("wait=100000", PROGRESS_MAX_WAIT),
        ("wait=-3", 0.0),
        ("wait=soon", 0.0),
        ("return=minimal", 0.0),
    ],
)
def test_prefer_wait_reads_rfc_7240(header: str | None, seconds: float) -> None:
    assert prefer_wait(header) == seconds
