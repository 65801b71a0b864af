output "role_arn" {
  description = "Put on the service's ServiceAccount (k8s/overlays/prod)."
  value       = aws_iam_role.this.arn
}
