"""Real model shapes, instantiated with random weights (throughput does not depend on values)."""

from __future__ import annotations

from typing import Any

# The published configs of these models, restated: no hub is reachable from the bench.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": {
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },
    "llama-3.1-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    },
    # The largest shape here: 29 GB of bf16 weights do not load on a 24 GB card; with an
    # 8-bit Float8 base (15 GiB) it trains there (the qlora-8bit-24g row).
    "qwen2.5-14b": {
        "model_type": "qwen2",
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 48,
        "num_attention_heads": 40,
        "num_key_value_heads": 8,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
    },
}


# A few-MB shape for checking the bench's code paths on a CPU before spending device time.
SHAPES["tiny-qwen2"] = {
    **SHAPES["qwen2.5-1.5b"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 32000,
}


def shape(name: str) -> dict[str, Any]:
    """The named shape; ``<shape>-<N>layers`` is that shape cut to N decoder layers (the host
    cost per layer is measured on two such cuts: bench/hostcost.py)."""
    if name not in SHAPES:
        base, _, layers = name.rpartition("-")
        if base in SHAPES and layers.endswith("layers") and layers[: -len("layers")].isdigit():
            return {**SHAPES[base], "num_hidden_layers": int(layers[: -len("layers")])}
    return SHAPES[name]


def make_config(name: str) -> Any:
    """A transformers config of the named shape."""
    from transformers import AutoConfig

    values = dict(shape(name))
    model_type = values.pop("model_type")
    return AutoConfig.for_model(model_type, **values)
