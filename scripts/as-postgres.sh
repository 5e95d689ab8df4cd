#!/usr/bin/env bash
# Runs a command as the postgres OS user from /, so peer authentication lets psql in.
set -euo pipefail
cd /
if [ "$(id -u)" = 0 ]; then exec runuser -u postgres -- "$@"; fi
exec sudo -u postgres -- "$@"
