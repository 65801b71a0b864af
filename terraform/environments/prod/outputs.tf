output "cluster_name" {
  description = "aws eks update-kubeconfig --name <this>"
  value       = module.eks.cluster_name
}

output "ecr_repository_url" {
  description = "Push the image here; put its digest in k8s/overlays/prod."
  value       = module.ecr.repository_url
}

output "service_role_arns" {
  description = "Put on the ServiceAccounts (eks.amazonaws.com/role-arn) in k8s/overlays/prod."
  value = {
    accounts           = module.accounts_role.role_arn
    transfers          = module.transfers_role.role_arn
    "transfers-events" = module.transfers_events_role.role_arn
  }
}

output "lb_controller_role_arn" {
  description = "Role of the AWS Load Balancer Controller's ServiceAccount."
  value       = module.eks.lb_controller_role_arn
}

output "table_names" {
  description = "DynamoDB table names (the services' configuration)."
  value       = module.data.table_names
}

output "events_queue_url" {
  description = "URL of the event queue."
  value       = module.data.events_queue_url
}

output "region" {
  description = "AWS region of the environment, for `aws eks update-kubeconfig --region`."
  value       = var.region
}
