"""A small byte-level BPE tokenizer trained in-process, for tests that cannot reach a hub.

Real chat models ship tokenizers whose chat markers are single added tokens; the data
pipeline's masks and the named chat templates rely on that, so this tokenizer registers the
markers of every named template (ChatML/Qwen3, Llama 3, DeepSeek-R1) as added tokens. It has
*no* ``chat_template``: tests that need one set it on a copy, so ``template: auto`` failing
cleanly on a bare tokenizer stays testable.

Training takes well under a second on the default corpus; the result is cached per process
(per corpus), so callers must not mutate it: use ``copy.deepcopy`` first.
"""

from __future__ import annotations

import functools

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Markers that are "special" in the real tokenizers (skipped by skip_special_tokens).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<｜tool▁outputs▁end｜>",
)
# Qwen3 and DeepSeek-R1 keep the reasoning markers as ordinary (non-special) added tokens.
REASONING_TOKENS: tuple[str, ...] = ("<think>", "</think>", "<tool_response>", "</tool_response>")

_WORDS: tuple[str, ...] = tuple(
    """
about above across after again against almost alone along already always among animal
another answer appear around because become before begin behind believe below between
bring build carry certain change child clear close color common complete consider contain
continue country course create decide describe develop different direct discover distance
doctor during early earth either energy enough every example experience explain family
feeling figure finally follow forward friend general govern ground happen history however
hundred important include increase inside instead interest itself language large learn
letter little machine market measure medicine method middle minute modern moment morning
mountain natural nothing notice number object office order other paper pattern people
perhaps picture place plant point possible power present problem produce product program
provide public question reason receive record remember report require result return
science second section several shape should simple single something sound special square
station still strong student study subject suggest support surface system table teacher
thought through together toward travel under until usually value various village weight
whether window winter within without wonder world write yellow young
""".split()  # noqa: SIM905 (a word list reads better as prose)
)

_DEFAULT_CORPUS: tuple[str, ...] = tuple(
    line
    for i in range(40)
    for line in (
        f"Question {i}: what is {i} plus {i + 1}? The answer is {2 * i + 1}.",
        "Who are you? I am an assistant built by a small team. I answer questions about data.",
        "The patient has a fever and a cough; the doctor suggests rest, fluids and a test.",
        "### Instruction:\nSummarize the text.\n\n### Response:\nA short summary.",
        "你好，我是一个人工智能助手，由团队开发。请问有什么可以帮你？",
        "Let me think step by step. First, the numbers; then, the sum. So the result follows.",
        "system user assistant tool ipython function observation human gpt",
        " ".join(_WORDS[(i * 7 + k * 13) % len(_WORDS)] for k in range(24)),
    )
)


def _train(corpus: tuple[str, ...]) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(corpus, trainer=trainer)
    raw.add_tokens([AddedToken(t, special=False, normalized=False) for t in REASONING_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = None
    return tokenizer


@functools.lru_cache(maxsize=8)
def _cached(corpus: tuple[str, ...]) -> PreTrainedTokenizerFast:
    return _train(corpus)


def make_test_tokenizer(corpus: list[str] | None = None) -> PreTrainedTokenizerFast:
    """A tiny byte-level BPE tokenizer with the chat markers of the named templates.

    Cached per process and corpus: treat it as read-only (``copy.deepcopy`` it before setting
    a ``chat_template`` or adding tokens).
    """
    return _cached(tuple(corpus) if corpus is not None else _DEFAULT_CORPUS)
