{{/* Names and labels shared by every template. */}}

{{- define "bridgenet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object-name prefix: the release name, plus the chart name unless it already says it. */}}
{{- define "bridgenet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bridgenet.operator.fullname" -}}
{{- printf "%s-operator" (include "bridgenet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bridgenet.agent.fullname" -}}
{{- printf "%s-agent" (include "bridgenet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bridgenet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "bridgenet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bridgenet
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "bridgenet.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bridgenet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "bridgenet.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bridgenet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "bridgenet.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "bridgenet.agent.image" -}}
{{- printf "%s:%s" .Values.agent.image.repository (default .Chart.AppVersion .Values.agent.image.tag) -}}
{{- end -}}

{{/*
admissionregistration.k8s.io version of the readiness gate's MutatingAdmissionPolicy: the one
set in readinessGate.apiVersion, else the newest the cluster serves, else empty (none).
*/}}
{{- define "bridgenet.readinessGate.apiVersion" -}}
{{- if .Values.readinessGate.apiVersion -}}
admissionregistration.k8s.io/{{ .Values.readinessGate.apiVersion }}
{{- else -}}
{{- $found := dict "gv" "" -}}
{{- range list "v1" "v1beta1" "v1alpha1" -}}
{{- $gv := printf "admissionregistration.k8s.io/%s" . -}}
{{- if and (not $found.gv) ($.Capabilities.APIVersions.Has (printf "%s/MutatingAdmissionPolicy" $gv)) -}}
{{- $_ := set $found "gv" $gv -}}
{{- end -}}
{{- end -}}
{{- $found.gv -}}
{{- end -}}
{{- end }}
