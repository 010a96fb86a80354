#!/usr/bin/env bash
# Builds the zero-cost extender (main.go) into ~/.cache/berth/zerocost-<hash> (BERTH_ZEROCOST_BIN); prints its path.
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../build-go.sh" "$here" zerocost BERTH_ZEROCOST_BIN "the zero-cost extender"
