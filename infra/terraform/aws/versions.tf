terraform {
  # 1.7 brings mock_provider to `terraform test`, which the offline tests use.
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.x renamed several arguments used here; stay on 5.x until the root is ported.
      version = ">= 5.70, < 6.0"
    }
  }

  # Remote state. Supply bucket, key, region (and use_lockfile = true) at init time:
  #   terraform init -backend-config=backend.hcl
  # Nothing about where state lives is hard-coded here.
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
