/*
 * gen_tree: write a deterministic fixture tree for the tests and benchmarks.
 *
 *   gen_tree [--seed N] [--files N] [--big-mib N] [--no-big] [--manifest] DIR
 *
 * The same arguments always give a byte-identical tree: contents come from a
 * seeded splitmix64, and every file, directory and symlink gets a fixed mtime,
 * so two trees made with the same seed compare equal on paths, types, sizes,
 * modes, mtimes, link targets and contents.
 *
 * The tree holds:
 *   node_modules/...        --files small files (0 .. 16 KiB, most under 2 KiB)
 *                           in nested packages, depth up to 8, fan-out ~10
 *   edge/                   files of 0, 1, 4095, 4096, 4097, 65535, 65536,
 *                           65537 and 131072 bytes, modes 0600/0444/0755,
 *                           an empty directory
 *   dir with space/naïve café.txt, 日本語/ファイル.txt, emoji 🚀/notes.md
 *   sub/file, link-rel -> sub/file, link-abs -> /etc/hostname,
 *   link-dangling -> does/not/exist, link-dir -> sub, sub/link-up -> ../edge/size-1
 *   big.bin                 --big-mib MiB of pseudorandom bytes (not with --no-big)
 *   .gen_tree_stamp         the arguments; written last
 *
 * DIR must be missing or empty. A DIR holding a stamp with the same arguments
 * is taken as already generated: gen_tree exits 0 without writing. Anything
 * else non-empty is refused.
 *
 * --manifest prints one line per entry (sorted, stamp excluded) on stdout:
 *   TYPE SIZE PATH[ -> TARGET]      TYPE is f, d or l; SIZE is - for d
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* openat, fdopendir, utimensat; the build also passes -D_GNU_SOURCE */
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STAMP_NAME    ".gen_tree_stamp"
#define STAMP_VERSION 1
#define MAX_DEPTH     8
#define SMALL_MAX     16384
#define BIG_CHUNK     (8u << 20)
#define MTIME_BASE    1700000000 /* 2023-11-14: every mtime lies in the year after */
#define MTIME_SPAN    (365 * 24 * 3600)

struct opts {
    uint64_t seed;
    long files;
    long big_mib;
    int big;
    int manifest;
    const char *dir;
};

struct gen {
    int rootfd;
    uint64_t rng; /* shapes the tree: names, sizes, fan-out */
    uint64_t seed;
    long files_left;     /* small files still to write */
    long file_no;        /* files written so far, seeds each file's content */
    long pkg_no;         /* packages made so far, numbers their names */
    char path[PATH_MAX]; /* current directory, relative to rootfd, "" = root */
    size_t plen;
    unsigned char *buf; /* SMALL_MAX bytes for small files */
};

static const char *prog = "gen_tree";

_Noreturn static void die(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "%s: ", prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint32_t rnd(struct gen *g, uint32_t n)
{
    return (uint32_t)(splitmix64(&g->rng) % n);
}

/* Uniform in [0, 1). */
static double rnd01(struct gen *g)
{
    return (double)(splitmix64(&g->rng) >> 11) / 9007199254740992.0;
}

static struct timespec stamp_time(struct gen *g)
{
    struct timespec ts = {.tv_sec = MTIME_BASE + rnd(g, MTIME_SPAN), .tv_nsec = 0};

    return ts;
}

/* Joins the current directory and name into out (relative to rootfd). */
static const char *rel(struct gen *g, const char *name, char *out, size_t outsz)
{
    int n =
        g->plen ? snprintf(out, outsz, "%s/%s", g->path, name) : snprintf(out, outsz, "%s", name);

    if (n < 0 || (size_t)n >= outsz)
        die("path too long: '%s/%s'", g->path, name);
    return out;
}

static void push_dir(struct gen *g, const char *name)
{
    size_t n = strlen(name);

    if (g->plen + n + 2 > sizeof(g->path))
        die("path too long: '%s/%s'", g->path, name);
    if (g->plen)
        g->path[g->plen++] = '/';
    memcpy(g->path + g->plen, name, n + 1);
    g->plen += n;
}

static void pop_dir(struct gen *g)
{
    char *slash = strrchr(g->path, '/');

    g->plen = slash ? (size_t)(slash - g->path) : 0;
    g->path[g->plen] = '\0';
}

/* Creates the directory name under the current one and enters it. */
static void enter_dir(struct gen *g, const char *name)
{
    char p[PATH_MAX];

    rel(g, name, p, sizeof(p));
    if (mkdirat(g->rootfd, p, 0755) != 0)
        die("cannot create directory '%s': %s", p, strerror(errno));
    push_dir(g, name);
}

static void write_all(int fd, const void *data, size_t len, const char *what)
{
    const char *p = data;

    while (len > 0) {
        ssize_t n = write(fd, p, len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("cannot write '%s': %s", what, n < 0 ? strerror(errno) : "short write");
        p += n;
        len -= (size_t)n;
    }
}

/*
 * Text-like bytes, unique per file: about 6 bits of entropy per byte, so the
 * contents compress somewhat, like source code, but never repeat across files.
 */
static void fill_text(unsigned char *buf, size_t len, uint64_t seed)
{
    static const char alpha[] = "abcdefghijklmnopqrstuvwxyz"
                                "ABCDEFGHIJKLMNOP"
                                "0123456789"
                                " \n(){};=.,_'";
    _Static_assert(sizeof(alpha) == 64 + 1, "6 bits index the alphabet");
    uint64_t s = seed, x = 0;
    size_t i;

    for (i = 0; i < len; i++) {
        if (i % 10 == 0)
            x = splitmix64(&s);
        buf[i] = (unsigned char)alpha[x & 63];
        x >>= 6;
    }
}

/* Writes name (under the current directory) with len bytes of content. */
static void put_file(struct gen *g, const char *name, size_t len, mode_t mode)
{
    char p[PATH_MAX];
    uint64_t cseed = g->seed ^ (0xa0761d6478bd642fULL * (uint64_t)(g->file_no + 1));
    struct timespec ts[2];
    int fd;

    if (len > SMALL_MAX)
        die("internal error: small file of %zu bytes", len);
    rel(g, name, p, sizeof(p));
    fd = openat(g->rootfd, p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        die("cannot create '%s': %s", p, strerror(errno));
    fill_text(g->buf, len, splitmix64(&cseed));
    write_all(fd, g->buf, len, p);
    ts[0] = ts[1] = stamp_time(g);
    if (futimens(fd, ts) != 0)
        die("cannot set times of '%s': %s", p, strerror(errno));
    if (close(fd) != 0)
        die("cannot close '%s': %s", p, strerror(errno));
    g->file_no++;
}

static void put_symlink(struct gen *g, const char *name, const char *target)
{
    char p[PATH_MAX];
    struct timespec ts[2];

    rel(g, name, p, sizeof(p));
    if (symlinkat(target, g->rootfd, p) != 0)
        die("cannot create symlink '%s': %s", p, strerror(errno));
    ts[0] = ts[1] = stamp_time(g);
    if (utimensat(g->rootfd, p, ts, AT_SYMLINK_NOFOLLOW) != 0)
        die("cannot set times of '%s': %s", p, strerror(errno));
}

/* Small-file size: 0 .. 16 KiB, skewed small (median about 1 KiB), 1% empty. */
static size_t small_size(struct gen *g)
{
    double u = rnd01(g);

    if (rnd(g, 100) == 0)
        return 0;
    return 1 + (size_t)(u * u * u * u * (SMALL_MAX - 1));
}

static const char *const file_names[] = {
    "index.js",     "README.md", "utils.js",     "index.d.ts", "types.d.ts",
    "cli.js",       "index.mjs", "index.cjs",    "parse.js",   "format.js",
    "errors.js",    "stream.js", "constants.js", "helpers.js", "index.js.map",
    "CHANGELOG.md", "LICENSE",   ".npmignore",   "browser.js", "polyfill.js",
};
#define N_FILE_NAMES (sizeof(file_names) / sizeof(file_names[0]))

static const char *const dir_names[] = {
    "lib", "src",   "dist",    "test", "internal", "utils",  "esm",
    "cjs", "types", "helpers", "core", "plugins",  "locale", "bin",
};
#define N_DIR_NAMES (sizeof(dir_names) / sizeof(dir_names[0]))

static const char *const pkg_words[] = {
    "lodash",       "chalk",     "debug",   "semver",          "minimist",
    "yargs",        "glob",      "rimraf",  "acorn",           "babel-core",
    "eslint-utils", "react-dom", "postcss", "webpack-sources", "source-map",
    "ms",           "uuid",      "tslib",   "esbuild-linux",   "picomatch",
};
#define N_PKG_WORDS (sizeof(pkg_words) / sizeof(pkg_words[0]))

/* Fills the current directory with a few files and recurses into a few subdirectories. */
static void fill_dir(struct gen *g, int depth)
{
    uint32_t nfiles = 1 + rnd(g, 10), first = rnd(g, N_FILE_NAMES), i, nsub;
    const char *base = strrchr(g->path, '/');
    mode_t mode = strcmp(base ? base + 1 : g->path, "bin") == 0 ? 0755 : 0644;

    for (i = 0; i < nfiles && g->files_left > 0; i++, g->files_left--)
        put_file(g, file_names[(first + i) % N_FILE_NAMES], small_size(g), mode);

    if (depth >= MAX_DEPTH)
        return;
    /* 0: 45%, 1: 30%, 2: 15%, 3: 10% - a subtree stays finite and bushy */
    i = rnd(g, 20);
    nsub = i < 9 ? 0 : i < 15 ? 1 : i < 18 ? 2 : 3;
    first = rnd(g, N_DIR_NAMES);
    for (i = 0; i < nsub && g->files_left > 0; i++) {
        enter_dir(g, dir_names[(first + i) % N_DIR_NAMES]);
        fill_dir(g, depth + 1);
        pop_dir(g);
    }
}

/* Makes one package (package.json, then a lib tree, maybe nested node_modules). */
static void make_package(struct gen *g, int depth)
{
    char name[64];
    uint32_t i, n;

    snprintf(name, sizeof(name), "%s-%ld", pkg_words[rnd(g, N_PKG_WORDS)], g->pkg_no++);
    enter_dir(g, name);
    if (g->files_left > 0) {
        put_file(g, "package.json", 200 + rnd(g, 1800), 0644);
        g->files_left--;
    }
    fill_dir(g, depth + 1);
    if (depth + 3 < MAX_DEPTH && g->files_left > 0 && rnd(g, 10) < 3) {
        enter_dir(g, "node_modules");
        for (i = 0, n = 1 + rnd(g, 4); i < n && g->files_left > 0; i++)
            make_package(g, depth + 2);
        pop_dir(g);
    }
    pop_dir(g);
}

/*
 * node_modules holds unscoped packages and, one package in eight, a scope
 * directory (@scope-N) with a few packages: about 1 package per 40 files.
 */
static void make_node_modules(struct gen *g)
{
    char scope[32];
    uint32_t i, n;

    enter_dir(g, "node_modules");
    while (g->files_left > 0) {
        if (rnd(g, 8) == 0) {
            snprintf(scope, sizeof(scope), "@scope-%ld", g->pkg_no++);
            enter_dir(g, scope);
            for (i = 0, n = 2 + rnd(g, 4); i < n && g->files_left > 0; i++)
                make_package(g, 2);
            pop_dir(g);
        } else {
            make_package(g, 1);
        }
    }
    pop_dir(g);
}

/* A file of exactly len bytes, no matter how large (content from the file counter). */
static void put_sized(struct gen *g, const char *name, size_t len, mode_t mode)
{
    char p[PATH_MAX];
    unsigned char *b;
    uint64_t s = g->seed ^ (0xe7037ed1a0b428dbULL * (uint64_t)(g->file_no + 1));
    struct timespec ts[2];
    int fd;

    rel(g, name, p, sizeof(p));
    if (!(b = malloc(len ? len : 1)))
        die("out of memory");
    fill_text(b, len, splitmix64(&s));
    fd = openat(g->rootfd, p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        die("cannot create '%s': %s", p, strerror(errno));
    write_all(fd, b, len, p);
    ts[0] = ts[1] = stamp_time(g);
    if (futimens(fd, ts) != 0)
        die("cannot set times of '%s': %s", p, strerror(errno));
    if (close(fd) != 0)
        die("cannot close '%s': %s", p, strerror(errno));
    free(b);
    g->file_no++;
}

static void make_edge(struct gen *g)
{
    static const size_t sizes[] = {1, 4095, 4096, 4097, 65535, 65536, 65537, 131072};
    char name[64];
    size_t i;

    enter_dir(g, "edge");
    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        snprintf(name, sizeof(name), sizes[i] == 1 ? "size-%zu" : "size-%zu.bin", sizes[i]);
        put_sized(g, name, sizes[i], 0644);
    }
    for (i = 1; i <= 4; i++) {
        snprintf(name, sizeof(name), "empty-%zu", i);
        put_sized(g, name, 0, 0644);
    }
    put_sized(g, "private-0600.txt", 300, 0600);
    put_sized(g, "readonly-0444.txt", 300, 0444);
    put_sized(g, "script-0755.sh", 120, 0755);
    enter_dir(g, "empty dir");
    pop_dir(g);
    pop_dir(g);
}

static void make_names_and_links(struct gen *g)
{
    enter_dir(g, "dir with space");
    put_sized(g, "naïve café.txt", 777, 0644);
    put_sized(g, "two  spaces and 'quote'.txt", 99, 0644);
    pop_dir(g);
    enter_dir(g, "日本語");
    put_sized(g, "ファイル.txt", 1234, 0644);
    pop_dir(g);
    enter_dir(g, "emoji 🚀");
    put_sized(g, "notes.md", 321, 0644);
    pop_dir(g);

    enter_dir(g, "sub");
    put_sized(g, "file", 4321, 0644);
    put_symlink(g, "link-up", "../edge/size-1");
    pop_dir(g);
    put_symlink(g, "link-rel", "sub/file");
    put_symlink(g, "link-abs", "/etc/hostname");
    put_symlink(g, "link-dangling", "does/not/exist");
    put_symlink(g, "link-dir", "sub");
}

static void make_big(struct gen *g, long mib)
{
    uint64_t *buf, s = g->seed ^ 0x2545f4914f6cdd1dULL;
    uint64_t left = (uint64_t)mib << 20;
    struct timespec ts[2];
    size_t i;
    int fd;

    if (!(buf = malloc(BIG_CHUNK)))
        die("out of memory");
    fd = openat(g->rootfd, "big.bin", O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot create 'big.bin': %s", strerror(errno));
    while (left > 0) {
        size_t n = left < BIG_CHUNK ? (size_t)left : BIG_CHUNK;

        for (i = 0; i < BIG_CHUNK / 8; i++)
            buf[i] = splitmix64(&s);
        write_all(fd, buf, n, "big.bin");
        left -= n;
    }
    ts[0] = ts[1] = stamp_time(g);
    if (futimens(fd, ts) != 0)
        die("cannot set times of 'big.bin': %s", strerror(errno));
    if (close(fd) != 0)
        die("cannot close 'big.bin': %s", strerror(errno));
    free(buf);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef void (*visit_fn)(int rootfd, const char *path, const struct stat *st, void *arg);

/* Walks the tree under rootfd in sorted order; pre(path) before children, post after. */
static void walk(int rootfd, const char *path, visit_fn pre, visit_fn post, void *arg)
{
    struct stat st;
    char **names = NULL, child[PATH_MAX];
    size_t n = 0, cap = 0, i;
    struct dirent *de;
    DIR *d;
    int fd;

    if (fstatat(rootfd, *path ? path : ".", &st, AT_SYMLINK_NOFOLLOW) != 0)
        die("cannot stat '%s': %s", path, strerror(errno));
    if (pre)
        pre(rootfd, path, &st, arg);
    if (!S_ISDIR(st.st_mode))
        return;
    fd = openat(rootfd, *path ? path : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || !(d = fdopendir(fd)))
        die("cannot open directory '%s': %s", path, strerror(errno));
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (!*path && !strcmp(de->d_name, STAMP_NAME))
            continue;
        if (n == cap && !(names = realloc(names, (cap = cap ? 2 * cap : 16) * sizeof(*names))))
            die("out of memory");
        if (!(names[n++] = strdup(de->d_name)))
            die("out of memory");
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof(*names), name_cmp);
    for (i = 0; i < n; i++) {
        int len = *path ? snprintf(child, sizeof(child), "%s/%s", path, names[i])
                        : snprintf(child, sizeof(child), "%s", names[i]);

        if (len < 0 || (size_t)len >= sizeof(child))
            die("path too long: '%s/%s'", path, names[i]);
        walk(rootfd, child, pre, post, arg);
        free(names[i]);
    }
    free(names);
    if (post)
        post(rootfd, path, &st, arg);
}

/*
 * Gives a directory its fixed mtime. Called after its children (post-order),
 * once nothing more is written in it; times come from a fresh stream of the
 * seed consumed in sorted order, so they do not depend on readdir order.
 */
static void dir_time(int rootfd, const char *path, const struct stat *st, void *arg)
{
    struct gen *g = arg;
    struct timespec ts[2];

    if (!S_ISDIR(st->st_mode))
        return;
    ts[0] = ts[1] = stamp_time(g);
    if (utimensat(rootfd, *path ? path : ".", ts, AT_SYMLINK_NOFOLLOW) != 0)
        die("cannot set times of '%s': %s", path, strerror(errno));
}

static void manifest_line(int rootfd, const char *path, const struct stat *st, void *arg)
{
    char target[PATH_MAX];
    ssize_t n;

    (void)arg;
    if (!*path)
        return;
    if (S_ISDIR(st->st_mode)) {
        printf("d - %s\n", path);
    } else if (S_ISLNK(st->st_mode)) {
        n = readlinkat(rootfd, path, target, sizeof(target) - 1);
        if (n < 0)
            die("cannot read link '%s': %s", path, strerror(errno));
        target[n] = '\0';
        printf("l %jd %s -> %s\n", (intmax_t)st->st_size, path, target);
    } else {
        printf("f %jd %s\n", (intmax_t)st->st_size, path);
    }
}

static void mkdir_p(const char *dir)
{
    char p[PATH_MAX];
    size_t i, n = strlen(dir);

    if (n == 0 || n >= sizeof(p))
        die("bad directory '%s'", dir);
    memcpy(p, dir, n + 1);
    for (i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0')
            continue;
        p[i] = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            die("cannot create directory '%s': %s", p, strerror(errno));
        p[i] = i < n ? '/' : '\0';
    }
}

/* 1 if the directory has entries, 0 if empty. */
static int dir_has_entries(int dirfd)
{
    struct dirent *de;
    int fd = dup(dirfd), found = 0;
    DIR *d;

    if (fd < 0 || !(d = fdopendir(fd)))
        die("cannot read directory: %s", strerror(errno));
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            found = 1;
            break;
        }
    closedir(d);
    return found;
}

static void usage(int code)
{
    fprintf(code ? stderr : stdout,
            "usage: %s [--seed N] [--files N] [--big-mib N] [--no-big] [--manifest] DIR\n"
            "  --seed N      PRNG seed (default 1)\n"
            "  --files N     number of small files under node_modules (default 10000)\n"
            "  --big-mib N   size of big.bin in MiB (default 256)\n"
            "  --no-big      no big.bin\n"
            "  --manifest    print 'TYPE SIZE PATH[ -> TARGET]' for every entry\n",
            prog);
    exit(code);
}

static long parse_num(const char *opt, const char *s, long max)
{
    char *end;
    long long v;

    if (!s)
        die("option '%s' needs a value", opt);
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || *end || end == s || v < 0 || v > max)
        die("bad value for '%s': '%s'", opt, s);
    return (long)v;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    int i;

    o->seed = 1;
    o->files = 10000;
    o->big_mib = 256;
    o->big = 1;
    o->manifest = 0;
    o->dir = NULL;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];

        if (!strcmp(a, "--seed"))
            o->seed = (uint64_t)parse_num(a, argv[++i], LONG_MAX);
        else if (!strcmp(a, "--files"))
            o->files = parse_num(a, argv[++i], 100000000L);
        else if (!strcmp(a, "--big-mib"))
            o->big_mib = parse_num(a, argv[++i], 1L << 20);
        else if (!strcmp(a, "--no-big"))
            o->big = 0;
        else if (!strcmp(a, "--manifest"))
            o->manifest = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help"))
            usage(0);
        else if (a[0] == '-' && a[1])
            die("unknown option '%s'", a);
        else if (o->dir)
            die("more than one directory given: '%s' and '%s'", o->dir, a);
        else
            o->dir = a;
    }
    if (!o->dir)
        usage(2);
    if (!o->big)
        o->big_mib = 0;
}

int main(int argc, char **argv)
{
    struct opts o;
    struct gen g;
    char stamp[256], old[256];
    struct timespec ts[2];
    ssize_t n;
    int fd;

    parse_args(argc, argv, &o);
    snprintf(stamp, sizeof(stamp), "gen_tree %d seed=%" PRIu64 " files=%ld big=%d big-mib=%ld\n",
             STAMP_VERSION, o.seed, o.files, o.big, o.big_mib);

    mkdir_p(o.dir);
    memset(&g, 0, sizeof(g));
    g.rootfd = open(o.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g.rootfd < 0)
        die("cannot open '%s': %s", o.dir, strerror(errno));

    if (dir_has_entries(g.rootfd)) {
        fd = openat(g.rootfd, STAMP_NAME, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die("'%s' is not empty and was not made by gen_tree; remove it first", o.dir);
        n = read(fd, old, sizeof(old) - 1);
        close(fd);
        old[n > 0 ? n : 0] = '\0';
        if (strcmp(old, stamp) != 0)
            die("'%s' was made by gen_tree with other arguments ('%.*s', not '%.*s'); "
                "remove it first",
                o.dir, (int)strcspn(old, "\n"), old, (int)strcspn(stamp, "\n"), stamp);
        if (o.manifest)
            walk(g.rootfd, "", manifest_line, NULL, NULL);
        return 0;
    }

    g.seed = o.seed;
    g.rng = o.seed;
    g.files_left = o.files;
    if (!(g.buf = malloc(SMALL_MAX)))
        die("out of memory");
    umask(0); /* modes are given exactly at creation */

    make_node_modules(&g);
    make_edge(&g);
    make_names_and_links(&g);
    if (o.big)
        make_big(&g, o.big_mib);
    free(g.buf);

    /* Stamp last: an interrupted run leaves no stamp and is refused next time. */
    fd = openat(g.rootfd, STAMP_NAME, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        die("cannot create '%s/%s': %s", o.dir, STAMP_NAME, strerror(errno));
    write_all(fd, stamp, strlen(stamp), STAMP_NAME);
    ts[0] = ts[1] = (struct timespec){.tv_sec = MTIME_BASE, .tv_nsec = 0};
    if (futimens(fd, ts) != 0 || close(fd) != 0)
        die("cannot write '%s/%s': %s", o.dir, STAMP_NAME, strerror(errno));

    g.rng = o.seed ^ 0xd1b54a32d192ed03ULL;
    walk(g.rootfd, "", NULL, dir_time, &g);
    if (o.manifest)
        walk(g.rootfd, "", manifest_line, NULL, NULL);
    if (fflush(stdout) != 0)
        die("cannot write manifest: %s", strerror(errno));
    close(g.rootfd);
    return 0;
}
