#!/usr/bin/env bash
# Makes sure Debian's cluster for this major exists and is running.
set -euo pipefail
pg_major=$1
here=$(cd "$(dirname "$0")" && pwd)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "$pg_major main"; then
    "$here/as-root.sh" pg_createcluster "$pg_major" main >/dev/null
fi
if ! pg_lsclusters -h | awk -v v="$pg_major" '$1 == v && $2 == "main" {print $4}' | grep -qx online; then
    "$here/as-root.sh" pg_ctlcluster "$pg_major" main start
fi
