"""A valid minimal FineTuneJob and a catalogue of mutations that make it invalid.

The same catalogue is checked client-side (``ftj validate``) and by the real API server, and
each entry names the fragment both messages must contain: the field a user has to fix.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Manifest = dict[str, Any]


def minimal_manifest(name: str = "minimal") -> Manifest:
    """The smallest useful FineTuneJob: everything else comes from defaults."""
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/Qwen/Qwen3-8B"},
            "datasets": [{"uri": "s3://datasets/identity.jsonl"}],
            "output": {"uri": "s3://finetunes/minimal"},
        },
    }


@dataclass(frozen=True)
class BadCase:
    """One way to get a manifest wrong, and what the refusal must mention."""

    id: str
    mutate: Callable[[Manifest], None]
    fragment: str

    def manifest(self) -> Manifest:
        """A fresh copy of the minimal manifest with this mistake applied."""
        data = copy.deepcopy(minimal_manifest(f"bad-{self.id}"))
        self.mutate(data)
        return data


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """A mutation setting ``spec.a.b`` (dots; ``[0]`` for list items) to ``value``."""

    def apply(data: Manifest) -> None:
        node: Any = data
        parts = path.replace("[", ".[").split(".")
        for part in parts[:-1]:
            key: Any = int(part[1:-1]) if part.startswith("[") else part
            if isinstance(key, str) and key not in node:
                node[key] = {}
            node = node[key]
        last = parts[-1]
        node[int(last[1:-1]) if last.startswith("[") else last] = value

    return apply


def _delete(path: str) -> Callable[[Manifest], None]:
    def apply(data: Manifest) -> None:
        parent, _, key = path.rpartition(".")
        node: Any = data
        for part in parent.split("."):
            node = node[part]
        del node[key]

    return apply


def _both(*mutations: Callable[[Manifest], None]) -> Callable[[Manifest], None]:
    def apply(data: Manifest) -> None:
        for mutation in mutations:
            mutation(data)

    return apply


OUTPUT_NOT_DURABLE = "spec.output.uri is a local path that no durable volume of the pod holds"


def _pvc_pod(*, read_only: bool = False, claim: str = "team-data") -> Manifest:
    """spec.pod mounting a PersistentVolumeClaim at /data."""
    return {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": read_only}],
    }


BAD_CASES: list[BadCase] = [
    BadCase("no-model", _delete("spec.model"), "spec.model"),
    BadCase("model-uri-scheme", _set("spec.model.uri", "ftp://host/model"), "spec.model.uri"),
    BadCase("no-datasets", _set("spec.datasets", []), "spec.datasets"),
    BadCase("dataset-format", _set("spec.datasets[0].format", "csv"), "spec.datasets[0].format"),
    BadCase(
        "dataset-num-samples", _set("spec.datasets[0].numSamples", 0), "spec.datasets[0].numSamples"
    ),
    BadCase("template-name", _set("spec.template.name", "mistral"), "spec.template.name"),
    BadCase(
        "template-reasoning", _set("spec.template.reasoning", "hide"), "spec.template.reasoning"
    ),
    BadCase("method-type", _set("spec.method.type", "full"), "spec.method.type"),
    BadCase(
        "quantization-without-qlora",
        _set("spec.method.quantization", {"bits": 4}),
        "spec.method.quantization is only allowed with spec.method.type: qlora",
    ),
    BadCase(
        "quantization-bits",
        _both(_set("spec.method.type", "qlora"), _set("spec.method.quantization", {"bits": 3})),
        "spec.method.quantization.bits",
    ),
    BadCase("lora-rank-zero", _set("spec.method.lora.r", 0), "spec.method.lora.r"),
    BadCase("lora-dropout", _set("spec.method.lora.dropout", 1.5), "spec.method.lora.dropout"),
    BadCase(
        "lora-no-targets",
        _set("spec.method.lora.targetModules", []),
        "spec.method.lora.targetModules",
    ),
    BadCase(
        "epochs-and-max-steps",
        _set("spec.training", {"epochs": 1, "maxSteps": 100}),
        "set exactly one of spec.training.epochs or spec.training.maxSteps",
    ),
    BadCase(
        "neither-epochs-nor-max-steps",
        _set("spec.training", {"learningRate": 0.0001}),
        "set exactly one of spec.training.epochs or spec.training.maxSteps",
    ),
    BadCase(
        "learning-rate-negative",
        _set("spec.training.learningRate", -0.001),
        "spec.training.learningRate",
    ),
    BadCase(
        "splits-too-large",
        _set("spec.training", {"epochs": 1, "validationSplit": 0.6, "testSplit": 0.5}),
        "validationSplit + spec.training.testSplit must be less than 1",
    ),
    BadCase("precision", _set("spec.training.precision", "int4"), "spec.training.precision"),
    BadCase("batch-size-zero", _set("spec.training.batchSize", 0), "spec.training.batchSize"),
    BadCase(
        "cutoff-too-short", _set("spec.training.cutoffLength", 1), "spec.training.cutoffLength"
    ),
    BadCase("scheduler", _set("spec.training.lrScheduler", "fancy"), "spec.training.lrScheduler"),
    BadCase(
        "gradient-checkpointing-bool",
        _set("spec.training.gradientCheckpointing", True),
        "spec.training.gradientCheckpointing",
    ),
    BadCase(
        "multi-node-without-gpus",
        _set("spec.resources", {"nodes": 2, "gpus": 0}),
        "spec.resources.nodes > 1 needs spec.resources.gpus >= 1",
    ),
    BadCase("gpus-negative", _set("spec.resources.gpus", -1), "spec.resources.gpus"),
    BadCase("cpu-quantity", _set("spec.resources.cpu", "lots"), "spec.resources.cpu"),
    BadCase(
        "qlora-on-cpu",
        _both(_set("spec.method.type", "qlora"), _set("spec.resources.gpus", 0)),
        "spec.method.type: qlora needs spec.resources.gpus >= 1",
    ),
    BadCase(
        "qlora-int8-on-cpu",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8, "format": "int8"}),
            _set("spec.resources.gpus", 0),
        ),
        "spec.method.type: qlora needs spec.resources.gpus >= 1",
    ),
    BadCase(
        "quantization-format-not-bits",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8, "format": "nf4"}),
        ),
        "spec.method.quantization.format: nf4 goes with bits: 4",
    ),
    BadCase(
        "quantization-float8-4-bits",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"format": "float8"}),
        ),
        "spec.method.quantization.format: nf4 goes with bits: 4",
    ),
    BadCase("no-output", _delete("spec.output"), "spec.output"),
    BadCase("output-hub", _set("spec.output.uri", "hf://org/name"), "spec.output.uri"),
    BadCase(
        "output-is-model",
        _set("spec.output.uri", "s3://models/Qwen/Qwen3-8B"),
        "spec.output.uri must differ from spec.model.uri",
    ),
    BadCase(
        "s3-endpoint",
        _set("spec.storage.s3", {"endpoint": "minio:9000"}),
        "spec.storage.s3.endpoint",
    ),
    BadCase(
        "register-merged-without-merge",
        _both(
            _set("spec.output.merge", False),
            _set(
                "spec.tracking",
                {"mlflow": {"trackingUri": "http://mlflow:5000", "registeredModel": {"name": "m"}}},
            ),
        ),
        "registeredModel.artifact: merged needs spec.output.merge: true",
    ),
    BadCase(
        "tracking-uri-credentials",
        _set("spec.tracking.mlflow", {"trackingUri": "https://user:secret@mlflow.example.com"}),
        "spec.tracking.mlflow.trackingUri",
    ),
    BadCase("budget-zero", _set("spec.limits.maxGPUHours", 0), "spec.limits.maxGPUHours"),
    BadCase("backoff-negative", _set("spec.backoffLimit", -1), "spec.backoffLimit"),
    BadCase("queue-name", _set("spec.queueName", "Not_A_Queue"), "spec.queueName"),
    BadCase("typo-field", _set("spec.trainig", {"epochs": 1}), "trainig"),
    # --- spec.pod: what the operator owns is refused by name, with the field to use instead
    *(
        BadCase(
            f"pod-owns-{field}",
            _set(f"spec.pod.{field}", value),
            f"spec.pod.{field} is set by the operator",
        )
        for field, value in (
            ("command", ["bash", "-c", "train.sh"]),
            ("args", ["--fast"]),
            ("ports", [{"containerPort": 9000}]),
            ("securityContext", {"privileged": True}),
            ("image", "my/trainer:1"),
            ("resources", {"limits": {"cpu": "8"}}),
            ("containers", [{"name": "sidecar", "image": "busybox"}]),
            ("initContainers", [{"name": "init", "image": "busybox"}]),
            ("restartPolicy", "OnFailure"),
            ("nodeSelector", {"pool": "gpu"}),
            ("tolerations", [{"operator": "Exists"}]),
            ("affinity", {"nodeAffinity": {}}),
            ("priorityClassName", "high"),
            ("automountServiceAccountToken", True),
        )
    ),
    BadCase(
        "pod-env-ftj",
        _set("spec.pod.env", [{"name": "FTJ_WORKDIR", "value": "/data"}]),
        "spec.pod.env: FTJ_* and HOME",
    ),
    BadCase(
        "pod-env-home",
        _set("spec.pod.env", [{"name": "HF_HOME", "value": "/data/hf"}]),
        "spec.pod.env: FTJ_* and HOME",
    ),
    BadCase(
        "pod-env-aws-key",
        _set(
            "spec.pod.env",
            [
                {
                    "name": "AWS_SECRET_ACCESS_KEY",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ],
        ),
        "spec.storage.s3.credentialsSecret",
    ),
    BadCase(
        "pod-env-hf-token",
        _set("spec.pod.env", [{"name": "HF_TOKEN", "value": "hf_x"}]),
        "spec.storage.hf.tokenSecret",
    ),
    BadCase(
        "pod-env-value-and-value-from",
        _set(
            "spec.pod.env",
            [
                {
                    "name": "A",
                    "value": "1",
                    "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                }
            ],
        ),
        "spec.pod.env[]: set value or valueFrom, not both",
    ),
    BadCase(
        "pod-env-from-both",
        _set("spec.pod.envFrom", [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]),
        "spec.pod.envFrom[]: set exactly one of configMapRef or secretRef",
    ),
    BadCase(
        "pod-volume-named-scratch",
        _set("spec.pod.volumes", [{"name": "scratch", "emptyDir": {}}]),
        "spec.pod.volumes[].name: job-config, scratch",
    ),
    BadCase(
        "pod-volume-two-sources",
        _set(
            "spec.pod.volumes",
            [{"name": "data", "emptyDir": {}, "nfs": {"server": "n", "path": "/"}}],
        ),
        "spec.pod.volumes[]: set exactly one of persistentVolumeClaim",
    ),
    BadCase(
        "pod-volume-host-path",
        _set("spec.pod.volumes", [{"name": "data", "hostPath": {"path": "/"}}]),
        "hostPath",
    ),
    BadCase(
        "pod-volume-names-twice",
        _set(
            "spec.pod.volumes", [{"name": "data", "emptyDir": {}}, {"name": "data", "emptyDir": {}}]
        ),
        "spec.pod.volumes[].name: each volume needs a name of its own",
    ),
    BadCase(
        "pod-mount-over-scratch",
        _both(
            _set("spec.pod.volumes", [{"name": "data", "emptyDir": {}}]),
            _set("spec.pod.volumeMounts", [{"name": "data", "mountPath": "/scratch"}]),
        ),
        "spec.pod.volumeMounts[].mountPath: /etc/finetune, /scratch",
    ),
    BadCase(
        "pod-mount-without-volume",
        _set("spec.pod.volumeMounts", [{"name": "data", "mountPath": "/data"}]),
        "spec.pod.volumeMounts[].name must be the name of a volume in spec.pod.volumes",
    ),
    BadCase(
        "pod-mount-relative",
        _both(
            _set("spec.pod.volumes", [{"name": "data", "emptyDir": {}}]),
            _set("spec.pod.volumeMounts", [{"name": "data", "mountPath": "data/"}]),
        ),
        "spec.pod.volumeMounts[0].mountPath",
    ),
    BadCase(
        "pod-label-operator",
        _set("spec.pod.labels", {"app.kubernetes.io/name": "mine"}),
        "spec.pod.labels: keys under app.kubernetes.io/",
    ),
    BadCase(
        "pod-annotation-job-controller",
        _set("spec.pod.annotations", {"batch.kubernetes.io/job-completion-index": "3"}),
        "spec.pod.annotations: keys under finetune.dev/",
    ),
    BadCase(
        "pod-extra-cpu",
        _set("spec.pod.extraResources", {"cpu": 8}),
        "spec.pod.extraResources: cpu and memory are spec.resources.cpu",
    ),
    BadCase(
        "pod-extra-gpus",
        _set("spec.pod.extraResources", {"nvidia.com/gpu": 2}),
        "spec.pod.extraResources: the GPUs (spec.resources.gpuResourceName) are",
    ),
    BadCase(
        "pod-hugepages-without-memory",
        _set("spec.pod.extraResources", {"hugepages-2Mi": "1Gi"}),
        "spec.pod.extraResources: hugepages need spec.resources.memory",
    ),
    BadCase(
        "pod-capability-name",
        _set("spec.pod.capabilities", ["cap_ipc_lock"]),
        "spec.pod.capabilities[0]",
    ),
    BadCase(
        "pod-service-account-name",
        _set("spec.pod.serviceAccountName", "Trainer_SA"),
        "spec.pod.serviceAccountName",
    ),
    # --- durable outputs: a cluster job's local paths must be on volumes its pod mounts
    BadCase("output-relative-path", _set("spec.output.uri", "results/run1"), OUTPUT_NOT_DURABLE),
    BadCase("output-file-uri", _set("spec.output.uri", "file:///out"), OUTPUT_NOT_DURABLE),
    BadCase(
        "output-on-read-only-claim",
        _both(
            _set("spec.pod", _pvc_pod(read_only=True)),
            _set("spec.output.uri", "/data/out"),
        ),
        OUTPUT_NOT_DURABLE,
    ),
    BadCase(
        "output-on-config-map",
        _both(
            _set(
                "spec.pod",
                {
                    "volumes": [{"name": "data", "configMap": {"name": "c"}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                },
            ),
            _set("spec.output.uri", "/data/out"),
        ),
        OUTPUT_NOT_DURABLE,
    ),
    BadCase(
        "output-beside-the-mount",
        _both(_set("spec.pod", _pvc_pod()), _set("spec.output.uri", "/database/out")),
        OUTPUT_NOT_DURABLE,
    ),
    BadCase(
        "output-escapes-the-mount",
        _both(_set("spec.pod", _pvc_pod()), _set("spec.output.uri", "/data/../etc/out")),
        OUTPUT_NOT_DURABLE,
    ),
    BadCase(
        "output-on-cache-without-claim",
        _set("spec.output.uri", "/cache/out"),
        OUTPUT_NOT_DURABLE,
    ),
    BadCase(
        "model-local-path",
        _set("spec.model.uri", "/models/qwen3"),
        "spec.model.uri is a local path that no volume of the pod holds",
    ),
    BadCase(
        "dataset-local-path",
        _both(_set("spec.pod", _pvc_pod()), _set("spec.datasets[0].uri", "data/train.jsonl")),
        "spec.datasets[].uri is a local path that no volume of the pod holds",
    ),
]


# Every spec.pod field set once (tests/unit/operator/test_pod_overrides.py renders it).
EVERY_POD_OVERRIDE: Manifest = {
    "serviceAccountName": "trainer-s3",
    "env": [
        {"name": "NCCL_DEBUG", "value": "INFO"},
        {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ],
    "envFrom": [
        {"configMapRef": {"name": "nccl-settings"}},
        {"secretRef": {"name": "tracking"}, "prefix": "TRACK_"},
    ],
    "imagePullSecrets": [{"name": "regcred"}],
    "volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "team-data"}},
        {"name": "hugepages", "emptyDir": {"medium": "HugePages"}},
    ],
    "volumeMounts": [
        {"name": "data", "mountPath": "/data"},
        {"name": "hugepages", "mountPath": "/hugepages"},
    ],
    "annotations": {"prometheus.io/scrape": "true"},
    "labels": {"team": "nlp"},
    "extraResources": {"rdma/hca_shared_devices_a": 1, "hugepages-2Mi": "1Gi"},
    "capabilities": ["IPC_LOCK"],
}


@dataclass(frozen=True)
class GoodCase:
    """A variation of the minimal manifest that both the client and the server must accept."""

    id: str
    mutate: Callable[[Manifest], None]

    def manifest(self) -> Manifest:
        data = copy.deepcopy(minimal_manifest(f"good-{self.id}"))
        self.mutate(data)
        return data


GOOD_CASES: list[GoodCase] = [
    GoodCase(  # the Float8 base runs on CPUs: no bitsandbytes involved
        "qlora-float8-on-cpu",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8}),
            _set("spec.resources.gpus", 0),
        ),
    ),
    GoodCase(
        "qlora-int8-on-gpu",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 8, "format": "int8"}),
        ),
    ),
    GoodCase(
        "qlora-nf4-explicit",
        _both(
            _set("spec.method.type", "qlora"),
            _set("spec.method.quantization", {"bits": 4, "format": "nf4"}),
        ),
    ),
    GoodCase(  # model, data and output on a PersistentVolumeClaim the pod mounts
        "paths-on-a-mounted-claim",
        _both(
            _set("spec.pod", _pvc_pod()),
            _set("spec.model.uri", "/data/models/qwen3"),
            _set("spec.datasets[0].uri", "file:///data/train.jsonl"),
            _set("spec.output.uri", "/data/out/run1"),
        ),
    ),
    GoodCase(
        "output-file-uri-on-a-claim",
        _both(_set("spec.pod", _pvc_pod()), _set("spec.output.uri", "file:///data/out")),
    ),
    GoodCase(  # the model cache claim is a PersistentVolumeClaim mounted at /cache
        "output-on-the-model-cache-claim",
        _both(
            _set("spec.resources", {"modelCacheClaim": "model-cache"}),
            _set("spec.output.uri", "/cache/out/run1"),
        ),
    ),
    GoodCase(  # input may be on any mounted volume, read-only too
        "dataset-on-a-read-only-config-map",
        _both(
            _set(
                "spec.pod",
                {
                    "volumes": [{"name": "data", "configMap": {"name": "tiny-data"}}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}],
                },
            ),
            _set("spec.datasets[0].uri", "/data/train.jsonl"),
        ),
    ),
    GoodCase(  # huge pages need a memory (or cpu) request
        "every-pod-override",
        _both(_set("spec.pod", EVERY_POD_OVERRIDE), _set("spec.resources.memory", "64Gi")),
    ),
]
