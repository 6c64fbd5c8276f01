"""A pool's `health` path is the health check of each of its back ends that names none itself
(each pool has its own health check, HAProxy's `option httpchk` per backend section)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from dlba.config.model import BackendConfig
from dlba.config.services import PoolConfig


def with_pool_health(backends: Sequence[BackendConfig], pools: Sequence[PoolConfig]
                     ) -> tuple[BackendConfig, ...]:
    paths = {p.name: p.health for p in pools if p.health}
    return tuple(dataclasses.replace(b, health=paths[b.pool])
                 if not b.health and b.pool in paths else b for b in backends)
