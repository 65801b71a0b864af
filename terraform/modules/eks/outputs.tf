output "cluster_name" {
  description = "Name of the cluster (aws eks update-kubeconfig --name ...)."
  value       = aws_eks_cluster.this.name
}

output "oidc_provider_arn" {
  description = "ARN of the IAM OIDC provider (IRSA)."
  value       = aws_iam_openid_connect_provider.this.arn
}

output "oidc_provider" {
  description = "OIDC issuer without https://."
  value       = local.oidc_provider
}

output "lb_controller_role_arn" {
  description = "Role of the AWS Load Balancer Controller's ServiceAccount."
  value       = aws_iam_role.lb_controller.arn
}
