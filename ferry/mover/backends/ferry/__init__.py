"""The `ferry://` backend: a client of `ferry serve` (HTTP/1.1 over mutual TLS 1.3)."""
