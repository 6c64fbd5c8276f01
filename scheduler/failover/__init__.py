"""The failover daemon of patent 003, Fig. 9: Elect Scheduler and Failover/Synch Daemon.

`election` is the pure rule, `heartbeat` the ping's pure codec and `heartbeat_udp` its socket,
`server_heartbeats` the scheduler's verdict on its servers, `sync_messages` the typed table-sync
messages; `agent` is the daemon every node runs (with `peers`, `table_sync`, `routes` and
`front`).
"""
