"""`ferry serve`: the receiving (and sending) end of a `ferry://` wire, rooted at one
directory. It imports `ferry.mover` only: a thin RPC front over a LocalBackend."""
