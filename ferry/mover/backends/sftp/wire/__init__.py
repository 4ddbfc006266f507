"""SFTP's hand-written protocol code, used only with the accelerators on: `session` (SFTP
framing and pipelining over a paramiko channel; a `sftp.session.Session`) and `ssh_send`
(AES-GCM packet sealing in batches, paramiko-version-guarded)."""
