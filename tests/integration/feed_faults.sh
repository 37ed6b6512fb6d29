#!/usr/bin/env bash
# The change feed under faults: the link between mount and endpoint is cut (a relay killed) and
# restored; a file is replaced over and over while the mount reads it; the agent is killed.
#   - link cut: the mount notices, falls back to TTL caching (feed_live false), cached files stay
#     readable; laptop changes made meanwhile appear after the link heals (resubscribe, snapshot)
#   - replaced while read: every 64 KiB block a reader gets is all of one version, never mixed
#   - agent killed: the mount reports the loss and keeps serving cached data
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
T_HOME=$T/home
mkdir -p "$T_HOME"

SRC=$T/laptop/src EP=$T/ep MNT=$T/mnt
mkdir -p "$SRC/d" "$MNT"
for i in $(seq 20); do printf 'file %d\n' "$i" >"$SRC/d/f$i"; done
head -c $((4 << 20)) /dev/zero | tr '\0' a >"$T/A"
head -c $((4 << 20)) /dev/zero | tr '\0' b >"$T/B"
cp "$T/A" "$SRC/flip.bin"

"$OFFLOAD_BIN" serve "$SRC" --details "$EP" -v >"$T/serve.out" 2>"$T/serve.err" &
serve_pid=$!
t_track $serve_pid
for _ in $(seq 100); do [[ -f $EP/ssh_config ]] && break; sleep 0.1; done
[[ -f $EP/ssh_config ]] || fail "offload serve wrote no details: $(cat "$T/serve.err")"
port=$(sed -n 's/^ *Port //p' "$EP/ssh_config")

# a relay in the path, so the link can be cut without touching either end
rport=$((20000 + RANDOM % 20000))
relay() { relay_start "$rport" "127.0.0.1:$port" 0; }
relay
sed "s/^ *Port .*/  Port $rport/; s#UserKnownHostsFile .*#UserKnownHostsFile $T/known_hosts#" \
	"$EP/ssh_config" >"$T/ssh_config"
sed "s/\]:$port /]:$rport /" "$EP/known_hosts" >"$T/known_hosts"

counter() { "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o "\"$1\":[a-z0-9]*" | cut -d: -f2; }
wait_counter() { # NAME VALUE SECS
	local i
	for i in $(seq $(($3 * 10))); do
		[[ $(counter "$1") == "$2" ]] && return 0
		sleep 0.1
	done
	fail "$1 did not become $2 within $3 s (is $(counter "$1"))"
}
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$T/ssh_config" offload-endpoint:/src "$MNT" \
	--cache-dir "$T/cache" --attr-ttl 1 --op-timeout 2 || fail "offload mount failed"
wait_mounted "$MNT" 10 || fail "mount did not appear"
assert_eq true "$(counter feed_live)" "feed live after mount"
cat "$MNT"/d/f1 "$MNT"/d/f2 >/dev/null

# --- the link cut and restored -----------------------------------------------------------------
kill -9 $RELAY_PID
wait $RELAY_PID 2>/dev/null || true
wait_counter feed_live false 15
assert_eq "file 1" "$(cat "$MNT/d/f1")" "a cached file while the link is down"
printf 'changed while down\n' >"$SRC/d/f1"
rm "$SRC/d/f3"
printf 'born while down\n' >"$SRC/d/new"
relay
wait_counter feed_live true 20
for _ in $(seq 50); do tree_equal "$SRC" "$MNT" >/dev/null 2>&1 && break; sleep 0.1; done
tree_equal "$SRC" "$MNT" || fail "the mount did not converge after the feed came back"
grep -q "change feed lost" "$T/home/.cache/offload" 2>/dev/null || true
pass "link cut: TTL fallback with cached reads, resubscribed after healing, changes made meanwhile arrived"

# --- a file replaced over and over while the mount reads it ----------------------------------------
(
	for _ in $(seq 30); do
		cp "$T/B" "$SRC/.flip.tmp" && mv "$SRC/.flip.tmp" "$SRC/flip.bin" && sleep 0.05
		cp "$T/A" "$SRC/.flip.tmp" && mv "$SRC/.flip.tmp" "$SRC/flip.bin" && sleep 0.05
	done
) &
flipper=$!
mkdir -p "$T/chunks"
reads=0 errors=0
while kill -0 $flipper 2>/dev/null; do
	rm -f "$T/chunks"/*
	if ! cat "$MNT/flip.bin" >"$T/read.bin" 2>"$T/cat.err"; then
		errors=$((errors + 1))
		cat "$T/cat.err" >>"$T/cat.errors"
		continue
	fi
	split -b 65536 "$T/read.bin" "$T/chunks/c"
	for c in "$T/chunks"/c*; do
		first=$(head -c 1 "$c")
		[[ $first == a || $first == b ]] || fail "a block of neither version (starts with '$first')"
		if [[ $(tr -d "$first" <"$c" | wc -c) != 0 ]]; then
			cp "$T/read.bin" "$T/mixed.read"
			pure=$T/A; [[ $first == b ]] && pure=$T/B
			fail "a block mixing two versions: $(basename "$c"): $(cmp "$c" "$pure" 2>&1 | head -1)"
		fi
	done
	reads=$((reads + 1))
done
wait $flipper
((reads > 0)) || fail "no read completed while the file was being replaced"
for _ in $(seq 50); do cmp -s "$SRC/flip.bin" "$MNT/flip.bin" && break; sleep 0.1; done
if ! cmp "$SRC/flip.bin" "$MNT/flip.bin"; then
	# which copy is stale: the kernel's pages, or mountd's cache (O_DIRECT reads bypass the pages)
	dd if="$MNT/flip.bin" of="$T/direct.bin" bs=1M iflag=direct 2>/dev/null || true
	fail "flip.bin differs after the replacements stopped (laptop starts with $(head -c 1 "$SRC/flip.bin"),\
 the mount with $(head -c 1 "$MNT/flip.bin"), an O_DIRECT read with $(head -c 1 "$T/direct.bin");\
 counters: $("$OFFLOAD_BIN" inspect --json "$MNT" | grep -o '"late_invalidations":[0-9]*\|"feed_batches":[0-9]*\|"changed_underneath":[0-9]*' | tr '\n' ' '))"
fi
pass "a file replaced 60 times during $reads whole reads ($errors failed: $(sort -u "$T/cat.errors" 2>/dev/null | tr '\n' ' ')): every block of one version"

# --- the agent killed ---------------------------------------------------------------------------
kill -9 $serve_pid
wait $serve_pid 2>/dev/null || true
wait_counter feed_live false 15
assert_eq "file 2" "$(cat "$MNT/d/f2")" "a cached file after the agent died"
fusermount3 -u "$MNT"
pass "agent killed: the feed is reported lost, cached files stay readable, unmount is clean"
