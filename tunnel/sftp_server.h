/* sftp_server.h - a confined SFTP v3 server over byte buffers (sfs_*).
 *
 * Transport-independent: the caller (the SSH server's "sftp" subsystem, or a fuzz target) appends
 * the bytes it receives to an rx buffer, calls sfs_process, and sends what it appended to tx. The
 * server speaks SFTP v3 (draft-ietf-secsh-filexfer-02) as OpenSSH's sftp-server does, and every
 * path it touches goes through confine.h, beneath one of the roots it was given.
 *
 * Namespace. The client sees a virtual, read-only top directory "/" holding one directory per root,
 * named by the root's 'name'; "/name/rest" is 'rest' beneath that root (cleaned by cf_clean_n).
 * Relative paths are relative to "/", and "", "." and "//" name the top. A first component that is
 * no root's name is NO_SUCH_FILE (PERMISSION_DENIED when the call would create it at the top);
 * ".." never climbs out of a root: "/name/.." and "/name/../other" are PERMISSION_DENIED, as is
 * ".." at the top. REALPATH is lexical: it returns "/", "/name" or "/name/a/b" without looking at
 * the file system (symlinks are not resolved), and "." is "/". The top lists the roots (with the
 * attributes of each root directory), has mode 0555, and refuses every change with
 * PERMISSION_DENIED; so does a root itself for REMOVE, RMDIR, RENAME, SYMLINK and hardlink.
 *
 * Requests: all of SFTP v3 and the OpenSSH extensions posix-rename@openssh.com,
 * statvfs@openssh.com, fstatvfs@openssh.com, hardlink@openssh.com, fsync@openssh.com,
 * limits@openssh.com and lsetstat@openssh.com. Rules beyond the draft:
 *   - SYMLINK takes its strings in OpenSSH's order: the link's target first, then the link path.
 *     The target is stored as given (it is data, see cf_symlink).
 *   - RENAME fails when the new name exists (RENAME_NOREPLACE); posix-rename replaces it.
 *   - STAT follows symlinks only while they stay beneath the root (one pointing outside gives
 *     PERMISSION_DENIED); LSTAT, READLINK and READDIR show a symlink itself, never its target.
 *   - SETSTAT does not follow a symlink as last component, like lsetstat: size and permissions on
 *     a symlink are refused, times are set on the link itself. Attributes are applied in the order
 *     size (truncate), permissions (chmod), times; uid/gid are refused with OP_UNSUPPORTED before
 *     anything is changed. FSETSTAT does the same on the open file.
 *   - READ returns at most SFS_READ_MAX bytes, and EOF when it reads none (also for a length of
 *     0, as OpenSSH); an offset of 2^63 - 1 or more is EOF. WRITE past 2^63 - 1 is FAILURE.
 *   - READDIR returns up to SFS_READDIR_BATCH names per call, without "." and "..", with numeric
 *     owner and group in the long name; then EOF.
 *   - statvfs of the top reports the first root's file system; a read-only root sets ST_RDONLY.
 *   - Unknown request types and unknown extensions get OP_UNSUPPORTED and the stream goes on.
 * Errors map to status codes: ENOENT -> NO_SUCH_FILE; EACCES, EPERM, EROFS -> PERMISSION_DENIED;
 * a malformed request (a field past the packet's end) -> BAD_MESSAGE; EOPNOTSUPP -> OP_UNSUPPORTED;
 * anything else FAILURE. The message is the lower-case strerror text ("read-only file system").
 * A read-only root (cf_root_readonly) refuses every write, and FSETSTAT and WRITE on its handles,
 * with PERMISSION_DENIED and no side effect.
 *
 * Handles are 8 bytes on the wire (slot index and generation) into a table of SFS_HANDLES_MAX
 * slots; a file handle holds one descriptor, a directory handle one DIR stream. A stale, forged or
 * wrong-sized handle, or one of the wrong kind (a directory to READ, a file to READDIR), gives
 * FAILURE ("bad file descriptor"). When the table is full, OPEN and OPENDIR fail with FAILURE
 * before anything is opened or created.
 *
 * Threads: an sfs_t is used by one thread at a time. Several sfs_t (one per channel) may share the
 * same roots on different threads at once, as confine.h allows. The library logs nothing.
 */
#ifndef OFFLOAD_SFTP_SERVER_H
#define OFFLOAD_SFTP_SERVER_H

#include <stddef.h>
#include <sys/stat.h>

#include "buf.h"
#include "confine.h"

#define SFS_READ_MAX      (256 * 1024)          /* longest READ reply, and WRITE accepted */
#define SFS_PACKET_MAX    (SFS_READ_MAX + 1024) /* longest request packet (without its length) */
#define SFS_REPLY_MAX     (SFS_READ_MAX + 1024) /* longest reply packet, length included */
#define SFS_HANDLES_MAX   4096                  /* open handles per server */
#define SFS_READDIR_BATCH 100                   /* names per READDIR reply */

struct sfs_root {
    const char *name; /* one path component: not empty, no '/', not "." or "..", unique */
    cf_root_t *root;  /* owned by the caller; must outlive the server */
};

typedef struct sfs sfs_t;

/* The change hook. For every request that may change something (OPEN, WRITE, SETSTAT, FSETSTAT,
 * REMOVE, MKDIR, RMDIR, RENAME, SYMLINK, EXTENDED): SFS_BEGIN before it is carried out and
 * SFS_END after (root, rel_path and st unused). In between, SFS_CHANGED after each change (OPEN
 * with CREAT or TRUNC, a WRITE that wrote something, SETSTAT, FSETSTAT, lsetstat, REMOVE, MKDIR,
 * RMDIR, RENAME and posix-rename (once for each name), SYMLINK, hardlink (the new name)) with the
 * root's index in the array given to sfs_new, the cleaned path beneath it ("." for the root
 * itself), and what the change left: the stat of the file changed (for a handle, of the open
 * file, whatever its name is now), or NULL when the path names nothing any more. Every call has
 * the id the client gave itself with client-id@offload (0 when it gave none). Runs on the thread
 * calling sfs_process, before the reply is queued; rel_path and st are valid during the call
 * only. */
enum sfs_phase { SFS_BEGIN, SFS_CHANGED, SFS_END };
typedef void (*sfs_change_fn)(void *arg, uint64_t client, enum sfs_phase phase, size_t root_index,
                              const char *rel_path, const struct stat *st);

/* A server for 'nroots' roots (the names are copied; the cf roots are not owned). Returns 0 and
 * stores it in *out (freed with sfs_free), -EINVAL for no roots, a NULL root or a bad or repeated
 * name, or -ENOMEM; *out is untouched on failure. Any thread. */
int sfs_new(const struct sfs_root *roots, size_t nroots, sfs_t **out);

/* Install (or, with fn NULL, remove) the change hook. Call it between sfs_process calls. */
void sfs_set_change_hook(sfs_t *s, sfs_change_fn fn, void *arg);

/* Close every open handle and free the server. NULL is accepted. */
void sfs_free(sfs_t *s);

/* Take every whole request packet off the front of 'rx', carry it out and append its reply to 'tx'
 * (in order, one reply per request). The first packet must be INIT; it is answered with VERSION 3
 * and the extension list. A partial packet is left in rx for the next call. 'tx' must be an owned
 * buffer (not a view) with max >= SFS_REPLY_MAX; while it has less than SFS_REPLY_MAX bytes of room
 * left, the call stops and leaves the remaining packets in rx: send what tx holds, then call again.
 * Returns 0; -EBADMSG when the stream can no longer be trusted (a length of 0, below 5 or over
 * SFS_PACKET_MAX, a first packet other than INIT, a second INIT, a VERSION from the client);
 * -ENOMEM when a reply could not be queued (a request may then be left unanswered); -EINVAL for a
 * tx below SFS_REPLY_MAX. After -EBADMSG or -ENOMEM every later call returns the same: close the
 * channel. Replies to the packets carried out before the failure are in tx. */
int sfs_process(sfs_t *s, struct buf *rx, struct buf *tx);

#endif
