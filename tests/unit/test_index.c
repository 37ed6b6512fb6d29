/* test_index.c - unit tests of the SQLite block index (index/index.h). */
#include "index.h"

#include <check.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TIMEOUT_S 120

static char root_dir[1024]; /* made by main, removed with everything in it at the end */
static char dir[1100];      /* one per test, under root_dir */
static char db_path[1200];
static idx_t *idx;

/* Fixture: a fresh directory and an index opened in it. */
static void setup(void)
{
    snprintf(dir, sizeof(dir), "%s/t.XXXXXX", root_dir);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(db_path, sizeof(db_path), "%s/index.db", dir);
    ck_assert_int_eq(idx_open(db_path, &idx), 0);
    ck_assert_ptr_nonnull(idx);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tree(const char *path)
{
    nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void teardown(void)
{
    idx_close(idx);
    idx = NULL;
    remove_tree(dir);
}

static void reopen(void)
{
    idx_close(idx);
    idx = NULL;
    ck_assert_int_eq(idx_open(db_path, &idx), 0);
}

/* Run SQL on the database at 'path' through a raw connection (sees committed state only). */
static void raw_exec_at(const char *path, const char *sql)
{
    sqlite3 *db;
    char *err = NULL;

    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        ck_abort_msg("raw sql '%s' failed: %s", sql, err);
    sqlite3_close(db);
}

static void raw_exec(const char *sql)
{
    raw_exec_at(db_path, sql);
}

/* One integer from a raw connection to the database at 'path'. */
static long long raw_query_at(const char *path, const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    long long v = -1;

    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static long long raw_query(const char *sql)
{
    return raw_query_at(db_path, sql);
}

static struct idx_file mkfile(int64_t parent, const char *name, uint32_t mode, uint64_t size)
{
    struct idx_file f;

    memset(&f, 0, sizeof(f));
    f.parent = parent;
    snprintf(f.name, sizeof(f.name), "%s", name);
    f.dev = 7;
    f.ino = 1000 + (uint64_t)strlen(name);
    f.mode = mode;
    f.uid = 1000;
    f.gid = 1000;
    f.nlink = 1;
    f.size = size;
    f.atime_ns = 1;
    f.mtime_ns = 2;
    f.ctime_ns = 3;
    f.attr_time_ns = 100;
    return f;
}

static int64_t put_file(int64_t parent, const char *name, uint64_t size)
{
    struct idx_file f = mkfile(parent, name, S_IFREG | 0644, size);

    ck_assert_int_eq(idx_put(idx, &f), 0);
    return f.id;
}

static int64_t put_dir(int64_t parent, const char *name)
{
    struct idx_file f = mkfile(parent, name, S_IFDIR | 0755, 4096);

    ck_assert_int_eq(idx_put(idx, &f), 0);
    return f.id;
}

static uint64_t version_of(int64_t id)
{
    struct idx_file f;

    ck_assert_int_eq(idx_get(idx, id, &f), 0);
    return f.version;
}

static struct idx_block mkblock(int64_t file, uint64_t version, uint64_t blkno, uint32_t len,
                                bool cached)
{
    struct idx_block b;
    int i;

    memset(&b, 0, sizeof(b));
    b.file = file;
    b.blkno = blkno;
    b.version = version;
    b.len = len;
    b.cached = cached;
    for (i = 0; i < IDX_HASH_LEN; i++)
        b.hash[i] = (uint8_t)(file * 31 + (int64_t)blkno * 7 + i);
    return b;
}

static void put_block(int64_t file, uint64_t blkno, uint32_t len, bool cached)
{
    struct idx_block b = mkblock(file, version_of(file), blkno, len, cached);

    ck_assert_int_eq(idx_block_put(idx, &b), 0);
}

static bool block_cached(int64_t file, uint64_t blkno)
{
    struct idx_block b;

    ck_assert_int_eq(idx_block_get(idx, file, blkno, &b), 0);
    return b.cached;
}

/* A cached block holding local writes. */
static void put_dirty(int64_t file, uint64_t blkno, uint32_t len)
{
    struct idx_block b = mkblock(file, version_of(file), blkno, len, true);

    b.dirty = true;
    ck_assert_int_eq(idx_block_put(idx, &b), 0);
}

static bool block_dirty(int64_t file, uint64_t blkno)
{
    struct idx_block b;

    ck_assert_int_eq(idx_block_get(idx, file, blkno, &b), 0);
    ck_assert(!b.dirty || b.cached);
    return b.dirty;
}

static struct idx_jentry mkj(enum idx_jkind kind, int64_t file, const char *path)
{
    struct idx_jentry e;

    memset(&e, 0, sizeof(e));
    e.kind = kind;
    e.file = file;
    snprintf(e.path, sizeof(e.path), "%s", path);
    return e;
}

/* Append a WRITE of [off, off + len) of 'file' at 'path'; returns the row's seq. */
static int64_t add_write(int64_t file, const char *path, uint64_t off, uint64_t len)
{
    struct idx_jentry e = mkj(IDX_J_WRITE, file, path);

    e.off = off;
    e.len = len;
    ck_assert_int_eq(idx_journal_add(idx, &e), 0);
    ck_assert_int_gt(e.seq, 0);
    return e.seq;
}

static int64_t add_op(enum idx_jkind kind, int64_t file, const char *path)
{
    struct idx_jentry e = mkj(kind, file, path);

    ck_assert_int_eq(idx_journal_add(idx, &e), 0);
    ck_assert_int_gt(e.seq, 0);
    return e.seq;
}

#define MAX_JSEEN 64

/* What idx_journal_scan handed out: the entries' small fields, and the first two whole. */
struct jseen {
    int n;
    int64_t seq[MAX_JSEEN];
    int kind[MAX_JSEEN];
    int64_t file[MAX_JSEEN];
    uint64_t off[MAX_JSEEN], len[MAX_JSEEN];
    struct idx_jentry whole[2];
    int done_each; /* > 0: call idx_journal_done on each row handed out */
};

static int on_jentry(void *arg, const struct idx_jentry *e)
{
    struct jseen *s = arg;

    ck_assert_int_lt(s->n, MAX_JSEEN);
    if (s->n < 2)
        s->whole[s->n] = *e;
    s->seq[s->n] = e->seq;
    s->kind[s->n] = (int)e->kind;
    s->file[s->n] = e->file;
    s->off[s->n] = e->off;
    s->len[s->n++] = e->len;
    if (s->done_each)
        ck_assert_int_eq(idx_journal_done(idx, e->seq), 0);
    return 0;
}

static int journal_rows(void)
{
    return (int)raw_query("SELECT COUNT(*) FROM journal");
}

#define MAX_SEEN 1024

struct seen {
    int n;
    int64_t id[MAX_SEEN];
    uint64_t version[MAX_SEEN];
    uint64_t blkno[MAX_SEEN];
};

static void on_gone(void *arg, int64_t id, uint64_t version)
{
    struct seen *s = arg;

    ck_assert_int_lt(s->n, MAX_SEEN);
    s->id[s->n] = id;
    s->version[s->n++] = version;
}

static bool seen_has(const struct seen *s, int64_t id)
{
    int i;

    for (i = 0; i < s->n; i++)
        if (s->id[i] == id)
            return true;
    return false;
}

static int on_child(void *arg, const struct idx_file *f)
{
    struct seen *s = arg;

    ck_assert_int_lt(s->n, MAX_SEEN);
    s->id[s->n++] = f->id;
    return 0;
}

static int on_block(void *arg, const struct idx_block *b)
{
    struct seen *s = arg;

    ck_assert_int_lt(s->n, MAX_SEEN);
    s->id[s->n] = b->file;
    s->blkno[s->n++] = b->blkno;
    return 0;
}

static void on_evicted(void *arg, const struct idx_block *b)
{
    struct seen *s = arg;

    ck_assert_int_lt(s->n, MAX_SEEN);
    ck_assert(!b->cached);
    s->id[s->n] = b->file;
    s->blkno[s->n++] = b->blkno;
}

/* ---- opening and schema ---- */

START_TEST(test_open_creates_root_dir)
{
    struct idx_file f;

    ck_assert_int_eq(idx_get(idx, IDX_ROOT_ID, &f), 0);
    ck_assert_int_eq(f.id, IDX_ROOT_ID);
    ck_assert_int_eq(f.parent, 0);
    ck_assert_str_eq(f.name, "");
    ck_assert_uint_eq(f.mode, S_IFDIR | 0755);
    ck_assert_uint_gt(f.version, 0);
    ck_assert_int_eq(idx_lookup(idx, 0, "", &f), 0);
    ck_assert_int_eq(f.id, IDX_ROOT_ID);
}
END_TEST

START_TEST(test_open_missing_directory_is_enoent)
{
    char path[PATH_MAX];
    idx_t *other = (idx_t *)&other; /* not NULL: idx_open must clear it on failure */

    snprintf(path, sizeof(path), "%s/no/such/dir/index.db", dir);
    ck_assert_int_eq(idx_open(path, &other), -ENOENT);
    ck_assert_ptr_null(other);
}
END_TEST

START_TEST(test_open_garbage_file_refused)
{
    char path[PATH_MAX], junk[8192];
    idx_t *other = (idx_t *)&other; /* not NULL: idx_open must clear it on failure */
    FILE *fp;

    snprintf(path, sizeof(path), "%s/garbage.db", dir);
    memset(junk, 'x', sizeof(junk));
    ck_assert_ptr_nonnull(fp = fopen(path, "w"));
    ck_assert_uint_eq(fwrite(junk, 1, sizeof(junk), fp), sizeof(junk));
    fclose(fp);
    ck_assert_int_eq(idx_open(path, &other), -EIO);
    ck_assert_ptr_null(other);
}
END_TEST

START_TEST(test_open_enables_wal)
{
    sqlite3 *db;
    sqlite3_stmt *st;

    ck_assert_int_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_ROW);
    ck_assert_str_eq((const char *)sqlite3_column_text(st, 0), "wal");
    sqlite3_finalize(st);
    sqlite3_close(db);
}
END_TEST

START_TEST(test_schema_version_is_current)
{
    ck_assert_int_eq(IDX_SCHEMA_VERSION, 3);
    ck_assert_int_eq(idx_schema_version(idx), IDX_SCHEMA_VERSION);
    reopen();
    ck_assert_int_eq(idx_schema_version(idx), IDX_SCHEMA_VERSION);
}
END_TEST

START_TEST(test_schema_newer_refused)
{
    char sql[128];
    idx_t *other = (idx_t *)&other; /* not NULL: idx_open must clear it on failure */

    idx_close(idx);
    idx = NULL;
    snprintf(sql, sizeof(sql), "UPDATE meta SET value = '%d' WHERE key = 'schema_version'",
             IDX_SCHEMA_VERSION + 1);
    raw_exec(sql);
    ck_assert_int_eq(idx_open(db_path, &other), -EPROTO);
    ck_assert_ptr_null(other);
}
END_TEST

START_TEST(test_schema_garbage_version_refused)
{
    idx_t *other = (idx_t *)&other; /* not NULL: idx_open must clear it on failure */

    idx_close(idx);
    idx = NULL;
    raw_exec("UPDATE meta SET value = '1x' WHERE key = 'schema_version'");
    ck_assert_int_eq(idx_open(db_path, &other), -EIO);
    ck_assert_ptr_null(other);
}
END_TEST

/* The schema of version 1 as it was shipped, frozen here: migrations must bring such a database
 * up to date in place. */
static const char v1_schema[] =
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);"
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
    "INSERT INTO meta (key, value) VALUES ('next_version', '3');"
    "INSERT INTO meta (key, value) VALUES ('schema_version', '1');"
    "INSERT INTO files (id, parent, name, mode, nlink, version) VALUES (1, 0, '', 16877, 2, 1);"
    "INSERT INTO files (id, parent, name, ino, mode, size, mtime_ns, version) "
    " VALUES (2, 1, 'a.c', 77, 33188, 3000, 5, 2);"
    "INSERT INTO blocks (file, blkno, version, len, hash, cached, last_used) VALUES "
    " (2, 0, 2, 1000, zeroblob(16), 1, 1), (2, 1, 2, 2000, zeroblob(16), 0, 2);";

static void make_v1_database(char *path, size_t size)
{
    snprintf(path, size, "%s/v1.db", dir);
    raw_exec_at(path, v1_schema);
    ck_assert_int_eq(raw_query_at(path, "SELECT value FROM meta WHERE key = 'schema_version'"), 1);
}

START_TEST(test_migrate_v1_database_in_place)
{
    char path[PATH_MAX];
    struct idx_jentry e = mkj(IDX_J_CREATE, 2, "a.c");
    struct idx_file f;
    struct idx_block b;
    idx_t *v1;

    make_v1_database(path, sizeof(path));
    ck_assert_int_eq(idx_open(path, &v1), 0);
    ck_assert_int_eq(idx_schema_version(v1), IDX_SCHEMA_VERSION);
    ck_assert_int_eq(raw_query_at(path, "SELECT COUNT(*) FROM pragma_table_info('blocks') "
                                        "WHERE name = 'dirty' AND dflt_value = '0'"),
                     1);
    ck_assert_int_eq(raw_query_at(path, "SELECT COUNT(*) FROM sqlite_master "
                                        "WHERE type = 'table' AND name = 'journal'"),
                     1);
    /* the data is kept */
    ck_assert_int_eq(idx_lookup(v1, IDX_ROOT_ID, "a.c", &f), 0);
    ck_assert_int_eq(f.id, 2);
    ck_assert_uint_eq(f.version, 2);
    ck_assert_uint_eq(f.size, 3000);
    ck_assert_int_eq(idx_block_get(v1, 2, 0, &b), 0);
    ck_assert(b.cached && !b.dirty);
    ck_assert_uint_eq(b.len, 1000);
    ck_assert_int_eq(idx_block_get(v1, 2, 1, &b), 0);
    ck_assert(!b.cached && !b.dirty);
    ck_assert_uint_eq(idx_cached_bytes(v1), 1000);
    ck_assert_uint_eq(idx_dirty_bytes(v1), 0);
    /* and the new parts work */
    ck_assert_int_eq(idx_journal_last_seq(v1), 0);
    ck_assert_int_eq(idx_journal_add(v1, &e), 0);
    ck_assert_int_eq(e.seq, 1);
    f.size = 1;
    ck_assert_int_eq(idx_put(v1, &f), 1);
    ck_assert_uint_eq(f.version, 3); /* next_version carried over */
    ck_assert_int_eq(idx_check(v1), 0);
    idx_close(v1);
    ck_assert_int_eq(idx_open(path, &v1), 0);
    ck_assert_int_eq(idx_schema_version(v1), IDX_SCHEMA_VERSION);
    ck_assert_int_eq(idx_journal_last_seq(v1), 1);
    idx_close(v1);
}
END_TEST

/* A migration that fails (here: a table in the way) leaves the database as it was, at v1. */
START_TEST(test_migrate_failure_leaves_v1_intact)
{
    char path[PATH_MAX];
    idx_t *v1 = (idx_t *)&v1; /* not NULL: idx_open must clear it on failure */

    make_v1_database(path, sizeof(path));
    raw_exec_at(path, "CREATE TABLE journal (x INTEGER)");
    ck_assert_int_eq(idx_open(path, &v1), -EIO);
    ck_assert_ptr_null(v1);
    ck_assert_int_eq(raw_query_at(path, "SELECT value FROM meta WHERE key = 'schema_version'"), 1);
    ck_assert_int_eq(raw_query_at(path, "SELECT COUNT(*) FROM pragma_table_info('blocks') "
                                        "WHERE name = 'dirty'"),
                     0);
    ck_assert_int_eq(raw_query_at(path, "SELECT COUNT(*) FROM blocks"), 2);
}
END_TEST

START_TEST(test_reopen_keeps_rows_and_cached_total)
{
    struct idx_file f;
    struct idx_block b;
    int64_t d, a;
    uint64_t va;

    d = put_dir(IDX_ROOT_ID, "src");
    a = put_file(d, "a.c", 3000);
    va = version_of(a);
    put_block(a, 0, 1000, true);
    put_block(a, 1, 1000, true);
    put_block(a, 2, 1000, false);
    ck_assert_uint_eq(idx_cached_bytes(idx), 2000);
    reopen();
    ck_assert_uint_eq(idx_cached_bytes(idx), 2000);
    ck_assert_int_eq(idx_lookup(idx, d, "a.c", &f), 0);
    ck_assert_int_eq(f.id, a);
    ck_assert_uint_eq(f.version, va);
    ck_assert_uint_eq(f.size, 3000);
    ck_assert_int_eq(idx_block_get(idx, a, 2, &b), 0);
    ck_assert(!b.cached);
    ck_assert_uint_eq(b.len, 1000);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* ---- batches ---- */

START_TEST(test_begin_commit_nest)
{
    struct idx_file f;

    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_begin(idx), 0);
    put_file(IDX_ROOT_ID, "a", 1);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files WHERE name = 'a'"), 0);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files WHERE name = 'a'"), 1);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "a", &f), 0);
}
END_TEST

START_TEST(test_rollback_discards)
{
    struct idx_file f;
    int64_t a, b;

    a = put_file(IDX_ROOT_ID, "kept", 100);
    put_block(a, 0, 100, true);
    ck_assert_int_eq(idx_begin(idx), 0);
    b = put_file(IDX_ROOT_ID, "dropped", 50);
    put_block(b, 0, 50, true);
    ck_assert_int_eq(idx_block_uncache(idx, a, 0), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 50);
    ck_assert_int_eq(idx_rollback(idx), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "dropped", &f), -ENOENT);
    ck_assert(block_cached(a, 0));
    ck_assert_uint_eq(idx_cached_bytes(idx), 100);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_rollback_nested_abandons_whole_batch)
{
    struct idx_file f;

    ck_assert_int_eq(idx_begin(idx), 0);
    put_file(IDX_ROOT_ID, "outer", 1);
    ck_assert_int_eq(idx_begin(idx), 0);
    put_file(IDX_ROOT_ID, "inner", 1);
    ck_assert_int_eq(idx_rollback(idx), 0);
    ck_assert_int_eq(idx_commit(idx), -EINVAL);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "outer", &f), -ENOENT);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "inner", &f), -ENOENT);
}
END_TEST

START_TEST(test_commit_without_begin_refused)
{
    ck_assert_int_eq(idx_commit(idx), -EINVAL);
    ck_assert_int_eq(idx_rollback(idx), -EINVAL);
    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(idx_commit(idx), -EINVAL);
}
END_TEST

START_TEST(test_failed_write_inside_batch_keeps_batch)
{
    struct idx_file f = mkfile(12345, "orphan", S_IFREG | 0644, 1);
    struct idx_block b;

    ck_assert_int_eq(idx_begin(idx), 0);
    put_file(IDX_ROOT_ID, "before", 1);
    ck_assert_int_eq(idx_put(idx, &f), -ENOENT);
    b = mkblock(IDX_ROOT_ID, version_of(IDX_ROOT_ID) + 1, 0, 10, true);
    ck_assert_int_eq(idx_block_put(idx, &b), -ESTALE);
    put_file(IDX_ROOT_ID, "after", 1);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files WHERE name IN ('before', 'after')"), 2);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* A delete that fails half-way (a trigger refuses the second file's blocks) leaves nothing
 * half-done: outside a batch (_i == 0) and inside one (_i == 1), whose other writes survive. */
START_TEST(test_failed_delete_is_undone_whole)
{
    struct seen s = {0};
    struct idx_file got;
    int64_t d, a, b;

    d = put_dir(IDX_ROOT_ID, "d");
    a = put_file(d, "a", 10);
    b = put_file(d, "b", 666);
    put_block(a, 0, 10, true);
    put_block(b, 0, 666, true);
    raw_exec("CREATE TRIGGER fail BEFORE DELETE ON blocks WHEN old.len = 666 "
             "BEGIN SELECT RAISE(ABORT, 'injected failure'); END");
    if (_i == 1) {
        ck_assert_int_eq(idx_begin(idx), 0);
        put_file(IDX_ROOT_ID, "before", 1);
    }
    ck_assert_int_eq(idx_delete(idx, d, on_gone, &s), -EIO);
    if (_i == 1) {
        put_file(IDX_ROOT_ID, "after", 1);
        ck_assert_int_eq(idx_commit(idx), 0);
        ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "before", &got), 0);
        ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "after", &got), 0);
    }
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_get(idx, d, &got), 0);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert(block_cached(a, 0) && block_cached(b, 0));
    ck_assert_uint_eq(idx_cached_bytes(idx), 676);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

#define CRASH_ROWS 5000

/* The child writes a big batch and dies before committing it: by SIGKILL (_i == 0) or by
 * _exit (_i == 1). */
START_TEST(test_crash_mid_batch_reopens_consistent)
{
    struct idx_file f;
    int64_t kept;
    pid_t pid;
    int status, i;

    kept = put_file(IDX_ROOT_ID, "kept", 4096);
    put_block(kept, 0, 4096, true);
    idx_close(idx);
    idx = NULL;

    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        idx_t *c;
        char name[32];

        if (idx_open(db_path, &c) != 0 || idx_begin(c) != 0)
            _exit(2);
        for (i = 0; i < CRASH_ROWS; i++) {
            struct idx_file g;
            struct idx_block b;

            snprintf(name, sizeof(name), "lost%d", i);
            g = mkfile(IDX_ROOT_ID, name, S_IFREG | 0644, 4096);
            if (idx_put(c, &g) != 0)
                _exit(3);
            b = mkblock(g.id, g.version, 0, 4096, true);
            if (idx_block_put(c, &b) != 0 || idx_block_uncache(c, kept, 0) != 0)
                _exit(4);
        }
        if (_i == 0)
            kill(getpid(), SIGKILL);
        _exit(0);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    if (_i == 0) {
        ck_assert(WIFSIGNALED(status));
        ck_assert_int_eq(WTERMSIG(status), SIGKILL);
    } else {
        ck_assert(WIFEXITED(status));
        ck_assert_int_eq(WEXITSTATUS(status), 0);
    }

    ck_assert_int_eq(idx_open(db_path, &idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "kept", &f), 0);
    ck_assert(block_cached(kept, 0));
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "lost0", &f), -ENOENT);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "lost4999", &f), -ENOENT);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 2);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM blocks"), 1);
    ck_assert_uint_eq(idx_cached_bytes(idx), 4096);
    put_file(IDX_ROOT_ID, "next", 1);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* ---- meta ---- */

START_TEST(test_meta_roundtrip)
{
    char val[64];

    ck_assert_int_eq(idx_meta_set(idx, "remote", "user@host:/src"), 0);
    ck_assert_int_eq(idx_meta_get(idx, "remote", val, sizeof(val)), 0);
    ck_assert_str_eq(val, "user@host:/src");
    ck_assert_int_eq(idx_meta_set(idx, "remote", "other"), 0);
    reopen();
    ck_assert_int_eq(idx_meta_get(idx, "remote", val, sizeof(val)), 0);
    ck_assert_str_eq(val, "other");
}
END_TEST

START_TEST(test_meta_missing_is_enoent)
{
    char val[16] = "untouched";

    ck_assert_int_eq(idx_meta_get(idx, "nothing", val, sizeof(val)), -ENOENT);
    ck_assert_str_eq(val, "untouched");
}
END_TEST

START_TEST(test_meta_small_buffer_is_erange)
{
    char val[5];

    ck_assert_int_eq(idx_meta_set(idx, "k", "12345"), 0);
    ck_assert_int_eq(idx_meta_get(idx, "k", val, sizeof(val)), -ERANGE);
    ck_assert_str_eq(val, "1234");
    ck_assert_int_eq(idx_meta_set(idx, "k", "1234"), 0);
    ck_assert_int_eq(idx_meta_get(idx, "k", val, sizeof(val)), 0);
    ck_assert_str_eq(val, "1234");
}
END_TEST

START_TEST(test_meta_reserved_key_refused)
{
    char val[16];

    ck_assert_int_eq(idx_meta_set(idx, "schema_version", "99"), -EINVAL);
    ck_assert_int_eq(idx_meta_set(idx, "next_version", "1"), -EINVAL);
    ck_assert_int_eq(idx_meta_set(idx, "", "x"), -EINVAL);
    ck_assert_int_eq(idx_meta_get(idx, "schema_version", val, sizeof(val)), 0);
    ck_assert_int_eq(atoi(val), IDX_SCHEMA_VERSION);
}
END_TEST

/* ---- rows ---- */

START_TEST(test_put_new_row_gets_fresh_version)
{
    struct idx_file a = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 10);
    struct idx_file b = mkfile(IDX_ROOT_ID, "b", S_IFREG | 0644, 10);
    struct idx_file got;

    a.version = 777;
    ck_assert_int_eq(idx_put(idx, &a), 0);
    ck_assert_int_eq(idx_put(idx, &b), 0);
    ck_assert_int_gt(a.id, IDX_ROOT_ID);
    ck_assert_int_ne(a.id, b.id);
    ck_assert_uint_ne(a.version, 777);
    ck_assert_uint_gt(a.version, version_of(IDX_ROOT_ID));
    ck_assert_uint_gt(b.version, a.version);
    ck_assert_int_eq(idx_get(idx, a.id, &got), 0);
    ck_assert_uint_eq(got.version, a.version);
    ck_assert_str_eq(got.name, "a");
    ck_assert_uint_eq(got.size, 10);
    ck_assert_uint_eq(got.uid, 1000);
    ck_assert_int_eq(got.mtime_ns, 2);
    ck_assert_int_eq(got.attr_time_ns, 100);
}
END_TEST

START_TEST(test_put_versions_are_never_reused)
{
    uint64_t v1, v2, v3;
    int64_t a;

    a = put_file(IDX_ROOT_ID, "a", 1);
    v1 = version_of(a);
    ck_assert_int_eq(idx_delete(idx, a, NULL, NULL), 0);
    a = put_file(IDX_ROOT_ID, "a", 1);
    v2 = version_of(a);
    ck_assert_uint_gt(v2, v1);
    ck_assert_int_eq(idx_delete(idx, a, NULL, NULL), 0);
    reopen();
    a = put_file(IDX_ROOT_ID, "a", 1);
    v3 = version_of(a);
    ck_assert_uint_gt(v3, v2);
}
END_TEST

START_TEST(test_put_same_identity_keeps_version)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100);
    struct idx_file got;
    int64_t id;
    uint64_t v;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    id = f.id;
    v = f.version;
    put_block(id, 0, 100, true);
    f.mode = S_IFREG | 0600;
    f.uid = 0;
    f.nlink = 2;
    f.atime_ns = 50;
    f.ctime_ns = 60;
    f.attr_time_ns = 200;
    f.id = 0;
    f.version = 0;
    ck_assert_int_eq(idx_put(idx, &f), 0);
    ck_assert_int_eq(f.id, id);
    ck_assert_uint_eq(f.version, v);
    ck_assert_int_eq(idx_get(idx, id, &got), 0);
    ck_assert_uint_eq(got.mode, S_IFREG | 0600);
    ck_assert_uint_eq(got.uid, 0);
    ck_assert_int_eq(got.ctime_ns, 60);
    ck_assert_int_eq(got.attr_time_ns, 200);
    ck_assert(block_cached(id, 0));
    ck_assert_uint_eq(idx_cached_bytes(idx), 100);
}
END_TEST

START_TEST(test_put_changed_size_bumps_version_and_drops_blocks)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100);
    struct idx_block b;
    uint64_t v;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    v = f.version;
    put_block(f.id, 0, 60, true);
    put_block(f.id, 1, 40, false);
    f.size = 101;
    ck_assert_int_eq(idx_put(idx, &f), 1);
    ck_assert_uint_gt(f.version, v);
    ck_assert_uint_eq(version_of(f.id), f.version);
    ck_assert_int_eq(idx_block_get(idx, f.id, 0, &b), -ENOENT);
    ck_assert_int_eq(idx_block_get(idx, f.id, 1, &b), -ENOENT);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* Each part of the content identity but size: mtime (0), ino (1), type (2). */
START_TEST(test_put_changed_identity_field_bumps_version)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100);
    uint64_t v;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    v = f.version;
    put_block(f.id, 0, 100, true);
    if (_i == 0)
        f.mtime_ns++;
    else if (_i == 1)
        f.ino++;
    else
        f.mode = S_IFLNK | 0777;
    ck_assert_int_eq(idx_put(idx, &f), 1);
    ck_assert_uint_gt(f.version, v);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
}
END_TEST

START_TEST(test_put_keeps_list_time_when_zero)
{
    struct idx_file d = mkfile(IDX_ROOT_ID, "d", S_IFDIR | 0755, 4096);
    struct idx_file got;

    ck_assert_int_eq(idx_put(idx, &d), 0);
    ck_assert_int_eq(idx_set_listed(idx, d.id, 555), 0);
    d.list_time_ns = 0;
    ck_assert_int_eq(idx_put(idx, &d), 0);
    ck_assert_int_eq(idx_get(idx, d.id, &got), 0);
    ck_assert_int_eq(got.list_time_ns, 555);
    d.list_time_ns = 777;
    ck_assert_int_eq(idx_put(idx, &d), 0);
    ck_assert_int_eq(idx_get(idx, d.id, &got), 0);
    ck_assert_int_eq(got.list_time_ns, 777);
}
END_TEST

START_TEST(test_put_dir_to_file_drops_children)
{
    struct idx_file d = mkfile(IDX_ROOT_ID, "d", S_IFDIR | 0755, 4096);
    struct idx_file got;
    int64_t sub, leaf;

    ck_assert_int_eq(idx_put(idx, &d), 0);
    sub = put_dir(d.id, "sub");
    leaf = put_file(sub, "leaf", 10);
    put_block(leaf, 0, 10, true);
    d.mode = S_IFREG | 0644;
    ck_assert_int_eq(idx_put(idx, &d), 1);
    ck_assert_int_eq(idx_get(idx, sub, &got), -ENOENT);
    ck_assert_int_eq(idx_get(idx, leaf, &got), -ENOENT);
    ck_assert_int_eq(idx_get(idx, d.id, &got), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_put_missing_parent_is_enoent)
{
    struct idx_file f = mkfile(999, "a", S_IFREG | 0644, 1);

    ck_assert_int_eq(idx_put(idx, &f), -ENOENT);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 1);
}
END_TEST

START_TEST(test_put_under_file_is_enotdir)
{
    struct idx_file f = mkfile(put_file(IDX_ROOT_ID, "file", 1), "a", S_IFREG | 0644, 1);

    ck_assert_int_eq(idx_put(idx, &f), -ENOTDIR);
}
END_TEST

START_TEST(test_put_root_updates_row_one)
{
    struct idx_file r = mkfile(0, "", S_IFDIR | 0700, 4096);
    struct idx_file got;

    r.uid = 4242;
    ck_assert_int_eq(idx_put(idx, &r), 1); /* ino and mtime differ from the fresh root */
    ck_assert_int_eq(r.id, IDX_ROOT_ID);
    ck_assert_int_eq(idx_get(idx, IDX_ROOT_ID, &got), 0);
    ck_assert_uint_eq(got.uid, 4242);
    ck_assert_uint_eq(got.mode, S_IFDIR | 0700);
    ck_assert_int_eq(idx_put(idx, &r), 0);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 1);
}
END_TEST

START_TEST(test_put_root_as_file_refused)
{
    struct idx_file r = mkfile(0, "", S_IFREG | 0644, 1), got;

    ck_assert_int_eq(idx_put(idx, &r), -EINVAL);
    ck_assert_int_eq(idx_get(idx, IDX_ROOT_ID, &got), 0);
    ck_assert_uint_eq(got.mode, S_IFDIR | 0755);
}
END_TEST

START_TEST(test_put_bad_mode_type_refused)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", 0644, 1);

    ck_assert_int_eq(idx_put(idx, &f), -EINVAL);
    f.mode = 0170644; /* S_IFMT with every bit set is no type */
    ck_assert_int_eq(idx_put(idx, &f), -EINVAL);
}
END_TEST

START_TEST(test_name_max_length_accepted)
{
    char name[IDX_NAME_MAX + 1];
    struct idx_file f = mkfile(IDX_ROOT_ID, "", S_IFREG | 0644, 1), got;

    memset(name, 'n', IDX_NAME_MAX);
    name[IDX_NAME_MAX] = '\0';
    memcpy(f.name, name, sizeof(name));
    ck_assert_int_eq(idx_put(idx, &f), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, name, &got), 0);
    ck_assert_str_eq(got.name, name);
}
END_TEST

START_TEST(test_name_too_long_refused)
{
    char name[IDX_NAME_MAX + 2];
    struct idx_file f = mkfile(IDX_ROOT_ID, "", S_IFREG | 0644, 1), got;

    memset(f.name, 'n', sizeof(f.name)); /* no NUL at all */
    ck_assert_int_eq(idx_put(idx, &f), -ENAMETOOLONG);
    memset(name, 'n', IDX_NAME_MAX + 1);
    name[IDX_NAME_MAX + 1] = '\0';
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, name, &got), -ENAMETOOLONG);
}
END_TEST

START_TEST(test_name_with_slash_refused)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a/b", S_IFREG | 0644, 1), got;

    ck_assert_int_eq(idx_put(idx, &f), -EINVAL);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "a/b", &got), -EINVAL);
}
END_TEST

static const char *const bad_names[] = {"", ".", ".."};

START_TEST(test_name_empty_or_dot_refused)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, bad_names[_i], S_IFREG | 0644, 1), got;

    ck_assert_int_eq(idx_put(idx, &f), -EINVAL);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, bad_names[_i], &got), -EINVAL);
    f.parent = 0; /* under the root's parent only the root's own "" is valid */
    if (_i > 0)
        ck_assert_int_eq(idx_put(idx, &f), -EINVAL);
}
END_TEST

START_TEST(test_lookup_finds_row)
{
    struct idx_file got;
    int64_t d, a;

    d = put_dir(IDX_ROOT_ID, "d");
    a = put_file(d, "a", 5);
    put_file(IDX_ROOT_ID, "a", 6);
    ck_assert_int_eq(idx_lookup(idx, d, "a", &got), 0);
    ck_assert_int_eq(got.id, a);
    ck_assert_int_eq(got.parent, d);
    ck_assert_uint_eq(got.size, 5);
}
END_TEST

START_TEST(test_lookup_missing_is_enoent)
{
    struct idx_file got;

    put_file(IDX_ROOT_ID, "a", 5);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "b", &got), -ENOENT);
    ck_assert_int_eq(idx_lookup(idx, 4242, "a", &got), -ENOENT);
}
END_TEST

START_TEST(test_get_missing_is_enoent)
{
    struct idx_file got;

    ck_assert_int_eq(idx_get(idx, 4242, &got), -ENOENT);
    ck_assert_int_eq(idx_get(idx, 0, &got), -ENOENT);
}
END_TEST

START_TEST(test_touch_attr_sets_time)
{
    struct idx_file got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 5);
    uint64_t v = version_of(a);

    ck_assert_int_eq(idx_touch_attr(idx, a, 999), 0);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_int_eq(got.attr_time_ns, 999);
    ck_assert_uint_eq(got.version, v);
}
END_TEST

START_TEST(test_touch_attr_missing_is_enoent)
{
    ck_assert_int_eq(idx_touch_attr(idx, 4242, 999), -ENOENT);
    ck_assert_int_eq(idx_set_listed(idx, 4242, 999), -ENOENT);
}
END_TEST

START_TEST(test_set_listed_sets_time)
{
    struct idx_file got;

    ck_assert_int_eq(idx_set_listed(idx, IDX_ROOT_ID, 31337), 0);
    ck_assert_int_eq(idx_get(idx, IDX_ROOT_ID, &got), 0);
    ck_assert_int_eq(got.list_time_ns, 31337);
}
END_TEST

START_TEST(test_set_listed_all_marks_folders_only)
{
    struct idx_file got;
    int64_t d = put_dir(IDX_ROOT_ID, "d"), sub = put_dir(d, "sub"), f = put_file(d, "f", 3);

    ck_assert_int_eq(idx_set_listed_all(idx, 4242), 0);
    ck_assert_int_eq(idx_get(idx, IDX_ROOT_ID, &got), 0);
    ck_assert_int_eq(got.list_time_ns, 4242);
    ck_assert_int_eq(idx_get(idx, d, &got), 0);
    ck_assert_int_eq(got.list_time_ns, 4242);
    ck_assert_int_eq(idx_get(idx, sub, &got), 0);
    ck_assert_int_eq(got.list_time_ns, 4242);
    ck_assert_int_eq(idx_get(idx, f, &got), 0);
    ck_assert_int_eq(got.list_time_ns, 0);
}
END_TEST

START_TEST(test_dir_changed_moves_times_and_link_count)
{
    struct idx_file got, before = mkfile(IDX_ROOT_ID, "d", S_IFDIR | 0755, 4096);

    before.nlink = 2; /* "." and its name in the parent */
    ck_assert_int_eq(idx_put(idx, &before), 0);
    int64_t d = before.id, f = put_file(d, "f", 3);
    ck_assert_int_eq(idx_get(idx, d, &before), 0);
    ck_assert_int_eq(idx_dir_changed(idx, d, 1000, 1), 0);
    ck_assert_int_eq(idx_get(idx, d, &got), 0);
    ck_assert_int_eq(got.mtime_ns, 1000);
    ck_assert_int_eq(got.ctime_ns, 1000);
    ck_assert_uint_eq(got.nlink, before.nlink + 1);
    ck_assert_uint_eq(got.version, before.version); /* a local change: same version */
    ck_assert_int_eq(idx_dir_changed(idx, d, 2000, -1), 0);
    ck_assert_int_eq(idx_dir_changed(idx, d, 3000, 0), 0);
    ck_assert_int_eq(idx_get(idx, d, &got), 0);
    ck_assert_uint_eq(got.nlink, before.nlink);
    ck_assert_int_eq(got.mtime_ns, 3000);
    /* never below the two links every folder has */
    ck_assert_int_eq(idx_dir_changed(idx, d, 4000, -1), 0);
    ck_assert_int_eq(idx_get(idx, d, &got), 0);
    ck_assert_uint_eq(got.nlink, 2);
    /* a file, or no row: nothing to change */
    ck_assert_int_eq(idx_dir_changed(idx, f, 5000, 1), -ENOENT);
    ck_assert_int_eq(idx_get(idx, f, &got), 0);
    ck_assert_int_ne(got.mtime_ns, 5000);
    ck_assert_int_eq(idx_dir_changed(idx, 987654, 5000, 1), -ENOENT);
}
END_TEST

START_TEST(test_file_written_sets_size_and_times_only)
{
    struct idx_file got, before;
    int64_t d = put_dir(IDX_ROOT_ID, "d"), f = put_file(d, "f", 3);

    ck_assert_int_eq(idx_get(idx, f, &before), 0);
    ck_assert_int_eq(idx_file_written(idx, f, 123456, 7777), 0);
    ck_assert_int_eq(idx_get(idx, f, &got), 0);
    ck_assert_uint_eq(got.size, 123456);
    ck_assert_int_eq(got.mtime_ns, 7777);
    ck_assert_int_eq(got.ctime_ns, 7777);
    ck_assert_uint_eq(got.version, before.version);
    ck_assert_uint_eq(got.mode, before.mode);
    ck_assert_int_eq(got.atime_ns, before.atime_ns);
    ck_assert_str_eq(got.name, "f");
    ck_assert_int_eq(idx_file_written(idx, d, 1, 1), -ENOENT); /* a folder */
    ck_assert_int_eq(idx_file_written(idx, 987654, 1, 1), -ENOENT);
    ck_assert_int_eq(idx_file_written(idx, f, UINT64_MAX, 1), -EINVAL);
}
END_TEST

/* ---- children ---- */

#define MANY_CHILDREN 200 /* more than one page of the iterator */

START_TEST(test_children_iterate_in_id_order)
{
    struct seen s = {0};
    int64_t d, ids[MANY_CHILDREN];
    char name[16];
    int i;

    d = put_dir(IDX_ROOT_ID, "d");
    for (i = 0; i < MANY_CHILDREN; i++) {
        snprintf(name, sizeof(name), "c%03d", MANY_CHILDREN - i); /* names sort backwards */
        ids[i] = i == 3 ? put_dir(d, name) : put_file(d, name, 1);
    }
    put_file(ids[3], "grandchild", 1);
    put_file(IDX_ROOT_ID, "not-a-child", 1);
    ck_assert_int_eq(idx_children(idx, d, 0, on_child, &s), 0);
    ck_assert_int_eq(s.n, MANY_CHILDREN);
    for (i = 0; i < MANY_CHILDREN; i++)
        ck_assert_int_eq(s.id[i], ids[i]);
}
END_TEST

START_TEST(test_children_iterate_after_cookie)
{
    struct seen s = {0};
    int64_t a, b, c;

    a = put_file(IDX_ROOT_ID, "a", 1);
    b = put_file(IDX_ROOT_ID, "b", 1);
    c = put_file(IDX_ROOT_ID, "c", 1);
    ck_assert_int_eq(idx_children(idx, IDX_ROOT_ID, a, on_child, &s), 0);
    ck_assert_int_eq(s.n, 2);
    ck_assert_int_eq(s.id[0], b);
    ck_assert_int_eq(s.id[1], c);
    s.n = 0;
    ck_assert_int_eq(idx_children(idx, IDX_ROOT_ID, c, on_child, &s), 0);
    ck_assert_int_eq(s.n, 0);
}
END_TEST

static int stop_at_second(void *arg, const struct idx_file *f)
{
    int *calls = arg;

    (void)f;
    return ++*calls == 2 ? 42 : 0;
}

START_TEST(test_children_stop_value_returned)
{
    int calls = 0;

    put_file(IDX_ROOT_ID, "a", 1);
    put_file(IDX_ROOT_ID, "b", 1);
    put_file(IDX_ROOT_ID, "c", 1);
    ck_assert_int_eq(idx_children(idx, IDX_ROOT_ID, 0, stop_at_second, &calls), 42);
    ck_assert_int_eq(calls, 2);
}
END_TEST

static int touch_each(void *arg, const struct idx_file *f)
{
    struct idx_file got;

    (void)arg;
    ck_assert_int_eq(idx_get(idx, f->id, &got), 0);
    ck_assert_int_eq(idx_touch_attr(idx, f->id, 4444), 0);
    return 0;
}

START_TEST(test_children_callback_may_call_index)
{
    struct idx_file got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 1);

    ck_assert_int_eq(idx_children(idx, IDX_ROOT_ID, 0, touch_each, NULL), 0);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_int_eq(got.attr_time_ns, 4444);
}
END_TEST

START_TEST(test_blocks_truncate_drops_from_block_and_keeps_totals)
{
    struct idx_block b;
    int64_t a = put_file(IDX_ROOT_ID, "a", 4 * 65536);

    for (uint64_t i = 0; i < 4; i++)
        put_block(a, i, 65536, true);
    ck_assert_int_eq(idx_blocks_truncate(idx, a, 2), 0);
    ck_assert_int_eq(idx_block_get(idx, a, 1, &b), 0);
    ck_assert_int_eq(idx_block_get(idx, a, 2, &b), -ENOENT);
    ck_assert_int_eq(idx_block_get(idx, a, 3, &b), -ENOENT);
    ck_assert_uint_eq(idx_cached_bytes(idx), 2 * 65536);
    ck_assert_int_eq(idx_blocks_truncate(idx, a, (uint64_t)INT64_MAX + 1), -EINVAL);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_row_ids_never_reused)
{
    struct idx_file got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 1);

    ck_assert_int_eq(idx_delete(idx, a, NULL, NULL), 0);
    int64_t b = put_file(IDX_ROOT_ID, "b", 1);
    ck_assert_msg(b != a, "a deleted row's id %lld was given to a new row", (long long)a);
    ck_assert_int_eq(idx_get(idx, a, &got), -ENOENT);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* ---- resolve ---- */

START_TEST(test_resolve_walks_paths_from_the_root)
{
    struct idx_file got;
    int64_t d = put_dir(IDX_ROOT_ID, "d"), sub = put_dir(d, "sub"), f = put_file(sub, "f", 3);
    char longname[IDX_NAME_MAX + 2];

    ck_assert_int_eq(idx_resolve(idx, "", &got), 0);
    ck_assert_int_eq(got.id, IDX_ROOT_ID);
    ck_assert_int_eq(idx_resolve(idx, "d/sub/f", &got), 0);
    ck_assert_int_eq(got.id, f);
    ck_assert_int_eq(idx_resolve(idx, "d/sub", &got), 0);
    ck_assert_int_eq(got.id, sub);
    ck_assert_int_eq(idx_resolve(idx, "d/missing/f", &got), -ENOENT);
    ck_assert_int_eq(idx_resolve(idx, "d/sub/f/below-a-file", &got), -ENOENT);
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ck_assert_int_eq(idx_resolve(idx, longname, &got), -ENAMETOOLONG);
}
END_TEST

/* idx_path remembers paths: every way a name can change must show in the next answer. */
START_TEST(test_path_follows_renames_deletes_and_rollbacks)
{
    struct seen s = {0};
    char p[IDX_PATH_MAX];
    int64_t d = put_dir(IDX_ROOT_ID, "d"), sub = put_dir(d, "sub"), f = put_file(sub, "f", 3);
    int64_t e = put_dir(IDX_ROOT_ID, "e");

    ck_assert_int_eq(idx_path(idx, IDX_ROOT_ID, p, sizeof(p)), 0);
    ck_assert_str_eq(p, "");
    ck_assert_int_eq(idx_path(idx, sub, p, sizeof(p)), 0);
    ck_assert_str_eq(p, "/d/sub");
    ck_assert_int_eq(idx_path(idx, f, p, sizeof(p)), 0); /* built on the remembered folder */
    ck_assert_str_eq(p, "/d/sub/f");
    ck_assert_int_eq(idx_path(idx, f, p, 8), -ENAMETOOLONG);
    ck_assert_int_eq(idx_path(idx, f, p, 9), 0);

    /* an ancestor moves: both remembered paths follow */
    ck_assert_int_eq(idx_rename(idx, d, e, "moved", on_gone, &s), 0);
    ck_assert_int_eq(idx_path(idx, f, p, sizeof(p)), 0);
    ck_assert_str_eq(p, "/e/moved/sub/f");
    ck_assert_int_eq(idx_path(idx, sub, p, sizeof(p)), 0);
    ck_assert_str_eq(p, "/e/moved/sub");

    /* a move inside a batch that is rolled back: the old path again */
    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_rename(idx, f, e, "g", on_gone, &s), 0);
    ck_assert_int_eq(idx_path(idx, f, p, sizeof(p)), 0);
    ck_assert_str_eq(p, "/e/g");
    ck_assert_int_eq(idx_rollback(idx), 0);
    ck_assert_int_eq(idx_path(idx, f, p, sizeof(p)), 0);
    ck_assert_str_eq(p, "/e/moved/sub/f");

    /* deleted: gone, not remembered */
    ck_assert_int_eq(idx_delete(idx, sub, on_gone, &s), 0);
    ck_assert_int_eq(idx_path(idx, f, p, sizeof(p)), -ENOENT);
    ck_assert_int_eq(idx_path(idx, sub, p, sizeof(p)), -ENOENT);
}
END_TEST

/* ---- rename ---- */

START_TEST(test_rename_moves_subtree_keeping_ids_and_blocks)
{
    struct seen s = {0};
    struct idx_file got;
    int64_t d = put_dir(IDX_ROOT_ID, "d"), e = put_dir(IDX_ROOT_ID, "e");
    int64_t a = put_file(d, "a", 10);

    put_block(a, 0, 10, true);
    ck_assert_int_eq(idx_rename(idx, d, e, "moved", on_gone, &s), 0);
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "d", &got), -ENOENT);
    ck_assert_int_eq(idx_lookup(idx, e, "moved", &got), 0);
    ck_assert_int_eq(got.id, d);
    ck_assert_int_eq(idx_lookup(idx, d, "a", &got), 0);
    ck_assert_int_eq(got.id, a);
    ck_assert_uint_eq(idx_cached_bytes(idx), 10);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_rename_replaces_target_and_calls_gone)
{
    struct seen s = {0};
    struct idx_file got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 10), b = put_file(IDX_ROOT_ID, "b", 20);

    put_block(b, 0, 20, true);
    ck_assert_int_eq(idx_rename(idx, a, IDX_ROOT_ID, "b", on_gone, &s), 0);
    ck_assert_int_eq(s.n, 1);
    ck_assert(seen_has(&s, b));
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "b", &got), 0);
    ck_assert_int_eq(got.id, a);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_rename_refuses_beneath_itself_root_and_bad_names)
{
    struct idx_file got;
    int64_t d = put_dir(IDX_ROOT_ID, "d"), sub = put_dir(d, "sub"), f = put_file(d, "f", 1);

    ck_assert_int_eq(idx_rename(idx, d, sub, "x", NULL, NULL), -EINVAL);
    ck_assert_int_eq(idx_rename(idx, d, d, "x", NULL, NULL), -EINVAL);
    ck_assert_int_eq(idx_rename(idx, IDX_ROOT_ID, d, "x", NULL, NULL), -EINVAL);
    ck_assert_int_eq(idx_rename(idx, sub, f, "x", NULL, NULL), -ENOTDIR);
    ck_assert_int_eq(idx_rename(idx, sub, IDX_ROOT_ID, "a/b", NULL, NULL), -EINVAL);
    ck_assert_int_eq(idx_rename(idx, sub, IDX_ROOT_ID, "..", NULL, NULL), -EINVAL);
    ck_assert_int_eq(idx_rename(idx, 4242, IDX_ROOT_ID, "x", NULL, NULL), -ENOENT);
    ck_assert_int_eq(idx_lookup(idx, d, "sub", &got), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* ---- hard links ---- */

struct names {
    int n;
    char name[8][IDX_NAME_MAX + 1];
    int64_t id[8], row[8];
};

static int collect_names(void *arg, const struct idx_file *f)
{
    struct names *c = arg;
    ck_assert_int_lt(c->n, 8);
    snprintf(c->name[c->n], sizeof(c->name[0]), "%s", f->name);
    c->id[c->n] = f->id;
    c->row[c->n++] = f->row;
    return 0;
}

START_TEST(test_link_names_one_file)
{
    struct idx_file got, out;
    struct names c = {0};
    int64_t d = put_dir(IDX_ROOT_ID, "d");
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);

    put_block(a, 0, 10, true);
    ck_assert_int_eq(idx_link(idx, a, d, "b", 500, &out), 0);
    ck_assert_int_eq(out.id, a);
    ck_assert_uint_eq(out.nlink, 2);
    ck_assert_int_eq(idx_lookup(idx, d, "b", &got), 0);
    ck_assert_int_eq(got.id, a);
    ck_assert_int_ne(got.row, a);
    ck_assert_str_eq(got.name, "b");
    ck_assert_int_eq(got.parent, d);
    ck_assert_uint_eq(got.size, 10);
    ck_assert_uint_eq(got.nlink, 2);
    ck_assert_int_eq(idx_resolve(idx, "d/b", &got), 0);
    ck_assert_int_eq(got.id, a);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_str_eq(got.name, "a");
    ck_assert_int_eq(got.row, a);
    ck_assert_int_eq(idx_children(idx, d, 0, collect_names, &c), 0);
    ck_assert_int_eq(c.n, 1);
    ck_assert_str_eq(c.name[0], "b");
    ck_assert_int_eq(c.id[0], a);
    /* taken names, folders and missing files are refused */
    ck_assert_int_eq(idx_link(idx, a, d, "b", 500, NULL), -EEXIST);
    ck_assert_int_eq(idx_link(idx, d, IDX_ROOT_ID, "d2", 500, NULL), -EPERM);
    ck_assert_int_eq(idx_link(idx, 4242, IDX_ROOT_ID, "x", 500, NULL), -ENOENT);
    ck_assert_int_eq(idx_link(idx, a, a, "x", 500, NULL), -ENOTDIR);
    ck_assert_int_eq(idx_check(idx), 0);
    reopen();
    ck_assert_int_eq(idx_lookup(idx, d, "b", &got), 0);
    ck_assert_int_eq(got.id, a);
    ck_assert_uint_eq(idx_cached_bytes(idx), 10);
}
END_TEST

/* Deleting one name keeps the file under the other; deleting the file's own name moves it to
 * the link's (same id, blocks kept); gone() only for the last name. */
START_TEST(test_link_delete_names)
{
    struct seen s = {0};
    struct idx_file got, b, c;
    int64_t d = put_dir(IDX_ROOT_ID, "d");
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);

    put_block(a, 0, 10, true);
    ck_assert_int_eq(idx_link(idx, a, d, "b", 1, NULL), 0);
    ck_assert_int_eq(idx_link(idx, a, IDX_ROOT_ID, "c", 1, NULL), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "c", &c), 0);
    ck_assert_uint_eq(c.nlink, 3);
    ck_assert_int_eq(idx_delete(idx, c.row, on_gone, &s), 0);
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "c", &got), -ENOENT);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_uint_eq(got.nlink, 2);
    ck_assert_int_eq(idx_delete(idx, a, on_gone, &s), 0); /* the file's own name */
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "a", &got), -ENOENT);
    ck_assert_int_eq(idx_lookup(idx, d, "b", &b), 0);
    ck_assert_int_eq(b.id, a);
    ck_assert_int_eq(b.row, a); /* the file now sits under the link's name */
    ck_assert_uint_eq(b.nlink, 1);
    ck_assert_uint_eq(idx_cached_bytes(idx), 10);
    ck_assert_int_eq(idx_check(idx), 0);
    ck_assert_int_eq(idx_delete(idx, b.row, on_gone, &s), 0);
    ck_assert_int_eq(s.n, 1);
    ck_assert(seen_has(&s, a));
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* A folder deleted with a file in it whose link lives elsewhere: the file moves to the link. */
START_TEST(test_link_survives_subtree_delete)
{
    struct seen s = {0};
    struct idx_file got;
    int64_t d = put_dir(IDX_ROOT_ID, "d");
    int64_t a = put_file(d, "a", 10), x = put_file(d, "x", 1);

    ck_assert_int_eq(idx_link(idx, a, IDX_ROOT_ID, "keep", 1, NULL), 0);
    ck_assert_int_eq(idx_link(idx, a, d, "also", 1, NULL), 0);
    ck_assert_int_eq(idx_delete(idx, d, on_gone, &s), 0);
    ck_assert(seen_has(&s, d) && seen_has(&s, x) && !seen_has(&s, a));
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "keep", &got), 0);
    ck_assert_int_eq(got.id, a);
    ck_assert_int_eq(got.row, a);
    ck_assert_uint_eq(got.nlink, 1);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_link_rename_and_put)
{
    struct seen s = {0};
    struct idx_file got, f;
    int64_t a = put_file(IDX_ROOT_ID, "a", 10), o = put_file(IDX_ROOT_ID, "other", 3);

    ck_assert_int_eq(idx_link(idx, a, IDX_ROOT_ID, "b", 1, NULL), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "b", &got), 0);
    /* rename of one name onto the other: nothing changes */
    ck_assert_int_eq(idx_rename(idx, got.row, IDX_ROOT_ID, "a", on_gone, &s), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "b", &got), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "a", &got), 0);
    /* the link renamed over another file replaces it */
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "b", &got), 0);
    ck_assert_int_eq(idx_rename(idx, got.row, IDX_ROOT_ID, "other", on_gone, &s), 0);
    ck_assert(seen_has(&s, o));
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "other", &got), 0);
    ck_assert_int_eq(got.id, a);
    /* metadata put under the link's name lands on the file; a count of 1 from a source that
     * knows no links does not go below the names */
    f = mkfile(IDX_ROOT_ID, "other", S_IFREG | 0600, 10);
    f.ino = 1001; /* a's identity */
    ck_assert_int_ge(idx_put(idx, &f), 0);
    ck_assert_int_eq(f.id, a);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_uint_eq(got.mode, S_IFREG | 0600);
    ck_assert_uint_eq(got.nlink, 2);
    /* a folder now under the link's name: the link goes, a new row takes the name */
    f = mkfile(IDX_ROOT_ID, "other", S_IFDIR | 0755, 4096);
    ck_assert_int_eq(idx_put(idx, &f), 0);
    ck_assert_int_ne(f.id, a);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_uint_eq(got.nlink, 1);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_link_pruned_with_listing)
{
    struct idx_file got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);

    ck_assert_int_eq(idx_link(idx, a, IDX_ROOT_ID, "b", 50, NULL), 0);
    ck_assert_int_eq(idx_touch_attr(idx, a, 200), 0);
    ck_assert_int_eq(idx_prune_children(idx, IDX_ROOT_ID, 150, NULL, NULL), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "b", &got), -ENOENT);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_uint_eq(got.nlink, 1);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* ---- delete and prune ---- */

START_TEST(test_delete_removes_subtree_and_calls_gone)
{
    struct seen s = {0};
    struct idx_file got;
    int64_t d, sub, a, b, other;

    d = put_dir(IDX_ROOT_ID, "d");
    sub = put_dir(d, "sub");
    a = put_file(d, "a", 10);
    b = put_file(sub, "b", 20);
    other = put_file(IDX_ROOT_ID, "other", 30);
    put_block(a, 0, 10, true);
    put_block(b, 0, 20, true);
    put_block(other, 0, 30, true);
    ck_assert_int_eq(idx_delete(idx, d, on_gone, &s), 0);
    ck_assert_int_eq(s.n, 4);
    ck_assert(seen_has(&s, d) && seen_has(&s, sub) && seen_has(&s, a) && seen_has(&s, b));
    ck_assert_int_eq(idx_get(idx, b, &got), -ENOENT);
    ck_assert_int_eq(idx_get(idx, other, &got), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 30);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM blocks"), 1);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_delete_missing_is_enoent)
{
    struct seen s = {0};

    ck_assert_int_eq(idx_delete(idx, 4242, on_gone, &s), -ENOENT);
    ck_assert_int_eq(s.n, 0);
}
END_TEST

START_TEST(test_delete_root_refused)
{
    struct seen s = {0};

    struct idx_file got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 1);

    ck_assert_int_eq(idx_delete(idx, IDX_ROOT_ID, on_gone, &s), -EINVAL);
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_get(idx, IDX_ROOT_ID, &got), 0);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
}
END_TEST

START_TEST(test_delete_in_batch_calls_gone_after_commit)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1);
    uint64_t v = version_of(a);

    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_delete(idx, a, on_gone, &s), 0);
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(s.n, 1);
    ck_assert_int_eq(s.id[0], a);
    ck_assert_uint_eq(s.version[0], v);
}
END_TEST

START_TEST(test_delete_in_rolled_back_batch_never_calls_gone)
{
    struct seen s = {0};
    struct idx_file got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 1);

    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_delete(idx, a, on_gone, &s), 0);
    ck_assert_int_eq(idx_rollback(idx), 0);
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(s.n, 0);
}
END_TEST

START_TEST(test_prune_removes_unseen_children_recursively)
{
    struct idx_file fresh = mkfile(IDX_ROOT_ID, "fresh", S_IFREG | 0644, 1), got;
    struct seen s = {0};
    int64_t stale_dir, inner, stale_file, fresh_dir, kept_grandchild;

    stale_dir = put_dir(IDX_ROOT_ID, "stale_dir"); /* attr_time 100 */
    inner = put_file(stale_dir, "inner", 1);       /* deleted with its parent */
    stale_file = put_file(IDX_ROOT_ID, "stale_file", 1);
    fresh.attr_time_ns = 500;
    ck_assert_int_eq(idx_put(idx, &fresh), 0);
    fresh_dir = put_dir(IDX_ROOT_ID, "fresh_dir");
    kept_grandchild = put_file(fresh_dir, "old", 1); /* old, but not a child of the pruned dir */
    ck_assert_int_eq(idx_touch_attr(idx, fresh_dir, 600), 0);
    put_block(inner, 0, 10, true);

    ck_assert_int_eq(idx_prune_children(idx, IDX_ROOT_ID, 500, on_gone, &s), 0);
    ck_assert_int_eq(s.n, 3);
    ck_assert(seen_has(&s, stale_dir) && seen_has(&s, inner) && seen_has(&s, stale_file));
    ck_assert_int_eq(idx_get(idx, fresh.id, &got), 0);
    ck_assert_int_eq(idx_get(idx, fresh_dir, &got), 0);
    ck_assert_int_eq(idx_get(idx, kept_grandchild, &got), 0);
    ck_assert_int_eq(idx_get(idx, inner, &got), -ENOENT);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* A child created here and not yet written back (a journal row names it) is not on the source's
 * listing yet: pruning keeps it. Once its rows are done it goes like any other. */
START_TEST(test_prune_keeps_children_with_journal_rows)
{
    struct idx_file got;
    int64_t pending = put_file(IDX_ROOT_ID, "pending", 1);
    int64_t seq = add_op(IDX_J_CREATE, pending, "pending");

    ck_assert_int_eq(idx_prune_children(idx, IDX_ROOT_ID, 500, NULL, NULL), 0);
    ck_assert_int_eq(idx_get(idx, pending, &got), 0);
    ck_assert_int_eq(idx_journal_done(idx, seq), 0);
    ck_assert_int_eq(idx_prune_children(idx, IDX_ROOT_ID, 500, NULL, NULL), 0);
    ck_assert_int_eq(idx_get(idx, pending, &got), -ENOENT);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_prune_missing_dir_is_enoent)
{
    struct seen s = {0};

    ck_assert_int_eq(idx_prune_children(idx, 4242, 500, on_gone, &s), -ENOENT);
    ck_assert_int_eq(s.n, 0);
}
END_TEST

/* ---- symlink targets ---- */

static int64_t put_symlink(const char *name)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, name, S_IFLNK | 0777, 5);

    ck_assert_int_eq(idx_put(idx, &f), 0);
    return f.id;
}

START_TEST(test_link_roundtrip)
{
    char buf[64];
    int64_t l = put_symlink("l");

    ck_assert_int_eq(idx_set_link(idx, l, "../target"), 0);
    ck_assert_int_eq(idx_get_link(idx, l, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "../target");
    reopen();
    ck_assert_int_eq(idx_get_link(idx, l, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "../target");
}
END_TEST

START_TEST(test_link_small_buffer_is_erange)
{
    char buf[9];
    int64_t l = put_symlink("l");

    ck_assert_int_eq(idx_set_link(idx, l, "../target"), 0); /* 9 bytes + NUL */
    ck_assert_int_eq(idx_get_link(idx, l, buf, sizeof(buf)), -ERANGE);
    ck_assert_int_eq(idx_get_link(idx, l, buf, 0), -ERANGE);
}
END_TEST

START_TEST(test_link_on_non_symlink_refused)
{
    char buf[16];
    int64_t a = put_file(IDX_ROOT_ID, "a", 1);

    ck_assert_int_eq(idx_set_link(idx, a, "x"), -EINVAL);
    ck_assert_int_eq(idx_get_link(idx, a, buf, sizeof(buf)), -ENOENT);
    ck_assert_int_eq(idx_set_link(idx, 4242, "x"), -ENOENT);
}
END_TEST

START_TEST(test_link_absent_is_enoent)
{
    char buf[16];

    ck_assert_int_eq(idx_get_link(idx, put_symlink("l"), buf, sizeof(buf)), -ENOENT);
    ck_assert_int_eq(idx_get_link(idx, 4242, buf, sizeof(buf)), -ENOENT);
}
END_TEST

START_TEST(test_link_too_long_refused)
{
    char target[4097];
    int64_t l = put_symlink("l");

    memset(target, 't', sizeof(target) - 1);
    target[sizeof(target) - 1] = '\0';
    ck_assert_int_eq(idx_set_link(idx, l, target), -ENAMETOOLONG);
    target[sizeof(target) - 2] = '\0';
    ck_assert_int_eq(idx_set_link(idx, l, target), 0);
    ck_assert_int_eq(idx_set_link(idx, l, ""), -EINVAL);
}
END_TEST

START_TEST(test_link_cleared_when_identity_changes)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "l", S_IFLNK | 0777, 5);
    char buf[16];

    ck_assert_int_eq(idx_put(idx, &f), 0);
    ck_assert_int_eq(idx_set_link(idx, f.id, "one"), 0);
    f.attr_time_ns++;
    ck_assert_int_eq(idx_put(idx, &f), 0);
    ck_assert_int_eq(idx_get_link(idx, f.id, buf, sizeof(buf)), 0);
    f.ino++;
    ck_assert_int_eq(idx_put(idx, &f), 1);
    ck_assert_int_eq(idx_get_link(idx, f.id, buf, sizeof(buf)), -ENOENT);
}
END_TEST

/* ---- blocks ---- */

START_TEST(test_block_put_get_roundtrip)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);
    struct idx_block b = mkblock(a, version_of(a), 3, 1234, true), got;

    ck_assert_int_eq(idx_block_put(idx, &b), 0);
    ck_assert_int_eq(idx_block_get(idx, a, 3, &got), 0);
    ck_assert_int_eq(got.file, a);
    ck_assert_uint_eq(got.blkno, 3);
    ck_assert_uint_eq(got.version, b.version);
    ck_assert_uint_eq(got.len, 1234);
    ck_assert(got.cached);
    ck_assert_mem_eq(got.hash, b.hash, IDX_HASH_LEN);
}
END_TEST

START_TEST(test_block_put_refuses_stale_version)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100);
    struct idx_block b, got;
    uint64_t old;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    old = f.version;
    f.size = 200;
    ck_assert_int_eq(idx_put(idx, &f), 1);
    b = mkblock(f.id, old, 0, 100, true);
    ck_assert_int_eq(idx_block_put(idx, &b), -ESTALE);
    ck_assert_int_eq(idx_block_get(idx, f.id, 0, &got), -ENOENT);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    b.version = f.version;
    ck_assert_int_eq(idx_block_put(idx, &b), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 100);
}
END_TEST

START_TEST(test_block_put_missing_file_is_enoent)
{
    struct idx_block b = mkblock(4242, 1, 0, 10, true);

    ck_assert_int_eq(idx_block_put(idx, &b), -ENOENT);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
}
END_TEST

START_TEST(test_block_get_missing_is_enoent)
{
    struct idx_block got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);

    ck_assert_int_eq(idx_block_get(idx, a, 0, &got), -ENOENT);
    ck_assert_int_eq(idx_block_uncache(idx, a, 0), -ENOENT);
}
END_TEST

START_TEST(test_cached_bytes_tracks_put_uncache_drop)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 10000), b = put_file(IDX_ROOT_ID, "b", 10000);

    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    put_block(a, 0, 4096, true);
    put_block(a, 1, 1000, true);
    put_block(a, 2, 500, false);
    put_block(b, 0, 300, true);
    ck_assert_uint_eq(idx_cached_bytes(idx), 5396);
    put_block(a, 1, 2000, true); /* replaced: 1000 -> 2000 */
    ck_assert_uint_eq(idx_cached_bytes(idx), 6396);
    put_block(a, 2, 500, true); /* now cached */
    ck_assert_uint_eq(idx_cached_bytes(idx), 6896);
    ck_assert_int_eq(idx_block_uncache(idx, a, 0), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 2800);
    ck_assert_int_eq(idx_block_uncache(idx, a, 0), 0); /* already uncached: no change */
    ck_assert_uint_eq(idx_cached_bytes(idx), 2800);
    ck_assert_int_eq(idx_blocks_drop(idx, a), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 300);
    ck_assert_int_eq(idx_delete(idx, b, NULL, NULL), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

#define MANY_BLOCKS 150 /* more than one page of the iterator */

START_TEST(test_blocks_iterate_in_blkno_order)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20), b = put_file(IDX_ROOT_ID, "b", 1);
    int i;

    for (i = 0; i < MANY_BLOCKS; i++)
        put_block(a, (uint64_t)((i * 7) % MANY_BLOCKS), 100, i % 2 == 0);
    put_block(b, 0, 100, true);
    ck_assert_int_eq(idx_blocks(idx, a, version_of(a), on_block, &s), 0);
    ck_assert_int_eq(s.n, MANY_BLOCKS);
    for (i = 0; i < MANY_BLOCKS; i++) {
        ck_assert_int_eq(s.id[i], a);
        ck_assert_uint_eq(s.blkno[i], (uint64_t)i);
    }
    s.n = 0;
    ck_assert_int_eq(idx_blocks(idx, a, version_of(a) + 1, on_block, &s), 0);
    ck_assert_int_eq(s.n, 0);
}
END_TEST

static int stop_block(void *arg, const struct idx_block *b)
{
    (void)arg;
    return b->blkno == 1 ? -7 : 0;
}

START_TEST(test_blocks_stop_value_returned)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20);

    put_block(a, 0, 1, true);
    put_block(a, 1, 1, true);
    put_block(a, 2, 1, true);
    ck_assert_int_eq(idx_blocks(idx, a, version_of(a), stop_block, NULL), -7);
}
END_TEST

/* ---- eviction ---- */

START_TEST(test_evict_lru_order)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20), b = put_file(IDX_ROOT_ID, "b", 1 << 20);

    put_block(a, 0, 100, true); /* oldest */
    put_block(b, 0, 100, true);
    put_block(a, 1, 100, true);
    put_block(b, 1, 100, false); /* not cached: never evicted */
    put_block(b, 2, 100, true);  /* newest */
    ck_assert_int_eq(idx_evict(idx, 150, on_evicted, &s), 3);
    ck_assert_int_eq(s.n, 3);
    ck_assert(s.id[0] == a && s.blkno[0] == 0);
    ck_assert(s.id[1] == b && s.blkno[1] == 0);
    ck_assert(s.id[2] == a && s.blkno[2] == 1);
    ck_assert_uint_eq(idx_cached_bytes(idx), 100);
    ck_assert(block_cached(b, 2));
    ck_assert(!block_cached(a, 0));
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_evict_touch_moves_file_to_back)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20), b = put_file(IDX_ROOT_ID, "b", 1 << 20);

    put_block(a, 0, 100, true);
    put_block(a, 1, 100, true);
    put_block(b, 0, 100, true);
    ck_assert_int_eq(idx_blocks_touch(idx, a), 0);
    ck_assert_int_eq(idx_evict(idx, 200, on_evicted, &s), 1);
    ck_assert_int_eq(s.id[0], b);
    ck_assert(block_cached(a, 0) && block_cached(a, 1));
}
END_TEST

START_TEST(test_evict_never_touches_pinned_file)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20), b = put_file(IDX_ROOT_ID, "b", 1 << 20);

    put_block(a, 0, 100, true);
    put_block(a, 1, 100, true);
    put_block(b, 0, 100, true);
    idx_pin(idx, a);
    ck_assert_int_eq(idx_evict(idx, 0, on_evicted, &s), 1);
    ck_assert_int_eq(s.id[0], b);
    ck_assert(block_cached(a, 0) && block_cached(a, 1));
    ck_assert_uint_eq(idx_cached_bytes(idx), 200);
    idx_unpin(idx, a);
    ck_assert_int_eq(idx_evict(idx, 0, on_evicted, &s), 2);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
}
END_TEST

START_TEST(test_pin_is_counted)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20);

    put_block(a, 0, 100, true);
    idx_pin(idx, a);
    idx_pin(idx, a);
    idx_unpin(idx, a);
    ck_assert_int_eq(idx_evict(idx, 0, NULL, NULL), 0);
    ck_assert(block_cached(a, 0));
    idx_unpin(idx, a);
    ck_assert_int_eq(idx_evict(idx, 0, NULL, NULL), 1);
    idx_unpin(idx, a); /* one too many: ignored */
}
END_TEST

#define MANY_PINS 300 /* several growths of the pin table, removals inside probe runs */

START_TEST(test_pins_survive_many_files)
{
    int64_t ids[MANY_PINS];
    char name[16];
    int i;

    ck_assert_int_eq(idx_begin(idx), 0);
    for (i = 0; i < MANY_PINS; i++) {
        snprintf(name, sizeof(name), "f%d", i);
        ids[i] = put_file(IDX_ROOT_ID, name, 10);
        put_block(ids[i], 0, 10, true);
        idx_pin(idx, ids[i]);
    }
    ck_assert_int_eq(idx_commit(idx), 0);
    for (i = 0; i < MANY_PINS; i += 2)
        idx_unpin(idx, ids[i]);
    ck_assert_int_eq(idx_evict(idx, 0, NULL, NULL), MANY_PINS / 2);
    for (i = 0; i < MANY_PINS; i++)
        ck_assert_msg(block_cached(ids[i], 0) == (i % 2 == 1), "file %d: expected %s", i,
                      i % 2 == 1 ? "cached (pinned)" : "evicted");
}
END_TEST

struct commit_probe {
    int calls;
};

static void check_committed(void *arg, const struct idx_block *b)
{
    struct commit_probe *p = arg;
    struct idx_block got;
    idx_t *other;

    p->calls++;
    /* another connection sees only committed state; the index's own lock is free */
    ck_assert_int_eq(idx_open(db_path, &other), 0);
    ck_assert_int_eq(idx_block_get(other, b->file, b->blkno, &got), 0);
    ck_assert(!got.cached);
    ck_assert_uint_eq(idx_cached_bytes(other), idx_cached_bytes(idx));
    idx_close(other);
}

START_TEST(test_evict_commits_before_callback)
{
    struct commit_probe p = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20);

    put_block(a, 0, 100, true);
    put_block(a, 1, 100, true);
    ck_assert_int_eq(idx_evict(idx, 0, check_committed, &p), 2);
    ck_assert_int_eq(p.calls, 2);
}
END_TEST

START_TEST(test_evict_under_budget_is_noop)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20);

    put_block(a, 0, 100, true);
    ck_assert_int_eq(idx_evict(idx, 100, on_evicted, &s), 0);
    ck_assert_int_eq(s.n, 0);
    ck_assert(block_cached(a, 0));
}
END_TEST

START_TEST(test_evict_in_batch_is_ebusy)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20);

    put_block(a, 0, 100, true);
    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_evict(idx, 0, NULL, NULL), -EBUSY);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert(block_cached(a, 0));
}
END_TEST

START_TEST(test_reopen_continues_lru_order)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20), b;

    put_block(a, 0, 100, true);
    put_block(a, 1, 100, true);
    reopen();
    b = put_file(IDX_ROOT_ID, "b", 1 << 20);
    put_block(b, 0, 100, true);
    ck_assert_int_eq(idx_evict(idx, 100, on_evicted, &s), 2);
    ck_assert(s.id[0] == a && s.id[1] == a);
    ck_assert(block_cached(b, 0));
}
END_TEST

/* ---- checks ---- */

START_TEST(test_check_sound_index_passes)
{
    int64_t d = put_dir(IDX_ROOT_ID, "d"), a = put_file(d, "a", 10);

    put_block(a, 0, 10, true);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_check_detects_stale_block)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);

    put_block(a, 0, 10, false);
    raw_exec("UPDATE files SET version = version + 100 WHERE name = 'a'");
    ck_assert_int_eq(idx_check(idx), -EIO);
}
END_TEST

START_TEST(test_check_detects_cached_total_drift)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);

    put_block(a, 0, 10, true);
    raw_exec("UPDATE blocks SET len = 11");
    ck_assert_int_eq(idx_check(idx), -EIO);
}
END_TEST

START_TEST(test_check_detects_orphan_row)
{
    put_file(put_dir(IDX_ROOT_ID, "d"), "a", 10);
    raw_exec("DELETE FROM files WHERE name = 'd'");
    ck_assert_int_eq(idx_check(idx), -EIO);
}
END_TEST

/* ---- dirty blocks ---- */

START_TEST(test_block_dirty_roundtrip)
{
    struct seen s = {0};
    struct idx_block got;
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);

    put_dirty(a, 0, 100);
    put_block(a, 1, 100, true);
    ck_assert_int_eq(idx_block_get(idx, a, 0, &got), 0);
    ck_assert(got.dirty && got.cached);
    ck_assert_int_eq(idx_block_get(idx, a, 1, &got), 0);
    ck_assert(!got.dirty && got.cached);
    reopen();
    ck_assert(block_dirty(a, 0));
    ck_assert(!block_dirty(a, 1));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 100);
    ck_assert_uint_eq(idx_cached_bytes(idx), 200);
    ck_assert_int_eq(idx_blocks(idx, a, version_of(a), on_block, &s), 0);
    ck_assert_int_eq(s.n, 2);
}
END_TEST

static int expect_dirty_first(void *arg, const struct idx_block *b)
{
    (void)arg;
    ck_assert_msg(b->dirty == (b->blkno == 0), "block %llu: expected dirty %d, got %d",
                  (unsigned long long)b->blkno, b->blkno == 0, b->dirty);
    return 0;
}

START_TEST(test_blocks_iterator_returns_dirty)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);

    put_dirty(a, 0, 100);
    put_block(a, 1, 100, true);
    ck_assert_int_eq(idx_blocks(idx, a, version_of(a), expect_dirty_first, NULL), 0);
}
END_TEST

START_TEST(test_block_put_dirty_uncached_refused)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);
    struct idx_block b = mkblock(a, version_of(a), 0, 100, false), got;

    b.dirty = true;
    ck_assert_int_eq(idx_block_put(idx, &b), -EINVAL);
    ck_assert_int_eq(idx_block_get(idx, a, 0, &got), -ENOENT);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 0);
}
END_TEST

/* Only idx_blocks_clean makes a dirty block clean: a clean put over it is refused, a dirty one is
 * taken (and its new length counted). */
START_TEST(test_block_put_clean_over_dirty_refused)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);
    struct idx_block b = mkblock(a, version_of(a), 0, 100, true);

    put_dirty(a, 0, 100);
    ck_assert_int_eq(idx_block_put(idx, &b), -EBUSY);
    ck_assert(block_dirty(a, 0));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 100);
    put_dirty(a, 0, 300);
    ck_assert(block_dirty(a, 0));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 300);
    ck_assert_uint_eq(idx_cached_bytes(idx), 300);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* A change from the source never throws away local writes not yet written back: a file with
 * dirty blocks keeps its row (-EBUSY), and so does a folder above one that the source now has
 * as a file. A folder's new times or size take nothing from its descendants and go in. */
START_TEST(test_put_change_over_dirty)
{
    int64_t d = put_dir(IDX_ROOT_ID, "d"), s = put_dir(d, "s");
    int64_t a = put_file(s, "a", 100000), b = put_file(s, "b", 100000);
    struct idx_file f;

    put_dirty(a, 0, 100);
    put_block(b, 0, 100, true);
    f = mkfile(s, "a", S_IFREG | 0644, 200000);
    ck_assert_int_eq(idx_put(idx, &f), -EBUSY);
    ck_assert(block_dirty(a, 0));
    ck_assert_int_eq(idx_get(idx, a, &f), 0);
    ck_assert_uint_eq(f.size, 100000);
    f = mkfile(s, "b", S_IFREG | 0644, 200000); /* clean: taken, its blocks dropped */
    struct idx_block gone;
    ck_assert_int_eq(idx_put(idx, &f), 1);
    ck_assert_int_eq(idx_block_get(idx, b, 0, &gone), -ENOENT);
    f = mkfile(IDX_ROOT_ID, "d", S_IFDIR | 0755, 8192);
    f.mtime_ns = 99;
    uint64_t v = version_of(d);
    ck_assert_int_eq(idx_put(idx, &f), 1);
    ck_assert_uint_ne(version_of(d), v);
    ck_assert(block_dirty(a, 0));
    ck_assert_int_eq(idx_get(idx, a, &f), 0);
    f = mkfile(IDX_ROOT_ID, "d", S_IFREG | 0644, 10); /* the folder became a file there */
    ck_assert_int_eq(idx_put(idx, &f), -EBUSY);
    ck_assert_int_eq(idx_get(idx, a, &f), 0);
    ck_assert(block_dirty(a, 0));
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_block_uncache_dirty_refused)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);

    put_dirty(a, 0, 100);
    put_block(a, 1, 100, true);
    ck_assert_int_eq(idx_block_uncache(idx, a, 0), -EBUSY);
    ck_assert(block_cached(a, 0) && block_dirty(a, 0));
    ck_assert_int_eq(idx_block_uncache(idx, a, 1), 0);
    ck_assert(!block_cached(a, 1));
    ck_assert_uint_eq(idx_cached_bytes(idx), 100);
}
END_TEST

START_TEST(test_dirty_bytes_tracks_put_clean_drop_rollback)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000), b = put_file(IDX_ROOT_ID, "b", 100000);

    put_dirty(a, 0, 100);
    put_dirty(a, 1, 200);
    put_dirty(b, 0, 400);
    put_block(b, 1, 800, true);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 700);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 1, 1, INT64_MAX), 1);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 500);
    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_blocks_drop(idx, b), 0);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 100);
    ck_assert_int_eq(idx_rollback(idx), 0);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 500);
    ck_assert_int_eq(idx_delete(idx, b, NULL, NULL), 0);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 100);
    reopen();
    ck_assert_uint_eq(idx_dirty_bytes(idx), 100);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_blocks_clean_clears_only_the_range)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);
    uint64_t i;

    for (i = 0; i < 5; i++)
        put_dirty(a, i, 10);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 1, 2, INT64_MAX), 2);
    for (i = 0; i < 5; i++)
        ck_assert_msg(block_dirty(a, i) == (i == 0 || i >= 3), "block %llu: expected %s",
                      (unsigned long long)i, i == 0 || i >= 3 ? "dirty" : "clean");
    ck_assert(block_cached(a, 1) && block_cached(a, 2));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 30);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 1, 2, INT64_MAX), 0); /* again */
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 0, 0, INT64_MAX), 0); /* empty */
    ck_assert(block_dirty(a, 0));
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 0, UINT64_MAX, INT64_MAX), 3);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_blocks_clean_refuses_stale_version_missing_file_bad_range)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);

    put_dirty(a, 0, 10);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a) + 1, 0, 1, INT64_MAX), -ESTALE);
    ck_assert_int_eq(idx_blocks_clean(idx, 4242, version_of(a), 0, 1, INT64_MAX), -ENOENT);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), (uint64_t)INT64_MAX + 1, 1, INT64_MAX),
                     -EINVAL);
    ck_assert(block_dirty(a, 0));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 10);
}
END_TEST

/* The write-back race: block 0 is written (row 1), row 1 is handed out to be sent, block 0 is
 * written again (row 2). Acknowledging row 1 must not clean block 0: its new bytes are not sent. */
START_TEST(test_blocks_clean_keeps_block_written_after_its_row_was_handed_out)
{
    struct jseen js = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000), s1, s2;

    put_dirty(a, 0, 10);
    put_dirty(a, 1, 10);
    s1 = add_write(a, "a", 0, 20);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 1);
    put_dirty(a, 0, 10);
    s2 = add_write(a, "a", 0, 10);
    ck_assert_int_gt(s2, s1);
    ck_assert_int_eq(idx_journal_done(idx, s1), 0);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 0, 2, s1), 1);
    ck_assert(block_dirty(a, 0));
    ck_assert(!block_dirty(a, 1));
    ck_assert_int_eq(idx_journal_scan(idx, s1, 10, on_jentry, &js), 0);
    ck_assert_int_eq(idx_journal_done(idx, s2), 0);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 0, 1, s2), 1);
    ck_assert(!block_dirty(a, 0));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 0);
}
END_TEST

/* Twin: a block written before its row was handed out is cleaned by that row's acknowledgement,
 * also when the write merged into a row added before it. */
START_TEST(test_blocks_clean_after_row_handed_out_cleans_earlier_writes)
{
    struct jseen js = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000), s1;

    s1 = add_write(a, "a", 0, 10);
    put_dirty(a, 0, 10);
    put_dirty(a, 1, 10);
    ck_assert_int_eq(add_write(a, "a", 10, 10), s1); /* merged */
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(idx_journal_done(idx, s1), 0);
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 0, 2, s1), 2);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 0);
}
END_TEST

START_TEST(test_evict_never_picks_dirty_block)
{
    struct seen s = {0};
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20), b = put_file(IDX_ROOT_ID, "b", 1 << 20);

    put_dirty(a, 0, 100); /* oldest */
    put_block(a, 1, 100, true);
    put_block(b, 0, 100, true);
    put_dirty(b, 1, 100);
    idx_pin(idx, b);
    idx_unpin(idx, b);
    ck_assert_int_eq(idx_evict(idx, 0, on_evicted, &s), 2);
    ck_assert_int_eq(s.n, 2);
    ck_assert(s.id[0] == a && s.blkno[0] == 1);
    ck_assert(s.id[1] == b && s.blkno[1] == 0);
    ck_assert(block_cached(a, 0) && block_dirty(a, 0));
    ck_assert(block_cached(b, 1) && block_dirty(b, 1));
    ck_assert_uint_eq(idx_cached_bytes(idx), 200);
    /* once written back, they go like any other */
    ck_assert_int_eq(idx_blocks_clean(idx, a, version_of(a), 0, 1, INT64_MAX), 1);
    ck_assert_int_eq(idx_evict(idx, 0, on_evicted, &s), 1);
    ck_assert(s.id[2] == a && s.blkno[2] == 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 100);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* Dirty blocks do not count towards the bytes to free: the budget is met with clean ones. */
START_TEST(test_evict_meets_budget_with_clean_blocks_only)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20);

    put_dirty(a, 0, 100); /* oldest */
    put_block(a, 1, 100, true);
    put_block(a, 2, 100, true);
    ck_assert_int_eq(idx_evict(idx, 100, NULL, NULL), 2);
    ck_assert_uint_eq(idx_cached_bytes(idx), 100);
    ck_assert(block_dirty(a, 0));
    ck_assert(!block_cached(a, 1) && !block_cached(a, 2));
}
END_TEST

START_TEST(test_evict_pinned_file_keeps_dirty_block_after_unpin)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 1 << 20);

    put_dirty(a, 0, 100);
    put_block(a, 1, 100, true);
    idx_pin(idx, a);
    ck_assert_int_eq(idx_evict(idx, 0, NULL, NULL), 0);
    idx_unpin(idx, a);
    ck_assert_int_eq(idx_evict(idx, 0, NULL, NULL), 1);
    ck_assert(block_cached(a, 0) && !block_cached(a, 1));
}
END_TEST

START_TEST(test_put_refuses_identity_change_with_dirty_blocks)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100), got;
    uint64_t v;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    v = f.version;
    put_dirty(f.id, 0, 100);
    f.size = 200;
    ck_assert_int_eq(idx_put(idx, &f), -EBUSY);
    ck_assert_int_eq(idx_get(idx, f.id, &got), 0);
    ck_assert_uint_eq(got.version, v);
    ck_assert_uint_eq(got.size, 100);
    ck_assert(block_dirty(f.id, 0));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 100);
    /* an update that keeps the identity still goes through */
    f.size = 100;
    f.uid = 42;
    ck_assert_int_eq(idx_put(idx, &f), 0);
    ck_assert_int_eq(idx_get(idx, f.id, &got), 0);
    ck_assert_uint_eq(got.uid, 42);
    ck_assert(block_dirty(f.id, 0));
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* Once the dirty blocks are written back (_i == 0) or given up (_i == 1) the change goes
 * through as before. */
START_TEST(test_put_identity_change_after_clean_or_drop)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100);
    struct idx_block b;
    uint64_t v;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    v = f.version;
    put_dirty(f.id, 0, 100);
    if (_i == 0)
        ck_assert_int_eq(idx_blocks_clean(idx, f.id, v, 0, 1, INT64_MAX), 1);
    else
        ck_assert_int_eq(idx_blocks_drop(idx, f.id), 0);
    f.size = 200;
    ck_assert_int_eq(idx_put(idx, &f), 1);
    ck_assert_uint_gt(f.version, v);
    ck_assert_int_eq(idx_block_get(idx, f.id, 0, &b), -ENOENT);
    ck_assert_uint_eq(idx_dirty_bytes(idx), 0);
    ck_assert_uint_eq(idx_cached_bytes(idx), 0);
}
END_TEST

START_TEST(test_put_dir_to_file_refused_with_dirty_descendant)
{
    struct idx_file d = mkfile(IDX_ROOT_ID, "d", S_IFDIR | 0755, 4096), got;
    int64_t sub, a;

    ck_assert_int_eq(idx_put(idx, &d), 0);
    sub = put_dir(d.id, "sub");
    a = put_file(sub, "a", 10);
    put_dirty(a, 0, 10);
    d.mode = S_IFREG | 0644;
    ck_assert_int_eq(idx_put(idx, &d), -EBUSY);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert(block_dirty(a, 0));
    ck_assert_int_eq(idx_get(idx, d.id, &got), 0);
    ck_assert(S_ISDIR(got.mode));
}
END_TEST

START_TEST(test_put_keep_version_keeps_version_blocks_and_link)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100), got;
    struct idx_file l = mkfile(IDX_ROOT_ID, "l", S_IFLNK | 0777, 3);
    char buf[16];
    uint64_t v;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    v = f.version;
    put_dirty(f.id, 0, 100);
    put_block(f.id, 1, 50, true);
    f.size = 150;
    f.mtime_ns = 99;
    ck_assert_int_eq(idx_put_keep_version(idx, &f), 0);
    ck_assert_uint_eq(f.version, v);
    ck_assert_int_eq(idx_get(idx, f.id, &got), 0);
    ck_assert_uint_eq(got.version, v);
    ck_assert_uint_eq(got.size, 150);
    ck_assert_int_eq(got.mtime_ns, 99);
    ck_assert(block_dirty(f.id, 0));
    ck_assert(block_cached(f.id, 1));
    ck_assert_uint_eq(idx_cached_bytes(idx), 150);

    ck_assert_int_eq(idx_put(idx, &l), 0);
    ck_assert_int_eq(idx_set_link(idx, l.id, "abc"), 0);
    l.size = 4;
    ck_assert_int_eq(idx_put_keep_version(idx, &l), 0);
    ck_assert_int_eq(idx_get_link(idx, l.id, buf, sizeof(buf)), 0);
    ck_assert_str_eq(buf, "abc");
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_put_keep_version_refuses_type_change)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 100), got;

    ck_assert_int_eq(idx_put(idx, &f), 0);
    f.mode = S_IFDIR | 0755;
    ck_assert_int_eq(idx_put_keep_version(idx, &f), -EINVAL);
    ck_assert_int_eq(idx_get(idx, f.id, &got), 0);
    ck_assert(S_ISREG(got.mode));
}
END_TEST

START_TEST(test_put_keep_version_new_row_gets_fresh_version)
{
    struct idx_file a = mkfile(IDX_ROOT_ID, "a", S_IFREG | 0644, 1);
    struct idx_file b = mkfile(IDX_ROOT_ID, "b", S_IFREG | 0644, 1);

    ck_assert_int_eq(idx_put(idx, &a), 0);
    ck_assert_int_eq(idx_put_keep_version(idx, &b), 0);
    ck_assert_int_gt(b.id, a.id);
    ck_assert_uint_gt(b.version, a.version);
    ck_assert_uint_eq(version_of(b.id), b.version);
}
END_TEST

START_TEST(test_check_detects_dirty_uncached_block)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);

    put_dirty(a, 0, 10);
    ck_assert_int_eq(idx_check(idx), 0);
    raw_exec("UPDATE blocks SET cached = 0");
    reopen(); /* recompute the cached total: only the dirty rule is broken */
    ck_assert_int_eq(idx_check(idx), -EIO);
}
END_TEST

START_TEST(test_check_detects_dirty_total_drift)
{
    int64_t a = put_file(IDX_ROOT_ID, "a", 100000);

    put_dirty(a, 0, 10);
    raw_exec("UPDATE blocks SET dirty = 0");
    ck_assert_int_eq(idx_check(idx), -EIO);
}
END_TEST

/* ---- journal ---- */

START_TEST(test_journal_add_scan_roundtrip)
{
    struct idx_jentry r = mkj(IDX_J_RENAME, 5, "dir/old name");
    struct idx_jentry a = mkj(IDX_J_SETATTR, 6, "dir/f");
    struct jseen js = {0};
    const struct idx_jentry *g;

    snprintf(r.path2, sizeof(r.path2), "other/new name");
    r.flags = 1;
    a.valid = IDX_J_SET_MODE | IDX_J_SET_SIZE | IDX_J_SET_ATIME | IDX_J_SET_MTIME;
    a.mode = 0640;
    a.size = (uint64_t)INT64_MAX;
    a.atime_ns = -5;
    a.mtime_ns = 1700000000123456789;
    ck_assert_int_eq(idx_journal_add(idx, &r), 0);
    ck_assert_int_eq(idx_journal_add(idx, &a), 0);
    ck_assert_int_eq(r.seq, 1);
    ck_assert_int_eq(a.seq, 2);
    ck_assert_int_eq(idx_journal_last_seq(idx), 2);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 2);
    g = &js.whole[0];
    ck_assert_int_eq(g->seq, 1);
    ck_assert_int_eq(g->kind, IDX_J_RENAME);
    ck_assert_int_eq(g->file, 5);
    ck_assert_str_eq(g->path, "dir/old name");
    ck_assert_str_eq(g->path2, "other/new name");
    ck_assert_uint_eq(g->flags, 1);
    g = &js.whole[1];
    ck_assert_int_eq(g->kind, IDX_J_SETATTR);
    ck_assert_str_eq(g->path2, "");
    ck_assert_uint_eq(g->valid, a.valid);
    ck_assert_uint_eq(g->mode, 0640);
    ck_assert_uint_eq(g->size, (uint64_t)INT64_MAX);
    ck_assert_int_eq(g->atime_ns, -5);
    ck_assert_int_eq(g->mtime_ns, 1700000000123456789);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* Touching (_i == 0), overlapping (_i == 1) and contained (_i == 2) writes extend the last row. */
START_TEST(test_journal_write_merges_with_last_row)
{
    static const uint64_t off[] = {100, 50, 20}, len[] = {50, 100, 10};
    static const uint64_t want_off[] = {0, 0, 0}, want_len[] = {150, 150, 100};
    struct jseen js = {0};
    int64_t s1;

    s1 = add_write(7, "f", 0, 100);
    ck_assert_int_eq(add_write(7, "f", off[_i], len[_i]), s1);
    ck_assert_int_eq(idx_journal_last_seq(idx), s1);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 1);
    ck_assert_uint_eq(js.off[0], want_off[_i]);
    ck_assert_uint_eq(js.len[0], want_len[_i]);
}
END_TEST

/* Twins: a gap (_i == 0), another file (_i == 1), another path of the file (_i == 2) or a last
 * row that is not a WRITE (_i == 3) make a row of its own. */
START_TEST(test_journal_write_not_merged)
{
    struct jseen js = {0};
    int64_t s1, s2;

    s1 = _i == 3 ? add_op(IDX_J_CREATE, 7, "f") : add_write(7, "f", 0, 100);
    s2 = add_write(_i == 1 ? 8 : 7, _i == 2 ? "g" : "f", _i == 0 ? 101 : 100, 10);
    ck_assert_int_eq(s2, s1 + 1);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 2);
    ck_assert_uint_eq(js.len[1], 10);
}
END_TEST

/* Causal order: WRITE, RENAME, WRITE of the same file and range stays three rows. */
START_TEST(test_journal_write_never_merges_across_another_operation)
{
    struct jseen js = {0};
    int64_t s1, s2, s3;

    s1 = add_write(7, "f", 0, 100);
    s2 = add_op(IDX_J_RENAME, 7, "f");
    s3 = add_write(7, "f", 100, 100);
    ck_assert(s1 < s2 && s2 < s3);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 3);
    ck_assert_int_eq(js.kind[1], IDX_J_RENAME);
    ck_assert_uint_eq(js.off[2], 100);
}
END_TEST

/* The last row is done (acknowledged, removed): the write before it is no longer the last row. */
START_TEST(test_journal_write_never_merges_past_a_done_row)
{
    int64_t s1, s2, s3;

    s1 = add_write(7, "f", 0, 100);
    s2 = add_op(IDX_J_RENAME, 7, "f");
    ck_assert_int_eq(idx_journal_done(idx, s2), 0);
    s3 = add_write(7, "f", 100, 100);
    ck_assert_int_gt(s3, s2);
    ck_assert_int_eq(journal_rows(), 2);
    ck_assert_int_eq(raw_query("SELECT len FROM journal WHERE seq = 1"), 100);
    (void)s1;
}
END_TEST

START_TEST(test_journal_write_never_extends_handed_out_row)
{
    struct jseen js = {0};
    int64_t s1, s2;

    s1 = add_write(7, "f", 0, 100);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    s2 = add_write(7, "f", 100, 100);
    ck_assert_int_eq(s2, s1 + 1);
    ck_assert_int_eq(raw_query("SELECT len FROM journal WHERE seq = 1"), 100);
}
END_TEST

#define MANY_ROWS 40 /* more than two pages of the journal iterator */

START_TEST(test_journal_scan_pages_in_order_within_max)
{
    struct jseen js = {0};
    int i;

    for (i = 0; i < MANY_ROWS; i++)
        ck_assert_int_eq(add_op(i % 2 ? IDX_J_CREATE : IDX_J_UNLINK, i + 1, "x"), i + 1);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 1000, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, MANY_ROWS);
    for (i = 0; i < MANY_ROWS; i++) {
        ck_assert_int_eq(js.seq[i], i + 1);
        ck_assert_int_eq(js.file[i], i + 1);
    }
    js.n = 0;
    ck_assert_int_eq(idx_journal_scan(idx, 10, 20, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 20);
    ck_assert_int_eq(js.seq[0], 11);
    ck_assert_int_eq(js.seq[19], 30);
    js.n = 0;
    ck_assert_int_eq(idx_journal_scan(idx, 0, 0, on_jentry, &js), 0);
    ck_assert_int_eq(idx_journal_scan(idx, MANY_ROWS, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 0);
}
END_TEST

static int stop_jentry(void *arg, const struct idx_jentry *e)
{
    (void)arg;
    return e->seq == 2 ? -7 : 0;
}

START_TEST(test_journal_scan_stop_value_returned)
{
    add_op(IDX_J_MKDIR, 1, "a");
    add_op(IDX_J_MKDIR, 1, "b");
    add_op(IDX_J_MKDIR, 1, "c");
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, stop_jentry, NULL), -7);
}
END_TEST

START_TEST(test_journal_scan_callback_may_call_index)
{
    struct jseen js = {.done_each = 1};
    int i;

    for (i = 0; i < MANY_ROWS; i++)
        add_op(IDX_J_FSYNC, 1, "f");
    ck_assert_int_eq(idx_journal_scan(idx, 0, 1000, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, MANY_ROWS);
    ck_assert_int_eq(journal_rows(), 0);
}
END_TEST

/* Rows of an open batch are not committed: the sender must not see them. */
START_TEST(test_journal_scan_in_batch_is_ebusy)
{
    struct jseen js = {0};

    add_op(IDX_J_MKDIR, 1, "a");
    ck_assert_int_eq(idx_begin(idx), 0);
    add_op(IDX_J_MKDIR, 1, "b");
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), -EBUSY);
    ck_assert_int_eq(js.n, 0);
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 2);
}
END_TEST

START_TEST(test_journal_done_removes_row)
{
    struct jseen js = {0};
    int64_t s1 = add_op(IDX_J_MKDIR, 1, "a"), s2 = add_op(IDX_J_MKDIR, 1, "b");

    ck_assert_int_eq(idx_journal_done(idx, s1), 0);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_int_eq(js.n, 1);
    ck_assert_int_eq(js.seq[0], s2);
}
END_TEST

START_TEST(test_journal_done_missing_is_enoent)
{
    int64_t s1 = add_op(IDX_J_MKDIR, 1, "a");

    ck_assert_int_eq(idx_journal_done(idx, s1 + 1), -ENOENT);
    ck_assert_int_eq(idx_journal_done(idx, s1), 0);
    ck_assert_int_eq(idx_journal_done(idx, s1), -ENOENT);
}
END_TEST

START_TEST(test_journal_count_by_file_and_seq)
{
    uint64_t n = 99;

    add_op(IDX_J_CREATE, 5, "a"); /* 1 */
    add_op(IDX_J_CREATE, 6, "b"); /* 2 */
    add_write(5, "a", 0, 10);     /* 3 */
    add_op(IDX_J_FSYNC, 5, "a");  /* 4 */
    add_op(IDX_J_MKDIR, 0, "d");  /* 5 */
    ck_assert_int_eq(idx_journal_count(idx, 5, INT64_MAX, &n), 0);
    ck_assert_uint_eq(n, 3);
    ck_assert_int_eq(idx_journal_count(idx, 5, 3, &n), 0);
    ck_assert_uint_eq(n, 2);
    ck_assert_int_eq(idx_journal_count(idx, 6, 1, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(idx_journal_count(idx, 0, 4, &n), 0);
    ck_assert_uint_eq(n, 4);
    ck_assert_int_eq(idx_journal_count(idx, 0, INT64_MAX, &n), 0);
    ck_assert_uint_eq(n, 5);
    ck_assert_int_eq(idx_journal_count(idx, 4242, INT64_MAX, &n), 0);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(idx_journal_count(idx, -1, INT64_MAX, &n), -EINVAL);
}
END_TEST

START_TEST(test_journal_seq_increases_across_reopen_when_emptied)
{
    int64_t s;

    ck_assert_int_eq(idx_journal_last_seq(idx), 0);
    add_op(IDX_J_MKDIR, 1, "a");
    add_op(IDX_J_MKDIR, 1, "b");
    s = add_op(IDX_J_MKDIR, 1, "c");
    ck_assert_int_eq(idx_journal_done(idx, 1), 0);
    ck_assert_int_eq(idx_journal_done(idx, 2), 0);
    ck_assert_int_eq(idx_journal_done(idx, 3), 0);
    ck_assert_int_eq(journal_rows(), 0);
    reopen();
    ck_assert_int_eq(idx_journal_last_seq(idx), s);
    ck_assert_int_eq(add_op(IDX_J_MKDIR, 1, "d"), s + 1);
    ck_assert_int_eq(idx_journal_last_seq(idx), s + 1);
}
END_TEST

START_TEST(test_journal_rollback_removes_row_and_change)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "new", S_IFREG | 0644, 10), got;
    struct idx_jentry e = mkj(IDX_J_CREATE, 0, "new");

    add_op(IDX_J_MKDIR, 1, "before");
    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_put(idx, &f), 0);
    e.file = f.id;
    ck_assert_int_eq(idx_journal_add(idx, &e), 0);
    ck_assert_int_eq(e.seq, 2);
    ck_assert_int_eq(idx_rollback(idx), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "new", &got), -ENOENT);
    ck_assert_int_eq(journal_rows(), 1);
    ck_assert_int_eq(idx_journal_last_seq(idx), 1);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

START_TEST(test_journal_commit_keeps_row_and_change)
{
    struct idx_file f = mkfile(IDX_ROOT_ID, "new", S_IFREG | 0644, 10), got;
    struct idx_jentry e = mkj(IDX_J_CREATE, 0, "new");

    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_put(idx, &f), 0);
    e.file = f.id;
    ck_assert_int_eq(idx_journal_add(idx, &e), 0);
    ck_assert_int_eq(journal_rows(), 0); /* not committed yet */
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "new", &got), 0);
    ck_assert_int_eq(raw_query("SELECT file FROM journal WHERE seq = 1"), f.id);
}
END_TEST

#define CRASH_JROWS 500

/* The child changes rows, dirty blocks and the journal in one batch and dies before committing:
 * by SIGKILL (_i == 0) or by _exit (_i == 1). */
START_TEST(test_journal_crash_mid_batch_leaves_neither)
{
    struct idx_file f;
    int64_t kept;
    pid_t pid;
    int status, i;

    kept = put_file(IDX_ROOT_ID, "kept", 4096);
    put_dirty(kept, 0, 4096);
    add_write(kept, "kept", 0, 4096);
    idx_close(idx);
    idx = NULL;

    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        idx_t *c;

        if (idx_open(db_path, &c) != 0 || idx_begin(c) != 0)
            _exit(2);
        for (i = 0; i < CRASH_JROWS; i++) {
            struct idx_file g;
            struct idx_block b;
            struct idx_jentry e;

            g = mkfile(IDX_ROOT_ID, "x", S_IFREG | 0644, 4096);
            snprintf(g.name, sizeof(g.name), "lost%d", i);
            if (idx_put(c, &g) != 0)
                _exit(3);
            b = mkblock(g.id, g.version, 0, 4096, true);
            b.dirty = true;
            e = mkj(IDX_J_CREATE, g.id, g.name);
            if (idx_block_put(c, &b) != 0 || idx_journal_add(c, &e) != 0)
                _exit(4);
        }
        if (_i == 0)
            kill(getpid(), SIGKILL);
        _exit(0);
    }
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    if (_i == 0)
        ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    else
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    ck_assert_int_eq(idx_open(db_path, &idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "lost0", &f), -ENOENT);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 2);
    ck_assert_int_eq(journal_rows(), 1);
    ck_assert_int_eq(idx_journal_last_seq(idx), 1);
    ck_assert(block_dirty(kept, 0));
    ck_assert_uint_eq(idx_dirty_bytes(idx), 4096);
    ck_assert_int_eq(add_op(IDX_J_FSYNC, kept, "kept"), 2);
}
END_TEST

START_TEST(test_journal_path_max_accepted)
{
    struct idx_jentry e = mkj(IDX_J_SYMLINK, 1, "");
    struct jseen js = {0};

    memset(e.path, 'p', IDX_PATH_MAX - 1);
    memset(e.path2, 't', IDX_PATH_MAX - 1);
    ck_assert_int_eq(idx_journal_add(idx, &e), 0);
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), 0);
    ck_assert_uint_eq(strlen(js.whole[0].path), IDX_PATH_MAX - 1);
    ck_assert_uint_eq(strlen(js.whole[0].path2), IDX_PATH_MAX - 1);
    ck_assert_mem_eq(js.whole[0].path, e.path, IDX_PATH_MAX);
}
END_TEST

/* A path (_i == 0) or path2 (_i == 1) with no NUL in IDX_PATH_MAX bytes. */
START_TEST(test_journal_path_too_long_refused)
{
    struct idx_jentry e = mkj(IDX_J_RENAME, 1, "a");

    snprintf(e.path2, sizeof(e.path2), "b");
    memset(_i == 0 ? e.path : e.path2, 'x', IDX_PATH_MAX);
    e.seq = -3;
    ck_assert_int_eq(idx_journal_add(idx, &e), -ENAMETOOLONG);
    ck_assert_int_eq(e.seq, -3);
    ck_assert_int_eq(idx_journal_last_seq(idx), 0);
}
END_TEST

/* Unknown kinds (0, one past the last), unknown SETATTR bits, a WRITE range past INT64_MAX, a
 * size past INT64_MAX, a negative file. */
START_TEST(test_journal_bad_entry_refused)
{
    struct idx_jentry e = mkj(IDX_J_WRITE, 1, "a");

    switch (_i) {
    case 0:
        e.kind = (enum idx_jkind)0;
        break;
    case 1:
        e.kind = (enum idx_jkind)(IDX_J_FSYNC + 1);
        break;
    case 2:
        e.kind = IDX_J_SETATTR;
        e.valid = 0x10;
        break;
    case 3:
        e.off = (uint64_t)INT64_MAX;
        e.len = 1;
        break;
    case 4:
        e.kind = IDX_J_SETATTR;
        e.size = (uint64_t)INT64_MAX + 1;
        break;
    default:
        e.file = -1;
        break;
    }
    ck_assert_int_eq(idx_journal_add(idx, &e), -EINVAL);
    ck_assert_int_eq(idx_journal_last_seq(idx), 0);
    ck_assert_int_eq(journal_rows(), 0);
}
END_TEST

/* A failed append (a trigger refuses it) inside a batch leaves e->seq as it was and the batch
 * going: the rows before and after it commit. */
START_TEST(test_journal_failed_add_keeps_batch_and_seq)
{
    struct idx_jentry e = mkj(IDX_J_MKDIR, 1, "refused");

    raw_exec("CREATE TRIGGER fail BEFORE INSERT ON journal WHEN new.path = 'refused' "
             "BEGIN SELECT RAISE(ABORT, 'injected failure'); END");
    ck_assert_int_eq(idx_begin(idx), 0);
    add_op(IDX_J_MKDIR, 1, "before");
    e.seq = -3;
    ck_assert_int_eq(idx_journal_add(idx, &e), -EIO);
    ck_assert_int_eq(e.seq, -3);
    add_op(IDX_J_MKDIR, 1, "after");
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(journal_rows(), 2);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM journal WHERE path = 'refused'"), 0);
}
END_TEST

/* The commit of an append made outside a batch fails (a deferred foreign key the append's trigger
 * broke): neither the row nor a seq is left. */
START_TEST(test_journal_failed_commit_leaves_no_row_nor_seq)
{
    struct idx_jentry e = mkj(IDX_J_MKDIR, 1, "vetoed");

    raw_exec("CREATE TABLE veto (x INTEGER REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED);"
             "CREATE TRIGGER veto AFTER INSERT ON journal WHEN new.path = 'vetoed' "
             "BEGIN INSERT INTO veto VALUES (999999); END");
    reopen(); /* prepared statements see the trigger */
    e.seq = -3;
    ck_assert_int_eq(idx_journal_add(idx, &e), -EIO);
    ck_assert_int_eq(e.seq, -3);
    ck_assert_int_eq(journal_rows(), 0);
    ck_assert_int_eq(idx_journal_last_seq(idx), 0);
    ck_assert_int_eq(add_op(IDX_J_MKDIR, 1, "next"), 1);
}
END_TEST

START_TEST(test_check_detects_bad_journal_kind)
{
    add_op(IDX_J_MKDIR, 1, "a");
    ck_assert_int_eq(idx_check(idx), 0);
    raw_exec("UPDATE journal SET kind = 99");
    ck_assert_int_eq(idx_check(idx), -EIO);
}
END_TEST

START_TEST(test_journal_scan_refuses_corrupt_row)
{
    struct jseen js = {0};

    add_op(IDX_J_MKDIR, 1, "a");
    raw_exec("UPDATE journal SET len = -1");
    ck_assert_int_eq(idx_journal_scan(idx, 0, 10, on_jentry, &js), -EIO);
    ck_assert_int_eq(js.n, 0);
}
END_TEST

/* ---- threads ---- */

#define THREADS    4
#define PER_THREAD 200

static void *put_many(void *arg)
{
    int t = (int)(intptr_t)arg, i;
    struct idx_file f;
    struct idx_block b;
    char name[32];

    for (i = 0; i < PER_THREAD; i++) {
        snprintf(name, sizeof(name), "t%d-%d", t, i);
        f = mkfile(IDX_ROOT_ID, name, S_IFREG | 0644, 10);
        if (idx_put(idx, &f) != 0)
            return (void *)1;
        b = mkblock(f.id, f.version, 0, 10, true);
        if (idx_block_put(idx, &b) != 0)
            return (void *)2;
        idx_pin(idx, f.id);
        idx_unpin(idx, f.id);
    }
    return NULL;
}

START_TEST(test_concurrent_writers_from_threads)
{
    pthread_t th[THREADS];
    void *ret;
    int i;

    for (i = 0; i < THREADS; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, put_many, (void *)(intptr_t)i), 0);
    for (i = 0; i < THREADS; i++) {
        ck_assert_int_eq(pthread_join(th[i], &ret), 0);
        ck_assert_ptr_null(ret);
    }
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 1 + THREADS * PER_THREAD);
    ck_assert_uint_eq(idx_cached_bytes(idx), THREADS * PER_THREAD * 10);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* --- group commit ---------------------------------------------------------------------- */

/* A long window: only idx_sync, idx_close or a due idx_commit write the group. */
START_TEST(test_group_keeps_batches_until_sync)
{
    struct idx_file got;

    ck_assert_int_eq(idx_set_group_commit(idx, 60000), 0);
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);
    ck_assert_int_eq(idx_begin(idx), 0);
    int64_t b = put_file(IDX_ROOT_ID, "b", 10);
    add_op(IDX_J_CREATE, b, "b");
    ck_assert_int_eq(idx_commit(idx), 0);
    /* this connection sees both at once; the file does not hold them yet */
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_int_eq(idx_get(idx, b, &got), 0);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 1);
    ck_assert_int_eq(journal_rows(), 0);
    ck_assert_int_eq(idx_sync(idx), 0);
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 3);
    ck_assert_int_eq(journal_rows(), 1);
    ck_assert_int_eq(idx_sync(idx), 0); /* nothing open: returns at once */
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* A rolled-back batch undoes itself only, not the finished batches of its group. */
START_TEST(test_group_rollback_is_the_batch_only)
{
    struct idx_file got;
    struct seen s = {0};

    ck_assert_int_eq(idx_set_group_commit(idx, 60000), 0);
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);
    int64_t d = put_file(IDX_ROOT_ID, "d", 10);
    ck_assert_int_eq(idx_begin(idx), 0);
    add_op(IDX_J_CREATE, a, "a");
    ck_assert_int_eq(idx_commit(idx), 0);
    ck_assert_int_eq(idx_begin(idx), 0);
    ck_assert_int_eq(idx_delete(idx, d, on_gone, &s), 0);
    int64_t b = put_file(IDX_ROOT_ID, "b", 10);
    add_op(IDX_J_CREATE, b, "b");
    ck_assert_int_eq(idx_rollback(idx), 0);
    ck_assert_int_eq(idx_get(idx, a, &got), 0);
    ck_assert_int_eq(idx_get(idx, d, &got), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "b", &got), -ENOENT);
    ck_assert_int_eq(idx_sync(idx), 0);
    ck_assert_int_eq(s.n, 0); /* the rolled-back deletion is never reported */
    ck_assert_int_eq(raw_query("SELECT COUNT(*) FROM files"), 3);
    ck_assert_int_eq(journal_rows(), 1);
    ck_assert_int_eq(idx_check(idx), 0);
}
END_TEST

/* gone() waits for the group's commit: a cache file is dropped only once its row is gone for good.
 */
START_TEST(test_group_gone_after_commit)
{
    struct seen s = {0};

    ck_assert_int_eq(idx_set_group_commit(idx, 60000), 0);
    int64_t a = put_file(IDX_ROOT_ID, "a", 10);
    ck_assert_int_eq(idx_delete(idx, a, on_gone, &s), 0);
    ck_assert_int_eq(s.n, 0);
    ck_assert_int_eq(idx_sync(idx), 0);
    ck_assert_int_eq(s.n, 1);
    ck_assert(seen_has(&s, a));
}
END_TEST

/* With nothing after it, the group is committed by the index's own thread within the window. */
START_TEST(test_group_committed_by_timer)
{
    ck_assert_int_eq(idx_set_group_commit(idx, 20), 0);
    put_file(IDX_ROOT_ID, "a", 10);
    long long n = 0;
    for (int i = 0; i < 200 && n != 2; i++) {
        usleep(10000);
        n = raw_query("SELECT COUNT(*) FROM files");
    }
    ck_assert_int_eq(n, 2);
}
END_TEST

/* Killed before the group's commit: the state of the last committed group, whole. */
START_TEST(test_group_killed_keeps_last_group)
{
    struct idx_file f;

    idx_close(idx);
    idx = NULL;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        idx_t *c;
        struct idx_file g = mkfile(IDX_ROOT_ID, "synced", S_IFREG | 0644, 1);
        if (idx_open(db_path, &c) != 0 || idx_set_group_commit(c, 60000) != 0 ||
            idx_put(c, &g) != 0 || idx_sync(c) != 0)
            _exit(2);
        g = mkfile(IDX_ROOT_ID, "open", S_IFREG | 0644, 1);
        if (idx_put(c, &g) != 0)
            _exit(3);
        kill(getpid(), SIGKILL);
        _exit(0);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    ck_assert_int_eq(idx_open(db_path, &idx), 0);
    ck_assert_int_eq(idx_check(idx), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "synced", &f), 0);
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "open", &f), -ENOENT);
}
END_TEST

/* idx_close commits the open group. */
START_TEST(test_group_close_commits)
{
    struct idx_file f;

    ck_assert_int_eq(idx_set_group_commit(idx, 60000), 0);
    put_file(IDX_ROOT_ID, "a", 10);
    reopen();
    ck_assert_int_eq(idx_lookup(idx, IDX_ROOT_ID, "a", &f), 0);
}
END_TEST

static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *index_suite(void)
{
    Suite *s = suite_create("index");
    TCase *tc;

    tc = tcase(s, "open");
    tcase_add_test(tc, test_open_creates_root_dir);
    tcase_add_test(tc, test_open_missing_directory_is_enoent);
    tcase_add_test(tc, test_open_garbage_file_refused);
    tcase_add_test(tc, test_open_enables_wal);
    tcase_add_test(tc, test_schema_version_is_current);
    tcase_add_test(tc, test_schema_newer_refused);
    tcase_add_test(tc, test_schema_garbage_version_refused);
    tcase_add_test(tc, test_migrate_v1_database_in_place);
    tcase_add_test(tc, test_migrate_failure_leaves_v1_intact);
    tcase_add_test(tc, test_reopen_keeps_rows_and_cached_total);

    tc = tcase(s, "batch");
    tcase_add_test(tc, test_begin_commit_nest);
    tcase_add_test(tc, test_rollback_discards);
    tcase_add_test(tc, test_rollback_nested_abandons_whole_batch);
    tcase_add_test(tc, test_commit_without_begin_refused);
    tcase_add_test(tc, test_failed_write_inside_batch_keeps_batch);
    tcase_add_loop_test(tc, test_failed_delete_is_undone_whole, 0, 2);
    tcase_add_loop_test(tc, test_crash_mid_batch_reopens_consistent, 0, 2);

    tc = tcase(s, "meta");
    tcase_add_test(tc, test_meta_roundtrip);
    tcase_add_test(tc, test_meta_missing_is_enoent);
    tcase_add_test(tc, test_meta_small_buffer_is_erange);
    tcase_add_test(tc, test_meta_reserved_key_refused);

    tc = tcase(s, "rows");
    tcase_add_test(tc, test_put_new_row_gets_fresh_version);
    tcase_add_test(tc, test_put_versions_are_never_reused);
    tcase_add_test(tc, test_put_same_identity_keeps_version);
    tcase_add_test(tc, test_put_changed_size_bumps_version_and_drops_blocks);
    tcase_add_loop_test(tc, test_put_changed_identity_field_bumps_version, 0, 3);
    tcase_add_test(tc, test_put_keeps_list_time_when_zero);
    tcase_add_test(tc, test_put_dir_to_file_drops_children);
    tcase_add_test(tc, test_put_missing_parent_is_enoent);
    tcase_add_test(tc, test_put_under_file_is_enotdir);
    tcase_add_test(tc, test_put_root_updates_row_one);
    tcase_add_test(tc, test_put_root_as_file_refused);
    tcase_add_test(tc, test_put_bad_mode_type_refused);
    tcase_add_test(tc, test_name_max_length_accepted);
    tcase_add_test(tc, test_name_too_long_refused);
    tcase_add_test(tc, test_name_with_slash_refused);
    tcase_add_loop_test(tc, test_name_empty_or_dot_refused, 0, 3);
    tcase_add_test(tc, test_lookup_finds_row);
    tcase_add_test(tc, test_lookup_missing_is_enoent);
    tcase_add_test(tc, test_get_missing_is_enoent);
    tcase_add_test(tc, test_touch_attr_sets_time);
    tcase_add_test(tc, test_touch_attr_missing_is_enoent);
    tcase_add_test(tc, test_set_listed_sets_time);
    tcase_add_test(tc, test_set_listed_all_marks_folders_only);
    tcase_add_test(tc, test_dir_changed_moves_times_and_link_count);
    tcase_add_test(tc, test_file_written_sets_size_and_times_only);

    tc = tcase(s, "children");
    tcase_add_test(tc, test_children_iterate_in_id_order);
    tcase_add_test(tc, test_children_iterate_after_cookie);
    tcase_add_test(tc, test_children_stop_value_returned);
    tcase_add_test(tc, test_children_callback_may_call_index);

    tc = tcase(s, "delete");
    tcase_add_test(tc, test_delete_removes_subtree_and_calls_gone);
    tcase_add_test(tc, test_delete_missing_is_enoent);
    tcase_add_test(tc, test_delete_root_refused);
    tcase_add_test(tc, test_resolve_walks_paths_from_the_root);
    tcase_add_test(tc, test_path_follows_renames_deletes_and_rollbacks);
    tcase_add_test(tc, test_row_ids_never_reused);
    tcase_add_test(tc, test_blocks_truncate_drops_from_block_and_keeps_totals);
    tcase_add_test(tc, test_rename_moves_subtree_keeping_ids_and_blocks);
    tcase_add_test(tc, test_rename_replaces_target_and_calls_gone);
    tcase_add_test(tc, test_rename_refuses_beneath_itself_root_and_bad_names);
    tcase_add_test(tc, test_link_names_one_file);
    tcase_add_test(tc, test_link_delete_names);
    tcase_add_test(tc, test_link_survives_subtree_delete);
    tcase_add_test(tc, test_link_rename_and_put);
    tcase_add_test(tc, test_link_pruned_with_listing);
    tcase_add_test(tc, test_delete_in_batch_calls_gone_after_commit);
    tcase_add_test(tc, test_delete_in_rolled_back_batch_never_calls_gone);
    tcase_add_test(tc, test_prune_removes_unseen_children_recursively);
    tcase_add_test(tc, test_prune_missing_dir_is_enoent);
    tcase_add_test(tc, test_prune_keeps_children_with_journal_rows);

    tc = tcase(s, "link");
    tcase_add_test(tc, test_link_roundtrip);
    tcase_add_test(tc, test_link_small_buffer_is_erange);
    tcase_add_test(tc, test_link_on_non_symlink_refused);
    tcase_add_test(tc, test_link_absent_is_enoent);
    tcase_add_test(tc, test_link_too_long_refused);
    tcase_add_test(tc, test_link_cleared_when_identity_changes);

    tc = tcase(s, "blocks");
    tcase_add_test(tc, test_block_put_get_roundtrip);
    tcase_add_test(tc, test_block_put_refuses_stale_version);
    tcase_add_test(tc, test_block_put_missing_file_is_enoent);
    tcase_add_test(tc, test_block_get_missing_is_enoent);
    tcase_add_test(tc, test_cached_bytes_tracks_put_uncache_drop);
    tcase_add_test(tc, test_blocks_iterate_in_blkno_order);
    tcase_add_test(tc, test_blocks_stop_value_returned);

    tc = tcase(s, "evict");
    tcase_add_test(tc, test_evict_lru_order);
    tcase_add_test(tc, test_evict_touch_moves_file_to_back);
    tcase_add_test(tc, test_evict_never_touches_pinned_file);
    tcase_add_test(tc, test_pin_is_counted);
    tcase_add_test(tc, test_pins_survive_many_files);
    tcase_add_test(tc, test_evict_commits_before_callback);
    tcase_add_test(tc, test_evict_under_budget_is_noop);
    tcase_add_test(tc, test_evict_in_batch_is_ebusy);
    tcase_add_test(tc, test_reopen_continues_lru_order);

    tc = tcase(s, "check");
    tcase_add_test(tc, test_check_sound_index_passes);
    tcase_add_test(tc, test_check_detects_stale_block);
    tcase_add_test(tc, test_check_detects_cached_total_drift);
    tcase_add_test(tc, test_check_detects_orphan_row);

    tc = tcase(s, "dirty");
    tcase_add_test(tc, test_block_dirty_roundtrip);
    tcase_add_test(tc, test_blocks_iterator_returns_dirty);
    tcase_add_test(tc, test_block_put_dirty_uncached_refused);
    tcase_add_test(tc, test_block_put_clean_over_dirty_refused);
    tcase_add_test(tc, test_put_change_over_dirty);
    tcase_add_test(tc, test_block_uncache_dirty_refused);
    tcase_add_test(tc, test_dirty_bytes_tracks_put_clean_drop_rollback);
    tcase_add_test(tc, test_blocks_clean_clears_only_the_range);
    tcase_add_test(tc, test_blocks_clean_refuses_stale_version_missing_file_bad_range);
    tcase_add_test(tc, test_blocks_clean_keeps_block_written_after_its_row_was_handed_out);
    tcase_add_test(tc, test_blocks_clean_after_row_handed_out_cleans_earlier_writes);
    tcase_add_test(tc, test_evict_never_picks_dirty_block);
    tcase_add_test(tc, test_evict_meets_budget_with_clean_blocks_only);
    tcase_add_test(tc, test_evict_pinned_file_keeps_dirty_block_after_unpin);
    tcase_add_test(tc, test_put_refuses_identity_change_with_dirty_blocks);
    tcase_add_loop_test(tc, test_put_identity_change_after_clean_or_drop, 0, 2);
    tcase_add_test(tc, test_put_dir_to_file_refused_with_dirty_descendant);
    tcase_add_test(tc, test_put_keep_version_keeps_version_blocks_and_link);
    tcase_add_test(tc, test_put_keep_version_refuses_type_change);
    tcase_add_test(tc, test_put_keep_version_new_row_gets_fresh_version);
    tcase_add_test(tc, test_check_detects_dirty_uncached_block);
    tcase_add_test(tc, test_check_detects_dirty_total_drift);

    tc = tcase(s, "journal");
    tcase_add_test(tc, test_journal_add_scan_roundtrip);
    tcase_add_loop_test(tc, test_journal_write_merges_with_last_row, 0, 3);
    tcase_add_loop_test(tc, test_journal_write_not_merged, 0, 4);
    tcase_add_test(tc, test_journal_write_never_merges_across_another_operation);
    tcase_add_test(tc, test_journal_write_never_merges_past_a_done_row);
    tcase_add_test(tc, test_journal_write_never_extends_handed_out_row);
    tcase_add_test(tc, test_journal_scan_pages_in_order_within_max);
    tcase_add_test(tc, test_journal_scan_stop_value_returned);
    tcase_add_test(tc, test_journal_scan_callback_may_call_index);
    tcase_add_test(tc, test_journal_scan_in_batch_is_ebusy);
    tcase_add_test(tc, test_journal_scan_refuses_corrupt_row);
    tcase_add_test(tc, test_journal_done_removes_row);
    tcase_add_test(tc, test_journal_done_missing_is_enoent);
    tcase_add_test(tc, test_journal_count_by_file_and_seq);
    tcase_add_test(tc, test_journal_seq_increases_across_reopen_when_emptied);
    tcase_add_test(tc, test_journal_rollback_removes_row_and_change);
    tcase_add_test(tc, test_journal_commit_keeps_row_and_change);
    tcase_add_loop_test(tc, test_journal_crash_mid_batch_leaves_neither, 0, 2);
    tcase_add_test(tc, test_journal_path_max_accepted);
    tcase_add_loop_test(tc, test_journal_path_too_long_refused, 0, 2);
    tcase_add_loop_test(tc, test_journal_bad_entry_refused, 0, 6);
    tcase_add_test(tc, test_journal_failed_add_keeps_batch_and_seq);
    tcase_add_test(tc, test_journal_failed_commit_leaves_no_row_nor_seq);
    tcase_add_test(tc, test_check_detects_bad_journal_kind);

    tc = tcase(s, "threads");
    tcase_add_test(tc, test_concurrent_writers_from_threads);

    tc = tcase(s, "group commit");
    tcase_add_test(tc, test_group_keeps_batches_until_sync);
    tcase_add_test(tc, test_group_rollback_is_the_batch_only);
    tcase_add_test(tc, test_group_gone_after_commit);
    tcase_add_test(tc, test_group_committed_by_timer);
    tcase_add_test(tc, test_group_killed_keeps_last_group);
    tcase_add_test(tc, test_group_close_commits);
    return s;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    SRunner *sr;
    int failed;

    snprintf(root_dir, sizeof(root_dir), "%s/test_index.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(root_dir) == NULL) {
        perror("test_index: cannot make a temporary directory");
        return EXIT_FAILURE;
    }
    sr = srunner_create(index_suite());
    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_tree(root_dir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
