#!/usr/bin/env bash
# The write side of offload's SFTP client (tunnel/sftp_client.h), driven by tools/sftpwr, against
# the real OpenSSH sshd and against our own endpoint (offload serve), which mountd writes through.
# Every change is checked on disk (cmp, stat, readlink, inode numbers); a 2000-operation pipeline
# on the ordered stream must give the results and the tree that sequential execution gives (and a
# deliberately reordered one must not); cutting the link mid-stream must fail in-flight writes with
# ECONNRESET, cancel the rest, halt the stream until resume, make the old handle stale, and lose no
# byte once the caller rewrites what never completed; a request queued while the link is down goes
# out on the new connection; one queued too long fails EIO and halts the stream.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
: "${SFTPWR:=$(_t_default_bin sftpwr)}"
[[ -x $SFTPWR ]] || fail "no sftpwr at '$SFTPWR' (set SFTPWR)"

umask 022 # the servers inherit it; the modes below are those it leaves alone
t_setup
IMMUTABLE=()
trap 'rc=$?; for f in "${IMMUTABLE[@]}"; do chattr -i "$f" 2>/dev/null; done; (exit $rc); t_cleanup' EXIT
sshd_start
head -c $((1000 * 65536)) /dev/urandom >"$T/local.bin"

# --- the driver: one sftpwr coprocess, one command line in, one answer line out ---------------
drv_start() { # ARGS...: start sftpwr ARGS (its stderr goes to $T/drv.err)
	coproc DRV { HOME=$T_HOME exec "$SFTPWR" "$@" 2>>"$T/drv.err"; }
	DRV_IN=${DRV[1]} DRV_OUT=${DRV[0]} DRV_P=$DRV_PID
	t_track "$DRV_P"
}
q_send() { printf '%s\n' "$*" >&"$DRV_IN"; }
q_read() { # WHAT: the next answer, into $R
	IFS= read -r -t 600 R <&"$DRV_OUT" ||
		fail "sftpwr gave no answer to '$1': $(tail -n 5 "$T/drv.err" 2>/dev/null)"
}
q() { # CMD...: send a command and read its answer into $R
	q_send "$@"
	q_read "$*"
}
expect() { # WANT CMD...: the answer's first word must be WANT
	local want=$1
	shift
	q "$@"
	[[ ${R%% *} == "$want" ]] || fail "'$*': expected $want, got '$R'"
}
# expect_fail ERRNO CMD...: SFTP v3 has no code for it: OpenSSH's server says FAILURE ("Failure"),
# which the client can only call EIO; `offload serve` sends the errno's text, which the client
# maps back (name is the run_suite's server)
expect_fail() {
	local want=$1
	shift
	[[ $name == endpoint ]] || want=EIO
	expect "$want" "$@"
}
drv_stop() {
	local rc=0
	q_send quit
	wait "$DRV_P" || rc=$?
	((rc == 0)) || fail "sftpwr exited with status $rc: $(tail -n 5 "$T/drv.err")"
	! grep -E -A12 'ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer' "$T/drv.err" >&2 ||
		fail "sanitizer report from sftpwr (above)"
}

# tree_sig DIR: every entry under DIR ("." for DIR itself) as path, type, size (not for
# directories), mode, link count, symlink target; then the sha256 of every regular file.
# Not the times: writes stamp them with the clock.
tree_sig() {
	(cd "$1" && LC_ALL=C find . -printf '%p\t%y\t%s\t%m\t%n\t%l\n' |
		LC_ALL=C awk -F'\t' -v OFS='\t' '$2 == "d" { $3 = "-" } { print }' | LC_ALL=C sort &&
		LC_ALL=C find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum --)
}
same_tree() { # A B: 0 if tree_sig agrees; the difference goes to $T/tree.diff
	diff <(tree_sig "$1") <(tree_sig "$2") >"$T/tree.diff"
}
content() { cat -- "$1" 2>/dev/null || echo "(missing)"; }

# --- the same sequence against a server: RD is a fresh directory as the server names it, LD the
# same directory on this disk ---------------------------------------------------------------------
run_suite() {
	local name=$1 RD=$2 LD=$3 ino_a ino_b fails
	t_log "$name: sequence in $RD"

	# create with O_CREAT|O_EXCL, then 1000 pipelined 64 KiB writes, fsync, close
	for e in posix-rename@openssh.com hardlink@openssh.com fsync@openssh.com; do
		expect 0 ext "$e"
		assert_eq "0 1" "$R" "$name: $e announced"
	done
	expect 0 writemax
	assert_eq "0 65536" "$R" "$name: largest write"
	expect 0 open 1 "$RD/big" wcx 0600
	expect EINVAL writebig 1 65537
	expect 0 put 1 "$T/local.bin" 65536 64
	assert_eq "0 blocks=1000 bytes=65536000" "$R" "$name: pipelined writes"
	expect 0 fsync 1
	expect 0 close 1
	cmp "$T/local.bin" "$LD/big" || fail "$name: file written with 1000 pipelined writes differs"
	assert_eq 600 "$(stat -c %a "$LD/big")" "$name: mode of the file O_CREAT made (create attrs)"
	expect_fail EEXIST open 2 "$RD/big" wcx 0644
	expect_fail EEXIST open 2 "$RD/big" wcxt 0644
	cmp "$T/local.bin" "$LD/big" || fail "$name: O_EXCL on an existing file changed it"
	pass "$name: O_CREAT|O_EXCL, 1000 pipelined 64 KiB writes, fsync equal byte for byte; O_EXCL on it: EEXIST (EIO from OpenSSH)"

	# setstat: mode and times (whole seconds), size; fsetstat size through a handle
	expect 0 setstat "$RD/big" mode=0640,atime=1000000000,mtime=1234567890
	assert_eq "640 1000000000 1234567890" "$(stat -c '%a %X %Y' "$LD/big")" "$name: setstat mode and times"
	[[ $(stat -c %y "$LD/big") == *.000000000* ]] || fail "$name: mtime has nanoseconds: $(stat -c %y "$LD/big")"
	expect 0 stat "$RD/big"
	assert_eq "0 size=65536000 mode=100640 atime=1000000000 mtime=1234567890" "$R" "$name: stat after setstat"
	expect 0 setstat "$RD/big" size=12345
	head -c 12345 "$T/local.bin" >"$T/expect.bin"
	cmp "$T/expect.bin" "$LD/big" || fail "$name: truncate by setstat size"
	expect 0 open 3 "$RD/big" w
	expect 0 fsetstat 3 size=100000
	expect 0 fsetstat 3 mode=0604
	expect 0 close 3
	truncate -s 100000 "$T/expect.bin"
	cmp "$T/expect.bin" "$LD/big" || fail "$name: extend by fsetstat size"
	assert_eq 604 "$(stat -c %a "$LD/big")" "$name: fsetstat mode"
	expect ENOENT setstat "$RD/missing" mode=0644
	pass "$name: setstat mode, times (seconds), size; fsetstat size, mode"

	# mkdir, rmdir
	expect 0 mkdir "$RD/dir" 0750
	assert_eq "directory 750" "$(stat -c '%F %a' "$LD/dir")" "$name: mkdir"
	expect_fail EEXIST mkdir "$RD/dir" 0755
	expect ENOENT mkdir "$RD/nope/dir" 0755
	echo x >"$LD/dir/f"
	expect_fail ENOTEMPTY rmdir "$RD/dir"
	[[ -f $LD/dir/f ]] || fail "$name: rmdir of a full directory removed something"
	rm "$LD/dir/f"
	expect 0 rmdir "$RD/dir"
	[[ ! -e $LD/dir ]] || fail "$name: rmdir left '$LD/dir'"
	expect ENOENT rmdir "$RD/dir"
	pass "$name: mkdir (mode, exists, no parent), rmdir (full, empty, missing)"

	# rename: replace (posix-rename), NOREPLACE (plain RENAME), EXCHANGE refused
	printf AAA >"$LD/ra"
	printf BBB >"$LD/rb"
	printf CCC >"$LD/rc"
	expect 0 rename "$RD/ra" "$RD/rb"
	[[ ! -e $LD/ra && $(content "$LD/rb") == AAA ]] || fail "$name: rename did not replace: rb='$(content "$LD/rb")'"
	expect_fail EEXIST rename "$RD/rc" "$RD/rb" noreplace
	[[ $(content "$LD/rb") == AAA && $(content "$LD/rc") == CCC ]] ||
		fail "$name: refused NOREPLACE rename changed something: rb='$(content "$LD/rb")' rc='$(content "$LD/rc")'"
	expect 0 rename "$RD/rc" "$RD/rd" noreplace
	[[ ! -e $LD/rc && $(content "$LD/rd") == CCC ]] || fail "$name: NOREPLACE rename to a free name"
	expect EINVAL rename "$RD/rd" "$RD/rb" exchange
	[[ $(content "$LD/rb") == AAA && $(content "$LD/rd") == CCC ]] || fail "$name: EXCHANGE changed something"
	expect ENOENT rename "$RD/missing" "$RD/x"
	mkdir "$LD/rdir"
	expect 0 rename "$RD/rdir" "$RD/rdir2" noreplace
	[[ -d $LD/rdir2 && ! -e $LD/rdir ]] || fail "$name: NOREPLACE rename of a directory"
	pass "$name: rename replaces (posix-rename), NOREPLACE refuses an existing target, EXCHANGE is EINVAL"

	# symlink: the target first on the wire, then the link path
	expect 0 symlink ../some/target "$RD/sl"
	assert_eq "../some/target" "$(readlink "$LD/sl")" "$name: symlink target on disk"
	expect 0 readlink "$RD/sl"
	assert_eq "0 ../some/target" "$R" "$name: readlink through the client"
	[[ ! -e $LD/../some && ! -L $LD/../some/target ]] || fail "$name: symlink made at the target's path"
	expect_fail EEXIST symlink other "$RD/sl"
	assert_eq "../some/target" "$(readlink "$LD/sl")" "$name: symlink over an existing one changed it"
	pass "$name: symlink (OpenSSH order: target, link path), readlink, existing link refused"

	# hardlink
	expect 0 hardlink "$RD/rb" "$RD/hl"
	ino_a=$(stat -c %i "$LD/rb") ino_b=$(stat -c %i "$LD/hl")
	assert_eq "$ino_a" "$ino_b" "$name: inode of the hard link"
	assert_eq 2 "$(stat -c %h "$LD/rb")" "$name: link count after hardlink"
	expect_fail EEXIST hardlink "$RD/rb" "$RD/hl"
	expect ENOENT hardlink "$RD/missing" "$RD/hl2"
	pass "$name: hardlink (same inode, 2 links), existing target EEXIST (EIO from OpenSSH), missing source ENOENT"

	# remove
	expect 0 remove "$RD/hl"
	[[ ! -e $LD/hl ]] || fail "$name: remove left '$LD/hl'"
	assert_eq 1 "$(stat -c %h "$LD/rb")" "$name: link count after remove"
	expect ENOENT remove "$RD/hl"
	mkdir "$LD/adir"
	expect_fail EISDIR remove "$RD/adir"
	[[ -d $LD/adir ]] || fail "$name: remove of a directory removed it"
	expect ENOENT open 4 "$RD/missing" r
	expect ENOENT open 4 "$RD/missing/new" wc 0644
	pass "$name: remove (file, missing, directory); ENOENT on open"

	# permission denied as root: an immutable file (EPERM, which SFTP reports as PERMISSION_DENIED)
	printf keep >"$LD/imm"
	if chattr +i "$LD/imm" 2>/dev/null; then
		IMMUTABLE+=("$LD/imm")
		# OpenSSH's text is "Permission denied" (EACCES); offload serve's is EPERM's own
		local eperm=EACCES
		[[ $name != endpoint ]] || eperm=EPERM
		expect $eperm remove "$RD/imm"
		expect $eperm setstat "$RD/imm" mode=0600
		expect $eperm open 5 "$RD/imm" w
		expect $eperm rename "$RD/imm" "$RD/imm2"
		expect $eperm hardlink "$RD/imm" "$RD/imm3"
		chattr -i "$LD/imm"
		[[ $(content "$LD/imm") == keep && $(stat -c %a "$LD/imm") == 644 && ! -e $LD/imm2 && ! -e $LD/imm3 ]] ||
			fail "$name: refused changes to an immutable file left a trace"
		pass "$name: $eperm on an immutable file: remove, setstat, open for write, rename, hardlink"
	else
		t_log "$name: SKIP EACCES: chattr +i does not work on '$LD' ($(stat -f -c %T "$LD"))"
	fi

	# the ordered stream: 2000 mixed operations pipelined equal the same done one by one
	mkdir "$LD/pa" "$LD/pb" "$LD/pc" "$LD/pd"
	expect 0 pipeline 7 2000 "$RD/pa" "$RD/pb"
	local got=$R
	fails=$(sed -n 's/.* failed=\([0-9]*\) .*/\1/p' <<<"$R")
	((fails > 200 && fails < 1800)) || fail "$name: pipeline should mix successes and failures: $R"
	same_tree "$LD/pa" "$LD/pb" ||
		fail "$name: pipelined tree differs from the sequential one: $(head -n 6 "$T/tree.diff")"
	[[ $(find "$LD/pa" -mindepth 1 | wc -l) -gt 3 ]] || fail "$name: pipeline left an empty tree"
	for i in 0 1 2; do # the files every write went to
		[[ $(stat -c %s "$LD/pa/K/w$i") -gt 100000 ]] ||
			fail "$name: pipeline: K/w$i holds only $(stat -c %s "$LD/pa/K/w$i") bytes"
	done
	f=$LD/pb/K/w0
	cp "$f" "$T/w0.saved"
	printf '\xff' | dd of="$f" bs=1 seek=5000 conv=notrunc status=none
	cmp -s "$f" "$T/w0.saved" && printf '\x00' | dd of="$f" bs=1 seek=5000 conv=notrunc status=none
	! same_tree "$LD/pa" "$LD/pb" || fail "$name: tree_sig missed a one-byte change"
	cat "$T/w0.saved" >"$f"
	same_tree "$LD/pa" "$LD/pb" || fail "$name: tree_sig: restoring the byte did not restore equality"
	chmod 0 "$f"
	! same_tree "$LD/pa" "$LD/pb" || fail "$name: tree_sig missed a mode change"
	expect MISMATCH pipeline 7 2000 "$RD/pc" "$RD/pd" swap
	pass "$name: 2000 pipelined mixed ops: same results and tree as sequential ($got); a reordered run is caught ($R)"
}

# --- 1. OpenSSH's sftp-server -------------------------------------------------------------------
mkdir -p "$T/o"
drv_start -F "$T_SSH_CONFIG" offload-test
run_suite openssh "$T/o" "$T/o"

# a read-only file system: OpenSSH answers FAILURE for EROFS, so the client can only say EIO
mkdir -p "$T/o/rosrc" "$T/o/ro"
echo ro >"$T/o/rosrc/file"
if mount --bind -o ro "$T/o/rosrc" "$T/o/ro" 2>/dev/null && ! touch "$T/o/ro/probe" 2>/dev/null; then
	expect EIO open 6 "$T/o/ro/new" wc 0644
	expect EIO mkdir "$T/o/ro/d" 0755
	expect EIO remove "$T/o/ro/file"
	expect EIO setstat "$T/o/ro/file" mode=0600
	umount "$T/o/ro"
	[[ $(ls -A "$T/o/rosrc") == file && $(stat -c %a "$T/o/rosrc/file") == 644 ]] ||
		fail "read-only file system: something changed: $(ls -l "$T/o/rosrc")"
	pass "openssh: EROFS arrives as EIO (SFTP v3 FAILURE loses the errno), nothing changed"
else
	umount "$T/o/ro" 2>/dev/null || true
	t_log "openssh: SKIP EROFS: cannot make a read-only bind mount here"
fi
drv_stop

# --- 2. the link cut in the middle of a stream of writes ----------------------------------------
sftp_servers() { # the sftp-server processes of this test's sshd
	local p
	for p in $(_t_descendants "$SSHD_PID"); do
		[[ $(cat "/proc/$p/comm" 2>/dev/null) == sftp-server ]] && echo "$p"
	done
	return 0
}
drv_start -F "$T_SSH_CONFIG" offload-test
rm -f "$T/marker"
q_send cut "$T/o/cut.bin" "$T/local.bin" 65536 64 "$T/marker" 120
for _ in $(seq 600); do [[ -e $T/marker ]] && break; sleep 0.05; done
[[ -e $T/marker ]] || fail "cut: the writes did not start ($(tail -n 3 "$T/drv.err"))"
pids=$(sftp_servers)
[[ -n $pids ]] || fail "cut: no sftp-server process under sshd $SSHD_PID"
# stopped first, so that writes are surely in flight when it dies (a slow client, under ASan,
# could otherwise have none on the wire at the instant of the kill)
# shellcheck disable=SC2086
kill -STOP $pids
sleep 0.3
# shellcheck disable=SC2086
kill -KILL $pids
q_read cut
t_log "cut: $R"
[[ $R == "0 "* ]] || fail "cut: expected success after the rewrite, got '$R'"
reset=$(sed -n 's/.* reset=\([0-9]*\) .*/\1/p' <<<"$R")
((reset >= 1)) || fail "cut: no write was in flight when the link was cut (reset=$reset): $R"
[[ $R == *" halted=ECANCELED "* ]] || fail "cut: a write after the cut was not refused ECANCELED: $R"
[[ $R == *" stale_after=ESTALE "* ]] || fail "cut: the old handle was not ESTALE on the new connection: $R"
[[ $R == *" other=0 "* && $R == *" close=0" ]] || fail "cut: unexpected failures: $R"
[[ $R == *" ok_after_failure=0 "* ]] || fail "cut: requests queued behind a cut one were sent: $R"
[[ $R == *" mkdirs_wrong=0 "* && $R != *" mkdirs_checked=0 "* ]] ||
	fail "cut: a MKDIR on the stream did not do what its result said: $R"
cmp "$T/local.bin" "$T/o/cut.bin" || fail "cut: file differs after rewriting what never completed"
pass "link cut mid-stream: in-flight requests ECONNRESET, the rest ECANCELED (none sent), halted until resume, old handle ESTALE, file equal after the rewrite ($R)"

# the same with path requests only, 4000 outstanding: about 3000 of them wait in the client's queue
# when the link goes, and none of those may go out on the new connection
rm -f "$T/marker"
q_send cut "$T/o/cut2.bin" "$T/local.bin" 65536 4000 "$T/marker" 120 paths
for _ in $(seq 600); do [[ -e $T/marker ]] && break; sleep 0.05; done
[[ -e $T/marker ]] || fail "cut paths: the requests did not start ($(tail -n 3 "$T/drv.err"))"
pids=$(sftp_servers)
[[ -n $pids ]] || fail "cut paths: no sftp-server process under sshd $SSHD_PID"
# shellcheck disable=SC2086
kill -KILL $pids
q_read "cut paths"
t_log "cut paths: $R"
canceled=$(sed -n 's/.* canceled=\([0-9]*\) .*/\1/p' <<<"$R")
[[ $R == "0 "* && $R == *" ok_after_failure=0 "* && $R == *" mkdirs_wrong=0 "* && $R == *" other=0 "* ]] ||
	fail "cut paths: $R"
((canceled >= 100)) || fail "cut paths: too few requests were queued at the cut to show anything: $R"
cmp "$T/local.bin" "$T/o/cut2.bin" || fail "cut paths: file differs"
pass "link cut with $canceled path requests queued: all ECANCELED, none sent on the new connection"
drv_stop

# --- 3. a request queued while the link is down goes out on the new connection -------------------
drv_start -t 30000 -F "$T_SSH_CONFIG" offload-test
expect 0 connected # answered once connected
sshd_kill_all
expect 0 waitconn 0 10
expect 0 async mkdir "$T/o/after" 0755
expect 0 async symlink after "$T/o/after-link"
expect 0 async rename "$T/o/after-link" "$T/o/after-link2"
[[ ! -e $T/o/after ]] || fail "queued while down: mkdir done before the server was back"
sshd_restart
q wait 60
assert_eq "0 0 0 0" "$R" "results of three operations queued while the link was down"
[[ -d $T/o/after && $(readlink "$T/o/after-link2") == after && ! -L $T/o/after-link ]] ||
	fail "queued while down: the operations did not land in order: $(cd "$T/o" && ls -ld after*)"
pass "operations queued while the link was down are sent, in order, on the new connection"
drv_stop

# --- 4. queued longer than the bound: EIO, and the stream halts until resume ---------------------
drv_start -t 3000 -F "$T_SSH_CONFIG" offload-test
expect 0 connected
sshd_kill_all
expect 0 waitconn 0 10
expect 0 async mkdir "$T/o/never1" 0755
sleep 1.5
expect 0 async mkdir "$T/o/never2" 0755
q wait 30
assert_eq "0 EIO ECANCELED" "$R" "a queued request expires (EIO) and cancels the one behind it"
expect ECANCELED async mkdir "$T/o/never3" 0755
sshd_restart
expect 0 waitconn 1 30
expect ECANCELED async mkdir "$T/o/never3" 0755
expect 0 resume
expect 0 async mkdir "$T/o/after2" 0755
q wait 30
assert_eq "0 0" "$R" "a request after resume"
[[ -d $T/o/after2 && ! -e $T/o/never1 && ! -e $T/o/never2 && ! -e $T/o/never3 ]] ||
	fail "expired or canceled requests were sent: $(cd "$T/o" && echo never* after2*)"
pass "a request queued too long fails EIO, the stream halts (ECANCELED) until resume, nothing expired is sent"
drv_stop

# --- 5. our own endpoint (offload serve), which mountd writes through -----------------------------
EP=$T/ep
mkdir -p "$T/exp/proj/e" "$T/exp/ro"
echo ro >"$T/exp/ro/file"
"$OFFLOAD_BIN" serve "$T/exp/proj" "$T/exp/ro:ro" --details "$EP" >"$T/serve.out" 2>"$T/serve.err" &
t_track $!
for _ in $(seq 100); do [[ -f $EP/ssh_config ]] && break; sleep 0.1; done
[[ -f $EP/ssh_config ]] || fail "offload serve wrote no details: $(cat "$T/serve.err")"
drv_start -F "$EP/ssh_config" offload-endpoint
run_suite endpoint /proj/e "$T/exp/proj/e"
expect EROFS mkdir /ro/d 0755
expect EROFS open 6 /ro/file w
expect EROFS remove /ro/file
[[ $(ls -A "$T/exp/ro") == file ]] || fail "endpoint: the read-only root changed: $(ls -A "$T/exp/ro")"
pass "endpoint: a read-only root refuses writes with EROFS (PERMISSION_DENIED and its errno's text)"
drv_stop
