"""The operator-trainer contract (finetune_api.contract): one copy, read the same way by both.

What a user relies on: the pod the operator renders starts a trainer that finds its job, serves
progress where the operator polls, writes its termination message where the kubelet reads it,
and exits with the code the Job's podFailurePolicy matches. These tests check that each side
takes those values from the contract module rather than from a copy of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from finetune_api import contract, parse_manifest
from finetune_api.contract import TrainerEnvironment
from finetune_operator.render import render_objects
from finetune_operator.settings import OperatorSettings
from finetune_trainer import errors as trainer_errors

from tests.cases.manifests import minimal_manifest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CONTRACT = REPO / "operator" / "finetune_api" / "contract.py"


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (REPO / folder).rglob("*.py"))


def test_the_trainer_fails_with_the_contracts_exit_codes() -> None:
    assert trainer_errors.TrainerError("x").exit_code == contract.EXIT_FAILED
    assert trainer_errors.InvalidInput("x").exit_code == contract.EXIT_INVALID_INPUT == 42


def test_the_environment_reads_back_what_it_writes() -> None:
    given = TrainerEnvironment(
        manifest="/j.json",
        workdir="/w",
        cache_dir="/c",
        output_uri="s3://b/o",
        progress_host="127.0.0.1",
        progress_port=0,
        termination_log="/t",
    )
    assert TrainerEnvironment.from_env(given.to_env()) == given
    assert set(given.to_env()) == set(contract.RUNTIME_ENV_DOCS)


def test_unset_or_empty_variables_take_the_pods_defaults() -> None:
    defaults = TrainerEnvironment.from_env({})
    assert defaults == TrainerEnvironment.from_env(dict.fromkeys(contract.RUNTIME_ENV_DOCS, ""))
    assert defaults.manifest == "/etc/finetune/job.json"
    assert defaults.progress_port == 8080
    assert defaults.termination_log == "/dev/termination-log"
    assert defaults.workdir is None and defaults.cache_dir is None and defaults.output_uri is None


def test_a_bad_port_names_the_variable() -> None:
    with pytest.raises(ValueError, match="FTJ_PROGRESS_PORT='eighty'"):
        TrainerEnvironment.from_env({"FTJ_PROGRESS_PORT": "eighty"})


@pytest.mark.parametrize("cache_claim", [None, "models"])
def test_the_rendered_pod_is_what_the_trainer_reads(cache_claim: str | None) -> None:
    manifest = minimal_manifest("contract")
    manifest["metadata"]["uid"] = "0b6c1f9e-0000-4000-8000-000000000001"
    if cache_claim:
        manifest["spec"]["resources"] = {"modelCacheClaim": cache_claim}
    job = render_objects(parse_manifest(manifest), OperatorSettings()).job
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    seen = TrainerEnvironment.from_env(env)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert seen.manifest.startswith(contract.CONFIG_DIR + "/") and contract.CONFIG_DIR in mounts
    assert seen.workdir == contract.SCRATCH_DIR and contract.SCRATCH_DIR in mounts
    assert seen.cache_dir == (
        contract.CACHE_DIR if cache_claim else f"{contract.SCRATCH_DIR}/cache"
    )
    assert seen.output_uri is None  # the spec's output
    assert (seen.progress_host, seen.progress_port) == (contract.PROGRESS_HOST, 8080)
    assert {"name": "progress", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    assert seen.termination_log == container["terminationMessagePath"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert any(r["action"] == "FailJob" and r["onExitCodes"]["values"] == [42] for r in rules), (
        rules
    )


def test_no_module_restates_the_contract() -> None:
    """The variable names and pod paths are written once, in finetune_api/contract.py: a
    string literal equal to one of them anywhere else in the operator, the CLI or the trainer
    is a copy that can drift."""
    values = {
        *contract.RUNTIME_ENV_DOCS,
        contract.MANIFEST_PATH,
        contract.CONFIG_DIR,
        contract.SCRATCH_DIR,
        contract.CACHE_DIR,
        contract.TERMINATION_LOG,
    }
    copies = []
    for path in _python_files("operator", "trainer-image"):
        if path == CONTRACT:
            continue
        tree = ast.parse(path.read_text())
        # Pieces of an f-string (f"{contract.SCRATCH_DIR}/cache") are not values of their own.
        pieces = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in values and id(node) not in pieces:
                copies.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not copies, "\n".join(copies)


def test_the_contract_needs_only_the_standard_library() -> None:
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(ast.parse(CONTRACT.read_text()))
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(ast.parse(CONTRACT.read_text()))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported <= {"__future__", "collections", "dataclasses", "typing"}, imported


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("operator/finetune_api", ("finetune_trainer", "finetune_operator", "kopf", "torch")),
        ("operator/finetune_operator", ("finetune_trainer", "torch")),
    ],
)
def test_package_imports_stay_on_their_side(package: str, forbidden: tuple[str, ...]) -> None:
    for path in _python_files(package):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
