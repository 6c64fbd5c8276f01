"""The proxy: per-connection core (no I/O), its asyncio shells, and the back-end pool."""

from dlba import use_native

use_native(__path__, __name__)
