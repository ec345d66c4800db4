{{- define "frugal.name" -}}frugal-operator{{- end -}}

{{- define "frugal.fullname" -}}
{{- if contains "frugal" .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-frugal-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "frugal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "frugal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "frugal.labels" -}}
{{ include "frugal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: frugal
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The images `make images` builds, named by the chart's appVersion. */}}
{{- define "frugal.trainerImage" -}}
{{- .Values.operator.trainerImage | default (printf "frugal-trainer:%s-cuda" .Chart.AppVersion) -}}
{{- end -}}

{{- define "frugal.trainerCpuImage" -}}
{{- .Values.operator.trainerCpuImage | default (printf "frugal-trainer:%s-cpu" .Chart.AppVersion) -}}
{{- end -}}

{{/* The name of a cluster-scoped object of this release: the fullname and the release's
namespace, as two releases of one name in two namespaces (the e2e tests' scoped installs) are
two releases. */}}
{{- define "frugal.clusterName" -}}
{{- printf "%s-%s" (include "frugal.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* An admission policy binding's scope: the watched namespace when the operator watches one
(the release then governs only its jobs there), else nothing: every namespace. */}}
{{- define "frugal.policyBindingScope" -}}
{{- $namespaces := include "frugal.watchedNamespaces" . | trim | splitList "\n" | compact -}}
{{- if eq (len $namespaces) 1 -}}
matchResources:
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ first $namespaces }}
{{- else if $namespaces -}}
matchResources:
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: {{ toJson $namespaces }}
{{- end -}}
{{- end -}}

{{/* The namespaces the operator watches, one a line (operator.watchNamespace and
operator.watchNamespaces together); none: every namespace. */}}
{{- define "frugal.watchedNamespaces" -}}
{{- with .Values.operator.watchNamespace }}
{{ . }}
{{- end }}
{{- range .Values.operator.watchNamespaces }}
{{ . }}
{{- end }}
{{- end -}}

{{/* The operator's rules on TrainingJobs and their children; `scoped`: a Role in a watched
namespace (no node reads). */}}
{{- define "frugal.operatorRules" }}
  - apiGroups: [frugal.dev]
    resources: [trainingbudgets]
    verbs: [get, list, watch]
  # patch: only the finalizer, which holds a deleted job until its pods are gone and billed
  - apiGroups: [frugal.dev]
    resources: [trainingjobs]
    verbs: [get, list, watch, patch]
  # the operator writes status; it also grants trainer pods get/patch on their own job's status,
  # which RBAC allows only to a holder of those verbs
  - apiGroups: [frugal.dev]
    resources: [trainingjobs/status]
    verbs: [get, patch, update]
  # a TrainingBudget's status is the ledger of the GPUs its jobs hold: replaced (update) with
  # the resourceVersion it was read at, so concurrent admissions cannot over-commit it
  - apiGroups: [frugal.dev]
    resources: [trainingbudgets/status]
    verbs: [get, update]
  - apiGroups: [batch]
    resources: [jobs]
    verbs: [get, list, watch, create, patch, delete]
  # delete: a deleted job's pods that no Job takes away, and pods the reaper finds orphaned
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch, delete]
  - apiGroups: [""]
    resources: [services, configmaps, serviceaccounts]
    verbs: [get, list, watch, create, patch, delete]
  # Secrets are neither listed nor watched: the operator creates each job's token Secret once,
  # reads it back by name only to see that it made it, and deletes it with the job
  - apiGroups: [""]
    resources: [secrets]
    verbs: [get, create, delete]
  - apiGroups: [""]
    resources: [persistentvolumeclaims]
    verbs: [get]
  - apiGroups: [rbac.authorization.k8s.io]
    resources: [roles, rolebindings]
    verbs: [get, list, watch, create, patch, delete]
  - apiGroups: [events.k8s.io]
    resources: [events]
    verbs: [create, patch]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, list, watch, create, patch, delete]
{{- if not .scoped }}
  # billing prices a pod at the GPU type its node's nvidia.com/gpu.product label names (read once
  # per node); namespace-scoped, the operator prices at the job's spec.resources.gpuType instead
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get]
{{- end }}
{{- end -}}

{{/* The admission policies this release installs, one name a line: the operator checks that the
API server has each (--admission-policy) and says so when one is missing. */}}
{{- define "frugal.policyNames" -}}
{{- $p := .Values.admissionPolicies -}}
{{- $cluster := include "frugal.clusterName" . -}}
{{- if $p.status.enabled }}
{{ printf "%s-status" $cluster }}
{{- end }}
{{- if $p.operatorJobs.enabled }}
{{ printf "%s-operator-jobs" $cluster }}
{{- end }}
{{- if $p.defaultBudget.enabled }}
{{ printf "%s-default-budget" $cluster }}
{{- end }}
{{- if $p.secretReferences.enabled }}
{{ printf "%s-secret-references" $cluster }}
{{- end }}
{{- if and $p.gpuCeiling.enabled (or (not (kindIs "invalid" $p.gpuCeiling.default)) $p.gpuCeiling.namespaces) }}
{{ printf "%s-gpu-ceiling" $cluster }}
{{- end }}
{{- end -}}
