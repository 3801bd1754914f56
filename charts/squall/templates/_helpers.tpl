{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "squall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix for every object: "<release>-squall", or the release name
when it already contains the chart name. Kept short enough that suffixes such
as "-operator" and "-etcd-headless" stay within 63 characters.
*/}}
{{- define "squall.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "squall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "squall.labels" -}}
helm.sh/chart: {{ include "squall.chart" . }}
app.kubernetes.io/name: {{ include "squall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: squall
{{- end }}

{{- define "squall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "squall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "squall.operator.fullname" -}}
{{- printf "%s-operator" (include "squall.fullname" .) }}
{{- end }}

{{- define "squall.operator.labels" -}}
{{ include "squall.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "squall.operator.selectorLabels" -}}
{{ include "squall.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "squall.etcd.fullname" -}}
{{- printf "%s-etcd" (include "squall.fullname" .) }}
{{- end }}

{{- define "squall.etcd.headlessName" -}}
{{- printf "%s-etcd-headless" (include "squall.fullname" .) }}
{{- end }}

{{- define "squall.etcd.labels" -}}
{{ include "squall.labels" . }}
app.kubernetes.io/component: etcd
{{- end }}

{{- define "squall.etcd.selectorLabels" -}}
{{ include "squall.selectorLabels" . }}
app.kubernetes.io/component: etcd
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "squall.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "squall.operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "squall.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (.Values.operator.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{- define "squall.supervisor.image" -}}
{{- printf "%s:%s" .Values.supervisor.image.repository (.Values.supervisor.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
True (non-empty) when the chart installs its own etcd.
*/}}
{{- define "squall.etcd.bundled" -}}
{{- if not .Values.etcd.external.endpoints }}true{{ end }}
{{- end }}

{{/*
True (non-empty) when the operator talks to etcd with TLS client certificates.
*/}}
{{- define "squall.etcd.tls" -}}
{{- if and .Values.etcd.external.endpoints .Values.etcd.external.tls.secretName }}true{{ end }}
{{- end }}

{{/*
The etcd client endpoints, comma-separated: the external ones, or the bundled
etcd's client Service.
*/}}
{{- define "squall.etcd.endpoints" -}}
{{- if .Values.etcd.external.endpoints }}
{{- join "," .Values.etcd.external.endpoints }}
{{- else }}
{{- printf "http://%s.%s.svc:2379" (include "squall.etcd.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
True (non-empty) when the operator runs with leader election.
*/}}
{{- define "squall.leaderElect" -}}
{{- if or .Values.operator.leaderElection.enabled (gt (int .Values.operator.replicas) 1) }}true{{ end }}
{{- end }}

{{/*
Whether to create a prometheus-operator object: enabled, and the cluster
serves its kind (or `force`), so that a missing CRD never fails an install.
Call with (list . "ServiceMonitor" .Values.metrics.serviceMonitor).
*/}}
{{- define "squall.monitor.create" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $values := index . 2 -}}
{{- if and $values.enabled (or $values.force ($root.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) -}}
true
{{- end -}}
{{- end }}
