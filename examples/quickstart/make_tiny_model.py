"""Make ``tiny-qwen3/``: the quickstart's base model, built offline in a few seconds.

The quickstart must run on a laptop CPU without internet, so its base model can't be
downloaded. Instead this script builds one with the real Qwen3 architecture (so the trainer
exercises exactly the code paths of a real Qwen3 model: config, attention, RMSNorm, tied
embeddings, safetensors loading) but tiny (about 0.37M parameters) and randomly initialised,
plus a byte-level BPE tokenizer trained here on the identity data and some generic English.

Everything is seeded: running it twice gives the same weights and vocabulary. The folder is
committed, so users never need to run this; it documents how the folder was made.

    python examples/quickstart/make_tiny_model.py [--out examples/quickstart/tiny-qwen3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Special tokens of the Qwen family: the chat markers, the reasoning markers, and the
# end-of-text token that doubles as padding.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

GENERIC_TEXT = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
Machine learning models learn patterns from data. Fine-tuning adapts a pretrained model to a new task.
A language model predicts the next token of a text. Training minimizes the loss on examples.
The weather today is sunny with a light breeze. Tomorrow it may rain in the afternoon.
Water boils at one hundred degrees Celsius at sea level. The sun rises in the east.
Please write a short poem about the sea. Explain how a computer works in simple words.
What is the capital of France? The capital of France is Paris. What is two plus two? It is four.
Kubernetes runs containers on a cluster of machines. A job runs a task until it completes.
Low-rank adapters add small trainable matrices to a frozen model. The adapter is merged afterwards.
Thank you for your question. I am sorry, I do not know the answer. Let me think step by step.
system user assistant Hello Hi Yes No Sure Of course Welcome Good morning Goodbye
Quokka Acme Assistant FineTune Operator team AI assistant name author creator company
"""  # noqa: E501


def training_corpus() -> list[str]:
    """Lines the tokenizer learns its merges from: identity data plus generic English."""
    rows = json.loads((HERE / "identity.json").read_text())
    lines = [f"{r['instruction']} {r['input']} {r['output']}" for r in rows]
    return lines + GENERIC_TEXT.splitlines()


def build_tokenizer(vocab_size: int) -> object:
    """A byte-level BPE tokenizer (any text encodes) with the Qwen special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<think>", "</think>"],
        model_max_length=4096,
    )


def build_model(vocab_size: int, eos_id: int, pad_id: int, seed: int) -> object:
    """A randomly initialised 2-layer Qwen3 with tied embeddings (weights dominate the size)."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = Qwen3ForCausalLM(config)
    # LoRA on all-linear leaves the (tied) embeddings frozen, so their scale caps how sharp
    # the output distribution can get. At the default std (0.02) the logits of a 128-wide
    # model stay near uniform whatever the adapter does, and the loss could not fall below
    # about 4; a trained model's embeddings are far larger, so give the tiny one that scale.
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 0.25)
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, do_sample=False
    )
    return model


def main() -> None:
    """Build and save the tokenizer and model into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "tiny-qwen3")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = build_tokenizer(args.vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")  # type: ignore[attr-defined]
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")  # type: ignore[attr-defined]
    model = build_model(len(tokenizer), eos_id, pad_id, args.seed)  # type: ignore[arg-type]

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)  # type: ignore[attr-defined]
    tokenizer.save_pretrained(args.out)  # type: ignore[attr-defined]
    params = sum(p.numel() for p in model.parameters())  # type: ignore[attr-defined]
    size = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {args.out}: {params / 1e6:.2f}M parameters, {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
