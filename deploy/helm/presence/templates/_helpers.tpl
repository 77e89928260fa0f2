{{/* Names and the cluster's address list. */}}

{{- define "presence.name" -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "presence.dataflow" -}}
{{- include "presence.name" . -}}
{{- end -}}

{{- define "presence.headless" -}}
{{- include "presence.name" . -}}-headless
{{- end -}}

{{- define "presence.secret" -}}
{{- default (printf "%s-secrets" (include "presence.name" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "presence.labels" -}}
app.kubernetes.io/name: presence
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* bytewax.run -a: "<sts>-0.<headless>:<port>;<sts>-1.<headless>:<port>;..." for .Values.replicas pods. */}}
{{- define "presence.addresses" -}}
{{- $sts := include "presence.dataflow" . -}}
{{- $svc := include "presence.headless" . -}}
{{- $port := int .Values.clusterPort -}}
{{- $out := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $out = append $out (printf "%s-%d.%s:%d" $sts $i $svc $port) -}}
{{- end -}}
{{- join ";" $out -}}
{{- end -}}
