"""Example graphs used by the demo, the benchmark, the tests and the Terraform example."""
