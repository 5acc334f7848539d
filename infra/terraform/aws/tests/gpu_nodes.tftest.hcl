# Offline checks of the GPU node groups (mocked AWS provider, plan only): their defaults come
# from the cluster's shape (infra/k8s/base/cluster-shape.yaml), a set variable overrides it,
# and the spot group exists only when enabled, with the taints and labels that keep all but
# preemption-tolerant pods off it.

mock_provider "aws" {
  source = "./tests/mocks"
}

run "gpu_defaults_follow_the_cluster_shape" {
  command = plan

  assert {
    condition = alltrue([
      one(aws_eks_node_group.gpu["gpu"].scaling_config).max_size == local.shape.gpu_max_nodes,
      aws_eks_node_group.gpu["gpu"].instance_types == tolist(local.shape.gpu_instance_types),
      aws_autoscaling_group_tag.gpu_node_template["gpu k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"].tag[0].value == tostring(local.shape.gpu_per_node),
    ])
    error_message = "The on-demand GPU group's size, instance types and GPUs per node must default to cluster-shape.yaml."
  }

  assert {
    condition     = aws_eks_node_group.gpu["gpu"].capacity_type == "ON_DEMAND"
    error_message = "The gpu group is on-demand; spot capacity has its own group."
  }
}

run "spot_group_is_absent_by_default" {
  command = plan

  assert {
    condition = alltrue([
      local.shape.gpu_spot_max_nodes == 0,
      keys(aws_eks_node_group.gpu) == ["gpu"],
      alltrue([for k in keys(aws_autoscaling_group_tag.gpu_node_template) : startswith(k, "gpu ")]),
    ])
    error_message = "By default (gpu_spot_max_nodes 0 in cluster-shape.yaml) there is no spot GPU group and no tags for one."
  }
}

run "variables_override_the_shape" {
  command = plan

  variables {
    gpu_max_nodes      = 2
    gpu_instance_types = ["g6.2xlarge"]
  }

  assert {
    condition     = one(aws_eks_node_group.gpu["gpu"].scaling_config).max_size == 2 && aws_eks_node_group.gpu["gpu"].instance_types == tolist(["g6.2xlarge"])
    error_message = "A GPU variable that is set overrides the cluster shape."
  }
}

run "spot_group_when_enabled" {
  command = plan

  variables {
    gpu_spot_max_nodes = 4
  }

  assert {
    condition = alltrue([
      aws_eks_node_group.gpu["gpu-spot"].capacity_type == "SPOT",
      aws_eks_node_group.gpu["gpu-spot"].ami_type == "AL2023_x86_64_NVIDIA",
      one(aws_eks_node_group.gpu["gpu-spot"].scaling_config).min_size == 0,
      one(aws_eks_node_group.gpu["gpu-spot"].scaling_config).max_size == 4,
      length(aws_eks_node_group.gpu["gpu-spot"].instance_types) >= 2,
    ])
    error_message = "The spot group buys SPOT NVIDIA nodes from several instance types, 0..gpu_spot_max_nodes."
  }

  assert {
    condition     = aws_eks_node_group.gpu["gpu-spot"].labels == tomap({ "node-pool" = "gpu-spot", "nvidia.com/gpu.present" = "true" })
    error_message = "Spot nodes are labelled node-pool=gpu-spot (the Ray gpu-spot group selects it) and nvidia.com/gpu.present (the device plugin's selector)."
  }

  assert {
    condition = alltrue([
      for key in ["nvidia.com/gpu", "spot"] :
      anytrue([for t in aws_eks_node_group.gpu["gpu-spot"].taint : t.key == key && t.value == "true" && t.effect == "NO_SCHEDULE"])
    ])
    error_message = "Spot nodes must be tainted nvidia.com/gpu=true:NoSchedule and spot=true:NoSchedule."
  }

  assert {
    condition = alltrue([
      aws_autoscaling_group_tag.gpu_node_template["gpu-spot k8s.io/cluster-autoscaler/node-template/label/node-pool"].tag[0].value == "gpu-spot",
      aws_autoscaling_group_tag.gpu_node_template["gpu-spot k8s.io/cluster-autoscaler/node-template/taint/spot"].tag[0].value == "true:NoSchedule",
      aws_autoscaling_group_tag.gpu_node_template["gpu-spot k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"].tag[0].value == "true:NoSchedule",
      aws_autoscaling_group_tag.gpu_node_template["gpu-spot k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"].tag[0].value == tostring(local.shape.gpu_per_node),
    ])
    error_message = "The spot group's Auto Scaling group carries the node-template tags (label, taints, GPUs) the Cluster Autoscaler needs to scale it from zero."
  }

  assert {
    condition     = one(aws_eks_node_group.core.scaling_config).min_size >= 1 && aws_eks_node_group.core.capacity_type == "ON_DEMAND"
    error_message = "The core group (Ray head, trial drivers) stays on-demand when spot is on."
  }
}

run "negative_spot_size_is_refused" {
  command = plan

  variables {
    gpu_spot_max_nodes = -1
  }

  expect_failures = [var.gpu_spot_max_nodes]
}

run "zero_gpu_nodes_are_refused" {
  command = plan

  variables {
    gpu_max_nodes = 0
  }

  expect_failures = [var.gpu_max_nodes]
}

run "one_spot_instance_type_is_refused" {
  command = plan

  variables {
    gpu_spot_max_nodes      = 4
    gpu_spot_instance_types = ["g5.2xlarge"]
  }

  expect_failures = [var.gpu_spot_instance_types]
}
