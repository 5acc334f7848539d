# Managed node groups:
#   core:     on-demand CPU nodes for the Ray head, MLflow, the KubeRay operator and system pods.
#   gpu:      on-demand NVIDIA nodes (EKS AL2023 NVIDIA AMI: driver and container toolkit
#             included), tainted nvidia.com/gpu=true:NoSchedule so only pods that tolerate it
#             (Ray GPU workers, the device plugin) land there; 0..gpu_max_nodes, scaled by the
#             Cluster Autoscaler.
#   gpu-spot: the same on spot capacity, off by default (gpu_pools below).
# Sizes and instance types default to the cluster's shape (shape.tf). All use a launch template
# that requires IMDSv2 with one hop, so pods cannot borrow the node's role: they get
# credentials from EKS Pod Identity instead.

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodePolicy",
    "AmazonEKS_CNI_Policy",
    "AmazonEC2ContainerRegistryReadOnly",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/${each.value}"
}

resource "aws_launch_template" "node" {
  for_each = toset(["core", "gpu"])

  name_prefix            = "${var.name}-${each.key}-"
  update_default_version = true

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_size           = var.node_disk_gib
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = aws_kms_key.this.arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.name}-${each.key}" })
  }
}

resource "aws_eks_node_group" "core" {
  cluster_name    = aws_eks_cluster.this.name
  node_group_name = "core"
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = "AL2023_x86_64_STANDARD"
  capacity_type   = "ON_DEMAND"
  instance_types  = var.core_instance_types

  labels = { "node-pool" = "core" }

  scaling_config {
    min_size     = var.core_node_count.min
    desired_size = var.core_node_count.min
    max_size     = var.core_node_count.max
  }

  launch_template {
    id      = aws_launch_template.node["core"].id
    version = aws_launch_template.node["core"].latest_version
  }

  update_config {
    max_unavailable = 1
  }

  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.vpc_cni]
}

# GPU pools, one managed node group each (a pool of 0 nodes gets none), all on the NVIDIA AMI,
# scaled from zero by the Cluster Autoscaler and tainted NoSchedule, so only pods that tolerate
# every taint of a pool land there.
#   gpu:      on-demand; tainted nvidia.com/gpu (Ray GPU workers, the device plugin).
#   gpu-spot: spot capacity, off by default (gpu_spot_max_nodes 0 in the cluster shape), from
#             several instance types of one shape so that one type's shortage leaves the
#             others; also tainted spot, so only pods that tolerate losing their node land there
#             (the Ray gpu-spot worker group, infra/k8s/components/gpu-spot; the device plugin).
#             The Ray head and the trial drivers stay on the on-demand core group.
# Spot interruptions need no handler of our own: a managed node group with capacity_type SPOT
# turns on Capacity Rebalancing for its Auto Scaling group; on a rebalance recommendation EKS
# starts a replacement node, then cordons and drains the node at risk, and when the two-minute
# interruption notice comes before the replacement is Ready, EKS drains at once. Draining
# evicts the Ray worker pod: its preStop hook (`ray stop`) ends the raylet, Ray marks the node
# dead, and Tune retries the lost trial from its last checkpoint (the pipeline retries trials
# lost with their node without limit).
locals {
  gpu_pools = {
    gpu = {
      capacity_type  = "ON_DEMAND"
      instance_types = local.gpu.instance_types
      max_nodes      = local.gpu.max_nodes
      taints         = { "nvidia.com/gpu" = "true" }
    }
    "gpu-spot" = {
      capacity_type  = "SPOT"
      instance_types = local.gpu.spot_instance_types
      max_nodes      = local.gpu.spot_max_nodes
      taints         = { "nvidia.com/gpu" = "true", spot = "true" }
    }
  }

  gpu_groups = { for name, pool in local.gpu_pools : name => pool if pool.max_nodes > 0 }
}

resource "aws_eks_node_group" "gpu" {
  for_each = local.gpu_groups

  cluster_name    = aws_eks_cluster.this.name
  node_group_name = each.key
  node_role_arn   = aws_iam_role.node.arn
  subnet_ids      = aws_subnet.private[*].id
  ami_type        = "AL2023_x86_64_NVIDIA"
  capacity_type   = each.value.capacity_type
  instance_types  = each.value.instance_types

  # node-pool is what the Ray worker groups select; nvidia.com/gpu.present is what the NVIDIA
  # device plugin chart's default affinity selects.
  labels = {
    "node-pool"              = each.key
    "nvidia.com/gpu.present" = "true"
  }

  dynamic "taint" {
    for_each = each.value.taints

    content {
      key    = taint.key
      value  = taint.value
      effect = "NO_SCHEDULE"
    }
  }

  scaling_config {
    min_size     = 0
    desired_size = 0
    max_size     = each.value.max_nodes
  }

  launch_template {
    id      = aws_launch_template.node["gpu"].id
    version = aws_launch_template.node["gpu"].latest_version
  }

  update_config {
    max_unavailable = 1
  }

  # The autoscaler owns desired_size once the group exists.
  lifecycle {
    ignore_changes = [scaling_config[0].desired_size]
  }

  depends_on = [aws_iam_role_policy_attachment.node, aws_eks_addon.vpc_cni]
}

# Scale from zero: with no GPU node running, the Cluster Autoscaler learns what a new node
# would offer (GPU count, labels, taints) from these tags on the group's Auto Scaling group.
# Keyed "<group> <tag>".
locals {
  node_template_tags = merge([
    for name, pool in local.gpu_groups : {
      for key, value in merge(
        {
          "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"     = tostring(local.gpu.per_node)
          "k8s.io/cluster-autoscaler/node-template/label/node-pool"              = name
          "k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.present" = "true"
        },
        { for taint, v in pool.taints : "k8s.io/cluster-autoscaler/node-template/taint/${taint}" => "${v}:NoSchedule" },
      ) : "${name} ${key}" => { group = name, key = key, value = value }
    }
  ]...)
}

resource "aws_autoscaling_group_tag" "gpu_node_template" {
  for_each = local.node_template_tags

  autoscaling_group_name = aws_eks_node_group.gpu[each.value.group].resources[0].autoscaling_groups[0].name

  tag {
    key                 = each.value.key
    value               = each.value.value
    propagate_at_launch = false
  }
}
