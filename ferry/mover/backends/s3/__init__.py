"""S3 and S3-compatible storage: `backend` (the Backend), `session` (what its readers and
writers share), `files` and `multipart` (readers and writers), `meta` (Ferry's metadata in
object metadata), `credentials`, `client` (botocore), `errors`, and `wire/` (the hand-written
HTTP data path, with botocore as its fallback)."""
