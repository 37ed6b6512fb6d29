/* index.c - the SQLite block index (see index.h for the contract).
 *
 * Every public function takes idx->lock for its whole use of the connection and releases it before
 * calling back into the caller (iterators, gone(), evicted()), so callbacks may call the index.
 * A write that takes more than one statement runs as one unit: its own transaction when no batch
 * is open, a savepoint inside a batch (op_begin/op_end). In-memory state derived from the
 * database (the cached- and dirty-bytes totals) is updated as the statements run and recomputed
 * from the database whenever a unit or a batch is rolled back.
 *
 * Dirty stamps: blocks.dirty is 0 for a clean block, else the stamp of its last dirty put, which is
 * one more than the highest journal seq idx_journal_scan had handed out then (idx->jsealed). A row
 * with seq >= stamp was handed out after that write, so its send read the written bytes; rows at or
 * below jsealed are never extended (journal_merge), so the row covering a write always has a seq
 * >= the stamp and its acknowledgement cleans the block.
 */
#include "index.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sqlite3.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define BUSY_TIMEOUT_MS     5000
#define PAGE_ROWS           64   /* rows the iterators copy out per hold of the lock */
#define TARGET_MAX          4095 /* longest symlink target, in bytes (PATH_MAX - 1) */
#define PINS_MIN            16   /* first size of the pin table (a power of two) */
#define JOURNAL_PAGE_ROWS   16   /* journal rows copied out per hold of the lock (8 KiB each) */
#define META_SCHEMA_VERSION "schema_version"
#define META_NEXT_VERSION   "next_version"

/* Migration i brings the schema from version i to i + 1. Table meta exists before the first. */
static const char *const migrations[] = {
    "CREATE TABLE files ("
    " id INTEGER PRIMARY KEY,"
    " parent INTEGER NOT NULL,"
    " name TEXT NOT NULL,"
    " dev INTEGER NOT NULL DEFAULT 0,"
    " ino INTEGER NOT NULL DEFAULT 0,"
    " mode INTEGER NOT NULL,"
    " uid INTEGER NOT NULL DEFAULT 0,"
    " gid INTEGER NOT NULL DEFAULT 0,"
    " nlink INTEGER NOT NULL DEFAULT 1,"
    " size INTEGER NOT NULL DEFAULT 0,"
    " atime_ns INTEGER NOT NULL DEFAULT 0,"
    " mtime_ns INTEGER NOT NULL DEFAULT 0,"
    " ctime_ns INTEGER NOT NULL DEFAULT 0,"
    " version INTEGER NOT NULL,"
    " attr_time_ns INTEGER NOT NULL DEFAULT 0,"
    " list_time_ns INTEGER NOT NULL DEFAULT 0,"
    " link_target TEXT,"
    " UNIQUE (parent, name));"
    "CREATE INDEX files_parent ON files (parent);"
    "CREATE TABLE blocks ("
    " file INTEGER NOT NULL REFERENCES files (id) ON DELETE CASCADE,"
    " blkno INTEGER NOT NULL,"
    " version INTEGER NOT NULL,"
    " len INTEGER NOT NULL,"
    " hash BLOB NOT NULL,"
    " cached INTEGER NOT NULL DEFAULT 0,"
    " last_used INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (file, blkno));"
    "CREATE INDEX blocks_lru ON blocks (cached, last_used);"
    "INSERT INTO meta (key, value) VALUES ('" META_NEXT_VERSION "', '1');",

    "ALTER TABLE blocks ADD COLUMN dirty INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX blocks_dirty ON blocks (file, blkno) WHERE dirty != 0;"
    "CREATE TABLE journal ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " kind INTEGER NOT NULL,"
    " file INTEGER NOT NULL,"
    " path TEXT NOT NULL,"
    " path2 TEXT NOT NULL,"
    " mode INTEGER NOT NULL,"
    " flags INTEGER NOT NULL,"
    " valid INTEGER NOT NULL,"
    " size INTEGER NOT NULL,"
    " atime_ns INTEGER NOT NULL,"
    " mtime_ns INTEGER NOT NULL,"
    " off INTEGER NOT NULL,"
    " len INTEGER NOT NULL);"
    "CREATE INDEX journal_file ON journal (file);",

    /* hard links: a further name of a file is a row of its own whose alias is the file's id */
    "ALTER TABLE files ADD COLUMN alias INTEGER NOT NULL DEFAULT 0;"
    "CREATE INDEX files_alias ON files (alias) WHERE alias != 0;",
};
_Static_assert(ARRAY_SIZE(migrations) == IDX_SCHEMA_VERSION, "one migration per schema version");

#define FILE_COLS                                                                                  \
    "id, parent, name, dev, ino, mode, uid, gid, nlink, size, atime_ns, mtime_ns, ctime_ns, "      \
    "version, attr_time_ns, list_time_ns, alias"
#define BLOCK_COLS "file, blkno, version, len, hash, cached, dirty"
#define JOURNAL_COLS                                                                               \
    "seq, kind, file, path, path2, mode, flags, valid, size, atime_ns, mtime_ns, off, len"
#define JOURNAL_LAST_SEQ "(SELECT seq FROM sqlite_sequence WHERE name = 'journal')"
#define SUBTREE(seed)                                                                              \
    "WITH RECURSIVE sub (id) AS (" seed " UNION SELECT f.id FROM files f JOIN sub ON f.parent = "  \
    "sub.id) SELECT files.id, files.version, files.alias FROM files JOIN sub ON files.id = sub.id"

enum stmt {
    S_BEGIN,
    S_COMMIT,
    S_ROLLBACK,
    S_SAVEPOINT,
    S_RELEASE,
    S_ROLLBACK_TO,
    S_META_GET,
    S_META_SET,
    S_FILE_GET,
    S_FILE_LOOKUP,
    S_FILE_VERSION,
    S_FILE_INSERT,
    S_ROOT_INSERT,
    S_FILE_UPDATE,
    S_FILE_DELETE,
    S_FILE_MOVE,
    S_FILE_TOUCH,
    S_DIR_CHANGED,
    S_FILE_WRITTEN,
    S_ALIAS_INSERT,
    S_ALIASES,
    S_ALIAS_COUNT,
    S_HAS_ALIASES,
    S_NLINK_ADD,
    S_CHECK_ALIASES,
    S_FILE_LISTED,
    S_DIRS_LISTED,
    S_LINK_SET,
    S_LINK_GET,
    S_CHILDREN,
    S_SUBTREE,
    S_STALE_CHILDREN,
    S_DESCENDANTS,
    S_SUBTREE_DIRTY,
    S_FILE_DIRTY,
    S_FILE_BLOCK_SUMS,
    S_BLOCKS_DROP,
    S_BLOCKS_TRUNCATE,
    S_BLOCK_GET,
    S_BLOCK_PUT,
    S_BLOCK_UNCACHE,
    S_BLOCKS_LIST,
    S_BLOCKS_TOUCH,
    S_BLOCKS_DIRTY_SUM,
    S_BLOCKS_CLEAN,
    S_LRU,
    S_CACHED_SUM,
    S_DIRTY_SUM,
    S_MAX_TICK,
    S_J_INSERT,
    S_J_LAST,
    S_J_EXTEND,
    S_J_SCAN,
    S_J_DONE,
    S_J_COUNT_ALL,
    S_J_COUNT_FILE,
    S_J_LAST_SEQ,
    S_CHECK_INTEGRITY,
    S_CHECK_BLOCKS,
    S_CHECK_DIRTY,
    S_CHECK_ORPHANS,
    S_CHECK_JOURNAL,
    S_COUNT
};

/* 'what' names the statement in error messages: "index: <what>: <sqlite message>".
 * "+cached" keeps the planner on the (file, blkno) key for one file's blocks: blocks_lru would
 * scan every cached block of the cache. "dirty != 0" is spelled as in the partial index
 * blocks_dirty, so that the planner can use it. */
static const struct {
    const char *what;
    const char *sql;
} stmts[S_COUNT] = {
    [S_BEGIN] = {"begin batch", "BEGIN IMMEDIATE"},
    [S_COMMIT] = {"commit batch", "COMMIT"},
    [S_ROLLBACK] = {"roll back batch", "ROLLBACK"},
    [S_SAVEPOINT] = {"open savepoint", "SAVEPOINT op"},
    [S_RELEASE] = {"release savepoint", "RELEASE op"},
    [S_ROLLBACK_TO] = {"roll back savepoint", "ROLLBACK TO op"},
    [S_META_GET] = {"read meta", "SELECT value FROM meta WHERE key = ?1"},
    [S_META_SET] = {"write meta", "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)"},
    [S_FILE_GET] = {"read file row", "SELECT " FILE_COLS " FROM files WHERE id = ?1"},
    [S_FILE_LOOKUP] = {"look up file row",
                       "SELECT " FILE_COLS " FROM files WHERE parent = ?1 AND name = ?2"},
    [S_FILE_VERSION] = {"read file version", "SELECT version FROM files WHERE id = ?1"},
    [S_FILE_INSERT] = {"insert file row",
                       "INSERT INTO files (parent, name, dev, ino, mode, uid, gid, nlink, size, "
                       "atime_ns, mtime_ns, ctime_ns, version, attr_time_ns, list_time_ns, id) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, "
                       "?13)"},
    [S_ROOT_INSERT] = {"insert root row",
                       "INSERT INTO files (id, parent, name, mode, nlink, version) "
                       "VALUES (1, 0, '', ?1, 2, ?2)"},
    [S_FILE_UPDATE] = {"update file row",
                       "UPDATE files SET dev = ?3, ino = ?4, mode = ?5, uid = ?6, gid = ?7, "
                       "nlink = ?8, size = ?9, atime_ns = ?10, mtime_ns = ?11, ctime_ns = ?12, "
                       "version = ?13, attr_time_ns = ?14, list_time_ns = ?15, "
                       "link_target = CASE WHEN ?2 THEN NULL ELSE link_target END WHERE id = ?1"},
    [S_FILE_DELETE] = {"delete file row", "DELETE FROM files WHERE id = ?1"},
    [S_FILE_MOVE] = {"move file row", "UPDATE files SET parent = ?2, name = ?3 WHERE id = ?1"},
    [S_FILE_TOUCH] = {"touch file row", "UPDATE files SET attr_time_ns = ?2 WHERE id = ?1"},
    [S_FILE_WRITTEN] =
        {"change file size and times",
         "UPDATE files SET size = ?2, mtime_ns = ?3, ctime_ns = ?3 WHERE id = ?1 AND "
         "(mode & 61440) = 32768"},
    [S_DIR_CHANGED] =
        {"change folder times",
         "UPDATE files SET mtime_ns = ?2, ctime_ns = ?2, nlink = CASE WHEN ?3 < 0 AND "
         "nlink <= 2 THEN nlink ELSE nlink + ?3 END WHERE id = ?1 AND "
         "(mode & 61440) = 16384"},
    [S_ALIAS_INSERT] = {"insert hard link row",
                        "INSERT INTO files (parent, name, mode, version, attr_time_ns, alias, id) "
                        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?4)"},
    [S_ALIASES] = {"list hard link rows of file",
                   "SELECT id, parent, name FROM files WHERE alias = ?1 AND alias != 0 "
                   "ORDER BY id"},
    [S_ALIAS_COUNT] = {"count hard link rows of file",
                       "SELECT COUNT(*) FROM files WHERE alias = ?1 AND alias != 0"},
    [S_HAS_ALIASES] = {"look for hard link rows",
                       "SELECT EXISTS (SELECT 1 FROM files WHERE alias != 0)"},
    [S_NLINK_ADD] = {"change link count",
                     "UPDATE files SET nlink = MAX(1, nlink + ?2), ctime_ns = ?3 WHERE id = ?1"},
    [S_CHECK_ALIASES] = {"check hard link rows",
                         "SELECT COUNT(*) FROM files a WHERE a.alias != 0 AND NOT EXISTS "
                         "(SELECT 1 FROM files t WHERE t.id = a.alias AND t.alias = 0 "
                         "AND (t.mode & 61440) != 16384)"},
    [S_FILE_LISTED] = {"mark directory listed", "UPDATE files SET list_time_ns = ?2 WHERE id = ?1"},
    [S_DIRS_LISTED] = {"mark every directory listed",
                       "UPDATE files SET list_time_ns = ?1 WHERE (mode & 61440) = 16384 "
                       "AND alias = 0"},
    [S_LINK_SET] = {"write link target", "UPDATE files SET link_target = ?2 WHERE id = ?1"},
    [S_LINK_GET] = {"read link target", "SELECT link_target FROM files WHERE id = ?1"},
    [S_CHILDREN] = {"list children", "SELECT " FILE_COLS " FROM files "
                                     "WHERE parent = ?1 AND id > ?2 ORDER BY id LIMIT ?3"},
    [S_SUBTREE] = {"collect subtree", SUBTREE("SELECT id FROM files WHERE id = ?1")},
    [S_STALE_CHILDREN] = {"collect stale children",
                          SUBTREE("SELECT id FROM files WHERE parent = ?1 AND attr_time_ns < ?2 "
                                  "AND (CASE alias WHEN 0 THEN id ELSE alias END) "
                                  "NOT IN (SELECT file FROM journal)")},
    [S_DESCENDANTS] = {"collect descendants", SUBTREE("SELECT id FROM files WHERE parent = ?1")},
    [S_SUBTREE_DIRTY] = {"look for dirty blocks in subtree",
                         "WITH RECURSIVE sub (id) AS (SELECT ?1 UNION SELECT f.id FROM files f "
                         "JOIN sub ON f.parent = sub.id) SELECT EXISTS (SELECT 1 FROM blocks b "
                         "JOIN sub ON b.file = sub.id WHERE b.dirty != 0)"},
    [S_FILE_DIRTY] = {"look for dirty blocks of file",
                      "SELECT EXISTS (SELECT 1 FROM blocks WHERE file = ?1 AND dirty != 0)"},
    [S_FILE_BLOCK_SUMS] = {"sum cached and dirty blocks of file",
                           "SELECT COALESCE(SUM(CASE WHEN cached = 1 THEN len END), 0), "
                           "COALESCE(SUM(CASE WHEN dirty != 0 THEN len END), 0) "
                           "FROM blocks WHERE file = ?1"},
    [S_BLOCKS_DROP] = {"drop blocks of file", "DELETE FROM blocks WHERE file = ?1"},
    [S_BLOCKS_TRUNCATE] = {"drop blocks of file from",
                           "DELETE FROM blocks WHERE file = ?1 AND blkno >= ?2"},
    [S_BLOCK_GET] = {"read block row",
                     "SELECT " BLOCK_COLS " FROM blocks WHERE file = ?1 AND blkno = ?2"},
    [S_BLOCK_PUT] = {"write block row",
                     "INSERT OR REPLACE INTO blocks (file, blkno, version, len, hash, cached, "
                     "last_used, dirty) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"},
    [S_BLOCK_UNCACHE] = {"uncache block", "UPDATE blocks SET cached = 0 "
                                          "WHERE file = ?1 AND blkno = ?2 AND cached = 1"},
    [S_BLOCKS_LIST] = {"list blocks",
                       "SELECT " BLOCK_COLS " FROM blocks WHERE file = ?1 AND version = ?2 "
                       "AND blkno > ?3 ORDER BY blkno LIMIT ?4"},
    [S_BLOCKS_TOUCH] = {"touch blocks",
                        "UPDATE blocks SET last_used = ?2 WHERE file = ?1 AND +cached = 1"},
    [S_BLOCKS_DIRTY_SUM] = {"sum dirty blocks to clean",
                            "SELECT COALESCE(SUM(len), 0) FROM blocks WHERE file = ?1 "
                            "AND blkno BETWEEN ?2 AND ?3 AND dirty != 0 AND dirty <= ?4"},
    [S_BLOCKS_CLEAN] = {"clean blocks",
                        "UPDATE blocks SET dirty = 0 WHERE file = ?1 "
                        "AND blkno BETWEEN ?2 AND ?3 AND dirty != 0 AND dirty <= ?4"},
    [S_LRU] = {"scan least recently used blocks",
               "SELECT " BLOCK_COLS
               " FROM blocks WHERE cached = 1 AND dirty = 0 ORDER BY last_used"},
    [S_CACHED_SUM] = {"sum cached blocks",
                      "SELECT COALESCE(SUM(len), 0) FROM blocks WHERE cached = 1"},
    [S_DIRTY_SUM] = {"sum dirty blocks",
                     "SELECT COALESCE(SUM(len), 0) FROM blocks WHERE dirty != 0"},
    [S_MAX_TICK] = {"read last use tick", "SELECT COALESCE(MAX(last_used), 0) FROM blocks"},
    [S_J_INSERT] = {"append journal row",
                    "INSERT INTO journal (kind, file, path, path2, mode, flags, valid, size, "
                    "atime_ns, mtime_ns, off, len) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"},
    [S_J_LAST] = {"read last journal row", "SELECT seq, kind, file, path, off, len FROM journal "
                                           "WHERE seq = " JOURNAL_LAST_SEQ},
    [S_J_EXTEND] = {"extend journal row", "UPDATE journal SET off = ?2, len = ?3 WHERE seq = ?1"},
    [S_J_SCAN] = {"scan journal",
                  "SELECT " JOURNAL_COLS " FROM journal WHERE seq > ?1 ORDER BY seq LIMIT ?2"},
    [S_J_DONE] = {"remove journal row", "DELETE FROM journal WHERE seq = ?1"},
    [S_J_COUNT_ALL] = {"count journal rows", "SELECT COUNT(*) FROM journal WHERE seq <= ?2"},
    [S_J_COUNT_FILE] = {"count journal rows of file",
                        "SELECT COUNT(*) FROM journal WHERE file = ?1 AND seq <= ?2"},
    [S_J_LAST_SEQ] = {"read last journal seq", "SELECT COALESCE(" JOURNAL_LAST_SEQ ", 0)"},
    [S_CHECK_INTEGRITY] = {"check integrity", "PRAGMA integrity_check"},
    [S_CHECK_BLOCKS] = {"check blocks",
                        "SELECT COUNT(*) FROM blocks b LEFT JOIN files f ON f.id = b.file "
                        "WHERE f.id IS NULL OR f.version != b.version "
                        "OR length(b.hash) != " /* IDX_HASH_LEN */ "16 OR b.cached NOT IN (0, 1)"},
    [S_CHECK_DIRTY] = {"check dirty blocks", "SELECT COUNT(*) FROM blocks "
                                             "WHERE dirty < 0 OR (dirty != 0 AND cached != 1)"},
    [S_CHECK_ORPHANS] = {"check parents",
                         "SELECT COUNT(*) FROM files c WHERE c.id != 1 AND NOT EXISTS "
                         "(SELECT 1 FROM files p WHERE p.id = c.parent)"},
    [S_CHECK_JOURNAL] = {"check journal",
                         "SELECT COUNT(*) FROM journal WHERE kind NOT BETWEEN 1 AND 10"},
};
_Static_assert(IDX_J_CREATE == 1 && IDX_J_FSYNC == 10, "S_CHECK_JOURNAL spells the kinds");
_Static_assert(IDX_HASH_LEN == 16, "S_CHECK_BLOCKS spells the hash length");

/* A deleted row, and the caller's gone() to tell once the deletion is committed. */
struct gone_call {
    void (*fn)(void *arg, int64_t id, uint64_t version);
    void *arg;
    int64_t id;
    uint64_t version;
};

struct pin {
    int64_t id; /* 0: free slot */
    uint64_t count;
};

/* Lock order: idx->lock is the only lock; no callback is ever called with it held. */
#define PATH_SLOTS    4096
#define PATH_SLOT_MAX 240 /* longer paths are built each time */
struct path_slot {
    int64_t id;
    uint64_t gen;
    uint32_t len;
    char path[PATH_SLOT_MAX];
};

struct idx {
    pthread_mutex_t lock;
    sqlite3 *db;                /* protected by lock */
    sqlite3_stmt *st[S_COUNT];  /* protected by lock */
    int depth;                  /* batch nesting, 0 = none; protected by lock */
    uint64_t cached;            /* sum of len of the cached blocks; protected by lock */
    uint64_t dirty;             /* sum of len of the dirty blocks; protected by lock */
    int64_t jsealed;            /* highest journal seq handed out (this open); protected by lock */
    uint64_t tick;              /* last LRU use tick handed out; protected by lock */
    struct pin *pins;           /* open addressing, linear probing; protected by lock */
    size_t pins_cap, pins_used; /* protected by lock */
    uint64_t pins_lost;         /* pins not recorded for want of memory; protected by lock */
    struct gone_call *gone;     /* deletions waiting for the batch's commit; protected by lock */
    bool aliases; /* some row may be a hard link (else their queries are skipped); by lock */
    size_t gone_n, gone_cap; /* protected by lock */
    /* group commit (idx_set_group_commit); all protected by lock */
    int64_t group_ns; /* the window; 0: every outermost commit writes */
    bool group_open;  /* a transaction holds finished, uncommitted changes */
    int64_t group_t0; /* CLOCK_MONOTONIC ns of the group's first change */
    size_t gone_mark; /* gone_n when the outermost batch began (its rollback drops the rest) */
    bool flusher_on, flusher_stop;
    pthread_t flusher;
    pthread_cond_t group_cv; /* flusher: a group opened; idx_sync: depth came back to 0 */
    /* idx_path's memory of paths, by id: a slot counts while its gen is names_gen, which
     * moves whenever a row's name or parent may have changed (a move, a deletion, a rollback,
     * a failed statement); protected by lock */
    struct path_slot *paths;
    uint64_t names_gen;
    int sync_waiters; /* idx_sync calls waiting for depth 0: only they need the wake-up
                       * at the end of a batch (one per FUSE change otherwise, for a
                       * flusher with nothing to do) */
};

/* A batch ended (lock held): wake the idx_sync calls waiting for it, if any. */
static void batch_ended(idx_t *idx)
{
    if (idx->sync_waiters > 0)
        pthread_cond_broadcast(&idx->group_cv);
}

/* Log a failed SQLite call once and turn it into a negative errno. */
static int db_fail(idx_t *idx, const char *what)
{
    int rc = sqlite3_extended_errcode(idx->db);

    fprintf(stderr, "index: %s: %s\n", what, sqlite3_errmsg(idx->db));
    return (rc & 0xff) == SQLITE_NOMEM ? -ENOMEM : -EIO;
}

/* A value read from the database that this build cannot have written. */
static int db_corrupt(const char *what, int64_t id)
{
    fprintf(stderr, "index: %s: bad value in row %" PRId64 "\n", what, id);
    return -EIO;
}

/* Step a prepared statement: 1 for a row, 0 when done, <0 (logged) on error. Binds use
 * SQLITE_STATIC and bounded lengths, so they cannot fail; the statement is always left to
 * done(), which resets it for reuse. */
static int step(idx_t *idx, enum stmt s)
{
    int rc = sqlite3_step(idx->st[s]);

    if (rc == SQLITE_ROW)
        return 1;
    if (rc == SQLITE_DONE) {
        if (s == S_FILE_MOVE || s == S_FILE_DELETE || s == S_ROLLBACK || s == S_ROLLBACK_TO)
            idx->names_gen++; /* names may have changed: forget the paths */
        return 0;
    }
    idx->names_gen++; /* sqlite may have rolled the transaction back */
    return db_fail(idx, stmts[s].what);
}

static void done(idx_t *idx, enum stmt s)
{
    sqlite3_reset(idx->st[s]);
    sqlite3_clear_bindings(idx->st[s]);
}

/* Run a statement that returns no row of interest. */
static int exec(idx_t *idx, enum stmt s)
{
    int r = step(idx, s);

    done(idx, s);
    return r < 0 ? r : 0;
}

/* Run a statement that returns one integer (0 when it returns no row). */
static int query_i64(idx_t *idx, enum stmt s, int64_t *v)
{
    int r = step(idx, s);

    *v = r == 1 ? sqlite3_column_int64(idx->st[s], 0) : 0;
    done(idx, s);
    return r < 0 ? r : 0;
}

static int read_file_row(sqlite3_stmt *st, enum stmt s, struct idx_file *f)
{
    const unsigned char *name;
    int len;

    memset(f, 0, sizeof(*f));
    f->id = sqlite3_column_int64(st, 0);
    f->parent = sqlite3_column_int64(st, 1);
    name = sqlite3_column_text(st, 2);
    len = sqlite3_column_bytes(st, 2);
    if (name == NULL || len > IDX_NAME_MAX || memchr(name, '\0', (size_t)len) != NULL)
        return db_corrupt(stmts[s].what, f->id);
    memcpy(f->name, name, (size_t)len);
    f->dev = (uint64_t)sqlite3_column_int64(st, 3);
    f->ino = (uint64_t)sqlite3_column_int64(st, 4);
    f->mode = (uint32_t)sqlite3_column_int64(st, 5);
    f->uid = (uint32_t)sqlite3_column_int64(st, 6);
    f->gid = (uint32_t)sqlite3_column_int64(st, 7);
    f->nlink = (uint32_t)sqlite3_column_int64(st, 8);
    f->size = (uint64_t)sqlite3_column_int64(st, 9);
    f->atime_ns = sqlite3_column_int64(st, 10);
    f->mtime_ns = sqlite3_column_int64(st, 11);
    f->ctime_ns = sqlite3_column_int64(st, 12);
    f->version = (uint64_t)sqlite3_column_int64(st, 13);
    f->attr_time_ns = sqlite3_column_int64(st, 14);
    f->list_time_ns = sqlite3_column_int64(st, 15);
    f->row = f->id;
    int64_t alias = sqlite3_column_int64(st, 16);
    if (alias != 0)
        f->id = alias; /* a hard link row: resolve_alias() fills in the file it names */
    return 0;
}

static int read_block_row(sqlite3_stmt *st, enum stmt s, struct idx_block *b)
{
    const void *hash;
    int64_t len;

    memset(b, 0, sizeof(*b));
    b->file = sqlite3_column_int64(st, 0);
    b->blkno = (uint64_t)sqlite3_column_int64(st, 1);
    b->version = (uint64_t)sqlite3_column_int64(st, 2);
    len = sqlite3_column_int64(st, 3);
    hash = sqlite3_column_blob(st, 4);
    if (len < 0 || len > UINT32_MAX || hash == NULL || sqlite3_column_bytes(st, 4) != IDX_HASH_LEN)
        return db_corrupt(stmts[s].what, b->file);
    b->len = (uint32_t)len;
    memcpy(b->hash, hash, IDX_HASH_LEN);
    b->cached = sqlite3_column_int64(st, 5) != 0;
    b->dirty = sqlite3_column_int64(st, 6) != 0;
    return 0;
}

/* Bind ?3..?15 of S_FILE_INSERT and S_FILE_UPDATE: the metadata columns. */
static void bind_file_attrs(sqlite3_stmt *st, const struct idx_file *f)
{
    sqlite3_bind_int64(st, 3, (int64_t)f->dev);
    sqlite3_bind_int64(st, 4, (int64_t)f->ino);
    sqlite3_bind_int64(st, 5, f->mode);
    sqlite3_bind_int64(st, 6, f->uid);
    sqlite3_bind_int64(st, 7, f->gid);
    sqlite3_bind_int64(st, 8, f->nlink);
    sqlite3_bind_int64(st, 9, (int64_t)f->size);
    sqlite3_bind_int64(st, 10, f->atime_ns);
    sqlite3_bind_int64(st, 11, f->mtime_ns);
    sqlite3_bind_int64(st, 12, f->ctime_ns);
    sqlite3_bind_int64(st, 13, (int64_t)f->version);
    sqlite3_bind_int64(st, 14, f->attr_time_ns);
    sqlite3_bind_int64(st, 15, f->list_time_ns);
}

/* Recompute what is kept in memory from the database, after a rollback. */
static void resync(idx_t *idx)
{
    int64_t sum;

    if (query_i64(idx, S_CACHED_SUM, &sum) == 0)
        idx->cached = (uint64_t)sum;
    if (query_i64(idx, S_DIRTY_SUM, &sum) == 0)
        idx->dirty = (uint64_t)sum;
}

static int batch_lost(void)
{
    fprintf(stderr, "index: batch was rolled back by sqlite after an error\n");
    return -EIO;
}

static void take_gone(idx_t *idx, struct gone_call **calls, size_t *n);

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Group commit: make sure the group's transaction is open (lock held, depth 0). */
static int group_enter(idx_t *idx)
{
    int r;

    if (!sqlite3_get_autocommit(idx->db))
        return idx->group_open ? 0 : batch_lost();
    if ((r = exec(idx, S_BEGIN)) < 0)
        return r;
    idx->group_open = true;
    idx->group_t0 = mono_ns();
    pthread_cond_broadcast(&idx->group_cv);
    return 0;
}

/* Commit the open group (lock held, depth 0); its gone() calls move to *calls for the caller to
 * run once the lock is released. A failed commit rolls the whole group back. */
static int group_commit(idx_t *idx, struct gone_call **calls, size_t *n)
{
    int r;

    *calls = NULL;
    *n = 0;
    if (!idx->group_open || idx->depth > 0)
        return 0;
    idx->group_open = false;
    if ((r = exec(idx, S_COMMIT)) < 0) {
        if (!sqlite3_get_autocommit(idx->db))
            exec(idx, S_ROLLBACK);
        fprintf(stderr,
                "index: the changes of the last %lld ms could not be committed and are lost\n",
                (long long)((mono_ns() - idx->group_t0) / 1000000));
        idx->gone_n = 0;
        resync(idx);
        return r;
    }
    take_gone(idx, calls, n);
    return 0;
}

/* Start a unit of writes that must apply whole; end it with op_end(). */
static int op_begin(idx_t *idx)
{
    int r;

    if (idx->depth == 0 && idx->group_ns == 0)
        return exec(idx, S_BEGIN);
    if (idx->depth == 0 && (r = group_enter(idx)) < 0)
        return r;
    if (sqlite3_get_autocommit(idx->db))
        return batch_lost();
    return exec(idx, S_SAVEPOINT);
}

/* End the unit: keep it if r >= 0 (and return r), undo it otherwise (or if keeping fails). */
static int op_end(idx_t *idx, int r)
{
    int rc;
    bool whole = idx->depth == 0 && idx->group_ns == 0; /* the unit is the transaction */

    if (r >= 0) {
        if ((rc = exec(idx, whole ? S_COMMIT : S_RELEASE)) == 0)
            return r;
        r = rc;
    }
    if (!sqlite3_get_autocommit(idx->db)) {
        if (whole) {
            exec(idx, S_ROLLBACK);
        } else {
            exec(idx, S_ROLLBACK_TO);
            exec(idx, S_RELEASE);
        }
    }
    resync(idx);
    return r;
}

static int queue_gone(idx_t *idx, void (*fn)(void *, int64_t, uint64_t), void *arg, int64_t id,
                      uint64_t version)
{
    struct gone_call *g;
    size_t cap;

    if (idx->gone_n == idx->gone_cap) {
        cap = idx->gone_cap ? idx->gone_cap * 2 : 64;
        if ((g = realloc(idx->gone, cap * sizeof(*g))) == NULL)
            return -ENOMEM;
        idx->gone = g;
        idx->gone_cap = cap;
    }
    idx->gone[idx->gone_n++] = (struct gone_call){fn, arg, id, version};
    return 0;
}

/* Move the queued gone() calls out, to be run once the lock is released. */
static void take_gone(idx_t *idx, struct gone_call **calls, size_t *n)
{
    *calls = idx->gone;
    *n = idx->gone_n;
    idx->gone = NULL;
    idx->gone_n = idx->gone_cap = 0;
}

static void run_gone(struct gone_call *calls, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        calls[i].fn(calls[i].arg, calls[i].id, calls[i].version);
    free(calls);
}

static size_t pin_home(int64_t id, size_t mask)
{
    uint64_t x = (uint64_t)id;

    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    return (size_t)x & mask;
}

static struct pin *pin_find(idx_t *idx, int64_t id)
{
    size_t mask = idx->pins_cap - 1, i;

    if (idx->pins_cap == 0)
        return NULL;
    for (i = pin_home(id, mask); idx->pins[i].id != 0; i = (i + 1) & mask)
        if (idx->pins[i].id == id)
            return &idx->pins[i];
    return NULL;
}

/* Place a pin known to be absent; the table has a free slot. */
static void pin_place(struct pin *slots, size_t cap, int64_t id, uint64_t count)
{
    size_t i;

    for (i = pin_home(id, cap - 1); slots[i].id != 0; i = (i + 1) & (cap - 1))
        ;
    slots[i].id = id;
    slots[i].count = count;
}

static int pin_grow(idx_t *idx)
{
    size_t cap = idx->pins_cap ? idx->pins_cap * 2 : PINS_MIN, i;
    struct pin *slots;

    if ((slots = calloc(cap, sizeof(*slots))) == NULL)
        return -ENOMEM;
    for (i = 0; i < idx->pins_cap; i++)
        if (idx->pins[i].id != 0)
            pin_place(slots, cap, idx->pins[i].id, idx->pins[i].count);
    free(idx->pins);
    idx->pins = slots;
    idx->pins_cap = cap;
    return 0;
}

/* Remove the pin in slot i, shifting back the entries of its probe run (no tombstones). */
static void pin_remove(idx_t *idx, size_t i)
{
    size_t mask = idx->pins_cap - 1, j = i, home;

    idx->pins[i].id = 0;
    idx->pins_used--;
    for (;;) {
        j = (j + 1) & mask;
        if (idx->pins[j].id == 0)
            return;
        home = pin_home(idx->pins[j].id, mask);
        /* entry j may move to i unless its home lies cyclically in (i, j] */
        if (i <= j ? (home > i && home <= j) : (home > i || home <= j))
            continue;
        idx->pins[i] = idx->pins[j];
        idx->pins[j].id = 0;
        i = j;
    }
}

static bool name_is_root(int64_t parent, const char *name)
{
    return parent == 0 && name[0] == '\0';
}

/* A name as stored: one component, or "" under parent 0 for the root. 'max' bounds the scan. */
static int check_name(int64_t parent, const char *name, size_t max)
{
    size_t len;

    if (name == NULL)
        return -EINVAL;
    len = strnlen(name, max);
    if (len > IDX_NAME_MAX)
        return -ENAMETOOLONG;
    if (name_is_root(parent, name))
        return 0;
    if (parent <= 0 || len == 0 || memchr(name, '/', len) != NULL || strcmp(name, ".") == 0 ||
        strcmp(name, "..") == 0)
        return -EINVAL;
    return 0;
}

static bool mode_type_valid(uint32_t mode)
{
    switch (mode & S_IFMT) {
    case S_IFREG:
    case S_IFDIR:
    case S_IFLNK:
    case S_IFCHR:
    case S_IFBLK:
    case S_IFIFO:
    case S_IFSOCK:
        return true;
    default:
        return false;
    }
}

/* The row 'id' as stored (a hard link row not resolved). */
static int get_row_locked(idx_t *idx, int64_t id, struct idx_file *out)
{
    int r;

    sqlite3_bind_int64(idx->st[S_FILE_GET], 1, id);
    if ((r = step(idx, S_FILE_GET)) == 1)
        r = read_file_row(idx->st[S_FILE_GET], S_FILE_GET, out);
    else if (r == 0)
        r = -ENOENT;
    done(idx, S_FILE_GET);
    return r;
}

static int resolve_alias(idx_t *idx, struct idx_file *f);

static int get_locked(idx_t *idx, int64_t id, struct idx_file *out)
{
    int r = get_row_locked(idx, id, out);
    return r == 0 ? resolve_alias(idx, out) : r;
}

/* A row read by read_file_row that is a hard link (row != id): take the attributes of the file
 * it names, keeping the link's own row, parent and name. */
static int resolve_alias(idx_t *idx, struct idx_file *f)
{
    struct idx_file t;
    int r;

    if (f->row == f->id)
        return 0;
    r = get_row_locked(idx, f->id, &t);
    if (r == -ENOENT || (r == 0 && t.row != t.id))
        return db_corrupt("resolve hard link", f->row); /* S_CHECK_ALIASES reports these */
    if (r < 0)
        return r;
    t.row = f->row;
    t.parent = f->parent;
    memcpy(t.name, f->name, sizeof(t.name));
    *f = t;
    return 0;
}

static int lookup_locked(idx_t *idx, int64_t parent, const char *name, struct idx_file *out)
{
    int r;

    sqlite3_bind_int64(idx->st[S_FILE_LOOKUP], 1, parent);
    sqlite3_bind_text(idx->st[S_FILE_LOOKUP], 2, name, -1, SQLITE_STATIC);
    if ((r = step(idx, S_FILE_LOOKUP)) == 1)
        r = read_file_row(idx->st[S_FILE_LOOKUP], S_FILE_LOOKUP, out);
    else if (r == 0)
        r = -ENOENT;
    done(idx, S_FILE_LOOKUP);
    if (r == 0)
        r = resolve_alias(idx, out);
    return r;
}

static int meta_read_i64(idx_t *idx, const char *key, int64_t *v)
{
    const char *text;
    char *end;
    int r;

    sqlite3_bind_text(idx->st[S_META_GET], 1, key, -1, SQLITE_STATIC);
    if ((r = step(idx, S_META_GET)) == 1) {
        text = (const char *)sqlite3_column_text(idx->st[S_META_GET], 0);
        errno = 0;
        *v = text != NULL ? strtoll(text, &end, 10) : 0;
        if (text == NULL || end == text || *end != '\0' || errno != 0 || *v < 0) {
            fprintf(stderr, "index: meta '%s' is not a number: '%s'\n", key,
                    text != NULL ? text : "");
            r = -EIO;
        } else {
            r = 0;
        }
    } else if (r == 0) {
        fprintf(stderr, "index: meta '%s' is missing\n", key);
        r = -EIO;
    }
    done(idx, S_META_GET);
    return r;
}

static int meta_write_i64(idx_t *idx, const char *key, int64_t v)
{
    sqlite3_bind_text(idx->st[S_META_SET], 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_int64(idx->st[S_META_SET], 2, v);
    return exec(idx, S_META_SET);
}

/* Take the next version from the counter in meta; call inside a unit of writes. */
static int fresh_version(idx_t *idx, uint64_t *version)
{
    int64_t next;
    int r;

    if ((r = meta_read_i64(idx, META_NEXT_VERSION, &next)) < 0)
        return r;
    if (next <= 0 || next == INT64_MAX) {
        fprintf(stderr, "index: meta '" META_NEXT_VERSION "' out of range: %" PRId64 "\n", next);
        return -EIO;
    }
    if ((r = meta_write_i64(idx, META_NEXT_VERSION, next + 1)) < 0)
        return r;
    *version = (uint64_t)next;
    return 0;
}

/* Delete every block row of a file, keeping the cached and dirty totals. */
static int drop_blocks_locked(idx_t *idx, int64_t file)
{
    sqlite3_stmt *st = idx->st[S_FILE_BLOCK_SUMS];
    int64_t cached = 0, dirty = 0;
    int r;

    sqlite3_bind_int64(st, 1, file);
    if ((r = step(idx, S_FILE_BLOCK_SUMS)) == 1) {
        cached = sqlite3_column_int64(st, 0);
        dirty = sqlite3_column_int64(st, 1);
    }
    done(idx, S_FILE_BLOCK_SUMS);
    if (r < 0)
        return r;
    sqlite3_bind_int64(idx->st[S_BLOCKS_DROP], 1, file);
    if ((r = exec(idx, S_BLOCKS_DROP)) < 0)
        return r;
    idx->cached -= (uint64_t)cached;
    idx->dirty -= (uint64_t)dirty;
    return 0;
}

struct row_ref {
    int64_t id;
    uint64_t version;
    int64_t alias; /* a hard link row: the file it names */
};

/* Run a bound statement yielding (id, version) rows and collect them. */
static int collect_rows(idx_t *idx, enum stmt s, struct row_ref **rows, size_t *n)
{
    struct row_ref *v = NULL, *nv;
    size_t cap = 0, len = 0;
    int r;

    while ((r = step(idx, s)) == 1) {
        if (len == cap) {
            cap = cap ? cap * 2 : 16;
            if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
                r = -ENOMEM;
                break;
            }
            v = nv;
        }
        v[len].id = sqlite3_column_int64(idx->st[s], 0);
        v[len].version = (uint64_t)sqlite3_column_int64(idx->st[s], 1);
        v[len].alias = sqlite3_column_int64(idx->st[s], 2);
        len++;
    }
    done(idx, s);
    if (r < 0) {
        free(v);
        return r;
    }
    *rows = v;
    *n = len;
    return 0;
}

static int nlink_add(idx_t *idx, int64_t file, int delta)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    sqlite3_bind_int64(idx->st[S_NLINK_ADD], 1, file);
    sqlite3_bind_int(idx->st[S_NLINK_ADD], 2, delta);
    sqlite3_bind_int64(idx->st[S_NLINK_ADD], 3, (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec);
    return exec(idx, S_NLINK_ADD);
}

static bool in_rows(const struct row_ref *rows, size_t n, int64_t id)
{
    for (size_t i = 0; i < n; i++)
        if (rows[i].id == id)
            return true;
    return false;
}

/* The file row 'id' loses its name: when a hard link row of it survives this deletion (not in
 * rows), the file takes that link's place and the link row goes. 1 if it did, 0 if the file has
 * no surviving link. */
static int promote_alias(idx_t *idx, int64_t id, const struct row_ref *rows, size_t n)
{
    sqlite3_stmt *st = idx->st[S_ALIASES];
    int64_t link = 0, parent = 0;
    char name[IDX_NAME_MAX + 1];
    int r;

    sqlite3_bind_int64(st, 1, id);
    while ((r = step(idx, S_ALIASES)) == 1) {
        int64_t a = sqlite3_column_int64(st, 0);
        const unsigned char *text = sqlite3_column_text(st, 2);
        int len = sqlite3_column_bytes(st, 2);
        if (in_rows(rows, n, a) || text == NULL || len > IDX_NAME_MAX)
            continue;
        link = a;
        parent = sqlite3_column_int64(st, 1);
        memcpy(name, text, (size_t)len);
        name[len] = '\0';
        break;
    }
    done(idx, S_ALIASES);
    if (r < 0 || link == 0)
        return r < 0 ? r : 0;
    sqlite3_bind_int64(idx->st[S_FILE_DELETE], 1, link);
    if ((r = exec(idx, S_FILE_DELETE)) < 0)
        return r;
    sqlite3_bind_int64(idx->st[S_FILE_MOVE], 1, id);
    sqlite3_bind_int64(idx->st[S_FILE_MOVE], 2, parent);
    sqlite3_bind_text(idx->st[S_FILE_MOVE], 3, name, -1, SQLITE_STATIC);
    if ((r = exec(idx, S_FILE_MOVE)) < 0 || (r = nlink_add(idx, id, -1)) < 0)
        return r;
    return 1;
}

/* Delete the collected rows (names) and their blocks; queue gone() for each file that is gone
 * unless gone is NULL. A hard link row only takes one off its file's link count; a file whose
 * own row goes while one of its hard links stays moves to that link's name and stays. */
static int delete_rows(idx_t *idx, enum stmt s, void (*gone)(void *, int64_t, uint64_t), void *arg)
{
    struct row_ref *rows = NULL;
    size_t n = 0, i;
    int r;

    if ((r = collect_rows(idx, s, &rows, &n)) < 0)
        return r;
    for (i = 0; i < n; i++) {
        if (rows[i].alias != 0) {
            sqlite3_bind_int64(idx->st[S_FILE_DELETE], 1, rows[i].id);
            if ((r = exec(idx, S_FILE_DELETE)) < 0 || (r = nlink_add(idx, rows[i].alias, -1)) < 0)
                break;
            continue;
        }
        int moved = idx->aliases ? promote_alias(idx, rows[i].id, rows, n) : 0;
        if (moved < 0) {
            r = moved;
            break;
        }
        if (moved == 1)
            continue;
        if ((r = drop_blocks_locked(idx, rows[i].id)) < 0)
            break;
        sqlite3_bind_int64(idx->st[S_FILE_DELETE], 1, rows[i].id);
        if ((r = exec(idx, S_FILE_DELETE)) < 0)
            break;
        if (gone != NULL && (r = queue_gone(idx, gone, arg, rows[i].id, rows[i].version)) < 0)
            break;
    }
    free(rows);
    if (r < 0)
        return r;
    return n > 0 ? 1 : 0;
}

/* The shared tail of idx_delete and idx_prune_children: end the unit, then report deletions
 * that are committed (none are while a batch stays open: idx_commit reports those). */
static int delete_end(idx_t *idx, int r, size_t mark)
{
    struct gone_call *calls = NULL;
    size_t n = 0;

    r = op_end(idx, r);
    if (r < 0)
        idx->gone_n = mark;
    else if (idx->depth == 0 && !idx->group_open)
        take_gone(idx, &calls, &n);
    pthread_mutex_unlock(&idx->lock);
    run_gone(calls, n);
    return r;
}

static int ensure_root(idx_t *idx)
{
    struct idx_file root;
    uint64_t version;
    int r;

    if ((r = get_locked(idx, IDX_ROOT_ID, &root)) != -ENOENT)
        return r;
    if ((r = fresh_version(idx, &version)) < 0)
        return r;
    sqlite3_bind_int64(idx->st[S_ROOT_INSERT], 1, S_IFDIR | 0755);
    sqlite3_bind_int64(idx->st[S_ROOT_INSERT], 2, (int64_t)version);
    return exec(idx, S_ROOT_INSERT);
}

/* Log a failure while opening: "index: cannot <what> '<path>': <sqlite message>". */
static int open_fail(idx_t *idx, const char *path, const char *what)
{
    int rc = sqlite3_extended_errcode(idx->db);

    fprintf(stderr, "index: cannot %s '%s': %s\n", what, path, sqlite3_errmsg(idx->db));
    return (rc & 0xff) == SQLITE_NOMEM ? -ENOMEM : -EIO;
}

/* One-off SQL for opening, before the statements are prepared. */
static int open_exec(idx_t *idx, const char *path, const char *what, const char *sql)
{
    if (sqlite3_exec(idx->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return open_fail(idx, path, what);
    return 0;
}

/* Run a one-off query returning one text value; *out is malloc'ed (NULL if no row). */
static int open_query(idx_t *idx, const char *path, const char *what, const char *sql, char **out)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *text;
    int rc, r = 0;

    *out = NULL;
    if (sqlite3_prepare_v2(idx->db, sql, -1, &st, NULL) != SQLITE_OK)
        return open_fail(idx, path, what);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        text = sqlite3_column_text(st, 0);
        if ((*out = strdup(text != NULL ? (const char *)text : "")) == NULL)
            r = -ENOMEM;
    } else if (rc != SQLITE_DONE) {
        r = open_fail(idx, path, what);
    }
    sqlite3_finalize(st);
    return r;
}

static int migrate(idx_t *idx, const char *path)
{
    char *text = NULL, *end, sql[128];
    long long v = 0;
    int r;

    if ((r = open_exec(idx, path, "begin migrating", "BEGIN IMMEDIATE")) < 0)
        return r;
    if ((r = open_exec(idx, path, "create the meta table in",
                       "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")) < 0 ||
        (r = open_query(idx, path, "read the schema version of",
                        "SELECT value FROM meta WHERE key = '" META_SCHEMA_VERSION "'", &text)) < 0)
        goto out;
    if (text != NULL) {
        errno = 0;
        v = strtoll(text, &end, 10);
        if (end == text || *end != '\0' || errno != 0 || v < 0) {
            fprintf(stderr, "index: '%s' has a bad schema version '%s'\n", path, text);
            r = -EIO;
            goto out;
        }
    }
    if (v > IDX_SCHEMA_VERSION) {
        fprintf(stderr, "index: '%s' has schema version %lld, newer than this build's %d\n", path,
                v, IDX_SCHEMA_VERSION);
        r = -EPROTO;
        goto out;
    }
    for (; v < IDX_SCHEMA_VERSION; v++) {
        snprintf(sql, sizeof(sql),
                 "INSERT OR REPLACE INTO meta (key, value) VALUES ('" META_SCHEMA_VERSION
                 "', '%lld')",
                 v + 1);
        if ((r = open_exec(idx, path, "migrate", migrations[v])) < 0 ||
            (r = open_exec(idx, path, "write the schema version of", sql)) < 0)
            goto out;
    }
    r = open_exec(idx, path, "commit the migration of", "COMMIT");
out:
    if (r < 0 && !sqlite3_get_autocommit(idx->db))
        sqlite3_exec(idx->db, "ROLLBACK", NULL, NULL, NULL);
    free(text);
    return r;
}

int idx_open(const char *path, idx_t **out)
{
    idx_t *idx;
    char *mode = NULL;
    int64_t v;
    int r, rc, i;

    *out = NULL;
    if (path == NULL)
        return -EINVAL;
    if ((idx = calloc(1, sizeof(*idx))) == NULL)
        return -ENOMEM;
    if ((r = -pthread_mutex_init(&idx->lock, NULL)) < 0) {
        free(idx);
        return r;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&idx->group_cv, &ca);
    pthread_condattr_destroy(&ca);
    idx->paths = calloc(PATH_SLOTS, sizeof(*idx->paths)); /* none: idx_path walks every time */
    idx->names_gen = 1;                                   /* slots of gen 0 are empty */
    rc = sqlite3_open_v2(path, &idx->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        r = idx->db != NULL && sqlite3_system_errno(idx->db) != 0 ? -sqlite3_system_errno(idx->db)
            : rc == SQLITE_NOMEM                                  ? -ENOMEM
                                                                  : -EIO;
        fprintf(stderr, "index: cannot open '%s': %s\n", path,
                idx->db != NULL ? sqlite3_errmsg(idx->db) : sqlite3_errstr(rc));
        goto out;
    }
    sqlite3_extended_result_codes(idx->db, 1);
    sqlite3_busy_timeout(idx->db, BUSY_TIMEOUT_MS);
    if ((r = open_query(idx, path, "enable wal on", "PRAGMA journal_mode=WAL", &mode)) < 0)
        goto out;
    if (mode == NULL || strcmp(mode, "wal") != 0)
        fprintf(stderr, "index: cannot use wal for '%s', journal mode is '%s'\n", path,
                mode != NULL ? mode : "");
    if ((r = open_exec(
             idx, path, "set the pragmas of",
             "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA temp_store=MEMORY")) < 0 ||
        (r = migrate(idx, path)) < 0)
        goto out;
    for (i = 0; i < S_COUNT; i++) {
        if (sqlite3_prepare_v3(idx->db, stmts[i].sql, -1, SQLITE_PREPARE_PERSISTENT, &idx->st[i],
                               NULL) != SQLITE_OK) {
            r = open_fail(idx, path, "prepare statements for");
            goto out;
        }
    }
    if ((r = op_begin(idx)) < 0)
        goto out;
    if ((r = op_end(idx, ensure_root(idx))) < 0 || (r = query_i64(idx, S_CACHED_SUM, &v)) < 0)
        goto out;
    idx->cached = (uint64_t)v;
    if ((r = query_i64(idx, S_DIRTY_SUM, &v)) < 0)
        goto out;
    idx->dirty = (uint64_t)v;
    if ((r = query_i64(idx, S_MAX_TICK, &v)) < 0)
        goto out;
    idx->tick = (uint64_t)v;
    if ((r = query_i64(idx, S_HAS_ALIASES, &v)) < 0)
        goto out;
    idx->aliases = v != 0;
    *out = idx;
    idx = NULL;
out:
    free(mode);
    idx_close(idx);
    return r;
}

int idx_set_exclusive(idx_t *idx)
{
    char *msg = NULL;
    int r = 0;

    pthread_mutex_lock(&idx->lock);
    if (sqlite3_exec(idx->db, "PRAGMA locking_mode=EXCLUSIVE", NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "index: cannot set exclusive locking: %s\n", msg ? msg : "?");
        r = -EIO;
    }
    sqlite3_free(msg);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

void idx_close(idx_t *idx)
{
    int i;

    if (idx == NULL)
        return;
    if (idx->flusher_on) {
        pthread_mutex_lock(&idx->lock);
        idx->flusher_stop = true;
        pthread_cond_broadcast(&idx->group_cv);
        pthread_mutex_unlock(&idx->lock);
        pthread_join(idx->flusher, NULL);
    }
    if (idx->group_open && idx->depth == 0) {
        struct gone_call *calls;
        size_t n;
        group_commit(idx, &calls, &n);
        run_gone(calls, n);
    }
    if (idx->db != NULL && !sqlite3_get_autocommit(idx->db))
        sqlite3_exec(idx->db, "ROLLBACK", NULL, NULL, NULL);
    for (i = 0; i < S_COUNT; i++)
        sqlite3_finalize(idx->st[i]);
    if (idx->db != NULL && sqlite3_close(idx->db) != SQLITE_OK)
        fprintf(stderr, "index: cannot close: %s\n", sqlite3_errmsg(idx->db));
    pthread_mutex_destroy(&idx->lock);
    pthread_cond_destroy(&idx->group_cv);
    free(idx->pins);
    free(idx->gone);
    free(idx->paths);
    free(idx);
}

/* The group's committer when no batch comes to end it: at most group_ns after its first change. */
static void *flusher_main(void *arg)
{
    idx_t *idx = arg;
    struct gone_call *calls;
    size_t n;

    pthread_mutex_lock(&idx->lock);
    while (!idx->flusher_stop) {
        if (!idx->group_open) {
            pthread_cond_wait(&idx->group_cv, &idx->lock);
            continue;
        }
        int64_t now = mono_ns(), due = idx->group_t0 + idx->group_ns;
        if (now < due || idx->depth > 0) {
            /* a batch in progress commits the group itself at its end, once due */
            int64_t until = now < due ? due : now + idx->group_ns;
            struct timespec ts = {.tv_sec = until / 1000000000, .tv_nsec = until % 1000000000};
            pthread_cond_timedwait(&idx->group_cv, &idx->lock, &ts);
            continue;
        }
        group_commit(idx, &calls, &n);
        pthread_mutex_unlock(&idx->lock);
        run_gone(calls, n);
        pthread_mutex_lock(&idx->lock);
    }
    pthread_mutex_unlock(&idx->lock);
    return NULL;
}

int idx_set_group_commit(idx_t *idx, int window_ms)
{
    struct gone_call *calls = NULL;
    size_t n = 0;
    int r = 0;

    if (window_ms < 0)
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    if (idx->depth > 0) {
        pthread_mutex_unlock(&idx->lock);
        return -EBUSY;
    }
    if (window_ms == 0)
        r = group_commit(idx, &calls, &n);
    idx->group_ns = (int64_t)window_ms * 1000000;
    bool start = window_ms > 0 && !idx->flusher_on;
    pthread_mutex_unlock(&idx->lock);
    run_gone(calls, n);
    if (start) {
        if ((r = -pthread_create(&idx->flusher, NULL, flusher_main, idx)) < 0) {
            pthread_mutex_lock(&idx->lock);
            idx->group_ns = 0;
            pthread_mutex_unlock(&idx->lock);
            return r;
        }
        idx->flusher_on = true;
    }
    return r;
}

int idx_sync(idx_t *idx)
{
    struct gone_call *calls = NULL;
    size_t n = 0;
    int r;

    pthread_mutex_lock(&idx->lock);
    idx->sync_waiters++;
    while (idx->group_open && idx->depth > 0)
        pthread_cond_wait(&idx->group_cv, &idx->lock);
    idx->sync_waiters--;
    r = group_commit(idx, &calls, &n);
    pthread_mutex_unlock(&idx->lock);
    run_gone(calls, n);
    return r;
}

int idx_schema_version(idx_t *idx)
{
    int64_t v;
    int r;

    pthread_mutex_lock(&idx->lock);
    r = meta_read_i64(idx, META_SCHEMA_VERSION, &v);
    pthread_mutex_unlock(&idx->lock);
    if (r < 0)
        return r;
    return v > INT_MAX ? -EIO : (int)v;
}

int idx_begin(idx_t *idx)
{
    int r = 0;

    pthread_mutex_lock(&idx->lock);
    if (idx->depth == 0) {
        /* the outermost batch is a unit as one write is: a transaction, or a savepoint of the
         * group; a failed batch in a group drops only the gone() calls it queued */
        r = op_begin(idx);
        idx->gone_mark = idx->gone_n;
    } else if (sqlite3_get_autocommit(idx->db))
        r = batch_lost();
    else if (idx->depth == INT_MAX)
        r = -EOVERFLOW;
    if (r == 0)
        idx->depth++;
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_commit(idx_t *idx)
{
    struct gone_call *calls = NULL;
    size_t n = 0;
    int r = 0;

    pthread_mutex_lock(&idx->lock);
    if (idx->depth == 0) {
        r = -EINVAL;
        goto out;
    }
    if (--idx->depth > 0)
        goto out;
    batch_ended(idx);
    if (sqlite3_get_autocommit(idx->db) || (idx->group_ns > 0 && !idx->group_open)) {
        r = batch_lost();
        idx->group_open = false;
        idx->gone_n = 0;
        resync(idx);
    } else if ((r = op_end(idx, 0)) < 0) { /* undone (and resynced) by op_end */
        idx->gone_n = idx->group_ns > 0 ? idx->gone_mark : 0;
    } else if (idx->group_ns == 0) {
        take_gone(idx, &calls, &n);
    } else if (mono_ns() - idx->group_t0 >= idx->group_ns) {
        r = group_commit(idx, &calls, &n);
    }
out:
    pthread_mutex_unlock(&idx->lock);
    run_gone(calls, n);
    return r;
}

int idx_rollback(idx_t *idx)
{
    int r = 0;

    pthread_mutex_lock(&idx->lock);
    if (idx->depth == 0) {
        r = -EINVAL;
        goto out;
    }
    idx->depth = 0;
    batch_ended(idx);
    if (idx->group_ns > 0 && idx->group_open && !sqlite3_get_autocommit(idx->db)) {
        /* only this batch: the group's finished ones stay */
        idx->gone_n = idx->gone_mark;
        if ((r = exec(idx, S_ROLLBACK_TO)) == 0)
            r = exec(idx, S_RELEASE);
    } else {
        idx->gone_n = 0;
        idx->group_open = false;
        if (!sqlite3_get_autocommit(idx->db))
            r = exec(idx, S_ROLLBACK);
    }
    resync(idx);
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

static bool meta_key_reserved(const char *key)
{
    return strcmp(key, META_SCHEMA_VERSION) == 0 || strcmp(key, META_NEXT_VERSION) == 0;
}

int idx_meta_get(idx_t *idx, const char *key, char *val, size_t len)
{
    const unsigned char *text;
    size_t n;
    int r;

    if (key == NULL || (val == NULL && len > 0))
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_text(idx->st[S_META_GET], 1, key, -1, SQLITE_STATIC);
    if ((r = step(idx, S_META_GET)) == 1) {
        text = sqlite3_column_text(idx->st[S_META_GET], 0);
        n = (size_t)sqlite3_column_bytes(idx->st[S_META_GET], 0);
        r = 0;
        if (n >= len) {
            n = len > 0 ? len - 1 : 0;
            r = -ERANGE;
        }
        if (len > 0) {
            if (n > 0)
                memcpy(val, text, n);
            val[n] = '\0';
        }
    } else if (r == 0) {
        r = -ENOENT;
    }
    done(idx, S_META_GET);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_meta_set(idx_t *idx, const char *key, const char *val)
{
    int r;

    if (key == NULL || val == NULL || key[0] == '\0' || meta_key_reserved(key))
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_text(idx->st[S_META_SET], 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(idx->st[S_META_SET], 2, val, -1, SQLITE_STATIC);
    r = exec(idx, S_META_SET);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_get(idx_t *idx, int64_t id, struct idx_file *out)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    r = get_locked(idx, id, out);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_path(idx_t *idx, int64_t id, char *out, size_t len)
{
    char tmp[IDX_PATH_MAX];
    size_t pos = sizeof(tmp) - 1;
    struct idx_file f;
    int64_t cur = id;
    int r = 0, depth = 0;

    tmp[pos] = '\0';
    pthread_mutex_lock(&idx->lock);
    while (cur != IDX_ROOT_ID) {
        struct path_slot *ps = idx->paths ? &idx->paths[(uint64_t)cur % PATH_SLOTS] : NULL;
        if (ps && ps->id == cur && ps->gen == idx->names_gen) {
            if (ps->len > pos) {
                r = -ENAMETOOLONG;
                goto out;
            }
            pos -= ps->len;
            memcpy(tmp + pos, ps->path, ps->len);
            break;
        }
        if ((r = get_row_locked(idx, cur, &f)) < 0)
            goto out;
        size_t n = strlen(f.name);
        if (n + 1 > pos || ++depth > 4096) {
            r = -ENAMETOOLONG;
            goto out;
        }
        pos -= n;
        memcpy(tmp + pos, f.name, n);
        tmp[--pos] = '/';
        cur = f.parent;
    }
    size_t plen = sizeof(tmp) - 1 - pos;
    if (plen + 1 > len) {
        r = -ENAMETOOLONG;
        goto out;
    }
    memcpy(out, tmp + pos, plen + 1);
    if (idx->paths && id != IDX_ROOT_ID && plen < PATH_SLOT_MAX) {
        struct path_slot *ps = &idx->paths[(uint64_t)id % PATH_SLOTS];
        ps->id = id;
        ps->gen = idx->names_gen;
        ps->len = (uint32_t)plen;
        memcpy(ps->path, tmp + pos, plen);
    }
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_lookup(idx_t *idx, int64_t parent, const char *name, struct idx_file *out)
{
    int r;

    if ((r = check_name(parent, name, IDX_NAME_MAX + 1)) < 0)
        return r;
    pthread_mutex_lock(&idx->lock);
    r = lookup_locked(idx, parent, name, out);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

/* idx_put on an existing row 'old', with the unit of writes open; 'keep': idx_put_keep_version. */
static int put_existing(idx_t *idx, struct idx_file *row, const struct idx_file *old, bool keep)
{
    bool changed, was_dir, is_dir;
    int64_t dirty;
    int r;

    row->id = old->id;
    row->row = old->id;
    if (row->list_time_ns == 0)
        row->list_time_ns = old->list_time_ns;
    if (idx->aliases && !S_ISDIR(row->mode)) {
        /* hard link rows count: a source that does not know of them (SFTP v3 has no nlink)
         * cannot take the count below them */
        int64_t links;
        sqlite3_bind_int64(idx->st[S_ALIAS_COUNT], 1, old->id);
        if ((r = query_i64(idx, S_ALIAS_COUNT, &links)) < 0)
            return r;
        if (links > 0 && row->nlink < (uint64_t)links + 1)
            row->nlink = (uint32_t)links + 1;
    }
    if (keep && (row->mode & S_IFMT) != (old->mode & S_IFMT))
        return -EINVAL;
    changed = !keep && ((row->mode & S_IFMT) != (old->mode & S_IFMT) || row->size != old->size ||
                        row->mtime_ns != old->mtime_ns || row->ino != old->ino);
    if (!changed) {
        row->version = old->version;
    } else {
        /* what the change would throw away: a file's own dirty blocks; a folder's descendants
         * only when it stops being a folder (a folder's new times or size drop nothing, and
         * its subtree may be the whole tree: a recursive look for every folder the source
         * reports would cost O(subtree) each time) */
        was_dir = S_ISDIR(old->mode);
        is_dir = S_ISDIR(row->mode);
        dirty = 0;
        if (!was_dir || !is_dir) {
            enum stmt look = was_dir ? S_SUBTREE_DIRTY : S_FILE_DIRTY;
            sqlite3_bind_int64(idx->st[look], 1, old->id);
            if ((r = query_i64(idx, look, &dirty)) < 0)
                return r;
        }
        if (dirty != 0)
            return -EBUSY;
        if ((r = fresh_version(idx, &row->version)) < 0 ||
            (!was_dir && (r = drop_blocks_locked(idx, old->id)) < 0))
            return r;
        if (was_dir != is_dir) {
            sqlite3_bind_int64(idx->st[S_DESCENDANTS], 1, old->id);
            if ((r = delete_rows(idx, S_DESCENDANTS, NULL, NULL)) < 0)
                return r;
        }
    }
    sqlite3_bind_int64(idx->st[S_FILE_UPDATE], 1, row->id);
    sqlite3_bind_int(idx->st[S_FILE_UPDATE], 2, changed);
    bind_file_attrs(idx->st[S_FILE_UPDATE], row);
    if ((r = exec(idx, S_FILE_UPDATE)) < 0)
        return r;
    return changed ? 1 : 0;
}

/* idx_put of a row that does not exist yet, with the unit of writes open. */
static int put_new(idx_t *idx, struct idx_file *row)
{
    struct idx_file parent;
    int r;

    if (row->parent == 0) {
        fprintf(stderr, "index: the root row is missing\n");
        return -EIO;
    }
    if ((r = get_locked(idx, row->parent, &parent)) < 0)
        return r;
    if (!S_ISDIR(parent.mode))
        return -ENOTDIR;
    if ((r = fresh_version(idx, &row->version)) < 0)
        return r;
    sqlite3_bind_int64(idx->st[S_FILE_INSERT], 1, row->parent);
    sqlite3_bind_text(idx->st[S_FILE_INSERT], 2, row->name, -1, SQLITE_STATIC);
    bind_file_attrs(idx->st[S_FILE_INSERT], row);
    /* the row id is the row's first version: like versions, ids are never reused, so a FUSE
     * inode number never names two files over the life of a cache (a kernel that still holds
     * the old inode would otherwise take the new file for the deleted one) */
    if ((r = exec(idx, S_FILE_INSERT)) < 0)
        return r;
    row->id = (int64_t)row->version;
    return 0;
}

static int put_row(idx_t *idx, struct idx_file *f, bool keep)
{
    struct idx_file row, old;
    int r;

    if ((r = check_name(f->parent, f->name, sizeof(f->name))) < 0)
        return r;
    if (!mode_type_valid(f->mode) || (f->parent == 0 && !S_ISDIR(f->mode)))
        return -EINVAL;
    row = *f;
    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) < 0)
        goto out;
    int64_t link_row = 0;
    r = lookup_locked(idx, row.parent, row.name, &old);
    if (r == 0 && old.row != old.id) {
        /* the name is a hard link: the file it names takes the metadata, unless the source now
         * has something of another type there (the link is gone, a new row takes the name) */
        if ((old.mode & S_IFMT) != (row.mode & S_IFMT)) {
            sqlite3_bind_int64(idx->st[S_FILE_DELETE], 1, old.row);
            if ((r = exec(idx, S_FILE_DELETE)) == 0 && (r = nlink_add(idx, old.id, -1)) == 0)
                r = -ENOENT;
        } else {
            link_row = old.row;
            sqlite3_bind_int64(idx->st[S_FILE_TOUCH], 1, old.row);
            sqlite3_bind_int64(idx->st[S_FILE_TOUCH], 2, row.attr_time_ns);
            r = exec(idx, S_FILE_TOUCH);
        }
    }
    if (r == 0)
        r = put_existing(idx, &row, &old, keep);
    else if (r == -ENOENT)
        r = put_new(idx, &row);
    if ((r = op_end(idx, r)) >= 0) {
        f->id = row.id;
        f->row = link_row ? link_row : row.id;
        f->version = row.version;
        f->nlink = row.nlink;
    }
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_put(idx_t *idx, struct idx_file *f)
{
    return put_row(idx, f, false);
}

int idx_put_keep_version(idx_t *idx, struct idx_file *f)
{
    return put_row(idx, f, true);
}

/* Run a bound single-row UPDATE; -ENOENT if it matched no row. */
static int update_one(idx_t *idx, enum stmt s)
{
    int r = exec(idx, s);

    if (r == 0 && sqlite3_changes(idx->db) == 0)
        r = -ENOENT;
    return r;
}

int idx_touch_attr(idx_t *idx, int64_t id, int64_t attr_time_ns)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[S_FILE_TOUCH], 1, id);
    sqlite3_bind_int64(idx->st[S_FILE_TOUCH], 2, attr_time_ns);
    r = update_one(idx, S_FILE_TOUCH);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_dir_changed(idx_t *idx, int64_t dir, int64_t time_ns, int subdirs)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[S_DIR_CHANGED], 1, dir);
    sqlite3_bind_int64(idx->st[S_DIR_CHANGED], 2, time_ns);
    sqlite3_bind_int(idx->st[S_DIR_CHANGED], 3, subdirs);
    r = update_one(idx, S_DIR_CHANGED);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_file_written(idx_t *idx, int64_t id, uint64_t size, int64_t time_ns)
{
    int r;

    if (size > (uint64_t)INT64_MAX)
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[S_FILE_WRITTEN], 1, id);
    sqlite3_bind_int64(idx->st[S_FILE_WRITTEN], 2, (int64_t)size);
    sqlite3_bind_int64(idx->st[S_FILE_WRITTEN], 3, time_ns);
    r = update_one(idx, S_FILE_WRITTEN);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_set_listed(idx_t *idx, int64_t dir, int64_t list_time_ns)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[S_FILE_LISTED], 1, dir);
    sqlite3_bind_int64(idx->st[S_FILE_LISTED], 2, list_time_ns);
    r = update_one(idx, S_FILE_LISTED);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

/* Run statement s with ?1 = v under the lock; 'one': a row must change (else -ENOENT). */
static int exec_i64(idx_t *idx, enum stmt s, int64_t v, bool one)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[s], 1, v);
    r = one ? update_one(idx, s) : exec(idx, s);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_set_listed_all(idx_t *idx, int64_t list_time_ns)
{
    return exec_i64(idx, S_DIRS_LISTED, list_time_ns, false);
}

int idx_delete(idx_t *idx, int64_t id, void (*gone)(void *arg, int64_t id, uint64_t version),
               void *arg)
{
    size_t mark;
    int r;

    if (id == IDX_ROOT_ID)
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    mark = idx->gone_n;
    if ((r = op_begin(idx)) < 0) {
        pthread_mutex_unlock(&idx->lock);
        return r;
    }
    sqlite3_bind_int64(idx->st[S_SUBTREE], 1, id);
    r = delete_rows(idx, S_SUBTREE, gone, arg);
    return delete_end(idx, r == 0 ? -ENOENT : r < 0 ? r : 0, mark);
}

int idx_resolve(idx_t *idx, const char *path, struct idx_file *out)
{
    char comp[IDX_NAME_MAX + 1];
    const char *p = path;
    int r = idx_get(idx, IDX_ROOT_ID, out);

    while (r == 0 && *p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > IDX_NAME_MAX)
            return -ENAMETOOLONG;
        memcpy(comp, p, n);
        comp[n] = '\0';
        r = idx_lookup(idx, out->id, comp, out);
        p += n + (e ? 1 : 0);
    }
    return r;
}

int idx_rename(idx_t *idx, int64_t id, int64_t parent, const char *name,
               void (*gone)(void *arg, int64_t id, uint64_t version), void *arg)
{
    struct idx_file row, up, old;
    size_t mark;
    int r;

    if (id == IDX_ROOT_ID)
        return -EINVAL;
    if ((r = check_name(parent, name, IDX_NAME_MAX + 1)) < 0)
        return r;
    pthread_mutex_lock(&idx->lock);
    mark = idx->gone_n;
    if ((r = op_begin(idx)) < 0) {
        pthread_mutex_unlock(&idx->lock);
        return r;
    }
    if ((r = get_locked(idx, id, &row)) < 0 || (r = get_locked(idx, parent, &up)) < 0)
        goto out;
    if (!S_ISDIR(up.mode)) {
        r = -ENOTDIR;
        goto out;
    }
    /* A directory may not move beneath itself: walk up from the new parent. */
    for (;;) {
        if (up.id == id) {
            r = -EINVAL;
            goto out;
        }
        if (up.parent == 0)
            break;
        if ((r = get_locked(idx, up.parent, &up)) < 0)
            goto out;
    }
    r = lookup_locked(idx, parent, name, &old);
    if (r == 0 && old.row != id && old.id == row.id) {
        r = 0; /* two names of one file: rename(2) does nothing */
        goto out;
    }
    if (r == 0 && old.row != id) {
        sqlite3_bind_int64(idx->st[S_SUBTREE], 1, old.row);
        if ((r = delete_rows(idx, S_SUBTREE, gone, arg)) < 0)
            goto out;
    } else if (r < 0 && r != -ENOENT) {
        goto out;
    }
    sqlite3_bind_int64(idx->st[S_FILE_MOVE], 1, id);
    sqlite3_bind_int64(idx->st[S_FILE_MOVE], 2, parent);
    sqlite3_bind_text(idx->st[S_FILE_MOVE], 3, name, -1, SQLITE_STATIC);
    r = exec(idx, S_FILE_MOVE);
out:
    return delete_end(idx, r < 0 ? r : 0, mark);
}

int idx_prune_children(idx_t *idx, int64_t dir, int64_t before_ns,
                       void (*gone)(void *arg, int64_t id, uint64_t version), void *arg)
{
    struct idx_file d;
    size_t mark;
    int r;

    pthread_mutex_lock(&idx->lock);
    mark = idx->gone_n;
    if ((r = op_begin(idx)) < 0) {
        pthread_mutex_unlock(&idx->lock);
        return r;
    }
    if ((r = get_locked(idx, dir, &d)) == 0) {
        sqlite3_bind_int64(idx->st[S_STALE_CHILDREN], 1, dir);
        sqlite3_bind_int64(idx->st[S_STALE_CHILDREN], 2, before_ns);
        r = delete_rows(idx, S_STALE_CHILDREN, gone, arg);
    }
    return delete_end(idx, r < 0 ? r : 0, mark);
}

int idx_children(idx_t *idx, int64_t dir, int64_t after,
                 int (*each)(void *arg, const struct idx_file *f), void *arg)
{
    sqlite3_stmt *st;
    struct idx_file *page;
    size_t n, i;
    int r;

    if ((page = malloc(PAGE_ROWS * sizeof(*page))) == NULL)
        return -ENOMEM;
    for (;;) {
        pthread_mutex_lock(&idx->lock);
        st = idx->st[S_CHILDREN];
        sqlite3_bind_int64(st, 1, dir);
        sqlite3_bind_int64(st, 2, after);
        sqlite3_bind_int64(st, 3, PAGE_ROWS);
        for (n = 0; (r = step(idx, S_CHILDREN)) == 1; n++)
            if ((r = read_file_row(st, S_CHILDREN, &page[n])) < 0)
                break;
        done(idx, S_CHILDREN);
        for (i = 0; i < n && r >= 0; i++)
            r = resolve_alias(idx, &page[i]);
        pthread_mutex_unlock(&idx->lock);
        if (r < 0)
            goto out;
        for (i = 0; i < n; i++)
            if ((r = each(arg, &page[i])) != 0)
                goto out;
        if (n < PAGE_ROWS)
            break;
        after = page[n - 1].row;
    }
out:
    free(page);
    return r;
}

int idx_link(idx_t *idx, int64_t id, int64_t parent, const char *name, int64_t now_ns,
             struct idx_file *out)
{
    struct idx_file f, dir, old;
    uint64_t version;
    int r;

    if ((r = check_name(parent, name, IDX_NAME_MAX + 1)) < 0)
        return r;
    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) < 0)
        goto out;
    if ((r = get_locked(idx, id, &f)) == 0 && (S_ISDIR(f.mode) || f.id == IDX_ROOT_ID))
        r = -EPERM; /* no hard links to folders */
    if (r == 0 && (r = get_locked(idx, parent, &dir)) == 0 && !S_ISDIR(dir.mode))
        r = -ENOTDIR;
    if (r == 0) {
        r = lookup_locked(idx, parent, name, &old);
        r = r == 0 ? -EEXIST : r == -ENOENT ? fresh_version(idx, &version) : r;
    }
    if (r == 0) {
        sqlite3_stmt *st = idx->st[S_ALIAS_INSERT];
        idx->aliases = true;
        sqlite3_bind_int64(st, 1, parent);
        sqlite3_bind_text(st, 2, name, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 3, f.mode);
        sqlite3_bind_int64(st, 4, (int64_t)version);
        sqlite3_bind_int64(st, 5, now_ns);
        sqlite3_bind_int64(st, 6, f.id);
        r = exec(idx, S_ALIAS_INSERT);
    }
    if (r == 0 && (r = nlink_add(idx, f.id, 1)) == 0 && out != NULL)
        r = get_locked(idx, f.id, out);
    r = op_end(idx, r);
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_set_link(idx_t *idx, int64_t id, const char *target)
{
    struct idx_file f;
    int r;

    if (target == NULL || target[0] == '\0')
        return -EINVAL;
    if (strnlen(target, TARGET_MAX + 1) > TARGET_MAX)
        return -ENAMETOOLONG;
    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) < 0)
        goto out;
    if ((r = get_locked(idx, id, &f)) == 0 && !S_ISLNK(f.mode))
        r = -EINVAL;
    if (r == 0) {
        sqlite3_bind_int64(idx->st[S_LINK_SET], 1, id);
        sqlite3_bind_text(idx->st[S_LINK_SET], 2, target, -1, SQLITE_STATIC);
        r = exec(idx, S_LINK_SET);
    }
    r = op_end(idx, r);
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_get_link(idx_t *idx, int64_t id, char *buf, size_t len)
{
    const unsigned char *text;
    size_t n;
    int r;

    if (buf == NULL && len > 0)
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[S_LINK_GET], 1, id);
    if ((r = step(idx, S_LINK_GET)) == 1) {
        text = sqlite3_column_text(idx->st[S_LINK_GET], 0);
        n = (size_t)sqlite3_column_bytes(idx->st[S_LINK_GET], 0);
        if (text == NULL)
            r = -ENOENT;
        else if (n >= len)
            r = -ERANGE;
        else
            r = 0;
        if (r == 0)
            memcpy(buf, text, n + 1);
    } else if (r == 0) {
        r = -ENOENT;
    }
    done(idx, S_LINK_GET);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

/* The block row (file, blkno) as stored; an absent row reads as all zero. */
static int block_old(idx_t *idx, int64_t file, uint64_t blkno, struct idx_block *old, bool *exists)
{
    int r;

    memset(old, 0, sizeof(*old));
    sqlite3_bind_int64(idx->st[S_BLOCK_GET], 1, file);
    sqlite3_bind_int64(idx->st[S_BLOCK_GET], 2, (int64_t)blkno);
    r = step(idx, S_BLOCK_GET);
    *exists = r == 1;
    if (r == 1)
        r = read_block_row(idx->st[S_BLOCK_GET], S_BLOCK_GET, old);
    done(idx, S_BLOCK_GET);
    return r < 0 ? r : 0;
}

/* 0 if 'file' exists at 'version', -ENOENT if it does not exist, -ESTALE at another version. */
static int check_version(idx_t *idx, int64_t file, uint64_t version)
{
    int64_t v = 0;
    int r;

    sqlite3_bind_int64(idx->st[S_FILE_VERSION], 1, file);
    if ((r = step(idx, S_FILE_VERSION)) == 1)
        v = sqlite3_column_int64(idx->st[S_FILE_VERSION], 0);
    done(idx, S_FILE_VERSION);
    if (r == 0)
        return -ENOENT;
    if (r < 0)
        return r;
    return (uint64_t)v == version ? 0 : -ESTALE;
}

int idx_block_put(idx_t *idx, const struct idx_block *b)
{
    struct idx_block old;
    sqlite3_stmt *st;
    bool exists;
    int r;

    if (b->blkno > INT64_MAX || (b->dirty && !b->cached))
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) < 0)
        goto out;
    if ((r = check_version(idx, b->file, b->version)) == 0)
        r = block_old(idx, b->file, b->blkno, &old, &exists);
    if (r == 0 && old.dirty && !b->dirty)
        r = -EBUSY;
    if (r == 0) {
        st = idx->st[S_BLOCK_PUT];
        sqlite3_bind_int64(st, 1, b->file);
        sqlite3_bind_int64(st, 2, (int64_t)b->blkno);
        sqlite3_bind_int64(st, 3, (int64_t)b->version);
        sqlite3_bind_int64(st, 4, b->len);
        sqlite3_bind_blob(st, 5, b->hash, IDX_HASH_LEN, SQLITE_STATIC);
        sqlite3_bind_int(st, 6, b->cached ? 1 : 0);
        sqlite3_bind_int64(st, 7, (int64_t)(idx->tick + 1));
        sqlite3_bind_int64(st, 8, b->dirty ? idx->jsealed + 1 : 0);
        if ((r = exec(idx, S_BLOCK_PUT)) == 0) {
            idx->tick++;
            idx->cached = idx->cached - (old.cached ? old.len : 0) + (b->cached ? b->len : 0);
            idx->dirty = idx->dirty - (old.dirty ? old.len : 0) + (b->dirty ? b->len : 0);
        }
    }
    r = op_end(idx, r);
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_block_get(idx_t *idx, int64_t file, uint64_t blkno, struct idx_block *out)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[S_BLOCK_GET], 1, file);
    sqlite3_bind_int64(idx->st[S_BLOCK_GET], 2, (int64_t)blkno);
    if ((r = step(idx, S_BLOCK_GET)) == 1)
        r = read_block_row(idx->st[S_BLOCK_GET], S_BLOCK_GET, out);
    else if (r == 0)
        r = -ENOENT;
    done(idx, S_BLOCK_GET);
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_block_uncache(idx_t *idx, int64_t file, uint64_t blkno)
{
    struct idx_block old;
    bool exists;
    int r;

    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) < 0)
        goto out;
    if ((r = block_old(idx, file, blkno, &old, &exists)) == 0 && !exists)
        r = -ENOENT;
    else if (r == 0 && old.dirty)
        r = -EBUSY;
    if (r == 0 && old.cached) {
        sqlite3_bind_int64(idx->st[S_BLOCK_UNCACHE], 1, file);
        sqlite3_bind_int64(idx->st[S_BLOCK_UNCACHE], 2, (int64_t)blkno);
        if ((r = exec(idx, S_BLOCK_UNCACHE)) == 0)
            idx->cached -= old.len;
    }
    r = op_end(idx, r);
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_blocks_truncate(idx_t *idx, int64_t file, uint64_t from)
{
    int64_t cached, dirty;
    int r;

    if (from > INT64_MAX)
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) == 0) {
        sqlite3_bind_int64(idx->st[S_BLOCKS_TRUNCATE], 1, file);
        sqlite3_bind_int64(idx->st[S_BLOCKS_TRUNCATE], 2, (int64_t)from);
        if ((r = exec(idx, S_BLOCKS_TRUNCATE)) == 0 &&
            (r = query_i64(idx, S_CACHED_SUM, &cached)) == 0 &&
            (r = query_i64(idx, S_DIRTY_SUM, &dirty)) == 0) {
            idx->cached = (uint64_t)cached;
            idx->dirty = (uint64_t)dirty;
        }
        r = op_end(idx, r);
    }
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_blocks_drop(idx_t *idx, int64_t file)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) == 0)
        r = op_end(idx, drop_blocks_locked(idx, file));
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_blocks(idx_t *idx, int64_t file, uint64_t version,
               int (*each)(void *arg, const struct idx_block *b), void *arg)
{
    struct idx_block page[PAGE_ROWS];
    int64_t after = -1;
    sqlite3_stmt *st;
    size_t n, i;
    int r;

    for (;;) {
        pthread_mutex_lock(&idx->lock);
        st = idx->st[S_BLOCKS_LIST];
        sqlite3_bind_int64(st, 1, file);
        sqlite3_bind_int64(st, 2, (int64_t)version);
        sqlite3_bind_int64(st, 3, after);
        sqlite3_bind_int64(st, 4, PAGE_ROWS);
        for (n = 0; (r = step(idx, S_BLOCKS_LIST)) == 1; n++)
            if ((r = read_block_row(st, S_BLOCKS_LIST, &page[n])) < 0)
                break;
        done(idx, S_BLOCKS_LIST);
        pthread_mutex_unlock(&idx->lock);
        if (r < 0)
            return r;
        for (i = 0; i < n; i++)
            if ((r = each(arg, &page[i])) != 0)
                return r;
        if (n < PAGE_ROWS)
            return 0;
        after = (int64_t)page[n - 1].blkno;
    }
}

int idx_blocks_touch(idx_t *idx, int64_t file)
{
    int r;

    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[S_BLOCKS_TOUCH], 1, file);
    sqlite3_bind_int64(idx->st[S_BLOCKS_TOUCH], 2, (int64_t)(idx->tick + 1));
    if ((r = exec(idx, S_BLOCKS_TOUCH)) == 0)
        idx->tick++;
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int idx_blocks_clean(idx_t *idx, int64_t file, uint64_t version, uint64_t first, uint64_t count,
                     int64_t seq)
{
    uint64_t last;
    int64_t sum;
    int r, n = 0;

    if (first > INT64_MAX)
        return -EINVAL;
    last = count == 0                                ? first
           : count - 1 > (uint64_t)INT64_MAX - first ? INT64_MAX
                                                     : first + count - 1;
    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) < 0)
        goto out;
    if ((r = check_version(idx, file, version)) < 0 || count == 0)
        goto end;
    sqlite3_bind_int64(idx->st[S_BLOCKS_DIRTY_SUM], 1, file);
    sqlite3_bind_int64(idx->st[S_BLOCKS_DIRTY_SUM], 2, (int64_t)first);
    sqlite3_bind_int64(idx->st[S_BLOCKS_DIRTY_SUM], 3, (int64_t)last);
    sqlite3_bind_int64(idx->st[S_BLOCKS_DIRTY_SUM], 4, seq);
    if ((r = query_i64(idx, S_BLOCKS_DIRTY_SUM, &sum)) < 0)
        goto end;
    sqlite3_bind_int64(idx->st[S_BLOCKS_CLEAN], 1, file);
    sqlite3_bind_int64(idx->st[S_BLOCKS_CLEAN], 2, (int64_t)first);
    sqlite3_bind_int64(idx->st[S_BLOCKS_CLEAN], 3, (int64_t)last);
    sqlite3_bind_int64(idx->st[S_BLOCKS_CLEAN], 4, seq);
    if ((r = exec(idx, S_BLOCKS_CLEAN)) == 0) {
        n = sqlite3_changes(idx->db);
        idx->dirty -= (uint64_t)sum;
    }
end:
    r = op_end(idx, r < 0 ? r : n);
out:
    pthread_mutex_unlock(&idx->lock);
    return r;
}

uint64_t idx_cached_bytes(idx_t *idx)
{
    uint64_t v;

    pthread_mutex_lock(&idx->lock);
    v = idx->cached;
    pthread_mutex_unlock(&idx->lock);
    return v;
}

uint64_t idx_dirty_bytes(idx_t *idx)
{
    uint64_t v;

    pthread_mutex_lock(&idx->lock);
    v = idx->dirty;
    pthread_mutex_unlock(&idx->lock);
    return v;
}

void idx_pin(idx_t *idx, int64_t file)
{
    struct pin *p;

    if (file <= 0)
        return;
    pthread_mutex_lock(&idx->lock);
    if ((p = pin_find(idx, file)) != NULL) {
        p->count++;
    } else if ((idx->pins_used + 1) * 2 <= idx->pins_cap || pin_grow(idx) == 0 ||
               idx->pins_used + 1 < idx->pins_cap) {
        pin_place(idx->pins, idx->pins_cap, file, 1);
        idx->pins_used++;
    } else {
        if (idx->pins_lost++ == 0)
            fprintf(stderr, "index: cannot record pin: out of memory, eviction suspended\n");
    }
    pthread_mutex_unlock(&idx->lock);
}

void idx_unpin(idx_t *idx, int64_t file)
{
    struct pin *p;

    if (file <= 0)
        return;
    pthread_mutex_lock(&idx->lock);
    if ((p = pin_find(idx, file)) != NULL) {
        if (--p->count == 0)
            pin_remove(idx, (size_t)(p - idx->pins));
    } else if (idx->pins_lost > 0) {
        idx->pins_lost--;
    }
    pthread_mutex_unlock(&idx->lock);
}

/* Pick unpinned cached blocks, least recently used first, until enough bytes would be freed. */
static int evict_pick(idx_t *idx, uint64_t budget, struct idx_block **out, size_t *count)
{
    struct idx_block *v = NULL, *nv, b;
    size_t n = 0, cap = 0;
    uint64_t freed = 0;
    int r = 0;

    while (freed < idx->cached && idx->cached - freed > budget && n < INT_MAX &&
           (r = step(idx, S_LRU)) == 1) {
        if ((r = read_block_row(idx->st[S_LRU], S_LRU, &b)) < 0)
            break;
        if (pin_find(idx, b.file) != NULL)
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            if ((nv = realloc(v, cap * sizeof(*v))) == NULL) {
                r = -ENOMEM;
                break;
            }
            v = nv;
        }
        v[n++] = b;
        freed += b.len;
        r = 0;
    }
    done(idx, S_LRU);
    if (r < 0) {
        free(v);
        return r;
    }
    *out = v;
    *count = n;
    return 0;
}

int idx_evict(idx_t *idx, uint64_t budget, void (*evicted)(void *arg, const struct idx_block *b),
              void *arg)
{
    struct idx_block *v = NULL;
    size_t n = 0, kept = 0, i;
    int r;

    pthread_mutex_lock(&idx->lock);
    if (idx->depth > 0) {
        r = -EBUSY;
        goto out;
    }
    if (idx->pins_lost > 0) {
        r = -ENOMEM;
        goto out;
    }
    if ((r = evict_pick(idx, budget, &v, &n)) < 0 || n == 0)
        goto out;
    if ((r = op_begin(idx)) < 0)
        goto out;
    for (i = 0; i < n; i++) {
        sqlite3_bind_int64(idx->st[S_BLOCK_UNCACHE], 1, v[i].file);
        sqlite3_bind_int64(idx->st[S_BLOCK_UNCACHE], 2, (int64_t)v[i].blkno);
        if ((r = exec(idx, S_BLOCK_UNCACHE)) < 0)
            break;
        if (sqlite3_changes(idx->db) == 0)
            continue;
        idx->cached -= v[i].len;
        v[kept] = v[i];
        v[kept++].cached = false;
    }
    if ((r = op_end(idx, r)) < 0)
        kept = 0;
out:
    pthread_mutex_unlock(&idx->lock);
    for (i = 0; i < kept; i++)
        if (evicted != NULL)
            evicted(arg, &v[i]);
    free(v);
    return r < 0 ? r : (int)kept;
}

static bool jkind_valid(enum idx_jkind kind)
{
    return (int)kind >= IDX_J_CREATE && (int)kind <= IDX_J_FSYNC;
}

static int check_jentry(const struct idx_jentry *e)
{
    const uint32_t valid_all = IDX_J_SET_MODE | IDX_J_SET_SIZE | IDX_J_SET_ATIME | IDX_J_SET_MTIME;

    if (e == NULL || !jkind_valid(e->kind) || e->file < 0 || (e->valid & ~valid_all) != 0 ||
        e->size > INT64_MAX || e->off > INT64_MAX || e->len > (uint64_t)INT64_MAX - e->off)
        return -EINVAL;
    if (strnlen(e->path, IDX_PATH_MAX) >= IDX_PATH_MAX ||
        strnlen(e->path2, IDX_PATH_MAX) >= IDX_PATH_MAX)
        return -ENAMETOOLONG;
    return 0;
}

/* Copy a text column into buf[size]: -EIO (logged) if it is NULL, too long or holds a NUL. */
static int read_text(sqlite3_stmt *st, int col, char *buf, size_t size, enum stmt s, int64_t id)
{
    const unsigned char *text = sqlite3_column_text(st, col);
    size_t len = (size_t)sqlite3_column_bytes(st, col);

    if (text == NULL || len >= size || memchr(text, '\0', len) != NULL)
        return db_corrupt(stmts[s].what, id);
    memcpy(buf, text, len);
    buf[len] = '\0';
    return 0;
}

static int read_jentry(sqlite3_stmt *st, enum stmt s, struct idx_jentry *e)
{
    int64_t kind, size, off, len;
    int r;

    memset(e, 0, sizeof(*e));
    e->seq = sqlite3_column_int64(st, 0);
    kind = sqlite3_column_int64(st, 1);
    e->file = sqlite3_column_int64(st, 2);
    if ((r = read_text(st, 3, e->path, sizeof(e->path), s, e->seq)) < 0 ||
        (r = read_text(st, 4, e->path2, sizeof(e->path2), s, e->seq)) < 0)
        return r;
    e->mode = (uint32_t)sqlite3_column_int64(st, 5);
    e->flags = (uint32_t)sqlite3_column_int64(st, 6);
    e->valid = (uint32_t)sqlite3_column_int64(st, 7);
    size = sqlite3_column_int64(st, 8);
    e->atime_ns = sqlite3_column_int64(st, 9);
    e->mtime_ns = sqlite3_column_int64(st, 10);
    off = sqlite3_column_int64(st, 11);
    len = sqlite3_column_int64(st, 12);
    if (kind < IDX_J_CREATE || kind > IDX_J_FSYNC || size < 0 || off < 0 || len < 0)
        return db_corrupt(stmts[s].what, e->seq);
    e->kind = (enum idx_jkind)kind;
    e->size = (uint64_t)size;
    e->off = (uint64_t)off;
    e->len = (uint64_t)len;
    return 0;
}

/* Extend the journal's last row by the WRITE 'e' if the rule of idx_journal_add allows it: 1 (and
 * *merged set to that row's seq) if it did, 0 if e needs a row of its own, <0 on error. */
static int journal_merge(idx_t *idx, const struct idx_jentry *e, int64_t *merged)
{
    sqlite3_stmt *st = idx->st[S_J_LAST];
    int64_t seq = 0, off = 0, len, end = 0;
    bool merge = false;
    int r;

    if (e->kind != IDX_J_WRITE)
        return 0;
    if ((r = step(idx, S_J_LAST)) == 1) {
        seq = sqlite3_column_int64(st, 0);
        off = sqlite3_column_int64(st, 4);
        len = sqlite3_column_int64(st, 5);
        if (off < 0 || len < 0 || len > INT64_MAX - off) {
            r = db_corrupt(stmts[S_J_LAST].what, seq);
        } else {
            end = off + len;
            merge = seq > idx->jsealed && sqlite3_column_int64(st, 1) == IDX_J_WRITE &&
                    sqlite3_column_int64(st, 2) == e->file && sqlite3_column_text(st, 3) != NULL &&
                    strcmp((const char *)sqlite3_column_text(st, 3), e->path) == 0 &&
                    e->off <= (uint64_t)end && (uint64_t)off <= e->off + e->len;
            if (merge) {
                off = (uint64_t)off < e->off ? off : (int64_t)e->off;
                end = (uint64_t)end > e->off + e->len ? end : (int64_t)(e->off + e->len);
            }
        }
    }
    done(idx, S_J_LAST);
    if (r < 0 || !merge)
        return r < 0 ? r : 0;
    sqlite3_bind_int64(idx->st[S_J_EXTEND], 1, seq);
    sqlite3_bind_int64(idx->st[S_J_EXTEND], 2, off);
    sqlite3_bind_int64(idx->st[S_J_EXTEND], 3, end - off);
    if ((r = exec(idx, S_J_EXTEND)) < 0)
        return r;
    *merged = seq;
    return 1;
}

int idx_journal_add(idx_t *idx, struct idx_jentry *e)
{
    sqlite3_stmt *st = idx->st[S_J_INSERT];
    int64_t seq = 0;
    int r;

    if ((r = check_jentry(e)) < 0)
        return r;
    pthread_mutex_lock(&idx->lock);
    if ((r = op_begin(idx)) < 0)
        goto out;
    if ((r = journal_merge(idx, e, &seq)) == 0) {
        sqlite3_bind_int(st, 1, (int)e->kind);
        sqlite3_bind_int64(st, 2, e->file);
        sqlite3_bind_text(st, 3, e->path, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 4, e->path2, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 5, e->mode);
        sqlite3_bind_int64(st, 6, e->flags);
        sqlite3_bind_int64(st, 7, e->valid);
        sqlite3_bind_int64(st, 8, (int64_t)e->size);
        sqlite3_bind_int64(st, 9, e->atime_ns);
        sqlite3_bind_int64(st, 10, e->mtime_ns);
        sqlite3_bind_int64(st, 11, (int64_t)e->off);
        sqlite3_bind_int64(st, 12, (int64_t)e->len);
        if ((r = exec(idx, S_J_INSERT)) == 0)
            seq = sqlite3_last_insert_rowid(idx->db);
    }
    if ((r = op_end(idx, r)) >= 0)
        e->seq = seq;
out:
    pthread_mutex_unlock(&idx->lock);
    return r < 0 ? r : 0;
}

int idx_journal_scan(idx_t *idx, int64_t after_seq, size_t max,
                     int (*each)(void *arg, const struct idx_jentry *e), void *arg)
{
    struct idx_jentry *page;
    sqlite3_stmt *st;
    size_t want, n, i;
    int r = 0;

    if (each == NULL)
        return -EINVAL;
    if ((page = malloc(JOURNAL_PAGE_ROWS * sizeof(*page))) == NULL)
        return -ENOMEM;
    while (max > 0) {
        want = max < JOURNAL_PAGE_ROWS ? max : JOURNAL_PAGE_ROWS;
        pthread_mutex_lock(&idx->lock);
        if (idx->depth > 0) {
            pthread_mutex_unlock(&idx->lock);
            r = -EBUSY;
            break;
        }
        st = idx->st[S_J_SCAN];
        sqlite3_bind_int64(st, 1, after_seq);
        sqlite3_bind_int64(st, 2, (int64_t)want);
        for (n = 0; (r = step(idx, S_J_SCAN)) == 1; n++)
            if ((r = read_jentry(st, S_J_SCAN, &page[n])) < 0)
                break;
        done(idx, S_J_SCAN);
        if (r == 0 && n > 0 && page[n - 1].seq > idx->jsealed)
            idx->jsealed = page[n - 1].seq;
        pthread_mutex_unlock(&idx->lock);
        if (r < 0)
            break;
        for (i = 0; i < n; i++)
            if ((r = each(arg, &page[i])) != 0)
                goto out;
        if (n < want)
            break;
        max -= n;
        after_seq = page[n - 1].seq;
    }
out:
    free(page);
    return r;
}

int idx_journal_done(idx_t *idx, int64_t seq)
{
    return exec_i64(idx, S_J_DONE, seq, true);
}

int idx_journal_count(idx_t *idx, int64_t file, int64_t upto_seq, uint64_t *n)
{
    enum stmt s = file == 0 ? S_J_COUNT_ALL : S_J_COUNT_FILE;
    int64_t v;
    int r;

    if (file < 0 || n == NULL)
        return -EINVAL;
    pthread_mutex_lock(&idx->lock);
    sqlite3_bind_int64(idx->st[s], 1, file);
    sqlite3_bind_int64(idx->st[s], 2, upto_seq);
    if ((r = query_i64(idx, s, &v)) == 0)
        *n = (uint64_t)v;
    pthread_mutex_unlock(&idx->lock);
    return r;
}

int64_t idx_journal_last_seq(idx_t *idx)
{
    int64_t v;
    int r;

    pthread_mutex_lock(&idx->lock);
    r = query_i64(idx, S_J_LAST_SEQ, &v);
    pthread_mutex_unlock(&idx->lock);
    return r < 0 ? r : v;
}

int idx_check(idx_t *idx)
{
    const unsigned char *text;
    struct idx_file root;
    int64_t bad, sum;
    int r, rows = 0;

    pthread_mutex_lock(&idx->lock);
    while ((r = step(idx, S_CHECK_INTEGRITY)) == 1) {
        text = sqlite3_column_text(idx->st[S_CHECK_INTEGRITY], 0);
        if (text == NULL || strcmp((const char *)text, "ok") != 0) {
            fprintf(stderr, "index: integrity check: %s\n", text ? (const char *)text : "");
            rows++;
        }
    }
    done(idx, S_CHECK_INTEGRITY);
    if (r < 0)
        goto out;
    if (rows > 0) {
        r = -EIO;
        goto out;
    }
    if ((r = query_i64(idx, S_CHECK_BLOCKS, &bad)) < 0)
        goto out;
    if (bad != 0) {
        fprintf(stderr, "index: check: %" PRId64 " block rows without their file's version\n", bad);
        r = -EIO;
    }
    if (query_i64(idx, S_CHECK_DIRTY, &bad) < 0 || bad != 0) {
        fprintf(stderr, "index: check: %" PRId64 " dirty block rows not cached\n", bad);
        r = -EIO;
    }
    if (query_i64(idx, S_CHECK_ORPHANS, &bad) < 0 || bad != 0) {
        fprintf(stderr, "index: check: %" PRId64 " file rows without a parent\n", bad);
        r = -EIO;
    }
    if (query_i64(idx, S_CHECK_ALIASES, &bad) < 0 || bad != 0) {
        fprintf(stderr, "index: check: %" PRId64 " hard link rows without their file\n", bad);
        r = -EIO;
    }
    if (query_i64(idx, S_CHECK_JOURNAL, &bad) < 0 || bad != 0) {
        fprintf(stderr, "index: check: %" PRId64 " journal rows of unknown kind\n", bad);
        r = -EIO;
    }
    if (get_locked(idx, IDX_ROOT_ID, &root) < 0 || !S_ISDIR(root.mode) || root.parent != 0) {
        fprintf(stderr, "index: check: the root row is missing or not a directory\n");
        r = -EIO;
    }
    if (query_i64(idx, S_CACHED_SUM, &sum) < 0 || (uint64_t)sum != idx->cached) {
        fprintf(stderr, "index: check: cached total is %" PRIu64 ", blocks sum to %" PRId64 "\n",
                idx->cached, sum);
        r = -EIO;
    }
    if (query_i64(idx, S_DIRTY_SUM, &sum) < 0 || (uint64_t)sum != idx->dirty) {
        fprintf(stderr, "index: check: dirty total is %" PRIu64 ", blocks sum to %" PRId64 "\n",
                idx->dirty, sum);
        r = -EIO;
    }
out:
    pthread_mutex_unlock(&idx->lock);
    return r < 0 ? -EIO : 0;
}
