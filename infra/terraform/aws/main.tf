# Shared names, tags and data sources for the AWS root. Each concern has its own file:
# network.tf, kms.tf, eks.tf, nodegroups.tf, s3.tf, ecr.tf, mlflow_rds.tf, pod_identity.tf.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:Zones are chosen once by slice() over the sorted names; a new zone sorts after them and does not move subnets.
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  azs        = slice(data.aws_availability_zones.available.names, 0, var.az_count)

  # Bucket names are global: the account id keeps two deployments of the same name apart.
  bucket_name = "${var.name}-artifacts-${local.account_id}"

  # Key prefixes inside the bucket; the pod roles are scoped to these.
  prefixes = {
    datasets = "datasets/"
    results  = "ray-results/"
    mlflow   = "mlflow/"
  }

  tags = merge(var.tags, {
    project   = "trm"
    stack     = var.name
    terraform = "infra/terraform/aws"
  })
}
