{{- define "moteur.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "moteur.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The address of a mesh service inside the cluster: <fullname>-<service>:50051 */}}
{{- define "moteur.address" -}}
{{ include "moteur.fullname" .root }}-{{ .service }}:50051
{{- end -}}

{{- define "moteur.modelServerURL" -}}
http://{{ include "moteur.fullname" . }}-model-server:8080/v1
{{- end -}}

{{/* The environment of one service (a ConfigMap): what `moteur.runtime.settings` reads. */}}
{{- define "moteur.serviceEnv" -}}
{{- $root := .root -}}
MOTEUR_GRPC_PORT: "50051"
MOTEUR_METRICS_PORT: "9090"
MOTEUR_LOG_LEVEL: {{ $root.Values.logLevel | quote }}
MOTEUR_LOG_FORMAT: json
MOTEUR_OTLP_ENDPOINT: {{ $root.Values.otlpEndpoint | quote }}
MOTEUR_DRAIN_SECONDS: {{ $root.Values.drainSeconds | quote }}
MOTEUR_ROUTER_ADDR: {{ include "moteur.address" (dict "root" $root "service" "router") }}
MOTEUR_MEMORY_ADDR: {{ include "moteur.address" (dict "root" $root "service" "memory") }}
MOTEUR_FILES_ADDR: {{ include "moteur.address" (dict "root" $root "service" "files") }}
MOTEUR_TOOLS_ADDR: {{ include "moteur.address" (dict "root" $root "service" "tools") }}
MOTEUR_MONGO_DB: {{ $root.Values.mongodb.database | quote }}
MOTEUR_REDIS_URL: {{ $root.Values.redis.url | quote }}
{{- if eq .service "router" }}
MOTEUR_MODELS_FILE: /etc/moteur/models.yaml
{{- end }}
{{- if eq .service "gateway" }}
MOTEUR_TIERS_FILE: /etc/moteur/tiers.yaml
MOTEUR_ALERT_WEBHOOK_URL: {{ $root.Values.gateway.alertWebhookUrl | quote }}
{{- end }}
{{- if eq .service "memory" }}
MOTEUR_MILVUS_URI: {{ $root.Values.milvus.uri | quote }}
{{- end }}
{{- if eq .service "files" }}
MOTEUR_FILES_DIR: /var/lib/moteur/files
{{- end }}
{{- end -}}
