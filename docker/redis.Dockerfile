# The config bus: Debian's redis-server on the same offline base as the DLBA image
# (docker/base-image.sh), so the compose file needs no registry image.
ARG BASE=dlba-base:bookworm
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
# No config file: every interface (the compose network is private), append-only in /data.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--appendonly", "yes", \
     "--dir", "/data"]
