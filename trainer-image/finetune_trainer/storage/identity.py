"""Which job owns an output: its namespace and name, as recorded in OWNER.json and MANIFEST.json.

An output belongs to the identity users apply: ``namespace/name``. The spec is immutable, so a
user fixes a job by deleting and re-creating it; the new object gets a new uid but is the same
job to its author, and takes over its output (:mod:`.ownership` decides whether it resumes
from the checkpoints there, by the training fingerprint). The uid is still recorded, to tell
the incarnations of one name apart in messages and to stop a deleted job's last pod from
publishing over the run that replaced it. ``ftj run`` has no API server to hand out uids; it
uses ``local-<fingerprint of the spec>``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from finetune_api.manifest import FineTuneJob

LOCAL_UID = "local"


@dataclass(frozen=True)
class JobIdentity:
    """namespace/name/uid of one FineTuneJob. Two identities are the same job when namespace
    and name match (``==`` ignores the uid); :meth:`same_object` also compares the uid."""

    namespace: str
    name: str
    uid: str = field(compare=False)

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

    def same_object(self, other: JobIdentity | None) -> bool:
        """The same Kubernetes object: same name and same uid (one incarnation of the name)."""
        return other is not None and self == other and self.uid == other.uid

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
