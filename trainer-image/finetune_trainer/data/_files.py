"""Reading dataset files into records (one dict per example), each with its exact position.

Supported: JSON (an array of objects, or an object holding one such array), JSONL, Parquet and
CSV; a folder means every supported file inside it, in sorted order. Positions are what a user
needs to find the example in an editor: JSONL and JSON-syntax errors by 1-based line, JSON
arrays by item index, Parquet and CSV by 1-based row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.data._problems import ProblemLog, locate

SUPPORTED_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


@dataclass(frozen=True)
class Record:
    """One raw example and where it is (``line 3``, ``item [2]``, ``row 5``)."""

    file: str
    position: str
    data: dict[str, Any]


@dataclass(frozen=True)
class FileRecords:
    """All records of one file plus the columns seen in it (for mapping errors)."""

    file: str
    records: list[Record]
    columns: tuple[str, ...]


def list_files(path: Path, field: str, problems: ProblemLog) -> list[Path]:
    """The files behind one ``spec.datasets[i]``: the file itself, or a folder's supported files."""
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
        )
        if not files:
            problems.add(
                str(path),
                "the folder holds no .json, .jsonl, .parquet or .csv file",
                f"point {field}.uri at a folder with data files, or at one file",
            )
        return files
    if not path.exists():
        problems.add(str(path), "the file does not exist", f"check {field}.uri")
        return []
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        problems.add(
            str(path),
            f"unknown file extension {path.suffix or '(none)'!r}",
            "convert it to .json, .jsonl, .parquet or .csv, or rename it to its real format",
        )
        return []
    return [path]


def read_file(path: Path, problems: ProblemLog, name: str | None = None) -> FileRecords:
    """Read one file; problems (syntax, shape, emptiness) go to ``problems``.

    ``name`` is how problems name the file: the user's URI rather than the local copy the
    trainer fetched it to (a pod's ``/scratch/cache/...`` means nothing to whoever fixes it).
    """
    suffix = path.suffix.lower()
    name = name or str(path)
    before = len(problems.problems)
    if path.stat().st_size == 0:
        problems.add(
            name, "the file is empty", "add examples to it or remove it from spec.datasets"
        )
        return FileRecords(name, [], ())
    if suffix == ".jsonl":
        records = list(_read_jsonl(path, problems, name))
    elif suffix == ".json":
        records = _read_json(path, problems, name)
    elif suffix == ".parquet":
        records = _read_parquet(path, problems, name)
    else:
        records = _read_csv(path, problems, name)
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record.data))
    if not records and len(problems.problems) == before:
        problems.add(name, "the file holds no examples", "add examples or remove the file")
    return FileRecords(name, records, tuple(columns))


def _read_jsonl(path: Path, problems: ProblemLog, name: str) -> Iterator[Record]:
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.add(
                    locate(name, f"line {number}, character {exc.colno}"),
                    f"malformed JSON ({exc.msg})",
                    "each line of a .jsonl file must be one complete JSON object",
                )
                continue
            if not isinstance(value, dict):
                problems.add(
                    locate(name, f"line {number}"),
                    f"expected a JSON object, found {_json_kind(value)}",
                    "each line of a .jsonl file must be one JSON object such as "
                    '{"instruction": ..., "output": ...}',
                )
                continue
            yield Record(name, f"line {number}", value)


def _read_json(path: Path, problems: ProblemLog, name: str) -> list[Record]:
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        problems.add(
            name, "the file is empty", "add examples to it or remove it from spec.datasets"
        )
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _looks_like_jsonl(text):
            # A common mix-up: JSON Lines saved with a .json name. Read it as what it is.
            return list(_read_jsonl(path, problems, name))
        problems.add(
            locate(name, f"line {exc.lineno}, character {exc.colno}"),
            f"malformed JSON ({exc.msg})",
            "fix the JSON syntax there (a .json file must be one array of objects)",
        )
        return []
    items = _items_of(value)
    if items is None:
        problems.add(
            name,
            f"expected a list of objects, found {_json_kind(value)}",
            'write the examples as a JSON array [{"instruction": ..., "output": ...}, ...] or as '
            "JSON Lines (.jsonl)",
        )
        return []
    records = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            problems.add(
                locate(name, f"item [{index}]"),
                f"expected a JSON object, found {_json_kind(item)}",
                "every element of the array must be an object with the example's columns",
            )
            continue
        records.append(Record(name, f"item [{index}]", item))
    return records


def _items_of(value: Any) -> list[Any] | None:
    """The example list of a JSON document: the array itself, or an object's only array."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    return None


def _looks_like_jsonl(text: str) -> bool:
    first = next((line for line in text.splitlines() if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        return False


def _read_parquet(path: Path, problems: ProblemLog, name: str) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        problems.add(
            name,
            f"cannot read it as Parquet ({type(exc).__name__}: {exc})",
            "re-export the file as Parquet (e.g. pandas.DataFrame.to_parquet) or use JSONL",
        )
        return []
    return [Record(name, f"row {i}", row) for i, row in enumerate(rows, start=1)]


def _read_csv(path: Path, problems: ProblemLog, name: str) -> list[Record]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as exc:  # pandas: ParserError, UnicodeDecodeError, EmptyDataError, ...
        problems.add(
            name,
            f"cannot read it as CSV ({type(exc).__name__}: {exc})",
            "save it as UTF-8 CSV with a header row and quoted multi-line fields, or use JSONL",
        )
        return []
    rows = frame.to_dict(orient="records")
    return [Record(name, f"row {i}", row) for i, row in enumerate(rows, start=1)]


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return f"a {type(value).__name__}"
