"""TLS: server and client contexts (`context`), key groups (`groups`), session-ticket keys shared by
the array (`tickets`, with the C callback in `ticket_cb.c`; `openssl_ctx` reaches the SSL_CTX
under Python's ssl for them and for `groups`), the transport the proxy uses
(`transport`), and the project's certificates (`certs`)."""

from dlba import use_native

use_native(__path__, __name__)
