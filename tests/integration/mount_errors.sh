#!/usr/bin/env bash
# Each way a mount can fail gives a clear message, a non-zero exit, within its time bound, and
# leaves nothing behind (no mount, no daemon). EACCES on a remote file reaches the reader.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
sshd_start

SRC=$T/src MNT=$T/mnt
mkdir -p "$MNT" "$SRC/sub"
chmod 755 "$T"
echo hello >"$SRC/sub/file"
O() { HOME=$T_HOME timeout 60 "$OFFLOAD_BIN" "$@"; }

# expect_fail NAME PATTERN CMD...: CMD fails, its stderr matches PATTERN, nothing is mounted
expect_fail() {
	local name=$1 pat=$2 rc=0
	shift 2
	O "$@" 2>"$T/err" || rc=$?
	[[ $rc -ne 0 ]] || fail "$name: expected failure, got exit 0"
	grep -Eq "$pat" "$T/err" || fail "$name: message '$(cat "$T/err")' does not match /$pat/"
	! is_mounted "$MNT" || fail "$name: left a mount behind"
	! pgrep -f "offload mount .*$MNT" >/dev/null || fail "$name: left a daemon behind"
	pass "$name: $(head -c 200 "$T/err")"
}

expect_fail "remote path missing" "cannot mount 'offload-test:$SRC/nope': No such file" \
	mount "offload-test:$SRC/nope" "$MNT"
expect_fail "remote path not a directory" "not a directory" mount "offload-test:$SRC/sub/file" "$MNT"
expect_fail "mountpoint missing" "cannot mount on '$T/nomnt'" mount "offload-test:$SRC" "$T/nomnt"
expect_fail "unknown -o option" "unknown mount option 'bogus'" mount -o ro,bogus "offload-test:$SRC" "$MNT"
expect_fail "bad source" "bad source" mount "just-a-host" "$MNT"

# connection refused: a loopback port nobody listens on
port=$((SSHD_PORT + 1))
while ! _t_port_free "$port"; do port=$((port + 1)); done
expect_fail "connection refused" "cannot connect to .*refused" mount -p "$port" "root@127.0.0.1:$SRC" "$MNT"

# unreachable in the sense that matters: a peer that accepts TCP and never speaks. The mount
# must give up within the connect timeout instead of hanging.
silent_port=$((port + 1))
while ! _t_port_free "$silent_port"; do silent_port=$((silent_port + 1)); done
nc -d -k -l 127.0.0.1 "$silent_port" >/dev/null 2>&1 &
t_track $!
for _ in $(seq 50); do _t_port_listening "$silent_port" && break; sleep 0.1; done
if _t_port_listening "$silent_port"; then
	t0=$SECONDS
	expect_fail "silent server" "cannot connect to .*([Tt]imeout|timed out)" \
		mount --connect-timeout 2 -p "$silent_port" "root@127.0.0.1:$SRC" "$MNT"
	el=$((SECONDS - t0))
	[[ $el -le 6 ]] || fail "silent server: took ${el}s with a 2s connect timeout"
	pass "silent server: gave up after ${el}s (connect timeout 2s)"
else
	fail "could not start the silent listener (nc)"
fi

# host keys: unknown, then changed
cp "$T_HOME/.ssh/known_hosts" "$T/kh"
: >"$T_HOME/.ssh/known_hosts"
expect_fail "unknown host key" "host key for 'offload-test' is not known .*SHA256:.*ssh-keyscan" \
	mount "offload-test:$SRC" "$MNT"
ssh-keygen -q -t ed25519 -N '' -f "$T/other" </dev/null
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$T/other.pub")" >"$T_HOME/.ssh/known_hosts"
expect_fail "changed host key" "host key for 'offload-test' has CHANGED.*ssh-keygen -R" \
	mount "offload-test:$SRC" "$MNT"
cp "$T/kh" "$T_HOME/.ssh/known_hosts"

# authentication: a key the server does not know
expect_fail "auth failure" "permission denied \(publickey\)" \
	mount -i "$T/other" -F /dev/null -p "$SSHD_PORT" "root@127.0.0.1:$SRC" "$MNT"

# the ssh agent: a config naming no identity, a HOME with no default keys, the key in an agent
eval "$(ssh-agent -s)" >/dev/null
t_track "$SSH_AGENT_PID"
ssh-add -q "$T_HOME/.ssh/client_ed25519" 2>/dev/null || fail "ssh-add"
grep -v -E 'IdentityFile|IdentitiesOnly' "$T_SSH_CONFIG" >"$T/agentconfig"
mkdir -p "$T/agenthome/.ssh"
HOME=$T/agenthome timeout 60 "$OFFLOAD_BIN" mount -F "$T/agentconfig" "offload-test:$SRC" "$MNT" \
	2>"$T/err" || fail "mount with the key only in the agent: $(cat "$T/err")"
wait_mounted "$MNT" 10 || fail "mount did not appear"
[[ $(cat "$MNT/sub/file") == hello ]] || fail "read through the agent-authenticated mount"
fusermount3 -u "$MNT"
wait_unmounted "$MNT" 10 || fail "unmount"
kill "$SSH_AGENT_PID"
unset SSH_AUTH_SOCK SSH_AGENT_PID
pass "authenticates with the ssh agent when no identity file is given"

# mountpoint busy
O mount "offload-test:$SRC" "$MNT" || fail "mount"
wait_mounted "$MNT" 10 || fail "mount did not appear"
rc=0
O mount "offload-test:$SRC" "$MNT" 2>"$T/err" || rc=$?
[[ $rc -ne 0 ]] && grep -q "busy" "$T/err" || fail "busy mountpoint: rc=$rc '$(cat "$T/err")'"
pass "busy mountpoint: $(cat "$T/err")"
fusermount3 -u "$MNT"
wait_unmounted "$MNT" 10 || fail "unmount"

# permission denied on a remote file reaches the reader as EACCES: the server side runs as an
# unprivileged user who cannot read a 0600 root file
user=offt$$
useradd -M -d /nonexistent -s /bin/sh -p '*' "$user" 2>/dev/null || fail "useradd"
trap 'userdel "$user" 2>/dev/null || true; t_cleanup' EXIT
echo secret >"$SRC/sub/private"
chmod 600 "$SRC/sub/private"
chmod 755 "$SRC" "$SRC/sub" "$T/sshd"
chmod 644 "$T/sshd/authorized_keys" # sshd reads it as the user
sed "s/^\tUser root/\tUser $user/" "$T_SSH_CONFIG" >"$T/userconfig"
O mount -F "$T/userconfig" "offload-test:$SRC" "$MNT" || fail "mount as $user"
wait_mounted "$MNT" 10 || fail "mount did not appear"
[[ $(cat "$MNT/sub/file") == hello ]] || fail "readable file not readable"
rc=0
cat "$MNT/sub/private" 2>"$T/err" || rc=$?
[[ $rc -ne 0 ]] && grep -q "Permission denied" "$T/err" || fail "EACCES: rc=$rc '$(cat "$T/err")'"
pass "permission denied reaches the reader: $(cat "$T/err")"
fusermount3 -u "$MNT"
