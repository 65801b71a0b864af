variable "name" {
  description = "Name of the VPC and prefix of its resources."
  type        = string
}

variable "availability_zones" {
  description = "The three availability zones of the subnets."
  type        = list(string)
  validation {
    condition     = length(var.availability_zones) == 3
    error_message = "Give exactly three availability zones."
  }
}

variable "cidr_block" {
  description = "Address range of the VPC (the NetworkPolicies in k8s/ allow it for the NLB)."
  type        = string
  default     = "10.0.0.0/16"
}

variable "log_kms_key_arn" {
  description = "KMS key that encrypts the VPC flow logs."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
