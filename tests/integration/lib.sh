# shellcheck shell=bash
# Library for the integration tests: sourced by every tests/integration/*.sh.
#
#   #!/usr/bin/env bash
#   set -euo pipefail
#   . "$(dirname "$0")/lib.sh"
#   t_setup                  # $T = fresh temp dir, cleanup trap installed
#   sshd_start               # real OpenSSH sshd on 127.0.0.1:$SSHD_PORT
#   "$GEN_TREE" --files 300 --big-mib 4 "$T/src"
#   HOME=$T_HOME "$OFFLOAD_BIN" mount "offload-test:$T/src" "$T/mnt" ...
#   sshfs -F "$T_SSH_CONFIG" "offload-test:$T/src" "$T/mnt"
#   tree_equal "$T/src" "$T/mnt" || fail "mounted tree differs"
#   pass "what was shown"
#
# Environment (set by ctest, see tests/CMakeLists.txt; defaults for runs by hand):
#   OFFLOAD_SRC  source tree            (default: two levels above this file)
#   OFFLOAD_BIN  the offload binary     (default: ./tools/offload, else $OFFLOAD_SRC/build/tools/offload)
#   GEN_TREE     the fixture generator  (default: ./tools/gen_tree, else $OFFLOAD_SRC/build/tools/gen_tree)
#   POSIXSUITE, FSX  the POSIX suite and the fsx exerciser (defaults as GEN_TREE)
#   T_KEEP=1     keep $T after the test (for post-mortems); mounts and daemons still go
#
# Every function is safe under `set -euo pipefail`. Functions that check
# something return non-zero on a mismatch (so `|| fail ...` works); fail exits.

# Sourced twice is harmless.
if [[ -n ${_OFFLOAD_TEST_LIB:-} ]]; then
	return 0
fi
_OFFLOAD_TEST_LIB=1

: "${OFFLOAD_SRC:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
_t_default_bin() { # NAME: ./tools/NAME if the cwd is a build dir, else build/tools/NAME
	if [[ -x ./tools/$1 ]]; then
		echo "$PWD/tools/$1"
	else
		echo "$OFFLOAD_SRC/build/tools/$1"
	fi
}
: "${OFFLOAD_BIN:=$(_t_default_bin offload)}"
: "${GEN_TREE:=$(_t_default_bin gen_tree)}"
: "${POSIXSUITE:=$(_t_default_bin posixsuite)}" "${FSX:=$(_t_default_bin fsx)}"
export OFFLOAD_SRC OFFLOAD_BIN GEN_TREE

T=""
T_PIDS=()      # daemons started by the test (t_track), killed by t_cleanup
SSHD_PID=""
SSHD_PORT=""
_T_CLEANED=""

# --- results -----------------------------------------------------------------

# fail MESSAGE...: print "FAIL: MESSAGE" and exit 1 (the trap cleans up).
# A plain unmount fails with EBUSY while any process is inside the mount, and mountd itself
# stats what was just read or listed, 10 ms later (its attribute refresher): a test that
# unmounts right after a read retries for a second, as a user would.
fusermount3() {
	local i rc err=/tmp/.offload-fusermount3.$$
	for i in $(seq 10); do
		command fusermount3 "$@" 2>"$err" && rc=0 && break
		rc=1
		grep -q "busy" "$err" || break
		sleep 0.1
	done
	((rc == 0)) || cat "$err" >&2
	rm -f "$err"
	return "$rc"
}

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

# pass MESSAGE...: print "PASS: MESSAGE".
pass() {
	echo "PASS: $*"
}

# assert_eq EXPECTED GOT WHAT: fail unless EXPECTED == GOT (as strings).
assert_eq() {
	if [[ "$1" != "$2" ]]; then
		fail "${3:-value}: expected '$1', got '$2'"
	fi
}

# t_log MESSAGE...: progress line on stderr, prefixed with the elapsed seconds.
t_log() {
	echo "[$SECONDS s] $*" >&2
}

# --- setup and cleanup ---------------------------------------------------------

# t_setup: make $T (mktemp under /tmp) and install the cleanup trap on EXIT,
# INT and TERM. Call once, before anything that needs cleaning up.
t_setup() {
	T=$(mktemp -d /tmp/offload-test.XXXXXXXX)
	export T
	trap 't_cleanup' EXIT
	trap 't_cleanup; trap - EXIT; exit 130' INT
	trap 't_cleanup; trap - EXIT; exit 143' TERM
	t_log "test dir $T"
}

# t_track PID...: have t_cleanup kill these processes (and their children).
t_track() {
	T_PIDS+=("$@")
}

# _t_descendants PID: every descendant of PID, children before grandchildren.
_t_descendants() {
	local kids k
	kids=$(pgrep -P "$1" 2>/dev/null || true)
	for k in $kids; do
		echo "$k"
		_t_descendants "$k"
	done
}

# _t_kill_tree SIG PID...: signal each PID and all its descendants (collected
# first, since killing a parent reparents its children to init).
_t_kill_tree() {
	local sig=$1 p all=()
	shift
	for p in "$@"; do
		[[ -n $p ]] || continue
		all+=("$p")
		mapfile -t -O "${#all[@]}" all < <(_t_descendants "$p")
	done
	((${#all[@]})) || return 0
	kill "-$sig" "${all[@]}" 2>/dev/null || true
}

# _t_unescape: mountinfo escapes space, tab, newline and backslash as \ooo.
_t_unescape() {
	printf '%b' "${1//\\/\\0}"
}

# _t_mounts_under DIR: mount points at or under DIR, deepest first.
_t_mounts_under() {
	local dir=$1 mp
	while read -r _ _ _ _ mp _; do
		mp=$(_t_unescape "$mp")
		if [[ $mp == "$dir" || $mp == "$dir"/* ]]; then
			printf '%s\n' "$mp"
		fi
	done </proc/self/mountinfo | awk '{ print length($0) "\t" $0 }' | sort -rn | cut -f2-
}

# _t_pids_using DIR: processes whose command line names DIR (sshfs and offload
# daemons that detached from the test shell, the sshd of this test). DIR is a
# unique mktemp name, so nothing outside this test matches.
_t_pids_using() {
	local dir=$1 p cmd
	for p in /proc/[0-9]*; do
		p=${p#/proc/}
		[[ $p != "$$" && $p != "$BASHPID" ]] || continue
		cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
		if [[ $cmd == *"$dir/"* || $cmd == *"$dir "* ]]; then
			echo "$p"
		fi
	done
}

# t_cleanup: lazily unmount every mount under $T, kill the daemons the test
# started (tracked ones, children of the test shell, anything naming $T on
# its command line, sshd and its sessions) and remove $T. Runs from the trap;
# safe to call twice. Keeps the test's exit status.
t_cleanup() {
	local rc=$? mp pids
	[[ -z $_T_CLEANED ]] || return "$rc"
	_T_CLEANED=1
	set +e
	if [[ -z $T || ! -d $T ]]; then
		return "$rc"
	fi
	if ((rc != 0)) && [[ -s $T/sshd.log ]]; then
		echo "--- last lines of $T/sshd.log" >&2
		tail -n 20 "$T/sshd.log" >&2
		echo "---" >&2
	fi
	if ((rc != 0)); then
		local lg
		while read -r lg; do
			[[ -s $lg ]] || continue
			echo "--- last lines of $lg" >&2
			tail -n 15 "$lg" >&2
		done < <(find "$T" -name mountd.log 2>/dev/null)
	fi
	while read -r mp; do
		[[ -n $mp ]] || continue
		fusermount3 -u -z "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null ||
			echo "cleanup: cannot unmount '$mp'" >&2
	done < <(_t_mounts_under "$T")
	pids=$(_t_pids_using "$T")
	# shellcheck disable=SC2086
	_t_kill_tree TERM "${T_PIDS[@]}" $SSHD_PID $pids $(pgrep -P $$ 2>/dev/null)
	sleep 0.2
	pids="$pids $(_t_pids_using "$T")"
	# shellcheck disable=SC2086
	_t_kill_tree KILL "${T_PIDS[@]}" $SSHD_PID $pids $(pgrep -P $$ 2>/dev/null)
	# No `wait`: a child stuck in the kernel must not hang the cleanup.
	# A sanitizer report in any mountd log fails the test, whatever the test itself saw (the
	# ASan+UBSan build runs the same tests; the daemon's stderr goes to its log).
	local logs
	logs=$(grep -rlE --include=mountd.log 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$T" 2>/dev/null)
	if [[ -n $logs ]]; then
		echo "FAIL: sanitizer report in $logs:" >&2
		# shellcheck disable=SC2086
		grep -hE -A12 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' $logs | head -60 >&2
		rc=1
	fi
	if [[ ${T_KEEP:-} == 1 ]]; then
		echo "cleanup: kept $T" >&2
	else
		rm -rf --one-file-system "$T" 2>/dev/null || rm -rf "$T"
	fi
	return "$rc"
}

# --- mounts --------------------------------------------------------------------

# is_mounted MNT: 0 if MNT is a mount point. Reads /proc/self/mountinfo, so it
# never touches (and never hangs on) a mount whose daemon is stuck.
is_mounted() {
	local want mp
	want=$(realpath -m -s -- "$1") # -s: no lstat, which could hang on a stuck mount
	while read -r _ _ _ _ mp _; do
		[[ $(_t_unescape "$mp") == "$want" ]] && return 0
	done </proc/self/mountinfo
	return 1
}

# wait_mounted MNT [TIMEOUT_S=10]: wait until MNT is mounted; non-zero on timeout.
wait_mounted() {
	local mnt=$1 deadline=$((SECONDS + ${2:-10}))
	until is_mounted "$mnt"; do
		if ((SECONDS >= deadline)); then
			echo "wait_mounted: '$mnt' not mounted after ${2:-10} s" >&2
			return 1
		fi
		sleep 0.05
	done
}

# wait_unmounted MNT [TIMEOUT_S=10]: wait until MNT is no longer mounted.
wait_unmounted() {
	local mnt=$1 deadline=$((SECONDS + ${2:-10}))
	while is_mounted "$mnt"; do
		if ((SECONDS >= deadline)); then
			echo "wait_unmounted: '$mnt' still mounted after ${2:-10} s" >&2
			return 1
		fi
		sleep 0.05
	done
}

# --- sshd ------------------------------------------------------------------------

# _t_port_free PORT: 0 if nothing listens on 127.0.0.1:PORT.
_t_port_free() {
	if command -v ss >/dev/null; then
		[[ -z $(ss -Htln "sport = :$1" 2>/dev/null) ]]
	else
		! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# _t_port_listening PORT: 0 once something listens on 127.0.0.1:PORT.
_t_port_listening() {
	if command -v ss >/dev/null; then
		[[ -n $(ss -Htln "src 127.0.0.1 and sport = :$1" 2>/dev/null) ]]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

_t_write_sshd_config() {
	local d=$T/sshd
	cat >"$d/sshd_config" <<EOF
# offload integration test sshd (generated by tests/integration/lib.sh)
ListenAddress 127.0.0.1
Port $SSHD_PORT
PidFile $d/sshd.pid
HostKey $d/host_ed25519
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding yes
LoginGraceTime 30
MaxStartups 200:30:400
MaxSessions 200
MaxAuthTries 6
LogLevel VERBOSE
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
	# OpenSSH >= 9.8 penalizes sources that crash sessions (as kill tests do);
	# older versions reject the keyword, so add it only where it is known.
	if /usr/sbin/sshd -t -f "$d/sshd_config" -o PerSourcePenalties=no 2>/dev/null; then
		echo "PerSourcePenalties no" >>"$d/sshd_config"
	fi
}

# _t_sshd_launch: start sshd on $SSHD_PORT with the config in $T/sshd and wait
# until it listens. Returns 1 if it died (e.g. the port was taken), 2 on timeout.
_t_sshd_launch() {
	local deadline=$((SECONDS + 10))
	echo "=== sshd start on port $SSHD_PORT at $(date +%T)" >>"$T/sshd.log"
	/usr/sbin/sshd -D -e -f "$T/sshd/sshd_config" >>"$T/sshd.log" 2>&1 &
	SSHD_PID=$!
	export SSHD_PID
	until _t_port_listening "$SSHD_PORT"; do
		if ! kill -0 "$SSHD_PID" 2>/dev/null; then
			wait "$SSHD_PID" 2>/dev/null || true
			SSHD_PID=""
			return 1
		fi
		if ((SECONDS >= deadline)); then
			return 2
		fi
		sleep 0.05
	done
}

# sshd_start: start a real OpenSSH sshd for this test on 127.0.0.1 and a free
# random port, with its own host key and a client key in $T, and a client HOME
# ($T_HOME) whose ~/.ssh/config names it "offload-test" (root, key auth, strict
# host key checking against $T_HOME/.ssh/known_hosts). Exports SSHD_PORT,
# SSHD_PID, T_HOME, T_SSH_CONFIG. sshd logs to $T/sshd.log.
sshd_start() {
	local d=$T/sshd tries r
	[[ -n $T ]] || fail "sshd_start: call t_setup first"
	mkdir -p "$d"
	ssh-keygen -q -t ed25519 -N '' -C offload-test-host -f "$d/host_ed25519" </dev/null
	ssh-keygen -q -t ed25519 -N '' -C offload-test-client -f "$d/client_ed25519" </dev/null
	cp "$d/client_ed25519.pub" "$d/authorized_keys"
	chmod 600 "$d/authorized_keys"
	# sshd (also its config check, -t) wants its privilege separation folder, which only the
	# package's service unit makes: a fresh machine without systemd has none
	mkdir -p /run/sshd
	chmod 755 /run/sshd

	for tries in 1 2 3 4 5 6 7 8; do
		SSHD_PORT=$((20000 + RANDOM % 40000))
		_t_port_free "$SSHD_PORT" || continue
		_t_write_sshd_config
		if /usr/sbin/sshd -t -f "$d/sshd_config" >>"$T/sshd.log" 2>&1; then :; else
			fail "sshd_start: sshd rejects its config (see $T/sshd.log)"
		fi
		r=0
		_t_sshd_launch || r=$?
		((r != 0)) || break
		((r != 2)) || fail "sshd_start: sshd not listening on port $SSHD_PORT after 10 s"
		t_log "sshd could not start on port $SSHD_PORT (try $tries), trying another"
	done
	[[ -n $SSHD_PID ]] || fail "sshd_start: sshd did not start (see $T/sshd.log)"
	export SSHD_PORT

	T_HOME=$T/home
	T_SSH_CONFIG=$T_HOME/.ssh/config
	mkdir -p "$T_HOME/.ssh"
	chmod 700 "$T_HOME" "$T_HOME/.ssh"
	cp "$d/client_ed25519" "$d/client_ed25519.pub" "$T_HOME/.ssh/"
	cat >"$T_SSH_CONFIG" <<EOF
Host offload-test
	HostName 127.0.0.1
	Port $SSHD_PORT
	User root
	IdentityFile $T_HOME/.ssh/client_ed25519
	IdentitiesOnly yes
	UserKnownHostsFile $T_HOME/.ssh/known_hosts
	GlobalKnownHostsFile /dev/null
	StrictHostKeyChecking yes
	UpdateHostKeys no
	BatchMode yes
	ConnectTimeout 10
	LogLevel ERROR
EOF
	echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1,2 "$d/host_ed25519.pub")" >"$T_HOME/.ssh/known_hosts"
	chmod 600 "$T_SSH_CONFIG" "$T_HOME/.ssh/known_hosts" "$T_HOME/.ssh/client_ed25519"
	export T_HOME T_SSH_CONFIG
	t_log "sshd pid $SSHD_PID listening on 127.0.0.1:$SSHD_PORT"
}

# sshd_stop: stop the sshd listener gracefully (SIGTERM) and wait for it.
# Like a real sshd stop, sessions already open are left running.
sshd_stop() {
	local deadline=$((SECONDS + 10))
	[[ -n $SSHD_PID ]] || return 0
	# The sessions outlive the listener: t_cleanup still has to kill them.
	mapfile -t -O "${#T_PIDS[@]}" T_PIDS < <(_t_descendants "$SSHD_PID")
	kill -TERM "$SSHD_PID" 2>/dev/null || true
	while kill -0 "$SSHD_PID" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			kill -KILL "$SSHD_PID" 2>/dev/null || true
			break
		fi
		sleep 0.05
	done
	wait "$SSHD_PID" 2>/dev/null || true
	SSHD_PID=""
}

# sshd_kill_all: SIGKILL the listener and every session process under it
# (privileged monitors, user sessions, sftp-server): the server host dying.
sshd_kill_all() {
	[[ -n $SSHD_PID ]] || return 0
	_t_kill_tree KILL "$SSHD_PID"
	wait "$SSHD_PID" 2>/dev/null || true
	SSHD_PID=""
}

# sshd_restart: stop sshd (if running) and start it again on the same port
# with the same keys and config.
sshd_restart() {
	local r=0 tries
	sshd_stop
	for tries in 1 2 3 4 5; do
		r=0
		_t_sshd_launch || r=$?
		((r != 0)) || break
		sleep 0.5 # the port may still be held for a moment
	done
	((r == 0)) || fail "sshd_restart: sshd did not come back on port $SSHD_PORT (see $T/sshd.log)"
	t_log "sshd restarted, pid $SSHD_PID"
}

# sshfs_opts: the -o options tests pass to sshfs for a full view of the tree.
# Debian's sshfs 3.7.3-1.2 (CVE-2026-47187) defaults to contain_symlinks, which
# makes readlink fail with EPERM on absolute targets and targets with "..";
# the test server is trusted, so turn that off where the option exists.
sshfs_opts() {
	if sshfs --help 2>&1 | grep no_contain_symlinks >/dev/null; then # not -q: no SIGPIPE under pipefail
		echo "no_contain_symlinks"
	else
		echo "reconnect"
	fi
}

# relay_start PORT TARGET [DELAY_MS]: tools/wanrelay on 127.0.0.1:PORT to TARGET (host:port),
# holding every chunk DELAY_MS (default 0) each way; tracked for the cleanup, and listening when
# this returns. Sets RELAY_PID (kill -9 it to cut the link; call again to heal it).
relay_start() {
	: "${WANRELAY:=$(dirname "$OFFLOAD_BIN")/wanrelay}"
	"$WANRELAY" --listen "127.0.0.1:$1" --connect "$2" --delay-ms "${3:-0}" --quiet &
	RELAY_PID=$!
	t_track $RELAY_PID
	for _ in $(seq 50); do nc -z 127.0.0.1 "$1" 2>/dev/null && return 0; sleep 0.1; done
	fail "relay on port $1 did not start"
}

# --- trees -------------------------------------------------------------------------

# _t_tree_list DIR [--no-dir-mtime]: one line per entry under DIR, sorted:
# PATH TYPE SIZE MODE MTIME_S TARGET (size only for files and symlinks).
_t_tree_list() {
	local dir=$1 dirmtime=${2:-}
	(cd "$dir" && LC_ALL=C find . -mindepth 1 -printf '%P\t%y\t%s\t%m\t%T@\t%l\n') |
		LC_ALL=C awk -F'\t' -v OFS='\t' -v nodm="$dirmtime" '{
			split($5, t, "."); $5 = t[1]
			if ($2 == "d") { $3 = "-"; if (nodm != "") $5 = "-" }
			print
		}' | LC_ALL=C sort
}

# _t_tree_hashes DIR: sha256 of every regular file under DIR, sorted by path.
_t_tree_hashes() {
	(cd "$1" && LC_ALL=C find . -type f -printf '%P\0' | LC_ALL=C sort -z |
		xargs -0 -r sha256sum --)
}

# tree_equal [--no-dir-mtime] A B: 0 if the trees under A and B have the same
# paths, types, sizes, symlink targets, mode bits, mtimes (seconds) and file
# contents (sha256, then cmp for the first differing file). Otherwise prints
# the first difference and returns 1. Does not follow symlinks.
tree_equal() {
	local dirmtime="" a b la lb ha hb first line f
	if [[ ${1:-} == --no-dir-mtime ]]; then
		dirmtime=1
		shift
	fi
	a=$1 b=$2
	[[ -d $a ]] || { echo "tree_equal: '$a' is not a directory" >&2; return 1; }
	[[ -d $b ]] || { echo "tree_equal: '$b' is not a directory" >&2; return 1; }
	if [[ -n $(cd "$a" && find . -name $'*\n*' -print -quit) ]]; then
		echo "tree_equal: '$a' has a name with a newline, which this check cannot compare" >&2
		return 1
	fi
	la=$(mktemp -p "${T:-/tmp}") lb=$(mktemp -p "${T:-/tmp}")
	ha=$(mktemp -p "${T:-/tmp}") hb=$(mktemp -p "${T:-/tmp}")
	# Both sides in parallel: the mount side is usually the slow one.
	_t_tree_list "$a" "$dirmtime" >"$la" &
	if ! _t_tree_list "$b" "$dirmtime" >"$lb"; then
		echo "tree_equal: cannot list '$b'" >&2
	fi
	if ! wait $!; then
		echo "tree_equal: cannot list '$a'" >&2
	fi
	first=$(diff "$la" "$lb" | grep -m1 '^[<>]' || true)
	if [[ -n $first ]]; then
		echo "tree_equal: '$a' and '$b' differ (path type size mode mtime target):" >&2
		diff "$la" "$lb" | grep '^[<>]' | head -n 6 | sed 's/^</  A:/; s/^>/  B:/' >&2
		rm -f "$la" "$lb" "$ha" "$hb"
		return 1
	fi
	_t_tree_hashes "$a" >"$ha" &
	if ! _t_tree_hashes "$b" >"$hb"; then
		echo "tree_equal: cannot read every file under '$b'" >&2
		echo "read error" >>"$hb"
	fi
	if ! wait $!; then
		echo "tree_equal: cannot read every file under '$a'" >&2
		echo "read error" >>"$ha"
	fi
	line=$(diff "$ha" "$hb" | grep -m1 '^[<>]' || true)
	rm -f "$la" "$lb" "$ha" "$hb"
	if [[ -n $line ]]; then
		f=${line:68} # "< " HASH(64) "  " PATH
		echo "tree_equal: contents differ between '$a' and '$b' at '$f':" >&2
		cmp -- "$a/$f" "$b/$f" >&2 || true
		return 1
	fi
	return 0
}
