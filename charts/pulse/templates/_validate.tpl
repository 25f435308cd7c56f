{{/*
Reject value combinations that cannot work. Included once, from services.yaml.
*/}}
{{- define "pulse.validate" -}}
{{- $v := .Values }}
{{- $seen := dict }}
{{- range $name := include "pulse.functions" . | fromJsonArray }}
{{- $fn := include "pulse.functionConfig" (list $ $name) | fromYaml }}
{{- $a := $fn.autoscaling }}
{{- $min := int $a.minScale }}
{{- $max := int $a.maxScale }}
{{- if and (gt $max 0) (lt $max $min) }}
{{- fail (printf "functions.%s.autoscaling: maxScale (%d) is below minScale (%d)" $name $max $min) }}
{{- end }}
{{- if and $a.scaleToZero (gt $min 0) }}
{{- fail (printf "functions.%s.autoscaling: scaleToZero is true but minScale is %d; set minScale: 0 or scaleToZero: false" $name $min) }}
{{- end }}
{{- if and (not $a.scaleToZero) (eq $min 0) }}
{{- fail (printf "functions.%s.autoscaling: scaleToZero is false but minScale is 0; set minScale to 1 or more" $name) }}
{{- end }}
{{- if eq $a.class "hpa.autoscaling.knative.dev" }}
{{- if $a.scaleToZero }}
{{- fail (printf "functions.%s.autoscaling: the HPA class cannot scale to zero; use kpa.autoscaling.knative.dev or scaleToZero: false" $name) }}
{{- end }}
{{- if not (has $a.metric (list "cpu" "memory")) }}
{{- fail (printf "functions.%s.autoscaling: the HPA class scales on cpu or memory, not %s" $name $a.metric) }}
{{- end }}
{{- else if not (has $a.metric (list "concurrency" "rps")) }}
{{- fail (printf "functions.%s.autoscaling: the KPA class scales on concurrency or rps, not %s" $name $a.metric) }}
{{- end }}
{{- $cc := int $fn.containerConcurrency }}
{{- if and (gt $cc 0) (eq $a.metric "concurrency") (gt (float64 $a.target) (float64 $cc)) }}
{{- fail (printf "functions.%s: autoscaling.target (%v) exceeds containerConcurrency (%d); a pod can never reach its target" $name $a.target $cc) }}
{{- end }}
{{- range $p := $fn.routes | default list }}
{{- $trimmed := trimSuffix "/" $p }}
{{- /* the host function is the public host itself: its /healthz and /readyz are the
       public answers, and "/" catches what no function serves (it has no /_ce/* and no /metrics) */}}
{{- if and (ne $name "host") (or (eq $trimmed "") (eq $trimmed "/_ce") (hasPrefix "/_ce/" $p) (has $trimmed (list "/metrics" "/healthz" "/readyz"))) }}
{{- fail (printf "functions.%s: route %s would publish internal paths (/_ce/*, /metrics and the probes stay cluster-local)" $name $p) }}
{{- end }}
{{- if hasKey $seen $p }}
{{- fail (printf "route %s is given to both %s and %s" $p (index $seen $p) $name) }}
{{- end }}
{{- $_ := set $seen $p $name }}
{{- end }}
{{- end }}
{{- if $v.database.create }}
{{- if not (and $v.database.postgresUrl $v.database.clickhouseUrl) }}
{{- fail "database.create is true: set database.postgresUrl and database.clickhouseUrl (or use database.existingSecret)" }}
{{- end }}
{{- else if not $v.database.existingSecret }}
{{- fail "set database.existingSecret (a Secret with the database URLs) or database.create with the URLs" }}
{{- end }}
{{- if $v.jwt.create }}
{{- if not (hasKey $v.jwt.keys $v.jwt.signingKey) }}
{{- fail (printf "jwt.create is true: jwt.keys must contain the signing key %s" $v.jwt.signingKey) }}
{{- end }}
{{- else if not $v.jwt.existingSecret }}
{{- fail "set jwt.existingSecret (a Secret with the signing key) or jwt.create with jwt.keys" }}
{{- end }}
{{- $parts := int $v.kafka.topics.raw.partitions }}
{{- $src := $v.eventing.source }}
{{- if and $src.enabled (gt (int $src.consumers) $parts) }}
{{- fail (printf "eventing.source.consumers (%d) exceeds the %d partitions of %s; extra consumers would sit idle" (int $src.consumers) $parts $v.kafka.topics.raw.name) }}
{{- end }}
{{- if and $src.enabled $src.keda.enabled }}
{{- if gt (int $src.keda.minScale) (int $src.keda.maxScale) }}
{{- fail "eventing.source.keda: minScale exceeds maxScale" }}
{{- end }}
{{- if gt (int $src.keda.maxScale) $parts }}
{{- fail (printf "eventing.source.keda.maxScale (%d) exceeds the %d partitions of %s" (int $src.keda.maxScale) $parts $v.kafka.topics.raw.name) }}
{{- end }}
{{- end }}
{{- if not $v.exports.persistence.enabled }}
{{- $ex := (include "pulse.functionConfig" (list $ "export") | fromYaml).autoscaling }}
{{- if or $ex.scaleToZero (ne (int $ex.maxScale) 1) }}
{{- fail "exports.persistence.enabled is false: export files live in the pod's emptyDir, so export needs maxScale: 1, minScale: 1 and scaleToZero: false" }}
{{- end }}
{{- end }}
{{- if and $v.routing.enabled (not $v.routing.host) }}
{{- fail "routing.enabled is true: set routing.host" }}
{{- end }}
{{- range $tname, $t := $v.eventing.triggers }}
{{- if not $t.filter }}
{{- fail (printf "eventing.triggers.%s: an empty filter would send every event on the Broker to %s" $tname $t.subscriber.function) }}
{{- end }}
{{- end }}
{{- end }}
