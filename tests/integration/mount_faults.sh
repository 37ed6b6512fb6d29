#!/usr/bin/env bash
# The server dies mid-read: the read fails with EIO within the operation timeout (never hangs),
# cached files stay readable, and once the server is back the same mount works again without a
# remount. SIGTERM unmounts cleanly.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
sshd_start

SRC=$T/src MNT=$T/mnt
mkdir -p "$MNT"
"$GEN_TREE" --seed 3 --files 200 --big-mib 64 "$SRC" >/dev/null
chmod 755 "$T"
OPT=2 # --op-timeout, seconds

HOME=$T_HOME "$OFFLOAD_BIN" mount "offload-test:$SRC" "$MNT" --cache-dir "$T/cache" \
	--op-timeout $OPT --attr-ttl 1 || fail "mount"
wait_mounted "$MNT" 10 || fail "mount did not appear"
pid=$(HOME=$T_HOME "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o '"pid":[0-9]*' | cut -d: -f2)
[[ -n $pid ]] || fail "no pid in the counters"

# warm the listing, a small file and the first 8 MiB of the big one
ls -R "$MNT" >"$T/listing" || fail "listing"
small=$(cd "$SRC" && find . -type f -size +1k -print -quit)
cmp "$SRC/$small" "$MNT/$small" || fail "small file differs"
dd if="$MNT/big.bin" of="$T/head" bs=1M count=8 status=none
cmp "$T/head" <(head -c 8M "$SRC/big.bin") || fail "head of big.bin differs"

# the server goes away (listener and session processes)
sshd_kill_all
t0=$(date +%s.%N)
rc=0
dd if="$MNT/big.bin" of=/dev/null bs=1M skip=40 count=4 status=none 2>"$T/err" || rc=$?
el=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
[[ $rc -ne 0 ]] || fail "a read of uncached data with the server gone succeeded"
grep -q "Input/output error" "$T/err" || fail "expected EIO, got '$(cat "$T/err")'"
awk -v e="$el" -v b="$OPT" 'BEGIN { exit !(e <= 2 * b + 2) }' ||
	fail "the failing read took ${el}s, bound is 2 x op-timeout ($OPT s) + 2 s"
pass "uncached read with the server gone: EIO after ${el}s (op-timeout ${OPT}s)"

sleep 1.5 # past the metadata TTL: what the index knows must still be served
cmp "$SRC/$small" "$MNT/$small" || fail "cached small file unreadable while the server is gone"
cmp "$T/head" <(head -c 8M "$MNT/big.bin") || fail "cached part of big.bin unreadable"
ls -R "$MNT" >"$T/listing2" 2>"$T/err" || fail "listing failed while the server is gone: $(cat "$T/err")"
cmp "$T/listing" "$T/listing2" || fail "listing differs while the server is gone"
pass "cached files stay readable while the server is gone"

# the server comes back: the same mount resumes
sshd_restart
ok=0
for _ in $(seq 40); do
	if cmp -s "$SRC/big.bin" "$MNT/big.bin" 2>/dev/null; then ok=1; break; fi
	sleep 0.5
done
[[ $ok == 1 ]] || fail "the mount did not recover after the server came back"
rec=$(HOME=$T_HOME "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o '"reconnects":[0-9]*' | cut -d: -f2)
[[ $rec -ge 1 ]] || fail "expected at least one reconnect, counter says $rec"
tree_equal "$SRC" "$MNT" || fail "tree differs after recovery"
pass "the mount reconnected by itself ($rec reconnects) and serves the whole tree again"

# the link stalls (sshd stopped, listener and sessions, TCP still up): a read of a new file fails
# within the bound, cached data (with expired metadata) is still served, and all recovers on resume
printf 'more\n' >>"$SRC/$small"
printf 'new file\n' >"$SRC/fresh-file"
sleep 1.5
stopped="$SSHD_PID $(_t_descendants "$SSHD_PID")"
kill -STOP $stopped
t0=$(date +%s.%N)
rc=0
cat "$MNT/fresh-file" >/dev/null 2>"$T/err" || rc=$?
el=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
[[ $rc -ne 0 ]] || fail "a new file was read while the server was stopped"
grep -q "Input/output error" "$T/err" || fail "expected EIO, got '$(cat "$T/err")'"
awk -v e="$el" -v b="$OPT" 'BEGIN { exit !(e <= 2 * b + 2) }' ||
	fail "a lookup with the server stopped took ${el}s"
head -c 8M "$MNT/big.bin" | cmp -s - "$T/head" || fail "cached data not served while stalled"
kill -CONT $stopped
pass "a stalled server bounds reads of new data (EIO after ${el}s); cached data still served"
ok=0
for _ in $(seq 60); do
	if cmp -s "$SRC/$small" "$MNT/$small" && cmp -s "$SRC/fresh-file" "$MNT/fresh-file"; then ok=1; break; fi
	sleep 0.5
done
[[ $ok == 1 ]] || fail "changes made during the stall not visible after it"
pass "after the stall, server-side changes are visible"

# SIGTERM: clean unmount, daemon gone
kill -TERM "$pid"
wait_unmounted "$MNT" 10 || fail "SIGTERM did not unmount"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$pid" 2>/dev/null || fail "mountd still running after SIGTERM"
pass "SIGTERM unmounts and exits"
