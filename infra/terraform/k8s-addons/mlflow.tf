# MLflow tracking server: backend store in RDS PostgreSQL, artifacts in s3://<bucket>/mlflow,
# proxied by the server. Service type ClusterIP only: people reach the UI with
#   kubectl -n mlflow port-forward svc/mlflow 5000
# and Ray pods at http://mlflow.mlflow.svc.cluster.local:5000 (MLFLOW_TRACKING_URI).

locals {
  mlflow_labels = { "app.kubernetes.io/name" = "mlflow", "app.kubernetes.io/part-of" = "trm" }
  mlflow_host   = "mlflow.${var.mlflow_namespace}.svc.cluster.local"
}

resource "kubernetes_namespace_v1" "mlflow" {
  metadata {
    name = var.mlflow_namespace
    labels = {
      "pod-security.kubernetes.io/enforce" = "restricted"
    }
  }
}

# Bound to the MLflow IAM role by EKS Pod Identity (AWS root, pod_identity.tf).
resource "kubernetes_service_account_v1" "mlflow" {
  metadata {
    name      = var.mlflow_service_account
    namespace = kubernetes_namespace_v1.mlflow.metadata[0].name
  }
  automount_service_account_token = false
}

resource "kubernetes_deployment_v1" "mlflow" {
  #checkov:skip=CKV_K8S_14:The image is var.image, whose validation requires an explicit tag or digest (never latest).
  metadata {
    name      = "mlflow"
    namespace = kubernetes_namespace_v1.mlflow.metadata[0].name
    labels    = local.mlflow_labels
  }

  spec {
    replicas = 1

    selector {
      match_labels = local.mlflow_labels
    }

    template {
      metadata {
        labels = local.mlflow_labels
      }

      spec {
        service_account_name            = kubernetes_service_account_v1.mlflow.metadata[0].name
        automount_service_account_token = false
        node_selector                   = { "node-pool" = "core" }

        security_context {
          run_as_non_root = true
          run_as_user     = 1000
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          name              = "mlflow"
          image             = var.image
          image_pull_policy = "Always"
          command           = ["python", "/app/infra/docker/mlflow_server.py"]

          env {
            name  = "MLFLOW_DB_SECRET_ARN"
            value = var.mlflow_db_secret_arn
          }
          env {
            name  = "MLFLOW_DB_ENDPOINT"
            value = var.mlflow_db_endpoint
          }
          env {
            name  = "MLFLOW_DB_NAME"
            value = "mlflow"
          }
          env {
            name  = "MLFLOW_ARTIFACTS_DESTINATION"
            value = "s3://${var.bucket}/mlflow"
          }
          env {
            name  = "MLFLOW_ALLOWED_HOSTS"
            value = join(",", ["mlflow", "${local.mlflow_host}", "${local.mlflow_host}:5000", "mlflow:5000", "localhost:5000", "127.0.0.1:5000"])
          }
          env {
            name  = "AWS_REGION"
            value = var.region
          }
          # The root filesystem is read-only; anything MLflow caches goes to the /tmp volume.
          env {
            name  = "HOME"
            value = "/tmp"
          }

          port {
            name           = "http"
            container_port = 5000
          }

          resources {
            requests = { cpu = "1", memory = "2Gi" }
            limits   = { cpu = "1", memory = "2Gi" }
          }

          readiness_probe {
            http_get {
              path = "/health"
              port = "http"
            }
            period_seconds = 10
          }

          liveness_probe {
            http_get {
              path = "/health"
              port = "http"
            }
            initial_delay_seconds = 60
            period_seconds        = 20
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }

          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }

        volume {
          name = "tmp"
          empty_dir {}
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "mlflow" {
  metadata {
    name      = "mlflow"
    namespace = kubernetes_namespace_v1.mlflow.metadata[0].name
    labels    = local.mlflow_labels
  }

  spec {
    type     = "ClusterIP"
    selector = local.mlflow_labels

    port {
      name        = "http"
      port        = 5000
      target_port = "http"
    }
  }
}

# Only the Ray namespace may reach the server (port-forward bypasses this, by design).
resource "kubernetes_network_policy_v1" "mlflow" {
  metadata {
    name      = "mlflow-from-ray"
    namespace = kubernetes_namespace_v1.mlflow.metadata[0].name
  }

  spec {
    pod_selector {
      match_labels = local.mlflow_labels
    }
    policy_types = ["Ingress"]

    ingress {
      from {
        namespace_selector {
          match_labels = { "kubernetes.io/metadata.name" = var.ray_namespace }
        }
      }
      ports {
        port     = "5000"
        protocol = "TCP"
      }
    }
  }
}
