#!/usr/bin/env bash
# Builds the floor server (main.go) into ~/.cache/berth/floor-<hash> (BERTH_FLOOR_BIN); prints its path.
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/../build-go.sh" "$here" floor BERTH_FLOOR_BIN "the floor server"
