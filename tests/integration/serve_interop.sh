#!/usr/bin/env bash
# offload serve (the export endpoint) against real clients: OpenSSH's sftp in batch mode, sshfs
# and offload mount. Results are compared byte for byte with the exported folder; a read-only root
# refuses every write with no trace; paths and symlinks leading outside are refused, proved by a
# sentinel folder next to the root that must stay unread (atime) and unchanged.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
t_setup
T_HOME=$T/home
mkdir -p "$T_HOME"

EXP=$T/exp/proj RO=$T/exp/ro OUT=$T/exp/proj2 EP=$T/ep
mkdir -p "$EXP/sub" "$RO" "$OUT" "$T/sshfs" "$T/mnt" "$T/get"
"$GEN_TREE" --seed 3 --files 200 --big-mib 3 "$EXP/tree" >/dev/null
printf 'secret outside\n' >"$OUT/secret"
printf 'read-only content\n' >"$RO/keep"
ln -s /etc/passwd "$EXP/abs-out"
ln -s ../proj2/secret "$EXP/rel-out"
ln -s sub "$EXP/in-link"
head -c 100000 /dev/urandom >"$T/upload.bin"
printf 'a\0b\0binary\0with NULs\n' >"$T/nul.bin"
snapshot_outside() { (cd "$T/exp" && find proj2 ro -printf '%p %s %m %T@\n' | sort && sha256sum proj2/secret ro/keep); }
before=$(snapshot_outside)

"$OFFLOAD_BIN" serve "$EXP" "$RO:ro" --details "$EP" -v >"$T/serve.out" 2>"$T/serve.err" &
t_track $!
for _ in $(seq 100); do [[ -f $EP/ssh_config ]] && break; sleep 0.1; done
[[ -f $EP/ssh_config ]] || fail "offload serve wrote no details: $(cat "$T/serve.err")"
[[ $(stat -c %a "$EP") == 700 && $(stat -c %a "$EP/id_ed25519") == 600 ]] ||
	fail "details folder or key not private: $(stat -c '%a %n' "$EP" "$EP/id_ed25519")"
grep -q 'exporting .* as /ro (read-only)' "$T/serve.out" || fail "serve output: $(cat "$T/serve.out")"
SFTP=(sftp -q -F "$EP/ssh_config" -b)

# --- OpenSSH sftp: put, get, ls, rename, rm, symlink, mkdir, rmdir, chmod ---------------------
cat >"$T/batch1" <<EOF
cd /proj
put $T/upload.bin up.bin
put $T/nul.bin nul.bin
mkdir newdir
rename up.bin newdir/moved.bin
symlink newdir/moved.bin link-to-moved
chmod 640 nul.bin
get tree/big.bin $T/get/big.bin
get nul.bin $T/get/nul.bin
ls -l
EOF
"${SFTP[@]}" "$T/batch1" offload-endpoint >"$T/sftp1.out" 2>&1 || fail "sftp batch failed: $(cat "$T/sftp1.out")"
cmp "$T/upload.bin" "$EXP/newdir/moved.bin" || fail "put + rename: content differs"
cmp "$T/nul.bin" "$EXP/nul.bin" || fail "put of a file with NUL bytes differs"
cmp "$EXP/tree/big.bin" "$T/get/big.bin" || fail "get of a 3 MiB file differs"
cmp "$EXP/nul.bin" "$T/get/nul.bin" || fail "get of NUL bytes differs"
assert_eq "newdir/moved.bin" "$(readlink "$EXP/link-to-moved")" "symlink made by sftp"
assert_eq 640 "$(stat -c %a "$EXP/nul.bin")" "chmod by sftp"
grep -q 'abs-out' "$T/sftp1.out" || fail "ls did not list the outward symlink: $(cat "$T/sftp1.out")"
printf 'cd /proj\nrm nul.bin\nrm link-to-moved\nrm newdir/moved.bin\nrmdir newdir\n' >"$T/batch2"
"${SFTP[@]}" "$T/batch2" offload-endpoint >"$T/sftp2.out" 2>&1 || fail "sftp rm/rmdir failed: $(cat "$T/sftp2.out")"
[[ ! -e $EXP/nul.bin && ! -e $EXP/newdir && ! -L $EXP/link-to-moved ]] || fail "rm/rmdir left files"
pass "OpenSSH sftp: put, get, ls, rename, rm, symlink, mkdir, rmdir, chmod match byte for byte"

# --- the top level lists the roots; nothing else is reachable ---------------------------------
printf 'ls /\n' >"$T/batch3"
"${SFTP[@]}" "$T/batch3" offload-endpoint >"$T/sftp3.out" 2>&1 || fail "ls / failed: $(cat "$T/sftp3.out")"
assert_eq "proj ro" "$(grep -v '^sftp>' "$T/sftp3.out" | tr -s ' \n' ' ' | sed 's/^ //; s/ $//; s#/##g')" "roots listed at the top"
for bad in "get /proj/../proj2/secret $T/get/x1" "get /proj/../../etc/passwd $T/get/x2" \
	"get /proj/abs-out $T/get/x3" "get /proj/rel-out $T/get/x4" "get /etc/passwd $T/get/x5" \
	"get ../proj2/secret $T/get/x6" "put $T/upload.bin /proj/abs-out" "put $T/upload.bin /proj/rel-out" \
	"put $T/upload.bin /newroot" "mkdir /proj2" "get /proj2/secret $T/get/x7"; do
	printf '%s\n' "$bad" >"$T/batchbad"
	if "${SFTP[@]}" "$T/batchbad" offload-endpoint >"$T/bad.out" 2>&1; then
		fail "'$bad' succeeded: $(cat "$T/bad.out")"
	fi
done
[[ -z $(ls -A "$T/get" | grep '^x') ]] || fail "an outward read wrote a file: $(ls "$T/get")"
assert_eq "/etc/passwd" "$(readlink "$EXP/abs-out")" "outward symlink untouched"
pass "outward paths and symlinks refused (.., absolute, sibling prefix, abs and rel links)"

# --- a folder swapped for an outward symlink in a loop while a client hammers it -----------------
mkdir -p "$T/swapin" "$T/hammer"
printf 'inside\n' >"$T/swapin/f"
mkdir -p "$T/exp/out2"
printf 'secret outside\n' >"$T/exp/out2/f"
(
	for _ in $(seq 400); do
		rm -rf "$EXP/swap.tmp" && cp -r "$T/swapin" "$EXP/swap.tmp" && mv -T "$EXP/swap.tmp" "$EXP/swap" 2>/dev/null
		ln -sfn "$T/exp/out2" "$EXP/swap.lnk" && mv -T "$EXP/swap.lnk" "$EXP/swap" 2>/dev/null || rm -rf "$EXP/swap"
	done
) &
swapper=$!
: >"$T/batchswap"
for i in $(seq 300); do printf -- '-get /proj/swap/f %s/hammer/%d\n' "$T" "$i" >>"$T/batchswap"; done
"${SFTP[@]}" "$T/batchswap" offload-endpoint >"$T/swap.out" 2>&1 || true
wait $swapper || true
got=$(cat "$T"/hammer/* 2>/dev/null | sort | uniq -c | tr '\n' ' ')
grep -rl secret "$T/hammer" >/dev/null && fail "a read through a swapped-in outward symlink leaked: $got"
rm -rf "$EXP/swap"
pass "folder/outward-symlink swap race under 300 gets: nothing from outside ($got)"

# --- the read-only root: every write refused, no trace ------------------------------------------
for w in "put $T/upload.bin /ro/new" "put $T/upload.bin /ro/keep" "mkdir /ro/d" "rm /ro/keep" \
	"rename /ro/keep /ro/k2" "symlink keep /ro/l" "chmod 600 /ro/keep" "ln /ro/keep /ro/h"; do
	printf '%s\n' "$w" >"$T/batchro"
	if "${SFTP[@]}" "$T/batchro" offload-endpoint >"$T/ro.out" 2>&1; then
		fail "'$w' on a read-only root succeeded"
	fi
done
assert_eq "$before" "$(snapshot_outside)" "read-only root and sibling folder unchanged"
pass "read-only root: put, mkdir, rm, rename, symlink, chmod, ln all refused, nothing changed"

# --- sshfs against the endpoint ---------------------------------------------------------------
sshfs -F "$EP/ssh_config" -o "$(sshfs_opts)" offload-endpoint:/proj "$T/sshfs" ||
	fail "sshfs could not mount the endpoint"
tree_equal "$EXP/tree" "$T/sshfs/tree" || fail "tree read through sshfs differs"
cp -a "$EXP/tree/edge" "$T/sshfs/copied"
tree_equal "$EXP/tree/edge" "$EXP/copied" || fail "tree written through sshfs differs"
mv "$T/sshfs/copied" "$T/sshfs/renamed"
[[ -d $EXP/renamed && ! -e $EXP/copied ]] || fail "rename through sshfs"
rm -r "$T/sshfs/renamed"
[[ ! -e $EXP/renamed ]] || fail "rm -r through sshfs"
fusermount3 -u "$T/sshfs"
pass "sshfs: reads equal the export, cp -a / mv / rm -r land byte for byte"

# --- offload mount against the endpoint --------------------------------------------------------
HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$EP/ssh_config" offload-endpoint:/proj "$T/mnt" \
	--cache-dir "$T/cache" || fail "offload mount of the endpoint failed"
wait_mounted "$T/mnt" 10 || fail "mount did not appear"
tree_equal "$EXP/tree" "$T/mnt/tree" || fail "tree read through offload mount differs"
assert_eq "/etc/passwd" "$(readlink "$T/mnt/abs-out")" "outward symlink shown as a symlink"
fusermount3 -u "$T/mnt"
pass "offload mount through the endpoint equals the export"

# --- only the session's client key gets in; a changed host key is refused loudly ----------------
ssh-keygen -q -t ed25519 -N '' -f "$T/otherkey"
printf 'ls /\n' >"$T/batch4"
sed "s#IdentityFile .*#IdentityFile $T/otherkey#" "$EP/ssh_config" >"$T/other_config"
if sftp -q -F "$T/other_config" -b "$T/batch4" offload-endpoint >"$T/other.out" 2>&1; then
	fail "a key other than the session's was accepted"
fi
grep -q "refusing an unknown key" "$T/serve.err" || fail "wrong key not seen refused: $(cat "$T/other.out")"
cp "$EP/known_hosts" "$T/old_known_hosts"
kill "${T_PIDS[0]}"
wait "${T_PIDS[0]}" 2>/dev/null || true
[[ ! -e $EP ]] || fail "the details folder outlived serve: $(ls -la "$EP")"
"$OFFLOAD_BIN" serve "$EXP" --details "$EP" >"$T/serve2.out" 2>"$T/serve2.err" &
t_track $!
for _ in $(seq 100); do [[ -f $EP/ssh_config ]] && break; sleep 0.1; done
port2=$(sed -n 's/^ *Port //p' "$EP/ssh_config")
sed "s/\]:[0-9]* /]:$port2 /" "$T/old_known_hosts" >"$T/stale_known_hosts"
sed "s#UserKnownHostsFile .*#UserKnownHostsFile $T/stale_known_hosts#" "$EP/ssh_config" >"$T/stale_config"
if HOME=$T_HOME "$OFFLOAD_BIN" mount -F "$T/stale_config" offload-endpoint:/proj "$T/mnt" \
	--cache-dir "$T/cache" >"$T/stale.out" 2>&1; then
	fail "a mount accepted a changed host key"
fi
grep -qi "changed" "$T/stale.out" || fail "changed host key message: $(cat "$T/stale.out")"
pass "a foreign client key is refused; a changed host key is refused loudly; details removed on exit"

assert_eq "$before" "$(snapshot_outside)" "nothing outside the root read or changed"
if grep -i -E 'sanitizer|runtime error' "$T/serve.err"; then fail "sanitizer report from serve"; fi
pass "serve interop"
