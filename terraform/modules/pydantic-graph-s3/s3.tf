resource "aws_s3_bucket" "runs" {
  #checkov:skip=CKV_AWS_18:Access logging needs a second, separately governed log bucket; left to the account's logging setup (CloudTrail data events).
  #checkov:skip=CKV_AWS_144:Run state is short-lived (expires after run_expiration_days); cross-region replication would double every compare-and-swap write for no recovery need.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; the state machine and the queue drive the runs.
  #checkov:skip=CKV_AWS_145:SSE-S3 is the documented default; SSE-KMS is used when kms_key_arn is set.
  bucket        = var.bucket_name
  bucket_prefix = var.bucket_name == null ? substr(replace(lower("${var.name}-runs-"), "_", "-"), 0, 37) : null
  force_destroy = var.force_destroy
  tags          = var.tags
}

resource "aws_s3_bucket_ownership_controls" "runs" {
  bucket = aws_s3_bucket.runs.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "runs" {
  bucket = aws_s3_bucket.runs.id

  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "runs" {
  bucket = aws_s3_bucket.runs.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "runs" {
  bucket = aws_s3_bucket.runs.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.kms_key_arn == null ? "AES256" : "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    # S3 Bucket Keys cut the KMS requests that every step's read and write would otherwise make.
    bucket_key_enabled = var.kms_key_arn != null
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "runs" {
  bucket = aws_s3_bucket.runs.id

  # Lifecycle rules on a versioned bucket act on versions; wait for versioning so the first rules see it.
  depends_on = [aws_s3_bucket_versioning.runs]

  rule {
    id     = "expire-runs"
    status = "Enabled"

    filter {
      prefix = var.s3_prefix
    }

    expiration {
      days = var.run_expiration_days
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }
  }

  rule {
    # The Days rule removes a delete marker only once it is old enough itself; this one as soon as it is all that is left.
    id     = "remove-expired-delete-markers"
    status = "Enabled"

    filter {
      prefix = var.s3_prefix
    }

    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    # Bucket-wide: an upload cut short anywhere is billed until aborted.
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"

    filter {}

    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.runs.arn, "${aws_s3_bucket.runs.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "runs" {
  bucket = aws_s3_bucket.runs.id
  policy = data.aws_iam_policy_document.bucket.json

  # S3 rejects bucket policies while the public access block is being changed.
  depends_on = [aws_s3_bucket_public_access_block.runs]
}
