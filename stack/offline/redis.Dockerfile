# Redis from Debian's package, for machines that cannot pull the official redis image. Holds the
# API replicas' shared prediction log. Runs as the package's `redis` user with its data in
# /data (where the official image keeps it); compose passes the server options.
ARG BASE_IMAGE=calops-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && mkdir -p /data \
 && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--dir", "/data"]
