"""The node's admin side: the HTTP API (`api`), the dashboard (`dashboard` + `static/`),
Prometheus metrics (`metrics`) and `dlba status` (`status_cli`)."""

from dlba import use_native

use_native(__path__, __name__)
