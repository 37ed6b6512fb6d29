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

/* Run SQL on the database through a second, raw connection (sees committed state only). */
static void raw_exec(const char *sql)
{
    sqlite3 *db;
    char *err = NULL;

    ck_assert_int_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        ck_abort_msg("raw sql '%s' failed: %s", sql, err);
    sqlite3_close(db);
}

/* One integer from a raw connection. */
static long long raw_query(const char *sql)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    long long v = -1;

    ck_assert_int_eq(sqlite3_open(db_path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
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
    tcase_add_test(tc, test_rename_moves_subtree_keeping_ids_and_blocks);
    tcase_add_test(tc, test_rename_replaces_target_and_calls_gone);
    tcase_add_test(tc, test_rename_refuses_beneath_itself_root_and_bad_names);
    tcase_add_test(tc, test_delete_in_batch_calls_gone_after_commit);
    tcase_add_test(tc, test_delete_in_rolled_back_batch_never_calls_gone);
    tcase_add_test(tc, test_prune_removes_unseen_children_recursively);
    tcase_add_test(tc, test_prune_missing_dir_is_enoent);

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

    tc = tcase(s, "threads");
    tcase_add_test(tc, test_concurrent_writers_from_threads);
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
