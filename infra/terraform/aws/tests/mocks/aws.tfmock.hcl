# Values the mocked AWS provider returns where a test needs a real-looking one (ARNs, names,
# the node group's Auto Scaling group), shared by every *.tftest.hcl here:
#   mock_provider "aws" { source = "./tests/mocks" }

mock_data "aws_availability_zones" {
  defaults = {
    names = ["us-east-1a", "us-east-1b", "us-east-1c"]
  }
}

mock_data "aws_caller_identity" {
  defaults = {
    account_id = "123456789012"
  }
}

mock_data "aws_partition" {
  defaults = {
    partition = "aws"
  }
}

mock_data "aws_iam_policy_document" {
  defaults = {
    json = "{\"Version\":\"2012-10-17\",\"Statement\":[]}"
  }
}

mock_resource "aws_eks_node_group" {
  defaults = {
    resources = [{ autoscaling_groups = [{ name = "eks-gpu-asg" }], remote_access_security_group_id = "" }]
  }
}

mock_resource "aws_ecr_repository" {
  defaults = {
    repository_url = "123456789012.dkr.ecr.us-east-1.amazonaws.com/trm"
  }
}

mock_resource "aws_s3_bucket" {
  defaults = {
    arn = "arn:aws:s3:::trm-artifacts-123456789012"
  }
}

mock_resource "aws_kms_key" {
  defaults = {
    arn = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
  }
}

mock_resource "aws_db_instance" {
  defaults = {
    endpoint           = "trm-mlflow.abc.us-east-1.rds.amazonaws.com:5432"
    master_user_secret = [{ secret_arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rds!db-1", kms_key_id = "k", secret_status = "active" }]
  }
}

mock_resource "aws_iam_role" {
  defaults = {
    arn = "arn:aws:iam::123456789012:role/mock"
  }
}

mock_resource "aws_cloudwatch_log_group" {
  defaults = {
    arn = "arn:aws:logs:us-east-1:123456789012:log-group:mock"
  }
}

mock_resource "aws_launch_template" {
  defaults = {
    id             = "lt-0123456789abcdef0"
    latest_version = 1
  }
}

mock_resource "aws_eks_cluster" {
  defaults = {
    arn = "arn:aws:eks:us-east-1:123456789012:cluster/trm"
  }
}
