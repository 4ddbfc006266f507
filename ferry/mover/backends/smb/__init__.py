"""SMB2/3 over smbprotocol: `backend` (the Backend), `share` (the connection and tree its
readers and writers take), `files` (reader and writer), `names`, `errors`, and `wire/`
(hand-written message packing, compounds and connection tuning)."""
