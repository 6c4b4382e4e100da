"""The Hugging Face Hub edge: ``hf://org/name`` through ``huggingface_hub.snapshot_download``.

Many clusters have no route to the hub; then the failure must say so and point to the
offline ways (an s3:// copy or a mounted path), not end in a urllib3 traceback.
"""

from __future__ import annotations

from pathlib import Path

from finetune_trainer.errors import StorageError
from finetune_trainer.storage.location import Location


def snapshot(
    location: Location,
    cache_dir: Path,
    revision: str | None,
    *,
    allow_patterns: list[str] | None = None,
) -> Path:
    """Download (or reuse from the hub cache) a repo snapshot; the path of ``location`` in it.

    ``allow_patterns``: only the files matching them (the tokenizer's, fetched before the
    weights); a later full snapshot of the same revision reuses them.
    """
    if allow_patterns is None and location.key:
        allow_patterns = [f"{location.key}/*", location.key]
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(
            location.repo_id,
            repo_type=location.repo_type,
            revision=revision,
            cache_dir=cache_dir / "hf",
            allow_patterns=allow_patterns,
        )
    except Exception as err:  # the hub client raises many unrelated types for "offline"
        at = f" at revision {revision}" if revision else ""
        raise StorageError(
            f"cannot download {location}{at} from the Hugging Face Hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}). "
            "If this cluster has no internet access, copy the model to S3 or a volume and use "
            "s3://bucket/prefix or a mounted path as the URI instead.",
            reason="HubUnreachable",
        ) from None
    path = Path(str(folder))
    return path / location.key if location.key else path
