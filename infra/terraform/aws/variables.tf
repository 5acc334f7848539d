variable "name" {
  description = "Name of this deployment; prefixes every resource (cluster, bucket, roles, database)."
  type        = string
  default     = "trm"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 characters of lowercase letters, digits and '-', starting with a letter (it becomes part of S3, EKS and RDS names)."
  }
}

variable "region" {
  description = "AWS region for every resource."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like an AWS region, e.g. us-east-1."
  }
}

variable "tags" {
  description = "Extra tags applied to every resource (cost allocation, owner)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Network

variable "vpc_cidr" {
  description = "CIDR block of the VPC. Private subnets take the lower half, public (NAT only) the upper."
  type        = string
  default     = "10.42.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr)) && tonumber(split("/", var.vpc_cidr)[1]) <= 20
    error_message = "vpc_cidr must be a valid IPv4 CIDR of /20 or larger (pods take VPC addresses)."
  }
}

variable "az_count" {
  description = "Number of availability zones to spread subnets and nodes over."
  type        = number
  default     = 2

  validation {
    condition     = var.az_count >= 2 && var.az_count <= 4
    error_message = "az_count must be between 2 (EKS needs two) and 4."
  }
}

# ---------------------------------------------------------------------------------------------
# EKS

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.32"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.32."
  }
}

variable "api_public_access_cidrs" {
  description = "CIDRs allowed to reach the EKS API endpoint from the internet. Empty (the default) keeps the endpoint private: reach it from inside the VPC (VPN, bastion, SSM)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.api_public_access_cidrs : can(cidrnetmask(c)) && !contains(["0.0.0.0/0", "::/0"], c)])
    error_message = "api_public_access_cidrs must be valid CIDRs and never 0.0.0.0/0: name the networks that may reach the API."
  }
}

variable "admin_principal_arns" {
  description = "IAM role or user ARNs given cluster-admin through EKS access entries (the identity running Terraform is always added by EKS)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", a))])
    error_message = "admin_principal_arns must be IAM role or user ARNs."
  }
}

variable "core_instance_types" {
  description = "Instance types of the CPU node group (Ray head, MLflow, KubeRay operator, system pods)."
  type        = list(string)
  default     = ["m6i.2xlarge"]

  validation {
    condition     = length(var.core_instance_types) > 0
    error_message = "core_instance_types must name at least one instance type."
  }
}

variable "core_node_count" {
  description = "Size of the CPU node group (on-demand, always on)."
  type        = object({ min = number, max = number })
  default     = { min = 1, max = 4 }

  validation {
    condition     = var.core_node_count.min >= 1 && var.core_node_count.max >= var.core_node_count.min
    error_message = "core_node_count needs min >= 1 and max >= min."
  }
}

# The GPU variables default to null: null takes the value of the cluster's shape,
# infra/k8s/base/cluster-shape.yaml (shape.tf), which also sizes the Ray pods. Change the
# shape to change the default cluster; set a variable only for a deployment that differs.

variable "gpu_instance_types" {
  description = "Instance types of the on-demand GPU node group (null: gpu_instance_types of the cluster shape). All types in the list must have the same GPU count, CPU and memory (the autoscaler treats them as one shape)."
  type        = list(string)
  default     = null

  validation {
    condition     = var.gpu_instance_types == null ? true : length(var.gpu_instance_types) > 0 && alltrue([for t in var.gpu_instance_types : can(regex("^(g[4-6][a-z]*|p[3-5][a-z]*)\\.", t))])
    error_message = "gpu_instance_types must be NVIDIA GPU instance types (g4dn, g5, g6, g6e, p3, p4d, p5, ...)."
  }
}

variable "gpu_per_node" {
  description = "GPUs on one node of the GPU instance types (null: gpu_per_node of the cluster shape); tells the autoscaler what a new node offers."
  type        = number
  default     = null

  validation {
    condition     = var.gpu_per_node == null ? true : contains([1, 2, 4, 8], var.gpu_per_node)
    error_message = "gpu_per_node must be 1, 2, 4 or 8."
  }
}

variable "gpu_max_nodes" {
  description = "Upper bound of the on-demand GPU node group (null: gpu_max_nodes of the cluster shape). It scales from 0; this caps spend."
  type        = number
  default     = null

  validation {
    condition     = var.gpu_max_nodes == null ? true : var.gpu_max_nodes >= 1 && var.gpu_max_nodes <= 100
    error_message = "gpu_max_nodes must be between 1 and 100."
  }
}

variable "gpu_spot_max_nodes" {
  description = "Upper bound of the spot GPU node group (null: gpu_spot_max_nodes of the cluster shape, 0). 0 creates no spot group. Trials there tolerate preemption: Tune retries them from their S3 checkpoints; the Ray head and the trial drivers stay on the on-demand CPU group."
  type        = number
  default     = null

  validation {
    condition     = var.gpu_spot_max_nodes == null ? true : var.gpu_spot_max_nodes >= 0 && var.gpu_spot_max_nodes <= 100
    error_message = "gpu_spot_max_nodes must be between 0 (no spot group) and 100."
  }
}

variable "gpu_spot_instance_types" {
  description = "Instance types of the spot GPU node group (null: gpu_spot_instance_types of the cluster shape). Several types of one shape (same GPU count, CPU and memory as the on-demand types) let spot find capacity in more pools."
  type        = list(string)
  default     = null

  validation {
    condition     = var.gpu_spot_instance_types == null ? true : length(var.gpu_spot_instance_types) >= 2 && alltrue([for t in var.gpu_spot_instance_types : can(regex("^(g[4-6][a-z]*|p[3-5][a-z]*)\\.", t))])
    error_message = "gpu_spot_instance_types must name two or more NVIDIA GPU instance types (g4dn, g5, g6, g6e, p3, p4d, p5, ...): one type alone runs out of spot capacity more often."
  }
}

variable "node_disk_gib" {
  description = "Root volume size of every node (the Ray GPU image is large)."
  type        = number
  default     = 200

  validation {
    condition     = var.node_disk_gib >= 50
    error_message = "node_disk_gib must be at least 50: the CUDA image alone is over 10 GiB unpacked."
  }
}

# ---------------------------------------------------------------------------------------------
# Kubernetes identities bound to AWS roles (EKS Pod Identity). Must match infra/k8s and k8s-addons.

variable "ray_namespace" {
  description = "Namespace of the Ray clusters and jobs (infra/k8s)."
  type        = string
  default     = "trm"
}

variable "ray_service_account" {
  description = "Service account of the Ray pods; it gets the Ray role (datasets, ray-results)."
  type        = string
  default     = "ray"
}

variable "mlflow_namespace" {
  description = "Namespace of the MLflow tracking server (k8s-addons)."
  type        = string
  default     = "mlflow"
}

variable "mlflow_service_account" {
  description = "Service account of the MLflow server; it gets the MLflow role (mlflow/ prefix, database secret)."
  type        = string
  default     = "mlflow"
}

variable "image_tag" {
  description = "Tag of the project image in the ECR repository (e.g. the git commit); goes into cluster_env."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid image tag other than 'latest' (the repository's tags are immutable)."
  }
}

# ---------------------------------------------------------------------------------------------
# Storage

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete a non-empty bucket. Only for throw-away sandboxes: it deletes every dataset, checkpoint and MLflow artifact."
  type        = bool
  default     = false
}

variable "results_expiration_days" {
  description = "Days after which objects under ray-results/ (checkpoints, trial state) expire."
  type        = number
  default     = 90

  validation {
    condition     = var.results_expiration_days >= 7
    error_message = "results_expiration_days must be at least 7 so that running sweeps can resume."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept (undo window)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "ecr_keep_images" {
  description = "How many images the ECR repository keeps; older ones are expired."
  type        = number
  default     = 20

  validation {
    condition     = var.ecr_keep_images >= 1
    error_message = "ecr_keep_images must be at least 1."
  }
}

# ---------------------------------------------------------------------------------------------
# MLflow database

variable "mlflow_db_instance_class" {
  description = "RDS instance class of the MLflow backend store."
  type        = string
  default     = "db.t4g.small"

  validation {
    condition     = startswith(var.mlflow_db_instance_class, "db.")
    error_message = "mlflow_db_instance_class must be an RDS class such as db.t4g.small."
  }
}

variable "mlflow_db_storage_gib" {
  description = "Allocated storage of the MLflow database (it grows automatically up to 5x)."
  type        = number
  default     = 20

  validation {
    condition     = var.mlflow_db_storage_gib >= 20
    error_message = "mlflow_db_storage_gib must be at least 20 (the gp3 minimum)."
  }
}

variable "mlflow_db_multi_az" {
  description = "Run the MLflow database Multi-AZ (doubles its cost)."
  type        = bool
  default     = false
}

variable "mlflow_db_deletion_protection" {
  description = "Refuse to delete the MLflow database. Set to false (and apply) before `terraform destroy`."
  type        = bool
  default     = true
}
