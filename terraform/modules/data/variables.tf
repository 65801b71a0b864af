variable "name" {
  description = "Prefix of the tables, queues, key and secret (e.g. ledger-prod)."
  type        = string
}

variable "tables" {
  description = "DynamoDB tables: string keys, optional TTL attribute and global secondary indexes (keys-only), by short name."
  type = map(object({
    hash_key      = string
    range_key     = optional(string)
    ttl_attribute = optional(string)
    indexes = optional(list(object({
      name       = string
      hash_key   = string
      range_key  = string
      range_type = string
    })), [])
  }))
}

variable "deletion_protection" {
  description = "Refuse to delete the tables (true in prod)."
  type        = bool
  default     = true
}

variable "max_receive_count" {
  description = "Receives after which an event goes to the dead-letter queue."
  type        = number
  default     = 5
}

variable "alarm_actions" {
  description = "ARNs (e.g. SNS topics) notified when the dead-letter queue holds an event."
  type        = list(string)
  default     = []
}

variable "rotation_lambda_arn" {
  description = "Lambda that rotates the page-token key; null: rotate by hand."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
