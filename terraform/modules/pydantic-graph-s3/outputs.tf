output "bucket_name" {
  description = "Name of the bucket that stores the runs (PYDANTIC_GRAPH_S3_BUCKET)."
  value       = aws_s3_bucket.runs.id
}

output "bucket_arn" {
  description = "ARN of the bucket that stores the runs."
  value       = aws_s3_bucket.runs.arn
}

output "s3_prefix" {
  description = "Key prefix of the runs (PYDANTIC_GRAPH_S3_PREFIX)."
  value       = var.s3_prefix
}

output "function_name" {
  description = "Name of the worker Lambda function."
  value       = aws_lambda_function.worker.function_name
}

output "function_arn" {
  description = "ARN of the worker Lambda function."
  value       = aws_lambda_function.worker.arn
}

output "lambda_role_arn" {
  description = "ARN of the worker's execution role, for granting it more (for example KMS on other keys)."
  value       = aws_iam_role.lambda.arn
}

output "state_machine_arn" {
  description = "ARN of the state machine that advances a run until it ends; start it with {\"run_id\": \"...\"}."
  value       = aws_sfn_state_machine.runner.arn
}

output "state_machine_name" {
  description = "Name of the state machine."
  value       = aws_sfn_state_machine.runner.name
}

output "queue_url" {
  description = "URL of the SQS queue whose messages invoke the worker; null unless enable_sqs."
  value       = var.enable_sqs ? aws_sqs_queue.steps[0].url : null
}

output "queue_arn" {
  description = "ARN of the SQS queue whose messages invoke the worker; null unless enable_sqs."
  value       = var.enable_sqs ? aws_sqs_queue.steps[0].arn : null
}

output "dead_letter_queue_url" {
  description = "URL of the dead-letter queue; null unless enable_sqs."
  value       = var.enable_sqs ? aws_sqs_queue.dead_letters[0].url : null
}

output "lambda_log_group_name" {
  description = "Log group of the worker Lambda function."
  value       = aws_cloudwatch_log_group.lambda.name
}

output "state_machine_log_group_name" {
  description = "Log group of the state machine."
  value       = aws_cloudwatch_log_group.state_machine.name
}
