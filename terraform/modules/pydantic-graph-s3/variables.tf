variable "name" {
  description = "Name of the deployment: the Lambda function, the state machine, the queues, roles and log groups are named after it."
  type        = string

  validation {
    # 40 leaves room for the suffixes added to role and queue names (64 and 80 character limits).
    condition     = can(regex("^[A-Za-z0-9_-]{1,40}$", var.name))
    error_message = "name must be 1 to 40 letters, digits, hyphens or underscores."
  }
}

variable "bucket_name" {
  description = "Name of the S3 bucket that stores the runs. Null lets Terraform generate a unique name from var.name."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name: 3 to 63 lowercase letters, digits, dots or hyphens."
  }
}

variable "s3_prefix" {
  description = "Key prefix under which runs are stored (PYDANTIC_GRAPH_S3_PREFIX); the Lambda may only read and write below it."
  type        = string
  default     = "graph-runs/"

  validation {
    # IAM resource ARNs and s3:prefix conditions treat * and ? as wildcards, which would widen the grant.
    condition     = can(regex("^[A-Za-z0-9!_.'()=-][A-Za-z0-9!_.'()=/-]{0,199}/$", var.s3_prefix))
    error_message = "s3_prefix must end with '/', not start with '/', and use only letters, digits and !_.'()=-/ (no * or ?)."
  }
}

variable "force_destroy" {
  description = "Whether `terraform destroy` may delete the bucket while it still holds runs."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "ARN of a customer managed KMS key for SSE-KMS on the bucket. Null keeps SSE-S3 (AES256)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be the ARN of a KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "run_expiration_days" {
  description = "Days after which run objects under s3_prefix expire."
  type        = number
  default     = 30

  validation {
    condition     = var.run_expiration_days >= 1 && floor(var.run_expiration_days) == var.run_expiration_days
    error_message = "run_expiration_days must be a whole number of days, at least 1."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which superseded versions of run objects are deleted. Every step writes a new version, so this bounds the storage a run leaves behind."
  type        = number
  default     = 7

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of days, at least 1."
  }
}

variable "lambda_zip_path" {
  description = "Path to the deployment package (.zip) holding the worker code and its dependencies."
  type        = string

  validation {
    condition     = endswith(var.lambda_zip_path, ".zip")
    error_message = "lambda_zip_path must point to a .zip file."
  }
}

variable "lambda_handler" {
  description = "Lambda handler of the worker, as module.function (for example pydantic_graph_s3.examples.count_down.handler)."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)+$", var.lambda_handler))
    error_message = "lambda_handler must be a dotted Python path ending in the function name, like package.module.handler."
  }
}

variable "lambda_memory_size" {
  description = "Memory of the Lambda function in MB (CPU scales with it)."
  type        = number
  default     = 512

  validation {
    condition     = var.lambda_memory_size >= 128 && var.lambda_memory_size <= 10240 && floor(var.lambda_memory_size) == var.lambda_memory_size
    error_message = "lambda_memory_size must be a whole number from 128 to 10240."
  }
}

variable "lambda_timeout" {
  description = "Timeout of one Lambda invocation (one graph step) in seconds."
  type        = number
  default     = 60

  validation {
    condition     = var.lambda_timeout >= 1 && var.lambda_timeout <= 900 && floor(var.lambda_timeout) == var.lambda_timeout
    error_message = "lambda_timeout must be a whole number from 1 to 900."
  }
}

variable "lambda_architecture" {
  description = "Instruction set of the Lambda function; the deployment package's native wheels must match it."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be x86_64 or arm64."
  }
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrent executions of the Lambda function; -1 leaves it unreserved."
  type        = number
  default     = -1

  validation {
    condition     = var.lambda_reserved_concurrency >= -1 && floor(var.lambda_reserved_concurrency) == var.lambda_reserved_concurrency
    error_message = "lambda_reserved_concurrency must be -1 (unreserved) or a whole number of at least 0."
  }
}

variable "lambda_environment" {
  description = "Extra environment variables of the Lambda function. PYDANTIC_GRAPH_S3_BUCKET and PYDANTIC_GRAPH_S3_PREFIX are set by the module; PYDANTIC_GRAPH_S3_RECLAIM_AFTER defaults to lambda_timeout + 60 (seconds; \"never\" turns crash recovery off)."
  type        = map(string)
  default     = {}

  validation {
    condition     = length(setintersection(keys(var.lambda_environment), ["PYDANTIC_GRAPH_S3_BUCKET", "PYDANTIC_GRAPH_S3_PREFIX"])) == 0
    error_message = "lambda_environment must not set PYDANTIC_GRAPH_S3_BUCKET or PYDANTIC_GRAPH_S3_PREFIX: the module sets them from the bucket it creates."
  }
}

variable "log_retention_days" {
  description = "Retention of the Lambda and state machine log groups, in days."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653)."
  }
}

variable "log_kms_key_arn" {
  description = "ARN of a KMS key to encrypt the log groups with (its key policy must allow CloudWatch Logs). Null uses CloudWatch Logs' own encryption."
  type        = string
  default     = null

  validation {
    condition     = var.log_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.log_kms_key_arn))
    error_message = "log_kms_key_arn must be the ARN of a KMS key (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "enable_tracing" {
  description = "Whether the Lambda function and the state machine send traces to AWS X-Ray."
  type        = bool
  default     = true
}

variable "state_machine_log_level" {
  description = "What the state machine logs: ALL, ERROR, FATAL or OFF."
  type        = string
  default     = "ERROR"

  validation {
    condition     = contains(["ALL", "ERROR", "FATAL", "OFF"], var.state_machine_log_level)
    error_message = "state_machine_log_level must be ALL, ERROR, FATAL or OFF."
  }
}

variable "state_machine_log_execution_data" {
  description = "Whether state machine logs include state inputs and outputs, which carry the worker's results (graph output and errors)."
  type        = bool
  default     = false
}

variable "busy_wait_seconds" {
  description = "Seconds the state machine waits before advancing again when the worker answers busy (another worker holds the run)."
  type        = number
  default     = 5

  validation {
    condition     = var.busy_wait_seconds >= 1 && var.busy_wait_seconds <= 3600 && floor(var.busy_wait_seconds) == var.busy_wait_seconds
    error_message = "busy_wait_seconds must be a whole number from 1 to 3600."
  }
}

variable "max_iterations_per_execution" {
  description = "Loop iterations after which an execution continues the run in a fresh execution. Each iteration costs about 13 history events, up to 37 when every retry is spent, and a Standard workflow stops at 25,000."
  type        = number
  default     = 500

  validation {
    # 600 x 37 events of the worst case, plus the execution's own, stays below 25,000.
    condition     = var.max_iterations_per_execution >= 1 && var.max_iterations_per_execution <= 600 && floor(var.max_iterations_per_execution) == var.max_iterations_per_execution
    error_message = "max_iterations_per_execution must be a whole number from 1 to 600."
  }
}

variable "enable_sqs" {
  description = "Whether to create an SQS queue (with a dead-letter queue) whose messages invoke the Lambda function."
  type        = bool
  default     = false
}

variable "sqs_batch_size" {
  description = "Most messages the Lambda function receives per invocation from the queue."
  type        = number
  default     = 10

  validation {
    condition     = var.sqs_batch_size >= 1 && var.sqs_batch_size <= 10 && floor(var.sqs_batch_size) == var.sqs_batch_size
    error_message = "sqs_batch_size must be a whole number from 1 to 10."
  }
}

variable "sqs_max_receive_count" {
  description = "Receives of a message after which it moves to the dead-letter queue."
  type        = number
  default     = 5

  validation {
    condition     = var.sqs_max_receive_count >= 1 && var.sqs_max_receive_count <= 1000 && floor(var.sqs_max_receive_count) == var.sqs_max_receive_count
    error_message = "sqs_max_receive_count must be a whole number from 1 to 1000."
  }
}

variable "tags" {
  description = "Tags added to every resource that takes tags."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key, value in var.tags : length(key) >= 1 && length(key) <= 128 && length(value) <= 256])
    error_message = "tags must have keys of 1 to 128 characters and values of at most 256."
  }
}
