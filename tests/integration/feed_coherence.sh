#!/usr/bin/env bash
# The change feed end to end: offload serve on the "laptop" folder, offload mount of it. Every
# kind of laptop change must show up in the mount with exact content and metadata, pushed (the
# mount asks the server nothing for metadata: meta_fetches stays 0 while the feed is live):
# write, append, truncate, editor atomic save, rename and move across folders, delete,
# mkdir/rmdir, chmod, symlink; a git checkout of thousands of files; an inotify queue overflow;
# a 4 KiB edit of a cached big file travels as one pushed block.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
T_HOME=$T/home
mkdir -p "$T_HOME"

SRC=$T/laptop/src EP=$T/ep MNT=$T/mnt
mkdir -p "$SRC" "$MNT"
"$GEN_TREE" --seed 11 --files 500 --big-mib 8 "$SRC" >/dev/null
mkdir -p "$SRC/w/a" "$SRC/w/b"
for i in 0 1 2 3; do printf 'file %d\n' "$i" >"$SRC/w/a/f$i.js"; done

"$OFFLOAD_BIN" serve "$SRC" --details "$EP" -v >"$T/serve.out" 2>"$T/serve.err" &
t_track $!
for _ in $(seq 100); do [[ -f $EP/ssh_config ]] && break; sleep 0.1; done
[[ -f $EP/ssh_config ]] || fail "offload serve wrote no details: $(cat "$T/serve.err")"

counter() { "$OFFLOAD_BIN" inspect --json "$MNT" | grep -o "\"$1\":[a-z0-9]*" | cut -d: -f2; }
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$EP/ssh_config" offload-endpoint:/src "$MNT" \
	--cache-dir "$T/cache" --attr-ttl 3600 || fail "offload mount failed"
wait_mounted "$MNT" 10 || fail "mount did not appear"
assert_eq true "$(counter feed_live)" "feed live after mount"
tree_equal "$SRC" "$MNT" || fail "initial tree differs"
assert_eq 0 "$(counter meta_fetches)" "metadata round trips for a full walk with the snapshot"
pass "snapshot: a full walk equals the laptop tree with 0 metadata round trips"

# On a read-write mount the kernel marks a folder's atime stale after every listing it asks
# for, so a second walk would cost a GETATTR per folder. mountd re-asks them in the background
# (fsync/attr_refresh.c); once that has settled, a walk is answered by the kernel's caches.
# (settled: the refresh count unchanged for 1 s; the read-ahead and the refreshes of the files
# the first walk read go on for a while, longer under ASan)
dirs=$(find "$SRC" -type d | wc -l) prev=-1 now=0 same=0
for _ in $(seq 150); do
	now=$(counter attr_refreshes)
	if [[ $now == "$prev" ]]; then ((++same >= 5)) && break; else same=0; fi
	prev=$now
	sleep 0.2
done
((now >= dirs)) || fail "attributes refreshed after the first walk: $now, folders: $dirs"
r0=$(counter requests)
find "$MNT" -printf '%s %T@ %m\n' >/dev/null
used=$(($(counter requests) - r0))
# without the refresher: at least one GETATTR per folder
((used < dirs / 4)) || fail "a walk right after the first cost $used FUSE requests for $dirs folders"
pass "a walk right after the first: $used FUSE requests for $dirs folders"

# converge WHAT: wait (up to 10 s) until the mount equals the laptop tree
converge() { # a liveness bound, not a latency target (the benchmark measures that)
	local i
	for i in $(seq 300); do
		if tree_equal "$SRC" "$MNT" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.1
	done
	tree_equal "$SRC" "$MNT" || fail "$1: the mount did not converge within 30 s"
}
stat_same() { # PATH: size, mode, mtime (ns) equal on both sides
	assert_eq "$(stat -c '%s %a %Y.%y' "$SRC/$1")" "$(stat -c '%s %a %Y.%y' "$MNT/$1")" "stat of $1"
}

cat "$MNT/w/a/f0.js" >/dev/null # cached, so its change must replace cached bytes
printf 'new file\n' >"$SRC/new.txt"
converge "create"
printf 'appended\n' >>"$SRC/w/a/f0.js"
converge "append"
stat_same w/a/f0.js
truncate -s 3 "$SRC/w/a/f0.js"
converge "truncate"
printf 'saved by an editor\n' >"$SRC/w/a/.f1.js.swp" && mv "$SRC/w/a/.f1.js.swp" "$SRC/w/a/f1.js"
converge "atomic save"
mkdir -p "$SRC/newdir/deep/er"
printf 'deep\n' >"$SRC/newdir/deep/er/file"
converge "mkdir -p and a file in it at once"
mv "$SRC/w/a/f2.js" "$SRC/newdir/moved.js"
mv "$SRC/w/b" "$SRC/newdir/b-moved"
converge "rename and move across folders"
rm "$SRC/new.txt"
rm -r "$SRC/newdir/deep"
converge "delete and rmdir"
chmod 600 "$SRC/w/a/f3.js"
converge "chmod"
stat_same w/a/f3.js
ln -s w/a/f3.js "$SRC/link"
converge "symlink"
assert_eq "w/a/f3.js" "$(readlink "$MNT/link")" "symlink target"
assert_eq 0 "$(counter meta_fetches)" "metadata round trips while following changes"
pass "write, append, truncate, atomic save, mkdir -p, mv, rm, rmdir, chmod, symlink converge"

# --- a watcher on the mount sees laptop edits as inotify events (DESIGN invariant 5) -------------
mkdir -p "$SRC/watched"
printf 'one\n' >"$SRC/watched/edit.js"
printf 'gone\n' >"$SRC/watched/gone.js"
converge "watched folder"
inotifywait -m -r --format '%e %w%f' "$MNT/watched" >"$T/events" 2>"$T/inotifywait.err" &
watcher=$!
t_track $watcher
for _ in $(seq 50); do grep -q 'Watches established' "$T/inotifywait.err" && break; sleep 0.1; done
# spaced out as a person edits: changes inside one coalescing window arrive as their net effect
printf 'two\n' >>"$SRC/watched/edit.js" && sleep 0.3
printf 'new\n' >"$SRC/watched/new.js" && sleep 0.3
rm "$SRC/watched/gone.js" && sleep 0.3
mv "$SRC/watched/new.js" "$SRC/watched/renamed.js" && sleep 0.3
mkdir "$SRC/watched/sub"
converge "changes under a watcher"
sleep 0.5
kill $watcher
wait $watcher 2>/dev/null || true
for want in "MODIFY $MNT/watched/edit.js" "CLOSE_WRITE,CLOSE $MNT/watched/edit.js" \
	"CREATE $MNT/watched/new.js" "DELETE $MNT/watched/gone.js" "MOVED_FROM $MNT/watched/new.js" \
	"MOVED_TO $MNT/watched/renamed.js" "CREATE,ISDIR $MNT/watched/sub"; do
	grep -qxF "$want" "$T/events" || fail "inotify on the mount: no '$want' event; got: $(tr '\n' ';' <"$T/events")"
done
pass "inotify watchers on the mount see laptop edits (modify, close_write, create, delete, moves, mkdir)"

# --- a write through the mount lands on the laptop, and its echo does not undo later writes -----
for i in 1 2 3 4 5; do printf 'cloud %d\n' "$i" >"$MNT/watched/from-cloud.txt"; done
sync "$MNT/watched/from-cloud.txt"
assert_eq "cloud 5" "$(cat "$SRC/watched/from-cloud.txt")" "laptop copy after fsync"
sleep 1
assert_eq "cloud 5" "$(cat "$MNT/watched/from-cloud.txt")" "mount copy after the echo"
converge "a file written through the mount"
pass "a file written through the mount is on the laptop after fsync; the echo changes nothing"

# --- a 4 KiB edit of a cached 8 MiB file: one block pushed, the rest kept -------------------------
cat "$MNT/big.bin" >/dev/null
# mountd records the blocks, tells the agent it holds the file, the agent hashes it once
for _ in $(seq 100); do grep -q "hashed 'big.bin'" "$T/serve.err" && break; sleep 0.1; done
grep -q "hashed 'big.bin'" "$T/serve.err" || fail "the agent never learnt that the mount holds big.bin"
fetched=$(counter bytes_fetched) pushed=$(counter feed_data_blocks)
printf '%4096s' X | dd of="$SRC/big.bin" bs=4096 seek=100 conv=notrunc status=none
converge "4 KiB edit in a big cached file"
cmp "$SRC/big.bin" "$MNT/big.bin" || fail "big file differs after the edit"
assert_eq "$fetched" "$(counter bytes_fetched)" "bytes fetched over SFTP for the edit (pushed instead)"
assert_eq $((pushed + 1)) "$(counter feed_data_blocks)" "blocks pushed for a 4 KiB edit"
pass "a 4 KiB edit of a cached file: one block pushed, nothing refetched"

# --- git checkout between branches differing in thousands of files ------------------------------
if command -v git >/dev/null; then
	(cd "$SRC" && git init -q -b one . && git add -A && git -c user.email=t@t -c user.name=t commit -qm one &&
		git checkout -q -b two && "$GEN_TREE" --seed 12 --files 3000 --big-mib 0 gen2 >/dev/null &&
		git add -A && git -c user.email=t@t -c user.name=t commit -qm two && git checkout -q one)
	converge "git checkout (3000 files removed)"
	(cd "$SRC" && git checkout -q two)
	converge "git checkout (3000 files added)"
	assert_eq "$(cd "$SRC" && git ls-files -s | sha256sum)" "$(cd "$MNT" && git ls-files -s | sha256sum)" "git index seen through the mount"
	pass "git checkout of 3000 files both ways converges"
fi

# --- inotify overflow: a tiny queue, 3000 changes ------------------------------------------------
old=$(cat /proc/sys/fs/inotify/max_queued_events)
echo 64 >/proc/sys/fs/inotify/max_queued_events
restore_q() { echo "$old" >/proc/sys/fs/inotify/max_queued_events; }
trap 'restore_q; t_cleanup' EXIT
# the kernel reads the limit at inotify_init: a fresh serve + mount creates the agent's watcher
# under it, then the global value is restored at once.
fusermount3 -u "$MNT"
"$OFFLOAD_BIN" serve "$SRC" --details "$EP.2" -v >"$T/serve2.out" 2>"$T/serve2.err" &
t_track $!
for _ in $(seq 100); do [[ -f $EP.2/ssh_config ]] && break; sleep 0.1; done
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$EP.2/ssh_config" offload-endpoint:/src "$MNT" \
	--cache-dir "$T/cache2" --attr-ttl 3600 || fail "second mount failed"
wait_mounted "$MNT" 10 || fail "second mount did not appear"
restore_q # the agent's inotify instance keeps the limit it was created with; nobody else pays
mkdir -p "$SRC/storm"
for i in $(seq 3000); do printf '%d\n' "$i" >"$SRC/storm/f$i"; done
converge "3000 changes through a 64-event inotify queue"
grep -q "rescanning" "$T/serve2.err" || fail "no overflow rescan seen in the agent log"
pass "inotify overflow: rescan, the mount converges"

# --- -o nowrite (a docker :ro bind): every write refused by mountd, laptop edits still raise inotify
fusermount3 -u "$MNT"
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$EP.2/ssh_config" offload-endpoint:/src "$MNT" -o nowrite \
	--cache-dir "$T/cache3" --attr-ttl 3600 || fail "nowrite mount failed"
wait_mounted "$MNT" 10 || fail "nowrite mount did not appear"
for op in "touch $MNT/x" "mkdir $MNT/d2" "rm $MNT/storm/f1" "chmod 600 $MNT/storm/f2"; do
	if $op 2>"$T/nowrite.err"; then fail "-o nowrite: '$op' succeeded"; fi
	grep -q "Read-only file system" "$T/nowrite.err" || fail "-o nowrite: '$op': $(cat "$T/nowrite.err")"
done
[[ ! -e $SRC/x && -e $SRC/storm/f1 ]] || fail "-o nowrite: a refused write reached the laptop"
# edit_watched FILE EVENTS: append to storm/FILE on the laptop while inotifywait watches the
# mount's storm/; 0 if it reported FILE (its output in EVENTS)
edit_watched() {
	local watcher
	inotifywait -q -e modify,close_write --format '%e %f' "$MNT/storm" >"$2" 2>/dev/null &
	watcher=$!
	sleep 0.5
	printf 'changed\n' >>"$SRC/storm/$1"
	for _ in $(seq 50); do [[ -s $2 ]] && break; sleep 0.1; done
	kill "$watcher" 2>/dev/null || true
	grep -q "$1" "$2"
}
edit_watched f3 "$T/nowrite.events" || fail "-o nowrite: no inotify event for a laptop edit"
pass "-o nowrite: writes refused with EROFS by mountd, laptop edits still seen by inotify"

# --- --snapshot-wait 0 (the cloud side of offload connect): the mount appears as soon as SFTP is
# up, before the snapshot of a large folder is in; meanwhile it is served over SFTP with the TTL,
# then the feed takes over, with inotify replays although the feed was not live at mount time
fusermount3 -u "$MNT"
"$GEN_TREE" --seed 12 --files 20000 --no-big "$SRC/many" >/dev/null
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$EP.2/ssh_config" offload-endpoint:/src "$MNT" \
	--snapshot-wait 0 --cache-dir "$T/cache4" --attr-ttl 3600 || fail "--snapshot-wait 0: mount failed"
wait_mounted "$MNT" 10 || fail "--snapshot-wait 0: the mount did not appear"
live_at_mount=$(counter feed_live)
cmp "$SRC/w/a/f3.js" "$MNT/w/a/f3.js" || fail "--snapshot-wait 0: a file read at once differs"
for _ in $(seq 300); do [[ $(counter feed_live) == true ]] && break; sleep 0.1; done
assert_eq true "$(counter feed_live)" "--snapshot-wait 0: the feed is live after the mount"
# (this agent watches with a 64-event queue: it may still be rescanning the 20k new names)
names() { (cd "$1" && find . | sort | md5sum); }
for _ in $(seq 300); do [[ $(names "$SRC/many") == "$(names "$MNT/many")" ]] && break; sleep 0.1; done
assert_eq "$(names "$SRC/many")" "$(names "$MNT/many")" "--snapshot-wait 0: the 20k names, once live"
edit_watched f4 "$T/late.events" || fail "--snapshot-wait 0: no inotify event for a laptop edit"
for _ in $(seq 100); do cmp -s "$SRC/storm/f4" "$MNT/storm/f4" && break; sleep 0.1; done
cmp "$SRC/storm/f4" "$MNT/storm/f4" || fail "--snapshot-wait 0: a laptop edit did not arrive"
pass "--snapshot-wait 0: mounted (feed live at that moment: $live_at_mount), served, then live with inotify"

if grep -i -E 'sanitizer|runtime error' "$T/serve.err" "$T/serve2.err"; then fail "sanitizer report from serve"; fi
pass "feed coherence"
