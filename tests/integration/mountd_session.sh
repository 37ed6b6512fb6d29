#!/usr/bin/env bash
# offload mountd (docs/connect.md): the cloud side of a session, driven as `offload connect`
# drives it, over a real OpenSSH sshd (the "cloud host"), against `offload serve` (the laptop
# export, reached here at its own port: this test has no reverse forward). Proves the control
# protocol (HELLO, EXPORT rw/ro, STATUS, UNEXPORT, END, malformed lines), that a lost link leaves
# the mounts serving and a new relay reattaches to them, that a dying mount shows in STATUS, and
# that END and the linger time leave nothing of the session behind (invariant 8).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
sshd_start

LAP=$T/laptop EP=$T/ep
mkdir -p "$T/base" "$LAP/docs"
BASE=$(realpath "$T/base")
S1=$BASE/S1
"$GEN_TREE" --seed 7 --files 120 --big-mib 2 "$LAP/proj" >/dev/null
printf 'read-only here\n' >"$LAP/docs/readme"
"$OFFLOAD_BIN" serve "$LAP/proj" "$LAP/docs" --details "$EP" >"$T/serve.out" 2>"$T/serve.err" &
t_track $!
for _ in $(seq 100); do [[ -f $EP/ssh_config ]] && break; sleep 0.1; done
[[ -f $EP/ssh_config ]] || fail "offload serve wrote no details: $(cat "$T/serve.err")"
PORT=$(sed -n 's/^ *Port //p' "$EP/ssh_config")
KEY64=$(base64 -w0 "$EP/id_ed25519")
KNOWN64=$(base64 -w0 "$EP/known_hosts")
VERSION=$("$OFFLOAD_BIN" --version | cut -d' ' -f2)
# a port where nothing listens, for an EXPORT that cannot mount
DEAD=$((20000 + RANDOM % 40000))
while ! _t_port_free "$DEAD"; do DEAD=$((DEAD + 1)); done

# sshd passes no environment: sanitizer reports of the relay, the supervisor and its mounts (a
# sanitizer build) go to files in $T/san, checked at the end (the session log ends with it)
mkdir -p "$T/san"
SAN_ENV=(env "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}log_path=$T/san/asan"
	"UBSAN_OPTIONS=${UBSAN_OPTIONS:+$UBSAN_OPTIONS:}log_path=$T/san/ubsan")

# --- the relay: ssh to the cloud host running `offload mountd`, talked to through two fifos ---
RELAY_PID="" RIN="" ROUT="" NRELAY=0
# relay_start SESSION [ARGS...]: a new relay; RELAY_PID is its ssh client
relay_start() {
	local sid=$1 d
	shift
	NRELAY=$((NRELAY + 1))
	d=$T/relay$NRELAY
	mkdir -p "$d"
	mkfifo "$d/in" "$d/out"
	ssh -F "$T_SSH_CONFIG" offload-test "${SAN_ENV[@]}" "$OFFLOAD_BIN" mountd --session "$sid" \
		--base "$BASE" --offload "$OFFLOAD_BIN" "$@" <"$d/in" >"$d/out" 2>"$d/err" &
	RELAY_PID=$!
	exec {RIN}>"$d/in" {ROUT}<"$d/out"
}
# relay_close: end the relay's input (as the laptop closing the channel) and forget its fds
relay_close() {
	exec {RIN}>&- {ROUT}<&-
}
# ask LINE: send one request, REPLY = the reply line
ask() {
	printf '%s\n' "$1" >&"$RIN"
	REPLY=""
	read -r -t 45 REPLY <&"$ROUT" || fail "no reply to '${1:0:60}' (relay: $(cat "$T/relay$NRELAY/err"))"
}
# expect PATTERN LINE: ask LINE and fail unless the reply matches the glob PATTERN
expect() {
	ask "$2"
	# shellcheck disable=SC2053
	[[ $REPLY == $1 ]] || fail "'${2:0:60}': expected '$1', got '$REPLY'"
}
# status: STATUS_FULL = STATUS's JSON, ST = the same with the counters objects emptied
status() {
	ask STATUS
	[[ $REPLY == "STATUS "* ]] || fail "STATUS: got '$REPLY'"
	STATUS_FULL=$(base64 -d <<<"${REPLY#STATUS }") || fail "STATUS is not base64: '$REPLY'"
	ST=$(sed 's/"counters":{[^}]*}/"counters":{}/g' <<<"$STATUS_FULL")
}
# mount_state JSON NAME: "ro mounted live pid" of one mount, from status
mount_state() {
	grep -o "{\"name\":\"$2\",\"path\":\"$S1/mnt/$2\",\"ro\":[a-z]*,\"mounted\":[a-z]*,\"live\":[a-z]*,\"pid\":[0-9]*" <<<"$1" |
		sed 's/.*"ro":\([a-z]*\),"mounted":\([a-z]*\),"live":\([a-z]*\),"pid":\([0-9]*\)/\1 \2 \3 \4/'
}
# relay_wait_end: wait for the relay's ssh to exit; RELAY_RC = its exit status
relay_wait_end() {
	local deadline=$((SECONDS + 20))
	while kill -0 "$RELAY_PID" 2>/dev/null; do
		((SECONDS < deadline)) || fail "the relay did not end ($(cat "$T/relay$NRELAY/err"))"
		sleep 0.05
	done
	RELAY_RC=0
	wait "$RELAY_PID" || RELAY_RC=$?
}
# gone PID: wait (up to 10 s) until PID has exited and been reaped
gone() {
	local deadline=$((SECONDS + 10))
	while kill -0 "$1" 2>/dev/null; do
		((SECONDS < deadline)) || return 1
		sleep 0.05
	done
}
# nothing_left SESSION_DIR: the folder is gone and no mount of it is left
nothing_left() {
	local deadline=$((SECONDS + ${2:-20}))
	while [[ -e $1 ]] || grep -q " $1/" /proc/mounts; do
		((SECONDS < deadline)) || return 1
		sleep 0.1
	done
}

# --- HELLO ---------------------------------------------------------------------------------------
relay_start S1
expect "ERR version *" "HELLO 1 9.9.0"
[[ $REPLY == *9.9.0* && $REPLY == *"$VERSION"* ]] || fail "version refusal names both versions: '$REPLY'"
expect "ERR - say HELLO first" "EXPORT proj $PORT rw $KEY64 $KNOWN64"
expect "OK 1 $VERSION" "HELLO 1 $VERSION"
SUP_PID=$(cat "$S1/pid")
[[ $(stat -c %a "$BASE") == 755 && $(stat -c %a "$S1") == 700 && $(stat -c %a "$S1/ctl") == 600 ]] ||
	fail "modes: $(stat -c '%a %n' "$BASE" "$S1" "$S1/ctl")"
relay_pid=$(pgrep -f "mountd --session S1 --base $BASE" | head -n1)
[[ -n $relay_pid && $(ps -o sid= -p "$SUP_PID") != $(ps -o sid= -p "$relay_pid") &&
	$(ps -o ppid= -p "$SUP_PID" | tr -d ' ') != "$relay_pid" ]] ||
	fail "the supervisor is not a daemon: $(ps -o pid,ppid,sid,args -p "$SUP_PID" -p "${relay_pid:-1}")"
tr '\0' ' ' <"/proc/$SUP_PID/cmdline" | grep -q "mountd --supervise --session S1" ||
	fail "pid file names no supervisor: $(tr '\0' ' ' <"/proc/$SUP_PID/cmdline")"
pass "HELLO: a different major.minor is refused naming both versions; the supervisor is a daemon"

# --- EXPORT rw: the mount shows exactly the laptop's files, writes reach the laptop -------------
expect "MOUNTED proj $S1/mnt/proj" "EXPORT proj $PORT rw $KEY64 $KNOWN64"
is_mounted "$S1/mnt/proj" || fail "MOUNTED but no mount at $S1/mnt/proj"
tree_equal "$LAP/proj" "$S1/mnt/proj" || fail "the rw mount differs from the laptop folder"
[[ $(stat -c %a "$S1/exports/proj/id_ed25519") == 600 ]] || fail "key mode $(stat -c %a "$S1/exports/proj/id_ed25519")"
grep -q "^\[127.0.0.1\]:$PORT ssh-ed25519 " "$S1/exports/proj/known_hosts" || fail "known_hosts: $(cat "$S1/exports/proj/known_hosts")"
grep -q '^ *StrictHostKeyChecking yes' "$S1/exports/proj/ssh_config" || fail "ssh_config: $(cat "$S1/exports/proj/ssh_config")"
head -c 300000 /dev/urandom >"$T/up.bin"
cp "$T/up.bin" "$S1/mnt/proj/from-cloud.bin"
sync "$S1/mnt/proj/from-cloud.bin"
for _ in $(seq 100); do cmp -s "$T/up.bin" "$LAP/proj/from-cloud.bin" && break; sleep 0.1; done
cmp "$T/up.bin" "$LAP/proj/from-cloud.bin" || fail "a write through the rw mount did not reach the laptop"
pass "EXPORT rw: mounted at BASE/ID/mnt/NAME, tree equal to the laptop's, a write lands on the laptop"

# --- EXPORT ro ---------------------------------------------------------------------------------------
docs_before=$(cd "$LAP/docs" && find . -printf '%p %s %T@\n' | sort && sha256sum readme)
expect "MOUNTED docs $S1/mnt/docs" "EXPORT docs $PORT ro $KEY64 $KNOWN64"
cmp "$LAP/docs/readme" "$S1/mnt/docs/readme" || fail "ro mount content differs"
for w in "echo x >'$S1/mnt/docs/new'" "echo x >>'$S1/mnt/docs/readme'" "rm '$S1/mnt/docs/readme'" \
	"mkdir '$S1/mnt/docs/d'" "mv '$S1/mnt/docs/readme' '$S1/mnt/docs/r2'" "chmod 600 '$S1/mnt/docs/readme'"; do
	if bash -c "$w" 2>/dev/null; then fail "'$w' succeeded on the ro mount"; fi
done
assert_eq "$docs_before" "$(cd "$LAP/docs" && find . -printf '%p %s %T@\n' | sort && sha256sum readme)" "laptop folder behind the ro mount"
expect "MOUNTED docs $S1/mnt/docs" "EXPORT docs $PORT ro $KEY64 $KNOWN64"
expect "ERR proj already exported*" "EXPORT proj $PORT ro $KEY64 $KNOWN64"
pass "EXPORT ro: reads equal, every write refused with no trace; a repeated EXPORT is answered again"

# --- STATUS ------------------------------------------------------------------------------------------
# the mounts appear before the feed's snapshot is in (--snapshot-wait 0): wait until both are live
for _ in $(seq 100); do
	status
	[[ $(mount_state "$ST" proj) == "false true true "* && $(mount_state "$ST" docs) == "true true true "* ]] && break
	sleep 0.1
done
st=$ST
read -r ro mounted live PROJ_PID <<<"$(mount_state "$st" proj)"
assert_eq "false true true" "$ro $mounted $live" "proj in STATUS (ro mounted live)"
read -r ro mounted live DOCS_PID <<<"$(mount_state "$st" docs)"
assert_eq "true true true" "$ro $mounted $live" "docs in STATUS (ro mounted live)"
{ grep -q '"id":"S1"' <<<"$st" && grep -q '"laptop_attached":true' <<<"$st"; } || fail "STATUS: $st"
grep -q '"counters":{"requests":[0-9]*,' <<<"$STATUS_FULL" || fail "STATUS has no counters: $STATUS_FULL"
pass "STATUS lists both mounts, mounted and live, with their counters"

# --- malformed lines: ERR -, nothing changes; an EXPORT that cannot mount: ERR NAME, nothing left --
snap() { (cd "$S1" && find exports cache mnt -maxdepth 1 | sort); grep " $S1/" /proc/mounts | cut -d' ' -f2 | sort; }
before=$(snap)
for bad in "FROB" "ping" "PING extra" "STATUS " " STATUS" "HELLO 1" "EXPORT  proj $PORT rw $KEY64 $KNOWN64" \
	"EXPORT ../x $PORT rw $KEY64 $KNOWN64" "EXPORT .. $PORT rw $KEY64 $KNOWN64" "EXPORT a/b $PORT rw $KEY64 $KNOWN64" \
	"EXPORT $(printf 'n%.0s' $(seq 65)) $PORT rw $KEY64 $KNOWN64" "EXPORT x 0 rw $KEY64 $KNOWN64" \
	"EXPORT x 70000 rw $KEY64 $KNOWN64" "EXPORT x -1 rw $KEY64 $KNOWN64" "EXPORT x $PORT rx $KEY64 $KNOWN64" \
	"EXPORT x $PORT rw notbase64! $KNOWN64" "EXPORT x $PORT rw $KNOWN64 $KNOWN64" "EXPORT x $PORT rw $KEY64 $KEY64" \
	"EXPORT x $PORT rw $KEY64" "UNEXPORT .." "UNEXPORT a/b" $'PING\tx' $'PING\r'; do
	expect "ERR - *" "$bad"
done
printf 'PING %070000d\n' 0 >&"$RIN"
read -r -t 45 REPLY <&"$ROUT" || fail "no reply to an overlong line"
[[ $REPLY == "ERR - line too long"* ]] || fail "overlong line: got '$REPLY'"
expect "PONG" "PING"
expect "ERR nope *" "EXPORT nope $DEAD rw $KEY64 $KNOWN64"
[[ $REPLY == *"cannot connect"* ]] || fail "the failed EXPORT does not carry the mount's own message: '$REPLY'"
expect "ERR ghost not exported" "UNEXPORT ghost"
assert_eq "$before" "$(snap)" "session folder and mounts after malformed lines and a failed EXPORT"
status
assert_eq "$st" "$ST" "STATUS after malformed lines"
pass "malformed and overlong lines get 'ERR -' and change nothing; a failed EXPORT gets the mount's error, leaves nothing"

# --- the link is lost: the mounts keep serving; a new relay reattaches --------------------------
big=$(cd "$LAP/proj" && find . -type f -size +1M | head -n1)
[[ -n $big ]] || fail "the fixture has no file over 1 MiB"
cat "$S1/mnt/proj/$big" >/dev/null # in the cache now
kill -9 "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null || true
relay_close
for _ in $(seq 200); do
	pgrep -f "mountd --session S1 --base $BASE" >/dev/null || break
	sleep 0.05
done
! pgrep -f "mountd --session S1 --base $BASE" >/dev/null || fail "the relay outlived its link"
for _ in $(seq 100); do grep -q "client detached" "$S1/log" && break; sleep 0.05; done
grep -q "client detached" "$S1/log" || fail "the supervisor did not see the link go: $(tail -n 5 "$S1/log")"
kill -0 "$SUP_PID" || fail "the supervisor died with the link"
{ is_mounted "$S1/mnt/proj" && is_mounted "$S1/mnt/docs"; } || fail "a mount went with the link"
cmp "$LAP/proj/$big" "$S1/mnt/proj/$big" || fail "a cached file is not served after the link went"
relay_start S1
expect "OK 1 $VERSION" "HELLO 1 $VERSION"
status
st2=$ST
assert_eq "false true true $PROJ_PID" "$(mount_state "$st2" proj)" "proj after reattach (ro mounted live pid)"
assert_eq "true true true $DOCS_PID" "$(mount_state "$st2" docs)" "docs after reattach (ro mounted live pid)"
pass "ssh killed: relay gone, supervisor and mounts stay, cached file served; a new relay sees the same mounts"

# --- a second relay replaces the attached one --------------------------------------------------------
OLD_PID=$RELAY_PID OLD_NRELAY=$NRELAY OLD_RIN=$RIN OLD_ROUT=$ROUT
relay_start S1
expect "PONG" "PING"
deadline=$((SECONDS + 10))
while kill -0 "$OLD_PID" 2>/dev/null; do
	((SECONDS < deadline)) || fail "the replaced relay did not end"
	sleep 0.05
done
rc=0
wait "$OLD_PID" || rc=$?
exec {OLD_RIN}>&- {OLD_ROUT}<&-
assert_eq 0 "$rc" "exit status of the replaced relay ($(cat "$T/relay$OLD_NRELAY/err"))"
expect "OK 1 $VERSION" "HELLO 1 $VERSION"
pass "a new relay replaces the attached one, which ends with status 0"

# --- a mount that dies shows in STATUS; EXPORT again recovers; UNEXPORT removes mount, cache, keys --
kill -9 "$DOCS_PID"
for _ in $(seq 100); do grep -q "mount 'docs' (pid $DOCS_PID) was killed by signal 9" "$S1/log" && break; sleep 0.05; done
grep -q "mount 'docs' (pid $DOCS_PID) was killed by signal 9" "$S1/log" || fail "the dead mount is not logged: $(tail -n 5 "$S1/log")"
status
read -r ro mounted live pid <<<"$(mount_state "$ST" docs)"
assert_eq "true false false 0" "$ro $mounted $live $pid" "a dead mount in STATUS (ro mounted live pid)"
expect "MOUNTED docs $S1/mnt/docs" "EXPORT docs $PORT ro $KEY64 $KNOWN64"
cmp "$LAP/docs/readme" "$S1/mnt/docs/readme" || fail "docs after EXPORT again"
expect "OK" "UNEXPORT docs"
is_mounted "$S1/mnt/docs" && fail "docs still mounted after UNEXPORT"
for p in "$S1/mnt/docs" "$S1/cache/docs" "$S1/exports/docs"; do
	[[ ! -e $p ]] || fail "'$p' left after UNEXPORT"
done
status
[[ -z $(mount_state "$ST" docs) ]] || fail "docs still in STATUS: $ST"
is_mounted "$S1/mnt/proj" || fail "UNEXPORT docs took proj along"
pass "a killed mount: logged, STATUS mounted=false; EXPORT again mounts it; UNEXPORT leaves no mount, cache or key"

# --- END: nothing of the session is left -----------------------------------------------------------
expect "OK" "END"
relay_close
relay_wait_end
assert_eq 0 "$RELAY_RC" "relay exit status after END ($(cat "$T/relay$NRELAY/err"))"
nothing_left "$S1" || fail "after END: $(ls -la "$S1" 2>&1; grep " $S1/" /proc/mounts)"
gone "$SUP_PID" || fail "the supervisor outlived END"
pgrep -f "mount -f -F $S1/" >/dev/null && fail "a mount process outlived END"
pass "END: BASE/ID removed, no FUSE mount left, supervisor and mount processes gone"

# --- linger: a session without a relay ends by itself -------------------------------------------
S2=$BASE/S2
relay_start S2 --linger 3
expect "OK 1 $VERSION" "HELLO 1 $VERSION"
expect "MOUNTED proj $S2/mnt/proj" "EXPORT proj $PORT rw $KEY64 $KNOWN64"
SUP2_PID=$(cat "$S2/pid")
relay_close
relay_wait_end
assert_eq 0 "$RELAY_RC" "relay exit status at the end of its input ($(cat "$T/relay$NRELAY/err"))"
is_mounted "$S2/mnt/proj" || fail "the mount went before the linger time"
nothing_left "$S2" 20 || fail "3 s linger: after 20 s still $(ls -la "$S2" 2>&1; grep " $S2/" /proc/mounts)"
gone "$SUP2_PID" || fail "the supervisor outlived the linger time"
pass "--linger 3: the session ended by itself and left nothing"

# --- SIGTERM ends the session as END does ------------------------------------------------------------
S3=$BASE/S3
relay_start S3
expect "OK 1 $VERSION" "HELLO 1 $VERSION"
expect "MOUNTED proj $S3/mnt/proj" "EXPORT proj $PORT rw $KEY64 $KNOWN64"
kill -TERM "$(cat "$S3/pid")"
relay_close
relay_wait_end
nothing_left "$S3" || fail "after SIGTERM: $(ls -la "$S3" 2>&1; grep " $S3/" /proc/mounts)"
[[ -z $(ls -A "$BASE") ]] || fail "BASE not empty: $(ls -A "$BASE")"
pass "SIGTERM ends the session like END"
if [[ -n $(ls -A "$T/san") ]]; then
	fail "sanitizer reports: $(head -n 40 "$T"/san/*)"
fi
if grep -E 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$T/serve.err"; then
	fail "sanitizer report from serve"
fi
pass "mountd session"
