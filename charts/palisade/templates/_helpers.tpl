{{/* Chart name. */}}
{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name. */}}
{{- define "palisade.fullname" -}}
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

{{/* Labels of every object. */}}
{{- define "palisade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "palisade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of a component: include "palisade.selector" (list . "operator"). */}}
{{- define "palisade.selector" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "palisade.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* Image of a component: include "palisade.image" (list . .Values.operator.image). */}}
{{- define "palisade.image" -}}
{{- $ctx := index . 0 -}}
{{- $img := index . 1 -}}
{{- $tag := $img.tag | default $ctx.Values.image.tag | default $ctx.Chart.AppVersion -}}
{{- if $ctx.Values.image.registry -}}
{{ printf "%s/%s:%s" (trimSuffix "/" $ctx.Values.image.registry) $img.repository $tag }}
{{- else -}}
{{ printf "%s:%s" $img.repository $tag }}
{{- end -}}
{{- end }}

{{- define "palisade.operator.name" -}}
{{ include "palisade.fullname" . }}-operator
{{- end }}

{{- define "palisade.enforcer.name" -}}
{{ include "palisade.fullname" . }}-enforcer
{{- end }}

{{/* The Service of the stream and the metrics (the name the certificate is for). */}}
{{- define "palisade.service.name" -}}
{{ include "palisade.fullname" . }}-operator
{{- end }}

{{- define "palisade.tls.secret" -}}
{{ .Values.tls.secretName | default (printf "%s-stream-tls" (include "palisade.fullname" .)) }}
{{- end }}

{{/* DNS names of the stream's certificate, one per line. */}}
{{- define "palisade.tls.names" -}}
{{- $svc := include "palisade.service.name" . -}}
{{ $svc }}
{{ $svc }}.{{ .Release.Namespace }}
{{ $svc }}.{{ .Release.Namespace }}.svc
{{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}

{{/* Whether a feature named in files/operator-rbac.json is on ("true" or ""). */}}
{{- define "palisade.feature" -}}
{{- $ctx := index . 0 -}}
{{- $f := index . 1 -}}
{{- if not $f -}}true
{{- else if eq $f "generatedTls" -}}{{ if not $ctx.Values.tls.certManager.enabled }}true{{ end }}
{{- else if eq $f "audit" -}}{{ if $ctx.Values.audit.enabled }}true{{ end }}
{{- else if eq $f "auditApi" -}}{{ if and $ctx.Values.audit.enabled $ctx.Values.audit.api.enabled }}true{{ end }}
{{- else if eq $f "operatorReportCrds" -}}{{- /* never: the operator runs with --no-report-crds */ -}}
{{- else if eq $f "wgpolicyk8s" -}}{{ if has $ctx.Values.reports.api (list "wgpolicyk8s" "both") }}true{{ end }}
{{- else if eq $f "openreports" -}}{{ if has $ctx.Values.reports.api (list "openreports" "both") }}true{{ end }}
{{- else if eq $f "reports" -}}{{ if ne $ctx.Values.reports.api "none" }}true{{ end }}
{{- else -}}{{ fail (printf "files/operator-rbac.json names feature %q, which templates/_helpers.tpl (palisade.feature) does not know" $f) }}
{{- end -}}
{{- end }}

{{/*
Audit and report flags of the operator (operator/src/audit/args.rs, operator/src/report/mod.rs).
charts/tests runs palisade-operator's own parser on every rendering, so a flag it does not
accept fails the test, not a cluster.
*/}}
{{- define "palisade.operator.auditArgs" -}}
{{- $a := .Values.audit }}
{{- if not $a.enabled }}
- --audit-database=none
{{- else if eq $a.storage "postgres" }}
- --audit-database=$(PALISADE_AUDIT_DATABASE)
{{- else }}
- --audit-database=sqlite:///var/lib/palisade-operator/audit.db
{{- end }}
{{- if $a.enabled }}
- --audit-retention-age={{ $a.retention.age }}
- --audit-retention-rows={{ int64 $a.retention.rows }}
{{- if and $a.retention.bytes (eq $a.storage "sqlite") }}
- --audit-retention-bytes={{ $a.retention.bytes }}
{{- end }}
- --audit-default={{ $a.default }}
{{- if $a.api.enabled }}
- --audit-api-listen=0.0.0.0:{{ $a.api.port }}
{{- end }}
{{- end }}
{{- if eq .Values.reports.api "none" }}
- --no-reports
{{- else }}
- --report-api={{ .Values.reports.api }}
{{- end }}
{{- /* The chart installs the report CRDs itself (reports.installCRDs) or leaves them to
another tool: the operator never creates them, and needs no right to. */}}
- --no-report-crds
{{- end }}
