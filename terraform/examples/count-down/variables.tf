variable "region" {
  description = "AWS region to deploy the example to."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as eu-west-1."
  }
}

variable "name" {
  description = "Name of the example deployment (function, state machine, queues)."
  type        = string
  default     = "pydantic-graph-s3-count-down"

  validation {
    condition     = can(regex("^[A-Za-z0-9_-]{1,40}$", var.name))
    error_message = "name must be 1 to 40 letters, digits, hyphens or underscores."
  }
}

variable "lambda_zip_path" {
  description = "Deployment package built as the README describes (the library and its dependencies for the chosen architecture)."
  type        = string
  default     = "build/count-down.zip"

  validation {
    condition     = endswith(var.lambda_zip_path, ".zip")
    error_message = "lambda_zip_path must point to a .zip file."
  }
}

variable "lambda_architecture" {
  description = "Instruction set of the function; must match the wheels in the deployment package."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be x86_64 or arm64."
  }
}
