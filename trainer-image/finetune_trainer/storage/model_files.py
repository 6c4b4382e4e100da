"""Which files of a model folder the tokenizer needs, so they can be fetched before the weights.

The data is validated with the tokenizer alone (chat template, token lengths). Fetching these
few small files first means a bad dataset fails after kilobytes, not after a 15 GB download:
the weights are fetched only once the data is known to be usable.

Only top-level files count (``AutoTokenizer`` reads nothing else), plus the optional
``additional_chat_templates/`` folder; weight files never match, whatever their name.
"""

from __future__ import annotations

from fnmatch import fnmatch

# What AutoTokenizer (and AutoConfig, which it consults) may read from a model folder.
TOKENIZER_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "*.tiktoken",
    "chat_template*",
    "*.jinja",
    "*.py",  # a trust_remote_code tokenizer's own code
)
CHAT_TEMPLATES_DIR = "additional_chat_templates"
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


def is_tokenizer_file(relative: str) -> bool:
    """Whether ``relative`` (a path inside the model folder, ``/``-separated) is one of the
    tokenizer's files rather than weights or anything else."""
    if relative.lower().endswith(_WEIGHTS):
        return False
    folder, _, name = relative.rpartition("/")
    if folder:
        return folder == CHAT_TEMPLATES_DIR
    return any(fnmatch(name, pattern) for pattern in TOKENIZER_FILES)


def is_weights_file(relative: str) -> bool:
    """Whether ``relative`` holds weights (safetensors, pickles, GGUF...), by its name."""
    return relative.lower().endswith(_WEIGHTS)


def hub_patterns(subfolder: str) -> list[str]:
    """``allow_patterns`` for ``huggingface_hub.snapshot_download``: the tokenizer's files of
    the repository (or of ``subfolder`` in it)."""
    prefix = f"{subfolder}/" if subfolder else ""
    patterns = [*TOKENIZER_FILES, f"{CHAT_TEMPLATES_DIR}/*"]
    return [f"{prefix}{p}" for p in patterns]
