#!/usr/bin/env bash
# Write-back through the mount (docs/writeback.md), against `offload serve` with the feed and
# against a plain OpenSSH sshd (standalone): the project's POSIX suite and the fsx-style exerciser
# run on the mount, the laptop copy checked byte for byte; tar x and git clone into the mount;
# mountd killed with journaled operations that could not be sent (link cut) sends them after a
# remount.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
T_HOME=$T/home
mkdir -p "$T_HOME"
: "${POSIXSUITE:=$(dirname "$OFFLOAD_BIN")/posixsuite}"
: "${FSX:=$(dirname "$OFFLOAD_BIN")/fsx}"

SRC=$T/laptop/src EP=$T/ep MNT=$T/mnt
mkdir -p "$SRC" "$MNT"
"$OFFLOAD_BIN" serve "$SRC" --details "$EP" >"$T/serve.out" 2>"$T/serve.err" &
t_track $!
for _ in $(seq 100); do [[ -f $EP/ssh_config ]] && break; sleep 0.1; done
[[ -f $EP/ssh_config ]] || fail "offload serve wrote no details: $(cat "$T/serve.err")"
port=$(sed -n 's/^ *Port //p' "$EP/ssh_config")
counter() { "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o "\"$1\":[a-z0-9]*" | cut -d: -f2; }
mount_ep() { # CONFIG CACHE
	HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$1" offload-endpoint:/src "$MNT" --cache-dir "$2" \
		2>"$T/mount.err" || fail "offload mount failed: $(cat "$T/mount.err")"
	wait_mounted "$MNT" 10 || fail "mount did not appear"
}

# Known gaps, by rule (docs/writeback.md): RENAME_EXCHANGE is EINVAL and fallocate EOPNOTSUPP
# (the suite skips those); nothing may fail.
posix_check() { # LABEL
	"$POSIXSUITE" "$MNT" >"$T/posix.out" 2>&1 || true
	grep -q '^# .* ok' "$T/posix.out" || fail "$1: posixsuite did not run: $(tail -3 "$T/posix.out")"
	if grep -q '^FAIL' "$T/posix.out"; then
		fail "$1: posixsuite failures: $(grep '^FAIL' "$T/posix.out" | tr '\n' ';')"
	fi
	pass "$1: posixsuite $(tail -1 "$T/posix.out" | tr -d '#')"
}

# --- with the feed -----------------------------------------------------------------------------
mount_ep "$EP/ssh_config" "$T/cache"
assert_eq true "$(counter feed_live)" "feed live"
posix_check "feed"
printf 'one\n' >"$MNT/hl-a"
ln "$MNT/hl-a" "$MNT/hl-b"
printf 'two\n' >>"$MNT/hl-b"
sync "$MNT/hl-b" # fsync: waits until the write-back of the file is done
assert_eq "$(stat -c %i "$MNT/hl-a")" "$(stat -c %i "$MNT/hl-b")" "inode of the two names in the mount"
assert_eq "$(stat -c %i "$SRC/hl-a" 2>&1)" "$(stat -c %i "$SRC/hl-b" 2>&1)" "inode of the two names on the laptop"
assert_eq 2 "$(stat -c %h "$SRC/hl-a")" "link count on the laptop"
assert_eq "one two" "$(tr '\n' ' ' <"$SRC/hl-a" | sed 's/ $//')" "content through the other name, on the laptop"
rm "$MNT/hl-a"
sync "$MNT/hl-b"
for _ in $(seq 50); do [[ ! -e $SRC/hl-a ]] && break; sleep 0.1; done
[[ ! -e $SRC/hl-a && -f $SRC/hl-b ]] || fail "unlink of one name: the laptop has $(ls "$SRC" | grep hl-)"
assert_eq 1 "$(stat -c %h "$MNT/hl-b")" "link count in the mount after unlinking one name"
pass "feed: a hard link made in the mount is a hard link on the laptop; unlinking one name keeps the other"
fsync_check() { # NAME LAPTOP_DIR: an fsync in the mount is an fsync on the laptop, after the writes
	local f0
	f0=$(counter source_fsyncs)
	printf 'durable\n' >"$MNT/durable.txt"
	sync "$MNT/durable.txt" # fsync
	assert_eq $((f0 + 1)) "$(counter source_fsyncs)" "fsyncs the laptop side carried out for one fsync in the mount"
	assert_eq durable "$(cat "$2/durable.txt")" "the fsynced file on the laptop side"
	# a file made on the laptop, read-only, opened read-only: the write-back keeps no handle of
	# it, and must not ask for a writable one
	# (immutable where the file system can say so: then not even root may open it for writing)
	printf 'ro\n' >"$2/ro.txt"
	chmod 0444 "$2/ro.txt"
	local imm=0
	chattr +i "$2/ro.txt" 2>/dev/null && imm=1
	for _ in $(seq 50); do [[ -f $MNT/ro.txt ]] && break; sleep 0.1; done
	local rc=0
	python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.fsync(fd)' "$MNT/ro.txt" || rc=$?
	((imm == 0)) || chattr -i "$2/ro.txt"
	((rc == 0)) || fail "$1: fsync of a read-only file opened read-only failed (immutable: $imm)"
	assert_eq $((f0 + 2)) "$(counter source_fsyncs)" "laptop-side fsyncs after an fsync of a read-only file"
	assert_eq 0 "$(counter write_back_errors)" "write-back errors after an fsync of a read-only file"
	pass "$1: fsync in the mount returns after the laptop side has synced the file (also one only readable)"
	# a folder: its fsync returns once its entries are on the laptop and the folder is synced
	# there (sftp-server opens a folder read-only as a file, and syncs that handle)
	mkdir "$MNT/dsync"
	printf 'x\n' >"$MNT/dsync/f"
	mv "$MNT/dsync/f" "$MNT/dsync/g"
	sync "$MNT/dsync" # fsync of the folder
	[[ -f $2/dsync/g && ! -e $2/dsync/f ]] || fail "$1: the folder's entries on the laptop after its fsync: $(ls "$2/dsync")"
	assert_eq $((f0 + 3)) "$(counter source_fsyncs)" "laptop-side fsyncs after an fsync of a folder"
	sync "$MNT" # the mount's top folder
	assert_eq $((f0 + 4)) "$(counter source_fsyncs)" "laptop-side fsyncs after an fsync of the top folder"
	assert_eq 0 "$(counter write_back_errors)" "write-back errors after folder fsyncs"
	pass "$1: fsync of a folder in the mount returns after the laptop side has synced the folder"
}
fsync_check feed "$SRC"

# The endpoint tags a mount's own changes (OWN) for that mount only: a second mount of the same
# export sees the first one's write as any change.
MNT2=$T/mnt2
mkdir -p "$MNT2"
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$EP/ssh_config" offload-endpoint:/src "$MNT2" --cache-dir "$T/cache-b" \
	2>"$T/mount-b.err" || fail "second mount failed: $(cat "$T/mount-b.err")"
wait_mounted "$MNT2" 10 || fail "second mount did not appear"
echoes0=$(counter feed_echoes)
printf 'written by the container\n' >"$MNT/both.txt"
sync "$MNT/both.txt"
for _ in $(seq 50); do [[ $(cat "$MNT2/both.txt" 2>/dev/null) == "written by the container" ]] && break; sleep 0.1; done
assert_eq "written by the container" "$(cat "$MNT2/both.txt" 2>&1)" "the container's write, in the second mount"
for _ in $(seq 50); do (($(counter feed_echoes) > echoes0)) && break; sleep 0.1; done
(($(counter feed_echoes) > echoes0)) || fail "the container's write never came back as its echo"
# a laptop edit right after (well within the 5 s an older agent's echo window would cover)
printf 'edited on the laptop!!!!\n' >"$SRC/both.txt" # same size
for _ in $(seq 30); do [[ $(cat "$MNT/both.txt") == "edited on the laptop!!!!" ]] && break; sleep 0.1; done
assert_eq "edited on the laptop!!!!" "$(cat "$MNT/both.txt")" "a laptop edit right after the container's write, in the mount"
for _ in $(seq 30); do [[ $(cat "$MNT2/both.txt") == "edited on the laptop!!!!" ]] && break; sleep 0.1; done
assert_eq "edited on the laptop!!!!" "$(cat "$MNT2/both.txt")" "the laptop edit, in the second mount"
fusermount3 -u "$MNT2"
pass "feed: own writes come back as echoes (OWN), to a second mount as changes; a laptop edit right after reaches both"
# a laptop rm and mv right after a container's write to the same files: names are told by
# the endpoint's tags too, no window hides them
printf 'container\n' >"$MNT/rm-me.txt"
printf 'container\n' >"$MNT/mv-me.txt"
sync "$MNT/rm-me.txt" "$MNT/mv-me.txt" # fsync: both are on the laptop now
rm "$SRC/rm-me.txt"
mv "$SRC/mv-me.txt" "$SRC/mv-moved.txt"
for _ in $(seq 30); do
	[[ ! -e $MNT/rm-me.txt && ! -e $MNT/mv-me.txt && -f $MNT/mv-moved.txt ]] && break
	sleep 0.1
done
[[ ! -e $MNT/rm-me.txt ]] || fail "a laptop rm right after the container's write: the mount still has the file"
[[ ! -e $MNT/mv-me.txt && $(cat "$MNT/mv-moved.txt" 2>&1) == container ]] ||
	fail "a laptop mv right after the container's write: the mount has $(ls "$MNT" | grep mv- | tr '\n' ' ')"
pass "feed: a laptop rm and mv right after a container's write to the same files reach the mount at once"
# A big file written through the mount while no other mount follows the export: the agent hashes
# it once it is quiet, not at every batch of the write (feed_agent.c, only_writer_follows). A
# laptop edit before that hash and one after it both reach the mount, byte for byte.
head -c $((8 << 20)) /dev/urandom >"$T/big.src"
dd if="$T/big.src" of="$MNT/big.bin" bs=256k conv=fsync status=none || fail "writing the big file failed"
cmp "$T/big.src" "$SRC/big.bin" || fail "the big file on the laptop differs from what was written"
edit_big() { # OFFSET TEXT: a laptop edit in place, then wait until the mount shows it
	printf '%s' "$2" | dd of="$SRC/big.bin" bs=1 seek="$1" conv=notrunc status=none
	for _ in $(seq 100); do cmp -s "$SRC/big.bin" "$MNT/big.bin" && return 0; sleep 0.1; done
	fail "a laptop edit at $1 of a big file written through the mount: $(cmp "$SRC/big.bin" "$MNT/big.bin" 2>&1)"
}
edit_big $((3 << 20)) "laptop edit before the hash"
sleep 1.5 # past the agent's quiet time (1 s): it hashes the file now
edit_big $((5 << 20)) "laptop edit after the hash"
pass "feed: a big file written through the mount, then edited on the laptop twice: the mount follows"
mkdir -p "$MNT/fsx"
"$FSX" --seed 7 --ops 2000 --check-dir "$SRC/fsx" "$MNT/fsx/a" "$MNT/fsx/b" "$MNT/fsx/c" >"$T/fsx.out" 2>&1 ||
	fail "fsx on the mount: $(grep -v '^  #' "$T/fsx.out" | head -3)"
pass "feed: fsx seed 7, 2000 ops: the model, the mount and the laptop copy agree"

"$GEN_TREE" --seed 5 --files 2000 --big-mib 8 "$T/tree" >/dev/null
tar -C "$T/tree" -cf "$T/tree.tar" .
mkdir "$MNT/untar"
tar -C "$MNT/untar" -xf "$T/tree.tar"
sync -f "$MNT/untar"
for _ in $(seq 100); do tree_equal "$T/tree" "$SRC/untar" >/dev/null 2>&1 && break; sleep 0.2; done
tree_equal "$T/tree" "$SRC/untar" || fail "untar into the mount: the laptop copy differs"
tree_equal "$T/tree" "$MNT/untar" || fail "untar into the mount: the mount differs"
pass "feed: tar x of 2000 files + 8 MiB into the mount: laptop and mount equal the tarball"

git init -q -b main "$T/repo"
cp -r "$T/tree/edge" "$T/repo/"
git -C "$T/repo" add -A
git -C "$T/repo" -c user.email=t@t -c user.name=t commit -qm one
git clone -q "$T/repo" "$MNT/clone"
sync -f "$MNT/clone"
# syncfs does not wait for the write-back (FUSE has no syncfs): wait for the laptop copy
# wait until every file of the clone has the mount's content on the laptop (no git command on the
# laptop meanwhile: git status would rewrite the laptop's index)
hashes() { (cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum); }
for _ in $(seq 150); do [[ $(hashes "$MNT/clone") == "$(hashes "$SRC/clone")" ]] && break; sleep 0.2; done
assert_eq "$(hashes "$MNT/clone")" "$(hashes "$SRC/clone")" "the clone's files, mount and laptop"
git -C "$SRC/clone" fsck --no-progress || fail "git fsck of the clone on the laptop (after 30 s)"
assert_eq "$(git -C "$T/repo" rev-parse HEAD^{tree})" "$(git -C "$SRC/clone" rev-parse HEAD^{tree})" "tree of the clone on the laptop"
[[ -z $(git -C "$SRC/clone" status --porcelain) ]] || fail "the clone on the laptop is not clean: $(git -C "$SRC/clone" status --porcelain | head)"
pass "feed: git clone into the mount: the laptop copy is a clean, sound repository"
errs=$(counter write_back_errors)
[[ $errs == 0 ]] || fail "$errs write-back errors: $(grep -h 'cannot write back' "$T"/cache/mountd.log | head -5)"
fusermount3 -u "$MNT"

# --- journaled operations survive mountd's death -------------------------------------------------
rport=$((20000 + RANDOM % 20000))
relay() { relay_start "$rport" "127.0.0.1:$port" 0; }
relay
sed "s/^ *Port .*/  Port $rport/; s#UserKnownHostsFile .*#UserKnownHostsFile $T/known_hosts#" \
	"$EP/ssh_config" >"$T/ssh_config"
sed "s/\]:$port /]:$rport /" "$EP/known_hosts" >"$T/known_hosts"
mount_ep "$T/ssh_config" "$T/cache2"
kill -9 $RELAY_PID
wait $RELAY_PID 2>/dev/null || true
printf 'written while the link was down\n' >"$MNT/offline.txt"
mkdir "$MNT/offline-dir"
[[ ! -e $SRC/offline.txt ]] || fail "offline.txt reached the laptop without a link"
sleep 0.1 # a change is journaled durably within the group commit window (10 ms, docs/writeback.md)
pkill -9 -f "offload mount -F $T/ssh_config" || true
{ pgrep -f "cache-dir $T/cache2" || true; } | xargs -r kill -9
sleep 0.5
fusermount3 -u -z "$MNT" 2>/dev/null || true
relay
mount_ep "$T/ssh_config" "$T/cache2"
for _ in $(seq 100); do [[ -f $SRC/offline.txt && -d $SRC/offline-dir ]] && break; sleep 0.1; done
assert_eq "written while the link was down" "$(cat "$SRC/offline.txt" 2>/dev/null)" "journaled write after mountd was killed"
[[ -d $SRC/offline-dir ]] || fail "journaled mkdir after mountd was killed"
pass "mountd killed with unsent operations: they reach the laptop after the remount"
fusermount3 -u "$MNT"

# --- standalone, against a plain OpenSSH sshd --------------------------------------------------
sshd_start
mkdir -p "$T/plain"
chmod 755 "$T"
HOME=$T_HOME "$OFFLOAD_BIN" mount "offload-test:$T/plain" "$MNT" --cache-dir "$T/cache3" ||
	fail "standalone mount failed"
wait_mounted "$MNT" 10 || fail "standalone mount did not appear"
posix_check "standalone"
fsync_check standalone "$T/plain"
mkdir -p "$MNT/fsx"
"$FSX" --seed 8 --ops 2000 --check-dir "$T/plain/fsx" "$MNT/fsx/a" "$MNT/fsx/b" "$MNT/fsx/c" >"$T/fsx2.out" 2>&1 ||
	fail "fsx on the standalone mount: $(grep -v '^  #' "$T/fsx2.out" | head -3)"
pass "standalone: fsx seed 8, 2000 ops: the model, the mount and the server copy agree"
# the blocks written here are hashed as they are written (a block a write covers whole, from the
# write's own bytes): after a remount on the same cache, each is checked against that hash at
# its first read, and served from the cache when it matches
head -c 3000000 /dev/urandom >"$T/hashed.src"
cp "$T/hashed.src" "$MNT/hashed.bin"
python3 - "$MNT/hashed.bin" "$T/hashed.src" <<'PY'
import os, random, sys
random.seed(5)
fd, ref = os.open(sys.argv[1], os.O_WRONLY), bytearray(open(sys.argv[2], 'rb').read())
for _ in range(40):
    off, n = random.randrange(0, 3200000), random.randrange(1, 300000)
    b = os.urandom(n)
    os.pwrite(fd, b, off)
    ref[len(ref):off] = bytes(max(0, off - len(ref)))
    ref[off:off + n] = b
os.fsync(fd)
open(sys.argv[2], 'wb').write(ref)
PY
fusermount3 -u "$MNT"
HOME=$T_HOME "$OFFLOAD_BIN" mount "offload-test:$T/plain" "$MNT" --cache-dir "$T/cache3" ||
	fail "standalone remount failed"
wait_mounted "$MNT" 10 || fail "standalone remount did not appear"
cmp "$MNT/hashed.bin" "$T/hashed.src" || fail "the written file read back after a remount differs"
assert_eq 0 "$(counter verify_failures)" "cached blocks that failed their hash after a remount"
(($(counter cache_hits) > 0 && $(counter bytes_fetched) < 3000000)) ||
	fail "the written file was not served from the cache after a remount (hits $(counter cache_hits), fetched $(counter bytes_fetched) bytes)"
pass "standalone: blocks written here keep hashes that their content matches after a remount"
fusermount3 -u "$MNT"

# --- standalone: listings refreshed while creates are on their way --------------------------------
# A folder listed again (the attribute TTL ran out) while files created in it are not yet on the
# server, or were written back after the listing left: they must stay (the prune spares journaled
# and just-written-back rows), on a link with 100 ms RTT where the two race.
srport=$((20000 + RANDOM % 20000))
relay_start "$srport" "127.0.0.1:$SSHD_PORT" 50
sed "s/^\([[:space:]]*\)Port .*/\1Port $srport/" "$T_SSH_CONFIG" >"$T/slow_config"
sed "s/\]:$SSHD_PORT /]:$srport /" "$T_HOME/.ssh/known_hosts" >>"$T_HOME/.ssh/known_hosts"
mkdir -p "$T/plain2/race"
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$T/slow_config" "offload-test:$T/plain2" "$MNT" \
	--cache-dir "$T/cache4" --attr-ttl 1 2>"$T/mount4.err" || fail "slow standalone mount: $(cat "$T/mount4.err")"
wait_mounted "$MNT" 10 || fail "slow standalone mount did not appear"
# a big write first: the creates queue behind it in the write-back while listings go ahead
dd if=/dev/urandom of="$MNT/race/big" bs=1M count=32 status=none
declare -A ino
for i in $(seq 60); do
	printf 'file %d\n' "$i" >"$MNT/race/f$i"
	ino[$i]=$(stat -c %i "$MNT/race/f$i")
	ls "$MNT/race" >/dev/null
	((i % 10)) || sleep 1.1 # let the listing expire
done
# a row pruned and listed again would be another inode, fetched back from the server
for i in $(seq 60); do
	[[ $(cat "$MNT/race/f$i" 2>&1) == "file $i" ]] || fail "race/f$i in the mount: $(cat "$MNT/race/f$i" 2>&1)"
	assert_eq "${ino[$i]}" "$(stat -c %i "$MNT/race/f$i")" "inode of race/f$i"
done
assert_eq 61 "$(find "$MNT/race" -type f | wc -l)" "files listed in the mount"
assert_eq 0 "$(counter blocks_fetched)" "blocks fetched back from the server (all were written here)"
sync "$MNT/race/f60"
for _ in $(seq 100); do [[ $(find "$T/plain2/race" -type f | wc -l) == 61 ]] && break; sleep 0.1; done
assert_eq "$(hashes "$MNT/race")" "$(hashes "$T/plain2/race")" "the files on the server and in the mount"
pass "standalone: 60 files created while their folder was listed again over 100 ms RTT: none lost"
fusermount3 -u "$MNT"
if grep -i -E 'sanitizer|runtime error' "$T/serve.err"; then fail "sanitizer report from serve"; fi
pass "write-back"
