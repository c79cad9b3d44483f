output "bucket_name" {
  description = "Bucket holding the count-down runs."
  value       = module.count_down.bucket_name
}

output "function_name" {
  description = "Worker function; invoke it with {\"action\": \"start\", ...} to start a run."
  value       = module.count_down.function_name
}

output "state_machine_arn" {
  description = "Start an execution with {\"run_id\": \"...\"} to drive a started run to its end."
  value       = module.count_down.state_machine_arn
}

output "queue_url" {
  description = "Queue whose messages advance runs through the worker."
  value       = module.count_down.queue_url
}
