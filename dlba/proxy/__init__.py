"""The proxy: per-connection core (no I/O), its asyncio shells, and the back-end pool."""
