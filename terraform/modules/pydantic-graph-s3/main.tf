data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  function_name      = var.name
  state_machine_name = var.name

  # Built from its parts, not read from aws_sfn_state_machine: the state machine's own role must be allowed to
  # start it, and the role has to exist before the state machine does.
  state_machine_arn = "arn:${local.partition}:states:${local.region}:${local.account_id}:stateMachine:${local.state_machine_name}"

  bucket_arn      = aws_s3_bucket.runs.arn
  run_objects_arn = "${aws_s3_bucket.runs.arn}/${var.s3_prefix}*"
  # Only the endpoint self-check (verify_endpoint=True) deletes, and only its own probe objects.
  probe_objects_arn = "${aws_s3_bucket.runs.arn}/${var.s3_prefix}.conditional-write-probe-*"
  # The function's timeout bounds every step, so a claim older than it (plus a margin for clock skew) belongs
  # to a dead invocation: the worker takes such a step over (PYDANTIC_GRAPH_S3_RECLAIM_AFTER).
  reclaim_after_seconds = var.lambda_timeout + 60
  lambda_log_group      = "/aws/lambda/${local.function_name}"
  # The /aws/vendedlogs/ prefix keeps Step Functions' log delivery clear of the resource policy size limit.
  state_machine_log_group = "/aws/vendedlogs/states/${local.state_machine_name}"
}
