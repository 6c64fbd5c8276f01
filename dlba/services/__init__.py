"""Virtual services on the proxy side (seed 002): which service and pool a request belongs to,
which client class sent it, and the per-pool queue that protects the higher classes when the
pool is full. Pure cores (routing, classes, tokens, pool_queue) and the glue the proxy calls
(runtime)."""
