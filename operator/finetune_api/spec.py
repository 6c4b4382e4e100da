"""The FineTuneJob spec: what a user writes.

One declaration per option, with its default and its help text. The CRD (and so
``kubectl explain``), ``ftj validate``, the field reference in ``docs/`` and the trainer all
read these classes; nothing else restates them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field

from finetune_api import rules
from finetune_api._base import ApiModel

# Re-exported (``X as X``): the spec's public names live in finetune_api.fields.
from finetune_api.fields import (
    DNS_LABEL_PATTERN as DNS_LABEL_PATTERN,
)
from finetune_api.fields import (
    DNS_SUBDOMAIN_PATTERN as DNS_SUBDOMAIN_PATTERN,
)
from finetune_api.fields import (
    OUTPUT_URI_PATTERN as OUTPUT_URI_PATTERN,
)
from finetune_api.fields import (
    QUANTITY_PATTERN as QUANTITY_PATTERN,
)
from finetune_api.fields import (
    SOURCE_URI_PATTERN as SOURCE_URI_PATTERN,
)
from finetune_api.fields import (
    Quantity as Quantity,
)
from finetune_api.fields import (
    SourceUri as SourceUri,
)
from finetune_api.fields import (
    _check_gpu_memory_budget as _check_gpu_memory_budget,
)
from finetune_api.fields import (
    quantity_value as quantity_value,
)
from finetune_api.pod import PodOverrides
from finetune_api.tracking import Limits, Tracking


class ModelSource(ApiModel):
    """The base model to fine-tune."""

    uri: SourceUri = Field(
        description=(
            "The base model: s3://bucket/prefix holding a Hugging Face model folder, "
            "hf://org/name, file:///path or a mounted path."
        )
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        description="Hub revision (branch, tag or commit) for hf:// models. Ignored otherwise.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description=(
            "Allow the model repository's own Python code to run. Only for models you trust."
        ),
    )


class DatasetColumns(ApiModel):
    """Which column of the file holds which part of an example (LLaMA-Factory's names)."""

    prompt: str | None = Field(
        default=None, max_length=253, description="Instruction column (alpaca: instruction)."
    )
    query: str | None = Field(
        default=None,
        max_length=253,
        description="Extra input appended to the prompt (alpaca: input).",
    )
    response: str | None = Field(
        default=None, max_length=253, description="Answer column (alpaca: output)."
    )
    system: str | None = Field(
        default=None, max_length=253, description="Per-example system prompt column."
    )
    history: str | None = Field(
        default=None,
        max_length=253,
        description="Column with earlier turns as a list of [prompt, response] pairs.",
    )
    messages: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "Conversation column for sharegpt/messages formats "
            "(default: conversations or messages)."
        ),
    )
    reasoning: str | None = Field(
        default=None,
        max_length=253,
        description=(
            "Chain-of-thought column; composed as <think>…</think> before the answer "
            "(see template.reasoning)."
        ),
    )
    text: str | None = Field(
        default=None, max_length=253, description="Raw text column for format: text."
    )


class DatasetSource(ApiModel):
    """One dataset file (or folder of files). Several datasets are mixed into one training set."""

    uri: SourceUri = Field(
        description=(
            "A JSON, JSONL, Parquet or CSV file, or a folder of them: "
            "s3://, hf://, file:// or a path."
        )
    )
    format: Literal["auto", "alpaca", "sharegpt", "messages", "text"] = Field(
        default="auto",
        description=(
            "How examples are laid out. auto detects from the columns: instruction/output → "
            "alpaca, conversations → sharegpt, messages → messages, text → text."
        ),
    )
    columns: DatasetColumns = Field(
        default_factory=DatasetColumns,
        description="Column mapping for files whose columns have other names.",
    )
    num_samples: int | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="Use at most this many examples of this dataset (after a seeded shuffle).",
    )
    variables: dict[str, str] = Field(
        default_factory=dict,
        max_length=64,
        description=(
            "Values substituted for {{name}} placeholders in the data, e.g. "
            "{name: Acme Assistant, author: Acme AI} for self-cognition data."
        ),
    )


class Template(ApiModel):
    """How conversations are turned into token sequences."""

    name: Literal["auto", "qwen3", "deepseek-r1", "llama3", "chatml", "alpaca"] = Field(
        default="auto",
        description=(
            "Chat template. auto uses the tokenizer's own chat template; the named ones are "
            "for tokenizers that ship none."
        ),
    )
    system: str | None = Field(
        default=None,
        max_length=65536,
        description="System prompt added to examples that have none.",
    )
    reasoning: Literal["keep", "strip"] = Field(
        default="keep",
        description=(
            "keep trains on the <think>…</think> reasoning before each answer; strip removes it."
        ),
    )


class Quantization(ApiModel):
    """Base-model quantization for QLoRA: the frozen base is stored in 4 or 8 bits."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        rules.QUANTIZATION_FORMAT_MATCHES_BITS,
    )

    bits: Literal[4, 8] = Field(default=4, description="4 (NF4, double quantization) or 8 bits.")
    format: Literal["nf4", "float8", "int8"] | None = Field(
        default=None,
        description=(
            "How the bits are used. 4 bits: nf4 (bitsandbytes). 8 bits: float8 (the default: "
            "e4m3 weights with a scale per output channel; FP8 tensor-core GEMMs on Ada/Hopper "
            "and newer GPUs, dequantized bf16 GEMMs elsewhere) or int8 (bitsandbytes LLM.int8, "
            "slower and keeps more activations)."
        ),
    )

    @property
    def resolved_format(self) -> Literal["nf4", "float8", "int8"]:
        """The format this run uses: nf4 for 4 bits, float8 unless int8 is asked for 8 bits."""
        if self.bits == 4:
            return "nf4"
        return self.format if self.format in ("float8", "int8") else "float8"


class LoraSettings(ApiModel):
    """The low-rank adapter."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(default=32, ge=1, le=4096, description="Scaling numerator (alpha / r).")
    dropout: float = Field(
        default=0.05,
        ge=0.0,
        lt=1.0,
        description=(
            "Dropout on the adapter input. 0 (peft's and Unsloth's default) skips the dropout "
            "kernels, about 9% of an H100 step's GPU time at 0.05."
        ),
    )
    target_modules: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field(
        default_factory=lambda: ["all-linear"],
        min_length=1,
        max_length=64,
        description=(
            "Modules that get adapters: all-linear (every linear layer but the output head) "
            "or names such as q_proj, v_proj."
        ),
    )
    use_rslora: bool = Field(default=False, description="Rank-stabilized scaling alpha / sqrt(r).")
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")


class Method(ApiModel):
    """Parameter-efficient fine-tuning method."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        rules.QUANTIZATION_ONLY_WITH_QLORA,
    )

    type: Literal["lora", "qlora"] = Field(
        default="lora", description="lora (16-bit base) or qlora (quantized base, GPU only)."
    )
    quantization: Quantization | None = Field(
        default=None,
        description="Quantization of the base model; qlora only (defaults to 4 bits).",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Adapter settings.")

    @property
    def float8_base(self) -> bool:
        """QLoRA 8 bits in format float8: the frozen base is stored as e4m3 by the trainer
        (float8_base.py), not quantized by bitsandbytes, so it needs neither a GPU nor that
        package."""
        return (
            self.type == "qlora"
            and self.quantization is not None
            and self.quantization.resolved_format == "float8"
        )


class Training(ApiModel):
    """Hyper-parameters of the run."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        rules.EXACTLY_ONE_DURATION,
        rules.SPLITS_LEAVE_TRAINING_DATA,
    )

    epochs: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="Passes over the data. Exactly one of epochs, maxSteps.",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="Optimizer steps. Exactly one of epochs, maxSteps.",
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        default="cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(
        default=0.03,
        ge=0,
        lt=1,
        description="Fraction of steps spent warming up the learning rate.",
    )
    batch_size: int = Field(
        default=4, ge=1, le=4096, description="Examples per device per micro-step."
    )
    gradient_accumulation_steps: int = Field(
        default=4, ge=1, le=4096, description="Micro-steps per optimizer step."
    )
    cutoff_length: int = Field(
        default=2048,
        ge=16,
        le=1_048_576,
        description=(
            "Longest example in tokens; longer ones are truncated (and counted in metrics)."
        ),
    )
    packing: bool = Field(
        default=True,
        description=(
            "Pack examples into rows without padding; attention never crosses example borders."
        ),
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        default="auto",
        description=(
            "auto: bf16 where the device supports it, else fp16 on GPUs, fp32 on CPUs; on GPUs "
            "with FP8 tensor cores (Ada, Hopper and newer) a LoRA's frozen 16-bit base also runs "
            "its forward GEMMs and its MLP down projections' input-gradient GEMMs in FP8 "
            "(weights stay bf16; the adapter's gradients stay bf16). bf16: every GEMM in bf16."
        ),
    )
    gradient_checkpointing: Literal["auto", "always", "never"] = Field(
        default="auto",
        description=(
            "Recompute activations to save memory. auto turns it on only when memory needs it. "
            "(Strings, not true/false: YAML would read on/off/true/false as booleans.)"
        ),
    )
    optimizer: Literal[
        "auto",
        "adamw_torch",
        "adamw_torch_fused",
        "adamw_8bit",
        "paged_adamw_8bit",
        "adafactor",
        "sgd",
    ] = Field(
        default="auto",
        description="auto: fused AdamW on GPUs, AdamW elsewhere. adamw_8bit needs bitsandbytes.",
    )
    weight_decay: float = Field(default=0.0, ge=0, le=10, description="Decoupled weight decay.")
    max_grad_norm: float = Field(
        default=1.0, ge=0, le=1000, description="Gradient clipping; 0 disables."
    )
    seed: int = Field(
        default=42, ge=0, le=2**31 - 1, description="Seed for shuffling, splits and init."
    )
    validation_split: float = Field(
        default=0.0, ge=0, lt=1, description="Fraction of examples held out for evaluation loss."
    )
    test_split: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Fraction held out for the final test loss and sample generations.",
    )
    eval_steps: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="Evaluate every N optimizer steps (needs validationSplit).",
    )
    save_steps: int = Field(
        default=100,
        ge=1,
        le=10_000_000,
        description="Checkpoint every N steps; a restarted pod resumes from the newest checkpoint.",
    )
    logging_steps: int = Field(
        default=10, ge=1, le=10_000_000, description="Report loss every N steps."
    )


def _default_training() -> Training:
    return Training(epochs=3)


class Output(ApiModel):
    """Where artifacts are published."""

    uri: str = Field(
        min_length=1,
        max_length=2048,
        pattern=OUTPUT_URI_PATTERN,
        description=(
            "Destination prefix: s3://bucket/prefix, file:///path or a path. Receives adapter/, "
            "merged/, checkpoints/, metrics.json, loss.png and MANIFEST.json (written last)."
        ),
    )
    merge: bool = Field(
        default=True, description="Also publish the adapter merged into the base model."
    )
    merge_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Data type of the merged model's weights."
    )
    overwrite: bool = Field(
        default=False,
        description="Allow publishing over another job's output (refused by default).",
    )


class SecretKeyRef(ApiModel):
    """A Secret holding S3 credentials (the values never appear in status, events or logs)."""

    name: str = Field(min_length=1, max_length=253, description="Secret name, same namespace.")
    access_key_id_key: str = Field(
        default="AWS_ACCESS_KEY_ID", max_length=253, description="Key holding the access key id."
    )
    secret_access_key_key: str = Field(
        default="AWS_SECRET_ACCESS_KEY", max_length=253, description="Key holding the secret key."
    )


class S3Storage(ApiModel):
    """S3 (or S3-compatible: MinIO, Ceph, R2) connection settings."""

    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s/]+(/.*)?$",
        description="Endpoint URL for S3-compatible stores, e.g. http://minio.minio:9000.",
    )
    region: str = Field(default="us-east-1", max_length=64, description="Region name.")
    path_style: bool = Field(
        default=False, description="Path-style addressing (most self-hosted stores need it)."
    )
    credentials_secret: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret with the access keys. Without it the AWS SDK's default credential chain "
            "is used: the web identity of spec.pod.serviceAccountName (IAM roles for service "
            "accounts, EKS Pod Identity), or the node's instance role."
        ),
    )


class TokenSecretRef(ApiModel):
    """A key of a Secret holding a token (the value never appears in status, events or logs)."""

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Secret name, same namespace.",
    )
    key: str = Field(
        default="HF_TOKEN", min_length=1, max_length=253, description="Key holding the token."
    )


class HubStorage(ApiModel):
    """Hugging Face Hub settings for hf:// URIs."""

    token_secret: TokenSecretRef | None = Field(
        default=None,
        description=(
            "Secret with a Hugging Face access token, for gated or private models and datasets "
            "(e.g. Llama). The pod gets it as HF_TOKEN through a secretKeyRef; ftj run reads "
            "HF_TOKEN from its own environment."
        ),
    )


class Storage(ApiModel):
    """Object-store settings shared by model, datasets and output."""

    s3: S3Storage | None = Field(default=None, description="S3 settings for s3:// URIs.")
    hf: HubStorage | None = Field(
        default=None, description="Hugging Face Hub settings for hf:// URIs."
    )


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=316, description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty means all."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long to stay."
    )


class Resources(ApiModel):
    """Compute for the trainer pods."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (rules.MULTI_NODE_NEEDS_GPUS,)

    gpus: int = Field(default=1, ge=0, le=64, description="GPUs per node (pod). 0 trains on CPUs.")
    nodes: int = Field(
        default=1, ge=1, le=512, description="Nodes (pods); more than 1 runs torchrun across nodes."
    )
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        pattern=r"^[a-z0-9.\-]+/[a-z0-9.\-_]+$",
        description="Extended resource name of the GPUs, e.g. nvidia.com/gpu or amd.com/gpu.",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request (and limit), e.g. 8.")
    memory: Quantity | None = Field(
        default=None, description="Memory request (and limit), e.g. 64Gi."
    )
    gpu_memory_budget: Annotated[Quantity | None, AfterValidator(_check_gpu_memory_budget)] = Field(
        default=None,
        description=(
            "GPU memory the trainer may plan for on each GPU, e.g. 20Gi: it sizes micro-steps, "
            "recomputes layers and, on one GPU, keeps recomputed layers' frozen 16-bit weights "
            "in host memory (streamed to the GPU as they run; pinned host memory counts "
            "against resources.memory) to stay under it. Default: 85% of the card. Set it on "
            "shared or time-sliced GPUs, or to make a run fit a smaller card."
        ),
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, max_length=64, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Extra tolerations; the GPU taint (gpuResourceName) is tolerated by default.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="Pod affinity (core/v1 Affinity), passed through unchanged.",
    )
    priority_class_name: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the pods."
    )
    image: str | None = Field(
        default=None,
        max_length=1024,
        description="Trainer image; the operator's default when empty.",
    )
    model_cache_claim: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_LABEL_PATTERN,
        description=(
            "PersistentVolumeClaim mounted as the download cache, so restarts and later jobs "
            "don't download the base model again."
        ),
    )
    scratch_size: Quantity = Field(
        default="200Gi",
        description="Size limit of the scratch volume for the model, data and checkpoints.",
    )
    termination_grace_period_seconds: int | None = Field(
        default=None,
        ge=30,
        le=7200,
        description=(
            "Seconds between SIGTERM (preemption, eviction, drain) and SIGKILL: the trainer "
            "finishes its step, saves and uploads a checkpoint in that time. Default: sized "
            "from the adapter's checkpoint (one step's allowance plus its upload), between "
            "90 and 900 s; raise it for very large models or slow object storage."
        ),
    )


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob: the whole recipe of one fine-tuning run."""

    cross_field_rules: ClassVar[tuple[rules.CrossFieldRule, ...]] = (
        rules.QLORA_NEEDS_GPU,
        rules.OUTPUT_DIFFERS_FROM_MODEL,
        rules.EXTRA_RESOURCES_ARE_NOT_GPUS,
        rules.HUGEPAGES_NEED_MEMORY,
        rules.OUTPUT_ON_A_DURABLE_VOLUME,
        rules.MODEL_ON_A_MOUNTED_VOLUME,
        rules.DATASETS_ON_MOUNTED_VOLUMES,
        rules.REGISTERED_MERGED_NEEDS_MERGE,
    )

    model: ModelSource = Field(description="The base model.")
    datasets: list[DatasetSource] = Field(
        min_length=1,
        max_length=64,
        description="One or more datasets, mixed into one training set.",
    )
    template: Template = Field(default_factory=Template, description="Chat template and reasoning.")
    method: Method = Field(
        default_factory=Method, description="LoRA or QLoRA and adapter settings."
    )
    training: Training = Field(
        default_factory=_default_training,
        description="Hyper-parameters (default: 3 epochs).",
    )
    output: Output = Field(description="Where the adapter, merged model and metrics go.")
    storage: Storage = Field(
        default_factory=Storage, description="Object-store connection settings."
    )
    resources: Resources = Field(
        default_factory=Resources, description="GPUs, nodes and placement."
    )
    tracking: Tracking = Field(
        default_factory=Tracking,
        description="Experiment tracking: MLflow, and TensorBoard event files in the output.",
    )
    limits: Limits = Field(
        default_factory=Limits, description="Budgets: the job stops when one is spent."
    )
    pod: PodOverrides | None = Field(
        default=None,
        description=(
            "What the platform adds to the trainer pods: service account, variables, volumes, "
            "labels and annotations, pull secrets, devices, capabilities. Precedence: what the "
            "operator owns (command, ports, the restricted security context, restartPolicy, "
            "its own volumes, mounts, labels and variables) is fixed, and a spec that sets it "
            "is refused at admission naming the field; everything here is added after the "
            "operator's parts (a name in env wins over the same key of envFrom, as in any pod, "
            "so envFrom can't replace the operator's variables); placement stays in "
            "spec.resources (nodeSelector, tolerations, affinity, priorityClassName)."
        ),
    )
    suspend: bool = Field(
        default=False,
        description=(
            "Pause the job (its pods are removed); "
            "set back to false to resume from the last checkpoint."
        ),
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="Kueue LocalQueue; the Job is created suspended for Kueue to admit.",
    )
    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description=(
            "Retries of failed pods (preemptions are not counted). With resources.nodes > 1: "
            "retries of each node's pod; the job fails, naming the node, when one has none left."
        ),
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job after this many seconds of running."
    )
