"""The numbers of a model that its memory and FLOPs depend on, read from its config before
any weight is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory and FLOPs depend on."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool = False
    model_type: str = "llama"

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Read the shape from a transformers config (or any object with its attribute names).

        ``Any``: each model type has its own config class. Not every one names its key/value
        heads, tied embeddings or type, hence the defaults below (configs, not the spec)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = int(text.num_attention_heads)
        return cls(
            hidden_size=int(text.hidden_size),
            intermediate_size=int(text.intermediate_size),
            num_layers=int(text.num_hidden_layers),
            num_heads=heads,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            vocab_size=int(text.vocab_size),
            tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
            model_type=str(getattr(text, "model_type", "llama")),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def layer_params(self) -> int:
        """Parameters of one decoder layer (attention + gated MLP, norms ignored)."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        return h * h * 2 + h * kv * 2 + 3 * h * i

    @property
    def total_params(self) -> int:
        """All parameters (embeddings counted once when tied)."""
        embed = self.vocab_size * self.hidden_size
        return self.num_layers * self.layer_params + embed * (1 if self.tie_word_embeddings else 2)

    @property
    def matmul_params(self) -> int:
        """N in "4N FLOPs per token": every parameter that takes part in a matrix product
        (the decoder layers and the LM head; the input embedding is a lookup)."""
        return self.num_layers * self.layer_params + self.vocab_size * self.hidden_size

    def lora_params(self, r: int, targets: tuple[str, ...] = ("all-linear",)) -> int:
        """Trainable LoRA parameters for rank ``r`` on the layers' linear modules."""
        h, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        shapes = {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }
        names = set(shapes) if "all-linear" in targets else set(targets) & set(shapes)
        per_layer = sum(r * (a + b) for n, (a, b) in shapes.items() if n in names)
        return self.num_layers * per_layer
