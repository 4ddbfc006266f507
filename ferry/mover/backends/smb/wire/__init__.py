"""SMB's hand-written protocol code: `messages` (packing and bounded parsing of compound
requests), `handles` (file handles driven by those compounds) and `connection` (signing,
light headers and answer checks patched into smbprotocol's connection, version-guarded)."""
