#!/usr/bin/env bash
# Scale-out demo: two bridges (simulated Claude) behind nginx, which routes each session key to
# one bridge with `hash $http_x_session_key consistent`. Sends 2 turns for each of 40 keys
# through nginx, then asks each bridge which keys it holds, and checks that every key lives
# on exactly one bridge and that both bridges got keys. Prints PASS or FAIL; exit code says so.
# Installs nginx from Debian's packages if it is missing. Everything runs on loopback and is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  echo "installing nginx (Debian package)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null 2>&1 \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  else
    sudo apt-get update -qq >/dev/null && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --locked -q
BIN=target/release/synthesis-bridge
work=$(mktemp -d)
pids=()
cleanup() {
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null && echo "LEFT RUNNING: bridge pid $p did not stop on SIGTERM" >&2
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts bridge $1 in this shell (not in a $(...) subshell, which would lose its pid and leave
# it running after the demo) and waits until it listens.
start_bridge() {
  mkdir -p "$work/$1"
  HOME="$work/$1" RUST_LOG=warn "$BIN" serve --demo --port 0 --channel-ws-port 0 --channel-hello-delay 20ms \
    --state-dir "$work/$1/state" --workspace "$work/$1" > "$work/$1/out" 2> "$work/$1/log" &
  pids+=($!)
  for _ in $(seq 1 100); do
    grep -q listening "$work/$1/out" 2>/dev/null && break
    sleep 0.1
  done
}
http_address() {   # $1 = name
  grep -o 'http=[0-9.:]*' "$work/$1/out" | cut -d= -f2
}
start_bridge a
start_bridge b
A=$(http_address a)
B=$(http_address b)
echo "bridge a on $A, bridge b on $B"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/nginx/logs"
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/logs/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream bridges {
    hash \$http_x_session_key consistent;
    server $A;
    server $B;
  }
  server {
    listen 127.0.0.1:$port;
    client_header_timeout 10s;
    location / {
      proxy_pass http://bridges;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
CONF
"$NGINX" -p "$work/nginx" -c "$work/nginx.conf" -g 'daemon on;'
for _ in $(seq 1 50); do [ -f "$work/nginx.pid" ] && break; sleep 0.1; done
echo "nginx on 127.0.0.1:$port"

keys=40
failed=0
for round in 1 2; do
  for i in $(seq 1 $keys); do
    reply=$(curl -sS -m 30 "http://127.0.0.1:$port/v1/chat/completions" \
      -H 'Content-Type: application/json' -H "X-Session-Key: user-$i" \
      -d "{\"messages\":[{\"role\":\"user\",\"content\":\"key $i round $round\"}]}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])' 2>/dev/null || true)
    if [ "$reply" != "key $i round $round" ]; then
      echo "turn $round of user-$i got: $reply"
      failed=$((failed + 1))
    fi
  done
done

sessions_on() { curl -sS "http://$1/v1/sessions" | python3 -c 'import json,sys; print("\n".join(r["key"] for r in json.load(sys.stdin)["data"]))'; }
sessions_on "$A" | sort > "$work/on-a"
sessions_on "$B" | sort > "$work/on-b"
on_a=$(wc -l < "$work/on-a"); on_b=$(wc -l < "$work/on-b")
both=$(comm -12 "$work/on-a" "$work/on-b" | wc -l)
total=$(sort -u "$work/on-a" "$work/on-b" | wc -l)
echo "keys on bridge a: $on_a, on bridge b: $on_b, on both: $both, distinct: $total of $keys; failed turns: $failed"
if [ "$failed" -eq 0 ] && [ "$both" -eq 0 ] && [ "$total" -eq "$keys" ] && [ "$on_a" -gt 0 ] && [ "$on_b" -gt 0 ]; then
  echo "PASS: every key served by exactly one bridge, both bridges used"
else
  echo "FAIL"
  exit 1
fi
