#!/usr/bin/env bash
# Builds the zero-cost extender (main.go, standard library only) into a cache outside git, one directory per
# version of its source (BERTH_ZEROCOST_BIN, default ~/.cache/berth/zerocost-<hash>): rebuilt only when main.go
# or go.mod change. Prints the binary's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
hash=$(cat "$here/main.go" "$here/go.mod" | sha256sum | cut -c1-12)
bin=${BERTH_ZEROCOST_BIN:-$HOME/.cache/berth/zerocost-$hash}
if [ ! -x "$bin/zerocost" ]; then
  mkdir -p "$bin"
  echo "building the zero-cost extender into $bin ..." >&2
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/zerocost.tmp" .)
  mv "$bin/zerocost.tmp" "$bin/zerocost"
fi
echo "$bin/zerocost"
