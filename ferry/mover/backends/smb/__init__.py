"""SMB2/3 over smbprotocol: `backend` (the Backend), `files` (reader and writer), `errors`, and
`wire/` (hand-written message packing, compounds and connection tuning)."""
