output "mlflow_tracking_uri" {
  description = "MLFLOW_TRACKING_URI for pods in the cluster."
  value       = "http://${local.mlflow_host}:5000"
}

output "mlflow_port_forward" {
  description = "Command that opens the MLflow UI at http://localhost:5000."
  value       = "kubectl -n ${var.mlflow_namespace} port-forward svc/mlflow 5000:5000"
}
