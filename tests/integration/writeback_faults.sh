#!/usr/bin/env bash
# Write-back under faults (issue 5):
#   - the laptop export on a tiny tmpfs: a write that cannot fit there fails at fsync with
#     ENOSPC (not a silent success), and the cloud copy goes back to the laptop's state
#   - the link cut during a burst of writes: the writes complete after it heals, fsync returns
#     success only when every file is whole on the laptop; no block silently dropped
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
T_HOME=$T/home
mkdir -p "$T_HOME" "$T/small" "$T/laptop" "$T/mnt" "$T/mnt2"

mount -t tmpfs -o size=2m offload-test-small "$T/small"
small_down() {
	local rc=$?
	umount -l "$T/small" 2>/dev/null || true
	return "$rc"
}
trap 'rc=$?; set +e; small_down; (exit $rc); t_cleanup' EXIT # t_cleanup always runs
"$OFFLOAD_BIN" serve "$T/small" "$T/laptop" --details "$T/ep" >"$T/serve.out" 2>"$T/serve.err" &
t_track $!
for _ in $(seq 100); do [[ -f $T/ep/ssh_config ]] && break; sleep 0.1; done
[[ -f $T/ep/ssh_config ]] || fail "offload serve wrote no details: $(cat "$T/serve.err")"

# --- a full disk on the laptop --------------------------------------------------------------------
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$T/ep/ssh_config" offload-endpoint:/small "$T/mnt" \
	--cache-dir "$T/cache" || fail "offload mount failed"
wait_mounted "$T/mnt" 10 || fail "mount did not appear"
printf 'fits\n' >"$T/mnt/ok.txt"
sync "$T/mnt/ok.txt" || fail "fsync of a small file failed"
assert_eq "fits" "$(cat "$T/small/ok.txt")" "a small file on the tiny laptop disk"
# 4 MiB into a 2 MiB file system: the local write succeeds, the write-back cannot
if dd if=/dev/urandom of="$T/mnt/big.bin" bs=1M count=4 conv=fsync status=none 2>"$T/dd.err"; then
	fail "4 MiB written to a 2 MiB laptop disk and fsync said success"
fi
grep -q "No space left on device" "$T/dd.err" || fail "fsync did not report ENOSPC: $(cat "$T/dd.err")"
# the cloud copy goes back to the laptop's state (whatever the laptop has of big.bin)
for _ in $(seq 100); do
	if [[ -e $T/small/big.bin ]]; then
		cmp -s "$T/small/big.bin" "$T/mnt/big.bin" 2>/dev/null && break
	else
		[[ ! -e $T/mnt/big.bin ]] && break
	fi
	sleep 0.1
done
if [[ -e $T/small/big.bin ]]; then
	cmp "$T/small/big.bin" "$T/mnt/big.bin" || fail "the cloud copy did not go back to the laptop's"
else
	[[ ! -e $T/mnt/big.bin ]] || fail "big.bin is in the mount but not on the laptop"
fi
assert_eq "fits" "$(cat "$T/mnt/ok.txt")" "the other file, untouched"
pass "a full laptop disk: ENOSPC at fsync, the cloud copy back to the laptop's state, other files kept"
fusermount3 -u "$T/mnt"

# --- the link cut during a burst of writes ------------------------------------------------------------
port=$(sed -n 's/^ *Port //p' "$T/ep/ssh_config")
rport=$((20000 + RANDOM % 20000))
relay() { relay_start "$rport" "127.0.0.1:$port" 5; }
relay
sed "s/^ *Port .*/  Port $rport/; s#UserKnownHostsFile .*#UserKnownHostsFile $T/known_hosts#" \
	"$T/ep/ssh_config" >"$T/ssh_config"
sed "s/\]:$port /]:$rport /" "$T/ep/known_hosts" >"$T/known_hosts"
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$T/ssh_config" offload-endpoint:/laptop "$T/mnt2" \
	--cache-dir "$T/cache2" --op-timeout 2 || fail "offload mount through the relay failed"
wait_mounted "$T/mnt2" 10 || fail "mount did not appear"
mkdir "$T/mnt2/burst"
(
	for i in $(seq 300); do
		head -c $((1000 + i * 97)) /dev/urandom >"$T/mnt2/burst/f$i" || exit 1
	done
) &
writer=$!
sleep 0.3
kill -9 "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null || true
sleep 2
relay
wait "$writer" || fail "a write through the mount failed while the link was cut"
# every file whole on the laptop once fsync returns
(cd "$T/mnt2/burst" && find . -type f -print0 | xargs -0 sync) || fail "fsync after the link healed failed"
for i in $(seq 300); do
	cmp -s "$T/mnt2/burst/f$i" "$T/laptop/burst/f$i" || fail "f$i differs between the mount and the laptop after fsync"
done
pass "the link cut during a burst of 300 writes: all whole on the laptop after it healed and fsync returned"
fusermount3 -u "$T/mnt2"
