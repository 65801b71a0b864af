output "kms_key_arn" {
  description = "The key that encrypts the data at rest."
  value       = aws_kms_key.this.arn
}

output "table_arns" {
  description = "Table ARNs by short name."
  value       = { for name, table in aws_dynamodb_table.this : name => table.arn }
}

output "table_names" {
  description = "Table names by short name (the services' configuration)."
  value       = { for name, table in aws_dynamodb_table.this : name => table.name }
}

output "events_queue_arn" {
  description = "ARN of the event queue."
  value       = aws_sqs_queue.events.arn
}

output "events_queue_url" {
  description = "URL of the event queue (the services' configuration)."
  value       = aws_sqs_queue.events.id
}

output "dead_letter_queue_arn" {
  description = "ARN of the dead-letter queue."
  value       = aws_sqs_queue.dead_letter.arn
}

output "page_token_secret_arn" {
  description = "ARN of the page-token HMAC key secret."
  value       = aws_secretsmanager_secret.page_token_key.arn
}
