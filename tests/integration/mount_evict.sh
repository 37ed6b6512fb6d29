#!/usr/bin/env bash
# A small cache budget: reading more than the budget evicts least recently used blocks (holes
# punched in the cache files, rows marked uncached), the index stays within budget once files
# are no longer in use, and everything read again is refetched and byte-identical (an evicted
# block is never served as zeros).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
sshd_start

SRC=$T/src MNT=$T/mnt CACHE=$T/cache
mkdir -p "$MNT"
"$GEN_TREE" --seed 11 --files 1500 --big-mib 24 "$SRC" >/dev/null
chmod 755 "$T"
BUDGET=$((4 << 20))
counter() { HOME=$T_HOME "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }

HOME=$T_HOME "$OFFLOAD_BIN" mount "offload-test:$SRC" "$MNT" --cache-dir "$CACHE" \
	--cache-size $BUDGET || fail "mount"
wait_mounted "$MNT" 10 || fail "mount did not appear"

cmp "$SRC/big.bin" "$MNT/big.bin" || fail "first read of big.bin differs"
# read every small file: big.bin leaves the set of files in use, its blocks become evictable
(cd "$SRC" && find . -type f ! -name big.bin -print0 | sort -z) >"$T/list"
(cd "$MNT" && xargs -0 cat <"$T/list" | sha256sum) >"$T/got"
(cd "$SRC" && xargs -0 cat <"$T/list" | sha256sum) >"$T/want"
cmp -s "$T/want" "$T/got" || fail "small files differ"
sleep 1 # the flusher evicts within 200 ms of a batch
cached=$(counter cached_bytes)
fetched=$(counter bytes_fetched)
[[ $fetched -gt $((BUDGET * 4)) ]] || fail "expected more than 4x the budget fetched, got $fetched"
punched=$(du -sk "$CACHE/data" | cut -f1)
t_log "fetched $fetched bytes, index says $cached cached, cache files use ${punched} KiB on disk"
[[ $cached -le $((BUDGET + (2 << 20))) ]] ||
	fail "cached bytes $cached stay above the budget $BUDGET (+2 MiB of files still in use)"
[[ $punched -le $(((BUDGET + (8 << 20)) / 1024)) ]] ||
	fail "cache files use ${punched} KiB on disk: holes were not punched"
pass "cache held to the budget: $cached bytes cached, ${punched} KiB on disk, $fetched fetched"

# read big.bin again: its evicted blocks come back from the server, never as holes
sync
echo 3 >/proc/sys/vm/drop_caches
before=$(counter bytes_fetched)
cmp "$SRC/big.bin" "$MNT/big.bin" || fail "big.bin differs after eviction"
after=$(counter bytes_fetched)
[[ $((after - before)) -ge $((16 << 20)) ]] ||
	fail "expected evicted blocks of big.bin refetched, fetched $((after - before))"
[[ $(counter verify_failures) == 0 ]] || fail "cached blocks failed their hash"
pass "evicted blocks are refetched ($((after - before)) bytes) and byte-identical"

pid=$(HOME=$T_HOME "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o '"pid":[0-9]*' | cut -d: -f2)
fusermount3 -u "$MNT"
wait_unmounted "$MNT" 10 || fail "unmount"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done # index closed
ic=$(sqlite3 "$CACHE/index.db" 'PRAGMA integrity_check' 2>&1)
[[ $ic == ok ]] || fail "index integrity: $ic"
pass "index integrity ok"
