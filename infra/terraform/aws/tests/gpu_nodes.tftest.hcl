# Offline checks of the GPU node group (mocked AWS provider, plan only): its defaults come from
# the cluster's shape (infra/k8s/base/cluster-shape.yaml), and a set variable overrides it.

mock_provider "aws" {
  source = "./tests/mocks"
}

run "gpu_defaults_follow_the_cluster_shape" {
  command = plan

  assert {
    condition = alltrue([
      one(aws_eks_node_group.gpu.scaling_config).max_size == local.shape.gpu_max_nodes,
      aws_eks_node_group.gpu.instance_types == tolist(local.shape.gpu_instance_types),
      aws_autoscaling_group_tag.gpu_node_template["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"].tag[0].value == tostring(local.shape.gpu_per_node),
    ])
    error_message = "The GPU group's size, instance types and GPUs per node must default to cluster-shape.yaml."
  }
}

run "variables_override_the_shape" {
  command = plan

  variables {
    gpu_max_nodes      = 2
    gpu_instance_types = ["g6.2xlarge"]
  }

  assert {
    condition     = one(aws_eks_node_group.gpu.scaling_config).max_size == 2 && aws_eks_node_group.gpu.instance_types == tolist(["g6.2xlarge"])
    error_message = "A GPU variable that is set overrides the cluster shape."
  }
}

run "zero_gpu_nodes_are_refused" {
  command = plan

  variables {
    gpu_max_nodes = 0
  }

  expect_failures = [var.gpu_max_nodes]
}
