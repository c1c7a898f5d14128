{{/* Labels on every object. No managed-by label: the plain install in manifests/ is rendered from
this chart, and would not be managed by Helm. */}}
{{- define "microgate.labels" -}}
app.kubernetes.io/name: microgate
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: microgate
{{- end }}

{{- define "microgate.selectorLabels" -}}
app.kubernetes.io/name: microgate
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "microgate.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}
{{- end }}

{{- define "microgate.embedded" -}}
{{- if eq .Values.gateway.mode "embedded" }}true{{ else if eq .Values.gateway.mode "dedicated" }}{{ else }}{{ fail (printf "gateway.mode must be embedded or dedicated, not %q" .Values.gateway.mode) }}{{ end }}
{{- end }}

{{/* What the gateway's Gateway API front end reads and writes (gatewayAPI.enabled) in the
namespaces it serves; cluster-wide, also the GatewayClasses and Namespaces. */}}
{{- define "microgate.gatewayAPIRules" -}}
{{- if .Values.gatewayAPI.enabled }}
# The Gateway API's resources, and the status of those served.
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways", "listenersets", "httproutes", "referencegrants"]
  verbs: ["list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gateways/status", "listenersets/status", "httproutes/status"]
  verbs: ["patch"]
# Backends: Services and their EndpointSlices.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- if not .Values.watchNamespace }}
{{- include "microgate.gatewayClassRules" . | nindent 0 }}
# Namespaces, for allowedRoutes selectors.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
{{- end }}

{{/* GatewayClasses are cluster-wide objects: even a gateway serving one namespace reads them
(which are microgate's) and reports their Accepted condition. */}}
{{- define "microgate.gatewayClassRules" -}}
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gatewayclasses"]
  verbs: ["list", "watch"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["gatewayclasses/status"]
  verbs: ["patch"]
{{- end }}

{{/* Exactly the API calls the operator makes (microgate controller, or run in embedded mode). */}}
{{- define "microgate.operatorRules" -}}
# Watch Microservices and Gateways (list + watch; the Gateway reconciler lists Microservices).
- apiGroups: ["microgate.dev"]
  resources: ["microservices", "gateways"]
  verbs: ["list", "watch"]
# Write their status (merge patch and server-side apply).
- apiGroups: ["microgate.dev"]
  resources: ["microservices/status", "gateways/status"]
  verbs: ["patch"]
# Each Microservice's Deployment: read before applying (to tell Created/Updated/DriftCorrected),
# server-side apply (a patch, which needs create as well when the object does not exist yet),
# watch the ones it owns.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Each Microservice's Service: server-side apply (patch, and create for a new one), watch the
# ones it owns.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
# Endpoint discovery: the Pods of Microservices.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Events on Microservices (a repeated event is patched into a series).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if include "microgate.embedded" . }}
# The embedded gateway: AccessPolicies and their Ready condition.
- apiGroups: ["microgate.dev"]
  resources: ["accesspolicies"]
  verbs: ["list", "watch"]
- apiGroups: ["microgate.dev"]
  resources: ["accesspolicies/status"]
  verbs: ["patch"]
# HTTPS listeners' certificates, AccessPolicies' API keys, htpasswd files and key sets (a field
# selector leaves out Helm's release records and service-account tokens); key sets in ConfigMaps.
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["list", "watch"]
{{- include "microgate.gatewayAPIRules" . }}
{{- end }}
{{- end }}

{{/* Exactly the API calls a dedicated gateway (microgate gateway) makes. */}}
{{- define "microgate.gatewayRules" -}}
- apiGroups: ["microgate.dev"]
  resources: ["microservices", "gateways", "accesspolicies"]
  verbs: ["list", "watch"]
# The Programmed condition; an AccessPolicy's Ready condition.
- apiGroups: ["microgate.dev"]
  resources: ["gateways/status", "accesspolicies/status"]
  verbs: ["patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# HTTPS listeners' certificates, AccessPolicies' API keys, htpasswd files and key sets (a field
# selector leaves out Helm's release records and service-account tokens); key sets in ConfigMaps.
- apiGroups: [""]
  resources: ["secrets", "configmaps"]
  verbs: ["list", "watch"]
{{- include "microgate.gatewayAPIRules" . }}
{{- end }}

{{/* The Pod security context: the restricted Pod Security Standard. */}}
{{- define "microgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "microgate.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Environment shared by the operator and the gateway. */}}
{{- define "microgate.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: MICROGATE_LOG_JSON
  value: {{ .Values.logJson | quote }}
- name: MICROGATE_ADMIN_ADDR
  value: "0.0.0.0:{{ .Values.metrics.port }}"
{{- end }}

{{- define "microgate.gatewayEnv" -}}
- name: MICROGATE_LISTEN_ADDRESS
  value: {{ .Values.gateway.listenAddress | quote }}
- name: MICROGATE_ACCESS_LOG
  value: {{ .Values.gateway.accessLog | quote }}
- name: MICROGATE_WORKERS
  value: {{ .Values.gateway.workers | quote }}
{{- if .Values.gatewayAPI.enabled }}
- name: MICROGATE_GATEWAY_API
  value: "true"
{{- end }}
{{- if .Values.metrics.adminTokenSecret }}
- name: MICROGATE_ADMIN_TOKEN_FILE
  value: /var/run/microgate/admin-token/token
{{- end }}
{{- /* Gateway API Gateways publish the address of the chart's gateway Service, read with the
Services grant the Gateway API needs (which covers the release's namespace unless another
namespace is watched). */}}
{{- if and .Values.gatewayAPI.enabled (has .Values.watchNamespace (list "" .Release.Namespace)) }}
- name: MICROGATE_PUBLISH_SERVICE
  value: "{{ .Release.Namespace }}/{{ .Release.Name }}-gateway"
{{- end }}
{{- if .Values.gatewayAPI.addresses }}
- name: MICROGATE_GATEWAY_ADDRESSES
  value: {{ .Values.gatewayAPI.addresses | quote }}
{{- end }}
{{- with .Values.gateway.tracing }}
{{- if .otlpEndpoint }}
- name: MICROGATE_TRACING_OTLP_ENDPOINT
  value: {{ .otlpEndpoint | quote }}
- name: MICROGATE_TRACING_SAMPLING_RATIO
  value: {{ .samplingRatio | quote }}
- name: MICROGATE_TRACING_SERVICE_NAME
  value: {{ .serviceName | quote }}
{{- end }}
{{- end }}
{{- with .Values.gateway.redisURLSecret }}
{{- if .name }}
- name: MICROGATE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .name | quote }}
      key: {{ .key | default "url" | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "microgate.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: admin
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /readyz
    port: admin
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
{{- end }}

{{- define "microgate.ports" -}}
- name: admin
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- if .gateway }}
{{- range .Values.gateway.ports }}
- name: {{ .name }}
  containerPort: {{ .containerPort }}
  protocol: TCP
{{- end }}
{{- end }}
{{- end }}

{{/* The admin token Secret's volume (metrics.adminTokenSecret), for a Pod that runs a gateway. */}}
{{- define "microgate.adminTokenVolume" -}}
{{- with .Values.metrics.adminTokenSecret -}}
volumes:
  - name: admin-token
    secret:
      secretName: {{ . }}
      items:
        - key: token
          path: token
{{- end }}
{{- end }}

{{/* Where a gateway's container reads the admin token (see microgate.adminTokenVolume). */}}
{{- define "microgate.adminTokenMount" -}}
{{- if .Values.metrics.adminTokenSecret -}}
volumeMounts:
  - name: admin-token
    mountPath: /var/run/microgate/admin-token
    readOnly: true
{{- end }}
{{- end }}
