#!/usr/bin/env bash
# offload mount against a real OpenSSH sshd: a generated tree (10k small files, block-edge sizes,
# a 256 MiB file, odd names, symlinks) read through the mount must equal the source byte for byte
# and stat field for stat field; parallel readers agree; a remount reuses the block cache (proved
# by the byte counters); a file changed on the server between mounts is fetched anew.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
sshd_start

SRC=$T/src MNT=$T/mnt CACHE=$T/cache
mkdir -p "$MNT"
"$GEN_TREE" --seed 7 --files 10000 --big-mib 256 "$SRC" >/dev/null
chmod 755 "$T"

counter() { # NAME: one counter of the mount, as a number
	HOME=$T_HOME "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o "\"$1\":[0-9]*" | cut -d: -f2
}
mount_it() {
	HOME=$T_HOME "$OFFLOAD_BIN" mount "offload-test:$SRC" "$MNT" --cache-dir "$CACHE" "$@" ||
		fail "offload mount exited with $?"
	wait_mounted "$MNT" 10 || fail "mount did not appear"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

mount_it
mount | grep "on $MNT type fuse.offload (rw,nosuid,nodev" >/dev/null ||
	fail "mount options: $(mount | grep "$MNT")"
# parallel readers on a cold cache: the same big file (shared fetches) and different files at once
want=$(sha256sum <"$SRC/big.bin" | cut -d' ' -f1)
pids=()
for i in 1 2 3; do
	(sha256sum <"$MNT/big.bin" | cut -d' ' -f1 >"$T/par.$i") &
	pids+=($!)
done
(cd "$MNT" && find . -type f -name '*.js' | sed -n 1,2000p | xargs -d '\n' cat | sha256sum | cut -d' ' -f1 >"$T/par.js") &
pids+=($!)
wait "${pids[@]}" # not a bare wait: sshd is a background job of this shell too
for i in 1 2 3; do assert_eq "$want" "$(cat "$T/par.$i")" "parallel reader $i of big.bin"; done
assert_eq "$(cd "$SRC" && find . -type f -name '*.js' | sed -n 1,2000p | xargs -d '\n' cat | sha256sum | cut -d' ' -f1)" \
	"$(cat "$T/par.js")" "parallel reader of small files"
pass "parallel readers agree with the source"

t_log "comparing the tree (metadata and contents)"
tree_equal "$SRC" "$MNT" || fail "mounted tree differs from the source"
pass "10k-file tree equal byte for byte, with sizes, modes, mtimes and symlink targets"

# every stat field a reader relies on, for a sample of entries (tree_equal covers the rest)
for p in big.bin "dir with space" "$(cd "$SRC" && find . -name '*.txt' -print -quit)"; do
	a=$(cd "$SRC" && stat -c '%F %s %a %u %g %Y' "$p")
	b=$(cd "$MNT" && stat -c '%F %s %a %u %g %Y' "$p")
	assert_eq "$a" "$b" "stat of '$p'"
done
pass "stat fields match"

fetched1=$(counter bytes_fetched)
[[ $fetched1 -ge $((256 << 20)) ]] || fail "expected at least 256 MiB fetched, counter says $fetched1"

# remount: nothing unchanged is fetched again
fusermount3 -u "$MNT"
wait_unmounted "$MNT" 10 || fail "unmount"
drop_caches
mount_it
tree_equal "$SRC" "$MNT" || fail "tree differs after remount"
fetched2=$(counter bytes_fetched)
assert_eq 0 "$fetched2" "bytes fetched after remount for unchanged files"
[[ $(counter cache_hits) -gt 4000 ]] || fail "expected cache hits after remount, got $(counter cache_hits)"
pass "remount served every file from the block cache (0 bytes fetched)"

# a change on the server between mounts is seen, and only that file is fetched
fusermount3 -u "$MNT"
wait_unmounted "$MNT" 10 || fail "unmount"
f=$(cd "$SRC" && find . -type f -size +8k -name '*.js' -print -quit)
[[ -n $f ]] || f=./one-block.bin
printf 'changed on the server\n' >>"$SRC/$f"
head -c 65536 /dev/urandom | dd of="$SRC/big.bin" bs=65536 seek=100 conv=notrunc status=none
touch -d '2001-02-03 04:05:06' "$SRC/big.bin"
drop_caches
mount_it
cmp "$SRC/$f" "$MNT/$f" || fail "changed file '$f' shows old content"
cmp "$SRC/big.bin" "$MNT/big.bin" || fail "changed big.bin shows old content"
fetched3=$(counter bytes_fetched)
size_f=$(stat -c %s "$SRC/$f")
[[ $fetched3 -ge $((size_f + (256 << 20))) ]] ||
	fail "expected the changed files refetched (>= $((size_f + (256 << 20)))), got $fetched3"
tree_equal "$SRC" "$MNT" || fail "tree differs after server-side change"
pass "files changed between mounts are refetched (fetched $fetched3 bytes)"

# the index and the cache files are consistent
pid=$(HOME=$T_HOME "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o '"pid":[0-9]*' | cut -d: -f2)
fusermount3 -u "$MNT"
wait_unmounted "$MNT" 10 || fail "unmount"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done # index closed
ic=$(sqlite3 "$CACHE/index.db" 'PRAGMA integrity_check' 2>&1)
[[ $ic == ok ]] || fail "index integrity: $ic"
pass "index integrity ok after unmount"
