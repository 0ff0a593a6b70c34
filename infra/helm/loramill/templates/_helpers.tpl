{{/* Names: <release>-loramill, or the release name when it already says loramill. */}}
{{- define "loramill.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "loramill.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "api") */}}
{{- define "loramill.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "loramill.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "loramill.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference: include with (list $ "api") */}}
{{- define "loramill.image" -}}
{{- $root := index . 0 -}}
{{- $image := index $root.Values.image (index . 1) -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "loramill.secret" -}}
{{- required "existingSecret: name the Secret holding database-url, admin-database-url, redis-url, s3-access-key and s3-secret-key (docs/deploy.md)" .Values.existingSecret -}}
{{- end -}}

{{/* Environment of every loramill process; with (list $ true) the admin database URL too
     (the API, the scheduler and migrations; training workers act as one tenant only). */}}
{{- define "loramill.env" -}}
{{- $root := index . 0 -}}
{{- $secret := include "loramill.secret" $root -}}
- name: LORAMILL_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: database-url}}
{{- if index . 1 }}
- name: LORAMILL_ADMIN_DATABASE_URL
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: admin-database-url}}
{{- end }}
- name: LORAMILL_REDIS_URL
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: redis-url}}
- name: LORAMILL_S3_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: s3-access-key}}
- name: LORAMILL_S3_SECRET_KEY
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: s3-secret-key}}
- name: LORAMILL_WANDB_API_KEY
  valueFrom: {secretKeyRef: {name: {{ $secret }}, key: wandb-api-key, optional: true}}
- name: LORAMILL_HOME
  value: /var/lib/loramill
{{- range $name, $value := $root.Values.config }}
{{- if $value }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
- name: LORAMILL_GPU_CLASSES
  value: {{ keys $root.Values.workers | sortAlpha | toJson | quote }}
{{- if $root.Values.serving.enabled }}
- name: LORAMILL_SERVING_CACHE_DIR
  value: {{ $root.Values.serving.cachePath | quote }}
- name: LORAMILL_SERVING_ENGINES
  value: {{ include "loramill.engines" $root | quote }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* {"model id": "http://<engine service>:8000", ...} for the API's gateway */}}
{{- define "loramill.engines" -}}
{{- $root := . -}}
{{- $engines := dict -}}
{{- range $i, $engine := .Values.serving.engines -}}
{{- $_ := set $engines $engine.model (printf "http://%s-engine-%d:8000" (include "loramill.fullname" $root) $i) -}}
{{- end -}}
{{- toJson $engines -}}
{{- end -}}

{{/* Writable places under a read-only root: the home (job work directories, the
     multi-process metrics) and /tmp. */}}
{{- define "loramill.scratchMounts" -}}
- {name: home, mountPath: /var/lib/loramill}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{- define "loramill.podDefaults" -}}
serviceAccountName: {{ include "loramill.serviceAccountName" . }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "loramill.adapterCacheClaim" -}}
{{- default (printf "%s-adapter-cache" (include "loramill.fullname" .)) .Values.serving.adapterCache.existingClaim -}}
{{- end -}}
