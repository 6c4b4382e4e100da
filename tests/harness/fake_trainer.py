"""A stand-in trainer that honours the pod contract of docs/internals.md in milliseconds.

Why: harness self-tests and the many-jobs scenario need a pod that behaves like the trainer
(serves ``/progress`` on ``FTJ_PROGRESS_HOST:FTJ_PROGRESS_PORT``, checkpoints, resumes, writes
the termination message, exits 0/1/42) without importing torch. Standard library only, except
boto3 when the output is ``s3://``.

Behaviour, from the manifest (``FTJ_MANIFEST``, the FineTuneJob as JSON) and the environment:

* steps: ``spec.training.maxSteps`` (default 20), or ``FAKE_TRAINER_STEPS``;
* one step every ``FAKE_TRAINER_STEP_SECONDS`` (default 0.05); the annotation
  ``fake-trainer.finetune.dev/step-seconds`` in the manifest overrides it (only Jobs written
  by tests carry annotations: the operator's job.json drops them, so operator tests use
  :meth:`JobSimulator.set_pod_env` to set the ``FAKE_TRAINER_*`` variables per job);
* a checkpoint every ``spec.training.saveSteps`` under ``<output>/checkpoints/checkpoint-N``
  (``COMPLETE`` marker last); a restarted pod resumes from the newest complete one and reports
  ``resumedFromStep``;
* exit code ``FAKE_TRAINER_EXIT_CODE`` or annotation ``fake-trainer.finetune.dev/exit-code``
  (42 writes ``reason: InvalidInput`` with ``FAKE_TRAINER_MESSAGE``), any dataset URI containing
  ``invalid`` also exits 42 before the first step;
* on success uploads ``adapter/``, ``merged/``, ``metrics.json``, ``loss.png`` and
  ``MANIFEST.json`` (last, with sizes and sha256) to ``spec.output.uri`` (``file://``, a plain
  path, or ``s3://`` using ``spec.storage.s3.endpoint`` / ``AWS_*`` variables).

Run: ``python tests/harness/fake_trainer.py`` with the pod's environment.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ANNOTATION = "fake-trainer.finetune.dev/"
STATE: dict[str, Any] = {"phase": "Initializing"}


class _Progress(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        if self.path.startswith("/progress"):
            body = json.dumps(STATE).encode()
            ctype = "application/json"
        elif self.path.startswith("/healthz"):
            body, ctype = b"ok", "text/plain"
        elif self.path.startswith("/metrics"):
            body = "".join(
                f"finetune_trainer_{k} {v}\n"
                for k, v in STATE.items()
                if isinstance(v, (int, float))
            ).encode()
            ctype = "text/plain; version=0.0.4"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the operator polls often."""


class Output:
    """Just enough of file:// and s3:// to checkpoint and publish."""

    def __init__(self, uri: str, manifest: dict[str, Any]) -> None:
        self.uri = uri.rstrip("/")
        self.s3 = None
        if self.uri.startswith("s3://"):
            import boto3  # only S3 jobs pay for the import

            settings = ((manifest.get("spec") or {}).get("storage") or {}).get("s3") or {}
            self.bucket, _, self.prefix = self.uri[5:].partition("/")
            self.s3 = boto3.client(
                "s3",
                endpoint_url=settings.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL"),
                region_name=settings.get("region", "us-east-1"),
            )
        else:
            path = self.uri[7:] if self.uri.startswith("file://") else self.uri
            self.root = Path(path)

    def put(self, key: str, data: bytes) -> None:
        if self.s3 is not None:
            self.s3.put_object(
                Bucket=self.bucket, Key=f"{self.prefix}/{key}".lstrip("/"), Body=data
            )
        else:
            target = self.root / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def exists(self, key: str) -> bool:
        if self.s3 is not None:
            try:
                self.s3.head_object(Bucket=self.bucket, Key=f"{self.prefix}/{key}".lstrip("/"))
                return True
            except Exception:
                return False
        return (self.root / key).exists()

    def latest_checkpoint(self, total: int) -> int:
        for step in range(total, 0, -1):
            if self.exists(f"checkpoints/checkpoint-{step}/COMPLETE"):
                return step
        return 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finish(code: int, summary: dict[str, Any]) -> None:
    path = os.environ.get("FTJ_TERMINATION_LOG", "/dev/termination-log")
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(summary)[:4096])
    STATE["phase"] = summary["phase"]
    print(json.dumps({"event": "finished", **summary}), flush=True)
    sys.exit(code)


def main() -> None:
    """Serve progress, train in fake steps, publish, exit per the contract."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    manifest: dict[str, Any] = {}
    if os.environ.get("FTJ_MANIFEST"):
        manifest = json.loads(Path(os.environ["FTJ_MANIFEST"]).read_text())
    spec = manifest.get("spec") or {}
    notes = (manifest.get("metadata") or {}).get("annotations") or {}
    training = spec.get("training") or {}
    total = int(
        os.environ.get("FAKE_TRAINER_STEPS")
        or notes.get(ANNOTATION + "steps")
        or training.get("maxSteps")
        or 20
    )
    save_every = int(training.get("saveSteps") or max(total // 4, 1))
    step_seconds = float(
        os.environ.get("FAKE_TRAINER_STEP_SECONDS")
        or notes.get(ANNOTATION + "step-seconds")
        or 0.05
    )
    exit_code = int(
        os.environ.get("FAKE_TRAINER_EXIT_CODE") or notes.get(ANNOTATION + "exit-code") or 0
    )
    output_uri = (
        os.environ.get("FTJ_OUTPUT_URI")
        or (spec.get("output") or {}).get("uri")
        or os.path.join(os.environ.get("FTJ_WORKDIR", "."), "output")
    )

    host = os.environ.get("FTJ_PROGRESS_HOST", "0.0.0.0")
    port = int(os.environ.get("FTJ_PROGRESS_PORT", "8080"))
    if port:
        server = ThreadingHTTPServer((host, port), _Progress)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(
        json.dumps({"event": "started", "progress": f"{host}:{port}", "steps": total}), flush=True
    )

    bad = [d.get("uri", "") for d in spec.get("datasets") or [] if "invalid" in d.get("uri", "")]
    if exit_code == 42 or bad:
        message = os.environ.get("FAKE_TRAINER_MESSAGE") or (
            f"spec.datasets[0].uri: {bad[0]}: line 3: missing field 'output' "
            "(alpaca format needs instruction and output)"
            if bad
            else "fake trainer: invalid input"
        )
        _finish(42, {"phase": "Failed", "reason": "InvalidInput", "message": message})

    output = Output(output_uri, manifest)
    start = output.latest_checkpoint(total)
    STATE.update(phase="Training", step=start, totalSteps=total, updatedAt=_now())
    if start:
        STATE["resumedFromStep"] = start
        print(json.dumps({"event": "resumed", "step": start}), flush=True)
    began = time.monotonic()
    for step in range(start + 1, total + 1):
        time.sleep(step_seconds)
        loss = round(2.5 * math.exp(-step / max(total / 3, 1)) + 0.1, 4)
        rate = (step - start) / max(time.monotonic() - began, 1e-6)
        eta = int((total - step) / rate) if rate else 0
        STATE.update(
            step=step,
            percent=round(100 * step / total, 1),
            loss=loss,
            learningRate=training.get("learningRate", 2e-4),
            epoch=step / total,
            summary=f"{step}/{total}",
            tokensPerSecond=round(rate * 512, 1),
            etaSeconds=eta,
            eta=f"{eta}s",
            updatedAt=_now(),
        )
        if step % save_every == 0 and step < total:
            output.put(f"checkpoints/checkpoint-{step}/state.json", json.dumps(STATE).encode())
            output.put(f"checkpoints/checkpoint-{step}/COMPLETE", b"")
        if step % 10 == 0:
            print(json.dumps({"event": "step", "step": step, "loss": loss}), flush=True)

    if exit_code:
        _finish(
            exit_code,
            {
                "phase": "Failed",
                "reason": "TrainerError",
                "message": os.environ.get("FAKE_TRAINER_MESSAGE", "fake failure"),
                "progress": dict(STATE),
            },
        )
    STATE["phase"] = "Uploading"
    files = {
        "adapter/adapter_config.json": b'{"r": 16}',
        "adapter/adapter_model.safetensors": b"fake-adapter",
        "merged/model.safetensors": b"fake-merged",
        "metrics.json": json.dumps({"trainLoss": STATE.get("loss")}).encode(),
        "loss.png": b"\x89PNG fake",
    }
    for key, data in files.items():
        output.put(key, data)
    meta = manifest.get("metadata") or {}
    output.put(
        "MANIFEST.json",
        json.dumps(
            {
                "job": {k: meta.get(k) for k in ("namespace", "name", "uid")},
                "spec": spec,
                "files": [
                    {"path": k, "size": len(v), "sha256": hashlib.sha256(v).hexdigest()}
                    for k, v in files.items()
                ],
                "createdAt": _now(),
            }
        ).encode(),
    )
    STATE.update(phase="Succeeded", percent=100.0, etaSeconds=0, eta="0s")
    base = output.uri
    _finish(
        0,
        {
            "phase": "Succeeded",
            "progress": dict(STATE),
            "artifacts": {
                "adapter": f"{base}/adapter",
                "merged": f"{base}/merged",
                "metrics": f"{base}/metrics.json",
                "lossPlot": f"{base}/loss.png",
                "manifest": f"{base}/MANIFEST.json",
            },
            **({"resumedFromStep": start} if start else {}),
        },
    )


if __name__ == "__main__":
    main()
