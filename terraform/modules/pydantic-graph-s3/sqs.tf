resource "aws_sqs_queue" "dead_letters" {
  #checkov:skip=CKV2_AWS_73:SQS-managed encryption (SSE-SQS) is on; a customer managed key would also have to be granted to the Lambda role and every producer.
  count                     = var.enable_sqs ? 1 : 0
  name                      = "${var.name}-steps-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
  tags                      = var.tags
}

resource "aws_sqs_queue" "steps" {
  #checkov:skip=CKV2_AWS_73:SQS-managed encryption (SSE-SQS) is on; a customer managed key would also have to be granted to the Lambda role and every producer.
  count = var.enable_sqs ? 1 : 0
  name  = "${var.name}-steps"
  # AWS advises at least six times the function timeout, so a batch being retried is not redelivered meanwhile.
  visibility_timeout_seconds = max(30, 6 * var.lambda_timeout)
  sqs_managed_sse_enabled    = true
  tags                       = var.tags

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dead_letters[0].arn
    maxReceiveCount     = var.sqs_max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "dead_letters" {
  count     = var.enable_sqs ? 1 : 0
  queue_url = aws_sqs_queue.dead_letters[0].id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.steps[0].arn]
  })
}

resource "aws_lambda_event_source_mapping" "steps" {
  count            = var.enable_sqs ? 1 : 0
  event_source_arn = aws_sqs_queue.steps[0].arn
  function_name    = aws_lambda_function.worker.arn
  batch_size       = var.sqs_batch_size
  # One failed run in a batch must not make the whole batch, runs that succeeded included, come back.
  function_response_types = ["ReportBatchItemFailures"]

  depends_on = [aws_iam_role_policy.lambda]
}
