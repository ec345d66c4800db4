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
{{- with .Values.operator.watchNamespace -}}
matchResources:
  namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end -}}
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
{{- if and $p.gpuCeiling.enabled (or (not (kindIs "invalid" $p.gpuCeiling.default)) $p.gpuCeiling.namespaces) }}
{{ printf "%s-gpu-ceiling" $cluster }}
{{- end }}
{{- end -}}
