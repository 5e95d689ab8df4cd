#!/usr/bin/env bash
# Runs a command as root (directly, or through sudo keeping PATH for cargo).
set -euo pipefail
if [ "$(id -u)" = 0 ]; then exec "$@"; fi
exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME,PGRX_HOME "$@"
