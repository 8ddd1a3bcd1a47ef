{{/* Names, labels and the few decisions several templates share. */}}

{{- define "streamgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "streamgate.fullname" -}}
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

{{- define "streamgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "streamgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "streamgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: admission-webhook
{{- end }}

{{- define "streamgate.serviceAccountName" -}}
{{- default (include "streamgate.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* Both webhook configurations (validating and mutating) carry this name. */}}
{{- define "streamgate.webhookName" -}}
{{- include "streamgate.fullname" . }}
{{- end }}

{{/* The Secret the pods mount or (self-managed) write: serving pair + CA. */}}
{{- define "streamgate.tlsSecretName" -}}
{{- $c := .Values.certificates }}
{{- if eq $c.mode "provided" }}
{{- $c.provided.secretName }}
{{- else if eq $c.mode "self-managed" }}
{{- default (printf "%s-tls" (include "streamgate.fullname" .)) $c.selfManaged.secretName }}
{{- else }}
{{- printf "%s-tls" (include "streamgate.fullname" .) }}
{{- end }}
{{- end }}

{{- define "streamgate.image" -}}
{{- $i := .Values.image }}
{{- if $i.digest }}
{{- printf "%s@%s" $i.repository $i.digest }}
{{- else }}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) }}
{{- end }}
{{- end }}

{{/*
The caBundle to render into the webhook configurations, or "" (cert-manager injects it;
self-managed pods patch it). Self-managed: reuse the CA the running webhook already published
(lookup sees the cluster on install/upgrade, nothing under `helm template`), so an upgrade
never blanks it.
*/}}
{{- define "streamgate.caBundle" -}}
{{- $c := .Values.certificates }}
{{- if .Values.webhook.caBundle }}
{{- .Values.webhook.caBundle }}
{{- else if .Values.webhook.url }}
{{- fail "webhook.url needs webhook.caBundle: the base64 PEM CA that signed the serving certificate at that URL" }}
{{- else if eq $c.mode "provided" }}
{{- $c.provided.caBundle }}
{{- else if eq $c.mode "self-managed" }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "streamgate.tlsSecretName" .) }}
{{- if and $secret $secret.data }}
{{- index $secret.data "ca-bundle.crt" | default "" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Namespaces never sent to the webhook: kube-system, the release namespace, the policy's
exempt namespaces, namespaces the policy turns off, and webhook.excludeNamespaces.
*/}}
{{- define "streamgate.excludedNamespaces" -}}
{{- $names := list "kube-system" .Release.Namespace }}
{{- $names = concat $names (.Values.policy.exemptions.namespaces | default list) }}
{{- range $ns, $mode := (.Values.policy.namespaceModes | default dict) }}
{{- if eq $mode "off" }}{{ $names = append $names $ns }}{{ end }}
{{- end }}
{{- $names = concat $names (.Values.webhook.excludeNamespaces | default list) }}
{{- toJson (uniq $names) }}
{{- end }}

{{/* Checks that span several values (the schema covers single values). */}}
{{- define "streamgate.validate" -}}
{{- $c := .Values.certificates }}
{{- if and (eq $c.mode "provided") .Values.deployment.enabled (not .Values.webhook.url) }}
{{- if not $c.provided.secretName }}
{{- fail "certificates.mode=provided needs certificates.provided.secretName: an existing kubernetes.io/tls Secret in the release namespace" }}
{{- end }}
{{- if not (or $c.provided.caBundle .Values.webhook.caBundle) }}
{{- fail "certificates.mode=provided needs certificates.provided.caBundle: the base64 PEM CA that signed that Secret's certificate" }}
{{- end }}
{{- end }}
{{- if and (not .Values.deployment.enabled) (not .Values.webhook.url) (or .Values.webhook.validating.enabled .Values.webhook.mutating.enabled) }}
{{- fail "deployment.enabled=false leaves the webhook Service without pods: set webhook.url (and webhook.caBundle) to the webhook running elsewhere" }}
{{- end }}
{{- $registry := .Values.policy.registry | default dict }}
{{- $deadline := $registry.deadline_seconds | default $registry.deadlineSeconds | default 2.0 }}
{{- if ge (float64 $deadline) (float64 .Values.webhook.timeoutSeconds) }}
{{- fail (printf "policy.registry.deadlineSeconds (%v s) must be below webhook.timeoutSeconds (%v s): the webhook must answer before the apiserver gives up" $deadline .Values.webhook.timeoutSeconds) }}
{{- end }}
{{- end }}

{{/* The pods' PriorityClass: the value given, else the chart's own when it creates one. */}}
{{- define "streamgate.priorityClassName" -}}
{{- if .Values.priorityClassName }}
{{- .Values.priorityClassName }}
{{- else if .Values.priorityClass.create }}
{{- include "streamgate.fullname" . }}
{{- end }}
{{- end }}

{{/*
"true" when the policy's remediation converts anywhere (policy.remediation: convert, its
action, or any namespace override set to convert): the webhook then writes to registries.
*/}}
{{- define "streamgate.remediationOn" -}}
{{- $converts := false }}
{{- $remediation := .Values.policy.remediation | default "none" }}
{{- if kindIs "string" $remediation }}
{{- $converts = eq $remediation "convert" }}
{{- else }}
{{- $converts = eq (toString $remediation.action) "convert" }}
{{- range $ns, $action := ($remediation.namespaces | default dict) }}
{{- if eq (toString $action) "convert" }}{{ $converts = true }}{{ end }}
{{- end }}
{{- end }}
{{- ternary "true" "false" $converts }}
{{- end }}
