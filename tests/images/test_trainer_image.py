"""Inside the built trainer image, as the operator runs it: uid 1000, read-only root.

What the default GPU path needs at run time is checked here on a CPU host: Triton compiles a C
launcher per kernel signature (Liger's kernels, the fused LoRA dropout kernel) with the image's
C compiler and Python headers, so a C extension is built through Triton's own build helper;
every module the trainer imports at run time must import; the entry point must answer
``--help`` with nothing writable at all. Each container gets the security context the operator
renders (``finetune_operator.render``), so a change there is tested here too.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from finetune_operator import render

from tests.harness.cluster import expand_var_refs as _expand
from tests.harness.container_runtime import ContainerRuntime, Mount
from tests.images.conftest import OPERATOR_IMAGE, TRAINER_IMAGE

pytestmark = pytest.mark.images

# Modules the trainer imports at run time, lazily or not: the GPU path's packages and every
# finetune_trainer module (walked inside the image, so a new module is covered by itself).
THIRD_PARTY = (
    "torch",
    "triton",
    "transformers",
    "peft",
    "trl",
    "datasets",
    "accelerate",
    "safetensors",
    "boto3",
    "pyarrow",
    "matplotlib",
    "liger_kernel.transformers",
    "bitsandbytes",
    "prometheus_client",
    "pydantic",
    "yaml",
)


def run_in_image(
    runtime: ContainerRuntime,
    image: str,
    command: list[str] | None,
    tmp: Path | None,
    args: list[str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run one container of ``image`` with the trainer pod's security context; ``tmp`` (when
    given) is its /tmp emptyDir, and nothing else is writable."""
    container: dict[str, Any] = {
        "name": "check",
        "image": image,
        "securityContext": render.container_security_context(),
    }
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    pod_spec = {"securityContext": render.pod_security_context()}
    mounts = [Mount("/tmp", tmp)] if tmp is not None else []
    argv = runtime.command(pod_spec, container, {}, mounts, hostname="check", expand=_expand)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def python_in_image(
    runtime: ContainerRuntime, source: str, tmp: Path, image: str = TRAINER_IMAGE
) -> subprocess.CompletedProcess[str]:
    return run_in_image(runtime, image, ["python", "-c", textwrap.dedent(source)], tmp)


def test_entrypoint_help_runs_as_uid_1000_on_a_read_only_root(runtime: ContainerRuntime) -> None:
    # No volume at all: not even /tmp is writable, and --help must still work.
    result = run_in_image(runtime, TRAINER_IMAGE, None, None, args=["--help"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("usage: python -m finetune_trainer"), result.stdout
    assert "FTJ_MANIFEST" in result.stdout


def test_the_root_filesystem_is_read_only_and_the_user_is_1000(
    runtime: ContainerRuntime, tmp_path: Path
) -> None:
    result = python_in_image(
        runtime,
        """
        import os
        print("uid", os.getuid(), "gid", os.getgid(), "groups", sorted(os.getgroups()))
        open("/tmp/ok", "w").write("x")
        for path in ("/opt/venv/x", "/x", "/etc/finetune-x"):
            try:
                open(path, "w")
            except OSError as err:
                print(path, err.strerror)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "uid 1000 gid 1000 groups [1000]" in result.stdout
    for path in ("/opt/venv/x", "/x", "/etc/finetune-x"):
        assert f"{path} Read-only file system" in result.stdout, result.stdout
    assert (tmp_path / "ok").read_text() == "x"  # the emptyDir is the pod's to write
    assert (tmp_path / "ok").stat().st_uid == 1000  # and the file is uid 1000's on the host


def test_triton_builds_a_c_launcher_with_the_images_compiler(
    runtime: ContainerRuntime, tmp_path: Path
) -> None:
    """What Triton does before a kernel's first launch: compile a C extension against the
    image's Python headers with its C compiler (``triton.runtime.build``)."""
    result = python_in_image(
        runtime,
        """
        import os, tempfile
        from triton.runtime.build import compile_module_from_src

        src = '''
        #define PY_SSIZE_T_CLEAN
        #include <Python.h>
        static PyObject* answer(PyObject* self, PyObject* args) { return PyLong_FromLong(42); }
        static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
        static struct PyModuleDef mod = {PyModuleDef_HEAD_INIT, "ftj_launcher", NULL, -1, methods};
        PyMODINIT_FUNC PyInit_ftj_launcher(void) { return PyModule_Create(&mod); }
        '''
        module = compile_module_from_src(src, "ftj_launcher", libraries=[])
        print("launcher says", module.answer())
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "launcher says 42" in result.stdout


def test_every_runtime_module_imports(runtime: ContainerRuntime, tmp_path: Path) -> None:
    result = python_in_image(
        runtime,
        f"""
        import importlib, pkgutil
        import finetune_trainer
        names = list({THIRD_PARTY!r})
        walk = pkgutil.walk_packages(finetune_trainer.__path__, "finetune_trainer.")
        names += [m.name for m in walk]
        failed = []
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as err:
                failed.append(f"{{name}}: {{type(err).__name__}}: {{err}}")
        print("imported", len(names) - len(failed), "of", len(names))
        print("FAILED" if failed else "ALL OK", *failed, sep="\\n")
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ALL OK" in result.stdout, result.stdout


def test_operator_image_imports_its_entry_point(runtime: ContainerRuntime, tmp_path: Path) -> None:
    result = python_in_image(
        runtime,
        """
        import finetune_operator.main, kopf, kubernetes
        print("operator ok", kopf.__version__ if hasattr(kopf, "__version__") else "")
        """,
        tmp_path,
        image=OPERATOR_IMAGE,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "operator ok" in result.stdout
