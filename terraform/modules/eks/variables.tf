variable "name" {
  description = "Cluster name."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version (the manifests are validated against 1.30)."
  type        = string
  default     = "1.30"
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "account_id" {
  description = "AWS account ID."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets of the cluster and its nodes."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key that encrypts Kubernetes secrets."
  type        = string
}

variable "on_demand_instance_types" {
  description = "Instance types of the on-demand node group."
  type        = list(string)
  default     = ["m6i.large"]
}

variable "spot_instance_types" {
  description = "Instance types of the spot node group (several, for availability)."
  type        = list(string)
  default     = ["m6i.large", "m5.large", "m6a.large"]
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
