"""The data step of a run, top to bottom: read → check → sample → split → render → tokenize.

All user-fixable problems in the data are found and reported together (one
``InvalidInput``) before tokenization starts, so a bad dataset fails in seconds, before the
model is even loaded onto a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from finetune_api.spec import FineTuneJobSpec

from finetune_trainer.data._files import list_files, read_file
from finetune_trainer.data._normalize import DatasetNormalizer
from finetune_trainer.data._problems import ProblemLog, TooManyProblems
from finetune_trainer.data._split import sample, split
from finetune_trainer.data._templates import check_template, render_segments
from finetune_trainer.data._tokenize import Tokenized, has_answer, tokenize
from finetune_trainer.data._types import (
    DataStats,
    Example,
    PreparedData,
    Segment,
    TestPrompt,
)
from finetune_trainer.errors import InvalidInput

MAX_TEST_PROMPTS = 8


def prepare_data(spec: FineTuneJobSpec, dataset_files: list[Path], tokenizer: Any) -> PreparedData:
    """Tokenized train/validation/test splits of ``spec.datasets`` for ``tokenizer``.

    ``dataset_files[i]`` is the local file or folder fetched for ``spec.datasets[i]``.
    Raises :class:`~finetune_trainer.errors.InvalidInput` listing every problem found (up to
    20) when the data can't be used as it is.
    """
    if len(dataset_files) != len(spec.datasets):
        raise ValueError(
            f"{len(dataset_files)} dataset files for {len(spec.datasets)} spec.datasets entries"
        )
    check_template(spec.template, tokenizer)
    per_dataset = load_examples(spec, dataset_files)

    training = spec.training
    notes: list[str] = []
    mixed: list[Example] = []
    counts: dict[str, int] = {}
    for i, (source, examples) in enumerate(zip(spec.datasets, per_dataset, strict=True)):
        limit = source.num_samples
        if limit is not None and limit > len(examples):
            notes.append(
                f"spec.datasets[{i}].numSamples is {limit} but {source.uri} has "
                f"{len(examples)} examples: all of them are used"
            )
        chosen = [examples[k] for k in sample(len(examples), limit, training.seed + i)]
        name = source.uri if source.uri not in counts else f"{source.uri}#{i}"
        counts[name] = len(chosen)
        mixed.extend(chosen)

    parts = split(len(mixed), training.validation_split, training.test_split, training.seed)
    train_ex = [mixed[k] for k in parts.train]
    val_ex = [mixed[k] for k in parts.validation]
    test_ex = [mixed[k] for k in parts.test]

    all_examples = train_ex + val_ex + test_ex
    tokenized = tokenize(
        [_segments(spec, tokenizer, e) for e in all_examples], tokenizer, training.cutoff_length
    )
    train_tok = tokenized[: len(train_ex)]
    val_tok = tokenized[len(train_ex) : len(train_ex) + len(val_ex)]
    test_tok = tokenized[len(train_ex) + len(val_ex) :]

    kept_train = [t for t in train_tok if has_answer(t)]
    if not kept_train:
        longest = max((t.prompt_tokens for t in train_tok), default=0)
        raise InvalidInput(
            f"all {len(train_tok)} training examples are dropped: after truncation to "
            f"spec.training.cutoffLength={training.cutoff_length} tokens none has an answer "
            f"token left (the longest prompt is {longest} tokens). Fix: raise "
            "spec.training.cutoffLength, or shorten the prompts/system prompts in the data"
        )
    kept_val = [t for t in val_tok if has_answer(t)]
    kept_test = [t for t in test_tok if has_answer(t)]
    dropped = len(tokenized) - len(kept_train) - len(kept_val) - len(kept_test)

    prompt_source = [e for e in test_ex if e.messages] or [e for e in train_ex if e.messages]
    stats = DataStats(
        examples=counts,
        train=len(kept_train),
        validation=len(kept_val),
        test=len(kept_test),
        truncated=sum(t.truncated for t in tokenized),
        dropped=dropped,
        train_tokens=sum(len(t.input_ids) for t in kept_train),
        assistant_tokens=sum(sum(1 for x in t.labels if x != -100) for t in kept_train),
        notes=tuple(notes),
        token_lengths=length_summary([t.length for t in tokenized]),
    )
    return PreparedData(
        train=_dataset(kept_train),
        validation=_dataset(kept_val) if kept_val else None,
        test=_dataset(kept_test) if kept_test else None,
        test_prompts=[_test_prompt(spec, tokenizer, e) for e in prompt_source[:MAX_TEST_PROMPTS]],
        stats=stats,
    )


def length_summary(lengths: Sequence[int]) -> dict[str, int]:
    """``{min, median, p95, max}`` of ``lengths`` (nearest-rank percentiles); {} when empty."""
    if not lengths:
        return {}
    ordered = sorted(lengths)

    def rank(fraction: float) -> int:
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    return {"min": ordered[0], "median": rank(0.5), "p95": rank(0.95), "max": ordered[-1]}


def load_examples(spec: FineTuneJobSpec, dataset_files: Sequence[Path]) -> list[list[Example]]:
    """Read and check every dataset; one ``InvalidInput`` for all problems found.

    Usable on its own for a fast pre-flight check (``ftj validate --data``): no tokenizer.
    """
    problems = ProblemLog()
    per_dataset: list[list[Example]] = [[] for _ in spec.datasets]
    try:
        for i, (source, path) in enumerate(zip(spec.datasets, dataset_files, strict=True)):
            normalizer = DatasetNormalizer(i, source, spec.template, problems)
            for file in list_files(Path(path), f"spec.datasets[{i}]", problems):
                name = _user_facing_name(f"spec.datasets[{i}]", source.uri, Path(path), file)
                per_dataset[i].extend(normalizer.normalize(read_file(file, problems, name)))
    except TooManyProblems:
        pass
    problems.raise_if_any()
    return per_dataset


def _user_facing_name(field: str, uri: str, fetched: Path, file: Path) -> str:
    """``spec.datasets[0] s3://bucket/data.jsonl``: the field and the URI the user wrote (a
    file inside a fetched folder keeps its path below it), not the trainer's local copy."""
    if file == fetched or not uri:
        return f"{field} {uri or file}"
    return f"{field} {uri.rstrip('/')}/{file.relative_to(fetched).as_posix()}"


def _segments(spec: FineTuneJobSpec, tokenizer: Any, example: Example) -> list[Segment]:
    if example.messages is None:
        eos = getattr(tokenizer, "eos_token", None) or ""
        return [Segment(example.text or "", True)] + ([Segment(eos, True)] if eos else [])
    segments = render_segments(spec.template, tokenizer, example.messages, False)
    if not any(s.trained for s in segments):
        raise InvalidInput(
            f"{example.origin}: the tokenizer's chat template (spec.template.name: auto) renders "
            "this conversation in a way where no assistant answer can be located. Fix: set "
            "spec.template.name to the model family's format (qwen3, deepseek-r1, llama3, "
            "chatml, alpaca)"
        )
    return segments


def _test_prompt(spec: FineTuneJobSpec, tokenizer: Any, example: Example) -> TestPrompt:
    messages = example.messages or ()
    history = messages[:-1]
    prompt = "".join(s.text for s in render_segments(spec.template, tokenizer, history, True))
    return TestPrompt(prompt=prompt, expected=messages[-1]["content"], messages=tuple(history))


def _dataset(rows: Sequence[Tokenized]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"input_ids": [r.input_ids for r in rows], "labels": [r.labels for r in rows]}
    )
