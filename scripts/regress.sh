#!/usr/bin/env bash
# pg_regress golden-file tests (tests/pg_regress) against the installed release build in the
# Debian cluster, with PostgreSQL's own pg_regress run as the postgres user.
# With ACCEPT=1 the results become the new expected files: review the diff before committing.
set -euo pipefail
pg_major=$1
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../tests/pg_regress" && pwd)
work=$(mktemp -d /tmp/pg_segment_regress.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r "$src" "$work/"
mkdir -p "$work/pg_regress/results"
printf '#!/bin/bash\nexec "$@" -v VERBOSITY=terse\n' > "$work/launcher"
chmod 755 "$work/launcher"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$work"
chmod 755 "$work"
tests=$(cd "$src/sql" && ls *.sql | sed 's/\.sql$//' | grep -vx setup | sort)
pg_regress="$("/usr/lib/postgresql/$pg_major/bin/pg_config" --pkglibdir)/pgxs/src/test/regress/pg_regress"
for t in setup $tests; do touch "$work/pg_regress/expected/$t.out"; done
if [ "${ACCEPT:-0}" = 1 ]; then
    "$here/as-postgres.sh" "$pg_regress" --bindir="/usr/lib/postgresql/$pg_major/bin" \
        --inputdir="$work/pg_regress" --outputdir="$work/pg_regress" --dbname=pg_segment_regress \
        --launcher="$work/launcher" setup $tests || true
    for t in setup $tests; do cp "$work/pg_regress/results/$t.out" "$src/../pg_regress/expected/$t.out"; done
    echo "expected files updated: review them with git diff"
    exit 0
fi
if ! "$here/as-postgres.sh" "$pg_regress" --bindir="/usr/lib/postgresql/$pg_major/bin" \
        --inputdir="$work/pg_regress" --outputdir="$work/pg_regress" --dbname=pg_segment_regress \
        --launcher="$work/launcher" setup $tests; then
    cat "$work/pg_regress/regression.diffs" || true
    exit 1
fi
