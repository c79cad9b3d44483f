module "count_down" {
  source = "../../modules/pydantic-graph-s3"

  name           = var.name
  lambda_handler = "pydantic_graph_s3.examples.count_down.handler"
  # The example is disposable: destroy may empty the bucket.
  force_destroy = true

  lambda_zip_path     = var.lambda_zip_path
  lambda_architecture = var.lambda_architecture
  lambda_memory_size  = 256
  lambda_timeout      = 30

  s3_prefix           = "count-down/"
  run_expiration_days = 7
  log_retention_days  = 365

  enable_sqs = true
}
