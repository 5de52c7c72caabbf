{{/*
The chart name, or nameOverride.
*/}}
{{- define "wva.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: fullnameOverride, else the release name when
it already contains the chart name, else "<release>-<chart>". Service names
are DNS labels (at most 63 characters) and the longest Service suffix is
"-headless", so a longer prefix fails here instead of being cut silently.
*/}}
{{- define "wva.fullname" -}}
{{- $name := "" }}
{{- if .Values.fullnameOverride }}
{{- $name = .Values.fullnameOverride }}
{{- else }}
{{- $chart := default .Chart.Name .Values.nameOverride }}
{{- if contains $chart .Release.Name }}
{{- $name = .Release.Name }}
{{- else }}
{{- $name = printf "%s-%s" .Release.Name $chart }}
{{- end }}
{{- end }}
{{- if gt (len $name) 54 }}
{{- fail (printf "the resource name prefix %q is longer than 54 characters (Service names add \"-headless\"): use a shorter release name or fullnameOverride" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
"name-version" for the helm.sh/chart label.
*/}}
{{- define "wva.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the aggregator pods. They must never change between
upgrades: a Deployment's selector is immutable.
*/}}
{{- define "wva.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wva.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: aggregator
{{- end }}

{{/*
Labels of every resource.
*/}}
{{- define "wva.labels" -}}
helm.sh/chart: {{ include "wva.chart" . }}
{{ include "wva.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wva
{{- end }}

{{/*
The aggregator's ServiceAccount.
*/}}
{{- define "wva.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wva.fullname" .) .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- fail "serviceAccount.name is required when serviceAccount.create is false" }}
{{- end }}
{{- end }}

{{/*
The namespace the aggregator watches, or "" for the whole cluster.
*/}}
{{- define "wva.watchNamespace" -}}
{{- if .Values.watchNamespace }}
{{- .Values.watchNamespace }}
{{- else if .Values.rbac.namespaced }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/*
The leader Lease's name.
*/}}
{{- define "wva.leaseName" -}}
{{- default (printf "%s-aggregator-leader" (include "wva.fullname" .)) .Values.leaderElection.id }}
{{- end }}

{{- define "wva.headlessServiceName" -}}
{{- include "wva.fullname" . }}-headless
{{- end }}

{{- define "wva.webhookServiceName" -}}
{{- include "wva.fullname" . }}-webhook
{{- end }}

{{- define "wva.webhookConfigurationName" -}}
{{- include "wva.fullname" . }}-agent-injector
{{- end }}

{{/*
The Secret holding the webhook's serving certificate (tls.crt, tls.key), written
by the aggregator or by cert-manager.
*/}}
{{- define "wva.webhookSecretName" -}}
{{- include "wva.fullname" . }}-webhook-tls
{{- end }}

{{- define "wva.grpcSecretName" -}}
{{- include "wva.fullname" . }}-grpc-tls
{{- end }}

{{- define "wva.certificateName" -}}
{{- include "wva.fullname" . }}-webhook
{{- end }}

{{- define "wva.injectionConfigMapName" -}}
{{- include "wva.fullname" . }}-injection
{{- end }}

{{/*
True ("true") when the aggregator manages the webhook certificate itself: it
then writes the TLS Secret and patches the caBundle, and needs RBAC for both.
*/}}
{{- define "wva.selfManagedWebhookTLS" -}}
{{- if and .Values.webhook.enabled (not .Values.webhook.certManager.enabled) }}true{{ end }}
{{- end }}

{{/*
injection.agent with the defaults that depend on the release filled in.
*/}}
{{- define "wva.injectionAgent" -}}
{{- $agent := deepCopy .Values.injection.agent }}
{{- if not $agent.image }}
{{- $_ := set $agent "image" (printf "ghcr.io/wva-project/wva-agent:%s" .Chart.AppVersion) }}
{{- end }}
{{- if not $agent.aggregatorAddress }}
{{- $scheme := ternary "https" "http" .Values.grpc.tls.enabled }}
{{- $_ := set $agent "aggregatorAddress" (printf "%s://%s.%s.svc:9443" $scheme (include "wva.headlessServiceName" .) .Release.Namespace) }}
{{- end }}
{{- toYaml $agent }}
{{- end }}

{{/*
`immutable: true` for a ConfigMap when configMaps.immutable is set.
*/}}
{{- define "wva.configMapImmutable" -}}
{{- if .Values.configMaps.immutable }}
immutable: true
{{- end }}
{{- end }}
