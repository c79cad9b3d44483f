resource "aws_cloudwatch_log_group" "state_machine" {
  #checkov:skip=CKV_AWS_158:CloudWatch Logs encrypts at rest by default; a customer managed key is used when log_kms_key_arn is set.
  name              = local.state_machine_log_group
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "state_machine_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }

    # Only this state machine, in this account, may assume the role (confused deputy protection).
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = [local.state_machine_arn]
    }
  }
}

resource "aws_iam_role" "state_machine" {
  name               = "${var.name}-state-machine"
  assume_role_policy = data.aws_iam_policy_document.state_machine_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "state_machine" {
  statement {
    sid       = "InvokeWorker"
    actions   = ["lambda:InvokeFunction"]
    resources = [aws_lambda_function.worker.arn, "${aws_lambda_function.worker.arn}:*"]
  }

  statement {
    # Continuing a long run in a fresh execution of this same state machine.
    sid       = "ContinueAsNewExecution"
    actions   = ["states:StartExecution"]
    resources = [local.state_machine_arn]
  }

  statement {
    # Step Functions delivers logs through the CloudWatch Logs vended-log APIs, which take no resource ARNs.
    sid = "DeliverLogs"
    actions = [
      "logs:CreateLogDelivery",
      "logs:GetLogDelivery",
      "logs:UpdateLogDelivery",
      "logs:DeleteLogDelivery",
      "logs:ListLogDeliveries",
      "logs:PutResourcePolicy",
      "logs:DescribeResourcePolicies",
      "logs:DescribeLogGroups",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "state_machine" {
  #checkov:skip=CKV_AWS_111:The vended-log delivery actions (logs:*LogDelivery, PutResourcePolicy) do not support resource-level permissions; AWS documents "*" for them.
  #checkov:skip=CKV_AWS_356:Same statement: the log delivery actions accept only "*" as resource.
  #checkov:skip=CKV_AWS_290:Same statement: the write actions of log delivery accept only "*" as resource.
  name   = "invoke-worker-and-continue"
  role   = aws_iam_role.state_machine.id
  policy = data.aws_iam_policy_document.state_machine.json
}

resource "aws_iam_role_policy_attachment" "state_machine_xray" {
  count      = var.enable_tracing ? 1 : 0
  role       = aws_iam_role.state_machine.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}

resource "aws_sfn_state_machine" "runner" {
  #checkov:skip=CKV_AWS_285:Execution data carries the worker's results (graph output, error text), so it is opt-in via state_machine_log_execution_data; the execution history keeps it regardless.
  name     = local.state_machine_name
  role_arn = aws_iam_role.state_machine.arn
  type     = "STANDARD"
  tags     = var.tags

  definition = templatefile("${path.module}/state_machine.asl.json", {
    function_arn                 = aws_lambda_function.worker.arn
    busy_wait_seconds            = var.busy_wait_seconds
    max_iterations_per_execution = var.max_iterations_per_execution
    # The Task outlives the function's own timeout a little, so Lambda reports the timeout, not Step Functions.
    task_timeout_seconds = var.lambda_timeout + 30
  })

  logging_configuration {
    log_destination        = "${aws_cloudwatch_log_group.state_machine.arn}:*"
    include_execution_data = var.state_machine_log_execution_data
    level                  = var.state_machine_log_level
  }

  tracing_configuration {
    enabled = var.enable_tracing
  }

  lifecycle {
    postcondition {
      condition     = self.arn == local.state_machine_arn
      error_message = "The state machine ARN differs from the one its role was granted states:StartExecution on."
    }
  }

  depends_on = [aws_iam_role_policy.state_machine]
}
