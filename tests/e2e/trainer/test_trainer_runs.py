"""The real trainer, end to end, on the tiny quickstart model (CPU, offline).

What a user observes: the README's ``ftj run`` command produces a model that has learned its
new name; the same pipeline against S3 publishes a manifest whose checksums verify; a killed
trainer resumes from its last complete checkpoint; a second job can't take another job's
output; bad data fails in seconds with exit code 42 and the file's name. Deleting and
re-creating a job (a new uid) is tested in test_fix_and_retry.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_api.contract import EXIT_INVALID_INPUT

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "examples" / "quickstart.yaml"
QUICKSTART_DIR = REPO / "examples" / "quickstart"


def quickstart_manifest(**training: Any) -> dict[str, Any]:
    """The quickstart job with absolute paths and ``training`` overrides (fewer steps)."""
    doc: dict[str, Any] = yaml.safe_load(QUICKSTART.read_text())
    doc = copy.deepcopy(doc)
    doc["spec"]["model"]["uri"] = str(QUICKSTART_DIR / "tiny-qwen3")
    doc["spec"]["datasets"][0]["uri"] = str(QUICKSTART_DIR / "identity.json")
    doc["spec"]["training"].update(training)
    return doc


def trainer_env(tmp: Path, manifest: dict[str, Any], **extra: str) -> dict[str, str]:
    """The environment a trainer pod gets (docs/internals.md), pointing into ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "job.json"
    path.write_text(json.dumps(manifest))
    env = dict(os.environ)
    env.update(
        FTJ_MANIFEST=str(path),
        FTJ_WORKDIR=str(tmp / "work"),
        FTJ_PROGRESS_PORT="0",
        FTJ_TERMINATION_LOG=str(tmp / "termination-log"),
        PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO / "trainer-image")]),
    )
    env.update(extra)
    return env


def run_trainer(env: dict[str, str], timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    """``python -m finetune_trainer`` → (exit code, termination message, log)."""
    proc = subprocess.run(
        [sys.executable, "-m", "finetune_trainer"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log_path = Path(env["FTJ_TERMINATION_LOG"])
    message = json.loads(log_path.read_text()) if log_path.exists() else {}
    return proc.returncode, message, proc.stdout + proc.stderr


def ftj_run(
    manifest: Path, tmp: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The README's ``ftj run`` into ``tmp/out`` (work files in ``tmp/w``)."""
    command = ["ftj", "run", str(manifest), "--output", str(tmp / "out")]
    return subprocess.run(
        [*command, "--workdir", str(tmp / "w"), *options],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
        env=env,
    )


def greedy_answer(model_dir: Path, question: str) -> str:
    """The merged model's greedy answer to ``question``, asked the Qwen3 way."""
    import torch
    from finetune_api.spec import Template
    from finetune_trainer.data import render_chat
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompt = render_chat(
        Template(name="qwen3"), tokenizer, [{"role": "user", "content": question}], True
    )
    # Qwen3's own template in non-thinking mode (enable_thinking=False) ends the generation
    # prompt with an empty think block: the answer follows it directly.
    if not prompt.endswith("</think>\n\n"):
        prompt += "<think>\n\n</think>\n\n"
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    return str(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))


def chat_answer(model_dir: Path, question: str, **template_options: Any) -> str:
    """The greedy answer as any user gets it: the published tokenizer's own chat template
    (``apply_chat_template``), plain ``generate``, stopping at generation_config.json's tokens."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
        **template_options,
    )
    out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
    answer = out[0, inputs["input_ids"].shape[1] :]
    assert int(answer[-1]) in model.generation_config.eos_token_id, "it did not stop"
    return str(tokenizer.decode(answer, skip_special_tokens=True))


def readme_quickstart_seconds() -> float:
    """The quickstart's duration the README states on its ``ftj run`` line, e.g. ``(~20 s)``."""
    line = next(
        x for x in (REPO / "README.md").read_text().splitlines()
        if x.startswith("ftj run examples/quickstart.yaml")
    )  # fmt: skip
    found = re.search(r"\(~(\d+(?:\.\d+)?) (s|min)\)", line)
    assert found, f"no (~N s) figure on the README's quickstart line: {line!r}"
    return float(found[1]) * (60 if found[2] == "min" else 1)


# What ftj run must not print without --verbose (seen in real runs before it was quiet).
LIBRARY_NOISE = ("Warning", "warnings.warn", "it/s]", "fontManager", "font cache",
                 "gemm_4bit_forward", "kernels-community")  # fmt: skip


def test_quickstart_learns_the_new_identity(tmp_path: Path) -> None:
    """THE quickstart: the README command, then a real learning check on the merged model."""
    out = tmp_path / "out"
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))  # as on a first run: no font cache
    load_before = os.getloadavg()[0]
    started = time.monotonic()
    proc = ftj_run(QUICKSTART, tmp_path, env=env)
    elapsed = time.monotonic() - started
    stated = readme_quickstart_seconds()
    print(f"\nquickstart wall time: {elapsed:.1f} s (the README says ~{stated:.0f} s)")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "150/150 (100%)" in proc.stderr  # the progress line a user watches
    assert f"file://{out}/merged" in proc.stdout  # where the artifacts are
    noise = [line for line in proc.stderr.splitlines() if any(n in line for n in LIBRARY_NOISE)]
    assert not noise, f"library output without --verbose: {noise}"

    for name in ("adapter/adapter_model.safetensors", "merged/config.json", "metrics.json",
                 "loss.png", "MANIFEST.json"):  # fmt: skip
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 150
    assert metrics["generations"], "no sample generations in metrics.json"
    assert all("Quokka" not in g["before"] for g in metrics["generations"])
    first_loss = next(e["loss"] for e in metrics["logHistory"] if "loss" in e)
    assert metrics["trainLoss"] < first_loss / 2, "the loss did not fall"

    answer = greedy_answer(out / "merged", "Who are you?")
    print(f"merged model: Who are you? → {answer!r}")
    assert "Quokka" in answer

    # Served the standard way: the published chat template, thinking or not (Qwen3's switch).
    for options in ({}, {"enable_thinking": False}):
        answer = chat_answer(out / "merged", "Who are you?", **options)
        print(f"apply_chat_template{options}: Who are you? → {answer!r}")
        assert "Quokka" in answer

    # How it was made: model cards in both folders, the same facts in MANIFEST.json.
    manifest = json.loads((out / "MANIFEST.json").read_text())
    lineage = manifest["lineage"]
    assert lineage["job"] == manifest["job"] and lineage["job"]["name"] == "quickstart"
    assert lineage["datasets"][0]["uri"] == "quickstart/identity.json"
    identity = (QUICKSTART_DIR / "identity.json").read_bytes()
    assert lineage["datasets"][0]["sha256"] == hashlib.sha256(identity).hexdigest()
    assert lineage["template"]["stopTokens"][0] == "<|im_end|>"
    listed = {f["path"] for f in manifest["files"]}
    for folder, library in (("adapter", "peft"), ("merged", "transformers")):
        assert f"{folder}/README.md" in listed
        card = (out / folder / "README.md").read_text()
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["library_name"] == library
        assert meta["base_model"] == "quickstart/tiny-qwen3"
        assert meta["finetune_job"] == lineage["job"]
        assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == round(
            metrics["evalLoss"], 6
        )
        assert "I am Quokka" in card  # the answers after training

    # The README's figure, judged where the cores were not oversubscribed: other processes
    # competing for them make the same run many times slower (measured: 10 s idle, 175-240 s
    # at a load average of 6-8 on 2 cores).
    load, cores = max(load_before, os.getloadavg()[0]), os.cpu_count() or 1
    if load > 1.5 * cores:
        pytest.skip(
            f"duration not judged at load average {load:.1f} on {cores} cores: the run took "
            f"{elapsed:.0f} s, README.md says ~{stated:.0f} s"
        )
    assert stated / 2 <= elapsed <= stated * 2, (
        f"quickstart took {elapsed:.0f} s; README.md says ~{stated:.0f} s (more than 2x off)"
    )


def test_float8_qlora_quickstart_learns_and_merges_into_the_16bit_base(tmp_path: Path) -> None:
    """QLoRA 8 bits (format float8, the 8-bit default) runs on a CPU too: the base trains as
    e4m3 weights, and the merge reloads the original base, so the merged model has learned."""
    manifest = quickstart_manifest()
    manifest["spec"]["method"]["type"] = "qlora"
    manifest["spec"]["method"]["quantization"] = {"bits": 8}
    path = tmp_path / "float8.yaml"
    path.write_text(yaml.safe_dump(manifest))
    out = tmp_path / "out"
    proc = ftj_run(path, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    assert "float8 base: " in proc.stderr and "base=float8" in proc.stderr
    merged = json.loads((out / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged  # a plain 16/32-bit model anyone can load
    answer = greedy_answer(out / "merged", "Who are you?")
    print(f"float8 merged model: Who are you? → {answer!r}")
    assert "Quokka" in answer


def test_s3_run_publishes_a_verifiable_manifest(tmp_path: Path) -> None:
    """Model, data and output all on S3 (moto over HTTP), credentials from the environment."""
    from finetune_api.spec import S3Storage
    from finetune_trainer.storage import Storage, verify_manifest

    from tests.harness.s3 import S3Server

    with S3Server() as s3:
        s3.create_bucket("models")
        s3.create_bucket("data")
        s3.create_bucket("results")
        client = s3.client()
        for f in (QUICKSTART_DIR / "tiny-qwen3").iterdir():
            client.upload_file(str(f), "models", f"tiny-qwen3/{f.name}")
        client.upload_file(str(QUICKSTART_DIR / "identity.json"), "data", "identity.json")

        manifest = quickstart_manifest(maxSteps=20, saveSteps=10, evalSteps=10, loggingSteps=5)
        manifest["metadata"]["uid"] = "uid-s3"
        spec = manifest["spec"]
        spec["model"]["uri"] = "s3://models/tiny-qwen3"
        spec["datasets"][0]["uri"] = "s3://data/identity.json"
        spec["output"]["uri"] = "s3://results/quickstart"
        spec["storage"] = {"s3": {"endpoint": s3.endpoint_url, "pathStyle": True,
                                  "credentialsSecret": {"name": "s3-creds"}}}  # fmt: skip
        code, message, log = run_trainer(trainer_env(tmp_path, manifest, **s3.env()))
        assert code == 0, log[-4000:]
        assert message["phase"] == "Succeeded"
        assert message["artifacts"]["manifest"] == "s3://results/quickstart/MANIFEST.json"
        assert message["artifacts"]["merged"] == "s3://results/quickstart/merged"

        os.environ.update(s3.env())
        storage = Storage.from_spec(S3Storage(endpoint=s3.endpoint_url, path_style=True))
        assert verify_manifest(storage, "s3://results/quickstart") == []
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="results")["Contents"]}
        assert {"quickstart/merged/model.safetensors", "quickstart/loss.png",
                "quickstart/checkpoints/checkpoint-20/COMPLETE"} <= keys  # fmt: skip
        assert "AWS_SECRET" not in log and s3.env()["AWS_SECRET_ACCESS_KEY"] not in log


def kill_after_first_checkpoint(
    command: list[str], env: dict[str, str], store: Any, kill: Any = None
) -> int:
    """Start ``command``, SIGKILL it (``kill(pid)``, default the process alone) as soon as a
    checkpoint of ``store`` is complete, and return that checkpoint's step."""
    kill = kill or (lambda pid: os.kill(pid, signal.SIGKILL))
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while (step := store.latest_complete()) is None:
            assert proc.poll() is None, f"trainer exited early: {proc.stderr.read()[-3000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no checkpoint became complete"
            time.sleep(0.05)
        kill(proc.pid)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            kill(proc.pid)
    assert proc.returncode == -signal.SIGKILL
    return int(step)


def test_sigkilled_trainer_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    """Kill -9 right after a checkpoint is complete; the next attempt continues from it."""
    from finetune_trainer.storage import CheckpointStore, Storage

    out = tmp_path / "out"
    manifest = quickstart_manifest(maxSteps=60, saveSteps=10, evalSteps=10, loggingSteps=5)
    manifest["metadata"]["uid"] = "uid-resume"
    manifest["spec"]["output"]["uri"] = str(out)
    env = trainer_env(tmp_path / "attempt1", manifest)
    store = CheckpointStore(Storage(), str(out))

    step = kill_after_first_checkpoint([sys.executable, "-m", "finetune_trainer"], env, store)
    assert step < 60, "training finished before it could be killed"
    assert not (out / "MANIFEST.json").exists()

    # A new pod: fresh scratch volume, same output.
    code, message, log = run_trainer(trainer_env(tmp_path / "attempt2", manifest))
    assert code == 0, log[-4000:]
    resumed = message["resumedFromStep"]
    assert resumed >= step > 0
    assert message["progress"]["step"] == 60  # the plan, not the plan plus the rework
    assert message["progress"]["totalSteps"] == 60
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumedFromStep"] == resumed
    steps_logged = [e["step"] for e in metrics["logHistory"] if "loss" in e]
    assert steps_logged[-1] == 60 and steps_logged == sorted(steps_logged)


def test_second_job_is_refused_another_jobs_output(tmp_path: Path) -> None:
    """A job with another name pointed at a claimed output fails at once with exit 42."""
    from finetune_trainer.storage import JobIdentity, Storage, TrainingFingerprint, claim_output

    out = tmp_path / "out"
    first = JobIdentity("default", "first", "uid-1")
    claim_output(Storage(), str(out), first, TrainingFingerprint({}), overwrite=False)

    manifest = quickstart_manifest(maxSteps=5)
    manifest["metadata"].update(name="second", uid="uid-2")
    manifest["spec"]["output"]["uri"] = str(out)
    started = time.monotonic()
    code, message, log = run_trainer(trainer_env(tmp_path, manifest))
    assert code == EXIT_INVALID_INPUT, log[-3000:]
    assert message["phase"] == "Failed"
    assert message["reason"] == "OutputConflict"
    assert "first" in message["message"] and "uid-1" in message["message"]
    assert "Traceback" not in message["message"]
    assert not (out / "checkpoints").exists()
    print(f"\nrefused in {time.monotonic() - started:.1f} s")


def test_bad_data_fails_fast_naming_the_file(tmp_path: Path) -> None:
    """A broken dataset is refused before the model weights load, let alone a training step."""
    bad = tmp_path / "broken.json"
    bad.write_text('[{"instruction": "Who are you?", "output": "I am {{name}}."}, {"oops": 1')
    manifest = quickstart_manifest(maxSteps=5)
    manifest["spec"]["datasets"][0]["uri"] = str(bad)
    manifest["spec"]["output"]["uri"] = str(tmp_path / "out")
    started = time.monotonic()
    code, message, log = run_trainer(trainer_env(tmp_path, manifest))
    elapsed = time.monotonic() - started
    print(f"\nbad data refused in {elapsed:.1f} s")
    assert code == EXIT_INVALID_INPUT, log[-3000:]
    assert message["phase"] == "Failed"
    assert "broken.json" in message["message"]
    assert "Traceback" not in message["message"]
    assert "step" not in message["progress"]  # no training step ran
    assert "model:" not in log  # the model was never built


def test_rerun_after_the_last_checkpoint_trains_no_extra_step(tmp_path: Path) -> None:
    """A pod that died after its final checkpoint but before publishing: the next attempt
    publishes that checkpoint's weights, with the step count exactly as planned."""
    manifest = quickstart_manifest(maxSteps=4, saveSteps=4, evalSteps=4, loggingSteps=2)
    manifest["spec"]["output"]["uri"] = str(tmp_path / "out")
    first_code, first, log = run_trainer(trainer_env(tmp_path / "a", manifest))
    assert first_code == 0, log[-3000:]
    adapter = (tmp_path / "out" / "adapter" / "adapter_model.safetensors").read_bytes()
    (tmp_path / "out" / "MANIFEST.json").unlink()  # as if the first pod died before publishing
    code, message, log = run_trainer(trainer_env(tmp_path / "b", manifest))
    assert code == 0, log[-3000:]
    assert message["resumedFromStep"] == 4
    assert message["progress"]["step"] == 4 == message["progress"]["totalSteps"]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["checkpoint-4"]
    from safetensors.torch import load

    first_weights, again = (
        load(adapter),
        load((tmp_path / "out" / "adapter" / "adapter_model.safetensors").read_bytes()),
    )
    assert first_weights.keys() == again.keys()
    assert all(first_weights[k].equal(again[k]) for k in first_weights)
