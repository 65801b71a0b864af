# The ledger's state and messaging: a KMS key for everything at rest, the DynamoDB
# tables (on-demand, point-in-time recovery, KMS encryption, TTL, deletion
# protection where asked), the SQS event queue with its dead-letter queue, and
# the Secrets Manager secret (page-token HMAC key) with a rotation hook.

data "aws_caller_identity" "current" {}

data "aws_iam_policy_document" "key" {
  # The account's administrators manage the key; services use it through their
  # IRSA roles' own policies (service_role module), which name this key's ARN.
  #checkov:skip=CKV_AWS_109:Key policy: "*" is this key, delegated to the account root (AWS default key policy)
  #checkov:skip=CKV_AWS_111:Key policy: "*" is this key, delegated to the account root (AWS default key policy)
  #checkov:skip=CKV_AWS_356:Key policy: "*" is this key, delegated to the account root (AWS default key policy)
  statement {
    sid       = "AccountAdministration"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy, "*" means this key
    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: DynamoDB, SQS, Secrets Manager, logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

resource "aws_dynamodb_table" "this" {
  for_each                    = var.tables
  name                        = "${var.name}-${each.key}"
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = each.value.hash_key
  range_key                   = each.value.range_key
  deletion_protection_enabled = var.deletion_protection

  dynamic "attribute" {
    for_each = merge(
      { for key in compact([each.value.hash_key, each.value.range_key]) : key => "S" },
      { for index in each.value.indexes : index.hash_key => "S" },
      { for index in each.value.indexes : index.range_key => index.range_type },
    )
    content {
      name = attribute.key
      type = attribute.value
    }
  }

  dynamic "global_secondary_index" {
    for_each = each.value.indexes
    content {
      name            = global_secondary_index.value.name
      hash_key        = global_secondary_index.value.hash_key
      range_key       = global_secondary_index.value.range_key
      projection_type = "KEYS_ONLY"
    }
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.this.arn
  }

  ttl {
    enabled        = each.value.ttl_attribute != null
    attribute_name = each.value.ttl_attribute != null ? each.value.ttl_attribute : ""
  }

  tags = var.tags
}

resource "aws_sqs_queue" "dead_letter" {
  name                      = "${var.name}-events-dlq"
  message_retention_seconds = 1209600 # 14 days: time to look at what failed
  kms_master_key_id         = aws_kms_key.this.arn
  tags                      = var.tags
}

resource "aws_sqs_queue" "events" {
  name                       = "${var.name}-events"
  visibility_timeout_seconds = 60
  message_retention_seconds  = 345600
  receive_wait_time_seconds  = 20 # long polling
  kms_master_key_id          = aws_kms_key.this.arn
  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letter.arn
    maxReceiveCount     = var.max_receive_count
  })
  tags = var.tags
}

# An event in the dead-letter queue is one the consumer gave up on: the activity feed
# misses it until someone fixes the cause and redrives it (allowed below).
resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  alarm_name          = "${var.name}-events-dead-letters"
  alarm_description   = "Events the consumer gave up on: find the cause in its logs, then redrive them to ${aws_sqs_queue.events.name}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dead_letter.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}

# Events nobody takes: the consumer is down or may not receive (its role, the key), so
# they expire after the retention period without reaching the dead-letter queue. A
# failing one is retried for about 7.5 min at the defaults, so 20 min is far past it.
resource "aws_cloudwatch_metric_alarm" "unconsumed_events" {
  alarm_name          = "${var.name}-events-unconsumed"
  alarm_description   = "The oldest event has waited over 20 minutes: is transfers-events running, and may it receive?"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.events.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1200
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
  tags                = var.tags
}

resource "aws_sqs_queue_redrive_allow_policy" "dead_letter" {
  queue_url = aws_sqs_queue.dead_letter.id
  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.events.arn]
  })
}

resource "aws_secretsmanager_secret" "page_token_key" {
  name                    = "${var.name}/page-token-hmac-key"
  description             = "HMAC key that signs the ledger's page tokens."
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 30
  tags                    = var.tags
}

# Rotation: a Lambda the platform team provides (generate a new random key, keep
# the previous one valid for a day); its ARN is an input, nothing is invented here.
resource "aws_secretsmanager_secret_rotation" "page_token_key" {
  count               = var.rotation_lambda_arn == null ? 0 : 1
  secret_id           = aws_secretsmanager_secret.page_token_key.id
  rotation_lambda_arn = var.rotation_lambda_arn
  rotation_rules {
    automatically_after_days = 30
  }
}
