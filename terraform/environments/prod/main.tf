# The ledger's production environment: network, cluster, data, one IRSA role per
# service, and the image repository.

data "aws_caller_identity" "current" {}

locals {
  name = "ledger-${var.environment}"
  tags = { system = "ledger" }
  # Table design: README, "The ledger" (services/resources.py creates the same
  # tables locally). TTL on the idempotency records; the transfers' sagas have a
  # sparse index of the unfinished ones, which the recovery loop queries.
  tables = {
    accounts = { hash_key = "account_id" }
    transfers = {
      hash_key = "saga_id"
      indexes = [
        { name = "unfinished", hash_key = "due_shard", range_key = "lease_until", range_type = "N" },
      ]
    }
    idempotency = { hash_key = "key", ttl_attribute = "expires_at" }
    activity    = { hash_key = "account_id", range_key = "sort_key" }
  }
}

module "data" {
  source              = "../../modules/data"
  name                = local.name
  tables              = local.tables
  deletion_protection = true
  rotation_lambda_arn = var.secret_rotation_lambda_arn
  alarm_actions       = var.alarm_topic_arns
  tags                = local.tags
}

module "network" {
  source             = "../../modules/network"
  name               = local.name
  cidr_block         = var.vpc_cidr
  availability_zones = var.availability_zones
  log_kms_key_arn    = module.data.kms_key_arn
  tags               = local.tags
}

module "eks" {
  source             = "../../modules/eks"
  name               = local.name
  region             = var.region
  account_id         = data.aws_caller_identity.current.account_id
  private_subnet_ids = module.network.private_subnet_ids
  kms_key_arn        = module.data.kms_key_arn
  tags               = local.tags
}

module "accounts_role" {
  source            = "../../modules/service_role"
  name              = "${local.name}-accounts"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_provider     = module.eks.oidc_provider
  namespace         = var.namespace
  service_account   = "accounts"
  table_arns        = [module.data.table_arns["accounts"], module.data.table_arns["idempotency"]]
  secret_arns       = [module.data.page_token_secret_arn]
  kms_key_arn       = module.data.kms_key_arn
  tags              = local.tags
}

module "transfers_role" {
  source            = "../../modules/service_role"
  name              = "${local.name}-transfers"
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_provider     = module.eks.oidc_provider
  namespace         = var.namespace
  service_account   = "transfers"
  # CreateTransfer is idempotent through its saga item: no idempotency table here.
  table_arns = [module.data.table_arns["transfers"], module.data.table_arns["activity"]]
  # The saga recovery loop queries the sparse index of unfinished transfers.
  index_arns      = ["${module.data.table_arns["transfers"]}/index/unfinished"]
  send_queue_arns = [module.data.events_queue_arn]
  secret_arns     = [module.data.page_token_secret_arn]
  kms_key_arn     = module.data.kms_key_arn
  tags            = local.tags
}

# The activity-feed consumer (k8s/base/transfers-events): receives the events and
# writes the feed; no saga table, no secret, no sending.
module "transfers_events_role" {
  source             = "../../modules/service_role"
  name               = "${local.name}-transfers-events"
  oidc_provider_arn  = module.eks.oidc_provider_arn
  oidc_provider      = module.eks.oidc_provider
  namespace          = var.namespace
  service_account    = "transfers-events"
  table_arns         = [module.data.table_arns["activity"]]
  receive_queue_arns = [module.data.events_queue_arn]
  kms_key_arn        = module.data.kms_key_arn
  tags               = local.tags
}

module "ecr" {
  source      = "../../modules/ecr"
  name        = "grpc-platform"
  kms_key_arn = module.data.kms_key_arn
  tags        = local.tags
}
