"""Which job owns an output: namespace, name and uid, as recorded in OWNER.json and MANIFEST.json.

The uid tells apart two jobs that reuse a name (delete and re-create), so a re-created job
does not silently take over its predecessor's artifacts. ``ftj run`` has no API server to
hand out uids; it uses ``local-<fingerprint of the spec>``: re-running one manifest is the same
job (it resumes from its checkpoints), while an edited spec is another job, refused at an
output that holds the old run's work instead of silently resuming from weights trained with
other settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from finetune_api.manifest import FineTuneJob

LOCAL_UID = "local"


@dataclass(frozen=True)
class JobIdentity:
    """namespace/name/uid of one FineTuneJob."""

    namespace: str
    name: str
    uid: str

    @classmethod
    def of(cls, job: FineTuneJob) -> JobIdentity:
        """The identity of a parsed FineTuneJob (``default`` namespace; a spec-derived uid for
        local runs)."""
        meta = job.metadata
        return cls(meta.namespace or "default", meta.name, meta.uid or local_uid(job))

    @classmethod
    def from_dict(cls, data: Any) -> JobIdentity | None:
        """Read ``{"namespace", "name", "uid"}``; None when the record is malformed."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(str(data["namespace"]), str(data["name"]), str(data["uid"]))
        except KeyError:
            return None

    def to_dict(self) -> dict[str, str]:
        """The JSON form written into OWNER.json and MANIFEST.json."""
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"


def local_uid(job: FineTuneJob) -> str:
    """``local-<12 hex digits>`` from the spec, leaving out what may change between attempts of
    one run (``suspend``; ``output.uri``, which ``ftj run --output`` overrides)."""
    spec = job.spec.to_wire()
    spec.pop("suspend", None)
    spec.get("output", {}).pop("uri", None)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return f"{LOCAL_UID}-{digest[:12]}"
