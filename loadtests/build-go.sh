#!/usr/bin/env bash
# Builds one of the benchmark's small Go programs (main.go, standard library only) into a cache outside git,
# one directory per version of its source (~/.cache/berth/NAME-<hash of main.go and go.mod>, or $ENV_VAR):
# rebuilt only when main.go or go.mod change. Prints the binary's path.
# Usage: build-go.sh DIR NAME ENV_VAR "WHAT (for the build message)"
set -euo pipefail
here=$(cd "$1" && pwd)
name=$2
hash=$(cat "$here/main.go" "$here/go.mod" | sha256sum | cut -c1-12)
bin=${!3:-$HOME/.cache/berth/$name-$hash}
if [ ! -x "$bin/$name" ]; then
  mkdir -p "$bin"
  echo "building $4 into $bin ..." >&2
  (cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$bin/$name.tmp" .)
  mv "$bin/$name.tmp" "$bin/$name"
fi
echo "$bin/$name"
