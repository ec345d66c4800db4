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
