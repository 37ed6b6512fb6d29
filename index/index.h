/* index.h - the SQLite block index shared by both sides of offload.
 *
 * One database file per side. It records, per file of a mounted or exported tree, its identity,
 * type, mode, size, times in nanoseconds and a version that changes whenever the content identity
 * changes; per fixed-size block, its XXH3-128 hash, the version it belongs to, whether its bytes
 * are held in the local block cache and whether they are local writes not yet written back; and
 * the journal of write-back operations waiting to be sent to the source, in order. The index knows
 * nothing of FUSE or SSH.
 *
 * Storage: WAL journal, prepared statements, versioned schema migrations (table `meta`, key
 * `schema_version`). Writes are batched by the caller with idx_begin()/idx_commit(); a process
 * killed in the middle of a batch leaves the previous committed state (SQLite's atomic commit).
 *
 * Threads: an idx_t is one SQLite connection guarded by an internal mutex; any thread may call
 * any function. idx_begin()/idx_commit() nest (a counter): only the outermost commit writes.
 *
 * Errors: functions return 0 on success or a negative errno: -ENOENT (no such row), -EIO (SQLite
 * error, logged with the failing statement), -ENOMEM, -EINVAL (bad argument), -ENAMETOOLONG.
 */
#ifndef OFFLOAD_INDEX_H
#define OFFLOAD_INDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IDX_ROOT_ID        1   /* the row id of the tree's root directory, also FUSE_ROOT_ID */
#define IDX_NAME_MAX       255 /* longest file name component, in bytes */
#define IDX_HASH_LEN       16  /* XXH3-128 */
#define IDX_SCHEMA_VERSION 3
#define IDX_PATH_MAX       4096 /* journal paths, the NUL included */

typedef struct idx idx_t;

struct idx_file {
    int64_t id;                  /* row id; stable across reopen, never reused (the row's first
                                    version); used as the FUSE inode number */
    int64_t parent;              /* row id of the parent directory; 0 for the root */
    char name[IDX_NAME_MAX + 1]; /* NUL-terminated component; "" for the root */
    uint64_t dev, ino;           /* identity on the source machine */
    uint32_t mode;               /* type and permission bits (st_mode) */
    uint32_t uid, gid, nlink;
    uint64_t size;
    int64_t atime_ns, mtime_ns, ctime_ns;
    uint64_t version;     /* changes whenever the content identity changes (see idx_put) */
    int64_t attr_time_ns; /* when the metadata was last confirmed from the source (TTL) */
    int64_t list_time_ns; /* directories: when the children were last listed; 0 = never */
    int64_t row;          /* the row of this name: == id, or for a further hard link of the
                             file, the link's own row (pass it to idx_delete and idx_rename) */
};

struct idx_block {
    int64_t file;     /* file row id */
    uint64_t blkno;   /* block number: offset / block size */
    uint64_t version; /* file version the block belongs to */
    uint32_t len;     /* valid bytes in the block (the last block may be short) */
    uint8_t hash[IDX_HASH_LEN];
    bool cached; /* bytes are in the local cache file for (file, version) */
    bool dirty;  /* bytes written locally, not yet written back to the source (implies cached) */
};

/* Open (creating if needed) the database at 'path', enable WAL, run migrations up to
 * IDX_SCHEMA_VERSION, create the root row if missing. A database whose schema is newer than this
 * build is refused with -EPROTO. On success *out owns the handle; free with idx_close(). */
int idx_open(const char *path, idx_t **out);

/* Claim the database for this process alone (SQLite's exclusive locking mode): no file lock
 * and no shared-memory index per transaction, so each batch is cheaper. Other processes cannot
 * open it until idx_close(). For a daemon that is the database's only user. */
int idx_set_exclusive(idx_t *idx);

/* Close the handle, committing nothing that was not committed (an open batch is rolled back). */
void idx_close(idx_t *idx);

/* The schema version stored in the database. */
int idx_schema_version(idx_t *idx);

/* Batches. idx_begin() opens a write transaction (or nests); idx_commit() commits the outermost;
 * idx_rollback() abandons the whole batch. The batch belongs to the connection, not to a thread:
 * writes from other threads while it is open become part of it. idx_commit() and idx_rollback()
 * without an open batch return -EINVAL; a failed outermost commit rolls the batch back. */
int idx_begin(idx_t *idx);
int idx_commit(idx_t *idx);
int idx_rollback(idx_t *idx);

/* Group commit. With a window of window_ms > 0, a finished batch or write is kept (a released
 * SAVEPOINT: idx_rollback() still undoes only its own batch) in a transaction shared with the
 * batches that follow, and the whole group is committed at most window_ms after its first change,
 * by idx_commit() or by a thread of the index when nothing follows. Readers on this connection
 * see every finished batch at once; a process killed before the group's commit loses at most the
 * last window_ms of changes (the previous group stays whole). gone() calls wait for the group's
 * commit. A group that cannot be committed is rolled back whole and logged. 0 turns it off
 * (committing what is open). Call once, before any batch; used by mountd only. */
int idx_set_group_commit(idx_t *idx, int window_ms);
/* Commit the open group now (returns at once when there is none); waits while a batch of another
 * thread is open. Never call it inside a batch of one's own. */
int idx_sync(idx_t *idx);

/* Free-form metadata (key/value text) for the users of the index, e.g. which remote a cache
 * belongs to. idx_meta_get copies at most 'len' bytes including the NUL into 'val' (-ENOENT if the
 * key is absent; -ERANGE, with the value cut short, if it did not fit). The index's own keys
 * schema_version and next_version can be read but not set (-EINVAL). */
int idx_meta_get(idx_t *idx, const char *key, char *val, size_t len);
int idx_meta_set(idx_t *idx, const char *key, const char *val);

/* Names and files. A file has one row, its own name (row == id); each further hard link is a
 * row of its own naming the file (idx_link). idx_get, idx_lookup, idx_resolve and idx_children
 * give a hard link's name (parent, name, row) with the attributes, id and version of the file it
 * names. Operations on names (idx_delete, idx_rename) take the row. */

/* Rows. -ENOENT if there is none; idx_lookup(0, "") is the root. */
int idx_get(idx_t *idx, int64_t id, struct idx_file *out);
int idx_lookup(idx_t *idx, int64_t parent, const char *name, struct idx_file *out);
/* The path of row 'id' below the root, "/a/b" ("" for the root), into out; -ENOENT, or
 * -ENAMETOOLONG when it does not fit in len. Paths asked for are remembered until a name may
 * change (a move, a deletion, a rollback), so that the changes of one file cost no walk. */
int idx_path(idx_t *idx, int64_t id, char *out, size_t len);

/* The row of the relative path 'path' (components separated by '/', "" for the root), looked up
 * one component at a time from the root. -ENOENT if a component is missing, -ENAMETOOLONG for a
 * component over IDX_NAME_MAX bytes. */
int idx_resolve(idx_t *idx, const char *path, struct idx_file *out);
/* Insert or update the row (f->parent, f->name) with the metadata in *f (attr_time_ns and
 * list_time_ns included; list_time_ns of an existing row is kept when f->list_time_ns is 0).
 * The content identity is (type bits of mode, size, mtime_ns, ino). For a new row, f->version is
 * set to a fresh version. For an existing row with the same content identity the version is kept;
 * otherwise the version is set to a fresh one and every block row of the file is deleted.
 * A fresh version is unique in the database (a counter in meta), never reused.
 * On return f->id and f->version hold the row's values. Returns 0 if the content identity is
 * unchanged or the row is new, 1 if it changed (the caller drops its cached bytes), or <0.
 * A row whose type changed between directory and non-directory loses its children too.
 * A new row needs an existing directory as parent (-ENOENT, -ENOTDIR). A name with '/', "", "."
 * or ".." (except the root's "" under parent 0) or a mode with no valid file type is -EINVAL.
 * A change of content identity that would drop dirty blocks (the file's, or for a directory that
 * becomes a non-directory, its subtree's) is refused with -EBUSY and changes nothing: local writes
 * are never lost to a change seen on the source. Once they are written back (idx_blocks_clean) the
 * change goes through; to give them up instead, idx_blocks_drop() first. */
int idx_put(idx_t *idx, struct idx_file *f);

/* idx_put for a change made locally, whose bytes are already in the cache of the row's current
 * version (a write, a truncate, a utimens through the mount): an existing row takes the metadata in
 * *f but keeps its version, its blocks (dirty or not) and its symlink target, whatever changed, and
 * the call returns 0. Changing the type bits of an existing row is -EINVAL (replace the row with
 * idx_delete/idx_rename instead). A new row is created as by idx_put. */
int idx_put_keep_version(idx_t *idx, struct idx_file *f);

/* Set the confirmation time of a row's metadata / directory listing. */
int idx_touch_attr(idx_t *idx, int64_t id, int64_t attr_time_ns);
/* A folder's entries changed locally: its mtime and ctime become time_ns and its link count
 * moves by 'subdirs' (never below 2), in one statement (two changes in the same folder at once
 * cannot lose one). Returns 0, -ENOENT when 'dir' is no folder's row, or <0. */
int idx_dir_changed(idx_t *idx, int64_t dir, int64_t time_ns, int subdirs);
/* A regular file was written or truncated locally: its size becomes 'size' and its mtime and
 * ctime time_ns, in one statement; its version, blocks and other metadata stay. Returns 0,
 * -ENOENT when 'id' is no regular file's row (removed meanwhile), -EINVAL, or <0. */
int idx_file_written(idx_t *idx, int64_t id, uint64_t size, int64_t time_ns);
int idx_set_listed(idx_t *idx, int64_t dir, int64_t list_time_ns);
/* Every directory's listing time (a snapshot that is whole: each folder has all its names). */
int idx_set_listed_all(idx_t *idx, int64_t list_time_ns);

/* Delete a row, its blocks, and recursively its children and their blocks. A hard link row only
 * takes one off the link count of its file; a file whose own row is deleted while a hard link
 * of it is not moves to that link's name (keeping id, version and blocks) and the link row goes.
 * For every deleted file, gone(arg, id, version) is called (may be NULL) so the caller can drop
 * cache files. gone() runs after the deletion is committed and without the index lock: before
 * idx_delete returns when no batch is open, else at the outermost idx_commit() (never, if the batch
 * is rolled back), so 'arg' must stay valid until then. The root cannot be deleted (-EINVAL). */
int idx_delete(idx_t *idx, int64_t id, void (*gone)(void *arg, int64_t id, uint64_t version),
               void *arg);

/* Move the row 'id' (with everything below it, keeping ids, versions and blocks) to the name
 * 'name' in the directory 'parent'. A row already there is deleted first, with its subtree, calling
 * gone() as idx_delete does; when it is another name of the same file nothing changes (rename(2)).
 * -EINVAL for the root or a move beneath itself, -ENOTDIR when 'parent' is not a directory, -ENOENT
 * when either row is missing; names as for idx_put. */
int idx_rename(idx_t *idx, int64_t id, int64_t parent, const char *name,
               void (*gone)(void *arg, int64_t id, uint64_t version), void *arg);
/* Delete the children of 'dir' whose attr_time_ns is older than 'before_ns' (they were not seen
 * in a listing started at before_ns), recursively, calling gone() as idx_delete does. A child
 * with journal rows is kept: it is a local change the source has not seen yet. */
int idx_prune_children(idx_t *idx, int64_t dir, int64_t before_ns,
                       void (*gone)(void *arg, int64_t id, uint64_t version), void *arg);

/* Iterate the children of 'dir' in increasing row id, starting after row id 'after' (0 = from
 * the first). each() returns 0 to go on, anything else to stop (that value is returned).
 * Rows are read a page at a time and each() is called without the index lock, so it may call the
 * index; the iteration is not a snapshot of one instant. */
int idx_children(idx_t *idx, int64_t dir, int64_t after,
                 int (*each)(void *arg, const struct idx_file *f), void *arg);

/* Add the name 'name' in the directory 'parent' to the file 'id' (a hard link; not a folder:
 * -EPERM). -EEXIST when the name is taken. The file's link count goes up by one; *out (may be
 * NULL) gets the file's row as it is then. */
int idx_link(idx_t *idx, int64_t id, int64_t parent, const char *name, int64_t now_ns,
             struct idx_file *out);

/* Symlink targets (stored with the row; deleted with it, and cleared when idx_put changes the
 * row's content identity). idx_set_link refuses a row that is not a symlink (-EINVAL) and a
 * target over PATH_MAX - 1 bytes (-ENAMETOOLONG); idx_get_link is -ENOENT when none is stored. */
int idx_set_link(idx_t *idx, int64_t id, const char *target);
int idx_get_link(idx_t *idx, int64_t id, char *buf, size_t len); /* -ERANGE if too small */

/* Blocks. idx_block_put inserts or replaces the row (file, blkno) and keeps the cached- and
 * dirty-bytes totals current; it refuses (-ESTALE) a block whose version is not the file's current
 * version, (-EINVAL) a block that is dirty but not cached, and (-EBUSY) to replace a dirty row with
 * a clean one: only idx_blocks_clean() (or dropping the rows) makes a dirty block clean.
 * LRU: each put or touch stamps the block with a monotonically increasing use tick. */
int idx_block_put(idx_t *idx, const struct idx_block *b);
int idx_block_get(idx_t *idx, int64_t file, uint64_t blkno, struct idx_block *out);
/* Mark one block not cached (its hash row stays). A dirty block is refused (-EBUSY). */
int idx_block_uncache(idx_t *idx, int64_t file, uint64_t blkno);
/* Delete the block rows of a file from block 'from' on, dirty or not (a truncation made through
 * the mount: those bytes no longer exist). -EINVAL for 'from' over INT64_MAX. */
int idx_blocks_truncate(idx_t *idx, int64_t file, uint64_t from);
/* Delete every block row of a file, dirty ones included (the caller gives up local writes).
 * idx_delete, idx_rename over a row and idx_prune_children drop dirty blocks the same way: they are
 * explicit deletions, so a caller must not prune rows whose creation is still in the journal. */
int idx_blocks_drop(idx_t *idx, int64_t file);

/* Dirty blocks and write-back. A dirty block is never evicted, uncached, replaced by a clean row or
 * dropped by idx_put. It is clean again once a journal WRITE row covering it has been handed out by
 * idx_journal_scan() after the block's last write, sent, and acknowledged: every dirty put records
 * the highest journal seq handed out so far, and idx_blocks_clean() clears, among the blocks
 * [first, first + count) of 'file', those written before row 'seq' was handed out (the bytes that
 * row's send read); a block written again since stays dirty for the later row that covers it.
 * Call it in the batch that calls idx_journal_done(seq), or a crash in between leaves blocks dirty
 * with no row left to clean them; pass INT64_MAX as 'seq' to clean unconditionally. The write path
 * puts a write's dirty blocks and adds its journal row in one batch. Returns the number of blocks
 * made clean, -ENOENT without the file, -ESTALE when 'version' is not the file's current version,
 * -EINVAL for first > INT64_MAX. */
int idx_blocks_clean(idx_t *idx, int64_t file, uint64_t version, uint64_t first, uint64_t count,
                     int64_t seq);
/* Iterate the block rows of a file at 'version', in increasing blkno (paged, as idx_children). */
int idx_blocks(idx_t *idx, int64_t file, uint64_t version,
               int (*each)(void *arg, const struct idx_block *b), void *arg);
/* Mark all cached blocks of a file as just used (LRU). */
int idx_blocks_touch(idx_t *idx, int64_t file);

/* Total bytes (sum of len) of the cached blocks / of the dirty blocks (which count in both). Kept
 * in memory, recomputed at open. */
uint64_t idx_cached_bytes(idx_t *idx);
uint64_t idx_dirty_bytes(idx_t *idx);

/* Pins: a pinned file (an open file being read) never loses cached blocks to eviction. Counted:
 * n pins need n unpins. In memory only. */
void idx_pin(idx_t *idx, int64_t file);
void idx_unpin(idx_t *idx, int64_t file);

/* Evict least recently used clean cached blocks of unpinned files until idx_cached_bytes() <=
 * budget (or none is left: dirty blocks are never evicted, so the budget may stay exceeded),
 * marking them not cached, in one batch that is committed before return. evicted(arg, block)
 * is then called for each evicted block (after the commit, so a crash can only leave a block
 * that is uncached in the index but still on disk, never the reverse); the caller punches the
 * hole in its cache file; it runs without the index lock and gets the block as now recorded
 * (cached false). Returns the number of blocks evicted, or <0: -EBUSY while a batch is open (the
 * eviction could not be committed before return). */
int idx_evict(idx_t *idx, uint64_t budget, void (*evicted)(void *arg, const struct idx_block *b),
              void *arg);

/* The write-back journal: the operations done locally that the source has not acknowledged yet,
 * in the order they were done (seq). An entry records the file row it concerns and the paths as
 * they were at the time, so a later rename never redirects an earlier operation. */
enum idx_jkind {
    IDX_J_CREATE = 1,
    IDX_J_MKDIR,
    IDX_J_SYMLINK,
    IDX_J_LINK,
    IDX_J_UNLINK,
    IDX_J_RMDIR,
    IDX_J_RENAME,
    IDX_J_SETATTR,
    IDX_J_WRITE,
    IDX_J_FSYNC,
};

/* idx_jentry.valid: which attributes a SETATTR sets. */
#define IDX_J_SET_MODE  0x1u
#define IDX_J_SET_SIZE  0x2u
#define IDX_J_SET_ATIME 0x4u
#define IDX_J_SET_MTIME 0x8u

struct idx_jentry {
    int64_t seq;              /* assigned by idx_journal_add: increasing, never reused */
    enum idx_jkind kind;      /* -EINVAL if not one of enum idx_jkind */
    int64_t file;             /* the row the operation concerns (0: none) */
    char path[IDX_PATH_MAX];  /* source-relative path at the time of the operation */
    char path2[IDX_PATH_MAX]; /* RENAME/LINK target, SYMLINK target text; "" when unused */
    uint32_t mode, flags;     /* CREATE/MKDIR/SETATTR mode; RENAME flags */
    uint32_t valid;           /* SETATTR: IDX_J_SET_* bits (others: -EINVAL) */
    uint64_t size;            /* SETATTR size (at most INT64_MAX) */
    int64_t atime_ns, mtime_ns;
    uint64_t off, len; /* WRITE: the dirty byte range [off, off + len), off + len <= INT64_MAX */
};

/* Append an operation, inside the caller's batch if one is open (so a local change and its journal
 * row commit, or vanish, together), and set e->seq. A WRITE extends the journal's last row instead
 * when that row is a WRITE of the same file and path whose range touches or overlaps e's, and has
 * not been handed out by idx_journal_scan yet (its bytes are not being sent): e->seq is then that
 * row's seq. So consecutive writes merge, never across another operation. Seqs are increasing and
 * never reused, across reopen and when the journal is emptied; a rolled-back batch takes back the
 * seqs it was given. On failure e->seq is left as it was: -EINVAL for an unknown kind or valid bit,
 * a size, off or off + len over INT64_MAX or a negative file; -ENAMETOOLONG for a path or path2
 * with no NUL in its IDX_PATH_MAX bytes. */
int idx_journal_add(idx_t *idx, struct idx_jentry *e);

/* Call each() for the rows with seq > after_seq in increasing seq, at most 'max' of them: paged and
 * without the index lock, as idx_children (each() returns 0 to go on, anything else to stop and
 * that value is returned). Rows handed out are never extended afterwards. Refused with -EBUSY while
 * a batch is open (its rows are not committed and must not be sent); rows already passed to each()
 * stay handed out. */
int idx_journal_scan(idx_t *idx, int64_t after_seq, size_t max,
                     int (*each)(void *arg, const struct idx_jentry *e), void *arg);

/* Remove an acknowledged row; -ENOENT if there is none with that seq. */
int idx_journal_done(idx_t *idx, int64_t seq);

/* Set *n to the number of rows concerning 'file' (any file when 0) with seq <= upto_seq. */
int idx_journal_count(idx_t *idx, int64_t file, int64_t upto_seq, uint64_t *n);

/* The highest seq ever assigned (0 for none), rows of an open batch included; <0 on error. */
int64_t idx_journal_last_seq(idx_t *idx);

/* Run SQLite's integrity check and the index's own invariants (every block row belongs to an
 * existing file row at its current version; every dirty block is cached; the cached and dirty
 * totals match; every journal row has a known kind). 0 if sound, -EIO if not. */
int idx_check(idx_t *idx);

#endif
