#!/usr/bin/env bash
# Installs what is missing: Debian packages, cargo-pgrx, and pgrx's config for Debian's
# PostgreSQL (no download: `cargo pgrx init` only points at the installed pg_config).
set -euo pipefail
pg_major=$1 pgrx=$2; shift 2
sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo

missing=()
for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -q
    $sudo apt-get install -y -q "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
if ! cargo pgrx --version 2>/dev/null | grep -qx "cargo-pgrx $pgrx"; then
    echo "installing cargo-pgrx $pgrx (a few minutes, once)"
    cargo install cargo-pgrx --version "=$pgrx" --locked
fi
pg_config=/usr/lib/postgresql/$pg_major/bin/pg_config
if ! grep -qs "pg$pg_major = \"$pg_config\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    cargo pgrx init --pg"$pg_major" "$pg_config" >/dev/null
fi
