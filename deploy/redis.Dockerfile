# Redis built from the same base as the services (no registry image is needed).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
 && mkdir -p /data && chown redis:redis /data
# One ACL user per service (deploy/redis_acl.py); passwords come from the environment at
# start (never baked into the image).
COPY deploy/redis/users.acl /etc/redis/bastion-users.acl
COPY deploy/redis/start.sh /usr/local/bin/bastion-redis
USER redis
WORKDIR /data
EXPOSE 6379
CMD ["/usr/local/bin/bastion-redis", "--appendonly", "yes", "--dir", "/data", "--bind", "0.0.0.0", \
     "--protected-mode", "no", "--save", ""]
HEALTHCHECK --interval=2s --timeout=2s --retries=15 \
    CMD ["sh", "-c", "REDISCLI_AUTH=\"$REDIS_PASSWORD_HEALTH\" redis-cli --user health ping | grep -q PONG"]
