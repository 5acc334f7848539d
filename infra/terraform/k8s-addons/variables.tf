# Most values come from the AWS root: terraform -chdir=../aws output -json addons_tfvars
# > aws.auto.tfvars.json (infra/README.md, "How values flow").

variable "region" {
  description = "AWS region of the cluster."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster name (output cluster_name of the AWS root)."
  type        = string
}

variable "bucket" {
  description = "Artifacts bucket; MLflow stores artifacts under mlflow/."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket))
    error_message = "bucket must be an S3 bucket name."
  }
}

variable "image" {
  description = "Project image (infra/docker/Dockerfile) in ECR; the MLflow server runs it."
  type        = string

  validation {
    condition     = can(regex("^[^:@ ]+(:[A-Za-z0-9_][A-Za-z0-9_.-]*|@sha256:[0-9a-f]{64})$", var.image)) && !endswith(var.image, ":latest")
    error_message = "image must carry an explicit tag or digest, not :latest."
  }
}

variable "mlflow_db_endpoint" {
  description = "host:port of the MLflow PostgreSQL database."
  type        = string
}

variable "mlflow_db_secret_arn" {
  description = "Secrets Manager ARN of the database credentials (managed by RDS)."
  type        = string

  validation {
    condition     = startswith(var.mlflow_db_secret_arn, "arn:")
    error_message = "mlflow_db_secret_arn must be an ARN."
  }
}

variable "mlflow_namespace" {
  description = "Namespace of the MLflow server; must match the AWS root's pod identity."
  type        = string
  default     = "mlflow"
}

variable "mlflow_service_account" {
  description = "Service account of the MLflow server; must match the AWS root's pod identity."
  type        = string
  default     = "mlflow"
}

variable "ray_namespace" {
  description = "Namespace of the Ray pods (infra/k8s); the only one allowed to reach MLflow."
  type        = string
  default     = "trm"
}

variable "kuberay_version" {
  description = "KubeRay operator chart version; the CRDs the manifests are validated against are v1.7.0."
  type        = string
  default     = "1.7.0"
}

variable "monitoring_enabled" {
  description = "Install kube-prometheus-stack (Prometheus + Grafana) for the Ray metrics dashboard."
  type        = bool
  default     = true
}

variable "monitoring_chart_version" {
  description = "kube-prometheus-stack chart version."
  type        = string
  default     = "75.15.1"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.monitoring_chart_version))
    error_message = "monitoring_chart_version must be an exact chart version (x.y.z)."
  }
}
