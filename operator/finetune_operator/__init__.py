"""The FineTuneJob operator: kopf handlers around a pure core.

Pure core (no I/O, unit-tested): :mod:`~finetune_operator.render` (FineTuneJob → ConfigMap,
Job, Service), :mod:`~finetune_operator.observe` (Job, pods, progress → status and Events),
:mod:`~finetune_operator.status_writes` (when to write), :mod:`~finetune_operator.inventory`
(which objects belong to a job), :mod:`~finetune_operator.projections` (what the indices keep
of each object), :mod:`~finetune_operator.naming`,
:mod:`~finetune_operator.settings`; what the operator and the trainer agree on is
:mod:`finetune_api.contract`.

Edges: :mod:`~finetune_operator.handlers` (kopf), :mod:`~finetune_operator.apply` (idempotent
create), :mod:`~finetune_operator.kube` (asynchronous REST client),
:mod:`~finetune_operator.credentials` (ServiceAccount or kubeconfig),
:mod:`~finetune_operator.progress` (polling the trainer), :mod:`~finetune_operator.metrics`
(Prometheus),
:mod:`~finetune_operator.main` (process entry point: ``python -m finetune_operator``).

Importing the package does not import kopf: the pure modules stay usable on their own.
"""
