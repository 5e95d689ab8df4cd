#!/usr/bin/env bash
# A LISTENing client receives the JSON payload of a live membership change.
set -uo pipefail
q() { timeout 120 psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
check() { if [ "$2" = "$3" ]; then echo "ok $1"; else echo "not ok $1: expected '$3', got '$2'"; fi; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
q -c "SET client_min_messages = warning" -c "SELECT count(*) FROM segment_demo(600, 4, date_trunc('day', now()), 'nt')" \
  -c "SELECT count(*) FROM segment_users('nt_orders', model => 'nt', options => '{\"events\": \"nt_events\", \"live\": \"sync\"}')" >/dev/null
user=$(q -c "SELECT min(user_id) FROM nt_personas WHERE persona = 'lapsed'")
{ echo "LISTEN segment_changes;"; sleep 4; echo "SELECT 1;"; } | timeout 60 psql -X -q > "$work/listener" 2>&1 &
sleep 1
q -c "INSERT INTO nt_orders (user_id, created_at, amount, category)
      SELECT $user, date_trunc('day', now()) - g * interval '2 days' + interval '8 hours', 10 + g % 15, (ARRAY['grocery', 'beauty'])[1 + g % 2]
      FROM generate_series(1, 50) g" >/dev/null
wait
payload=$(grep -o 'with payload "[^"]*' "$work/listener" | head -1)
check "a listener is told about the change" "$(grep -c 'notification "segment_changes"' "$work/listener")" "1"
check "the payload names the model, the user and the reason" \
  "$(sed -n 's/.*with payload "\(.*\)" received.*/\1/p' "$work/listener" | python3 -c 'import json,sys; p=json.loads(sys.stdin.read()); print(p["model"], p["reason"], p["changes"][0]["user"], p["changes"][0]["from"] != p["changes"][0]["to"])')" \
  "nt order $user True"
