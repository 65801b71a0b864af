# The IAM role of one service's Kubernetes ServiceAccount (IRSA), least privilege:
# only the named tables, queue, secret and key, and only the actions listed.

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_provider}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "access" {
  statement {
    sid = "Tables"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:Query",
      "dynamodb:Scan", # ListAccounts pages through the accounts table
      "dynamodb:BatchGetItem",
      "dynamodb:ConditionCheckItem",
      "dynamodb:DescribeTable",
    ]
    resources = concat(var.table_arns, var.index_arns)
  }

  statement {
    sid       = "Transactions"
    actions   = ["dynamodb:TransactWriteItems", "dynamodb:TransactGetItems"]
    resources = var.table_arns
  }

  dynamic "statement" {
    for_each = length(var.send_queue_arns) > 0 ? [1] : []
    content {
      sid       = "SendEvents"
      actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
      resources = var.send_queue_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.receive_queue_arns) > 0 ? [1] : []
    content {
      sid = "ReceiveEvents"
      actions = [
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl", # the consumer finds the queue by name
      ]
      resources = var.receive_queue_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secret_arns) > 0 ? [1] : []
    content {
      sid       = "Secrets"
      actions   = ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
      resources = var.secret_arns
    }
  }

  statement {
    sid       = "Key"
    actions   = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role" "this" {
  name                 = var.name
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

resource "aws_iam_role_policy" "access" {
  name   = "access"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.access.json
}
