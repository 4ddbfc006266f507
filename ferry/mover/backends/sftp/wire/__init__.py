"""SFTP's hand-written protocol code: `session` (SFTP framing and pipelining over a paramiko
channel) and `ssh_send` (AES-GCM packet sealing in batches, paramiko-version-guarded)."""
