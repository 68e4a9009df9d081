{{/*
Helpers shared by the templates. Every name is prefixed with "csi-wasm." so that the
chart can be used as a subchart without clashing with the parent's helpers.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "csi-wasm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the namespaced objects: fullnameOverride, else "<release>-<name>", else just
the release name when it already contains the chart name. 63 characters at most (DNS label).
*/}}
{{- define "csi-wasm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "csi-wasm.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "csi-wasm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the driver's pods; never change them after a release exists. */}}
{{- define "csi-wasm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "csi-wasm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "csi-wasm.labels" -}}
helm.sh/chart: {{ include "csi-wasm.chart" . }}
{{ include "csi-wasm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: csi-wasm
{{- end -}}

{{/* ServiceAccount the DaemonSet runs as. */}}
{{- define "csi-wasm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "csi-wasm.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}: "repository@digest" when a digest is
set, else "repository:tag", the tag defaulting to .defaultTag.
Usage: include "csi-wasm.image" (dict "image" .Values.image "defaultTag" .Chart.AppVersion)
*/}}
{{- define "csi-wasm.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (toString (default .defaultTag $image.tag)) -}}
{{- end -}}
{{- end -}}

{{/* kubeletRootDir without a trailing slash. */}}
{{- define "csi-wasm.kubeletRootDir" -}}
{{- $dir := .Values.kubeletRootDir | trimSuffix "/" -}}
{{- required "kubeletRootDir must not be empty or /" $dir -}}
{{- end -}}

{{/* Host directory of the driver's socket: <kubeletRootDir>/plugins/<driverName>. */}}
{{- define "csi-wasm.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "csi-wasm.kubeletRootDir" .) .Values.driverName -}}
{{- end -}}

{{/* cacheDir without a trailing slash. */}}
{{- define "csi-wasm.cacheDir" -}}
{{- $dir := .Values.cacheDir | trimSuffix "/" -}}
{{- required "cacheDir must not be empty or /" $dir -}}
{{- end -}}

{{/* Name of the ConfigMap listing the modules to prefetch. */}}
{{- define "csi-wasm.prefetchConfigMapName" -}}
{{- printf "%s-prefetch" (include "csi-wasm.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* Where the registry CA bundle is mounted, and the file passed to --registry-ca. */}}
{{- define "csi-wasm.registryCADir" -}}/etc/csi-wasm/ca{{- end -}}

{{/* Where nodeDockerConfig is mounted, and the file passed to --docker-config. */}}
{{- define "csi-wasm.dockerConfigDir" -}}/etc/csi-wasm/docker{{- end -}}

{{/* Signature verification: the ConfigMap with keys and policy, and where it is mounted. */}}
{{- define "csi-wasm.verifyConfigMapName" -}}
{{- printf "%s-verify" (include "csi-wasm.fullname" . | trunc 56 | trimSuffix "-") -}}
{{- end -}}
{{- define "csi-wasm.verifyDir" -}}/etc/csi-wasm/verify{{- end -}}
{{- define "csi-wasm.verifyEnabled" -}}
{{- if or .Values.verify.keys .Values.verify.rules -}}true{{- end -}}
{{- end -}}
{{/* The ConfigMap's data; its checksum on the pods restarts drivers when keys or rules change. */}}
{{- define "csi-wasm.verifyData" -}}
{{- range $name, $pem := .Values.verify.keys }}
{{ printf "key-%s.pub" $name }}: {{ $pem | quote }}
{{- end }}
policy.yaml: {{ dict "rules" .Values.verify.rules | toYaml | quote }}
{{- end -}}

{{/* Fails rendering on value combinations the schema cannot express. */}}
{{- define "csi-wasm.validate" -}}
{{- if and .Values.registryCA.configMap .Values.registryCA.secret -}}
{{- fail "registryCA: set either configMap or secret, not both" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: the ServiceMonitor scrapes the metrics Service" -}}
{{- end -}}
{{- $kubelet := printf "%s/" (trimSuffix "/" .Values.kubeletRootDir) -}}
{{- $cache := printf "%s/" (trimSuffix "/" .Values.cacheDir) -}}
{{- if or (eq $cache $kubelet) (hasPrefix (printf "%spods/" $kubelet) $cache) -}}
{{- fail "cacheDir must be neither kubeletRootDir nor under its pods/ directory" -}}
{{- end -}}
{{- range $i, $rule := .Values.verify.rules -}}
{{- range $rule.keys -}}
{{- if not (hasKey $.Values.verify.keys .) -}}
{{- fail (printf "verify.rules[%d] names key %q, which verify.keys does not define" $i .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
