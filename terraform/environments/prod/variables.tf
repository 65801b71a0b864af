variable "region" {
  description = "AWS region of the environment."
  type        = string
  default     = "eu-west-1"
}

variable "availability_zones" {
  description = "Three availability zones of the region."
  type        = list(string)
  default     = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
}

variable "environment" {
  description = "Environment name (prefix ledger-<environment>)."
  type        = string
  default     = "prod"
}

variable "vpc_cidr" {
  description = "Address range of the VPC (keep k8s NetworkPolicies in step)."
  type        = string
  default     = "10.0.0.0/16"
}

variable "namespace" {
  description = "Kubernetes namespace of the services (k8s/overlays/prod)."
  type        = string
  default     = "ledger"
}

variable "secret_rotation_lambda_arn" {
  description = "Lambda that rotates the page-token key; null: rotate by hand."
  type        = string
  default     = null
}

variable "alarm_topic_arns" {
  description = "SNS topics notified by the CloudWatch alarms (the dead-letter queue's)."
  type        = list(string)
  default     = []
}
