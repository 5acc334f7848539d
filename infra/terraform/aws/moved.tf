# State addresses from before the GPU node groups were one resource per pool (nodegroups.tf):
# the on-demand group and its autoscaler tags were then the only instances. Terraform moves
# them in state instead of replacing the group.

moved {
  from = aws_eks_node_group.gpu
  to   = aws_eks_node_group.gpu["gpu"]
}

moved {
  from = aws_autoscaling_group_tag.gpu_node_template["k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"]
  to   = aws_autoscaling_group_tag.gpu_node_template["gpu k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu"]
}

moved {
  from = aws_autoscaling_group_tag.gpu_node_template["k8s.io/cluster-autoscaler/node-template/label/node-pool"]
  to   = aws_autoscaling_group_tag.gpu_node_template["gpu k8s.io/cluster-autoscaler/node-template/label/node-pool"]
}

moved {
  from = aws_autoscaling_group_tag.gpu_node_template["k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.present"]
  to   = aws_autoscaling_group_tag.gpu_node_template["gpu k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.present"]
}

moved {
  from = aws_autoscaling_group_tag.gpu_node_template["k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"]
  to   = aws_autoscaling_group_tag.gpu_node_template["gpu k8s.io/cluster-autoscaler/node-template/taint/nvidia.com/gpu"]
}
