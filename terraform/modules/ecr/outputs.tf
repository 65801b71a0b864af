output "repository_url" {
  description = "Where to push the image (README, Deploy to EKS)."
  value       = aws_ecr_repository.this.repository_url
}
