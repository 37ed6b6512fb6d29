#!/usr/bin/env bash
# The WAN emulator (tools/wanrelay.c) measured by its own echo server and clients on loopback:
# the round trip it adds (2 x --delay-ms), its bandwidth cap (one stream, and two streams sharing
# the link), half-close (every --send ends with a FIN each way), its byte counters and queue bound
# in the --stats JSON, 50 concurrent connections, a clean exit on SIGINT and SIGTERM, and its
# errors. Timing bounds are those of issue 3 (within 10%, never better than the setting); a
# relay that does not delay or does not cap fails them by far.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

: "${WANRELAY:=$(_t_default_bin wanrelay)}"
[[ -x $WANRELAY ]] || fail "no wanrelay at '$WANRELAY' (set WANRELAY)"
t_setup

DELAY_MS=25
RATE_MBIT=40

# start_listener NAME ARGS...: run "$WANRELAY ARGS..." in the background, stderr to $T/NAME.err,
# wait for its "listening on 127.0.0.1:PORT" line; sets LPID and LPORT.
start_listener() {
	local name=$1 line="" deadline=$((SECONDS + 10))
	shift
	"$WANRELAY" "$@" 2>"$T/$name.err" &
	LPID=$!
	t_track "$LPID"
	until line=$(grep -m1 -o 'listening on 127\.0\.0\.1:[0-9]*' "$T/$name.err"); do
		kill -0 "$LPID" 2>/dev/null || fail "$name exited at start: $(cat "$T/$name.err")"
		((SECONDS < deadline)) || fail "$name not listening after 10 s: $(cat "$T/$name.err")"
		sleep 0.05
	done
	LPORT=${line##*:}
}

# field KEY LINE: the value of KEY=VALUE in a client's output line.
field() {
	local v
	v=$(tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p")
	[[ -n $v ]] || fail "no '$1=' in client output '$2'"
	echo "$v"
}

# json_num FILE KEY: the number KEY holds in the stats JSON FILE.
json_num() {
	local v
	v=$(grep -o "\"$2\": [0-9.]*" "$1" | cut -d' ' -f2)
	[[ -n $v ]] || fail "no number '$2' in $1: $(cat "$1")"
	echo "$v"
}

# in_range WHAT VALUE LO HI: fail unless LO <= VALUE <= HI (decimals allowed).
in_range() {
	awk -v v="$2" -v lo="$3" -v hi="$4" 'BEGIN { exit !(v >= lo && v <= hi) }' ||
		fail "$1: expected between $3 and $4, got $2"
}

# stats_now PID FILE: have the relay write FILE (SIGUSR1) and wait for it.
stats_now() {
	local deadline=$((SECONDS + 5))
	rm -f "$2"
	kill -USR1 "$1"
	until [[ -s $2 ]]; do
		((SECONDS < deadline)) || fail "no stats in $2 5 s after SIGUSR1"
		sleep 0.02
	done
}

# stats_settled PID FILE: like stats_now, once no connection is open any more (their FINs
# still cross the link for 2 x delay after the clients exit).
stats_settled() {
	local deadline=$((SECONDS + 5))
	while :; do
		stats_now "$1" "$2"
		[[ $(json_num "$2" open) == 0 ]] && return 0
		((SECONDS < deadline)) || fail "relay still has connections open 5 s after its clients: $(cat "$2")"
		sleep 0.05
	done
}

# stop_relay PID SIGNAL NAME: signal the relay and check it exits with status 0.
stop_relay() {
	local rc=0
	kill "-$2" "$1"
	wait "$1" || rc=$?
	assert_eq 0 "$rc" "exit status of $3 after SIG$2"
}

start_listener echo --echo-server 127.0.0.1:0
ECHO_PORT=$LPORT
t_log "echo server on port $ECHO_PORT"

# Loopback alone: the floor the relay's delay adds to.
out=$("$WANRELAY" --ping "127.0.0.1:$ECHO_PORT" --count 20)
t_log "direct: $out"
in_range "median round trip without the relay (ms)" "$(field median_ms "$out")" 0 5

# --- round trip ------------------------------------------------------------------------------
rtt=$((2 * DELAY_MS))
start_listener relay-a --listen 127.0.0.1:0 --connect "127.0.0.1:$ECHO_PORT" \
	--delay-ms "$DELAY_MS" --stats "$T/a.json"
A_PID=$LPID A_PORT=$LPORT
out=$("$WANRELAY" --ping "127.0.0.1:$A_PORT" --count 20) || fail "ping through the relay failed"
t_log "relay --delay-ms $DELAY_MS: $out"
in_range "fastest round trip at --delay-ms $DELAY_MS (ms)" "$(field min_ms "$out")" "$rtt" 1000
in_range "median round trip at --delay-ms $DELAY_MS (ms)" "$(field median_ms "$out")" \
	"$rtt" "$(awk -v r="$rtt" 'BEGIN { print r * 1.1 }')"
pass "round trip through the relay: median $(field median_ms "$out") ms for 2 x $DELAY_MS ms"

# --- 50 concurrent connections ------------------------------------------------------------------
# Ten rounds on 50 connections at once: each echo checked byte for byte, each round trip still
# >= 2 x delay, and the rounds overlap across connections (serialized they would take 25 s).
out=$("$WANRELAY" --ping "127.0.0.1:$A_PORT" --count 10 --parallel 50) ||
	fail "50 concurrent connections through the relay: an echo failed"
t_log "relay, 50 connections: $out"
assert_eq 500 "$(field exchanges "$out")" "exchanges over 50 connections"
in_range "fastest round trip over 50 connections (ms)" "$(field min_ms "$out")" "$rtt" 1000
in_range "10 rounds over 50 connections (ms)" "$(field elapsed_ms "$out")" $((10 * rtt)) 2500
pass "50 concurrent connections echo correctly, in $(field elapsed_ms "$out") ms for 10 rounds"

# Counters: 20 + 500 exchanges of 64 bytes each way over 1 + 50 connections, all closed.
stats_settled "$A_PID" "$T/a.json"
assert_eq 51 "$(json_num "$T/a.json" connections)" "connections counted by relay A"
assert_eq $(((20 + 500) * 64)) "$(json_num "$T/a.json" bytes_up)" "bytes up counted by relay A"
assert_eq $(((20 + 500) * 64)) "$(json_num "$T/a.json" bytes_down)" "bytes down counted by relay A"
stop_relay "$A_PID" INT "relay A"
assert_eq 0 "$(json_num "$T/a.json" open)" "open connections in relay A's final stats"
grep -qx 'wanrelay: 51 connections, 33280 bytes up, 33280 bytes down' "$T/relay-a.err" ||
	fail "relay A's exit line: expected '51 connections, 33280 bytes up, 33280 bytes down', got: $(tail -n 1 "$T/relay-a.err")"
pass "relay A counted 51 connections and 33280 bytes each way, exited cleanly on SIGINT"

# --- bandwidth cap ----------------------------------------------------------------------------
# 20 MB echoed through a 40 Mbit/s link: each direction is capped, so the echo takes at least
# 4 s (plus a round trip). The 1 MiB queue bound must hold and must have been reached: a fast
# sender is held back by TCP, not buffered without limit.
cap_hi=$(awk -v r="$RATE_MBIT" 'BEGIN { print r * 1.005 }') # rounding in the client's clock
cap_lo=$(awk -v r="$RATE_MBIT" 'BEGIN { print r * 0.9 }')
start_listener relay-b --listen 127.0.0.1:0 --connect "127.0.0.1:$ECHO_PORT" \
	--delay-ms "$DELAY_MS" --rate "$RATE_MBIT" --max-buffer 1MiB --stats "$T/b.json"
B_PID=$LPID B_PORT=$LPORT
out=$("$WANRELAY" --send "127.0.0.1:$B_PORT" --bytes 20000000 --timeout 120) ||
	fail "20 MB through the capped relay failed"
t_log "relay --rate $RATE_MBIT, one stream: $out"
assert_eq 20000000 "$(field bytes "$out")" "bytes echoed through the capped relay"
in_range "one stream at --rate $RATE_MBIT (Mbit/s)" "$(field mbit_s "$out")" "$cap_lo" "$cap_hi"
pass "one stream through a $RATE_MBIT Mbit/s link: $(field mbit_s "$out") Mbit/s"

# The cap is the link's, shared by every connection: two streams together stay under it.
out=$("$WANRELAY" --send "127.0.0.1:$B_PORT" --bytes 5000000 --parallel 2 --timeout 120) ||
	fail "2 x 5 MB through the capped relay failed"
t_log "relay --rate $RATE_MBIT, two streams: $out"
assert_eq 10000000 "$(field bytes "$out")" "bytes echoed by two streams"
in_range "two streams together at --rate $RATE_MBIT (Mbit/s)" "$(field mbit_s "$out")" \
	"$cap_lo" "$cap_hi"
pass "two streams share the $RATE_MBIT Mbit/s link: $(field mbit_s "$out") Mbit/s together"

stats_settled "$B_PID" "$T/b.json"
assert_eq 3 "$(json_num "$T/b.json" connections)" "connections counted by relay B"
assert_eq 30000000 "$(json_num "$T/b.json" bytes_up)" "bytes up counted by relay B"
assert_eq 30000000 "$(json_num "$T/b.json" bytes_down)" "bytes down counted by relay B"
in_range "largest queue of relay B (bytes)" "$(json_num "$T/b.json" queue_peak)" 524288 1048576
t_log "relay B peak RSS: $(grep VmHWM "/proc/$B_PID/status" | tr -s ' \t' ' ')"
stop_relay "$B_PID" TERM "relay B"
grep -qx 'wanrelay: 3 connections, 30000000 bytes up, 30000000 bytes down' "$T/relay-b.err" ||
	fail "relay B's exit line: expected '3 connections, 30000000 bytes up, 30000000 bytes down', got: $(tail -n 1 "$T/relay-b.err")"
pass "relay B counted 30000000 bytes each way, queue peak $(json_num "$T/b.json" queue_peak) of 1 MiB"

# --- errors --------------------------------------------------------------------------------------
rc=0
"$WANRELAY" --listen "127.0.0.1:$ECHO_PORT" --connect 127.0.0.1:1 --delay-ms 1 2>"$T/inuse.err" || rc=$?
assert_eq 1 "$rc" "exit status when the listen port is taken"
assert_eq "wanrelay: cannot listen on '127.0.0.1:$ECHO_PORT': address in use" "$(cat "$T/inuse.err")" \
	"error when the listen port is taken"
rc=0
"$WANRELAY" --listen 127.0.0.1:0 --connect "127.0.0.1:$ECHO_PORT" 2>"$T/usage.err" || rc=$?
assert_eq 2 "$rc" "exit status without --delay-ms"
grep -q '^usage: wanrelay --listen' "$T/usage.err" || fail "no usage line without --delay-ms: $(cat "$T/usage.err")"
rc=0
"$WANRELAY" --listen 127.0.0.1:0 --connect "127.0.0.1:$ECHO_PORT" --delay-ms soon 2>"$T/bad.err" || rc=$?
assert_eq 2 "$rc" "exit status for --delay-ms soon"
grep -qx "wanrelay: invalid --delay-ms 'soon'" "$T/bad.err" || fail "error for --delay-ms soon: $(cat "$T/bad.err")"

# A server that refuses: the client's connection ends, the relay says why and keeps running.
start_listener relay-c --listen 127.0.0.1:0 --connect 127.0.0.1:1 --delay-ms 1
C_PID=$LPID C_PORT=$LPORT
if out=$("$WANRELAY" --ping "127.0.0.1:$C_PORT" --count 1 --timeout 10 2>&1); then
	fail "ping through a relay whose server refuses: expected an error, got '$out'"
fi
t_log "ping through a relay to a closed port: $out"
grep -qx "wanrelay: cannot connect to '127.0.0.1:1': connection refused" "$T/relay-c.err" ||
	fail "relay C: expected \"cannot connect to '127.0.0.1:1': connection refused\", got: $(cat "$T/relay-c.err")"
kill -0 "$C_PID" 2>/dev/null || fail "relay C exited after a refused connection"
stop_relay "$C_PID" TERM "relay C"
pass "errors: taken port, usage, bad value, refused server (relay keeps running)"

# --quiet: nothing on stderr, start or exit; the stats file names the port it picked.
"$WANRELAY" --quiet --listen 127.0.0.1:0 --connect "127.0.0.1:$ECHO_PORT" --delay-ms 1 \
	--stats "$T/q.json" 2>"$T/quiet.err" &
Q_PID=$!
t_track "$Q_PID"
q_port="" deadline=$((SECONDS + 10))
until q_port=$(ss -Htlnp 2>/dev/null | grep "pid=$Q_PID," | grep -o "127\.0\.0\.1:[0-9]*" | cut -d: -f2) &&
	[[ -n $q_port ]]; do
	kill -0 "$Q_PID" 2>/dev/null || fail "quiet relay exited at start: $(cat "$T/quiet.err")"
	((SECONDS < deadline)) || fail "quiet relay not listening after 10 s"
	sleep 0.05
done
stats_now "$Q_PID" "$T/q.json"
grep -q "\"listen\": \"127.0.0.1:$q_port\"" "$T/q.json" || fail "stats of the quiet relay do not name port $q_port: $(cat "$T/q.json")"
out=$("$WANRELAY" --ping "127.0.0.1:$q_port" --count 3) || fail "ping through the quiet relay failed"
in_range "median round trip at --delay-ms 1 (ms)" "$(field median_ms "$out")" 2 20
stop_relay "$Q_PID" TERM "quiet relay"
assert_eq "" "$(cat "$T/quiet.err")" "stderr of a --quiet relay"
assert_eq 1 "$(json_num "$T/q.json" connections)" "connections in the quiet relay's final stats"
pass "--quiet relay: silent, stats at exit, $(field median_ms "$out") ms round trip at 2 x 1 ms"
