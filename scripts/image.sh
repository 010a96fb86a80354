#!/usr/bin/env bash
# make image: build Berth's container image from nothing but Debian's and PyPI's packages, then serve the
# demo from it and check /readyz answers 200.
#
#   1. two base images made with mmdebstrap (Debian bookworm): a runtime base (python3, its venv module,
#      CA certificates) and a build base (the same plus gcc and Python's headers), imported into podman;
#   2. `podman build` of the Containerfile on those bases (buildah's chroot isolation);
#   3. the image's `berth serve --demo` under podman (runc, cgroupfs), or, where no container runtime can
#      run, the image's root filesystem under unshare + chroot as user 65532; then GET /readyz.
#
# Everything it downloads or builds is kept in $BERTH_IMAGE_CACHE (~/.cache/berth/image): the .deb files,
# the base tarballs, podman's storage (with the build's layer cache) and pip's cache, so a second run
# rebuilds nothing that did not change. Missing tools (mmdebstrap, podman, buildah, runc) are installed with
# apt-get when run as root. Environment:
#   BERTH_IMAGE_CACHE    where to keep all of the above (default ~/.cache/berth/image)
#   BERTH_IMAGE_RUN      auto (default: podman, else chroot), podman or chroot: how to run the check
#   BERTH_IMAGE_DRIVER   podman's storage driver: overlay (default) or vfs
#   DEBIAN_MIRROR        default http://deb.debian.org/debian
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(awk -F'"' '/^version *=/ {print $2; exit}' "$ROOT/pyproject.toml")
IMAGE=localhost/berth:$VERSION
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${BERTH_IMAGE_CACHE:-$HOME/.cache/berth/image}
RUN_MODE=${BERTH_IMAGE_RUN:-auto}
DRIVER=${BERTH_IMAGE_DRIVER:-overlay}
RUNTIME_PACKAGES=python3,python3-venv,ca-certificates
BUILD_PACKAGES=$RUNTIME_PACKAGES,gcc,libc6-dev,python3-dev
T0=$SECONDS

say() { printf '[image %4ds] %s\n' $((SECONDS - T0)) "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

ensure_tools() {
  local missing=()
  for tool in mmdebstrap podman buildah runc; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return
  if [ "$(id -u)" -ne 0 ]; then
    die "needs ${missing[*]}: sudo apt-get install -y --no-install-recommends mmdebstrap podman buildah runc uidmap"
  fi
  say "installing ${missing[*]} with apt-get"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    mmdebstrap podman buildah runc uidmap golang-github-containers-common >/dev/null
}

# podman and buildah keep their storage in the cache; runc with cgroupfs, since crun refuses a hybrid
# cgroup hierarchy whose v2 half has controllers (as on this machine). The limits stay within the current
# hard ones: raising RLIMIT_NOFILE/NPROC to podman's defaults needs CAP_SYS_RESOURCE, which a sandbox may lack.
configure_podman() {
  local run_root
  run_root=${XDG_RUNTIME_DIR:-/run}/berth-image/$(printf '%s' "$CACHE" | cksum | cut -d' ' -f1)
  mkdir -p "$CACHE/storage" "$CACHE/pip" "$CACHE/debs" "$run_root"
  cat >"$CACHE/storage.conf" <<EOF
[storage]
driver = "$DRIVER"
graphroot = "$CACHE/storage"
runroot = "$run_root/storage"
EOF
  local nofile
  nofile=$(ulimit -Hn)
  { [ "$nofile" = unlimited ] || [ "$nofile" -gt 65536 ]; } && nofile=65536
  cat >"$CACHE/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$run_root/libpod"
[network]
network_backend = "netavark"
EOF
  export CONTAINERS_STORAGE_CONF=$CACHE/storage.conf CONTAINERS_CONF=$CACHE/containers.conf
  export BUILDAH_ISOLATION=chroot
}

# A base image named by what made it (suite, mirror, packages): its root filesystem made once by
# mmdebstrap (a directory in the cache; .deb files shared between the two), then imported into podman.
base_image() {
  local name=$1 packages=$2 key
  key=$(printf '%s\n' "$SUITE" "$MIRROR" "$packages" | cksum | cut -d' ' -f1)
  local image=localhost/berth-base-$name:$SUITE-$key dir=$CACHE/base-$name-$SUITE-$key
  if podman image exists "$image"; then echo "$image"; return; fi
  if [ ! -d "$dir" ]; then
    say "mmdebstrap $SUITE ($name: $packages)"
    mmdebstrap --variant=minbase --include="$packages" --skip=essential/unlink \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
      --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives/" \
      --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs" \
      "$SUITE" "$dir.part" "$MIRROR" >"$CACHE/mmdebstrap-$name.log" 2>&1 \
      || { tail -20 "$CACHE/mmdebstrap-$name.log" >&2; die "mmdebstrap $name"; }
    mv "$dir.part" "$dir"
  fi
  say "podman import $image"
  tar -C "$dir" --numeric-owner -c . | podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$image" >/dev/null
  echo "$image"
}

build() {
  local base build_base
  base=$(base_image runtime "$RUNTIME_PACKAGES")
  build_base=$(base_image build "$BUILD_PACKAGES")
  # The host's CA bundle for the build stage's pip, where the host has one (see PIP_CERT in Containerfile).
  local ca=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt} ca_args=()
  [ -f "$ca" ] && ca_args=(--volume "$ca:/run/berth-build-ca.crt:ro" --build-arg PIP_CERT=/run/berth-build-ca.crt)
  say "podman build $IMAGE (BASE_IMAGE=$base)"
  podman build --layers --pull=never -f "$ROOT/Containerfile" -t "$IMAGE" \
    --build-arg BASE_IMAGE="$base" --build-arg BUILD_IMAGE="$build_base" --build-arg VERSION="$VERSION" \
    --volume "$CACHE/pip:/root/.cache/pip" "${ca_args[@]}" "$ROOT" >"$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; die "podman build (log: $CACHE/build.log)"; }
  say "built $IMAGE: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'), user $(podman image inspect --format '{{.Config.User}}' "$IMAGE")"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# GET /readyz until it answers 200 (or the server dies, or 60 s pass); prints the status seen last.
wait_ready() {
  local port=$1 pid_check=$2
  python3 - "$port" "$pid_check" <<'EOF'
import subprocess, sys, time, urllib.error, urllib.request
port, check = sys.argv[1], sys.argv[2]
deadline, status = time.monotonic() + 60, "no answer"
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            status = str(r.status)
    except urllib.error.HTTPError as e:
        status = str(e.code)
    except OSError:
        pass
    if status == "200" or subprocess.run(["sh", "-c", check]).returncode != 0:
        break
    time.sleep(0.3)
print(status)
EOF
}

serve_podman() {
  local port=$1 name=berth-image-check-$$
  podman rm -f "$name" >/dev/null 2>&1 || true
  podman run -d --name "$name" --network host --read-only "$IMAGE" serve --demo --host 127.0.0.1 \
    --port "$port" >/dev/null 2>"$CACHE/run.err" || return 1
  local status uid
  status=$(wait_ready "$port" "[ \"\$(podman inspect -f '{{.State.Running}}' $name)\" = true ]")
  uid=$(podman exec "$name" id -u 2>/dev/null || echo '?')
  podman logs "$name" >"$CACHE/serve.log" 2>&1 || true
  podman rm -f "$name" >/dev/null 2>&1 || true
  [ "$status" = 200 ] || die "the image's berth serve --demo: /readyz $status (log: $CACHE/serve.log)"
  say "podman run $IMAGE serve --demo: GET /readyz 200 (uid $uid, read-only root)"
}

# The image's root filesystem, unpacked, run as the image's user in its own mount and pid namespaces.
serve_chroot() {
  local port=$1 rootfs=$CACHE/rootfs ctr
  rm -rf "$rootfs" && mkdir -p "$rootfs"
  ctr=$(podman create "$IMAGE")
  podman export "$ctr" | tar -x -C "$rootfs"
  podman rm "$ctr" >/dev/null
  unshare --mount --pid --fork --kill-child=SIGTERM --mount-proc="$rootfs/proc" \
    chroot --userspec=65532:65532 "$rootfs" /usr/bin/env -i PATH=/opt/berth/bin:/usr/bin:/bin HOME=/nonexistent \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 berth serve --demo --host 127.0.0.1 --port "$port" \
    >"$CACHE/serve.log" 2>&1 &
  local pid=$! status
  status=$(wait_ready "$port" "kill -0 $pid")
  # unshare blocks SIGTERM while it waits for its child: stop the server itself (chroot and env exec it).
  kill $(ps -o pid= --ppid "$pid") 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ "$status" = 200 ] || die "the rootfs's berth serve --demo under chroot: /readyz $status (log: $CACHE/serve.log)"
  say "chroot $rootfs (uid 65532) berth serve --demo: GET /readyz 200"
}

serve() {
  local port
  port=$(free_port)
  case $RUN_MODE in
    podman) serve_podman "$port" || die "podman run: $(cat "$CACHE/run.err")" ;;
    chroot) serve_chroot "$port" ;;
    auto)
      if ! serve_podman "$port"; then
        say "podman cannot run a container here ($(tail -1 "$CACHE/run.err")); running the rootfs under chroot"
        serve_chroot "$port"
      fi ;;
    *) die "BERTH_IMAGE_RUN=$RUN_MODE: auto, podman or chroot" ;;
  esac
}

ensure_tools
configure_podman
build
serve
say "done: $IMAGE built and served the demo in $((SECONDS - T0)) s"
