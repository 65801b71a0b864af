variable "name" {
  description = "Role name (the ServiceAccount's eks.amazonaws.com/role-arn points at it)."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider."
  type        = string
}

variable "oidc_provider" {
  description = "The OIDC issuer without https:// (for the trust conditions)."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the ServiceAccount."
  type        = string
}

variable "service_account" {
  description = "Name of the ServiceAccount."
  type        = string
}

variable "table_arns" {
  description = "DynamoDB tables the service reads and writes."
  type        = list(string)
}

variable "index_arns" {
  description = "Exact ARNs of the table indexes the service queries."
  type        = list(string)
  default     = []
}

variable "send_queue_arns" {
  description = "SQS queues the service sends to."
  type        = list(string)
  default     = []
}

variable "receive_queue_arns" {
  description = "SQS queues the service consumes."
  type        = list(string)
  default     = []
}

variable "secret_arns" {
  description = "Secrets the service reads."
  type        = list(string)
  default     = []
}

variable "kms_key_arn" {
  description = "The key of the data at rest."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
