# AWS identities for pods, through EKS Pod Identity: no static keys anywhere, one role per
# Kubernetes service account, each scoped to its own bucket prefixes.
#   ray pods   (ray_namespace/ray_service_account):       datasets/ and ray-results/
#   MLflow     (mlflow_namespace/mlflow_service_account): mlflow/ and the database secret
#   autoscaler (kube-system/cluster-autoscaler):          the node groups' Auto Scaling groups

data "aws_iam_policy_document" "pod_identity_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["pods.eks.amazonaws.com"]
    }

    # Only pods of this cluster may assume the roles.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_eks_cluster.this.arn]
    }
  }
}

# --- Ray ------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ray" {
  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.prefixes.datasets}*", "${local.prefixes.results}*"]
    }
  }

  statement {
    sid = "ReadWriteDatasetsAndResults"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = [
      "${aws_s3_bucket.artifacts.arn}/${local.prefixes.datasets}*",
      "${aws_s3_bucket.artifacts.arn}/${local.prefixes.results}*",
    ]
  }

  statement {
    sid       = "UseBucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
}

# --- MLflow ---------------------------------------------------------------------------------

data "aws_iam_policy_document" "mlflow" {
  statement {
    sid       = "ListOwnPrefix"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.prefixes.mlflow}*"]
    }
  }

  statement {
    sid       = "ReadWriteArtifacts"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.artifacts.arn}/${local.prefixes.mlflow}*"]
  }

  statement {
    sid       = "ReadDatabaseSecret"
    actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    resources = [aws_db_instance.mlflow.master_user_secret[0].secret_arn]
  }

  statement {
    sid       = "UseProjectKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
  }
}

# --- Cluster Autoscaler -------------------------------------------------------------------

data "aws_iam_policy_document" "cluster_autoscaler" {
  # These read-only calls accept no resource but "*".
  #checkov:skip=CKV_AWS_356:Describe* calls of Auto Scaling and EC2 support no resource-level scoping.
  statement {
    sid = "Describe"
    actions = [
      "autoscaling:DescribeAutoScalingGroups",
      "autoscaling:DescribeAutoScalingInstances",
      "autoscaling:DescribeLaunchConfigurations",
      "autoscaling:DescribeScalingActivities",
      "autoscaling:DescribeTags",
      "ec2:DescribeImages",
      "ec2:DescribeInstanceTypes",
      "ec2:DescribeLaunchTemplateVersions",
      "ec2:GetInstanceTypesFromInstanceRequirements",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "DescribeOwnNodegroups"
    actions   = ["eks:DescribeNodegroup"]
    resources = ["arn:${local.partition}:eks:${var.region}:${local.account_id}:nodegroup/${aws_eks_cluster.this.name}/*/*"]
  }

  statement {
    sid       = "ScaleOwnGroupsOnly"
    actions   = ["autoscaling:SetDesiredCapacity", "autoscaling:TerminateInstanceInAutoScalingGroup"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/eks:cluster-name"
      values   = [aws_eks_cluster.this.name]
    }
  }
}

# --- One role per service account ---------------------------------------------------------

locals {
  pod_roles = {
    ray = {
      namespace       = var.ray_namespace
      service_account = var.ray_service_account
      policy_name     = "s3-datasets-and-results"
      policy          = data.aws_iam_policy_document.ray.json
    }
    mlflow = {
      namespace       = var.mlflow_namespace
      service_account = var.mlflow_service_account
      policy_name     = "s3-mlflow-and-db-secret"
      policy          = data.aws_iam_policy_document.mlflow.json
    }
    cluster-autoscaler = {
      namespace       = "kube-system"
      service_account = "cluster-autoscaler"
      policy_name     = "scale-node-groups"
      policy          = data.aws_iam_policy_document.cluster_autoscaler.json
    }
  }
}

resource "aws_iam_role" "pod" {
  for_each = local.pod_roles

  name               = "${var.name}-${each.key}"
  assume_role_policy = data.aws_iam_policy_document.pod_identity_assume.json
}

resource "aws_iam_role_policy" "pod" {
  for_each = local.pod_roles

  name   = each.value.policy_name
  role   = aws_iam_role.pod[each.key].id
  policy = each.value.policy
}

resource "aws_eks_pod_identity_association" "pod" {
  for_each = local.pod_roles

  cluster_name    = aws_eks_cluster.this.name
  namespace       = each.value.namespace
  service_account = each.value.service_account
  role_arn        = aws_iam_role.pod[each.key].arn
}
