{{/*
Chart name, truncated to 63 characters (the DNS label limit of object names and label values).
*/}}
{{- define "finetune-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the release name, plus the chart name unless the release name
already contains it. Truncated to 63 characters.
*/}}
{{- define "finetune-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "finetune-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels, on every object of the release.
*/}}
{{- define "finetune-operator.labels" -}}
helm.sh/chart: {{ include "finetune-operator.chart" . }}
{{ include "finetune-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune-operator
{{- end }}

{{/*
Selector labels: stable across upgrades (a Deployment's selector is immutable).
*/}}
{{- define "finetune-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Name of the ServiceAccount the operator runs as.
*/}}
{{- define "finetune-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "finetune-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Operator image; the tag defaults to the chart's appVersion, a digest wins over the tag.
*/}}
{{- define "finetune-operator.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
Default trainer image for FineTuneJobs that don't set spec.resources.image; the tag defaults to
the chart's appVersion, so operator and trainer always come from the same release.
*/}}
{{- define "finetune-operator.trainerImage" -}}
{{- $image := .Values.trainer.image }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
Peering (kopf's "which operator is active" objects) name; empty when peering is off.
*/}}
{{- define "finetune-operator.peeringName" -}}
{{- if .Values.peering.enabled }}
{{- default (include "finetune-operator.fullname" .) .Values.peering.name }}
{{- end }}
{{- end }}

{{/*
The RBAC rules of the operator, shared by the ClusterRole (cluster-wide) and the per-namespace
Roles (watchNamespaces). Exactly the requests the operator makes, nothing on Secrets: trainer
pods read S3 credentials through secretKeyRef, which the kubelet resolves, not the operator.
Argument: a dict with "root" (the top context) and "clusterwide" (bool).
*/}}
{{- define "finetune-operator.rules" -}}
{{- $root := .root -}}
# FineTuneJobs: listed and watched by kopf, listed by name before a Job deleted by hand is
# created again; patched for kopf's annotations (and to remove the finalizer an older,
# timer-based release left).
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["list", "watch", "patch"]
# Status is only written through the status subresource.
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
# The Job that runs the trainer pods: watched (label-selected), created, read back when it
# already exists (a restart), patched to suspend/resume. Deletion is left to the garbage
# collector through ownerReferences.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "patch"]
# The ConfigMap holding the job's spec as JSON, and the headless Service of multi-node jobs:
# created, and read back when they already exist (a restart). Never watched nor patched.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["create", "get"]
# Trainer pods, watched (label-selected): their phase, restarts, termination message and IP
# (progress is polled over HTTP).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events on FineTuneJobs (kopf posts core/v1 events, never updates them).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if $root.Values.peering.enabled }}
# kopf peering: the operator keeps itself alive in its peering object's status; the progress
# poller reads (get) the same object before each round to stay idle on a standby replica.
{{- if .clusterwide }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- else }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
{{- with $root.Values.rbac.extraRules }}
# Extra rules from values (rbac.extraRules).
{{ toYaml . }}
{{- end }}
{{- end }}
