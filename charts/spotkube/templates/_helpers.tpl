{{/*
Labels of every object of component `.component` ("controller", "webhook", ...):
  include "spotkube.labels" (dict "root" $ "component" "controller")
*/}}
{{- define "spotkube.labels" -}}
app.kubernetes.io/name: spotkube-{{ .component }}
app.kubernetes.io/part-of: spotkube
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end }}

{{/* Labels of the chart-wide objects (namespace, PriorityClass, ServiceMonitor). */}}
{{- define "spotkube.commonLabels" -}}
app.kubernetes.io/part-of: spotkube
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The selector of a component's pods: immutable, so the name only. */}}
{{- define "spotkube.selectorLabels" -}}
app.kubernetes.io/name: spotkube-{{ .component }}
{{- end }}

{{/* <registry>/<repository>:<tag> of one of spotkube's programs. */}}
{{- define "spotkube.image" -}}
{{- $values := index .root.Values .component -}}
{{- $tag := $values.image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s/%s:%s" .root.Values.image.registry $values.image.repository $tag -}}
{{- end }}

{{/*
The upstream kube-scheduler image: scheduler.image.tag, else the cluster's version
(`v1.30.4-eks-a737599` → `v1.30.4`), so the second scheduler matches the control plane.
*/}}
{{- define "spotkube.schedulerImage" -}}
{{- $version := regexFind "^v?[0-9]+\\.[0-9]+\\.[0-9]+" .Capabilities.KubeVersion.Version -}}
{{- $tag := .Values.scheduler.image.tag | default (printf "v%s" (trimPrefix "v" $version)) -}}
{{- printf "%s:%s" .Values.scheduler.image.repository $tag -}}
{{- end }}

{{/*
`env` entries for a program's `config` map: key `rankingTop` → SPOTKUBE_RANKING_TOP.
Empty strings and lists are left out (the program's default applies); lists are
comma-separated; whole numbers are printed as integers (YAML numbers arrive as floats).
*/}}
{{- define "spotkube.configEnv" -}}
{{- range $key, $value := . }}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") (not (and (kindIs "slice" $value) (empty $value))) }}
- name: SPOTKUBE_{{ $key | snakecase | upper }}
  {{- if kindIs "slice" $value }}
  value: {{ join "," $value | quote }}
  {{- else if and (kindIs "float64" $value) (eq $value (floor $value)) }}
  value: {{ int64 $value | toString | quote }}
  {{- else }}
  value: {{ toString $value | quote }}
  {{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The `env` entry of `fargate.profiles`, which the webhook and the controller both read:
SPOTKUBE_FARGATE_PROFILES, the profiles space-separated (so a profile may hold no
whitespace); nothing when the list is empty.
*/}}
{{- define "spotkube.fargateProfilesEnv" -}}
{{- with .Values.fargate.profiles }}
{{- range . }}
{{- if or (not (kindIs "string" .)) (regexMatch "\\s" .) }}
{{- fail (printf "fargate.profiles: %q is not NAMESPACES:KEY=VALUE[,KEY=VALUE] without spaces" (toString .)) }}
{{- end }}
{{- end }}
- name: SPOTKUBE_FARGATE_PROFILES
  value: {{ join " " . | quote }}
{{- end }}
{{- end }}

{{/*
The pod's affinity: away from spot when `keepOffSpot`, and anti-affinity between
replicas by hostname (soft, hard or none).
*/}}
{{- define "spotkube.affinity" -}}
{{- $values := index .root.Values .component -}}
{{- if or $values.keepOffSpot (ne $values.antiAffinity "none") }}
affinity:
  {{- if $values.keepOffSpot }}
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - key: karpenter.sh/capacity-type
              operator: NotIn
              values: ["spot"]
            - key: eks.amazonaws.com/capacityType
              operator: NotIn
              values: ["SPOT"]
  {{- end }}
  {{- if eq $values.antiAffinity "soft" }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "spotkube.selectorLabels" . | nindent 14 }}
  {{- else if eq $values.antiAffinity "hard" }}
  podAntiAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "spotkube.selectorLabels" . | nindent 12 }}
  {{- else if ne $values.antiAffinity "none" }}
  {{- fail (printf "%s.antiAffinity must be soft, hard or none, not %q" .component $values.antiAffinity) }}
  {{- end }}
{{- end }}
{{- end }}

{{/* What every spotkube pod shares: priority, non-root, node placement, pull secrets. */}}
{{- define "spotkube.podCommon" -}}
{{- $values := index .root.Values .component -}}
{{- if .root.Values.priorityClass.name }}
priorityClassName: {{ .root.Values.priorityClass.name }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- include "spotkube.affinity" . }}
{{- end }}

{{/* The container security context of every spotkube container. */}}
{{- define "spotkube.containerSecurityContext" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end }}

{{/* A PodDisruptionBudget for a component, when its pdb is enabled. */}}
{{- define "spotkube.pdb" -}}
{{- $values := index .root.Values .component -}}
{{- if $values.pdb.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: spotkube-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "spotkube.labels" . | nindent 4 }}
spec:
  minAvailable: {{ $values.pdb.minAvailable }}
  selector:
    matchLabels:
      {{- include "spotkube.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* The probes of spotkube's programs, on their admin port. */}}
{{- define "spotkube.probes" -}}
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 10
  failureThreshold: 3
{{- end }}

{{/* The certificates come from cert-manager (webhook.tls.mode). */}}
{{- define "spotkube.certManager" -}}
{{- eq .Values.webhook.tls.mode "cert-manager" -}}
{{- end }}

{{/* The Secret holding the webhook's serving certificate. */}}
{{- define "spotkube.webhookSecret" -}}
{{- if eq .Values.webhook.tls.mode "secret" -}}
{{- required "webhook.tls.secretName is required with webhook.tls.mode secret" .Values.webhook.tls.secretName -}}
{{- else -}}
spotkube-webhook-tls
{{- end -}}
{{- end }}
