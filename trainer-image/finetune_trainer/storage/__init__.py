"""The trainer's storage layer: fetch inputs, keep checkpoints, publish artifacts.

One :class:`Storage` serves every scheme (``s3://``, ``file://`` and plain paths, read-only
``hf://``); the pipeline never branches on where things live. Publishing writes
``MANIFEST.json`` last and never over another job's output (see :mod:`.ownership`).
"""

from finetune_trainer.storage.checkpoints import COMPLETE_MARKER, CheckpointStore
from finetune_trainer.storage.client import Storage
from finetune_trainer.storage.entries import FileEntry
from finetune_trainer.storage.fingerprint import TrainingFingerprint, training_fingerprint
from finetune_trainer.storage.identity import LOCAL_UID, JobIdentity
from finetune_trainer.storage.location import Location
from finetune_trainer.storage.ownership import (
    MANIFEST_FILE,
    OWNER_FILE,
    Claim,
    check_output,
    claim_output,
    confirm_ownership,
)
from finetune_trainer.storage.publish import publish_artifacts, verify_manifest
from finetune_trainer.storage.s3 import TransferSettings
from finetune_trainer.storage.streaming import ModelFetch

__all__ = [
    "COMPLETE_MARKER",
    "LOCAL_UID",
    "MANIFEST_FILE",
    "ModelFetch",
    "OWNER_FILE",
    "CheckpointStore",
    "Claim",
    "FileEntry",
    "JobIdentity",
    "Location",
    "Storage",
    "TrainingFingerprint",
    "TransferSettings",
    "check_output",
    "claim_output",
    "confirm_ownership",
    "publish_artifacts",
    "training_fingerprint",
    "verify_manifest",
]
