#!/usr/bin/env bash
# Builds the floor server (main.go, standard library only) into a cache outside git, one directory per
# version of its source (BERTH_FLOOR_BIN, default ~/.cache/berth/floor-<hash>): rebuilt only when main.go
# or go.mod change. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hash=$(cat "$here/main.go" "$here/go.mod" | sha256sum | cut -c1-12)
bin=${BERTH_FLOOR_BIN:-$HOME/.cache/berth/floor-$hash}
if [ ! -x "$bin/floor" ]; then
  mkdir -p "$bin"
  echo "building the floor server into $bin ..." >&2
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/floor.tmp" .)
  mv "$bin/floor.tmp" "$bin/floor"
fi
echo "$bin/floor"
