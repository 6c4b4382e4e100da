"""Loading the base model's safetensors while they are still downloading (issue 24).

``storage.Storage.fetch_model`` returns a :class:`~finetune_trainer.storage.ModelFetch` that may
still be arriving: every file already has its final size, and the fetch says which byte
ranges are in. Here each tensor of each shard becomes a lazy slice that waits for its own
byte range before safetensors reads it, and transformers' own loader
(``from_pretrained(state_dict=...)``: the same renaming, dtype and device placement as a
load from disk) materializes them on its worker threads. So tensor k goes to the GPU while the
ranges after it are still on the wire, and the load ends shortly after the last byte.

On by default since it ran on an H100 (session 17: a 15.2 GB 7B from S3 had its weights on the
GPU 9.0 s after the fetch began, against 28.6 s downloading first; bench/NOTES.md);
``FTJ_LOAD_WHILE_DOWNLOADING=0`` turns it off. Where the lever does not apply (turned off, a
quantized or remote-code
model, weights that are not safetensors) the download is waited for and the folder loaded as
before. Either way the download's outcome is checked after loading: a failed range is raised
as the storage error it is (transformers would otherwise log a tensor it could not read and
carry on with an initialised one).
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

from finetune_trainer import switches
from finetune_trainer.errors import InvalidInput
from finetune_trainer.storage.streaming import ModelFetch

log = logging.getLogger("finetune_trainer")

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"


class ArrivingTensor:
    """A safetensors slice that waits for its bytes: what transformers' loader indexes with
    ``[...]`` (shape and dtype come from the header, which is in already)."""

    def __init__(self, fetch: ModelFetch, relative: str, start: int, end: int, slice_: Any) -> None:
        self._fetch = fetch
        self._relative = relative
        self._range = (start, end)
        self._slice = slice_

    def __getitem__(self, index: Any) -> Any:
        self._fetch.wait_bytes(self._relative, *self._range)
        return self._slice[index]

    def __getattr__(self, name: str) -> Any:  # get_shape, get_dtype, ...
        return getattr(self._slice, name)


def weight_files(fetch: ModelFetch, model_dir: Path) -> list[str] | None:
    """The safetensors files of the model, shard order; None when its weights are in another
    format (or none are there: transformers' own error then says so)."""
    index = model_dir / SAFE_INDEX
    if fetch.pending(SAFE_INDEX) or index.is_file():
        fetch.wait_bytes(SAFE_INDEX, 0, index.stat().st_size)
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidInput(
                f"spec.model.uri: {index.name} is not a safetensors index ({err}). Point it at "
                "a Hugging Face model folder with config.json and weights."
            ) from None
        return sorted(set(weight_map.values()))
    if fetch.pending(SAFE_WEIGHTS) or (model_dir / SAFE_WEIGHTS).is_file():
        return [SAFE_WEIGHTS]
    return None


def _header(fetch: ModelFetch, path: Path, relative: str) -> tuple[int, dict[str, Any]]:
    """Where a safetensors file's data starts and its header (each tensor's offsets)."""
    fetch.wait_bytes(relative, 0, 8)
    with path.open("rb") as f:
        raw = f.read(8)
        size = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
        total = path.stat().st_size
        if size < 2 or 8 + size > total:
            raise InvalidInput(
                f"spec.model.uri: {relative} is not a valid safetensors file (its header "
                f"claims {size} bytes of {total}). Re-upload the model's weights."
            )
        fetch.wait_bytes(relative, 8, 8 + size)
        f.seek(8)
        try:
            header = json.loads(f.read(size))
        except ValueError as err:
            raise InvalidInput(
                f"spec.model.uri: {relative} is not a valid safetensors file (header: {err}). "
                "Re-upload the model's weights."
            ) from None
    return 8 + size, header


def lazy_state_dict(
    fetch: ModelFetch, model_dir: Path, files: list[str]
) -> tuple[dict[str, Any], list[Any]]:
    """Every tensor of ``files`` as an :class:`ArrivingTensor`, and the open safetensors
    handles (closed by the caller after loading)."""
    from safetensors import safe_open

    state: dict[str, Any] = {}
    handles: list[Any] = []
    for relative in files:
        path = model_dir / relative
        if not fetch.pending(relative) and not path.is_file():
            raise InvalidInput(
                f"spec.model.uri: {SAFE_INDEX} names {relative}, which is not in the model "
                "folder. Upload every shard the index lists."
            )
        base, header = _header(fetch, path, relative)
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as err:  # safetensors' own error type: a malformed header
            raise InvalidInput(
                f"spec.model.uri: {relative} is not a valid safetensors file ({err}). "
                "Re-upload the model's weights."
            ) from None
        handles.append(handle)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            state[name] = ArrivingTensor(
                fetch,
                relative,
                base + start,
                base + end,
                handle.get_slice(name),  # type: ignore[no-untyped-call]  # safetensors: untyped
            )
    return state, handles


def can_load_while_arriving(fetch: ModelFetch, kwargs: dict[str, Any]) -> bool:
    """Whether the weights may be read while they download (see the module doc)."""
    return (
        fetch.arriving
        and switches.active().load_while_downloading
        and "quantization_config" not in kwargs
        and not kwargs.get("trust_remote_code", False)
    )


def load_while_arriving(
    fetch: ModelFetch, model_dir: Path, config: Any, kwargs: dict[str, Any]
) -> Any:
    """``AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)``, reading each tensor as
    soon as its bytes are in; returns once the whole folder is in the cache too."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM, GenerationConfig

    try:
        files = weight_files(fetch, model_dir)
        model_class: Any = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
        if files is None or model_class is None:  # not safetensors; a class the Auto maps lack
            fetch.wait()
            return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
        state, handles = lazy_state_dict(fetch, model_dir, files)
        extra: dict[str, Any] = {}
        if (
            fetch.pending("generation_config.json")
            or (model_dir / "generation_config.json").is_file()
        ):
            generation = model_dir / "generation_config.json"
            fetch.wait_bytes(generation.name, 0, generation.stat().st_size)
            extra["generation_config"] = GenerationConfig.from_pretrained(model_dir)
        try:
            # The class AutoModelForCausalLM would pick (the Auto class wants a folder name).
            model = model_class.from_pretrained(
                None, config=config, state_dict=state, **kwargs, **extra
            )
        finally:
            del state
            for handle in handles:
                handle.__exit__(None, None, None)
        fetch.wait()  # a range that failed under transformers' loader is raised here
    except BaseException:
        fetch.cancel()
        raise
    # As a load from the folder would have it (peft records it as the adapter's base).
    model.config.name_or_path = str(model_dir)
    model.name_or_path = str(model_dir)
    return model
