"""S3's hand-written data path: `api` (signed requests, pipelining, listings) over `http`
(a lean HTTP/1.1 connection). Everything here has a botocore fallback in the package above."""
