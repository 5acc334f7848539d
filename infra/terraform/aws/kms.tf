# One customer-managed key for the bucket, the database, its secret, the EKS secrets envelope,
# the image repository and the log groups. Rotation on; the account (through IAM) and the
# CloudWatch Logs service may use it; the pod roles get Decrypt/GenerateDataKey in their policies.

data "aws_iam_policy_document" "kms" {
  # A key policy's "*" resource means this key only; admin goes to the account, whose IAM
  # policies then decide who may use it (the standard default key policy).
  #checkov:skip=CKV_AWS_109:Key policy: "*" is the key itself; administration stays with the account.
  #checkov:skip=CKV_AWS_111:Key policy: "*" is the key itself; write access stays with the account.
  #checkov:skip=CKV_AWS_356:Key policy: "*" is the key itself, not every resource.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsEncrypt"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: S3 artifacts, MLflow database and secret, EKS secrets, ECR, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
