/* test_confine.c - unit tests of path confinement beneath an export root (tunnel/confine.h).
 *
 * Every test runs in a fresh temporary directory 'base' laid out as
 *
 *   base/proj/            the export root
 *       d/file            "inside"
 *       etc/passwd        "inside passwd"
 *       fa -> base/outside/secret      fr -> ../outside/secret      (outward, final)
 *       la -> base/outside             lr -> ../outside             (outward, intermediate)
 *       sib -> ../proj2/x              sibd -> ../proj2             (the sibling-prefix trap)
 *       in -> d                        fl -> d/file                 (inward)
 *       dang -> base/outside/new       dangr -> ../outside/newr     (dangling, outward)
 *   base/proj2/x          "sibling"
 *   base/outside/secret   "sentinel", mode 0640
 *   base/outside/dir/file "outside-file"
 *
 * and the files outside the root get old access and modification times (2001). A snapshot of
 * everything in base except the root (names, modes, sizes, link counts, atimes of files, mtimes,
 * ctimes, contents, link texts) is taken after setup; each attack ends with
 * expect_outside_untouched(), which proves that nothing outside was created, changed, or read
 * (the file system is mounted relatime, so a read would move an atime of 2001).
 *
 * Resolution tests run twice (Check loop index): 0 with openat2, 1 with the O_NOFOLLOW walk
 * forced. */
#include "confine.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_S 60
#define OLD_TIME  1000000000 /* 2001-09-09 */
#define RACE_NS   1000000000L

static char top[64];         /* made by main, removed with everything in it at the end */
static char base[PATH_MAX];  /* the test's temporary directory, under top */
static char rootp[PATH_MAX]; /* base/proj */
static char *outside_before; /* snapshot of base without the root, taken by setup */
static const char *const mode_name[] = {"openat2", "walk"}; /* by loop index */

/* ---- helpers ---- */

#define expect_rc(call, want)                                                                      \
    do {                                                                                           \
        int got_ = (call), want_ = (want);                                                         \
        ck_assert_msg(got_ == want_, "%s: expected %d (%s), got %d (%s)", #call, want_,            \
                      strerror(-want_), got_, got_ <= 0 ? strerror(-got_) : "a length");           \
    } while (0)

static void path_of(char *out, const char *rel)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", base, rel);
    ck_assert(n > 0 && n < PATH_MAX);
}

static void put_file(const char *rel, const char *content, mode_t mode)
{
    char p[PATH_MAX];
    int fd;

    path_of(p, rel);
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ck_assert_msg(fd >= 0, "cannot create '%s': %s", p, strerror(errno));
    ck_assert_int_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    ck_assert_int_eq(fchmod(fd, mode), 0);
    close(fd);
}

static void put_dir(const char *rel)
{
    char p[PATH_MAX];

    path_of(p, rel);
    ck_assert_msg(mkdir(p, 0755) == 0, "cannot mkdir '%s': %s", p, strerror(errno));
}

static void put_link(const char *target, const char *rel)
{
    char p[PATH_MAX];

    path_of(p, rel);
    ck_assert_msg(symlink(target, p) == 0, "cannot symlink '%s': %s", p, strerror(errno));
}

static void make_old(const char *rel)
{
    struct timespec ts[2] = {{OLD_TIME, 0}, {OLD_TIME, 0}};
    char p[PATH_MAX];

    path_of(p, rel);
    ck_assert_int_eq(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW), 0);
}

/* Whether base/rel exists (without following a symlink). */
static bool exists(const char *rel)
{
    char p[PATH_MAX];
    struct stat st;

    path_of(p, rel);
    return lstat(p, &st) == 0;
}

/* The content of a file, read without touching its atime. */
static void read_noatime(const char *p, char *buf, size_t len)
{
    int fd = open(p, O_RDONLY | O_NOATIME | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    ssize_t n = fd >= 0 ? read(fd, buf, len - 1) : -1;

    buf[n > 0 ? n : 0] = '\0';
    if (fd >= 0)
        close(fd);
}

static void expect_content(const char *rel, const char *want)
{
    char p[PATH_MAX], got[256];

    path_of(p, rel);
    read_noatime(p, got, sizeof(got));
    ck_assert_msg(strcmp(got, want) == 0, "'%s': expected content '%s', got '%s'", rel, want, got);
}

/* Open rel through the root and check that it reads exactly 'want'. */
static void expect_reads(cf_root_t *r, const char *rel, const char *want)
{
    char got[256];
    ssize_t n;
    int fd = -1;

    expect_rc(cf_openat(r, rel, O_RDONLY, 0, &fd), 0);
    n = read(fd, got, sizeof(got) - 1);
    close(fd);
    ck_assert_msg(n >= 0, "read of '%s' failed: %s", rel, strerror(errno));
    got[n] = '\0';
    ck_assert_msg(strcmp(got, want) == 0, "'%s' through the root: expected '%s', got '%s'", rel,
                  want, got);
}

/* ---- snapshots: everything observable about a tree, one sorted line per entry ---- */

static char **snap_lines;
static size_t snap_n, snap_cap;
static size_t snap_prefix;
static const char *snap_skip;

static int snap_one(const char *p, const struct stat *st, int type, struct FTW *ftw)
{
    char line[1024], extra[300] = "";
    (void)type;
    (void)ftw;

    if (snap_skip && strcmp(p, snap_skip) == 0)
        return FTW_SKIP_SUBTREE;
    if (S_ISREG(st->st_mode)) {
        char content[200];

        read_noatime(p, content, sizeof(content));
        snprintf(extra, sizeof(extra), " atime=%lld.%09ld '%s'", (long long)st->st_atim.tv_sec,
                 st->st_atim.tv_nsec, content);
    } else if (S_ISLNK(st->st_mode)) {
        char text[256];
        ssize_t n = readlink(p, text, sizeof(text) - 1);

        text[n > 0 ? n : 0] = '\0';
        snprintf(extra, sizeof(extra), " -> '%s'", text);
    } else if (S_ISCHR(st->st_mode) || S_ISBLK(st->st_mode)) {
        snprintf(extra, sizeof(extra), " rdev=%u:%u", major(st->st_rdev), minor(st->st_rdev));
    }
    snprintf(line, sizeof(line),
             "'%s' mode=%o uid=%u size=%lld nlink=%lu ino=%lu mtime=%lld.%09ld "
             "ctime=%lld.%09ld%s",
             p + snap_prefix, st->st_mode, st->st_uid, (long long)st->st_size,
             (unsigned long)st->st_nlink, (unsigned long)st->st_ino, (long long)st->st_mtim.tv_sec,
             st->st_mtim.tv_nsec, (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec, extra);
    if (snap_n == snap_cap) {
        snap_cap = snap_cap ? 2 * snap_cap : 64;
        snap_lines = realloc(snap_lines, snap_cap * sizeof(*snap_lines));
        ck_assert_ptr_nonnull(snap_lines);
    }
    snap_lines[snap_n++] = strdup(line);
    return FTW_CONTINUE;
}

static int cmp_lines(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A description of the tree at dir, leaving out the subtree at 'skip' (may be NULL). */
static char *snapshot(const char *dir, const char *skip)
{
    size_t total = 1;
    char *s, *w;

    snap_n = 0;
    snap_prefix = strlen(dir);
    snap_skip = skip;
    ck_assert_int_eq(nftw(dir, snap_one, 32, FTW_PHYS | FTW_ACTIONRETVAL), 0);
    qsort(snap_lines, snap_n, sizeof(*snap_lines), cmp_lines);
    for (size_t i = 0; i < snap_n; i++)
        total += strlen(snap_lines[i]) + 1;
    s = w = malloc(total);
    ck_assert_ptr_nonnull(s);
    for (size_t i = 0; i < snap_n; i++) {
        w = stpcpy(w, snap_lines[i]);
        *w++ = '\n';
        free(snap_lines[i]);
    }
    *w = '\0';
    return s;
}

static void expect_same_snapshot(const char *before, const char *after, const char *what)
{
    ck_assert_msg(strcmp(before, after) == 0, "%s changed.\nbefore:\n%s\nafter:\n%s", what, before,
                  after);
}

/* Nothing outside the root was created, removed, changed or read since setup. */
static void expect_outside_untouched(void)
{
    char *now = snapshot(base, rootp);

    expect_same_snapshot(outside_before, now, "something outside the root");
    free(now);
}

/* ---- fixture ---- */

static void setup(void)
{
    char p[PATH_MAX];

    snprintf(base, sizeof(base), "%s/t.XXXXXX", top);
    ck_assert_ptr_nonnull(mkdtemp(base));
    path_of(rootp, "proj");
    put_dir("proj");
    put_dir("proj/d");
    put_file("proj/d/file", "inside", 0644);
    put_dir("proj/etc");
    put_file("proj/etc/passwd", "inside passwd", 0644);
    put_dir("proj2");
    put_file("proj2/x", "sibling", 0644);
    put_dir("outside");
    put_file("outside/secret", "sentinel", 0640);
    put_dir("outside/dir");
    put_file("outside/dir/file", "outside-file", 0644);

    path_of(p, "outside/secret");
    put_link(p, "proj/fa");
    put_link("../outside/secret", "proj/fr");
    path_of(p, "outside");
    put_link(p, "proj/la");
    put_link("../outside", "proj/lr");
    put_link("../proj2/x", "proj/sib");
    put_link("../proj2", "proj/sibd");
    put_link("d", "proj/in");
    put_link("d/file", "proj/fl");
    path_of(p, "outside/new");
    put_link(p, "proj/dang");
    put_link("../outside/newr", "proj/dangr");

    make_old("proj2/x");
    make_old("outside/secret");
    make_old("outside/dir/file");
    make_old("outside/dir");
    make_old("outside");
    outside_before = snapshot(base, rootp);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void teardown(void)
{
    nftw(base, remove_one, 32, FTW_DEPTH | FTW_PHYS);
    free(outside_before);
    outside_before = NULL;
    free(snap_lines);
    snap_lines = NULL;
    snap_cap = snap_n = 0;
}

/* The root, resolving with openat2 (mode 0) or the walk (mode 1). */
static cf_root_t *open_root(int mode, bool readonly)
{
    cf_root_t *r = NULL;

    expect_rc(cf_open_root(rootp, readonly, &r), 0);
    ck_assert_ptr_nonnull(r);
    if (mode == 1) {
        cf_force_walk(r, true);
        ck_assert_msg(!cf_uses_openat2(r), "cf_force_walk did not force the walk");
    }
    return r;
}

static long long elapsed_ns(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000000000LL + (t1.tv_nsec - t0->tv_nsec);
}

/* ==== cf_clean ==== */

static void expect_clean(const char *in, const char *want)
{
    char out[PATH_MAX];
    int r = cf_clean(in, out, sizeof(out));

    ck_assert_msg(r == 0, "cf_clean('%s'): expected 0, got %d (%s)", in, r, strerror(-r));
    ck_assert_msg(strcmp(out, want) == 0, "cf_clean('%s'): expected '%s', got '%s'", in, want, out);
}

static void expect_clean_fails(const char *in, int want)
{
    char out[PATH_MAX];
    int r;

    memset(out, 'z', sizeof(out));
    r = cf_clean(in, out, sizeof(out));
    ck_assert_msg(r == want, "cf_clean('%.40s'): expected %d (%s), got %d (%s) '%.40s'", in, want,
                  strerror(-want), r, strerror(-r), r == 0 ? out : "");
    ck_assert_msg(out[0] == '\0', "cf_clean('%.40s') failed but left '%.40s' in out", in, out);
}

START_TEST(test_clean_relative_path_kept)
{
    expect_clean("a/b/c", "a/b/c");
    expect_clean("file", "file");
}
END_TEST

START_TEST(test_clean_absolute_path_is_beneath_root)
{
    expect_clean("/etc/passwd", "etc/passwd");
    expect_clean("/x", "x");
}
END_TEST

START_TEST(test_clean_double_slashes_collapse)
{
    expect_clean("//etc//passwd", "etc/passwd");
    expect_clean("a///b//", "a/b");
    expect_clean("///", ".");
}
END_TEST

START_TEST(test_clean_dot_components_removed)
{
    expect_clean("./a/./b/.", "a/b");
    expect_clean("/./a", "a");
}
END_TEST

START_TEST(test_clean_root_forms_are_dot)
{
    const char *forms[] = {"", "/", "//", ".", "./", "/./.", "a/..", "/a/b/../../"};

    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++)
        expect_clean(forms[i], ".");
}
END_TEST

START_TEST(test_clean_dotdot_inside_resolved)
{
    expect_clean("a/b/../c", "a/c");
    expect_clean("a/../b", "b");
    expect_clean("/a/b/c/../../d", "a/d");
    expect_clean("a/b/..", "a");
}
END_TEST

START_TEST(test_clean_dotdot_above_root_refused)
{
    const char *bad[] = {
        "..",   "../",     "/..",      "../x", "/../etc/passwd", "a/../..", "a/b/../../../x",
        "./..", "//..//x", "a/../../a"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_clean_fails(bad[i], -EPERM);
}
END_TEST

START_TEST(test_clean_dot_names_are_names)
{
    expect_clean("...", "...");
    expect_clean("..a/a..", "..a/a..");
    expect_clean(".hidden/. x", ".hidden/. x");
}
END_TEST

START_TEST(test_clean_n_nul_inside_refused)
{
    char out[PATH_MAX] = "zzz";

    expect_rc(cf_clean_n("a\0b", 3, out, sizeof(out)), -EINVAL);
    ck_assert_str_eq(out, "");
    expect_rc(cf_clean_n("a/b\0", 4, out, sizeof(out)), -EINVAL);
    expect_rc(cf_clean_n("\0", 1, out, sizeof(out)), -EINVAL);
    expect_rc(cf_clean_n("../\0", 4, out, sizeof(out)), -EINVAL);
}
END_TEST

START_TEST(test_clean_n_uses_length_not_terminator)
{
    char out[PATH_MAX];

    expect_rc(cf_clean_n("a\0b", 1, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "a");
    expect_rc(cf_clean_n("abc/def", 3, out, sizeof(out)), 0);
    ck_assert_str_eq(out, "abc");
    expect_rc(cf_clean_n(NULL, 0, out, sizeof(out)), 0);
    ck_assert_str_eq(out, ".");
}
END_TEST

START_TEST(test_clean_name_max_accepted)
{
    char in[NAME_MAX + 8];

    memset(in, 'x', NAME_MAX);
    in[NAME_MAX] = '\0';
    expect_clean(in, in);
}
END_TEST

START_TEST(test_clean_name_over_name_max_refused)
{
    char in[NAME_MAX + 16];

    memset(in, 'x', NAME_MAX + 1);
    in[NAME_MAX + 1] = '\0';
    expect_clean_fails(in, -ENAMETOOLONG);
    /* even when a later ".." would drop it, and in the middle of a path */
    strcat(in, "/..");
    expect_clean_fails(in, -ENAMETOOLONG);
    {
        char mid[NAME_MAX + 16] = "/a/";

        memset(mid + 3, 'x', NAME_MAX + 1);
        strcpy(mid + 3 + NAME_MAX + 1, "/b");
        expect_clean_fails(mid, -ENAMETOOLONG);
    }
}
END_TEST

/* "a/" repeated, cut to n bytes (n odd keeps it ending in a name) */
static char *long_path(size_t n)
{
    char *p = malloc(n + 1);

    ck_assert_ptr_nonnull(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (i % 2) ? '/' : 'a';
    p[n] = '\0';
    return p;
}

START_TEST(test_clean_path_below_path_max_accepted)
{
    char *in = long_path(PATH_MAX - 1);
    char out[PATH_MAX];

    expect_rc(cf_clean(in, out, sizeof(out)), 0);
    ck_assert_uint_eq(strlen(out), PATH_MAX - 1);
    free(in);
}
END_TEST

START_TEST(test_clean_path_of_path_max_refused)
{
    char *in = long_path(PATH_MAX + 1);
    char *huge = long_path(1 << 20);
    char out[PATH_MAX];

    expect_clean_fails(in, -ENAMETOOLONG);
    expect_rc(cf_clean_n(in, PATH_MAX, out, sizeof(out)), -ENAMETOOLONG);
    expect_clean_fails(huge, -ENAMETOOLONG);
    free(in);
    free(huge);
}
END_TEST

START_TEST(test_clean_small_output_refused)
{
    char out[8];

    expect_rc(cf_clean("abcd", out, 4), -ERANGE);
    ck_assert_str_eq(out, "");
    expect_rc(cf_clean("abcd", out, 5), 0);
    ck_assert_str_eq(out, "abcd");
    expect_rc(cf_clean("/", out, 1), -ERANGE);
    expect_rc(cf_clean("/", out, 2), 0);
    ck_assert_str_eq(out, ".");
}
END_TEST

/* ==== the root ==== */

START_TEST(test_open_root_missing_refused)
{
    cf_root_t *r = (cf_root_t *)&r;
    char p[PATH_MAX];

    path_of(p, "nothing-here");
    expect_rc(cf_open_root(p, false, &r), -ENOENT);
    ck_assert_ptr_eq(r, (cf_root_t *)&r);
    expect_rc(cf_open_root("", false, &r), -ENOENT);
}
END_TEST

START_TEST(test_open_root_file_refused)
{
    cf_root_t *r = NULL;
    char p[PATH_MAX];

    path_of(p, "proj/d/file");
    expect_rc(cf_open_root(p, false, &r), -ENOTDIR);
    ck_assert_ptr_null(r);
}
END_TEST

START_TEST(test_openat2_used_when_kernel_has_it)
{
    struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_BENEATH};
    long fd = syscall(SYS_openat2, AT_FDCWD, ".", &how, sizeof(how));
    cf_root_t *r = open_root(0, false);

    ck_assert_msg(cf_uses_openat2(r) == (fd >= 0), "openat2 answers %s here, but the root %s it",
                  fd >= 0 ? "ok" : strerror(errno), cf_uses_openat2(r) ? "uses" : "does not use");
    if (fd >= 0)
        close((int)fd);
    cf_force_walk(r, true);
    ck_assert(!cf_uses_openat2(r));
    cf_force_walk(r, false);
    ck_assert(cf_uses_openat2(r) == (fd >= 0));
    cf_close_root(r);
}
END_TEST

START_TEST(test_relative_root_path_survives_chdir)
{
    cf_root_t *r = NULL;

    ck_assert_int_eq(chdir(base), 0);
    expect_rc(cf_open_root("proj", false, &r), 0);
    ck_assert_int_eq(chdir("/"), 0);
    expect_reads(r, "d/file", "inside");
    cf_close_root(r);
}
END_TEST

START_TEST(test_root_replaced_is_estale)
{
    cf_root_t *r = open_root(0, false);
    char old[PATH_MAX], *around, *inside;
    struct stat st;
    DIR *dir = NULL;
    int fd = -1;

    expect_reads(r, "d/file", "inside");
    path_of(old, "proj.old");
    ck_assert_int_eq(rename(rootp, old), 0);
    put_dir("proj");
    put_dir("proj/d");
    put_file("proj/d/file", "impostor", 0644);
    around = snapshot(base, rootp);
    inside = snapshot(rootp, NULL);

    expect_rc(cf_openat(r, "d/file", O_RDONLY, 0, &fd), -ESTALE);
    expect_rc(cf_lstat(r, "d/file", &st), -ESTALE);
    expect_rc(cf_opendir(r, "d", &dir), -ESTALE);
    expect_rc(cf_openat(r, "d/new", O_WRONLY | O_CREAT, 0644, &fd), -ESTALE);
    expect_rc(cf_mkdir(r, "newdir", 0755), -ESTALE);
    expect_rc(cf_unlink(r, "d/file"), -ESTALE);
    expect_rc(cf_rename(r, "d/file", "moved", 0), -ESTALE);
    expect_rc(cf_chmod(r, "d/file", 0600), -ESTALE);
    expect_rc(cf_truncate(r, "d/file", 0), -ESTALE);
    ck_assert_int_eq(fd, -1);

    {
        char *a2 = snapshot(base, rootp), *i2 = snapshot(rootp, NULL);

        expect_same_snapshot(around, a2, "the old root or its surroundings");
        expect_same_snapshot(inside, i2, "the new directory at the root's path");
        free(a2);
        free(i2);
    }
    free(around);
    free(inside);
    cf_close_root(r);
}
END_TEST

START_TEST(test_root_removed_is_estale)
{
    cf_root_t *r = NULL;
    char p[PATH_MAX];
    struct stat st;

    put_dir("empty");
    path_of(p, "empty");
    expect_rc(cf_open_root(p, false, &r), 0);
    expect_rc(cf_lstat(r, "/", &st), 0);
    ck_assert_int_eq(rmdir(p), 0);
    expect_rc(cf_lstat(r, "/", &st), -ESTALE);
    expect_rc(cf_mkdir(r, "x", 0755), -ESTALE);
    ck_assert(!exists("empty"));
    cf_close_root(r);
}
END_TEST

START_TEST(test_root_stale_stays_stale)
{
    cf_root_t *r = open_root(0, false);
    char old[PATH_MAX], tmp[PATH_MAX];
    struct stat st;

    path_of(old, "proj.old");
    path_of(tmp, "proj.new");
    ck_assert_int_eq(rename(rootp, old), 0);
    ck_assert_int_eq(mkdir(rootp, 0755), 0);
    expect_rc(cf_lstat(r, "d", &st), -ESTALE);
    /* the original comes back: the export stays refused until reopened */
    ck_assert_int_eq(rename(rootp, tmp), 0);
    ck_assert_int_eq(rename(old, rootp), 0);
    expect_rc(cf_lstat(r, "d", &st), -ESTALE);
    cf_close_root(r);
    r = open_root(0, false);
    expect_rc(cf_lstat(r, "d", &st), 0);
    cf_close_root(r);
}
END_TEST

START_TEST(test_hardlink_to_outside_inode_shows_nlink)
{
    /* made on the developer machine, not through the endpoint: served, visible by st_nlink only */
    char src[PATH_MAX], dst[PATH_MAX];
    cf_root_t *r = open_root(0, false);
    struct stat st;

    path_of(src, "outside/secret");
    path_of(dst, "proj/hl");
    ck_assert_int_eq(link(src, dst), 0);
    expect_rc(cf_lstat(r, "hl", &st), 0);
    ck_assert_uint_eq(st.st_nlink, 2);
    cf_close_root(r);
}
END_TEST

/* ==== resolution (each twice: openat2, walk) ==== */

START_TEST(test_open_inside_file_reads_it)
{
    cf_root_t *r = open_root(_i, false);
    struct stat st;
    int fd = -1;

    expect_reads(r, "d/file", "inside");
    expect_reads(r, "./d/./file", "inside");
    expect_reads(r, "d/../d/file", "inside");
    expect_rc(cf_openat(r, "/", O_RDONLY | O_DIRECTORY, 0, &fd), 0);
    ck_assert_int_eq(fstat(fd, &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    close(fd);
    expect_rc(cf_openat(r, "d/missing", O_RDONLY, 0, &fd), -ENOENT);
    expect_rc(cf_openat(r, "d/file/x", O_RDONLY, 0, &fd), -ENOTDIR);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_dotdot_paths_refused)
{
    cf_root_t *r = open_root(_i, false);
    struct stat st;
    int fd = -1;

    expect_rc(cf_openat(r, "..", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "../outside/secret", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "d/../../outside/secret", O_RDWR, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "/../outside/secret", O_WRONLY | O_TRUNC, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "../outside/new", O_WRONLY | O_CREAT, 0644, &fd), -EPERM);
    expect_rc(cf_lstat(r, "../outside/secret", &st), -EPERM);
    expect_rc(cf_mkdir(r, "../newdir", 0755), -EPERM);
    expect_rc(cf_unlink(r, "../outside/secret"), -EPERM);
    expect_rc(cf_chmod(r, "../outside/secret", 0777), -EPERM);
    expect_rc(cf_rename(r, "d/file", "../stolen", 0), -EPERM);
    expect_rc(cf_rename(r, "../outside/secret", "stolen", 0), -EPERM);
    ck_assert_int_eq(fd, -1);
    expect_content("proj/d/file", "inside");
    ck_assert(!exists("proj/stolen"));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_sibling_prefix_path_refused)
{
    cf_root_t *r = open_root(_i, false);
    int fd = -1;

    expect_rc(cf_openat(r, "../proj2/x", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "/../proj2/x", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "../proj2/y", O_WRONLY | O_CREAT, 0644, &fd), -EPERM);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_absolute_paths_map_beneath_root)
{
    cf_root_t *r = open_root(_i, false);
    char real[PATH_MAX], name[64];
    int fd = -1;

    expect_reads(r, "/etc/passwd", "inside passwd");
    expect_reads(r, "/d/file", "inside");
    /* the outside file's real absolute path means root/<that path>, which does not exist */
    path_of(real, "outside/secret");
    expect_rc(cf_openat(r, real, O_RDONLY, 0, &fd), -ENOENT);
    /* a create at "/name" lands in the root, not in / */
    snprintf(name, sizeof(name), "/test_confine.%d", (int)getpid());
    expect_rc(cf_openat(r, name, O_WRONLY | O_CREAT | O_EXCL, 0644, &fd), 0);
    close(fd);
    ck_assert_msg(access(name, F_OK) != 0, "'%s' was created in the real /", name);
    {
        char in[PATH_MAX];

        snprintf(in, sizeof(in), "proj%s", name);
        ck_assert(exists(in));
    }
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_double_slash_paths_map_beneath_root)
{
    cf_root_t *r = open_root(_i, false);

    expect_reads(r, "//d//file", "inside");
    expect_reads(r, "d//file", "inside");
    expect_reads(r, "//etc///passwd", "inside passwd");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_name_over_name_max_refused)
{
    cf_root_t *r = open_root(_i, false);
    char name[NAME_MAX + 8], *before = snapshot(rootp, NULL), *after;
    struct stat st;
    int fd = -1;

    memset(name, 'n', NAME_MAX + 1);
    name[NAME_MAX + 1] = '\0';
    expect_rc(cf_openat(r, name, O_WRONLY | O_CREAT, 0644, &fd), -ENAMETOOLONG);
    expect_rc(cf_mkdir(r, name, 0755), -ENAMETOOLONG);
    expect_rc(cf_symlink(r, "d", name), -ENAMETOOLONG);
    expect_rc(cf_lstat(r, name, &st), -ENAMETOOLONG);
    after = snapshot(rootp, NULL);
    expect_same_snapshot(before, after, "the root");
    free(before);
    free(after);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_sibling_prefix_symlink_refused)
{
    /* proj/sib -> ../proj2/x: "proj2" starts with "proj", a string prefix check would pass it */
    cf_root_t *r = open_root(_i, false);
    struct stat st;
    DIR *dir = NULL;
    int fd = -1;

    expect_rc(cf_openat(r, "sib", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "sib", O_WRONLY | O_TRUNC, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "sibd/x", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "sibd/new", O_WRONLY | O_CREAT, 0644, &fd), -EPERM);
    expect_rc(cf_opendir(r, "sibd", &dir), -EPERM);
    expect_rc(cf_lstat(r, "sibd/x", &st), -EPERM);
    expect_rc(cf_truncate(r, "sibd/x", 0), -EPERM);
    ck_assert_int_eq(fd, -1);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

static void expect_outward_dir_refused(cf_root_t *r, const char *link)
{
    char p[PATH_MAX];
    struct stat st;
    DIR *dir = NULL;
    int fd = -1;

    snprintf(p, sizeof(p), "%s/secret", link);
    expect_rc(cf_openat(r, p, O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, p, O_RDWR | O_TRUNC, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, p, O_PATH, 0, &fd), -EPERM);
    expect_rc(cf_lstat(r, p, &st), -EPERM);
    snprintf(p, sizeof(p), "%s/dir/file", link);
    expect_rc(cf_openat(r, p, O_RDONLY, 0, &fd), -EPERM);
    snprintf(p, sizeof(p), "%s/planted", link);
    expect_rc(cf_openat(r, p, O_WRONLY | O_CREAT | O_EXCL, 0644, &fd), -EPERM);
    expect_rc(cf_opendir(r, link, &dir), -EPERM);
    ck_assert_int_eq(fd, -1);
    ck_assert_ptr_null(dir);
}

START_TEST(test_outward_symlink_intermediate_absolute_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_outward_dir_refused(r, "la");
    expect_outward_dir_refused(r, "in/../la"); /* ".." by name: still la */
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_outward_symlink_intermediate_relative_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_outward_dir_refused(r, "lr");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

static void expect_outward_file_refused(cf_root_t *r, const char *link)
{
    int fd = -1;

    expect_rc(cf_openat(r, link, O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, link, O_WRONLY | O_TRUNC, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, link, O_RDWR | O_APPEND, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, link, O_WRONLY | O_CREAT | O_TRUNC, 0644, &fd), -EPERM);
    ck_assert_int_eq(fd, -1);
}

START_TEST(test_outward_symlink_final_absolute_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_outward_file_refused(r, "fa");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_outward_symlink_final_relative_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_outward_file_refused(r, "fr");
    expect_outward_file_refused(r, "in/../fr");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_inward_symlinks_followed_beneath_root)
{
    cf_root_t *r = open_root(_i, false);
    struct dirent *de;
    bool seen = false;
    DIR *dir = NULL;

    put_link("../etc", "proj/d/up"); /* climbs, but stays beneath */
    expect_reads(r, "in/file", "inside");
    expect_reads(r, "fl", "inside");
    expect_reads(r, "d/up/passwd", "inside passwd");
    expect_reads(r, "in/up/passwd", "inside passwd");
    expect_rc(cf_opendir(r, "in", &dir), 0);
    while ((de = readdir(dir)))
        seen |= strcmp(de->d_name, "file") == 0;
    closedir(dir);
    ck_assert_msg(seen, "listing 'in' did not show 'file'");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_inward_absolute_symlink_refused)
{
    /* RESOLVE_BENEATH refuses absolute link texts even when they name a place inside */
    cf_root_t *r = open_root(_i, false);
    char p[PATH_MAX];
    int fd = -1;

    path_of(p, "proj/d/file");
    put_link(p, "proj/absin");
    expect_rc(cf_openat(r, "absin", O_RDONLY, 0, &fd), -EPERM);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_symlink_loop_refused)
{
    cf_root_t *r = open_root(_i, false);
    int fd = -1;

    put_link("loop2", "proj/loop1");
    put_link("loop1", "proj/loop2");
    put_link(".", "proj/self");
    expect_rc(cf_openat(r, "loop1", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "loop1/x", O_RDONLY, 0, &fd), -EPERM);
    expect_reads(r, "self/self/self/d/file", "inside");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_final_symlink_with_nofollow_refused)
{
    cf_root_t *r = open_root(_i, false);
    struct stat st;
    int fd = -1;

    expect_rc(cf_openat(r, "fl", O_RDONLY | O_NOFOLLOW, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "fa", O_PATH | O_NOFOLLOW, 0, &fd), 0);
    ck_assert_int_eq(fstat(fd, &st), 0);
    ck_assert_msg(S_ISLNK(st.st_mode), "O_PATH | O_NOFOLLOW did not give the link itself");
    close(fd);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_create_through_dangling_outward_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);
    int fd = -1;

    expect_rc(cf_openat(r, "dang", O_WRONLY | O_CREAT, 0644, &fd), -EPERM);
    expect_rc(cf_openat(r, "dang", O_RDWR | O_CREAT | O_TRUNC, 0644, &fd), -EPERM);
    expect_rc(cf_openat(r, "dangr", O_WRONLY | O_CREAT, 0644, &fd), -EPERM);
    expect_rc(cf_openat(r, "dang", O_WRONLY | O_CREAT | O_EXCL, 0644, &fd), -EEXIST);
    ck_assert_int_eq(fd, -1);
    ck_assert(!exists("outside/new"));
    ck_assert(!exists("outside/newr"));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_create_through_inward_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);
    int fd = -1;

    put_link("d/created", "proj/ci");
    expect_rc(cf_openat(r, "ci", O_WRONLY | O_CREAT, 0644, &fd), -EPERM);
    expect_rc(cf_openat(r, "fl", O_WRONLY | O_CREAT | O_TRUNC, 0644, &fd), -EPERM);
    ck_assert(!exists("proj/d/created"));
    expect_content("proj/d/file", "inside");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_create_inside_works)
{
    cf_root_t *r = open_root(_i, false);
    char p[PATH_MAX];
    struct stat st;
    int fd = -1;

    expect_rc(cf_openat(r, "in/new", O_WRONLY | O_CREAT | O_EXCL, 0600, &fd), 0);
    ck_assert_int_eq(write(fd, "fresh", 5), 5);
    close(fd);
    expect_content("proj/d/new", "fresh");
    path_of(p, "proj/d/new");
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0600);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_chmod_final_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);
    char p[PATH_MAX];
    struct stat st;

    expect_rc(cf_chmod(r, "fa", 0777), -EPERM);
    expect_rc(cf_chmod(r, "fr", 0777), -EPERM);
    expect_rc(cf_chmod(r, "la/secret", 0777), -EPERM);
    expect_rc(cf_chmod(r, "fl", 0777), -EPERM);
    path_of(p, "proj/d/file");
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0644);
    /* the twin: a regular file inside is changed */
    expect_rc(cf_chmod(r, "d/file", 0600), 0);
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_uint_eq(st.st_mode & 07777, 0600);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_truncate_final_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_truncate(r, "fa", 0), -EPERM);
    expect_rc(cf_truncate(r, "fr", 0), -EPERM);
    expect_rc(cf_truncate(r, "la/secret", 0), -EPERM);
    expect_rc(cf_truncate(r, "fl", 0), -EPERM);
    expect_rc(cf_truncate(r, "d", 0), -EISDIR);
    expect_rc(cf_truncate(r, "d/file", -1), -EINVAL);
    expect_content("proj/d/file", "inside");
    expect_rc(cf_truncate(r, "d/file", 3), 0);
    expect_content("proj/d/file", "ins");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_utimens_final_symlink_leaves_target)
{
    cf_root_t *r = open_root(_i, false);
    struct timespec ts[2] = {{1234567890, 0}, {1234567890, 5}};
    struct stat st;

    expect_rc(cf_utimens(r, "fa", ts), 0);
    expect_rc(cf_lstat(r, "fa", &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    ck_assert_int_eq(st.st_mtim.tv_sec, 1234567890);
    expect_rc(cf_utimens(r, "fr", NULL), 0);
    expect_rc(cf_utimens(r, "la/secret", ts), -EPERM);
    expect_rc(cf_utimens(r, "lr/dir", NULL), -EPERM);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_rename_symlink_moves_link_not_target)
{
    cf_root_t *r = open_root(_i, false);
    char want[PATH_MAX], got[PATH_MAX];
    struct stat st;

    expect_rc(cf_rename(r, "fa", "d/moved", 0), 0);
    expect_rc(cf_lstat(r, "d/moved", &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    path_of(want, "outside/secret");
    expect_rc(cf_readlink(r, "d/moved", got, sizeof(got)), (int)strlen(want));
    ck_assert_str_eq(got, want);
    expect_rc(cf_rename(r, "lr", "lr2", RENAME_NOREPLACE), 0);
    ck_assert(!exists("proj/fa"));
    ck_assert(!exists("outside/moved"));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_rename_onto_symlink_replaces_link)
{
    cf_root_t *r = open_root(_i, false);
    struct stat st;

    expect_rc(cf_rename(r, "d/file", "fa", 0), 0);
    expect_rc(cf_lstat(r, "fa", &st), 0);
    ck_assert(S_ISREG(st.st_mode));
    expect_content("proj/fa", "inside");
    expect_rc(cf_rename(r, "etc", "la", 0), -ENOTDIR); /* a dir onto a link: refused */
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_rename_through_outward_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_rename(r, "d/file", "la/stolen", 0), -EPERM);
    expect_rc(cf_rename(r, "d/file", "lr/stolen", RENAME_NOREPLACE), -EPERM);
    expect_rc(cf_rename(r, "la/secret", "stolen", 0), -EPERM);
    expect_rc(cf_rename(r, "sibd/x", "stolen", 0), -EPERM);
    expect_rc(cf_rename(r, "d/file", "la/secret", RENAME_EXCHANGE), -EPERM);
    expect_content("proj/d/file", "inside");
    ck_assert(!exists("proj/stolen"));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_rename_noreplace_keeps_target)
{
    cf_root_t *r = open_root(_i, false);

    put_file("proj/d/other", "other", 0644);
    expect_rc(cf_rename(r, "d/file", "d/other", RENAME_NOREPLACE), -EEXIST);
    expect_content("proj/d/file", "inside");
    expect_content("proj/d/other", "other");
    expect_rc(cf_rename(r, "d/file", "d/other", RENAME_EXCHANGE), 0);
    expect_content("proj/d/file", "other");
    expect_content("proj/d/other", "inside");
    expect_rc(cf_rename(r, "d/file", "d/other", 0), 0);
    expect_content("proj/d/other", "other");
    ck_assert(!exists("proj/d/file"));
    expect_rc(cf_rename(r, "d/other", "d/x", 1u << 7), -EINVAL);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_hardlink_inside_allowed)
{
    cf_root_t *r = open_root(_i, false);
    struct stat a, b;

    expect_rc(cf_link(r, "d/file", "in/h"), 0);
    expect_rc(cf_lstat(r, "d/file", &a), 0);
    expect_rc(cf_lstat(r, "d/h", &b), 0);
    ck_assert_uint_eq(a.st_ino, b.st_ino);
    ck_assert_uint_eq(a.st_nlink, 2);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_hardlink_through_outward_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_link(r, "la/secret", "stolen"), -EPERM);
    expect_rc(cf_link(r, "lr/dir/file", "stolen"), -EPERM);
    expect_rc(cf_link(r, "../outside/secret", "stolen"), -EPERM);
    expect_rc(cf_link(r, "sibd/x", "stolen"), -EPERM);
    expect_rc(cf_link(r, "d/file", "la/planted"), -EPERM);
    expect_rc(cf_link(r, "d/file", "../planted"), -EPERM);
    ck_assert(!exists("proj/stolen"));
    cf_close_root(r);
    expect_outside_untouched(); /* includes the secret's link count and ctime */
}
END_TEST

START_TEST(test_hardlink_of_outward_symlink_links_the_link)
{
    cf_root_t *r = open_root(_i, false);
    struct stat st;
    int fd = -1;

    expect_rc(cf_link(r, "fa", "fa2"), 0);
    expect_rc(cf_lstat(r, "fa2", &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    expect_rc(cf_openat(r, "fa2", O_RDONLY, 0, &fd), -EPERM);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_symlink_target_stored_as_given)
{
    cf_root_t *r = open_root(_i, false);
    char got[PATH_MAX];
    int fd = -1;

    expect_rc(cf_symlink(r, "/etc/shadow", "s1"), 0);
    expect_rc(cf_symlink(r, "../../outside", "d/s2"), 0);
    expect_rc(cf_symlink(r, "a//b/./../c", "d/s3"), 0);
    expect_rc(cf_readlink(r, "s1", got, sizeof(got)), 11);
    ck_assert_str_eq(got, "/etc/shadow");
    expect_rc(cf_readlink(r, "d/s2", got, sizeof(got)), 13);
    ck_assert_str_eq(got, "../../outside");
    expect_rc(cf_readlink(r, "d/s3", got, sizeof(got)), 11);
    ck_assert_str_eq(got, "a//b/./../c");
    expect_rc(cf_openat(r, "s1", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "d/s2/secret", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_symlink(r, "x", "d/file"), -EEXIST);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_symlink_linkpath_outside_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_symlink(r, "x", "../outside/planted"), -EPERM);
    expect_rc(cf_symlink(r, "x", "la/planted"), -EPERM);
    expect_rc(cf_symlink(r, "x", "lr/dir/planted"), -EPERM);
    expect_rc(cf_symlink(r, "x", "dang"), -EEXIST);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_mkdir_through_outward_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_mkdir(r, "la/newdir", 0755), -EPERM);
    expect_rc(cf_mkdir(r, "lr/dir/newdir", 0755), -EPERM);
    expect_rc(cf_mkdir(r, "../newdir", 0755), -EPERM);
    expect_rc(cf_mkdir(r, "dang", 0755), -EEXIST); /* never through the dangling link */
    expect_rc(cf_mkdir(r, "in/newdir", 0755), 0);
    ck_assert(exists("proj/d/newdir"));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_unlink_through_outward_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_unlink(r, "la/secret"), -EPERM);
    expect_rc(cf_unlink(r, "lr/dir/file"), -EPERM);
    expect_rc(cf_unlink(r, "sibd/x"), -EPERM);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_unlink_symlink_removes_only_link)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_unlink(r, "fa"), 0);
    expect_rc(cf_unlink(r, "fl"), 0);
    ck_assert(!exists("proj/fa"));
    expect_content("proj/d/file", "inside");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_rmdir_through_outward_symlink_refused)
{
    cf_root_t *r = open_root(_i, false);

    expect_rc(cf_rmdir(r, "la/dir"), -EPERM);
    expect_rc(cf_rmdir(r, "lr/dir"), -EPERM);
    expect_rc(cf_rmdir(r, "la"), -ENOTDIR);
    expect_rc(cf_rmdir(r, "in"), -ENOTDIR);
    ck_assert(exists("proj/la"));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_root_itself_not_removed_or_replaced)
{
    cf_root_t *r = open_root(_i, false);
    struct stat st;

    expect_rc(cf_rmdir(r, "/"), -EBUSY);
    expect_rc(cf_unlink(r, "."), -EBUSY);
    expect_rc(cf_rmdir(r, "d/.."), -EBUSY);
    expect_rc(cf_rename(r, "/", "x", 0), -EBUSY);
    expect_rc(cf_rename(r, "d", "", 0), -EBUSY);
    expect_rc(cf_symlink(r, "x", "/"), -EBUSY);
    expect_rc(cf_link(r, "d/file", "."), -EBUSY);
    expect_rc(cf_mkdir(r, "/", 0755), -EEXIST);
    ck_assert_int_eq(stat(rootp, &st), 0);
    expect_content("proj/d/file", "inside");
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_readlink_shows_outward_text)
{
    cf_root_t *r = open_root(_i, false);
    char want[PATH_MAX], got[PATH_MAX], small[4] = "zzz";

    path_of(want, "outside/secret");
    expect_rc(cf_readlink(r, "fa", got, sizeof(got)), (int)strlen(want));
    ck_assert_str_eq(got, want);
    expect_rc(cf_readlink(r, "lr", got, sizeof(got)), 10);
    ck_assert_str_eq(got, "../outside");
    expect_rc(cf_readlink(r, "sib", got, sizeof(got)), 10);
    ck_assert_str_eq(got, "../proj2/x");
    expect_rc(cf_readlink(r, "lr", got, 10), -ERANGE); /* no room for the NUL */
    expect_rc(cf_readlink(r, "lr", small, sizeof(small)), -ERANGE);
    expect_rc(cf_readlink(r, "d/file", got, sizeof(got)), -EINVAL);
    expect_rc(cf_readlink(r, "la/dir", got, sizeof(got)), -EPERM);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_lstat_outward_symlink_describes_link)
{
    cf_root_t *r = open_root(_i, false);
    char p[PATH_MAX];
    struct stat st, secret;

    path_of(p, "outside/secret");
    ck_assert_int_eq(lstat(p, &secret), 0);
    expect_rc(cf_lstat(r, "fa", &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    ck_assert_uint_eq(st.st_size, strlen(p));
    ck_assert_uint_ne(st.st_ino, secret.st_ino);
    expect_rc(cf_lstat(r, "la", &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_opendir_lists_inside_only)
{
    cf_root_t *r = open_root(_i, false);
    DIR *dir = NULL;
    struct dirent *de;
    int n = 0;

    expect_rc(cf_opendir(r, "la", &dir), -EPERM);
    expect_rc(cf_opendir(r, "lr", &dir), -EPERM);
    expect_rc(cf_opendir(r, "..", &dir), -EPERM);
    expect_rc(cf_opendir(r, "d/file", &dir), -ENOTDIR);
    ck_assert_ptr_null(dir);
    expect_rc(cf_opendir(r, "/", &dir), 0);
    while ((de = readdir(dir)))
        n += strcmp(de->d_name, "la") == 0 || strcmp(de->d_name, "d") == 0;
    closedir(dir);
    ck_assert_int_eq(n, 2);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_fifo_refused_without_blocking)
{
    cf_root_t *r = open_root(_i, false);
    char p[PATH_MAX];
    struct timespec t0;
    struct stat st;
    DIR *dir = NULL;
    int fd = -1;

    path_of(p, "proj/fifo");
    ck_assert_int_eq(mkfifo(p, 0666), 0);
    put_link("fifo", "proj/tofifo");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_rc(cf_openat(r, "fifo", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "fifo", O_WRONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "fifo", O_RDWR, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "tofifo", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "fifo", O_WRONLY | O_CREAT, 0644, &fd), -EPERM);
    expect_rc(cf_truncate(r, "fifo", 0), -EPERM);
    expect_rc(cf_opendir(r, "fifo", &dir), -ENOTDIR);
    ck_assert_msg(elapsed_ns(&t0) < 1000000000LL, "refusing the FIFO took %lld ns",
                  elapsed_ns(&t0));
    ck_assert_int_eq(fd, -1);
    /* it is listed for what it is */
    expect_rc(cf_lstat(r, "fifo", &st), 0);
    ck_assert(S_ISFIFO(st.st_mode));
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_socket_refused)
{
    cf_root_t *r = open_root(_i, false);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), fd = -1;

    ck_assert_int_ge(s, 0);
    ck_assert_int_lt(snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/sock", rootp),
                     (int)sizeof(sa.sun_path));
    ck_assert_int_eq(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
    ck_assert_int_eq(listen(s, 1), 0);
    expect_rc(cf_openat(r, "sock", O_RDONLY, 0, &fd), -EPERM);
    expect_rc(cf_openat(r, "sock", O_RDWR, 0, &fd), -EPERM);
    expect_rc(cf_truncate(r, "sock", 0), -EPERM);
    close(s);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_device_nodes_refused)
{
    cf_root_t *r = open_root(_i, false);
    char p[PATH_MAX];
    struct timespec t0;
    int fd = -1, got;

    path_of(p, "proj/null");
    ck_assert_msg(mknod(p, S_IFCHR | 0666, makedev(1, 3)) == 0,
                  "mknod '%s': %s (this test needs root)", p, strerror(errno));
    path_of(p, "proj/zero");
    ck_assert_int_eq(mknod(p, S_IFCHR | 0666, makedev(1, 5)), 0);
    /* a block device of a major number reserved for local use: no driver, open gives ENXIO */
    path_of(p, "proj/blk");
    ck_assert_int_eq(mknod(p, S_IFBLK | 0666, makedev(240, 0)), 0);
    put_link("null", "proj/tonull");
    clock_gettime(CLOCK_MONOTONIC, &t0);
    {
        const char *nodes[] = {"null", "zero", "blk", "tonull"};
        const int flags[] = {O_RDONLY, O_WRONLY, O_RDWR, O_WRONLY | O_TRUNC};

        for (size_t i = 0; i < 4; i++)
            for (size_t j = 0; j < 4; j++) {
                got = cf_openat(r, nodes[i], flags[j], 0, &fd);
                /* -EACCES would come from a nodev mount, refused by the kernel before us */
                ck_assert_msg(got == -EPERM || got == -EACCES,
                              "open of device '%s' flags %#x: expected -EPERM, got %d (%s)",
                              nodes[i], flags[j], got, strerror(-got));
            }
    }
    expect_rc(cf_truncate(r, "null", 0), -EPERM);
    expect_rc(cf_truncate(r, "blk", 0), -EPERM);
    ck_assert_msg(elapsed_ns(&t0) < 1000000000LL, "refusing device nodes took %lld ns",
                  elapsed_ns(&t0));
    ck_assert_int_eq(fd, -1);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

/* ---- the race: a directory swapped for outward symlinks while the main thread opens through it */

struct swapper {
    char dir[PATH_MAX], links[2][PATH_MAX];
    atomic_bool stop;
    long swaps;
    int err;
};

static void *swap_loop(void *arg)
{
    struct swapper *sw = arg;

    while (!atomic_load(&sw->stop)) {
        for (int k = 0; k < 2; k++) {
            /* twice: the directory goes to links[k]'s name and comes back */
            for (int t = 0; t < 2; t++)
                if (renameat2(AT_FDCWD, sw->dir, AT_FDCWD, sw->links[k], RENAME_EXCHANGE) != 0) {
                    sw->err = errno;
                    return NULL;
                }
            sw->swaps += 2;
        }
    }
    return NULL;
}

START_TEST(test_race_swap_dir_for_outward_symlink)
{
    cf_root_t *r = open_root(_i, false);
    struct swapper sw = {.swaps = 0};
    char p[PATH_MAX], buf[64];
    long opened = 0, refused = 0, stats = 0;
    struct stat inside, st;
    struct timespec t0;
    pthread_t th;

    path_of(p, "outside/dir");
    put_link(p, "proj/sa");
    put_link("../outside/dir", "proj/sr");
    path_of(p, "proj/d/file");
    ck_assert_int_eq(stat(p, &inside), 0);
    path_of(sw.dir, "proj/d");
    path_of(sw.links[0], "proj/sa");
    path_of(sw.links[1], "proj/sr");
    atomic_init(&sw.stop, false);
    ck_assert_int_eq(pthread_create(&th, NULL, swap_loop, &sw), 0);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (elapsed_ns(&t0) < RACE_NS) {
        int fd = -1, got = cf_openat(r, "d/file", O_RDONLY, 0, &fd);

        if (got == 0) {
            ssize_t n = read(fd, buf, sizeof(buf) - 1);

            close(fd);
            buf[n > 0 ? n : 0] = '\0';
            if (strcmp(buf, "inside") != 0) {
                atomic_store(&sw.stop, true);
                pthread_join(th, NULL);
                ck_abort_msg("%s: opened 'd/file' and read '%s': the outside file", mode_name[_i],
                             buf);
            }
            opened++;
        } else if (got == -EPERM) {
            refused++;
        } else {
            atomic_store(&sw.stop, true);
            pthread_join(th, NULL);
            ck_abort_msg("%s: cf_openat('d/file'): expected 0 or -EPERM, got %d (%s)",
                         mode_name[_i], got, strerror(-got));
        }
        got = cf_lstat(r, "d/file", &st);
        if (got == 0) {
            ck_assert_msg(st.st_ino == inside.st_ino, "%s: cf_lstat('d/file') saw inode %lu",
                          mode_name[_i], (unsigned long)st.st_ino);
            stats++;
        }
    }
    atomic_store(&sw.stop, true);
    ck_assert_int_eq(pthread_join(th, NULL), 0);
    ck_assert_msg(sw.err == 0, "the swapper failed: %s", strerror(sw.err));
    ck_assert_msg(sw.swaps >= 1000, "only %ld swaps in the race window", sw.swaps);
    ck_assert_msg(opened > 0 && refused > 0,
                  "%s: the race was not exercised: %ld opens, %ld refusals, %ld swaps",
                  mode_name[_i], opened, refused, sw.swaps);
    (void)stats;
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

/* ==== read-only roots ==== */

START_TEST(test_readonly_open_for_write_erofs_without_side_effect)
{
    cf_root_t *r = open_root(0, true);
    const char *names[] = {"d/file", "d/new", "fa", "dang", "fl", "la/secret", "..", "d"};
    const int flags[] = {O_WRONLY,
                         O_RDWR,
                         O_RDONLY | O_CREAT,
                         O_RDONLY | O_TRUNC,
                         O_RDONLY | O_APPEND,
                         O_WRONLY | O_CREAT | O_EXCL,
                         O_RDWR | O_CREAT | O_TRUNC,
                         O_TMPFILE | O_RDWR};
    char *before = snapshot(rootp, NULL), *after;
    int fd = -1;

    ck_assert(cf_root_readonly(r));
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        for (size_t j = 0; j < sizeof(flags) / sizeof(flags[0]); j++) {
            int got = cf_openat(r, names[i], flags[j], 0644, &fd);

            ck_assert_msg(got == -EROFS,
                          "open '%s' flags %#x on a read-only root: expected %d, "
                          "got %d (%s)",
                          names[i], flags[j], -EROFS, got, strerror(-got));
        }
    ck_assert_int_eq(fd, -1);
    after = snapshot(rootp, NULL);
    expect_same_snapshot(before, after, "the read-only root");
    free(before);
    free(after);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_readonly_every_write_call_erofs_without_side_effect)
{
    cf_root_t *r = open_root(0, true);
    struct timespec ts[2] = {{1, 0}, {1, 0}};
    char *before = snapshot(rootp, NULL), *after;

    expect_rc(cf_mkdir(r, "newdir", 0755), -EROFS);
    expect_rc(cf_mkdir(r, "d", 0755), -EROFS);
    expect_rc(cf_mkdir(r, "la/newdir", 0755), -EROFS);
    expect_rc(cf_unlink(r, "d/file"), -EROFS);
    expect_rc(cf_unlink(r, "fa"), -EROFS);
    expect_rc(cf_rmdir(r, "etc"), -EROFS);
    expect_rc(cf_rmdir(r, "d"), -EROFS);
    expect_rc(cf_rename(r, "d/file", "d/moved", 0), -EROFS);
    expect_rc(cf_rename(r, "d/file", "etc/passwd", RENAME_NOREPLACE), -EROFS);
    expect_rc(cf_rename(r, "d/file", "etc/passwd", RENAME_EXCHANGE), -EROFS);
    expect_rc(cf_rename(r, "d/file", "d/moved", 1u << 7), -EROFS);
    expect_rc(cf_symlink(r, "d/file", "newlink"), -EROFS);
    expect_rc(cf_link(r, "d/file", "newhard"), -EROFS);
    expect_rc(cf_chmod(r, "d/file", 0777), -EROFS);
    expect_rc(cf_chmod(r, "/", 0777), -EROFS);
    expect_rc(cf_truncate(r, "d/file", 0), -EROFS);
    expect_rc(cf_truncate(r, "d/file", 100), -EROFS);
    expect_rc(cf_utimens(r, "d/file", ts), -EROFS);
    expect_rc(cf_utimens(r, "d", NULL), -EROFS);
    expect_rc(cf_utimens(r, "fa", NULL), -EROFS);
    after = snapshot(rootp, NULL);
    expect_same_snapshot(before, after, "the read-only root");
    free(before);
    free(after);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

START_TEST(test_readonly_reads_work)
{
    cf_root_t *r = open_root(_i, true);
    char got[PATH_MAX];
    struct stat st;
    DIR *dir = NULL;
    int fd = -1;

    expect_reads(r, "d/file", "inside");
    expect_reads(r, "fl", "inside");
    expect_rc(cf_lstat(r, "fa", &st), 0);
    expect_rc(cf_readlink(r, "lr", got, sizeof(got)), 10);
    expect_rc(cf_opendir(r, "d", &dir), 0);
    closedir(dir);
    expect_rc(cf_openat(r, "fa", O_RDONLY, 0, &fd), -EPERM);
    cf_close_root(r);
    expect_outside_untouched();
}
END_TEST

/* A single-file root (binds of one file): only its name resolves, never as a symlink; the
 * folder's other entries are hidden from listings and unreachable, also by a write. */
START_TEST(test_single_file_root_shows_only_its_file)
{
    char p[PATH_MAX];
    cf_root_t *r;
    struct stat st;
    int fd = -1;

    path_of(p, "proj/etc/passwd");
    expect_rc(cf_open_root_file(p, false, &r), 0);
    if (_i)
        cf_force_walk(r, true);
    expect_reads(r, "passwd", "inside passwd");
    expect_reads(r, "/passwd", "inside passwd");
    expect_rc(cf_lstat(r, ".", &st), 0);
    ck_assert(S_ISDIR(st.st_mode));
    expect_rc(cf_lstat(r, "passwd/x", &st), -ENOTDIR);
    expect_rc(cf_openat(r, "other", O_WRONLY | O_CREAT, 0644, &fd), -ENOENT);
    expect_rc(cf_mkdir(r, "newdir", 0755), -ENOENT);
    expect_rc(cf_rename(r, "passwd", "moved", 0), -ENOENT);
    ck_assert(cf_visible(r, "", "passwd"));
    ck_assert(!cf_visible(r, "", "other"));
    ck_assert(!cf_visible(r, ".", "secret"));
    cf_close_root(r);

    /* the folder's other entries, and a symlink under the shared name, lead nowhere */
    path_of(p, "proj/fl");
    expect_rc(cf_open_root_file(p, true, &r), 0);
    if (_i)
        cf_force_walk(r, true);
    expect_rc(cf_openat(r, "fl", O_RDONLY, 0, &fd), -EPERM); /* as any final symlink refused */
    expect_rc(cf_openat(r, "d/file", O_RDONLY, 0, &fd), -ENOENT);
    expect_rc(cf_lstat(r, "fl", &st), 0);
    ck_assert(S_ISLNK(st.st_mode));
    cf_close_root(r);
    expect_rc(cf_open_root_file("", false, &r), -EINVAL);
    expect_outside_untouched();
}
END_TEST

/* ==== suite ==== */

static TCase *tcase(Suite *s, const char *name, bool fixture)
{
    TCase *tc = tcase_create(name);

    if (fixture)
        tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *confine_suite(void)
{
    Suite *s = suite_create("confine");
    TCase *tc;

    tc = tcase(s, "clean", false);
    tcase_add_test(tc, test_clean_relative_path_kept);
    tcase_add_test(tc, test_clean_absolute_path_is_beneath_root);
    tcase_add_test(tc, test_clean_double_slashes_collapse);
    tcase_add_test(tc, test_clean_dot_components_removed);
    tcase_add_test(tc, test_clean_root_forms_are_dot);
    tcase_add_test(tc, test_clean_dotdot_inside_resolved);
    tcase_add_test(tc, test_clean_dotdot_above_root_refused);
    tcase_add_test(tc, test_clean_dot_names_are_names);
    tcase_add_test(tc, test_clean_n_nul_inside_refused);
    tcase_add_test(tc, test_clean_n_uses_length_not_terminator);
    tcase_add_test(tc, test_clean_name_max_accepted);
    tcase_add_test(tc, test_clean_name_over_name_max_refused);
    tcase_add_test(tc, test_clean_path_below_path_max_accepted);
    tcase_add_test(tc, test_clean_path_of_path_max_refused);
    tcase_add_test(tc, test_clean_small_output_refused);

    tc = tcase(s, "root", true);
    tcase_add_test(tc, test_open_root_missing_refused);
    tcase_add_test(tc, test_open_root_file_refused);
    tcase_add_test(tc, test_openat2_used_when_kernel_has_it);
    tcase_add_test(tc, test_relative_root_path_survives_chdir);
    tcase_add_test(tc, test_root_replaced_is_estale);
    tcase_add_test(tc, test_root_removed_is_estale);
    tcase_add_test(tc, test_root_stale_stays_stale);
    tcase_add_test(tc, test_hardlink_to_outside_inode_shows_nlink);

    tc = tcase(s, "resolve", true);
    tcase_add_loop_test(tc, test_open_inside_file_reads_it, 0, 2);
    tcase_add_loop_test(tc, test_single_file_root_shows_only_its_file, 0, 2);
    tcase_add_loop_test(tc, test_dotdot_paths_refused, 0, 2);
    tcase_add_loop_test(tc, test_sibling_prefix_path_refused, 0, 2);
    tcase_add_loop_test(tc, test_absolute_paths_map_beneath_root, 0, 2);
    tcase_add_loop_test(tc, test_double_slash_paths_map_beneath_root, 0, 2);
    tcase_add_loop_test(tc, test_name_over_name_max_refused, 0, 2);
    tcase_add_loop_test(tc, test_sibling_prefix_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_outward_symlink_intermediate_absolute_refused, 0, 2);
    tcase_add_loop_test(tc, test_outward_symlink_intermediate_relative_refused, 0, 2);
    tcase_add_loop_test(tc, test_outward_symlink_final_absolute_refused, 0, 2);
    tcase_add_loop_test(tc, test_outward_symlink_final_relative_refused, 0, 2);
    tcase_add_loop_test(tc, test_inward_symlinks_followed_beneath_root, 0, 2);
    tcase_add_loop_test(tc, test_inward_absolute_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_symlink_loop_refused, 0, 2);
    tcase_add_loop_test(tc, test_final_symlink_with_nofollow_refused, 0, 2);
    tcase_add_loop_test(tc, test_create_through_dangling_outward_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_create_through_inward_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_create_inside_works, 0, 2);
    tcase_add_loop_test(tc, test_chmod_final_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_truncate_final_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_utimens_final_symlink_leaves_target, 0, 2);
    tcase_add_loop_test(tc, test_rename_symlink_moves_link_not_target, 0, 2);
    tcase_add_loop_test(tc, test_rename_onto_symlink_replaces_link, 0, 2);
    tcase_add_loop_test(tc, test_rename_through_outward_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_rename_noreplace_keeps_target, 0, 2);
    tcase_add_loop_test(tc, test_hardlink_inside_allowed, 0, 2);
    tcase_add_loop_test(tc, test_hardlink_through_outward_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_hardlink_of_outward_symlink_links_the_link, 0, 2);
    tcase_add_loop_test(tc, test_symlink_target_stored_as_given, 0, 2);
    tcase_add_loop_test(tc, test_symlink_linkpath_outside_refused, 0, 2);
    tcase_add_loop_test(tc, test_mkdir_through_outward_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_unlink_through_outward_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_unlink_symlink_removes_only_link, 0, 2);
    tcase_add_loop_test(tc, test_rmdir_through_outward_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_root_itself_not_removed_or_replaced, 0, 2);
    tcase_add_loop_test(tc, test_readlink_shows_outward_text, 0, 2);
    tcase_add_loop_test(tc, test_lstat_outward_symlink_describes_link, 0, 2);
    tcase_add_loop_test(tc, test_opendir_lists_inside_only, 0, 2);
    tcase_add_loop_test(tc, test_fifo_refused_without_blocking, 0, 2);
    tcase_add_loop_test(tc, test_socket_refused, 0, 2);
    tcase_add_loop_test(tc, test_device_nodes_refused, 0, 2);
    tcase_add_loop_test(tc, test_race_swap_dir_for_outward_symlink, 0, 2);

    tc = tcase(s, "readonly", true);
    tcase_add_test(tc, test_readonly_open_for_write_erofs_without_side_effect);
    tcase_add_test(tc, test_readonly_every_write_call_erofs_without_side_effect);
    tcase_add_loop_test(tc, test_readonly_reads_work, 0, 2);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;

    /* a failing test leaves its directory behind (no teardown after a failure): all go here */
    snprintf(top, sizeof(top), "/tmp/test_confine.XXXXXX");
    if (!mkdtemp(top)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    sr = srunner_create(confine_suite());
    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(top, remove_one, 32, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
