{{/* Chart name, overridable. */}}
{{- define "voicefleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: the release name when it already contains the chart name. */}}
{{- define "voicefleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := include "voicefleet.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object the chart creates. */}}
{{- define "voicefleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: voicefleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component: include with (list $ "operator"). */}}
{{- define "voicefleet.selectorLabels" -}}
{{- $root := index . 0 }}
app.kubernetes.io/name: {{ include "voicefleet.name" $root }}-{{ index . 1 }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
{{- end }}

{{- define "voicefleet.operator.fullname" -}}
{{ include "voicefleet.fullname" . }}-operator
{{- end }}

{{- define "voicefleet.router.fullname" -}}
{{ include "voicefleet.fullname" . }}-router
{{- end }}

{{- define "voicefleet.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "voicefleet.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voicefleet.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}
{{- default (include "voicefleet.router.fullname" .) .Values.router.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.router.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "voicefleet.operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.operator.image.tag }}
{{- printf "%s:%s" .Values.operator.image.repository $tag }}
{{- end }}

{{- define "voicefleet.router.image" -}}
{{- $repo := default .Values.operator.image.repository .Values.router.image.repository }}
{{- $tag := default (default .Chart.AppVersion .Values.operator.image.tag) .Values.router.image.tag }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}

{{/* The namespace a bare model name resolves in. */}}
{{- define "voicefleet.router.defaultNamespace" -}}
{{- default .Release.Namespace .Values.router.defaultNamespace }}
{{- end }}

{{/* The label selector of this release's router pods (what the autoscaler scrapes). */}}
{{- define "voicefleet.router.selector" -}}
{{- if .Values.operator.autoscaler.routerSelector }}
{{- .Values.operator.autoscaler.routerSelector }}
{{- else if .Values.router.enabled }}
{{- printf "app.kubernetes.io/name=%s-router,app.kubernetes.io/instance=%s" (include "voicefleet.name" .) .Release.Name }}
{{- end }}
{{- end }}

{{/* A writable /tmp under a read-only root filesystem. */}}
{{- define "voicefleet.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{/* Whether the chart grants Roles in named namespaces instead of ClusterRoles. */}}
{{- define "voicefleet.namespaced" -}}
{{- if eq .Values.rbac.scope "namespaces" }}true{{ end }}
{{- end }}

{{/*
The namespaces the operator watches in namespaced mode (a JSON list): rbac.watchNamespaces,
plus the release namespace when the autoscaler looks for this release's routers there
(kopf watches pods only in the operator's namespaces).
*/}}
{{- define "voicefleet.operator.namespaces" -}}
{{- $list := .Values.rbac.watchNamespaces }}
{{- if include "voicefleet.router.selector" . }}
{{- $list = append $list .Release.Namespace }}
{{- end }}
{{- toJson (uniq $list) }}
{{- end }}

{{/* The namespaces the router serves in namespaced mode (a JSON list). */}}
{{- define "voicefleet.router.namespaces" -}}
{{- toJson (uniq .Values.rbac.watchNamespaces) }}
{{- end }}

{{/* The Secret holding the router's /metrics token (router/metrics-token.yaml). */}}
{{- define "voicefleet.router.metricsSecret" -}}
{{ include "voicefleet.router.fullname" . }}-metrics-token
{{- end }}

{{/* Whether the router requires a token on /metrics (and the operator sends it). */}}
{{- define "voicefleet.router.metricsAuth" -}}
{{- if and .Values.router.enabled .Values.router.metricsAuth.enabled }}true{{ end }}
{{- end }}

{{/*
The peers voice pods accept connections from (a JSON list of NetworkPolicyPeer), the one
place they are written: this release's router and operator pods, selected by their labels
in the release namespace only (a pod elsewhere copying the labels is never a peer), then
networkPolicy.voiceIngressFrom. The operator gets it as --network-policy-from and writes
it into each voice's NetworkPolicy (operator/voicefleet_operator/builders.py).
*/}}
{{- define "voicefleet.voicePeers" -}}
{{- $ns := dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace) }}
{{- $peers := list }}
{{- if .Values.router.enabled }}
{{- $router := dict "matchLabels" (include "voicefleet.selectorLabels" (list . "router") | fromYaml) }}
{{- $peers = append $peers (dict "namespaceSelector" $ns "podSelector" $router) }}
{{- end }}
{{- $operator := dict "matchLabels" (include "voicefleet.selectorLabels" (list . "operator") | fromYaml) }}
{{- $peers = append $peers (dict "namespaceSelector" $ns "podSelector" $operator) }}
{{- toJson (concat $peers .Values.networkPolicy.voiceIngressFrom) }}
{{- end }}

{{/* The Secret holding the key of the voice pods' tokens (operator/voice-auth.yaml). */}}
{{- define "voicefleet.voiceAuthSecret" -}}
{{ include "voicefleet.fullname" . }}-voice-auth
{{- end }}
