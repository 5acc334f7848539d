# PostgreSQL backend store for the MLflow tracking server: private subnets, encrypted, reachable
# only from the cluster's nodes. RDS generates the master password and keeps it in Secrets
# Manager (encrypted with the project key); the MLflow pod reads it at start-up through its
# pod identity role, so the password never appears in Terraform code, state or helm values.

resource "aws_db_subnet_group" "mlflow" {
  name       = "${var.name}-mlflow"
  subnet_ids = aws_subnet.private[*].id
}

resource "aws_security_group" "mlflow_db" {
  name        = "${var.name}-mlflow-db"
  description = "MLflow database: PostgreSQL from the EKS cluster only"
  vpc_id      = aws_vpc.this.id
}

# Managed node groups run with the EKS cluster security group, so it identifies the nodes.
resource "aws_vpc_security_group_ingress_rule" "mlflow_db_from_nodes" {
  security_group_id            = aws_security_group.mlflow_db.id
  description                  = "PostgreSQL from EKS nodes and pods"
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  referenced_security_group_id = aws_eks_cluster.this.vpc_config[0].cluster_security_group_id
}

resource "aws_db_parameter_group" "mlflow" {
  name   = "${var.name}-mlflow-pg16"
  family = "postgres16"

  # Refuse unencrypted client connections.
  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
}

resource "aws_db_instance" "mlflow" {
  #checkov:skip=CKV_AWS_157:Multi-AZ is the variable mlflow_db_multi_az (off by default: it doubles the cost of a tracking store that backups cover).
  #checkov:skip=CKV_AWS_118:Enhanced monitoring needs another IAM role for OS metrics of a small tracking database; Performance Insights and CloudWatch logs are on.
  identifier     = "${var.name}-mlflow"
  engine         = "postgres"
  engine_version = "16"
  instance_class = var.mlflow_db_instance_class
  db_name        = "mlflow"
  username       = "mlflow"

  manage_master_user_password   = true
  master_user_secret_kms_key_id = aws_kms_key.this.arn

  allocated_storage     = var.mlflow_db_storage_gib
  max_allocated_storage = var.mlflow_db_storage_gib * 5
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = aws_kms_key.this.arn

  db_subnet_group_name   = aws_db_subnet_group.mlflow.name
  vpc_security_group_ids = [aws_security_group.mlflow_db.id]
  publicly_accessible    = false
  multi_az               = var.mlflow_db_multi_az
  parameter_group_name   = aws_db_parameter_group.mlflow.name

  iam_database_authentication_enabled = true
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = aws_kms_key.this.arn
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  auto_minor_version_upgrade          = true
  backup_retention_period             = 7
  copy_tags_to_snapshot               = true
  deletion_protection                 = var.mlflow_db_deletion_protection
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name}-mlflow-final"
  apply_immediately                   = false
}
