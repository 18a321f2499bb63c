# HAProxy from Debian's package, for machines that cannot pull the official haproxy image: the
# stack's gateway in front of the API replicas. Reads its configuration where the official image
# does (compose mounts stack/gateway there) and runs as `haproxy` with the official image's ids
# (uid and gid 99: compose's `user`), given to the package's user after the install (its
# postinst insists on making the user itself).
ARG BASE_IMAGE=calops-offline/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && uid=$(id -u haproxy) gid=$(id -g haproxy) \
 && groupmod --gid 99 haproxy \
 && usermod --uid 99 --gid 99 haproxy \
 && find / -xdev \( -user "$uid" -o -group "$gid" \) -exec chown -h haproxy:haproxy {} + \
 && mkdir -p /usr/local/etc/haproxy
USER haproxy
EXPOSE 8000
# -W: master-worker, -db: stay in the foreground (what the official image's entrypoint adds).
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
