# The cluster's shape: infra/k8s/base/cluster-shape.yaml states the default GPU node groups
# once, for Terraform and for the Ray manifests (kustomize reads the same file). A GPU variable
# left null takes the shape's value; one that is set overrides it for this deployment only
# (the Ray worker groups' maxReplicas still follow the file: change the file to change both).

locals {
  shape = yamldecode(file("${path.module}/../../k8s/base/cluster-shape.yaml")).spec

  gpu = {
    instance_types      = coalesce(var.gpu_instance_types, local.shape.gpu_instance_types)
    per_node            = coalesce(var.gpu_per_node, local.shape.gpu_per_node)
    max_nodes           = coalesce(var.gpu_max_nodes, local.shape.gpu_max_nodes)
    spot_max_nodes      = coalesce(var.gpu_spot_max_nodes, local.shape.gpu_spot_max_nodes)
    spot_instance_types = coalesce(var.gpu_spot_instance_types, local.shape.gpu_spot_instance_types)
  }
}
