{{/*
Expand the name of the chart.
*/}}
{{- define "pulse.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name, truncated so that every derived
name (`<fullname>-<function>` and Knative's `<ksvc>-00001` revisions) fits.
*/}}
{{- define "pulse.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version as used by the chart label.
*/}}
{{- define "pulse.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "pulse.labels" -}}
helm.sh/chart: {{ include "pulse.chart" . }}
{{ include "pulse.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pulse
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "pulse.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pulse.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of an object that belongs to one function: (list $ "ingest").
*/}}
{{- define "pulse.componentLabels" -}}
{{ include "pulse.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Selector labels of one function's pods: (list $ "ingest").
*/}}
{{- define "pulse.componentSelectorLabels" -}}
{{ include "pulse.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
The five functions, in data-flow order.
*/}}
{{- define "pulse.functions" -}}
{{- list "ingest" "auth" "persist" "aggregate" "export" "host" | toJson }}
{{- end }}

{{/*
Knative Service name of a function: (list $ "ingest").
*/}}
{{- define "pulse.functionName" -}}
{{- printf "%s-%s" (include "pulse.fullname" (index . 0)) (index . 1) | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/*
Cluster-local base URL of a function: (list $ "auth").
*/}}
{{/*
The functions behind the public host, for its /readyz: name=cluster-local URL, comma-separated.
*/}}
{{- define "pulse.hostFunctions" -}}
{{- $root := . }}
{{- $out := list }}
{{- range $name := include "pulse.functions" $root | fromJsonArray }}
{{- if ne $name "host" }}
{{- $out = append $out (printf "%s=%s" $name (include "pulse.functionURL" (list $root $name))) }}
{{- end }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{- define "pulse.functionURL" -}}
{{- $root := index . 0 }}
{{- printf "http://%s.%s.svc.%s" (include "pulse.functionName" .) $root.Release.Namespace $root.Values.routing.clusterDomain }}
{{- end }}

{{/*
A function's settings: `defaults` with the function's own section laid over
it, two levels deep (explicit false/0 in the function section win).
Use: $fn := include "pulse.functionConfig" (list $ "ingest") | fromYaml
*/}}
{{- define "pulse.functionConfig" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $defaults := deepCopy $root.Values.defaults }}
{{- $own := index $root.Values.functions $name | default dict }}
{{- $out := dict }}
{{- range $k, $v := $defaults }}
{{- if hasKey $own $k }}
{{- $ov := index $own $k }}
{{- if and (kindIs "map" $v) (kindIs "map" $ov) }}
{{- $m := deepCopy $v }}
{{- range $k2, $v2 := $ov }}
{{- $_ := set $m $k2 $v2 }}
{{- end }}
{{- $_ := set $out $k $m }}
{{- else }}
{{- $_ := set $out $k $ov }}
{{- end }}
{{- else }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $own }}
{{- if not (hasKey $out $k) }}
{{- $_ := set $out $k $v }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
ServiceAccount name.
*/}}
{{- define "pulse.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pulse.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference.
*/}}
{{- define "pulse.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Secret names.
*/}}
{{- define "pulse.databaseSecretName" -}}
{{- if .Values.database.create }}
{{- printf "%s-database" (include "pulse.fullname" .) }}
{{- else }}
{{- .Values.database.existingSecret }}
{{- end }}
{{- end }}

{{- define "pulse.jwtSecretName" -}}
{{- if .Values.jwt.create }}
{{- printf "%s-jwt" (include "pulse.fullname" .) }}
{{- else }}
{{- .Values.jwt.existingSecret }}
{{- end }}
{{- end }}

{{/*
Eventing object names.
*/}}
{{- define "pulse.brokerName" -}}
{{- default (include "pulse.fullname" .) .Values.eventing.broker.name }}
{{- end }}

{{- define "pulse.deadLetterSinkName" -}}
{{- printf "%s-dead-letters" (include "pulse.fullname" .) }}
{{- end }}

{{/*
Internal events (docs/security.md): the OIDC audience a function's CloudEvents
are sent for, (list $ "persist"). A Knative Service announces none of its own,
so the chart sets it as the KafkaSource's sink.audience and the Triggers'
subscriber.audience, and tells the function (PULSE_CE_AUDIENCE).
*/}}
{{- define "pulse.functionAudience" -}}
{{- $root := index . 0 }}
{{- printf "serving.knative.dev/service/%s/%s" $root.Release.Namespace (include "pulse.functionName" (list $root (index . 1))) }}
{{- end }}

{{/*
Who may send a function internal events, comma-joined token subjects (empty:
nobody): the OIDC identities Knative gives the senders the chart points at it,
named <resource>-oidc-<API group>-<kind> (knative/eventing pkg/auth).
*/}}
{{- define "pulse.eventSenders" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $ns := $root.Release.Namespace }}
{{- $senders := list }}
{{- if and $root.Values.eventing.source.enabled (eq $name "persist") }}
{{- $senders = append $senders (printf "system:serviceaccount:%s:*-oidc-sources.knative.dev-kafkasource" $ns) }}
{{- end }}
{{- range $t := $root.Values.eventing.triggers }}
{{- if eq $t.subscriber.function $name }}
{{- $senders = append $senders (printf "system:serviceaccount:%s:*-oidc-eventing.knative.dev-trigger" $ns) }}
{{- end }}
{{- end }}
{{- join "," (uniq $senders) }}
{{- end }}

{{/*
A reference to the dead-letter KafkaSink, as a Destination.
*/}}
{{- define "pulse.deadLetterSink" -}}
deadLetterSink:
  ref:
    apiVersion: eventing.knative.dev/v1alpha1
    kind: KafkaSink
    name: {{ include "pulse.deadLetterSinkName" . }}
{{- end }}

{{/*
A delivery spec: (list $ $delivery).
*/}}
{{- define "pulse.delivery" -}}
{{- $root := index . 0 }}
{{- $d := index . 1 -}}
retry: {{ $d.retry }}
backoffPolicy: {{ $d.backoffPolicy }}
backoffDelay: {{ $d.backoffDelay | quote }}
{{- with $d.timeout }}
timeout: {{ . | quote }}
{{- end }}
{{ include "pulse.deadLetterSink" $root }}
{{- end }}

{{/*
A reference to the Broker, as a Destination.
*/}}
{{- define "pulse.brokerRef" -}}
ref:
  apiVersion: eventing.knative.dev/v1
  kind: Broker
  name: {{ include "pulse.brokerName" . }}
{{- end }}

{{/*
Environment shared by every function and the migrations Job:
(list $ "ingest"), or (list $ "migrate") for the Job.
*/}}
{{- define "pulse.env" -}}
{{- $root := index . 0 }}
{{- $name := index . 1 }}
{{- $v := $root.Values -}}
{{- if ne $name "migrate" }}
- name: FUNCTION_TARGET
  value: {{ $name | quote }}
{{- end }}
{{- if eq $name "host" }}
{{- /* the public host holds no credential: it reads the OpenAPI documents and asks each function's /readyz */}}
- name: PULSE_PUBLIC_URL
  value: {{ $v.routing.publicUrl | default (printf "http://%s" $v.routing.host) | quote }}
- name: PULSE_HOST_FUNCTIONS
  value: {{ include "pulse.hostFunctions" $root | quote }}
- name: PULSE_LOG_LEVEL
  value: {{ $v.config.logLevel | quote }}
{{- else }}
- name: PULSE_POSTGRES_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pulse.databaseSecretName" $root }}
      key: {{ $v.database.postgresUrlKey }}
- name: PULSE_CLICKHOUSE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "pulse.databaseSecretName" $root }}
      key: {{ $v.database.clickhouseUrlKey }}
{{- with $v.database.clickhouseCluster }}
- name: PULSE_CLICKHOUSE_CLUSTER
  value: {{ . | quote }}
{{- end }}
- name: PULSE_KAFKA_BOOTSTRAP
  value: {{ $v.kafka.bootstrapServers | quote }}
- name: PULSE_RAW_TOPIC
  value: {{ $v.kafka.topics.raw.name | quote }}
- name: PULSE_DLQ_TOPIC
  value: {{ $v.kafka.topics.dlq.name | quote }}
- name: PULSE_EVENTS_TTL_DAYS
  value: {{ $v.config.eventsTtlDays | quote }}
- name: PULSE_LEDGER_RETENTION_DAYS
  value: {{ $v.config.ledgerRetentionDays | quote }}
- name: PULSE_LOG_LEVEL
  value: {{ $v.config.logLevel | quote }}
- name: PULSE_TRUSTED_PROXIES
  value: {{ join "," $v.config.trustedProxies | quote }}
{{- if eq $name "auth" }}
- name: PULSE_JWT_PRIVATE_KEY_FILE
  value: {{ printf "/var/run/pulse/jwt/%s" $v.jwt.signingKey | quote }}
{{- else }}
- name: PULSE_JWKS_URL
  value: {{ printf "%s/.well-known/jwks.json" (include "pulse.functionURL" (list $root "auth")) | quote }}
{{- end }}
{{- if eq $name "export" }}
- name: PULSE_EXPORT_DIR
  value: {{ $v.exports.mountPath | quote }}
{{- end }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "pulse-%s" $name | quote }}
{{- if $v.otel.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.otel.protocol | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $v.otel.sampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $v.otel.samplerArg | quote }}
- name: OTEL_PROPAGATORS
  value: "tracecontext,baggage"
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ trimPrefix "," (printf "%s,service.namespace=%s,deployment.environment=%s" $v.otel.resourceAttributes $root.Release.Namespace $root.Release.Name) | quote }}
{{- else }}
- name: OTEL_SDK_DISABLED
  value: "true"
{{- end }}
{{- range $k, $val := $v.config.extraEnv }}
- name: {{ $k }}
  value: {{ $val | toString | quote }}
{{- end }}
{{- end }}
