"""The simulated cluster behind the gateway's emulated API: controllers, kubelet and DNS.

Why: the gateway (:mod:`tests.harness.kube_api`) stores Jobs and pods, but nothing would run
them. :class:`JobSimulator` plays what a cluster runs for them, on the gateway's event loop,
so the operator sees a Job's pods start, progress, fail, get evicted or stay unschedulable as
on a real cluster. See :mod:`tests.harness.cluster.simulator` for the whole picture.

Modules, one job each:

===================  ==========================================================================
``simulator``        :class:`JobSimulator`: starts the parts, routes store events, test hooks
``job_controller``   the ``batch/v1`` Job controller (backoff, failure policy, deadline...)
``pod_template``     pods as controllers make them from a template (Indexed Jobs too)
``kubelet``          runs pods and moves their status; logs, eviction, stopping
``pod_state``        :class:`SimulatedPod`: a pod's process, address and log
``pod_config``       volumes and environment as the kubelet resolves them; ``$(VAR)``
``host_process``     a container as a process of this checkout (the e2e tier)
``image_container``  a container from its image via the container runtime (the image tier)
``cluster_dns``      ``<hostname>.<subdomain>`` names of pods behind headless Services
``faults``           unschedulable and image-pull faults, and the status they leave
``conditions``       pod and Job conditions as upstream writes them
===================  ==========================================================================
"""

from tests.harness.cluster.pod_config import expand_var_refs
from tests.harness.cluster.pod_state import SimulatedPod
from tests.harness.cluster.simulator import JobSimulator

__all__ = ["JobSimulator", "SimulatedPod", "expand_var_refs"]
