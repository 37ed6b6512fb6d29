/* confine.h - path confinement for the export endpoint: every path a client names is resolved
 * beneath one exported root directory and nothing outside it is ever opened, created, changed or
 * followed into (DESIGN invariant 3) (cf_*).
 *
 * A root is opened once (cf_open_root) and keeps an O_PATH descriptor of the directory. Every call
 * takes a client path as sent (an SFTP path: "/" is the root, "/x" is root/x, "//" and "." are
 * ignored, ".." is resolved by name and may not climb above the root), cleans it with cf_clean and
 * resolves it beneath that descriptor:
 *   - with openat2(2) RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS when the kernel has it (5.6+),
 *   - otherwise by a component-by-component walk that opens each name with O_NOFOLLOW from the
 *     descriptor of its parent and expands symlinks itself under the same rules.
 * Symlinks met on the way are followed only while they stay beneath the root: a relative target
 * that stays inside is followed; an absolute target (even one naming a place inside the root, as
 * RESOLVE_BENEATH does) or one climbing out with ".." is refused with -EPERM. Calls that act on a
 * name (lstat, readlink, every write) resolve its parent that way and then use the *at() syscall on
 * the last component without following it: a symlink there is the object itself, never its target.
 * readlink and lstat show a symlink pointing outside as a symlink.
 *
 * Write calls on a read-only root fail with -EROFS before any syscall, so they have no side effect
 * at all (no empty file, no changed time).
 *
 * The root is identified by the device and inode it had when opened. Each call first checks that
 * the path given to cf_open_root still names that directory; once it does not (the directory was
 * removed, renamed away or replaced), every later call fails with -ESTALE: close the root and open
 * it again. The check runs before the operation, so a replacement racing with one call is seen by
 * the next.
 *
 * Special files: opening a FIFO, socket or device node for reading or writing is refused with
 * -EPERM, without blocking (the open is made with O_NONBLOCK | O_NOCTTY and the type checked on the
 * descriptor; a FIFO with no reader or a socket gives ENXIO, reported as -EPERM too). The driver of
 * a device node does see that non-blocking open before the refusal; device nodes can only be made
 * on the developer machine, never through the endpoint.
 *
 * Hard links: cf_link creates links only between two paths beneath the root. A hard link made on
 * the developer machine, inside the root, to an inode that also has a name outside it is served
 * like any file: nothing distinguishes it but st_nlink > 1 (cf_lstat shows it).
 *
 * Errors are negative errno values (0 on success); beyond those of the underlying syscalls:
 *   -EPERM         ".." above the root, a symlink leading outside, a symlink loop, a symlink as
 *                  the last component where it may not be followed (O_NOFOLLOW, O_CREAT, truncate,
 *                  chmod), a FIFO, socket or device node opened for I/O
 *   -EINVAL        a NUL inside a path given with a length (cf_clean_n), unknown flags
 *   -ENAMETOOLONG  a component over NAME_MAX bytes, a path of PATH_MAX bytes or more
 *   -EROFS         a write on a read-only root
 *   -ESTALE        the root directory is no longer the one that was opened
 *   -EBUSY         removing, renaming or replacing the root itself
 * ".." is resolved by name, before the kernel sees the path: "a/../b" is "b" even when "a" is a
 * symlink.
 *
 * Threads: a root is immutable once opened except for its stale flag and the resolver choice, both
 * atomic; every call may run on any thread concurrently with any other call on the same root,
 * except cf_close_root. The library logs nothing; the caller (the SFTP server) does.
 */
#ifndef OFFLOAD_CONFINE_H
#define OFFLOAD_CONFINE_H

#include <dirent.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>

typedef struct cf_root cf_root_t;

/* Open the directory 'dir' (followed if it is a symlink; a relative path is made absolute against
 * the current directory) as an export root, read-only when 'readonly'. Keeps an O_PATH |
 * O_DIRECTORY descriptor and records the directory's device and inode; probes once whether the
 * kernel offers openat2 (ENOSYS, or EPERM from a seccomp filter, mean it does not).
 * Returns 0 and stores a new root in *out (owned by the caller, freed by cf_close_root), or
 * -ENOENT, -ENOTDIR, -EACCES, -ENAMETOOLONG, -ENOMEM; *out is untouched on failure. Any thread. */
int cf_open_root(const char *dir, bool readonly, cf_root_t **out);

/* A root that shares one file: its folder is opened as by cf_open_root, but only that file's name
 * resolves in it (any other name is -ENOENT, paths below the name -ENOTDIR), the name is never
 * followed as a symlink, and cf_visible hides the folder's other entries from listings. Binds of
 * single files are served this way; a laptop editor's atomic save (a new file renamed over the
 * name) stays visible. -EINVAL when 'file' has no last component. */
int cf_open_root_file(const char *file, bool readonly, cf_root_t **out);

/* The one name of a single-file root, or NULL. Valid until cf_close_root. */
const char *cf_root_only(const cf_root_t *r);

/* Whether the entry 'name' of the folder 'dir' (relative to the root; "" or "." for the root
 * itself) may be listed. Always true but for the other entries of a single-file root. */
bool cf_visible(const cf_root_t *r, const char *dir, const char *name);

/* Close the descriptor and free the root. NULL is accepted. No other call on the root may be
 * running or start afterwards; descriptors and DIR streams it returned stay valid. */
void cf_close_root(cf_root_t *r);

/* Whether the root was opened read-only. Any thread. */
bool cf_root_readonly(const cf_root_t *r);

/* Whether paths are resolved with openat2 (true) or with the O_NOFOLLOW walk (false). Any thread.
 */
bool cf_uses_openat2(const cf_root_t *r);

/* Resolve with the O_NOFOLLOW walk even when openat2 is available ('on'), or go back to openat2
 * when the kernel has it. For tests of the fallback; takes effect for calls that start after it.
 * Any thread. */
void cf_force_walk(cf_root_t *r, bool on);

/* Clean the SFTP path 'in' into a path relative to the root, written to 'out' (outlen bytes with
 * the terminating NUL; 'out' must not overlap 'in'). Leading "/" is dropped (absolute paths are
 * relative to the root), empty components ("//") and "." are removed, ".." removes the component
 * before it; the result has no leading or trailing "/" and no "", "." or ".." component, and is
 * "." for the root itself (also for "" and "/"). Names such as "...", "..x" or ".x" are names.
 * Returns 0, or -EPERM when a ".." would climb above the root (it is never clamped to the root),
 * -ENAMETOOLONG when a component is over NAME_MAX bytes or 'in' is PATH_MAX bytes or more, -ERANGE
 * when the result does not fit 'out'. On failure 'out' holds an empty string if outlen > 0.
 * Pure; any thread. */
int cf_clean(const char *in, char *out, size_t outlen);

/* cf_clean of the 'len' bytes at 'in' (as they come off the wire, not NUL-terminated). A NUL among
 * them is refused with -EINVAL before anything else. */
int cf_clean_n(const char *in, size_t len, char *out, size_t outlen);

/* Open 'rel' beneath the root with open(2) 'flags' and 'mode' (mode is used only with O_CREAT or
 * O_TMPFILE). O_CLOEXEC is always added. A symlink as last component is followed (beneath the root
 * only) unless flags has O_NOFOLLOW or O_CREAT: then it is refused with -EPERM (-EEXIST with
 * O_EXCL), so O_CREAT never creates a file through a symlink, dangling or not (with O_PATH |
 * O_NOFOLLOW the link itself is opened). On a read-only root any of O_WRONLY, O_RDWR, O_CREAT,
 * O_TRUNC, O_APPEND, O_TMPFILE gives -EROFS before anything is looked up. A descriptor that can
 * read or write (not O_PATH) is only returned for a regular file or a directory: FIFOs, sockets and
 * device nodes give -EPERM without blocking. The descriptor keeps the caller's O_NONBLOCK choice.
 * Returns 0 and stores the descriptor in *fd_out (owned by the caller, who closes it), or a
 * negative errno with *fd_out untouched. Any thread. */
int cf_openat(cf_root_t *r, const char *rel, int flags, mode_t mode, int *fd_out);

/* lstat(2) of 'rel': a symlink as last component is described itself, not its target. Returns 0
 * and fills *st, or a negative errno. Any thread. */
int cf_lstat(cf_root_t *r, const char *rel, struct stat *st);

/* readlink(2) of 'rel' into buf (len bytes), NUL-terminated: the text as stored, whatever it
 * points to (a link pointing outside the root is shown, never followed). Returns the length of the
 * text (without the NUL), -ERANGE when it needs len bytes or more, -EINVAL when 'rel' is not a
 * symlink, or another negative errno. Any thread. */
int cf_readlink(cf_root_t *r, const char *rel, char *buf, size_t len);

/* Open the directory 'rel' for listing (a symlink as last component is followed beneath the root,
 * as by cf_openat). Returns 0 and stores a stream in *dir (owned by the caller: closedir), or a
 * negative errno (-ENOTDIR for a non-directory). Any thread. */
int cf_opendir(cf_root_t *r, const char *rel, DIR **dir);

/* The write calls below fail with -EROFS on a read-only root, before any syscall. Each resolves the
 * parent of its path(s) beneath the root and acts on the last component without following it. */

/* mkdirat(2) of 'rel' with 'mode' (umask applies). An existing name, even a dangling symlink, gives
 * -EEXIST. Any thread. */
int cf_mkdir(cf_root_t *r, const char *rel, mode_t mode);

/* unlinkat(2) of the non-directory 'rel'; a symlink is removed, not its target. -EBUSY for the
 * root. Any thread. */
int cf_unlink(cf_root_t *r, const char *rel);

/* Remove the empty directory 'rel' (a symlink to a directory gives -ENOTDIR). -EBUSY for the
 * root. Any thread. */
int cf_rmdir(cf_root_t *r, const char *rel);

/* renameat2(2) of 'from' to 'to', both beneath the root, with the parent directory descriptors of
 * both. A symlink is renamed as a link, and a symlink at 'to' is replaced, never written through.
 * 'flags' is 0 (replace), RENAME_NOREPLACE (-EEXIST if 'to' exists) or RENAME_EXCHANGE (both must
 * exist), from <stdio.h>; other bits give -EINVAL, and so may a filesystem without those flags.
 * -EBUSY when either path is the root. Any thread. */
int cf_rename(cf_root_t *r, const char *from, const char *to, unsigned flags);

/* symlinkat(2): create the symlink 'linkpath' beneath the root holding the text 'target' exactly
 * as given. The target is data: it is not cleaned nor checked, and whatever it points to is never
 * followed by the calls of this module unless it resolves beneath the root. -EEXIST if 'linkpath'
 * exists, -EBUSY for the root. Any thread. */
int cf_symlink(cf_root_t *r, const char *target, const char *linkpath);

/* linkat(2): a new hard link 'to' for the object named 'from', both beneath the root. A symlink at
 * 'from' is linked itself, not its target. See the note on hard links above for links made outside
 * the endpoint. -EBUSY when 'to' is the root. Any thread. */
int cf_link(cf_root_t *r, const char *from, const char *to);

/* chmod of 'rel' without following a last-component symlink: a symlink gives -EPERM and nothing
 * changes. Any thread. */
int cf_chmod(cf_root_t *r, const char *rel, mode_t mode);

/* Truncate the regular file 'rel' to 'size' bytes. A symlink, FIFO, socket or device node as last
 * component gives -EPERM, a directory -EISDIR, a negative size -EINVAL. The file is opened
 * O_WRONLY, so write permission on it is needed, as for truncate(2). Any thread. */
int cf_truncate(cf_root_t *r, const char *rel, off_t size);

/* utimensat(2) of 'rel' with AT_SYMLINK_NOFOLLOW: ts[0] is the access time, ts[1] the modification
 * time (UTIME_NOW, UTIME_OMIT accepted; NULL means both now). A symlink's own times are set, never
 * its target's. Any thread. */
int cf_utimens(cf_root_t *r, const char *rel, const struct timespec ts[2]);

#endif
