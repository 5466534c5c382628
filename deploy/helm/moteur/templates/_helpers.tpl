{{- define "moteur.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "moteur.labels" -}}
{{ include "moteur.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The labels that select the release's own pods (not its dependencies' pods, which have their own name). */}}
{{- define "moteur.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The labels that select one component's pods: (dict "root" $ "component" "router"). Deployment selectors
are immutable: these stay what the first release of the chart used. */}}
{{- define "moteur.componentLabels" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image of a component: its own full reference, or <repository>/moteur-<component>:<tag>. */}}
{{- define "moteur.image" -}}
{{- $root := .root -}}
{{- .image | default (printf "%s/moteur-%s:%s" $root.Values.image.repository .component ($root.Values.image.tag | default $root.Chart.AppVersion)) -}}
{{- end -}}

{{/* True ("true") when a service's replicas belong to its HorizontalPodAutoscaler. */}}
{{- define "moteur.autoscaled" -}}
{{- if and .autoscaling .autoscaling.enabled }}true{{ end -}}
{{- end -}}

{{/* The gateway replicas sharing the models' capacity: its replicas, or maxReplicas under the HPA (see values). */}}
{{- define "moteur.gatewayReplicas" -}}
{{- $gateway := .Values.services.gateway -}}
{{- if include "moteur.autoscaled" $gateway }}{{ $gateway.autoscaling.maxReplicas }}{{ else }}{{ $gateway.replicas }}{{ end -}}
{{- end -}}

{{/* The fullname a dependency gives its objects in this release (bitnami and milvus follow helm create). */}}
{{- define "moteur.dependencyFullname" -}}
{{- if contains .chart .root.Release.Name }}{{ .root.Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}{{ printf "%s-%s" .root.Release.Name .chart | trunc 63 | trimSuffix "-" }}{{ end -}}
{{- end -}}

{{/* MongoDB's connection string: the in-release replica set (mongodb.enabled) or mongodb.uri. */}}
{{- define "moteur.mongodbURI" -}}
{{- $mongo := .Values.mongodb -}}
{{- if $mongo.enabled -}}
{{- $name := include "moteur.dependencyFullname" (dict "root" . "chart" "mongodb") -}}
{{- $hosts := list -}}
{{- range $i := until (int $mongo.replicaCount) -}}
{{- $hosts = append $hosts (printf "%s-%d.%s-headless:27017" $name $i $name) -}}
{{- end -}}
{{- $credentials := "" -}}
{{- if $mongo.auth.enabled -}}
{{- $password := required "mongodb.auth.passwords[0] is required with mongodb.enabled and auth" (first ($mongo.auth.passwords | default list)) -}}
{{- $credentials = printf "%s:%s@" (first $mongo.auth.usernames) (urlquery $password) -}}
{{- end -}}
mongodb://{{ $credentials }}{{ join "," $hosts }}/{{ $mongo.database }}?replicaSet={{ $mongo.replicaSetName }}
{{- else -}}
{{ $mongo.uri }}
{{- end -}}
{{- end -}}

{{/* Redis's URL: the in-release master (redis.enabled) or redis.url. */}}
{{- define "moteur.redisURL" -}}
{{- $redis := .Values.redis -}}
{{- if $redis.enabled -}}
{{- $name := include "moteur.dependencyFullname" (dict "root" . "chart" "redis") -}}
{{- $credentials := "" -}}
{{- if $redis.auth.enabled -}}
{{- $credentials = printf ":%s@" (urlquery (required "redis.auth.password is required with redis.enabled and auth" $redis.auth.password)) -}}
{{- end -}}
redis://{{ $credentials }}{{ $name }}-master:6379/0
{{- else -}}
{{ $redis.url }}
{{- end -}}
{{- end -}}

{{/* Milvus's URI: the in-release proxy (milvus.enabled) or milvus.uri. */}}
{{- define "moteur.milvusURI" -}}
{{- if .Values.milvus.enabled -}}
http://{{ include "moteur.dependencyFullname" (dict "root" . "chart" "milvus") }}:19530
{{- else -}}
{{ .Values.milvus.uri }}
{{- end -}}
{{- end -}}

{{/* The mesh services that call a component's gRPC port (the NetworkPolicies let only them in). */}}
{{- define "moteur.callers" -}}
{{- $callers := dict
      "router" (list "gateway" "memory" "files")
      "memory" (list "gateway" "router" "tools")
      "files" (list "gateway" "tools")
      "tools" (list "gateway")
      "model-server" (list "router") -}}
{{- get $callers . | toJson -}}
{{- end -}}

{{/* The ConfigMap a service mounts at /etc/moteur (its configuration file), if any. */}}
{{- define "moteur.configFileMap" -}}
{{- get (dict "router" "models" "gateway" "tiers" "tools" "tool-policy") . -}}
{{- end -}}

{{/* The data of the configuration-file ConfigMaps, shared by the ConfigMaps and the checksums. */}}
{{- define "moteur.configFile.models" -}}
models.yaml: |
  {{- toYaml .Values.router.models | replace "{{ modelServer }}" (include "moteur.modelServerURL" .) | nindent 2 }}
{{- end -}}
{{- define "moteur.configFile.tiers" -}}
tiers.yaml: |
  {{- toYaml (dict "tiers" .Values.gateway.tiers) | nindent 2 }}
{{- end -}}
{{- define "moteur.configFile.tool-policy" -}}
tools.yaml: |
  {{- toYaml .Values.tools.policy | nindent 2 }}
{{- end -}}

{{/* The pod's security context: the image's non-root user, the runtime's default seccomp profile. */}}
{{- define "moteur.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* The container's security context: no privileges, no capabilities, read-only root (values). */}}
{{- define "moteur.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: {{ .Values.securityContext.readOnlyRootFilesystem }}
capabilities: {drop: [ALL]}
{{- end -}}

{{/* The writable /tmp every pod has (the root filesystem is read-only). */}}
{{- define "moteur.tmpVolume" -}}
- name: tmp
  emptyDir: {sizeLimit: {{ .Values.securityContext.tmpSizeLimit }}}
{{- end -}}

{{/* Probes on a gRPC port's standard health service: started, alive, ready. */}}
{{- define "moteur.grpcProbes" -}}
startupProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 5
  failureThreshold: {{ max 1 (div .startupSeconds 5) }}
readinessProbe:
  {{- if .httpReadiness }}
  # The gateway's HTTP API answers /healthz from the same process as gRPC and turns 503 when it drains, as gRPC's
  # health does: a pod whose HTTP door is down leaves both Services' endpoints.
  httpGet: {path: /healthz, port: http}
  {{- else }}
  grpc: {port: {{ .port }}}
  {{- end }}
  periodSeconds: 5
livenessProbe:
  grpc: {port: {{ .port }}}
  periodSeconds: 10
  failureThreshold: 6
{{- end -}}

{{/* The address of a mesh service inside the cluster: <fullname>-<service>:50051 */}}
{{/* A mesh target: the headless Service's name, which DNS resolves to every ready pod (round_robin). */}}
{{- define "moteur.address" -}}
dns:///{{ include "moteur.fullname" .root }}-{{ .service }}-headless:50051
{{- end -}}

{{- define "moteur.modelServerURL" -}}
http://{{ include "moteur.fullname" . }}-model-server:8080/v1
{{- end -}}

{{/* The environment of one service (a ConfigMap): what `moteur.runtime.settings` and its own `moteur.<service>.settings` read. */}}
{{- define "moteur.serviceEnv" -}}
{{- $root := .root -}}
MOTEUR_GRPC_PORT: "50051"
MOTEUR_METRICS_PORT: "9090"
MOTEUR_LOG_LEVEL: {{ $root.Values.logLevel | quote }}
MOTEUR_LOG_FORMAT: json
MOTEUR_OTLP_ENDPOINT: {{ $root.Values.otlpEndpoint | quote }}
MOTEUR_DRAIN_SECONDS: {{ include "moteur.drainSeconds" (dict "root" $root "service" .service) | quote }}
MOTEUR_ROUTER_ADDR: {{ include "moteur.address" (dict "root" $root "service" "router") }}
MOTEUR_MEMORY_ADDR: {{ include "moteur.address" (dict "root" $root "service" "memory") }}
MOTEUR_FILES_ADDR: {{ include "moteur.address" (dict "root" $root "service" "files") }}
MOTEUR_TOOLS_ADDR: {{ include "moteur.address" (dict "root" $root "service" "tools") }}
MOTEUR_MONGO_DB: {{ $root.Values.mongodb.database | quote }}
{{- if $root.Values.tls.enabled }}
# TLS between services (moteur.runtime.tls); the health service alone stays plaintext on 50060 for probes.
MOTEUR_TLS_CERT_FILE: /var/run/moteur/tls/tls.crt
MOTEUR_TLS_KEY_FILE: /var/run/moteur/tls/tls.key
MOTEUR_TLS_CA_FILE: /var/run/moteur/tls/ca.crt
MOTEUR_HEALTH_PORT: "50060"
{{- if eq .service "gateway" }}
# The public API: its callers authenticate with API keys, not mesh certificates.
MOTEUR_TLS_REQUIRE_CLIENT_CERT: "false"
{{- end }}
{{- end }}
{{- if eq .service "router" }}
MOTEUR_MODELS_FILE: /etc/moteur/models.yaml
{{- end }}
{{- if eq .service "gateway" }}
MOTEUR_TIERS_FILE: /etc/moteur/tiers.yaml
# Each replica dispatches its share of the models' capacity.
MOTEUR_QUEUE_REPLICAS: {{ include "moteur.gatewayReplicas" $root | quote }}
{{- end }}
{{- if eq .service "memory" }}
MOTEUR_MILVUS_URI: {{ include "moteur.milvusURI" $root | quote }}
MOTEUR_MILVUS_INDEX_TYPE: {{ $root.Values.milvus.indexType | quote }}
MOTEUR_MILVUS_INDEX_PARAMS: {{ $root.Values.milvus.indexParams | toJson | quote }}
MOTEUR_MILVUS_SEARCH_PARAMS: {{ $root.Values.milvus.searchParams | toJson | quote }}
{{- $embedding := $root.Values.memory.embedding }}
# The embedding model (memory.embedding in values.yaml).
MOTEUR_EMBEDDING_PROVIDER: {{ $embedding.provider | quote }}
MOTEUR_EMBEDDING_THREADS: {{ $embedding.threads | quote }}
MOTEUR_REEMBED_BATCH: {{ $embedding.reembedBatch | quote }}
{{- if eq $embedding.provider "openai" }}
MOTEUR_EMBEDDING_MODEL: {{ required "memory.embedding.openai.model is required with provider openai" $embedding.openai.model | quote }}
MOTEUR_EMBEDDING_BASE_URL: {{ $embedding.openai.baseUrl | quote }}
MOTEUR_EMBEDDING_API_KEY_ENV: {{ $embedding.openai.apiKeyEnv | quote }}
MOTEUR_EMBEDDING_DIMENSIONS: {{ $embedding.openai.dimensions | quote }}
{{- end }}
{{- end }}
{{- if eq .service "files" }}
MOTEUR_FILES_STORAGE: {{ $root.Values.files.storage | quote }}
MOTEUR_FILES_DIR: /var/lib/moteur/files
MOTEUR_FILES_RETENTION_DAYS: {{ $root.Values.files.retentionDays | quote }}
MOTEUR_FILES_MAX_BYTES: {{ $root.Values.files.maxBytes | int64 | quote }}
MOTEUR_FILES_RENDER_CONCURRENCY: {{ $root.Values.files.workers.count | quote }}
MOTEUR_FILES_WORKER_MEMORY_BYTES: {{ $root.Values.files.workers.memoryBytes | int64 | quote }}
MOTEUR_FILES_WORKER_CPU_SECONDS: {{ $root.Values.files.workers.cpuSeconds | quote }}
MOTEUR_FILES_TEMPLATE_CPU_SECONDS: {{ $root.Values.files.workers.templateCpuSeconds | quote }}
MOTEUR_FILES_QUEUE_PER_TENANT: {{ $root.Values.files.workers.queuePerTenant | quote }}
{{- if eq $root.Values.files.storage "s3" }}
MOTEUR_FILES_S3_ENDPOINT: {{ $root.Values.files.s3.endpoint | quote }}
MOTEUR_FILES_S3_BUCKET: {{ required "files.s3.bucket is required with files.storage=s3" $root.Values.files.s3.bucket | quote }}
MOTEUR_FILES_S3_REGION: {{ $root.Values.files.s3.region | quote }}
MOTEUR_FILES_S3_PREFIX: {{ $root.Values.files.s3.prefix | quote }}
{{- end }}
{{- end }}
{{- if eq .service "tools" }}
MOTEUR_TOOLS_FILE: /etc/moteur/tools.yaml
MOTEUR_MAX_TOOL_CALLS_PER_TENANT: {{ $root.Values.tools.maxCallsPerTenant | quote }}
{{- end }}
{{- end -}}

{{/* The Secret with the files service's S3 keys, when it has one. */}}
{{- define "moteur.filesS3Secret" -}}
{{- if eq .Values.files.storage "s3" -}}
{{- if .Values.files.s3.existingSecret -}}{{ .Values.files.s3.existingSecret }}
{{- else if .Values.files.s3.accessKeyId -}}{{ include "moteur.fullname" . }}-files-s3
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding mongodb-uri and redis-url. */}}
{{- define "moteur.storesSecret" -}}
{{- .Values.storesExistingSecret | default (printf "%s-stores" (include "moteur.fullname" .)) -}}
{{- end -}}

{{- define "moteur.meshSigningSecret" -}}
{{- .Values.meshIdentity.signingSecret | default (printf "%s-mesh-signing" (include "moteur.fullname" .)) -}}
{{- end -}}

{{- define "moteur.meshPublicSecret" -}}
{{- .Values.meshIdentity.publicSecret | default (printf "%s-mesh-public" (include "moteur.fullname" .)) -}}
{{- end -}}

{{- define "moteur.configFile.none" -}}{{- end -}}


{{/* How long a service's calls in flight may finish after SIGTERM: its own drainSeconds, or the release's. */}}
{{- define "moteur.drainSeconds" -}}
{{- $spec := get .root.Values.services .service | default dict -}}
{{- if hasKey $spec "drainSeconds" }}{{ int $spec.drainSeconds }}{{ else }}{{ int .root.Values.drainSeconds }}{{ end -}}
{{- end -}}

{{/* The pod's terminationGracePeriodSeconds: the service's own, or preStop + drain + margin; never less than
preStop + drain, or the kubelet would kill calls the drain lets finish. */}}
{{- define "moteur.terminationGracePeriodSeconds" -}}
{{- $spec := get .root.Values.services .service | default dict -}}
{{- $needed := add (int .root.Values.preStopSeconds) (include "moteur.drainSeconds" .) -}}
{{- if hasKey $spec "terminationGracePeriodSeconds" -}}
{{- if lt (int $spec.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "services.%s.terminationGracePeriodSeconds (%d) must cover preStopSeconds + drainSeconds (%d)" .service (int $spec.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- int $spec.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $needed (int .root.Values.terminationMarginSeconds) -}}
{{- end -}}
{{- end -}}

{{/* The container's preStop pause (preStopSeconds): the kubelet's own `sleep` action where the cluster has it
(Kubernetes 1.30+, nothing needed in the image), else the image's sleep command. */}}
{{- define "moteur.lifecycle" -}}
{{- $seconds := int .Values.preStopSeconds -}}
{{- if gt $seconds 0 }}
lifecycle:
  preStop:
    {{- if semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version }}
    sleep: {seconds: {{ $seconds }}}
    {{- else }}
    exec: {command: [sleep, {{ $seconds | quote }}]}
    {{- end }}
{{- end -}}
{{- end -}}

{{/* A pod's scheduling (dict "root" $ "spec" <the service's values> "component" <name>): each of nodeSelector,
tolerations, affinity, topologySpreadConstraints, priorityClassName and imagePullSecrets from the service's values
when it sets the key (even empty), else the release's. A spread constraint without labelSelector gets the
component's pod labels. */}}
{{- define "moteur.podScheduling" -}}
{{- $root := .root -}}
{{- $spec := .spec | default dict -}}
{{- $pick := dict -}}
{{- range $key := list "nodeSelector" "tolerations" "affinity" "topologySpreadConstraints" "priorityClassName" "imagePullSecrets" -}}
{{- $_ := set $pick $key (ternary (get $spec $key) (get $root.Values $key) (hasKey $spec $key)) -}}
{{- end -}}
{{- with $pick.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $pick.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - {{ if kindIs "string" . }}{{ dict "name" . | toJson }}{{ else }}{{ toJson . }}{{ end }}
  {{- end }}
{{- end }}
{{- with $pick.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pick.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pick.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pick.topologySpreadConstraints }}
{{- $selector := dict "matchLabels" (include "moteur.componentLabels" (dict "root" $root "component" $.component) | fromYaml) }}
topologySpreadConstraints:
  {{- range . }}
  - {{- toYaml (ternary . (merge (dict "labelSelector" $selector) .) (hasKey . "labelSelector")) | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* The mesh identity's signing keys ({issuer: PEM}): the Secret's (kept across upgrades, lookup) or generated,
once per render, so that the Secret and the pods' checksum see the same keys. */}}
{{- define "moteur.meshSigningKeys" -}}
{{- if not (hasKey .Values "_meshSigningKeys") -}}
{{- $name := printf "%s-mesh-signing" (include "moteur.fullname" .) -}}
{{- $existing := (lookup "v1" "Secret" .Release.Namespace $name) | default dict -}}
{{- $data := $existing.data | default dict -}}
{{- $keys := dict -}}
{{- range $issuer := list "gateway" "router" -}}
{{- $file := printf "%s.key" $issuer -}}
{{- if hasKey $data $file -}}
{{- $_ := set $keys $issuer (index $data $file | b64dec) -}}
{{- else -}}
{{- $_ := set $keys $issuer (genPrivateKey "ed25519") -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "_meshSigningKeys" $keys -}}
{{- end -}}
{{- toJson (get .Values "_meshSigningKeys") -}}
{{- end -}}

{{/* The Secret holding the gateway's alert webhook URL (key alert-webhook-url), if any. */}}
{{- define "moteur.alertWebhookSecret" -}}
{{- if .Values.gateway.alertWebhookExistingSecret }}{{ .Values.gateway.alertWebhookExistingSecret }}
{{- else if .Values.gateway.alertWebhookUrl }}{{ include "moteur.fullname" . }}-gateway-alerts
{{- end -}}
{{- end -}}

{{/* What a service reads from the chart's Secrets (dict "root" $ "service" name), for its pods' checksum: the
content of those the chart renders, the name of those you manage (a new name rolls the pods; a change inside a
Secret you manage does not: roll them, or use a reloader). */}}
{{- define "moteur.secretsChecksum" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $inputs := dict -}}
{{- if $values.storesExistingSecret }}
{{- $_ := set $inputs "stores" $values.storesExistingSecret }}
{{- else }}
{{- $_ := set $inputs "stores" (list (include "moteur.mongodbURI" $root) (include "moteur.redisURL" $root)) }}
{{- end }}
{{- $embedsThroughProvider := and (eq .service "memory") (eq $values.memory.embedding.provider "openai") $values.memory.embedding.openai.apiKeyEnv }}
{{- if or (eq .service "router") $embedsThroughProvider }}
{{- $_ := set $inputs "providerKeys" ($values.providerKeysSecret | default $values.providerKeys) }}
{{- end }}
{{- if eq .service "files" }}
{{- $_ := set $inputs "filesS3" (ternary $values.files.s3.existingSecret (list $values.files.s3.accessKeyId $values.files.s3.secretAccessKey) (not (empty $values.files.s3.existingSecret))) }}
{{- end }}
{{- if eq .service "gateway" }}
{{- $_ := set $inputs "alertWebhook" ($values.gateway.alertWebhookExistingSecret | default $values.gateway.alertWebhookUrl) }}
{{- end }}
{{- if $values.meshIdentity.signingSecret }}
{{- $_ := set $inputs "mesh" (list $values.meshIdentity.signingSecret $values.meshIdentity.publicSecret) }}
{{- else }}
{{- /* the public keys derive from the signing keys: those are what changes */}}
{{- $_ := set $inputs "mesh" (include "moteur.meshSigningKeys" $root) }}
{{- end }}
{{- if $values.tls.enabled }}
{{- $_ := set $inputs "tls" $values.tls.secretName }}
{{- end }}
{{- toJson $inputs | sha256sum -}}
{{- end -}}

{{/* Egress rules (dict "rules" <NetworkPolicyEgressRules> "blocked" <CIDRs>) with every catch-all ipBlock
(0.0.0.0/0, ::/0) excepting the blocked CIDRs of its family: the instance metadata is never allowed. */}}
{{- define "moteur.egressRules" -}}
{{- $blocked := .blocked | default list -}}
{{- $rules := list -}}
{{- range $rule := .rules -}}
{{- $rule = deepCopy $rule -}}
{{- if $rule.to -}}
{{- $peers := list -}}
{{- range $peer := $rule.to -}}
{{- if and $peer.ipBlock (has $peer.ipBlock.cidr (list "0.0.0.0/0" "::/0")) -}}
{{- $v6 := contains ":" $peer.ipBlock.cidr -}}
{{- $except := $peer.ipBlock.except | default list -}}
{{- range $cidr := $blocked -}}
{{- if and (eq (contains ":" $cidr) $v6) (not (has $cidr $except)) }}{{ $except = append $except $cidr }}{{ end -}}
{{- end -}}
{{- $_ := set $peer.ipBlock "except" $except -}}
{{- end -}}
{{- $peers = append $peers $peer -}}
{{- end -}}
{{- $_ := set $rule "to" $peers -}}
{{- end -}}
{{- $rules = append $rules $rule -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}
