# Prometheus and Grafana (kube-prometheus-stack) on the CPU pool. Prometheus scrapes the Ray
# pods through the PodMonitor in infra/k8s/monitoring; Grafana's sidecar loads every ConfigMap
# labelled grafana_dashboard=1 in the Ray namespace (the sweep dashboard there). Both stay
# ClusterIP: people reach Grafana with kubectl port-forward, like the Ray dashboard.
resource "helm_release" "monitoring" {
  count            = var.monitoring_enabled ? 1 : 0
  name             = "kube-prometheus-stack"
  repository       = "https://prometheus-community.github.io/helm-charts"
  chart            = "kube-prometheus-stack"
  version          = var.monitoring_chart_version
  namespace        = "monitoring"
  create_namespace = true

  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        nodeSelector = { "node-pool" = "core" }
        # Pick up PodMonitors from every namespace, not only the chart's own release.
        podMonitorSelectorNilUsesHelmValues = false
        retention                           = "30d"
      }
    }
    grafana = {
      nodeSelector = { "node-pool" = "core" }
      sidecar = {
        dashboards = { enabled = true, label = "grafana_dashboard", searchNamespace = [var.ray_namespace] }
      }
    }
    alertmanager = { enabled = false }
  })]
}
