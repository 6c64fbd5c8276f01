# DLBA node / demo back end / client image, built by `docker compose build` (docker-compose.yml)
# FROM a base made offline with debootstrap (docker/base-image.sh): no registry image.
# Two stages: the compilers (clang/llvm for the BPF object, gcc + mypyc for the request path)
# stay in `build`; the image that runs holds Python, the venv and the built files only.
ARG BASE=dlba-base:bookworm

FROM ${BASE} AS build
# clang/llvm/libbpf-dev: the BPF object (scheduler/bpf/dlba_tc.c) for this image's kernel
# headers; libssl-dev: the TLS ticket callback in C (dlba/tls/ticket_cb.c); libnghttp2-dev:
# HTTP/2's engine (dlba/proxy/nghttp2_ext.c, a CPython extension: without it the node speaks
# HTTP/1.1 only); gcc + python3-dev + mypy: the request path compiled by mypyc (build_native.py).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev clang llvm libbpf-dev libssl-dev \
      libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
# The base image trusts the host's CA certificates; pip reads the system bundle.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
WORKDIR /opt/dlba
# Dependencies first, in a layer that changes only with pyproject.toml.
COPY pyproject.toml ./
RUN python3 -m venv /opt/venv \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
 && pip install -q -r /tmp/requirements.txt 'mypy>=1.10' 'setuptools>=68'
COPY dlba ./dlba
COPY scheduler ./scheduler
COPY build_native.py ./
RUN clang -O2 -g -target bpf -I/usr/include/$(gcc -print-multiarch) \
      -c scheduler/bpf/dlba_tc.c -o scheduler/bpf/dlba_tc.o \
 && clang -O2 -Wall -shared -fPIC -o dlba/tls/_ticket_cb.so dlba/tls/ticket_cb.c -lcrypto \
 && clang -O2 -Wall -shared -fPIC -I"$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
      -o "dlba/proxy/_nghttp2$(python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')" \
      dlba/proxy/nghttp2_ext.c dlba/proxy/nghttp2_callbacks.c dlba/proxy/nghttp2_request.c \
      dlba/proxy/nghttp2_response.c -lnghttp2 \
 && pip install -q --no-deps --no-build-isolation -e . \
 && python -c 'from dlba.proxy import nghttp2_engine as ng; assert ng.available()' \
 && python build_native.py >/dev/null \
 && pip uninstall -q -y mypy

FROM ${BASE}
# iproute2: the VIP on lo; procps: sysctl; curl: healthcheck, client; libssl3: the ticket
# callback's libcrypto; libnghttp2-14: HTTP/2's engine.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 iproute2 procps curl libssl3 libnghttp2-14 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/dlba /opt/dlba
# Last, so an edit of the scripts does not rebuild the compiled code.
COPY docker /opt/dlba/docker
WORKDIR /opt/dlba
# Certificates live in a volume shared by the array (made once by the `certs` service).
ENV PATH=/opt/venv/bin:$PATH DLBA_CERTS=/certs DLBA_CONFIG=/etc/dlba/cluster.toml
EXPOSE 80 443 9000
ENTRYPOINT ["/opt/dlba/docker/entrypoint.sh"]
