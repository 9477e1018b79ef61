#!/usr/bin/env bash
# herald quick start: install what is missing, build, start the daemon, speak a demo phrase
# into herald-demo.wav with the offline espeak-ng engine (no API key, no network), play it when
# a sound device exists, and stop the daemon.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup
cargo build --release --locked
HERALD=target/release/herald

dir=$(mktemp -d)
sock="$dir/herald.sock"
"$HERALD" serve --listen "unix:$sock" --log-level info &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || { echo "quickstart: the daemon did not start" >&2; exit 1; }

"$HERALD" voices --socket "$sock" --model espeak-ng | head -n 6
"$HERALD" say --socket "$sock" -o herald-demo.wav \
  "Hello! This is herald, your local speech service, speaking offline with e speak N G."

if [ -s /proc/asound/cards ] && ! grep -q "no soundcards" /proc/asound/cards && command -v aplay >/dev/null; then
  aplay -q herald-demo.wav || echo "quickstart: could not play (no usable sound device)" >&2
else
  echo "quickstart: no sound card here; listen to herald-demo.wav elsewhere" >&2
fi
echo "quickstart: done: $(pwd)/herald-demo.wav"
