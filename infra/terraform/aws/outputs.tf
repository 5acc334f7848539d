# What the next steps consume (infra/README.md, "How values flow"):
#   cluster_env    -> infra/k8s/base/cluster.env  (ConfigMap trm-cluster: Ray pods' environment)
#   addons_tfvars  -> infra/terraform/k8s-addons/aws.auto.tfvars.json
#   the rest       -> commands in the README (kubeconfig, docker push, data upload)

locals {
  bucket_uri = "s3://${aws_s3_bucket.artifacts.bucket}"

  # Environment of every Ray container. Keys are fixed: infra/k8s reads them.
  cluster_env = {
    AWS_REGION          = var.region
    AWS_DEFAULT_REGION  = var.region
    TRM_BUCKET          = aws_s3_bucket.artifacts.bucket
    TRM_DATA_URI        = "${local.bucket_uri}/${trimsuffix(local.prefixes.datasets, "/")}"
    TRM_STORAGE_URI     = "${local.bucket_uri}/${trimsuffix(local.prefixes.results, "/")}"
    MLFLOW_TRACKING_URI = "http://mlflow.${var.mlflow_namespace}.svc.cluster.local:5000"
    TRM_IMAGE           = "${aws_ecr_repository.trm.repository_url}:${var.image_tag}"
  }
}

output "region" {
  description = "AWS region of the deployment."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "kubeconfig_command" {
  description = "Command that points kubectl at the cluster."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${aws_eks_cluster.this.name}"
}

output "bucket" {
  description = "Name of the private artifacts bucket."
  value       = aws_s3_bucket.artifacts.bucket
}

output "dataset_uri" {
  description = "Where to upload datasets (pipeline/build_data.py ... --out <this>/<name>)."
  value       = local.cluster_env.TRM_DATA_URI
}

output "ecr_repository_url" {
  description = "Repository to push the project image to."
  value       = aws_ecr_repository.trm.repository_url
}

output "ray_role_arn" {
  description = "IAM role the Ray pods get through EKS Pod Identity."
  value       = aws_iam_role.pod["ray"].arn
}

output "mlflow_role_arn" {
  description = "IAM role the MLflow server gets through EKS Pod Identity."
  value       = aws_iam_role.pod["mlflow"].arn
}

output "mlflow_db_endpoint" {
  description = "host:port of the MLflow PostgreSQL database (private)."
  value       = aws_db_instance.mlflow.endpoint
}

output "mlflow_db_secret_arn" {
  description = "Secrets Manager secret (managed by RDS) holding the database user and password."
  value       = aws_db_instance.mlflow.master_user_secret[0].secret_arn
}

output "cluster_env" {
  description = "KEY=value lines for infra/k8s/base/cluster.env."
  value       = join("", [for k in sort(keys(local.cluster_env)) : "${k}=${local.cluster_env[k]}\n"])
}

output "addons_tfvars" {
  description = "Variables of infra/terraform/k8s-addons; write with `terraform output -json addons_tfvars`."
  value = {
    region                 = var.region
    cluster_name           = aws_eks_cluster.this.name
    bucket                 = aws_s3_bucket.artifacts.bucket
    image                  = local.cluster_env.TRM_IMAGE
    mlflow_db_endpoint     = aws_db_instance.mlflow.endpoint
    mlflow_db_secret_arn   = aws_db_instance.mlflow.master_user_secret[0].secret_arn
    mlflow_namespace       = var.mlflow_namespace
    mlflow_service_account = var.mlflow_service_account
    ray_namespace          = var.ray_namespace
  }
}
