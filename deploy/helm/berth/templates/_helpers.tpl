{{/*
Labels of every object: Berth's own (as deploy/ sets them) and Helm's standard ones.
Selectors use berth.selectorLabels only, so an upgrade never changes an immutable selector.
*/}}
{{- define "berth.labels" -}}
app.kubernetes.io/name: berth
app.kubernetes.io/part-of: berth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: berth
app.kubernetes.io/component: scheduler-extender
{{- end }}

{{- define "berth.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The port the scheduler calls the verbs on: loopback plain, or the mTLS port. */}}
{{- define "berth.verbPort" -}}
{{ ternary (include "berth.tlsPort" .) .Values.config.server.port .Values.tls.enabled }}
{{- end }}

{{/* Berth's mTLS port: server.tls_port, which Berth defaults to 8443. */}}
{{- define "berth.tlsPort" -}}
{{ .Values.config.server.tls_port | default 8443 }}
{{- end }}

{{/* The Secret holding the scheduler's client pair, and its key names. */}}
{{- define "berth.clientSecret" -}}
{{ ternary (printf "%s-client" .Values.tls.existingSecret) .Values.tls.existingSecret .Values.tls.certManager.enabled }}
{{- end }}
