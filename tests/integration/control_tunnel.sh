#!/usr/bin/env bash
# The control tunnel (tunnel/control.c) against a real OpenSSH sshd, driven by tools/ctltest:
#   - host keys: an unknown and a changed key are refused with tun_ssh_connect's messages, and
#     sshd never sees a login;
#   - the exec channel: `cat` echoes 1 MiB byte for byte; `wc -c` counts 1 MiB sent before a
#     local shutdown(SHUT_WR) (half-close reaches the remote command, its output and EOF come
#     back); a missing command (exit 127) is reported naming the binary and the host;
#   - direct-streamlocal and direct-tcpip channels: 20 concurrent channels each move 10 MiB both
#     ways to echo servers on the "cloud" side, checked byte for byte, half-closes both ways;
#     a missing socket gives a clear refusal;
#   - reverse forwards: connections to the cloud side's 127.0.0.1:PORT (loopback only) reach a
#     laptop-side listener, 8 at once, checked byte for byte; any port and a chosen one; removal;
#   - the link through tools/wanrelay: kill -9 and restart it: lost, then reconnected, the
#     reverse forward back on the same port, the exec channel started again (generation 2),
#     channels open again; a silent link (relay stopped) is caught by the keepalive;
#   - a changed host key on reconnect: the tunnel gives up loudly and never logs in again.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

: "${CTLTEST:=$(_t_default_bin ctltest)}"
: "${WANRELAY:=$(_t_default_bin wanrelay)}"
[[ -x $CTLTEST ]] || fail "no ctltest at '$CTLTEST' (set CTLTEST)"
[[ -x $WANRELAY ]] || fail "no wanrelay at '$WANRELAY' (set WANRELAY)"
t_setup
trap '' PIPE # a ctltest that died must fail a check, not kill this shell
sshd_start

MIB=1048576
declare -A CT_FD CT_PID
CT_SEQ=0
CT_LINE=""
CT_AT=0

# ct_start NAME ARGS...: run "ctltest ARGS..." (HOME=$T_HOME) with commands from a FIFO;
# its stdout goes to $T/NAME.out, its stderr to $T/NAME.err.
ct_start() {
	local name=$1 fd
	shift
	mkfifo "$T/$name.in"
	HOME=$T_HOME "$CTLTEST" "$@" <"$T/$name.in" >"$T/$name.out" 2>"$T/$name.err" &
	CT_PID[$name]=$!
	t_track "$!"
	exec {fd}>"$T/$name.in"
	CT_FD[$name]=$fd
}

# ct_do NAME COMMAND [TIMEOUT_S=180]: send COMMAND, wait for its answer; CT_LINE = "ok ..." or
# "fail ...".
ct_do() {
	local name=$1 cmd=$2 timeout=${3:-180} id line deadline
	id=$((++CT_SEQ))
	echo "$id $cmd" >&"${CT_FD[$name]}" ||
		fail "ctltest $name is gone before '$cmd': $(tail -n 5 "$T/$name.err")"
	deadline=$((SECONDS + timeout))
	until line=$(grep -m1 -E "^$id (ok|fail)( |\$)" "$T/$name.out"); do
		kill -0 "${CT_PID[$name]}" 2>/dev/null ||
			fail "ctltest $name exited during '$cmd': $(tail -n 5 "$T/$name.err")"
		((SECONDS < deadline)) || fail "ctltest $name: no answer to '$cmd' in $timeout s"
		sleep 0.05
	done
	CT_LINE=${line#"$id "}
}

# ct_ok NAME COMMAND [TIMEOUT_S]: ct_do, failing unless the answer is ok.
ct_ok() {
	ct_do "$@"
	[[ $CT_LINE == ok* ]] || fail "ctltest $1: '$2': expected ok, got '$CT_LINE'"
}

# ct_mark NAME: the number of lines NAME has printed so far (for ct_wait FROM).
ct_mark() {
	wc -l <"$T/$1.out"
}

# ct_wait NAME REGEX [TIMEOUT_S=30] [FROM=0]: wait for a line matching REGEX after line FROM;
# CT_LINE = the line, CT_AT = its number.
ct_wait() {
	local name=$1 re=$2 timeout=${3:-30} from=${4:-0} hit deadline
	deadline=$((SECONDS + timeout))
	until hit=$(tail -n "+$((from + 1))" "$T/$name.out" | grep -n -m1 -E -- "$re"); do
		((SECONDS < deadline)) ||
			fail "ctltest $name: no line matching '$re' within $timeout s; it printed: $(tail -n +"$((from + 1))" "$T/$name.out" | tail -n 8)"
		sleep 0.05
	done
	CT_AT=$((from + ${hit%%:*}))
	CT_LINE=${hit#*:}
}

# ct_quit NAME: stop it and check that it exits with status 0 (a sanitizer report would not).
ct_quit() {
	local name=$1 rc=0 deadline=$((SECONDS + 30))
	echo "0 quit" >&"${CT_FD[$name]}" || true
	eval "exec ${CT_FD[$name]}>&-"
	while kill -0 "${CT_PID[$name]}" 2>/dev/null; do
		((SECONDS < deadline)) || fail "ctltest $name did not exit within 30 s of quit"
		sleep 0.05
	done
	wait "${CT_PID[$name]}" || rc=$?
	((rc == 0)) || fail "ctltest $name exited with status $rc: $(tail -n 20 "$T/$name.err")"
}

# stat_of KEY: the value of KEY=... in CT_LINE (after ct_ok NAME stats).
stat_of() {
	tr ' ' '\n' <<<"$CT_LINE" | sed -n "s/^$1=//p"
}

# echo_server NAME ARGS...: start "ctltest --echo-* ..."; ECHO_AT = where it listens.
echo_server() {
	local name=$1 deadline=$((SECONDS + 10)) line=""
	shift
	"$CTLTEST" "$@" 2>"$T/$name.err" &
	t_track "$!"
	until line=$(grep -m1 -o 'listening on .*' "$T/$name.err"); do
		kill -0 "$!" 2>/dev/null || fail "echo server $name exited: $(cat "$T/$name.err")"
		((SECONDS < deadline)) || fail "echo server $name not listening after 10 s"
		sleep 0.05
	done
	ECHO_AT=${line#listening on }
}

# free_port: a port nothing listens on.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		_t_port_free "$p" && break
	done
	echo "$p"
}

# write_config FILE ALIAS PORT KNOWN_HOSTS: an ssh_config naming the test sshd (or a relay).
write_config() {
	cat >"$1" <<EOF
Host $2
	HostName 127.0.0.1
	Port $3
	User root
	IdentityFile $T_HOME/.ssh/client_ed25519
	IdentitiesOnly yes
	UserKnownHostsFile $4
	GlobalKnownHostsFile /dev/null
	StrictHostKeyChecking yes
EOF
}

host_line() { # PORT: the known_hosts line of the test sshd's host key at 127.0.0.1:PORT
	echo "[127.0.0.1]:$1 $(cut -d' ' -f1,2 "$T/sshd/host_ed25519.pub")"
}
# shellcheck disable=SC2001 # a bracket expression reads better in sed
re_escape() { sed 's/[][\\.*^$+?(){}|]/\\&/g' <<<"$1"; } # STRING: as an ERE matching itself
host_fp() { ssh-keygen -lf "$T/sshd/host_ed25519.pub" | awk '{print $2}'; }
logins() { grep -c 'Accepted publickey' "$T/sshd.log" || true; }
connections() { grep -c 'Connection from 127.0.0.1' "$T/sshd.log" || true; }
no_sanitizer() { # FILE...
	if grep -lE 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$@" 2>/dev/null; then
		fail "sanitizer report: $(grep -hE -A12 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$@" | head -40)"
	fi
}

# --- host keys: unknown and changed are refused before any login ---------------------------
fp=$(host_fp)
logins0=$(logins)
: >"$T/known_empty"
write_config "$T/cfg_unknown" ctl-unknown "$SSHD_PORT" "$T/known_empty"
if HOME=$T_HOME "$CTLTEST" -F "$T/cfg_unknown" ctl-unknown </dev/null >"$T/unknown.out" 2>"$T/unknown.err"; then
	fail "an unknown host key was accepted"
fi
want="ctltest: host key for 'ctl-unknown' is not known (ssh-ed25519 $fp); verify this fingerprint, then accept it with: ssh -p $SSHD_PORT 127.0.0.1 true (or ssh-keyscan -p $SSHD_PORT 127.0.0.1 >> ~/.ssh/known_hosts)"
assert_eq "$want" "$(cat "$T/unknown.err")" "refusal of an unknown host key"

ssh-keygen -q -t ed25519 -N '' -C other -f "$T/other_host" </dev/null
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$T/other_host.pub")" >"$T/known_other"
write_config "$T/cfg_changed" ctl-changed "$SSHD_PORT" "$T/known_other"
if HOME=$T_HOME "$CTLTEST" -F "$T/cfg_changed" ctl-changed </dev/null >"$T/changed.out" 2>"$T/changed.err"; then
	fail "a changed host key was accepted"
fi
want="ctltest: host key for 'ctl-changed' has CHANGED (now ssh-ed25519 $fp); someone may be intercepting the connection, or the host was reinstalled. refusing to connect: check with the host's owner, then remove the old key with: ssh-keygen -R '[127.0.0.1]:$SSHD_PORT'"
assert_eq "$want" "$(cat "$T/changed.err")" "refusal of a changed host key"
assert_eq "$logins0" "$(logins)" "logins sshd accepted while the host key was refused"
no_sanitizer "$T/unknown.err" "$T/changed.err"
pass "unknown and changed host keys refused with tun_ssh_connect's messages, no login"

# --- the exec channel ----------------------------------------------------------------------------
ct_start cat --cmd cat offload-test
ct_wait cat '^event connected$' 20
ct_wait cat '^event exec-started gen=1$' 20
ct_ok cat "exec-echo $MIB"
assert_eq "ok gen=1 bytes=$MIB" "$CT_LINE" "1 MiB through remote cat"
ct_ok cat stats
[[ $CT_LINE == *" up=$MIB down=$MIB"* ]] || fail "stats after 1 MiB each way: got '$CT_LINE'"
ct_quit cat

ct_start wc --cmd "wc -c" offload-test
ct_ok wc "exec-halfclose $MIB"
assert_eq "ok gen=1 output=$MIB" "$CT_LINE" "remote wc -c after a local shutdown(SHUT_WR)"
ct_wait wc '^event exec-exited gen=1 status=0 ' 20
ct_quit wc
pass "exec channel: cat echoes 1 MiB byte for byte; wc -c counts 1 MiB after the half-close"

ct_start missing --cmd "offload-no-such-tool --session t1" offload-test
ct_wait missing '^event exec-exited gen=1 status=127 ' 20
[[ $CT_LINE =~ "'offload-no-such-tool' is not installed on 'offload-test' (exit status 127: ".*offload-no-such-tool.*"not found)"$ ]] ||
	fail "exit status 127: expected a message naming the binary and the host, got '$CT_LINE'"
msg127=${CT_LINE#*status=127 }
ct_do missing "exec-echo 16"
[[ $CT_LINE == "fail no exec channel above generation 0: No child processes" ]] ||
	fail "asking for the exec channel of a command that ended: expected ECHILD at once, got '$CT_LINE'"
ct_quit missing
pass "a missing remote command: $msg127"

# --- direct-streamlocal and direct-tcpip channels --------------------------------------------------
mkdir -p "$T/cloud"
echo_server cloud_unix --echo-unix "$T/cloud/echo.sock"
echo_server cloud_tcp --echo-tcp 127.0.0.1:0
cloud_port=${ECHO_AT##*:}
echo_server laptop_tcp --echo-tcp 127.0.0.1:0
laptop_port=${ECHO_AT##*:}

ct_start fwd offload-test
ct_ok fwd "unix $T/cloud/echo.sock $((10 * MIB)) 20" 600
ct_ok fwd "tcp 127.0.0.1 $cloud_port $((10 * MIB)) 20" 600
ct_ok fwd stats
up=$(stat_of up)
down=$(stat_of down)
((up == 40 * 10 * MIB && down == 40 * 10 * MIB)) ||
	fail "bytes counted over 40 channels of 10 MiB: expected $((400 * MIB)) each way, got up=$up down=$down"
pass "20 unix and 20 tcp channels at once, 10 MiB each both ways, byte for byte"

ct_do fwd "open-unix $T/cloud/nothing.sock"
[[ $CT_LINE == "fail cannot open '$T/cloud/nothing.sock' on 'offload-test': "*"(Connection refused)" ]] ||
	fail "channel to a missing socket: expected a refusal naming it, got '$CT_LINE'"
pass "a missing remote socket: ${CT_LINE#fail }"

# --- reverse forwards ---------------------------------------------------------------------------------
ct_ok fwd "rforward 127.0.0.1 $laptop_port"
rport=${CT_LINE#ok port=}
[[ -n $(ss -Htln "src 127.0.0.1 and sport = :$rport") ]] ||
	fail "reverse forward: nothing listens on the cloud side's 127.0.0.1:$rport"
if ss -Htln "sport = :$rport" | grep -v '127.0.0.1:' >/dev/null; then
	fail "reverse forward: port $rport listens beyond loopback: $(ss -Htln "sport = :$rport")"
fi
"$WANRELAY" --send "127.0.0.1:$rport" --bytes $((4 * MIB)) --parallel 8 --timeout 120 >"$T/send1.out" 2>&1 ||
	fail "8 connections through the reverse forward: $(cat "$T/send1.out")"
fixed=$(free_port)
ct_ok fwd "rforward 127.0.0.1 $laptop_port $fixed"
assert_eq "ok port=$fixed" "$CT_LINE" "reverse forward on a chosen port"
"$WANRELAY" --send "127.0.0.1:$fixed" --bytes $MIB --parallel 2 --timeout 60 >"$T/send2.out" 2>&1 ||
	fail "connections through the reverse forward on port $fixed: $(cat "$T/send2.out")"
ct_ok fwd "unrforward $fixed"
for _ in $(seq 100); do
	_t_port_listening "$fixed" || break
	sleep 0.05
done
! _t_port_listening "$fixed" || fail "port $fixed still listens after unrforward"
ct_ok fwd stats
assert_eq 1 "$(stat_of rforwards)" "reverse forwards left"
ct_quit fwd
pass "reverse forwards: 8 connections at once on 127.0.0.1:$rport (any port) and on $fixed (chosen), checked; removed"

# --- the link cut and restored (through wanrelay) ------------------------------------------------
relay_port=$(free_port)
relay_start() {
	local deadline=$((SECONDS + 10))
	"$WANRELAY" --listen "127.0.0.1:$relay_port" --connect "127.0.0.1:$SSHD_PORT" --delay-ms 0 --quiet \
		2>>"$T/relay.err" &
	RELAY_PID=$!
	t_track "$RELAY_PID"
	until _t_port_listening "$relay_port"; do
		kill -0 "$RELAY_PID" 2>/dev/null || fail "wanrelay exited: $(cat "$T/relay.err")"
		((SECONDS < deadline)) || fail "wanrelay not listening after 10 s"
		sleep 0.05
	done
}
relay_kill() {
	kill -9 "$RELAY_PID"
	wait "$RELAY_PID" 2>/dev/null || true
}
relay_start
host_line "$relay_port" >"$T/known_relay"
write_config "$T/cfg_relay" ctl-relay "$relay_port" "$T/known_relay"
ct_start link -F "$T/cfg_relay" --cmd cat --keepalive 1 --backoff-max-ms 2000 ctl-relay
ct_wait link '^event exec-started gen=1$' 20
ct_ok link "exec-echo 65536"
ct_ok link "rforward 127.0.0.1 $laptop_port"
lport=${CT_LINE#ok port=}
"$WANRELAY" --send "127.0.0.1:$lport" --bytes $MIB --parallel 4 --timeout 60 >"$T/send3.out" 2>&1 ||
	fail "reverse forward before the cut: $(cat "$T/send3.out")"

mark=$(ct_mark link)
relay_kill
ct_wait link '^event lost ' 20 "$mark"
lost_at=$CT_AT
t_log "link cut: $CT_LINE"
ct_wait link '^event exec-exited gen=1 status=-1 ' 10 "$mark"
ct_do link "open-unix $T/cloud/echo.sock"
[[ $CT_LINE == "fail not connected to 'ctl-relay' (reconnecting) "* ]] ||
	fail "a channel while the link is down: expected 'not connected', got '$CT_LINE'"
sleep 1
relay_start
ct_wait link '^event reconnected$' 60 "$lost_at"
ct_wait link "^event rforward port=$lport ok\$" 30 "$lost_at"
ct_wait link '^event exec-started gen=2$' 30 "$lost_at"
ct_ok link "exec-echo $MIB 1"
assert_eq "ok gen=2 bytes=$MIB" "$CT_LINE" "remote cat after the reconnect"
ct_ok link "unix $T/cloud/echo.sock $MIB 4"
"$WANRELAY" --send "127.0.0.1:$lport" --bytes $MIB --parallel 4 --timeout 60 >"$T/send4.out" 2>&1 ||
	fail "reverse forward after the reconnect: $(cat "$T/send4.out")"
ct_ok link stats
assert_eq 1 "$(stat_of reconnects)" "reconnects counted"
pass "link killed and restored: lost, reconnected, forward back on $lport, exec generation 2, channels work"

# a silent link: nothing closes, only the keepalive can tell
mark=$(ct_mark link)
t0=$SECONDS
kill -STOP "$RELAY_PID"
ct_wait link '^event lost .*no answer for [0-9]+ s \(keepalive\)$' 20 "$mark"
elapsed=$((SECONDS - t0))
kill -CONT "$RELAY_PID"
((elapsed <= 10)) || fail "silent link noticed after $elapsed s, expected about 3 (keepalive 1 s x 3)"
ct_wait link '^event reconnected$' 60 "$CT_AT"
ct_wait link "^event rforward port=$lport ok\$" 30 "$mark"
ct_wait link '^event exec-started gen=3$' 30 "$mark"
ct_ok link "exec-echo 65536 2"
pass "a stopped relay is caught by the keepalive in $elapsed s and the tunnel comes back"

# idle with keepalives going out (every 1 s): they are answered, and a forward asked for
# meanwhile gets its own answer (libssh has one slot for global requests)
mark=$(ct_mark link)
sleep 3.5
ct_ok link "rforward 127.0.0.1 $laptop_port"
kport=${CT_LINE#ok port=}
"$WANRELAY" --send "127.0.0.1:$kport" --bytes $MIB --parallel 2 --timeout 60 >"$T/send5.out" 2>&1 ||
	fail "reverse forward asked for between keepalives: $(cat "$T/send5.out")"
sleep 1.5
if tail -n +"$((mark + 1))" "$T/link.out" | grep -E '^event (lost|retry)'; then
	fail "an idle link with answered keepalives was dropped"
fi
pass "3.5 s idle with keepalives: the link stays, a forward asked for between them works"

# --- a changed host key on reconnect: give up, loudly, never log in --------------------------------
mark=$(ct_mark link)
rm -f "$T/sshd/host_ed25519" "$T/sshd/host_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C offload-test-host2 -f "$T/sshd/host_ed25519" </dev/null
newfp=$(host_fp)
sshd_restart
logins1=$(logins)
relay_kill
ct_wait link '^event lost ' 20 "$mark"
relay_start
ct_wait link "^event gave-up host key for 'ctl-relay' has CHANGED \\(now ssh-ed25519 $(re_escape "$newfp")\\); " 60 "$mark"
gave_at=$CT_AT
grep -qF "ctltest: gave up: host key for 'ctl-relay' has CHANGED (now ssh-ed25519 $newfp)" "$T/link.err" ||
	fail "no loud line on stderr for the changed host key: $(tail -n 5 "$T/link.err")"
conns=$(connections)
sleep 5 # with backoff at most 2 s, a tunnel that kept trying would have tried twice
assert_eq "$conns" "$(connections)" "connections to sshd after giving up"
assert_eq "$logins1" "$(logins)" "logins after the host key changed"
if tail -n +"$((gave_at + 1))" "$T/link.out" | grep -E '^event (retry|reconnected|connected)'; then
	fail "the tunnel kept trying after it gave up"
fi
ct_ok link stats
assert_eq 0 "$(stat_of connected)" "connected after giving up"
assert_eq 1 "$(stat_of gave_up)" "gave_up flag"
ct_do link "open-unix $T/cloud/echo.sock"
[[ $CT_LINE == "fail not connected to 'ctl-relay' (gave up) "* ]] ||
	fail "a channel after giving up: expected 'not connected (gave up)', got '$CT_LINE'"
ct_quit link
no_sanitizer "$T"/*.err
pass "a changed host key on reconnect: gave up loudly, no further connection or login"
