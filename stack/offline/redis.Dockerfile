# Redis from Debian's package, for machines that cannot pull the official redis image. Holds the
# API replicas' shared prediction log. Runs as `redis` with its data in /data, with the ids of
# the official alpine image (uid 999, gid 1000: compose's `user`), given to the package's user
# after the install (its postinst insists on making the user itself); compose passes the
# server options.
ARG BASE_IMAGE=calops-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && uid=$(id -u redis) gid=$(id -g redis) \
 && groupmod --gid 1000 redis \
 && usermod --uid 999 --gid 1000 redis \
 && find / -xdev \( -user "$uid" -o -group "$gid" \) -exec chown -h redis:redis {} + \
 && mkdir -p /data \
 && chown redis:redis /data
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["redis-server", "--dir", "/data"]
