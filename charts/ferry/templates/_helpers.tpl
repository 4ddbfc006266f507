{{- define "ferry.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferry.labels" -}}
app.kubernetes.io/name: ferry-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: ferry
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ferry.selector" -}}
app.kubernetes.io/name: ferry-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}


{{/* The chart's moverPod value as the operator's --mover-pod-defaults JSON: the chart's own
mover ServiceAccount is the default when it makes one and moverPod names none. */}}
{{- define "ferry.moverPod" -}}
{{- $pod := deepCopy (default dict .Values.moverPod) -}}
{{- if and .Values.moverServiceAccount.create (not $pod.serviceAccountName) -}}
{{- $_ := set $pod "serviceAccountName" .Values.moverServiceAccount.name -}}
{{- end -}}
{{- toJson $pod -}}
{{- end -}}

{{- define "ferry.moverServiceAccountNamespaces" -}}
{{- $ns := .Values.moverServiceAccount.namespaces | default .Values.watchNamespaces | default (list .Release.Namespace) -}}
{{- toJson $ns -}}
{{- end -}}
