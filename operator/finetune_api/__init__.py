"""The FineTuneJob contract: spec and status models, manifest loading and CRD generation.

This package is the single source of truth for the API: the CRD, ``ftj validate``, the
operator and the trainer all import it. :mod:`finetune_api.contract` holds what the operator
and a trainer process agree on beyond the spec: exit codes, paths, ports, ``FTJ_*`` variables.
"""

from finetune_api._base import API_VERSION, GROUP, KIND, PLURAL, VERSION
from finetune_api.manifest import FineTuneJob, ManifestError, load_manifest, parse_manifest
from finetune_api.spec import FineTuneJobSpec
from finetune_api.status import FineTuneJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
    "ManifestError",
    "load_manifest",
    "parse_manifest",
]
