#!/usr/bin/env bash
# Makes sure Debian's cluster for this major exists and is running the installed binaries.
set -euo pipefail
pg_major=$1
here=$(cd "$(dirname "$0")" && pwd)
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' | grep -qx "$pg_major main"; then
    "$here/as-root.sh" pg_createcluster "$pg_major" main >/dev/null
fi
status() { pg_lsclusters -h | awk -v v="$pg_major" '$1 == v && $2 == "main" {print $'"$1"'}'; }
if [ "$(status 4)" = online ]; then
    # A server started before apt upgraded the package keeps the old binary, and then fails to
    # load the new version's libraries (plpgsql: "undefined symbol"). Restart it on the new one.
    installed=$(/usr/lib/postgresql/"$pg_major"/bin/postgres --version | sed 's/^postgres (PostgreSQL) //')
    running=$("$here/as-postgres.sh" psql -p "$(status 3)" -XAtc 'SHOW server_version')
    if [ "$installed" != "$running" ]; then
        echo "restarting the cluster: it runs $running, the installed binaries are $installed"
        "$here/as-root.sh" pg_ctlcluster "$pg_major" main restart
    fi
else
    "$here/as-root.sh" pg_ctlcluster "$pg_major" main start
fi
