{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "kubequant.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: "<release>-kubequant", or the release name when it
already contains the chart name. 63 characters at most (a DNS label).
*/}}
{{- define "kubequant.fullname" -}}
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

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): prefixed with the release
namespace, so that releases of the same name in two namespaces never collide.
*/}}
{{- define "kubequant.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "kubequant.fullname" .) }}
{{- end }}

{{- define "kubequant.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kubequant.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubequant.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubequant.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "kubequant.workloadImage" -}}
{{- default (include "kubequant.image" .) .Values.workloadImage }}
{{- end }}

{{/*
A pull policy from (list IMAGE POLICY): POLICY when set, else IfNotPresent for an image pinned by
digest (its content cannot change) and Always for a tag (it can be moved; a node's cached copy
would be run stale).
*/}}
{{- define "kubequant.pullPolicy" -}}
{{- $image := index . 0 }}
{{- $policy := index . 1 }}
{{- if $policy }}{{ $policy }}{{ else if contains "@sha256:" $image }}IfNotPresent{{ else }}Always{{ end }}
{{- end }}

{{/* Labels ------------------------------------------------------------------------------ */}}

{{- define "kubequant.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubequant.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kubequant.labels" -}}
{{ include "kubequant.selectorLabels" . }}
app.kubernetes.io/part-of: kubequant
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ include "kubequant.chart" . }}
{{- end }}

{{/* Scope ------------------------------------------------------------------------------- */}}

{{/*
The namespaces the operator watches, as a JSON list (empty: all namespaces). rbac.scope=namespace
with no watchNamespaces means the release namespace alone: a namespaced install never watches
what its Roles do not cover.
*/}}
{{- define "kubequant.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- toJson .Values.watchNamespaces }}
{{- else if eq .Values.rbac.scope "namespace" }}
{{- toJson (list .Release.Namespace) }}
{{- else }}
{{- toJson (list) }}
{{- end }}
{{- end }}

{{/*
"true" when the operator serves all namespaces: kopf then keeps its peers in a cluster-scoped
ClusterKopfPeering; with named namespaces it keeps one KopfPeering per namespace.
*/}}
{{- define "kubequant.clusterwide" -}}
{{- if eq (include "kubequant.watchNamespaces" . | fromJsonArray | len) 0 }}true{{ end }}
{{- end }}

{{/* The workload policy -------------------------------------------------------------------- */}}

{{/*
The repository of an image reference as the container runtime resolves it (the operator's
image_repository does the same): tag and digest dropped, Docker Hub names qualified.
  python:3.11 -> docker.io/library/python;  ghcr.io/acme/x@sha256:... -> ghcr.io/acme/x
*/}}
{{- define "kubequant.imageRepository" -}}
{{- $name := index (splitList "@" .) 0 }}
{{- if contains ":" (last (splitList "/" $name)) }}
{{- $name = regexReplaceAll ":[^:/]*$" $name "" }}
{{- end }}
{{- $parts := splitList "/" $name }}
{{- $first := first $parts }}
{{- $domain := "docker.io" }}
{{- $path := $name }}
{{- if and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- $domain = ternary "docker.io" $first (eq $first "index.docker.io") }}
{{- $path = join "/" (rest $parts) }}
{{- end }}
{{- if and (eq $domain "docker.io") (not (contains "/" $path)) }}
{{- $path = printf "library/%s" $path }}
{{- end }}
{{- printf "%s/%s" $domain $path }}
{{- end }}

{{/*
The effective workload policy, as JSON: values.workloadPolicy with its empty defaults filled in
(the workload image's repository, the workload ServiceAccount). The operator reads it from
KUBEQUANT_WORKLOAD_POLICY and the ValidatingAdmissionPolicy renders the same lists, so the two
always agree.
*/}}
{{- define "kubequant.workloadPolicy" -}}
{{- $p := .Values.workloadPolicy }}
{{- $images := $p.allowedImages }}
{{- if not $images }}
{{- $images = list (include "kubequant.imageRepository" (include "kubequant.workloadImage" .)) }}
{{- end }}
{{- $accounts := $p.allowedServiceAccounts }}
{{- if not $accounts }}
{{- $accounts = list (default "default" .Values.workloadServiceAccountName) }}
{{- end }}
{{- $max := dict }}
{{- range $name, $quantity := $p.maxResources }}
{{- $_ := set $max $name (toString $quantity) }}
{{- end }}
{{- toJson (dict
  "allowedImages" $images
  "allowedServiceAccounts" $accounts
  "allowedPriorityClasses" (default (list) $p.allowedPriorityClasses)
  "allowedTolerationKeys" (default (list) $p.allowedTolerationKeys)
  "allowedNodeSelectorKeys" (default (list) $p.allowedNodeSelectorKeys)
  "allowedImagePullSecrets" (default (list) $p.allowedImagePullSecrets)
  "maxResources" $max
  "allowedModules" (default (list) $p.allowedModules)) }}
{{- end }}

{{/* "cpu 16, memory 64Gi, ...": a maxResources map for messages. */}}
{{- define "kubequant.ceilings" -}}
{{- $out := list }}
{{- range $name, $quantity := . }}
{{- $out = append $out (printf "%s %v" $name $quantity) }}
{{- end }}
{{- join ", " $out | default "none" }}
{{- end }}

{{/* Checks that the schema cannot express ----------------------------------------------- */}}

{{- define "kubequant.validate" -}}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail (printf "metrics.port and health.port must differ (both are %v)" .Values.metrics.port) }}
{{- end }}
{{- if and .Values.ha.enabled .Values.pdb.enabled (not (kindIs "string" .Values.pdb.minAvailable)) }}
{{- if ge (int .Values.pdb.minAvailable) (int .Values.ha.replicas) }}
{{- fail (printf "pdb.minAvailable (%v) must be below ha.replicas (%v), or no node could ever be drained" .Values.pdb.minAvailable .Values.ha.replicas) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator pod, shared by the Deployment and the HA StatefulSet --------------------- */}}

{{- define "kubequant.podTemplate" -}}
metadata:
  labels:
    {{- include "kubequant.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "kubequant.serviceAccountName" . }}
  # The operator talks to the API server with this token.
  automountServiceAccountToken: true
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Pod Security Standard "restricted".
  securityContext:
    runAsNonRoot: true
    runAsUser: 65532
    runAsGroup: 65532
    fsGroup: 65532
    seccompProfile:
      type: RuntimeDefault
  # kopf finishes the handlers in flight and releases its peering entry on SIGTERM.
  terminationGracePeriodSeconds: 30
  containers:
    - name: operator
      image: {{ include "kubequant.image" . }}
      imagePullPolicy: {{ include "kubequant.pullPolicy" (list (include "kubequant.image" .) .Values.image.pullPolicy) }}
      args: ["operator"]
      env:
        - name: KUBEQUANT_POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: KUBEQUANT_POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: KUBEQUANT_NAMESPACES
          value: {{ include "kubequant.watchNamespaces" . | fromJsonArray | join "," | quote }}
        - name: KUBEQUANT_METRICS_PORT
          value: {{ .Values.metrics.port | quote }}
        - name: KUBEQUANT_HEALTH_PORT
          value: {{ .Values.health.port | quote }}
        - name: KUBEQUANT_PEERING
          value: {{ .Values.peering.name | quote }}
        {{- if .Values.ha.enabled }}
        # priority = 1000 - ordinal of KUBEQUANT_POD_NAME: distinct per replica, so kopf
        # peering lets replica 0 work and keeps the others on standby.
        - name: KUBEQUANT_PRIORITY_FROM_ORDINAL
          value: "true"
        {{- end }}
        - name: KUBEQUANT_WORKLOAD_IMAGE
          value: {{ include "kubequant.workloadImage" . | quote }}
        - name: KUBEQUANT_WORKLOAD_IMAGE_PULL_POLICY
          value: {{ include "kubequant.pullPolicy" (list (include "kubequant.workloadImage" .) .Values.workloadImagePullPolicy) | quote }}
        {{- with .Values.workloadServiceAccountName }}
        - name: KUBEQUANT_WORKLOAD_SERVICE_ACCOUNT
          value: {{ . | quote }}
        {{- end }}
        # What a spec's pod may ask for and where its classes may come from (workloadPolicy).
        - name: KUBEQUANT_WORKLOAD_POLICY
          value: {{ include "kubequant.workloadPolicy" . | toJson }}
        # The API server as pods reach it (networkPolicy.apiServer): trading pods follow their own
        # session through it, and their NetworkPolicy lets them reach only that.
        - name: KUBEQUANT_API_SERVER_CIDRS
          value: {{ join "," .Values.networkPolicy.apiServer.cidrs | quote }}
        - name: KUBEQUANT_API_SERVER_PORTS
          value: {{ join "," .Values.networkPolicy.apiServer.ports | quote }}
        - name: KUBEQUANT_LOG_LEVEL
          value: {{ .Values.logLevel | quote }}
        # Read-only root filesystem: whatever caches under $HOME writes to the /tmp emptyDir.
        - name: HOME
          value: /tmp
        - name: PYTHONDONTWRITEBYTECODE
          value: "1"
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
        - name: health
          containerPort: {{ .Values.health.port }}
          protocol: TCP
      # kopf's liveness endpoint answers once the operator's startup is done; startup may wait
      # on the API server and CRD discovery, hence the generous startupProbe.
      startupProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: 5
        failureThreshold: 60
        timeoutSeconds: 5
      livenessProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: 20
        failureThreshold: 3
        timeoutSeconds: 5
      readinessProbe:
        httpGet:
          path: /healthz
          port: health
        periodSeconds: 10
        failureThreshold: 3
        timeoutSeconds: 5
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        privileged: false
        capabilities:
          drop: ["ALL"]
        seccompProfile:
          type: RuntimeDefault
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if .Values.ha.enabled }}
  # Spread the standby replicas over nodes, so that one node failure leaves one running.
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- include "kubequant.selectorLabels" . | nindent 16 }}
  {{- end }}
{{- end }}
