{{/*
The label on every object the chart renders (the kustomize base's common label, which it puts
on metadata.labels only: selectors and pod templates do not carry it).
*/}}
{{- define "trellis.labels" -}}
app.kubernetes.io/part-of: trellis
{{- end }}

{{/*
The image every component runs: image.repository, and image.tag or else the appVersion.
*/}}
{{- define "trellis.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (.Values.image.tag | default .Chart.AppVersion)) -}}
{{- end }}

{{/*
The pod security context every component but the agent runs with.
*/}}
{{- define "trellis.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile: {type: RuntimeDefault}
{{- end }}

{{/*
The container security context of every component but the agent.
*/}}
{{- define "trellis.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}
