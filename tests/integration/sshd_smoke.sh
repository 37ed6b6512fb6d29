#!/usr/bin/env bash
# The test harness itself against the real parts: a private OpenSSH sshd,
# OpenSSH's sftp client, sshfs over FUSE, and tree_equal (which must see a
# mounted copy as equal and must catch each kind of difference).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"

[[ -x $GEN_TREE ]] || fail "no gen_tree at '$GEN_TREE' (set GEN_TREE)"
t_setup
sshd_start

src=$T/src
"$GEN_TREE" --seed 7 --files 300 --big-mib 4 "$src"
"$GEN_TREE" --seed 7 --files 300 --big-mib 4 "$src" ||
	fail "gen_tree refused its own fixture on a second run"

# sftp: list a directory and fetch files, one with non-ASCII name and spaces.
cat >"$T/batch" <<BATCH
ls -1 "$src"
get "$src/edge/size-65537.bin" "$T/got-65537.bin"
get "$src/dir with space/naïve café.txt" "$T/got-cafe.txt"
get "$src/big.bin" "$T/got-big.bin"
BATCH
sftp -F "$T_SSH_CONFIG" -b "$T/batch" offload-test >"$T/sftp.out" 2>"$T/sftp.err" ||
	fail "sftp batch failed: $(cat "$T/sftp.err")"
grep -q "^$src/node_modules\$" "$T/sftp.out" ||
	fail "sftp ls: expected '$src/node_modules' in: $(head -c 500 "$T/sftp.out")"
cmp "$src/edge/size-65537.bin" "$T/got-65537.bin" || fail "sftp get: 65537-byte file differs"
cmp "$src/dir with space/naïve café.txt" "$T/got-cafe.txt" || fail "sftp get: 'naïve café.txt' differs"
cmp "$src/big.bin" "$T/got-big.bin" || fail "sftp get: big.bin differs"
assert_eq 4194304 "$(stat -c %s "$T/got-big.bin")" "size of big.bin fetched by sftp"
pass "sftp ls and get over sshd on port $SSHD_PORT"

# sshfs: the whole tree must read back identical, symlinks and mtimes included.
mnt=$T/mnt
mkdir -p "$mnt"
sshfs -F "$T_SSH_CONFIG" "offload-test:$src" "$mnt" -o "$(sshfs_opts)"
wait_mounted "$mnt" || fail "sshfs did not mount '$mnt'"
tree_equal "$src" "$mnt" || fail "tree over sshfs differs from the source"
assert_eq "sub/file" "$(readlink "$mnt/link-rel")" "relative symlink target over sshfs"
assert_eq "/etc/hostname" "$(readlink "$mnt/link-abs")" "absolute symlink target over sshfs"
pass "sshfs mount equals the source tree (tree_equal)"
fusermount3 -u "$mnt"
wait_unmounted "$mnt" || fail "sshfs mount still there after fusermount3 -u"

# tree_equal must catch each kind of difference (never a vacuous pass).
copy=$T/copy
cp -a "$src" "$copy"
tree_equal "$src" "$copy" || fail "tree_equal: an exact copy (cp -a) differs"
check_detects() { # WHAT: the last change to $copy must make tree_equal fail
	if tree_equal "$src" "$copy" 2>"$T/te.err"; then
		fail "tree_equal missed: $1"
	fi
	rm -rf "$copy" && cp -a "$src" "$copy"
}
f=$copy/edge/size-65536.bin
printf 'X' | dd of="$f" bs=1 seek=40000 conv=notrunc status=none
touch -r "$src/edge/size-65536.bin" "$f"
check_detects "one byte changed, size and mtime kept"
chmod 600 "$copy/sub/file"
check_detects "mode changed"
touch -d @1 "$copy/日本語/ファイル.txt"
check_detects "mtime changed"
ln -sfn sub/other "$copy/link-rel"
touch -h -r "$src/link-rel" "$copy/link-rel"
check_detects "symlink target changed"
touch "$copy/node_modules/extra"
check_detects "extra file"
rm "$copy/edge/empty-3"
check_detects "missing empty file"
truncate -s 65535 "$copy/edge/size-65537.bin"
check_detects "file truncated"
pass "tree_equal detects content, mode, mtime, symlink, extra, missing, size changes"

# sshd_restart keeps port and keys: a new client connects without any prompt.
sshd_restart
echo "ls -1 $src/sub" | sftp -F "$T_SSH_CONFIG" -b - offload-test >"$T/sftp2.out" 2>&1 ||
	fail "sftp after sshd_restart: $(cat "$T/sftp2.out")"
grep -q "$src/sub/file" "$T/sftp2.out" || fail "sftp after restart: no sub/file in listing"
sshd_kill_all
if echo "ls" | sftp -F "$T_SSH_CONFIG" -b - offload-test >/dev/null 2>&1; then
	fail "sftp still connects after sshd_kill_all"
fi
pass "sshd_restart and sshd_kill_all"
