/* test_watch.c - unit tests of the recursive inotify watcher (fsync/watch.h), on real inotify. */
#include "watch.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_S 60
#define IDLE_MS   400  /* a phase is over when no batch came for this long after one did */
#define LIMIT_MS  8000 /* ... or after this long in all */

static char root_dir[1024]; /* made by main, removed with everything in it at the end */
static char base[1100];     /* one per test, under root_dir */
static char tree[1200];     /* the watched root: base/tree */
static char outside[1200];  /* a directory outside the watched tree: base/out */
static fw_t *w;

struct rec {
    enum fw_kind kind;
    char *path, *from;
    bool is_dir;
};

static struct rec *recs; /* events received since reset() */
static size_t nrecs, caprecs, nbatches;

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An absolute path below the watched tree (or outside it, for "@name"); four rotate. */
static const char *P(const char *fmt, ...)
{
    static char bufs[4][4096];
    static int i;
    char rel[1024];
    char *b = bufs[i++ % 4];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(rel, sizeof(rel), fmt, ap);
    va_end(ap);
    if (rel[0] == '@')
        snprintf(b, sizeof(bufs[0]), "%s/%s", outside, rel + 1);
    else
        snprintf(b, sizeof(bufs[0]), "%s/%s", tree, rel);
    return b;
}

static void put(const char *path, const char *data, int flags)
{
    int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);

    ck_assert_msg(fd >= 0, "cannot open '%s': %s", path, strerror(errno));
    ck_assert_int_eq(write(fd, data, strlen(data)), (ssize_t)strlen(data));
    ck_assert_int_eq(close(fd), 0);
}

static void mkd(const char *path)
{
    ck_assert_msg(mkdir(path, 0755) == 0, "cannot mkdir '%s': %s", path, strerror(errno));
}

static void mv(const char *from, const char *to)
{
    ck_assert_msg(rename(from, to) == 0, "cannot rename '%s' to '%s': %s", from, to,
                  strerror(errno));
}

static void rm(const char *path)
{
    ck_assert_msg(remove(path) == 0, "cannot remove '%s': %s", path, strerror(errno));
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

static void reset(void)
{
    size_t i;

    for (i = 0; i < nrecs; i++) {
        free(recs[i].path);
        free(recs[i].from);
    }
    nrecs = 0;
    nbatches = 0;
}

static int collect(void *arg, const struct fw_event *ev, size_t n)
{
    size_t i;

    (void)arg;
    ck_assert_uint_gt(n, 0);
    for (i = 0; i < n; i++) {
        if (nrecs == caprecs) {
            caprecs = caprecs ? caprecs * 2 : 64;
            recs = realloc(recs, caprecs * sizeof(*recs));
            ck_assert_ptr_nonnull(recs);
        }
        recs[nrecs].kind = ev[i].kind;
        recs[nrecs].path = strdup(ev[i].path);
        recs[nrecs].from = ev[i].from ? strdup(ev[i].from) : NULL;
        recs[nrecs].is_dir = ev[i].is_dir;
        ck_assert_msg((ev[i].kind == FW_RENAMED) == (ev[i].from != NULL),
                      "'from' must be set for FW_RENAMED only (event %zu)", i);
        nrecs++;
    }
    nbatches++;
    return 0;
}

/* Run fw_process in a poll loop until IDLE_MS passed without a batch after at least one came, or
 * LIMIT_MS in all. */
static void settle(void)
{
    int64_t start = now_ms(), last = -1, now;
    struct pollfd pfd = {.fd = fw_fd(w), .events = POLLIN};

    while ((now = now_ms()) - start < LIMIT_MS && (last < 0 || now - last < IDLE_MS)) {
        int t = fw_timeout_ms(w), wait = 20;
        size_t before = nbatches;
        if (t >= 0 && t < wait)
            wait = t;
        int r;

        poll(&pfd, 1, wait);
        if ((r = fw_process(w, collect, NULL)) == -ESTALE)
            break; /* the root went: test_root_removed_is_removed_then_estale */
        ck_assert_msg(r == 0, "fw_process returned %d", r);
        if (nbatches > before)
            last = now_ms();
    }
}

static void start_with(const struct fw_config *cfg)
{
    int r = fw_open(tree, cfg, &w);

    ck_assert_msg(r == 0, "fw_open('%s') returned %d (%s)", tree, r, strerror(-r));
}

static void start(void)
{
    struct fw_config cfg = {.quiet_ms = 50, .max_ms = 3000};

    start_with(&cfg);
}

static const char *const kind_name[] = {"CHANGED", "REMOVED", "RENAMED", "RESCAN"};

static void render_one(const struct rec *r, char *out, size_t len)
{
    const char *path = r->path[0] ? r->path : ".";
    const char *slash = r->is_dir && r->path[0] ? "/" : "";

    if (r->kind == FW_RENAMED)
        snprintf(out, len, "RENAMED %s%s -> %s%s", r->from, slash, path, slash);
    else
        snprintf(out, len, "%s %s%s", kind_name[r->kind], path, slash);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Join the n strings v with ", " into out, sorted first when 'sorted'. */
static void join(char **v, size_t n, bool sorted, char *out, size_t len)
{
    size_t i, o = 0;

    if (sorted)
        qsort(v, n, sizeof(*v), cmp_str);
    out[0] = '\0';
    for (i = 0; i < n && o < len; i++)
        o += (size_t)snprintf(out + o, len - o, "%s%s", i ? ", " : "", v[i]);
}

/* What was received, as "KIND path[/], ..." (directories end in '/', the root is "."). */
static char *got(bool sorted)
{
    static char out[1 << 16];
    char **v = calloc(nrecs + 1, sizeof(*v));
    size_t i;

    ck_assert_ptr_nonnull(v);
    for (i = 0; i < nrecs; i++) {
        v[i] = malloc(PATH_MAX + 64);
        ck_assert_ptr_nonnull(v[i]);
        render_one(&recs[i], v[i], PATH_MAX + 64);
    }
    join(v, nrecs, sorted, out, sizeof(out));
    for (i = 0; i < nrecs; i++)
        free(v[i]);
    free(v);
    return out;
}

/* s cut to what a Check message can carry. */
static const char *shown(const char *s)
{
    static char out[2][1100];
    static int i;
    char *o = out[i++ % 2];

    if (strlen(s) < 1000)
        return s;
    snprintf(o, sizeof(out[0]), "%.1000s ... (%zu events)", s, nrecs);
    return o;
}

/* 'want' (", "-separated) sorted, for comparison with got(true). */
static char *sorted_list(const char *want)
{
    static char out[1 << 16];
    char *copy = strdup(want), *v[512], *save = NULL, *tok;
    size_t n = 0;

    ck_assert_ptr_nonnull(copy);
    for (tok = strtok_r(copy, ",", &save); tok && n < 512; tok = strtok_r(NULL, ",", &save))
        v[n++] = tok + (tok[0] == ' ');
    join(v, n, true, out, sizeof(out));
    free(copy);
    return out;
}

/* Wait for the phase to end; the events must be exactly 'want', in this order. */
static void expect(const char *want)
{
    char *g;

    settle();
    g = got(false);
    ck_assert_msg(strcmp(g, want) == 0, "expected events [%s], got [%s] in %zu batches", want,
                  shown(g), nbatches);
}

/* Wait for the phase to end; the events must be 'want', in any order. */
static void expect_set(const char *want)
{
    char *g, *s;

    settle();
    g = got(true);
    s = sorted_list(want);
    ck_assert_msg(strcmp(g, s) == 0, "expected events {%s}, got {%s} in %zu batches", s, shown(g),
                  nbatches);
}

static void expect_batches(size_t n)
{
    ck_assert_msg(nbatches == n, "expected %zu batch(es), got %zu: [%s]", n, nbatches,
                  shown(got(false)));
}

/* Position of the event rendered as 'what' among those received, or -1. */
static long position(const char *what)
{
    char s[PATH_MAX + 64];
    size_t i;

    for (i = 0; i < nrecs; i++) {
        render_one(&recs[i], s, sizeof(s));
        if (strcmp(s, what) == 0)
            return (long)i;
    }
    return -1;
}

/* The watches the kernel holds for the watcher's descriptor, checked against its own count. */
static uint64_t watches(void)
{
    struct fw_stats st;
    char path[64], line[512];
    uint64_t n = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fw_fd(w));
    f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open '%s': %s", path, strerror(errno));
    while (fgets(line, sizeof(line), f))
        n += strncmp(line, "inotify wd:", 11) == 0;
    fclose(f);
    fw_get_stats(w, &st);
    ck_assert_msg(st.watches == n, "the kernel holds %llu watches, the stats say %llu",
                  (unsigned long long)n, (unsigned long long)st.watches);
    return n;
}

static void setup(void)
{
    snprintf(base, sizeof(base), "%s/t.XXXXXX", root_dir);
    ck_assert_ptr_nonnull(mkdtemp(base));
    snprintf(tree, sizeof(tree), "%s/tree", base);
    snprintf(outside, sizeof(outside), "%s/out", base);
    mkd(tree);
    mkd(outside);
    w = NULL;
    reset();
}

static void teardown(void)
{
    fw_close(w);
    w = NULL;
    reset();
    free(recs);
    recs = NULL;
    caprecs = 0;
    remove_tree(base);
}

/* ---- single files ---- */

/* A single-file share: only the folder itself is watched, not the folders beside the file */
START_TEST(test_only_watches_the_folder_not_its_subfolders)
{
    struct fw_config cfg = {.quiet_ms = 50, .max_ms = 3000, .only = "a"};
    mkd(P("sub"));
    mkd(P("sub/deeper"));
    put(P("a"), "x", O_TRUNC);
    start_with(&cfg);
    ck_assert_msg(watches() == 1, "expected the folder alone watched, got %llu watches",
                  (unsigned long long)watches());
}
END_TEST

START_TEST(test_create_file_is_one_changed)
{
    start();
    put(P("f"), "hello", O_TRUNC);
    expect("CHANGED f");
    expect_batches(1);
}
END_TEST

START_TEST(test_write_existing_file_is_changed)
{
    put(P("f"), "old", O_TRUNC);
    start();
    put(P("f"), "new", 0);
    expect("CHANGED f");
}
END_TEST

START_TEST(test_append_is_changed)
{
    put(P("f"), "old", O_TRUNC);
    start();
    put(P("f"), "more", O_APPEND);
    expect("CHANGED f");
}
END_TEST

START_TEST(test_truncate_is_changed)
{
    put(P("f"), "some content", O_TRUNC);
    start();
    ck_assert_int_eq(truncate(P("f"), 3), 0);
    expect("CHANGED f");
}
END_TEST

START_TEST(test_chmod_is_changed)
{
    put(P("f"), "x", O_TRUNC);
    start();
    ck_assert_int_eq(chmod(P("f"), 0600), 0);
    expect("CHANGED f");
}
END_TEST

START_TEST(test_fifty_writes_are_one_event)
{
    int i;

    put(P("f"), "", O_TRUNC);
    start();
    for (i = 0; i < 50; i++)
        put(P("f"), "line\n", O_APPEND);
    expect("CHANGED f");
    expect_batches(1);
}
END_TEST

START_TEST(test_delete_is_removed)
{
    put(P("f"), "x", O_TRUNC);
    start();
    rm(P("f"));
    expect("REMOVED f");
}
END_TEST

START_TEST(test_created_then_removed_in_batch_is_not_reported)
{
    start();
    put(P("tmp"), "x", O_TRUNC);
    rm(P("tmp"));
    put(P("marker"), "x", O_TRUNC);
    expect("CHANGED marker");
}
END_TEST

/* With 'transient' (the agent's setting), the removal is reported: the SFTP client that made the
 * file knows it, though the consumer never indexed it */
START_TEST(test_created_then_removed_in_batch_is_removed_when_transient)
{
    start_with(&(struct fw_config){.quiet_ms = 50, .max_ms = 3000, .transient = true});
    put(P("tmp"), "x", O_TRUNC);
    rm(P("tmp"));
    put(P("marker"), "x", O_TRUNC);
    expect("REMOVED tmp, CHANGED marker");
}
END_TEST

START_TEST(test_removed_then_recreated_is_changed)
{
    put(P("f"), "x", O_TRUNC);
    start();
    rm(P("f"));
    put(P("f"), "y", O_TRUNC);
    expect("CHANGED f");
}
END_TEST

START_TEST(test_editor_atomic_save_is_one_changed_of_final_path)
{
    put(P("doc.txt"), "version 1", O_TRUNC);
    start();
    put(P(".doc.txt.swp"), "version 2", O_TRUNC);
    mv(P(".doc.txt.swp"), P("doc.txt"));
    expect("CHANGED doc.txt");
    expect_batches(1);
}
END_TEST

START_TEST(test_root_attributes_are_changed_of_root)
{
    start();
    ck_assert_int_eq(chmod(tree, 0700), 0);
    expect("CHANGED .");
}
END_TEST

/* ---- renames ---- */

START_TEST(test_rename_within_dir_is_renamed)
{
    put(P("a"), "x", O_TRUNC);
    start();
    mv(P("a"), P("b"));
    expect("RENAMED a -> b");
}
END_TEST

START_TEST(test_rename_across_dirs_is_renamed)
{
    mkd(P("d1"));
    mkd(P("d2"));
    put(P("d1/a"), "x", O_TRUNC);
    start();
    mv(P("d1/a"), P("d2/a"));
    expect("RENAMED d1/a -> d2/a");
}
END_TEST

START_TEST(test_rename_then_write_reports_rename_first)
{
    put(P("a"), "x", O_TRUNC);
    start();
    mv(P("a"), P("b"));
    put(P("b"), "y", O_APPEND);
    expect("RENAMED a -> b, CHANGED b");
    expect_batches(1);
}
END_TEST

START_TEST(test_swap_through_temp_keeps_rename_order)
{
    put(P("a"), "A", O_TRUNC);
    put(P("b"), "B", O_TRUNC);
    start();
    mv(P("a"), P("t"));
    mv(P("b"), P("a"));
    mv(P("t"), P("b"));
    expect("RENAMED a -> t, RENAMED b -> a, RENAMED t -> b");
}
END_TEST

START_TEST(test_move_out_of_tree_is_removed_and_unwatched)
{
    put(P("f"), "x", O_TRUNC);
    mkd(P("d"));
    mkd(P("d/s"));
    put(P("d/g"), "x", O_TRUNC);
    start();
    ck_assert_uint_eq(watches(), 3);
    mv(P("f"), P("@f"));
    mv(P("d"), P("@d"));
    expect_set("REMOVED d/, REMOVED f");
    ck_assert_msg(watches() == 1, "expected 1 watch left (the root), got %llu",
                  (unsigned long long)watches());
    reset();
    put(P("@d/g"), "changed outside", O_APPEND);
    put(P("@d/s/h"), "made outside", O_TRUNC);
    put(P("marker"), "x", O_TRUNC);
    expect("CHANGED marker");
}
END_TEST

START_TEST(test_move_into_tree_is_changed_and_scanned)
{
    mkd(P("@m"));
    put(P("@m/x"), "x", O_TRUNC);
    mkd(P("@m/sub"));
    put(P("@m/sub/y"), "y", O_TRUNC);
    start();
    mv(P("@m"), P("m"));
    expect_set("CHANGED m/, CHANGED m/x, CHANGED m/sub/, CHANGED m/sub/y");
    ck_assert_uint_eq(watches(), 3);
    reset();
    put(P("m/sub/y"), "more", O_APPEND);
    expect("CHANGED m/sub/y");
}
END_TEST

START_TEST(test_move_into_new_dir_is_removed_and_changed)
{
    put(P("a"), "x", O_TRUNC);
    start();
    mkd(P("n"));
    mv(P("a"), P("n/a"));
    expect_set("CHANGED n/, REMOVED a, CHANGED n/a");
    ck_assert_msg(position("CHANGED n/") < position("CHANGED n/a"),
                  "expected the new directory before its entry, got [%s]", shown(got(false)));
}
END_TEST

/* ---- directories ---- */

START_TEST(test_mkdir_deep_then_file_reports_file)
{
    start();
    mkd(P("a"));
    mkd(P("a/b"));
    mkd(P("a/b/c"));
    put(P("a/b/c/f"), "x", O_TRUNC);
    expect_set("CHANGED a/, CHANGED a/b/, CHANGED a/b/c/, CHANGED a/b/c/f");
    ck_assert_msg(position("CHANGED a/") < position("CHANGED a/b/") &&
                      position("CHANGED a/b/") < position("CHANGED a/b/c/") &&
                      position("CHANGED a/b/c/") < position("CHANGED a/b/c/f"),
                  "expected parents before children, got [%s]", shown(got(false)));
    ck_assert_uint_eq(watches(), 4);
    reset();
    put(P("a/b/c/g"), "x", O_TRUNC);
    expect("CHANGED a/b/c/g");
}
END_TEST

START_TEST(test_dir_rename_then_change_is_under_new_path)
{
    mkd(P("d"));
    mkd(P("d/sub"));
    put(P("d/x"), "x", O_TRUNC);
    put(P("d/sub/y"), "y", O_TRUNC);
    start();
    mv(P("d"), P("e"));
    expect("RENAMED d/ -> e/");
    reset();
    put(P("e/x"), "more", O_APPEND);
    put(P("e/sub/y"), "more", O_APPEND);
    expect_set("CHANGED e/x, CHANGED e/sub/y");
}
END_TEST

START_TEST(test_dir_moved_across_dirs_then_change_is_under_new_path)
{
    mkd(P("a"));
    mkd(P("b"));
    mkd(P("a/d"));
    mkd(P("a/d/sub"));
    put(P("a/d/sub/x"), "x", O_TRUNC);
    start();
    mv(P("a/d"), P("b/d"));
    expect("RENAMED a/d/ -> b/d/");
    reset();
    put(P("b/d/sub/x"), "more", O_APPEND);
    put(P("b/d/y"), "new", O_TRUNC);
    expect_set("CHANGED b/d/sub/x, CHANGED b/d/y");
}
END_TEST

START_TEST(test_dir_rename_and_change_in_one_batch)
{
    mkd(P("d"));
    put(P("d/x"), "x", O_TRUNC);
    start();
    put(P("d/x"), "before", O_APPEND);
    mv(P("d"), P("e"));
    put(P("e/y"), "after", O_TRUNC);
    expect("RENAMED d/ -> e/, CHANGED e/x, CHANGED e/y");
}
END_TEST

START_TEST(test_rmdir_is_one_removed)
{
    mkd(P("d"));
    mkd(P("d/s"));
    put(P("d/f"), "x", O_TRUNC);
    put(P("d/s/g"), "x", O_TRUNC);
    start();
    ck_assert_uint_eq(watches(), 3);
    rm(P("d/s/g"));
    rm(P("d/s"));
    rm(P("d/f"));
    rm(P("d"));
    expect("REMOVED d/");
    ck_assert_msg(watches() == 1, "expected 1 watch left, got %llu", (unsigned long long)watches());
}
END_TEST

START_TEST(test_parent_reported_before_children)
{
    mkd(P("d"));
    put(P("d/x"), "x", O_TRUNC);
    start();
    put(P("d/x"), "more", O_APPEND);
    ck_assert_int_eq(chmod(P("d"), 0700), 0);
    expect("CHANGED d/, CHANGED d/x");
}
END_TEST

START_TEST(test_dir_replaced_is_removed_then_changed)
{
    mkd(P("d"));
    put(P("d/f"), "x", O_TRUNC);
    start();
    rm(P("d/f"));
    rm(P("d"));
    mkd(P("d"));
    put(P("d/g"), "x", O_TRUNC);
    expect("REMOVED d/, CHANGED d/, CHANGED d/g");
}
END_TEST

START_TEST(test_symlink_is_changed_not_followed)
{
    mkd(P("@t"));
    mkd(P("d"));
    start();
    ck_assert_int_eq(symlink(P("@t"), P("l")), 0);
    mkd(P("n"));
    ck_assert_int_eq(symlink(P("@t"), P("n/out")), 0);
    ck_assert_int_eq(symlink("../d", P("n/in")), 0);
    expect_set("CHANGED l, CHANGED n/, CHANGED n/out, CHANGED n/in");
    ck_assert_msg(watches() == 3, "expected 3 watches (root, d, n), got %llu",
                  (unsigned long long)watches());
    reset();
    put(P("@t/f"), "x", O_TRUNC);
    put(P("d/x"), "x", O_TRUNC);
    expect("CHANGED d/x");
}
END_TEST

/* ---- coalescing, limits ---- */

START_TEST(test_thousand_files_arrive_in_few_batches)
{
    struct fw_config cfg = {.quiet_ms = 150, .max_ms = 5000};
    int i, status;
    pid_t pid;

    start_with(&cfg);
    /* a writer of its own, pausing now and then, while this process runs the watcher */
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        for (i = 0; i < 1000; i++) {
            int fd = open(P("f%04d", i), O_WRONLY | O_CREAT | O_TRUNC, 0644);

            if (fd < 0 || write(fd, "data", 4) != 4 || close(fd) != 0)
                _exit(1);
            if (i % 10 == 9)
                usleep(2000);
        }
        _exit(0);
    }
    settle();
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the writer failed");
    ck_assert_msg(nbatches >= 1 && nbatches <= 3, "expected 1 to 3 batches, got %zu", nbatches);
    ck_assert_msg(nrecs == 1000, "expected 1000 events, got %zu", nrecs);
    for (i = 0; i < 1000; i++) {
        char want[64];

        snprintf(want, sizeof(want), "CHANGED f%04d", i);
        ck_assert_msg(position(want) >= 0, "expected '%s' among the events, missing", want);
    }
}
END_TEST

START_TEST(test_pending_cap_degrades_to_rescan)
{
    struct fw_config cfg = {.quiet_ms = 50, .max_ms = 3000, .max_pending = 100};
    int i;

    mkd(P("@big"));
    for (i = 0; i < 300; i++)
        put(P("@big/f%d", i), "x", O_TRUNC);
    start_with(&cfg);
    mv(P("@big"), P("big"));
    expect("RESCAN .");
    ck_assert_uint_eq(watches(), 2);
    reset();
    put(P("big/f7"), "more", O_APPEND);
    expect("CHANGED big/f7");
}
END_TEST

START_TEST(test_half_full_batch_is_delivered_without_waiting)
{
    struct fw_config cfg = {.quiet_ms = 3000, .max_ms = 10000, .max_pending = 100};
    int64_t t0;
    int i;

    start_with(&cfg);
    for (i = 0; i < 60; i++)
        put(P("f%d", i), "x", O_TRUNC);
    t0 = now_ms();
    while (nbatches == 0 && now_ms() - t0 < 2000) {
        struct pollfd pfd = {.fd = fw_fd(w), .events = POLLIN};

        poll(&pfd, 1, 20);
        ck_assert_int_eq(fw_process(w, collect, NULL), 0);
    }
    ck_assert_msg(nbatches == 1, "expected a batch before quiet_ms (3 s) with 60 of 100 paths "
                                 "pending, got none in 2 s");
    ck_assert_msg(nrecs == 60 && position("CHANGED f59") >= 0,
                  "expected 60 CHANGED events, got %zu: [%s]", nrecs, shown(got(false)));
}
END_TEST

START_TEST(test_root_removed_is_removed_then_estale)
{
    int r;

    start();
    ck_assert_int_eq(rmdir(tree), 0);
    expect("REMOVED .");
    r = fw_process(w, collect, NULL);
    ck_assert_msg(r == -ESTALE, "expected -ESTALE after the root went, got %d", r);
    ck_assert_int_eq(fw_timeout_ms(w), -1);
}
END_TEST

START_TEST(test_timeout_is_infinite_when_idle_and_bounded_when_pending)
{
    int t;

    start();
    t = fw_timeout_ms(w);
    ck_assert_msg(t == -1, "expected -1 with nothing pending, got %d", t);
    put(P("f"), "x", O_TRUNC);
    usleep(10000);
    ck_assert_int_eq(fw_process(w, collect, NULL), 0);
    t = fw_timeout_ms(w);
    ck_assert_msg(t >= 0 && t <= 50, "expected 0..50 ms with a batch pending, got %d", t);
    expect("CHANGED f");
    t = fw_timeout_ms(w);
    ck_assert_msg(t == -1, "expected -1 after delivery, got %d", t);
}
END_TEST

START_TEST(test_open_missing_root_is_enoent)
{
    int r = fw_open(P("missing"), NULL, &w);

    ck_assert_msg(r == -ENOENT, "expected -ENOENT, got %d", r);
    ck_assert_ptr_null(w);
}
END_TEST

START_TEST(test_open_file_root_is_enotdir)
{
    int r;

    put(P("f"), "x", O_TRUNC);
    r = fw_open(P("f"), NULL, &w);
    ck_assert_msg(r == -ENOTDIR, "expected -ENOTDIR, got %d", r);
    ck_assert_ptr_null(w);
}
END_TEST

static int write_proc(const char *path, const char *val)
{
    int fd = open(path, O_WRONLY);
    ssize_t n;

    if (fd < 0)
        return -errno;
    n = write(fd, val, strlen(val));
    close(fd);
    return n == (ssize_t)strlen(val) ? 0 : -EIO;
}

/* Enter a user namespace of our own (root mapped to root) whose inotify watch limit is 'max', so
 * that lowering it touches no other process. */
static int limit_watches(int max)
{
    char val[32];
    int r;

    if (unshare(CLONE_NEWUSER) != 0)
        return -errno;
    snprintf(val, sizeof(val), "%d", max);
    if ((r = write_proc("/proc/self/setgroups", "deny")) != 0 ||
        (r = write_proc("/proc/self/uid_map", "0 0 1")) != 0 ||
        (r = write_proc("/proc/self/gid_map", "0 0 1")) != 0 ||
        (r = write_proc("/proc/sys/user/max_inotify_watches", val)) != 0)
        return r;
    return 0;
}

START_TEST(test_unwatchable_dir_is_rescan)
{
    char res[8192];
    size_t n = 0;
    ssize_t k;
    int pfd[2], status;
    pid_t pid;

    /* a process of its own: the user namespace cannot be left */
    ck_assert_int_eq(pipe(pfd), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int r;

        close(pfd[0]);
        if ((r = limit_watches(2)) != 0) {
            dprintf(pfd[1], "cannot lower the watch limit: %s", strerror(-r));
            _exit(1);
        }
        if ((r = fw_open(tree, &(struct fw_config){.quiet_ms = 50, .max_ms = 3000}, &w)) != 0) {
            dprintf(pfd[1], "fw_open returned %d", r);
            _exit(1);
        }
        mkd(P("a"));
        mkd(P("b"));
        settle();
        dprintf(pfd[1], "%s; watches %llu", got(true), (unsigned long long)watches());
        _exit(0);
    }
    close(pfd[1]);
    while (n < sizeof(res) - 1 && (k = read(pfd[0], res + n, sizeof(res) - 1 - n)) > 0)
        n += (size_t)k;
    res[n] = '\0';
    close(pfd[0]);
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the test process failed: %s",
                  res);
    ck_assert_msg(strcmp(res, "CHANGED a/, RESCAN b/; watches 2") == 0,
                  "expected [CHANGED a/, RESCAN b/; watches 2], got [%s]", res);
}
END_TEST

/* ---- queue overflow ---- */

/* The kernel queue of an instance holds fs.inotify.max_queued_events events (the value when the
 * instance was made). That limit is global: rather than lower it under other processes, the test
 * makes more events than it allows, alternating two files so that none merges with the one
 * before it, and reads nothing meanwhile. */
START_TEST(test_overflow_is_rescan_and_watching_resumes)
{
    char a[4096], b[4096], line[32] = "";
    struct fw_stats st;
    long limit, i;
    FILE *f;

    f = fopen("/proc/sys/fs/inotify/max_queued_events", "r");
    ck_assert_msg(f != NULL, "cannot read fs.inotify.max_queued_events: %s", strerror(errno));
    ck_assert_ptr_nonnull(fgets(line, sizeof(line), f));
    fclose(f);
    limit = strtol(line, NULL, 10);
    ck_assert_msg(limit > 0 && limit <= (4L << 20), "fs.inotify.max_queued_events is '%s'", line);
    put(P("a"), "x", O_TRUNC);
    put(P("b"), "x", O_TRUNC);
    snprintf(a, sizeof(a), "%s", P("a"));
    snprintf(b, sizeof(b), "%s", P("b"));
    start();

    for (i = 0; i < limit + 1000; i++)
        ck_assert_int_eq(chmod(i % 2 ? a : b, i % 4 < 2 ? 0600 : 0644), 0);
    mkd(P("newdir")); /* its event is lost: only the re-sync can find it */
    put(P("newdir/early"), "x", O_TRUNC);
    settle();
    fw_get_stats(w, &st);
    ck_assert_msg(st.overflows >= 1, "expected an overflow, stats say %llu",
                  (unsigned long long)st.overflows);
    ck_assert_msg(position("RESCAN .") >= 0, "expected 'RESCAN .' among the events, got [%s]",
                  shown(got(false)));
    ck_assert_msg(watches() == 2, "expected newdir watched after the re-sync, got %llu watches",
                  (unsigned long long)watches());
    reset();
    put(P("newdir/g"), "x", O_TRUNC);
    put(P("a"), "x", O_APPEND);
    expect_set("CHANGED newdir/g, CHANGED a");
}
END_TEST

static Suite *watch_suite(void)
{
    Suite *s = suite_create("watch");
    TCase *tc;

    tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    tcase_add_test(tc, test_create_file_is_one_changed);
    tcase_add_test(tc, test_only_watches_the_folder_not_its_subfolders);
    tcase_add_test(tc, test_write_existing_file_is_changed);
    tcase_add_test(tc, test_append_is_changed);
    tcase_add_test(tc, test_truncate_is_changed);
    tcase_add_test(tc, test_chmod_is_changed);
    tcase_add_test(tc, test_fifty_writes_are_one_event);
    tcase_add_test(tc, test_delete_is_removed);
    tcase_add_test(tc, test_created_then_removed_in_batch_is_not_reported);
    tcase_add_test(tc, test_created_then_removed_in_batch_is_removed_when_transient);
    tcase_add_test(tc, test_removed_then_recreated_is_changed);
    tcase_add_test(tc, test_editor_atomic_save_is_one_changed_of_final_path);
    tcase_add_test(tc, test_root_attributes_are_changed_of_root);
    suite_add_tcase(s, tc);

    tc = tcase_create("renames");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    tcase_add_test(tc, test_rename_within_dir_is_renamed);
    tcase_add_test(tc, test_rename_across_dirs_is_renamed);
    tcase_add_test(tc, test_rename_then_write_reports_rename_first);
    tcase_add_test(tc, test_swap_through_temp_keeps_rename_order);
    tcase_add_test(tc, test_move_out_of_tree_is_removed_and_unwatched);
    tcase_add_test(tc, test_move_into_tree_is_changed_and_scanned);
    tcase_add_test(tc, test_move_into_new_dir_is_removed_and_changed);
    suite_add_tcase(s, tc);

    tc = tcase_create("dirs");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    tcase_add_test(tc, test_mkdir_deep_then_file_reports_file);
    tcase_add_test(tc, test_dir_rename_then_change_is_under_new_path);
    tcase_add_test(tc, test_dir_moved_across_dirs_then_change_is_under_new_path);
    tcase_add_test(tc, test_dir_rename_and_change_in_one_batch);
    tcase_add_test(tc, test_rmdir_is_one_removed);
    tcase_add_test(tc, test_parent_reported_before_children);
    tcase_add_test(tc, test_dir_replaced_is_removed_then_changed);
    tcase_add_test(tc, test_symlink_is_changed_not_followed);
    suite_add_tcase(s, tc);

    tc = tcase_create("limits");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    tcase_add_test(tc, test_thousand_files_arrive_in_few_batches);
    tcase_add_test(tc, test_pending_cap_degrades_to_rescan);
    tcase_add_test(tc, test_half_full_batch_is_delivered_without_waiting);
    tcase_add_test(tc, test_root_removed_is_removed_then_estale);
    tcase_add_test(tc, test_timeout_is_infinite_when_idle_and_bounded_when_pending);
    tcase_add_test(tc, test_open_missing_root_is_enoent);
    tcase_add_test(tc, test_open_file_root_is_enotdir);
    tcase_add_test(tc, test_unwatchable_dir_is_rescan);
    suite_add_tcase(s, tc);

    tc = tcase_create("overflow");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    tcase_add_test(tc, test_overflow_is_rescan_and_watching_resumes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    SRunner *sr;
    int failed;

    snprintf(root_dir, sizeof(root_dir), "%s/test_watch.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(root_dir) == NULL) {
        perror("test_watch: cannot make a temporary directory");
        return EXIT_FAILURE;
    }
    sr = srunner_create(watch_suite());
    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    remove_tree(root_dir);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
