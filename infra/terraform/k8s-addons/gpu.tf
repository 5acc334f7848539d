# NVIDIA device plugin: advertises nvidia.com/gpu on GPU nodes (the AL2023 NVIDIA AMI ships the
# driver and container toolkit, not the plugin). It tolerates the GPU taint and the spot
# pool's spot taint, and runs only on nodes labelled nvidia.com/gpu.present (set on both GPU
# node groups by the AWS root).
resource "helm_release" "nvidia_device_plugin" {
  name             = "nvidia-device-plugin"
  repository       = "https://nvidia.github.io/k8s-device-plugin"
  chart            = "nvidia-device-plugin"
  version          = "0.17.1"
  namespace        = "nvidia-device-plugin"
  create_namespace = true

  values = [yamlencode({
    nodeSelector = { "nvidia.com/gpu.present" = "true" }
    affinity     = null
    tolerations = [for key in ["nvidia.com/gpu", "spot"] : {
      key      = key
      operator = "Exists"
      effect   = "NoSchedule"
    }]
  })]
}

# Cluster Autoscaler: adds GPU nodes when Ray's autoscaler asks for GPU pods, removes them when
# idle. Its IAM role is bound to kube-system/cluster-autoscaler by the AWS root (pod identity).
resource "helm_release" "cluster_autoscaler" {
  name       = "cluster-autoscaler"
  repository = "https://kubernetes.github.io/autoscaler"
  chart      = "cluster-autoscaler"
  version    = "9.46.0"
  namespace  = "kube-system"

  values = [yamlencode({
    cloudProvider = "aws"
    awsRegion     = var.region
    autoDiscovery = { clusterName = var.cluster_name }
    rbac = {
      serviceAccount = { create = true, name = "cluster-autoscaler" }
    }
    nodeSelector = { "node-pool" = "core" }
    extraArgs = {
      "balance-similar-node-groups"   = true
      "skip-nodes-with-local-storage" = false
      "scale-down-unneeded-time"      = "10m"
      expander                        = "least-waste"
    }
  })]
}
