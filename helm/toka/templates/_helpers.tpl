{{- define "toka.name" -}}{{ .Release.Name }}-operator{{- end -}}

{{- define "toka.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The operator's pods, and nothing else of the release (not `helm test`'s pod): what its
  metrics Service, PodDisruptionBudget and anti-affinity select. */}}
{{- define "toka.operatorSelector" -}}
app.kubernetes.io/name: toka
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* A duration as the operator's flags take it (15s, 500ms, 1m), in seconds. */}}
{{- define "toka.seconds" -}}
{{- $unit := regexFind "(ms|s|m|h)$" . -}}
{{- mulf (trimSuffix $unit . | float64) (get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit) -}}
{{- end -}}

{{- define "toka.labels" -}}
app.kubernetes.io/name: toka
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* Rules the operator needs in each namespace it serves; a comment names the code that needs each. */}}
{{- define "toka.namespacedRules" -}}
# Kopf watches sessions (its event handlers write nothing to them). The one patch removes
# the toka.dev/finalizer an older Toka left (this one sets none), at the next reconcile.
- apiGroups: [toka.dev]
  resources: [agentsessions]
  verbs: [get, list, watch, patch]
# The session's status (phase, members, usage, budget, conditions): one writer, the operator.
- apiGroups: [toka.dev]
  resources: [agentsessions/status]
  verbs: [get, patch]
# A session creates its Agents and toggles their spec.suspend; spawn requests create
# child Agents; Kopf watches Agents; the leader removes an older Toka's finalizer.
- apiGroups: [toka.dev]
  resources: [agents]
  verbs: [get, list, watch, create, patch]
# The operator's part of each Agent's status. Also what every Agent's own Role
# grants its kernel (get/patch on its own agents/status): RBAC lets the operator
# create such a Role only because it holds these verbs itself.
- apiGroups: [toka.dev]
  resources: [agents/status]
  verbs: [get, patch]
# Agent pods: created per attempt, deleted on suspend, FailFast, deadline and TTL
# (listed by session label then); Kopf watches them, label toka.dev/agent selected by
# the API server.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
# Each Agent's own identity: a ServiceAccount (the kernel's projected token),
# created with its first pod, read back on a 409 to adopt only what is ours.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create]
# ... and that identity's Role (get/patch on its own agents/status) and RoleBinding.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create]
# Before a pod is made, the key Secret, the replay recording and the workspace
# ConfigMap are looked up so that a missing one is named in a condition
# (SecretNotFound, ConfigMapNotFound) instead of a pod stuck in ContainerCreating.
# The git credentials Secret is read to make and push the session's result.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Results: each Agent's result ConfigMap (created empty with its first pod, then
# written by its kernel: the Agent's Role grants get/patch on that name and on its
# recording ConfigMap's, made before each pod in record mode, which RBAC lets the
# operator grant only because it holds these verbs itself), and each session's
# result ConfigMap, made once when it succeeds.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
# Events for every transition and denial (the operator's and Kopf's own).
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
{{- end -}}

{{- define "toka.clusterRules" -}}
# Kopf's reactor lists and watches namespaces, to serve the ones it was given.
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
# ... and CRDs, to start watching Toka's kinds when they appear; read-only.
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end -}}
