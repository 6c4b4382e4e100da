"""The trainer's data pipeline: dataset files → tokenized, masked, split training data.

``prepare_data`` is the whole step; ``render_chat`` renders prompts for generations at eval
time exactly as training rendered them; ``make_collator`` builds padded or packed batches.
"""

from finetune_trainer.data._collate import make_collator
from finetune_trainer.data._prepare import load_examples, prepare_data
from finetune_trainer.data._templates import render_chat
from finetune_trainer.data._types import DataStats, PreparedData, TestPrompt

__all__ = [
    "DataStats",
    "PreparedData",
    "TestPrompt",
    "load_examples",
    "make_collator",
    "prepare_data",
    "render_chat",
]
