{{/*
Chart name, truncated for label values.
*/}}
{{- define "dsr.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-dsr unless the release name already contains it.
*/}}
{{- define "dsr.fullname" -}}
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

{{- define "dsr.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dsr.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dsr.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dsr.labels" -}}
helm.sh/chart: {{ include "dsr.chart" . }}
{{ include "dsr.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dsr
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "dsr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dsr.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dsr.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
"true" when the ledger lives in an external database (production mode).
*/}}
{{- define "dsr.externalDatabase" -}}
{{- if or .Values.database.url .Values.database.existingSecret }}true{{- end }}
{{- end }}

{{/*
Name of the chart-managed Secret (database URL, audit key, tokens.toml, bootstrap token).
*/}}
{{- define "dsr.secretName" -}}
{{- include "dsr.fullname" . }}
{{- end }}

{{- define "dsr.tokensSecretName" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecret }}{{ else }}{{ include "dsr.secretName" . }}{{ end }}
{{- end }}

{{- define "dsr.tokensSecretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}tokens.toml{{ end }}
{{- end }}

{{/*
True when the chart must generate a bootstrap token.
*/}}
{{- define "dsr.generateBootstrapToken" -}}
{{- if and (not .Values.auth.existingSecret) (empty .Values.auth.tokens) .Values.auth.bootstrapToken.enabled }}true{{- end }}
{{- end }}

{{/*
Seconds the kubelet waits between the preStop hook start and SIGKILL.
*/}}
{{- define "dsr.terminationGracePeriodSeconds" -}}
{{- $min := add (int .Values.lifecycle.preStopSleepSeconds) (int .Values.server.shutdownGraceSeconds) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $min 10 }}
{{- else }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $min) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than lifecycle.preStopSleepSeconds + server.shutdownGraceSeconds (%d), or the kubelet kills pods before the workers drain; leave it null to derive it." (int .Values.terminationGracePeriodSeconds) (int $min)) }}
{{- end }}
{{- int .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/*
Checks that turn a bad combination of values into a clear error at render time.
Included from the Deployment so it runs for install, upgrade, lint and template alike.
*/}}
{{- define "dsr.validate" -}}
{{- if and (not .Values.auth.existingSecret) (empty .Values.auth.tokens) (not .Values.auth.bootstrapToken.enabled) }}
{{- fail "dsr: no API tokens configured. The server refuses to listen on a non-loopback address without tokens, so pods would crash-loop. Set auth.tokens (name, tokenSha256, scopes), auth.existingSecret (a Secret with tokens.toml), or auth.bootstrapToken.enabled=true." }}
{{- end }}
{{- if not (include "dsr.externalDatabase" .) }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled }}
{{- fail "dsr: no external database configured (database.url / database.existingSecret), so the ledger is an embedded SQLite file inside one pod: replicaCount must be 1 and autoscaling.enabled false. Configure a Postgres database to run several replicas." }}
{{- end }}
{{- end }}
{{- if and (or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled) (not (hasPrefix "s3://" .Values.exports.url)) }}
{{- fail "dsr: exports.url must be an s3:// location when more than one replica runs: an export's archive is written by one pod and may be downloaded from any other." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "dsr: autoscaling.maxReplicas must be >= autoscaling.minReplicas." }}
{{- end }}
{{- if regexMatch "(?m)^\\s*\\[\\s*(server|engine|export|metrics|database)\\s*\\]" .Values.config.extraToml }}
{{- fail "dsr: config.extraToml must not redefine [server], [engine], [export], [metrics] or [database]; use the server.*, engine.*, exports.*, metrics.* and database.* values." }}
{{- end }}
{{- if and (not .Values.defaultCatalog) (regexMatch "(?m)^\\s*\\[\\s*stores\\s*\\]" .Values.config.extraToml) }}
{{- fail "dsr: config.extraToml must not define [stores] when defaultCatalog is false (the chart writes [stores] default_catalog = false); use [stores.<name>] tables there." }}
{{- end }}
{{- if regexMatch "(?m)^\\s*hmac_key\\s*=" .Values.config.extraToml }}
{{- fail "dsr: config.extraToml must not contain hmac_key: the ConfigMap is not secret, use audit.key or audit.existingSecret." }}
{{- end }}
{{- if regexMatch "(?m)^\\s*\\[\\[?\\s*auth" .Values.config.extraToml }}
{{- fail "dsr: config.extraToml must not contain [auth] tables: tokens are secret, use auth.tokens or auth.existingSecret." }}
{{- end }}
{{- end }}

{{/*
Environment shared by the server and the migration Job.
*/}}
{{- define "dsr.commonEnv" -}}
- name: DSR_CONFIG
  value: /etc/dsr/dsr.toml
- name: DSR_DATA_DIR
  value: /var/lib/dsr
{{- if .Values.database.existingSecret }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.existingSecretKey }}
{{- end }}
{{- with .Values.recordings.url }}
- name: DSR_RECORDINGS_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.exports.url }}
- name: DSR_EXPORTS_URL
  value: {{ . | quote }}
{{- end }}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- with .Values.otel.endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ $.Values.otel.serviceName | quote }}
{{- end }}
{{- end }}

{{/*
dsr.toml: the non-secret configuration (keys are the server's, see docs/deploy.md).
Tokens are NOT here: they live in the Secret file /etc/dsr/secrets/tokens.toml (DSR_TOKENS_FILE).
*/}}
{{- define "dsr.configToml" -}}
# Rendered by the dsr Helm chart from values; edit the values, not this file.
[server]
listen = {{ printf "%s:%d" (include "dsr.listenHost" .) (int .Values.server.port) | quote }}
request_timeout_secs = {{ int .Values.server.requestTimeoutSecs }}
max_concurrent_requests = {{ int .Values.server.maxConcurrentRequests }}
max_message_bytes = {{ int .Values.server.maxMessageBytes }}
shutdown_grace_secs = {{ int .Values.server.shutdownGraceSeconds }}
max_watchers = {{ int .Values.server.maxWatchers }}
max_watchers_per_caller = {{ int .Values.server.maxWatchersPerCaller }}
max_downloads = {{ int .Values.server.maxDownloads }}
max_downloads_per_caller = {{ int .Values.server.maxDownloadsPerCaller }}
mesh_tls = {{ .Values.tls.mesh }}
{{- if .Values.tls.enabled }}

[tls]
cert_file = "/etc/dsr-tls/tls.crt"
key_file = "/etc/dsr-tls/tls.key"
{{- if .Values.tls.clientCa }}
client_ca_file = "/etc/dsr-tls/ca.crt"
{{- end }}
{{- end }}

[engine]
workers = {{ int .Values.engine.workers }}
lease_secs = {{ int .Values.engine.leaseSecs }}
max_attempts = {{ int .Values.engine.maxAttempts }}
backoff_base_ms = {{ int .Values.engine.backoffBaseMs }}
backoff_max_ms = {{ int .Values.engine.backoffMaxMs }}

[export]
expiry_days = {{ int .Values.exports.expiryDays }}

[metrics]
listen = {{ printf "%s:%d" (include "dsr.listenHost" .) (int .Values.metrics.port) | quote }}

[database]
schema = {{ .Values.database.schema | default "dsr" | quote }}
{{- if not .Values.defaultCatalog }}

[stores]
default_catalog = false
{{- end }}
{{- range .Values.catalog }}
{{- if hasKey . "database_url" }}
{{- fail (printf "dsr: catalog entry %v has database_url: a URL holds credentials and the ConfigMap is not secret; use database_url_env (with extraEnv from a Secret) or database_url_file" .name) }}
{{- end }}
{{- end }}
{{- with .Values.catalog }}
{{- /* YAML numbers arrive as floats: whole-number keys go back to integers for TOML. */}}
{{- $entries := list }}
{{- range . }}
{{- $e := deepCopy . }}
{{- range $k := list "retention_days" "stage" }}
{{- if hasKey $e $k }}{{ $_ := set $e $k (int (get $e $k)) }}{{ end }}
{{- end }}
{{- if hasKey $e "retain" }}
{{- $r := deepCopy $e.retain }}
{{- if hasKey $r "years" }}{{ $_ := set $r "years" (int $r.years) }}{{ end }}
{{- $_ := set $e "retain" $r }}
{{- end }}
{{- $entries = append $entries $e }}
{{- end }}

# catalog: stores described, not coded
{{ dict "catalog" $entries | toToml }}
{{- end }}
{{- with .Values.remoteStores }}
{{- $entries := list }}
{{- range . }}
{{- $e := merge (dict "kind" "grpc") (deepCopy .) }}
{{- range $k := list "timeout_ms" "connect_timeout_ms" "concurrency" "stage" "retention_days" }}
{{- if hasKey $e $k }}{{ $_ := set $e $k (int (get $e $k)) }}{{ end }}
{{- end }}
{{- $entries = append $entries $e }}
{{- end }}

# remote stores (dsr.adapter.v1): catalog entries of kind "grpc"
{{ dict "catalog" $entries | toToml }}
{{- end }}
{{- with .Values.recipients }}
{{- $entries := list }}
{{- range . }}
{{- $entries = append $entries (merge (dict "kind" "recipient") (deepCopy .)) }}
{{- end }}

# recipients (GDPR Art. 19): catalog entries of kind "recipient"
{{ dict "catalog" $entries | toToml }}
{{- end }}
{{- with .Values.config.extraToml }}

# config.extraToml
{{ . }}
{{- end }}
{{- end }}

{{/*
host part of a listen address: IPv6 literals get brackets.
*/}}
{{- define "dsr.listenHost" -}}
{{- if contains ":" .Values.server.host }}{{ printf "[%s]" (trimAll "[]" .Values.server.host) }}{{ else }}{{ .Values.server.host }}{{ end }}
{{- end }}

{{/*
tokens.toml rendered from auth.tokens (only the SHA-256 of each token).
*/}}
{{- define "dsr.tokensToml" -}}
# API tokens for dsr ([[auth.tokens]] tables, merged into the configuration by the server).
{{- range .Values.auth.tokens }}

[[auth.tokens]]
name = {{ .name | toJson }}
token_sha256 = {{ .tokenSha256 | lower | toJson }}
scopes = {{ .scopes | toJson }}
{{- with .tenant }}
tenant = {{ . | toJson }}
{{- end }}
{{- end }}
{{- end }}
