"""``ftj validate --data``: the trainer's data step on this machine, with the trainer's messages.

A typo in a dataset should cost seconds at a desk, not a pod start and a model download. This
runs the very function the trainer pod runs before it fetches the weights
(:func:`finetune_trainer.data.prepare_data`): reading the files, the column mapping, the chat
template, tokenizing, and what ``training.cutoffLength`` truncates or drops. A problem is
printed exactly as the pod would report it in the job's condition.

Tokens need a tokenizer. It is the spec's model's (only the tokenizer's files are fetched,
as in the pod: :meth:`~finetune_trainer.storage.Storage.fetch_tokenizer`), or ``--tokenizer``.
When neither can be read here (a path only the cluster mounts, no credentials), the files and
columns are still checked, and the output says plainly that tokens were not.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from finetune_api import FineTuneJob
from finetune_api.spec import FineTuneJobSpec


def _say(line: str) -> None:
    print(f"  {line}")


def _fetch_datasets(
    spec: FineTuneJobSpec, base_dir: Path, cache_dir: Path, storage: Any
) -> list[Path]:
    from finetune_trainer.storage import Location

    return [storage.fetch(str(Location.parse(d.uri, base_dir)), cache_dir) for d in spec.datasets]


def _load_tokenizer(
    spec: FineTuneJobSpec, base_dir: Path, cache_dir: Path, storage: Any, override: str | None
) -> tuple[Any, str]:
    """``(tokenizer or None, what was used, in words)``."""
    from finetune_trainer.errors import TrainerError
    from finetune_trainer.model import load_tokenizer
    from finetune_trainer.storage import Location

    source = override or spec.model.uri
    where = "--tokenizer" if override else "spec.model.uri"
    uri = str(Location.parse(source, Path.cwd() if override else base_dir))
    try:
        revision = None if override else spec.model.revision
        folder = storage.fetch_tokenizer(uri, cache_dir, revision=revision)
        return load_tokenizer(folder, spec.model.trust_remote_code), f"{uri} ({where})"
    except TrainerError as err:
        problem = err.message
    except Exception as err:  # noqa: BLE001 (an unreachable tokenizer must not end the check)
        problem = f"{type(err).__name__}: {err}"
    return None, (
        f"none: the tokenizer at {uri} ({where}) could not be read here ({problem}). Files "
        "and columns were checked; the template and token lengths were not. Pass "
        "--tokenizer PATH (a local copy of the model's tokenizer files) to check them"
    )


def _report(spec: FineTuneJobSpec, data: Any) -> None:
    stats = data.stats
    for name, count in stats.examples.items():
        _say(f"{name}: {count} examples")
    _say(f"split: {stats.train} train, {stats.validation} validation, {stats.test} test")
    if stats.token_lengths:
        lengths = stats.token_lengths
        _say(
            f"tokens per example (before truncation): min {lengths['min']}, median "
            f"{lengths['median']}, p95 {lengths['p95']}, max {lengths['max']}"
        )
    cutoff = spec.training.cutoff_length
    _say(
        f"spec.training.cutoffLength {cutoff}: {stats.truncated} examples would be truncated, "
        f"{stats.dropped} dropped (no answer token left)"
    )
    _say(f"train tokens: {stats.train_tokens} ({stats.assistant_tokens} trained answer tokens)")
    for note in stats.notes:
        _say(f"note: {note}")


def check_data(
    job: FineTuneJob,
    manifest: Path,
    data_files: list[Path],
    *,
    tokenizer: str | None,
    cache_dir: Path,
) -> bool:
    """Check ``job``'s data (``data_files`` in place of its datasets' URIs, when given) and
    print what the trainer would make of it; False when the trainer would refuse it."""
    from finetune_trainer.data import load_examples, prepare_data
    from finetune_trainer.errors import TrainerError
    from finetune_trainer.storage import Storage

    spec = job.spec
    if data_files:
        if len(data_files) != len(spec.datasets):
            print(
                f"{manifest}: {len(data_files)} data files given for {len(spec.datasets)} "
                "spec.datasets entries: give one per entry, in order",
                file=sys.stderr,
            )
            return False
        datasets = [
            d.model_copy(update={"uri": str(f.resolve())})
            for d, f in zip(spec.datasets, data_files, strict=True)
        ]
        spec = spec.model_copy(update={"datasets": datasets})
    base_dir = manifest.resolve().parent
    storage = Storage.from_spec(spec.storage)
    print(f"{manifest}: data")
    try:
        files = _fetch_datasets(spec, base_dir, cache_dir, storage)
        loaded, used = _load_tokenizer(spec, base_dir, cache_dir, storage, tokenizer)
        _say(f"tokenizer: {used}")
        if loaded is None:
            examples = load_examples(spec, files)
            for source, found in zip(spec.datasets, examples, strict=True):
                _say(f"{source.uri}: {len(found)} examples")
            return True
        _report(spec, prepare_data(spec, files, loaded))
    except TrainerError as err:
        print(f"{manifest}: data refused ({err.reason}): {err.message}", file=sys.stderr)
        return False
    return True
