# DLBA node / demo back end / client image. Built by `docker compose build` (docker-compose.yml).
FROM python:3.11-slim-bookworm

# iproute2: the VIP on lo, tc for the eBPF data plane; clang/llvm/libbpf-dev: build the BPF
# object (scheduler/bpf/dlba_tc.c) for this image's kernel headers; libssl-dev: the TLS ticket
# callback in C (dlba/tls_ticket_cb.c); gcc + mypy: the request path compiled by mypyc
# (build_native.py); curl: healthcheck, client.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      iproute2 procps curl clang llvm libbpf-dev libssl-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dlba
COPY pyproject.toml ./
COPY dlba ./dlba
COPY scheduler ./scheduler
COPY docker ./docker
COPY build_native.py ./
RUN clang -O2 -g -target bpf -I/usr/include/$(gcc -print-multiarch) \
      -c scheduler/bpf/dlba_tc.c -o scheduler/bpf/dlba_tc.o \
 && clang -O2 -Wall -shared -fPIC -o dlba/_tls_ticket_cb.so dlba/tls_ticket_cb.c -lcrypto \
 && pip install --no-cache-dir -e . 'mypy>=1.10' \
 && python build_native.py >/dev/null \
 && chmod +x docker/entrypoint.sh

# Certificates live in a volume shared by the array (made once by the `certs` service).
ENV DLBA_CERTS=/certs DLBA_CONFIG=/etc/dlba/cluster.toml
EXPOSE 80 443 9000
ENTRYPOINT ["/opt/dlba/docker/entrypoint.sh"]
