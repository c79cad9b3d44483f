"""pydantic-graph state persistence in Amazon S3, with compare-and-swap writes."""
