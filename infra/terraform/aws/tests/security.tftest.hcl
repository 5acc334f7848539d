# Offline checks of the AWS root: `terraform test` (with the provider from a local mirror; see
# infra/README.md). The AWS provider is mocked, so nothing is created and no credentials are
# needed. Each run asserts one promise of the design: the bucket is private, encrypted and
# versioned; nothing has a public endpoint; nothing holds a static key.

mock_provider "aws" {
  source = "./tests/mocks"
}

run "bucket_is_private" {
  command = plan

  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.artifacts.block_public_acls,
      aws_s3_bucket_public_access_block.artifacts.block_public_policy,
      aws_s3_bucket_public_access_block.artifacts.ignore_public_acls,
      aws_s3_bucket_public_access_block.artifacts.restrict_public_buckets,
    ])
    error_message = "All four S3 public access blocks must be on."
  }

  assert {
    condition     = one(aws_s3_bucket_ownership_controls.artifacts.rule).object_ownership == "BucketOwnerEnforced"
    error_message = "Bucket ACLs must be disabled (BucketOwnerEnforced)."
  }

  assert {
    condition     = aws_s3_bucket.artifacts.force_destroy == false
    error_message = "The bucket must not be force-destroyed by default."
  }

  assert {
    condition = anytrue([
      for s in data.aws_iam_policy_document.artifacts.statement :
      s.effect == "Deny" && anytrue([for c in s.condition : c.variable == "aws:SecureTransport" && c.values == tolist(["false"])])
    ])
    error_message = "The bucket policy must deny requests that do not use TLS."
  }
}

run "bucket_is_encrypted_and_versioned" {
  command = plan

  assert {
    condition = alltrue([
      for r in aws_s3_bucket_server_side_encryption_configuration.artifacts.rule :
      alltrue([for d in r.apply_server_side_encryption_by_default : d.sse_algorithm == "aws:kms"])
    ])
    error_message = "Objects must be encrypted with SSE-KMS."
  }

  assert {
    condition     = one(aws_s3_bucket_versioning.artifacts.versioning_configuration).status == "Enabled"
    error_message = "Versioning must be enabled."
  }

  assert {
    condition     = aws_kms_key.this.enable_key_rotation
    error_message = "The KMS key must rotate."
  }

  assert {
    condition = anytrue([
      for r in aws_s3_bucket_lifecycle_configuration.artifacts.rule :
      r.status == "Enabled" && length(r.noncurrent_version_expiration) > 0
    ])
    error_message = "Noncurrent object versions must expire."
  }

  assert {
    condition = anytrue([
      for r in aws_s3_bucket_lifecycle_configuration.artifacts.rule :
      r.status == "Enabled" && one(r.filter).prefix == "ray-results/" && length(r.expiration) > 0
    ])
    error_message = "Old checkpoints under ray-results/ must expire."
  }
}

run "no_public_endpoints" {
  # apply (against the mock) so that subnet ids are known to compare.
  command = apply

  assert {
    condition     = one(aws_eks_cluster.this.vpc_config).endpoint_public_access == false
    error_message = "By default the EKS API endpoint must be private."
  }

  assert {
    condition     = one(aws_eks_cluster.this.vpc_config).endpoint_private_access
    error_message = "The EKS API must be reachable from inside the VPC."
  }

  assert {
    condition     = aws_db_instance.mlflow.publicly_accessible == false
    error_message = "The MLflow database must not be publicly accessible."
  }

  assert {
    condition     = alltrue([for s in aws_subnet.public : s.map_public_ip_on_launch == false])
    error_message = "No subnet may hand out public IPs."
  }

  assert {
    condition     = toset(aws_eks_node_group.core.subnet_ids) == toset(aws_subnet.private[*].id) && toset(aws_eks_node_group.gpu["gpu"].subnet_ids) == toset(aws_subnet.private[*].id)
    error_message = "Nodes must live in the private subnets."
  }

  assert {
    condition     = aws_vpc_security_group_ingress_rule.mlflow_db_from_nodes.cidr_ipv4 == null && aws_vpc_security_group_ingress_rule.mlflow_db_from_nodes.from_port == 5432
    error_message = "The database admits PostgreSQL from the cluster security group only, never from a CIDR."
  }
}

run "no_static_keys" {
  command = plan

  assert {
    condition     = aws_db_instance.mlflow.manage_master_user_password && aws_db_instance.mlflow.password == null
    error_message = "The database password must be generated into Secrets Manager, never written in the configuration."
  }

  assert {
    condition     = alltrue([for lt in aws_launch_template.node : one(lt.metadata_options).http_tokens == "required" && one(lt.metadata_options).http_put_response_hop_limit == 1])
    error_message = "Nodes must require IMDSv2 with one hop so pods cannot use the node role."
  }

  assert {
    condition = alltrue([
      for s in data.aws_iam_policy_document.pod_identity_assume.statement :
      anytrue([for p in s.principals : p.type == "Service" && contains(p.identifiers, "pods.eks.amazonaws.com")])
    ])
    error_message = "Pod roles must be assumed through EKS Pod Identity, not with keys."
  }

  assert {
    condition = alltrue([
      aws_eks_pod_identity_association.pod["ray"].namespace == "trm",
      aws_eks_pod_identity_association.pod["ray"].service_account == "ray",
      aws_eks_pod_identity_association.pod["mlflow"].namespace == "mlflow",
      aws_eks_pod_identity_association.pod["mlflow"].service_account == "mlflow",
    ])
    error_message = "The pod identities must name the service accounts of infra/k8s and k8s-addons."
  }
}

run "pod_roles_are_scoped_to_their_prefixes" {
  command = apply

  assert {
    condition = alltrue(flatten([
      for s in data.aws_iam_policy_document.ray.statement : [
        for r in s.resources : contains([
          "arn:aws:s3:::trm-artifacts-123456789012",
          "arn:aws:s3:::trm-artifacts-123456789012/datasets/*",
          "arn:aws:s3:::trm-artifacts-123456789012/ray-results/*",
          aws_kms_key.this.arn,
        ], r)
      ]
    ]))
    error_message = "The Ray role may touch datasets/ and ray-results/ of the bucket (and its key), nothing else."
  }

  assert {
    condition = alltrue(flatten([
      for s in data.aws_iam_policy_document.mlflow.statement : [
        for r in s.resources : contains([
          "arn:aws:s3:::trm-artifacts-123456789012",
          "arn:aws:s3:::trm-artifacts-123456789012/mlflow/*",
          aws_db_instance.mlflow.master_user_secret[0].secret_arn,
          aws_kms_key.this.arn,
        ], r)
      ]
    ]))
    error_message = "The MLflow role may touch mlflow/ of the bucket, its database secret and the key, nothing else."
  }
}

run "data_encrypted_at_rest" {
  command = plan

  assert {
    condition     = aws_db_instance.mlflow.storage_encrypted
    error_message = "The database storage must be encrypted."
  }

  assert {
    condition     = length(aws_eks_cluster.this.encryption_config) == 1
    error_message = "Kubernetes secrets must be envelope-encrypted."
  }

  assert {
    condition     = alltrue([for lt in aws_launch_template.node : one(one(lt.block_device_mappings).ebs).encrypted == "true"])
    error_message = "Node volumes must be encrypted."
  }

  assert {
    condition     = one(aws_ecr_repository.trm.encryption_configuration).encryption_type == "KMS" && aws_ecr_repository.trm.image_tag_mutability == "IMMUTABLE"
    error_message = "The image repository must be KMS-encrypted with immutable tags."
  }
}

run "gpu_nodes_scale_from_zero_and_are_tainted" {
  command = plan

  assert {
    condition     = one(aws_eks_node_group.gpu["gpu"].scaling_config).min_size == 0
    error_message = "The GPU group must scale from zero."
  }

  assert {
    condition     = anytrue([for t in aws_eks_node_group.gpu["gpu"].taint : t.key == "nvidia.com/gpu" && t.effect == "NO_SCHEDULE"])
    error_message = "GPU nodes must be tainted nvidia.com/gpu:NoSchedule."
  }

  assert {
    condition     = aws_eks_node_group.gpu["gpu"].ami_type == "AL2023_x86_64_NVIDIA" && aws_eks_node_group.core.capacity_type == "ON_DEMAND"
    error_message = "GPU nodes run the NVIDIA AMI; the core group (Ray head) stays on-demand."
  }
}

run "public_api_only_for_listed_cidrs" {
  command = plan

  variables {
    api_public_access_cidrs = ["203.0.113.0/24"]
  }

  assert {
    condition     = one(aws_eks_cluster.this.vpc_config).endpoint_public_access && one(aws_eks_cluster.this.vpc_config).public_access_cidrs == toset(["203.0.113.0/24"])
    error_message = "A listed CIDR opens the public endpoint to that CIDR only."
  }
}

run "open_api_is_refused" {
  command = plan

  variables {
    api_public_access_cidrs = ["0.0.0.0/0"]
  }

  expect_failures = [var.api_public_access_cidrs]
}

run "outputs_feed_the_manifests" {
  command = apply

  variables {
    image_tag = "abc1234"
  }

  assert {
    condition = output.cluster_env == join("", [
      "AWS_DEFAULT_REGION=us-east-1\n",
      "AWS_REGION=us-east-1\n",
      "MLFLOW_TRACKING_URI=http://mlflow.mlflow.svc.cluster.local:5000\n",
      "TRM_BUCKET=trm-artifacts-123456789012\n",
      "TRM_DATA_URI=s3://trm-artifacts-123456789012/datasets\n",
      "TRM_IMAGE=123456789012.dkr.ecr.us-east-1.amazonaws.com/trm:abc1234\n",
      "TRM_STORAGE_URI=s3://trm-artifacts-123456789012/ray-results\n",
    ])
    error_message = "cluster_env must render the KEY=value lines infra/k8s/base/cluster.env holds."
  }

  assert {
    condition     = output.addons_tfvars.bucket == "trm-artifacts-123456789012" && output.addons_tfvars.image == "123456789012.dkr.ecr.us-east-1.amazonaws.com/trm:abc1234"
    error_message = "addons_tfvars must carry the bucket and image to k8s-addons."
  }
}
