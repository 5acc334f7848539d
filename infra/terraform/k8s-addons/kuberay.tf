# KubeRay operator (CRDs included), on the CPU pool. Its version matches the CRD schemas that
# tests/test_infra_k8s.py validates infra/k8s against.
resource "helm_release" "kuberay_operator" {
  name             = "kuberay-operator"
  repository       = "https://ray-project.github.io/kuberay-helm/"
  chart            = "kuberay-operator"
  version          = var.kuberay_version
  namespace        = "kuberay-system"
  create_namespace = true

  values = [yamlencode({
    nodeSelector = { "node-pool" = "core" }
    # Watch only the Ray namespace: the operator needs no rights elsewhere.
    singleNamespaceInstall = false
    watchNamespace         = [var.ray_namespace]
  })]
}
