resource "aws_cloudwatch_log_group" "lambda" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts at rest by default; a customer managed key is used when log_kms_key_arn is set.
  name              = local.lambda_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "${var.name}-worker"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "lambda" {
  statement {
    sid       = "ReadWriteRunObjects"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = [local.run_objects_arn]
  }

  statement {
    # verify_endpoint=True writes a probe object beside the runs and deletes it: delete is granted on probes only,
    # so the function can never delete a run.
    sid       = "DeleteEndpointProbes"
    actions   = ["s3:DeleteObject"]
    resources = [local.probe_objects_arn]
  }

  statement {
    # Listing lets S3 answer 404 rather than 403 for a run that does not exist, but only below the prefix.
    sid       = "ListRunObjects"
    actions   = ["s3:ListBucket"]
    resources = [local.bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.s3_prefix}*"]
    }
  }

  statement {
    # The log group is created by Terraform, so the function needs no logs:CreateLogGroup.
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:*"]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "UseBucketKeyThroughS3"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [statement.value]

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["s3.${local.region}.amazonaws.com"]
      }
    }
  }

  dynamic "statement" {
    for_each = var.enable_sqs ? [aws_sqs_queue.steps[0].arn] : []

    content {
      sid       = "ConsumeStepQueue"
      actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ChangeMessageVisibility"]
      resources = [statement.value]
    }
  }
}

resource "aws_iam_role_policy" "lambda" {
  name   = "run-objects-and-logs"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

resource "aws_iam_role_policy_attachment" "lambda_xray" {
  # The AWS managed policy, so the inline policy never needs a "*" resource (X-Ray has no resource ARNs).
  count      = var.enable_tracing ? 1 : 0
  role       = aws_iam_role.lambda.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

resource "aws_lambda_function" "worker" {
  #checkov:skip=CKV_AWS_116:Invoked synchronously by Step Functions and through an SQS event source mapping, which has its own dead-letter queue; an async DLQ would never receive anything.
  #checkov:skip=CKV_AWS_117:The worker only talks to S3 and CloudWatch over public AWS endpoints; a VPC would add NAT or endpoint cost and cold-start latency for no reachable private resource.
  #checkov:skip=CKV_AWS_173:The environment holds only the bucket name, prefix and reclaim delay, no secrets; Lambda encrypts it at rest with an AWS managed key.
  #checkov:skip=CKV_AWS_272:Code signing needs an AWS Signer profile the deployer owns; the module takes a prebuilt zip.
  function_name                  = local.function_name
  description                    = "Advances pydantic-graph runs stored in s3://${aws_s3_bucket.runs.id}/${var.s3_prefix} one step per invocation."
  role                           = aws_iam_role.lambda.arn
  runtime                        = "python3.12"
  handler                        = var.lambda_handler
  filename                       = var.lambda_zip_path
  source_code_hash               = filebase64sha256(var.lambda_zip_path)
  memory_size                    = var.lambda_memory_size
  timeout                        = var.lambda_timeout
  architectures                  = [var.lambda_architecture]
  reserved_concurrent_executions = var.lambda_reserved_concurrency
  tags                           = var.tags

  environment {
    # The reclaim delay is a default lambda_environment may override ("never" turns crash recovery off).
    variables = merge({ PYDANTIC_GRAPH_S3_RECLAIM_AFTER = tostring(local.reclaim_after_seconds) }, var.lambda_environment, {
      PYDANTIC_GRAPH_S3_BUCKET = aws_s3_bucket.runs.id
      PYDANTIC_GRAPH_S3_PREFIX = var.s3_prefix
    })
  }

  tracing_config {
    mode = var.enable_tracing ? "Active" : "PassThrough"
  }

  # The log group must exist first, or Lambda creates one without retention on the first invocation.
  depends_on = [aws_cloudwatch_log_group.lambda, aws_iam_role_policy.lambda]
}
