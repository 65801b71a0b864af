terraform {
  required_version = ">= 1.5"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.60"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }
  # State in S3 with locking; bucket, key and table come from
  # `terraform init -backend-config=backend.hcl` (README, Deploy to EKS).
  backend "s3" {}
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      project     = "grpc-platform"
      environment = var.environment
    }
  }
}
