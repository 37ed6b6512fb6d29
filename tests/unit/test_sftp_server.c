/* test_sftp_server.c - unit tests of the confined SFTP v3 server (tunnel/sftp_server.h).
 *
 * Requests are built with buf/sfc functions into rx, sfs_process runs, and each reply is taken
 * from tx and decoded. Every test runs in a fresh temporary directory 'base':
 *
 *   base/proj/              root "proj", read-write
 *       hello               "hello world"
 *       d/file              "inside"
 *       empty/
 *       fa -> base/outside/secret      fr -> ../outside/secret      (outward, final)
 *       la -> base/outside             lr -> ../outside             (outward, intermediate)
 *       dang -> base/outside/new                                    (dangling, outward)
 *       in -> d                                                     (inward)
 *       fifo                                                        (a FIFO)
 *   base/ro/                root "ro", read-only: f "ro file", sub/g "g", link -> f
 *   base/proj2/x            "sibling": a directory named like a root, but none
 *   base/outside/secret     "sentinel"; outside/dir/file "outside-file"
 *
 * Everything outside base/proj gets access and modification times of 2001. The tree lives on a
 * relatime file system, so a read through the server would move one of those atimes. setup takes
 * a snapshot of everything in base except base/proj (names, modes, sizes, link counts, inodes,
 * times, contents, link texts); expect_untouched() proves that nothing there was created, removed,
 * changed or read.
 */
#include "sftp_server.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "sftp_codec.h"

#define TIMEOUT_S 120
#define OLD_TIME  1000000000 /* 2001-09-09 */
#define RX_MAX    (16u << 20)
#define NO_REPLY  0xffu

static char top[64];        /* made by main, removed with everything in it at the end */
static char base[PATH_MAX]; /* the test's temporary directory, under top */
static char *untouched;     /* snapshot of base without proj, taken by setup */

static cf_root_t *root_rw, *root_ro;
static sfs_t *srv;
static struct buf rx, tx;
static uint32_t next_id;

/* the last reply taken from tx */
static uint8_t rep_type;
static uint32_t rep_id;
static uint8_t rep_data[SFS_REPLY_MAX];
static struct buf rep; /* a view of rep_data */
static char rep_msg[256];

/* what the change hook saw */
#define HOOKS_MAX 32
static struct {
    size_t root;
    uint64_t client;
    char path[PATH_MAX];
} hooks[HOOKS_MAX];
static size_t nhooks;
static long open_by_unnamed, open_by_named; /* BEGINs less ENDs, by clients with and without id */

/* a handle as the server gave it */
struct hnd {
    uint32_t n;
    uint8_t b[256];
};

static const char *code_name(uint32_t c)
{
    static const char *const names[] = {
        "OK",          "EOF",           "NO_SUCH_FILE",    "PERMISSION_DENIED", "FAILURE",
        "BAD_MESSAGE", "NO_CONNECTION", "CONNECTION_LOST", "OP_UNSUPPORTED"};
    return c < sizeof(names) / sizeof(names[0]) ? names[c] : "(unknown)";
}

/* ---- the tree ---- */

static void path_of(char *out, const char *rel)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", base, rel);
    ck_assert(n > 0 && n < PATH_MAX);
}

static void put_file_n(const char *rel, const void *content, size_t len, mode_t mode)
{
    char p[PATH_MAX];
    int fd;

    path_of(p, rel);
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    ck_assert_msg(fd >= 0, "cannot create '%s': %s", p, strerror(errno));
    ck_assert_int_eq(write(fd, content, len), (ssize_t)len);
    ck_assert_int_eq(fchmod(fd, mode), 0);
    close(fd);
}

static void put_file(const char *rel, const char *content, mode_t mode)
{
    put_file_n(rel, content, strlen(content), mode);
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

static bool exists(const char *rel)
{
    char p[PATH_MAX];
    struct stat st;

    path_of(p, rel);
    return lstat(p, &st) == 0;
}

static void lstat_of(const char *rel, struct stat *st)
{
    char p[PATH_MAX];

    path_of(p, rel);
    ck_assert_msg(lstat(p, st) == 0, "lstat '%s': %s", p, strerror(errno));
}

/* The content of a file, read without touching its atime; returns its length. */
static size_t read_noatime(const char *p, void *buf, size_t len)
{
    int fd = open(p, O_RDONLY | O_NOATIME | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    ssize_t n = fd >= 0 ? read(fd, buf, len) : -1;

    if (fd >= 0)
        close(fd);
    return n > 0 ? (size_t)n : 0;
}

static void expect_content(const char *rel, const char *want)
{
    char p[PATH_MAX], got[256];
    size_t n;

    path_of(p, rel);
    n = read_noatime(p, got, sizeof(got) - 1);
    got[n] = '\0';
    ck_assert_msg(strcmp(got, want) == 0, "'%s': expected content '%s', got '%s'", rel, want, got);
}

/* ---- snapshots: everything observable about a tree, one sorted line per entry ---- */

static char **snap_lines;
static size_t snap_n, snap_cap, snap_prefix;
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
        size_t n = read_noatime(p, content, sizeof(content) - 1);

        content[n] = '\0';
        snprintf(extra, sizeof(extra), " atime=%lld.%09ld '%s'", (long long)st->st_atim.tv_sec,
                 st->st_atim.tv_nsec, content);
    } else if (S_ISLNK(st->st_mode)) {
        char text[256];
        ssize_t n = readlink(p, text, sizeof(text) - 1);

        text[n > 0 ? n : 0] = '\0';
        snprintf(extra, sizeof(extra), " -> '%s'", text);
    }
    snprintf(line, sizeof(line),
             "'%s' mode=%o size=%lld nlink=%lu ino=%lu mtime=%lld.%09ld ctime=%lld.%09ld%s",
             p + snap_prefix, st->st_mode, (long long)st->st_size, (unsigned long)st->st_nlink,
             (unsigned long)st->st_ino, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
             (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec, extra);
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

/* A description of the tree at base, leaving out base/skip (NULL: nothing). */
static char *snapshot(const char *skip)
{
    char skipp[PATH_MAX];
    size_t total = 1;
    char *s, *w;

    if (skip)
        path_of(skipp, skip);
    snap_n = 0;
    snap_prefix = strlen(base);
    snap_skip = skip ? skipp : NULL;
    ck_assert_int_eq(nftw(base, snap_one, 32, FTW_PHYS | FTW_ACTIONRETVAL), 0);
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

static void expect_same_snapshot(const char *before, const char *skip, const char *what)
{
    char *now = snapshot(skip);

    ck_assert_msg(strcmp(before, now) == 0, "%s changed.\nbefore:\n%s\nafter:\n%s", what, before,
                  now);
    free(now);
}

/* Nothing outside the read-write root was created, removed, changed or read since setup. */
static void expect_untouched(void)
{
    expect_same_snapshot(untouched, "proj", "the tree outside the read-write root");
}

/* ---- talking to the server ---- */

/* Append a request to rx. Fields by 'fmt': s = C string, b = bytes as a string (const void *,
 * size_t), u = u32 (unsigned), q = u64 (uint64_t), a = attributes (const struct tun_sftp_attr *),
 * r = raw bytes (const void *, size_t). Returns its id. */
static uint32_t put_req(uint8_t type, const char *fmt, ...)
{
    uint32_t id = ++next_id;
    size_t mark;
    va_list ap;

    ck_assert_int_eq(sfc_put_begin(&rx, type, id, &mark), 0);
    va_start(ap, fmt);
    for (const char *f = fmt; *f; f++) {
        const void *p;
        size_t n;

        switch (*f) {
        case 's':
            ck_assert_int_eq(buf_put_cstring(&rx, va_arg(ap, const char *)), 0);
            break;
        case 'b':
            p = va_arg(ap, const void *);
            n = va_arg(ap, size_t);
            ck_assert_int_eq(buf_put_string(&rx, p, n), 0);
            break;
        case 'u':
            ck_assert_int_eq(buf_put_u32(&rx, va_arg(ap, unsigned)), 0);
            break;
        case 'q':
            ck_assert_int_eq(buf_put_u64(&rx, va_arg(ap, uint64_t)), 0);
            break;
        case 'a':
            ck_assert_int_eq(sfc_put_attr(&rx, va_arg(ap, const struct tun_sftp_attr *)), 0);
            break;
        case 'r':
            p = va_arg(ap, const void *);
            n = va_arg(ap, size_t);
            ck_assert_int_eq(buf_put(&rx, p, n), 0);
            break;
        default:
            ck_abort_msg("put_req: bad format '%c'", *f);
        }
    }
    va_end(ap);
    sfc_put_end(&rx, mark);
    return id;
}

/* Take the next reply from tx into rep; false when tx holds none. */
static bool take_reply(void)
{
    struct buf p;
    size_t n;

    if (sfc_get_packet(&tx, SFS_REPLY_MAX, &rep_type, &rep_id, &p) != 0)
        return false;
    n = buf_avail(&p);
    if (n)
        memcpy(rep_data, buf_ptr(&p), n);
    buf_view(&rep, rep_data, n);
    return true;
}

/* Process rx; exactly one reply, to 'id', must come out. */
static void run(uint32_t id)
{
    int r = sfs_process(srv, &rx, &tx);

    ck_assert_msg(r == 0, "sfs_process: expected 0, got %d (%s)", r, strerror(-r));
    ck_assert_msg(buf_avail(&rx) == 0, "%zu bytes of requests left in rx", buf_avail(&rx));
    ck_assert_msg(take_reply(), "no reply to request %u", id);
    ck_assert_msg(rep_id == id, "expected the reply to request %u, got one to %u", id, rep_id);
    ck_assert_msg(buf_avail(&tx) == 0, "more than one reply to request %u", id);
}

/* The status code of the reply (NO_REPLY if it is no STATUS); its message goes to rep_msg. */
static uint32_t rep_status(void)
{
    uint32_t code;

    rep_msg[0] = '\0';
    if (rep_type != SFC_STATUS)
        return NO_REPLY;
    ck_assert_int_eq(sfc_get_status(&rep, &code), 0);
    ck_assert_int_eq(buf_get_cstring(&rep, rep_msg, sizeof(rep_msg)), 0);
    return code;
}

static void expect_status(uint32_t want, const char *what)
{
    uint32_t got = rep_status();

    if (got == NO_REPLY)
        ck_abort_msg("%s: expected status %s, got a reply of type %u", what, code_name(want),
                     rep_type);
    ck_assert_msg(got == want, "%s: expected status %s, got %s ('%s')", what, code_name(want),
                  code_name(got), rep_msg);
}

/* One request with a single path, and the status it must get. */
static void expect_path_status(uint8_t type, const char *path, uint32_t want)
{
    char what[PATH_MAX + 32];

    run(put_req(type, "s", path));
    snprintf(what, sizeof(what), "request %u on '%s'", type, path);
    expect_status(want, what);
}

static void expect_handle(struct hnd *h, const char *what)
{
    const uint8_t *p;

    if (rep_type != SFC_HANDLE) {
        uint32_t c = rep_status();
        ck_abort_msg("%s: expected a HANDLE, got type %u (status %s '%s')", what, rep_type,
                     code_name(c), rep_msg);
    }
    ck_assert_int_eq(buf_get_string(&rep, &p, &h->n), 0);
    ck_assert_uint_le(h->n, sizeof(h->b));
    memcpy(h->b, p, h->n);
}

static struct hnd open_ok(const char *path, uint32_t pflags, const struct tun_sftp_attr *a)
{
    struct tun_sftp_attr none = {0};
    struct hnd h;

    run(put_req(SFC_OPEN, "sua", path, pflags, a ? a : &none));
    expect_handle(&h, path);
    return h;
}

static void expect_open_status(const char *path, uint32_t pflags, uint32_t want)
{
    struct tun_sftp_attr none = {0};
    char what[PATH_MAX + 32];

    run(put_req(SFC_OPEN, "sua", path, pflags, &none));
    snprintf(what, sizeof(what), "OPEN '%s' pflags 0x%x", path, pflags);
    expect_status(want, what);
}

static struct hnd opendir_ok(const char *path)
{
    struct hnd h;

    run(put_req(SFC_OPENDIR, "s", path));
    expect_handle(&h, path);
    return h;
}

static void close_ok(const struct hnd *h)
{
    run(put_req(SFC_CLOSE, "b", h->b, (size_t)h->n));
    expect_status(SFC_OK, "CLOSE");
}

static struct tun_sftp_attr attrs_ok(uint8_t type, const char *path)
{
    struct tun_sftp_attr a;

    run(put_req(type, "s", path));
    if (rep_type != SFC_ATTRS) {
        uint32_t c = rep_status();
        ck_abort_msg("request %u on '%s': expected ATTRS, got type %u (status %s '%s')", type, path,
                     rep_type, code_name(c), rep_msg);
    }
    ck_assert_int_eq(sfc_get_attr(&rep, &a), 0);
    return a;
}

/* READ; returns the DATA length (copied to out, at most cap) or -1 with the status in *code. */
static long read_h(const struct hnd *h, uint64_t off, uint32_t len, void *out, size_t cap,
                   uint32_t *code)
{
    const uint8_t *p;
    uint32_t n;

    run(put_req(SFC_READ, "bqu", h->b, (size_t)h->n, off, len));
    if (rep_type != SFC_DATA) {
        *code = rep_status();
        return -1;
    }
    ck_assert_int_eq(buf_get_string(&rep, &p, &n), 0);
    ck_assert_uint_le(n, cap);
    memcpy(out, p, n);
    return n;
}

static void write_ok(const struct hnd *h, uint64_t off, const void *data, size_t n)
{
    run(put_req(SFC_WRITE, "bqb", h->b, (size_t)h->n, off, data, n));
    expect_status(SFC_OK, "WRITE");
}

/* Every name of a directory handle, READDIR after READDIR until EOF; returns how many. */
struct entry {
    char name[NAME_MAX + 1];
    char longname[NAME_MAX + 256];
    struct tun_sftp_attr a;
};

static size_t readdir_all(const struct hnd *h, struct entry *e, size_t cap, size_t *batches)
{
    size_t total = 0;

    *batches = 0;
    for (;;) {
        uint32_t count;

        run(put_req(SFC_READDIR, "b", h->b, (size_t)h->n));
        if (rep_type == SFC_STATUS) {
            expect_status(SFC_EOF, "READDIR at the end");
            return total;
        }
        ck_assert_uint_eq(rep_type, SFC_NAME);
        ck_assert_int_eq(buf_get_u32(&rep, &count), 0);
        ck_assert_msg(count > 0 && count <= SFS_READDIR_BATCH, "READDIR batch of %u names", count);
        (*batches)++;
        for (uint32_t i = 0; i < count; i++) {
            ck_assert_uint_lt(total, cap);
            ck_assert_int_eq(buf_get_cstring(&rep, e[total].name, sizeof(e[total].name)), 0);
            ck_assert_int_eq(buf_get_cstring(&rep, e[total].longname, sizeof(e[total].longname)),
                             0);
            ck_assert_int_eq(sfc_get_attr(&rep, &e[total].a), 0);
            total++;
        }
        ck_assert_uint_eq(buf_avail(&rep), 0);
    }
}

static const struct entry *find_entry(const struct entry *e, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(e[i].name, name) == 0)
            return &e[i];
    return NULL;
}

/* The single name of a REALPATH or READLINK reply. */
static void expect_one_name(const char *want, const char *what)
{
    struct tun_sftp_attr a;
    char name[PATH_MAX + NAME_MAX + 2];
    uint32_t count;

    if (rep_type != SFC_NAME) {
        uint32_t c = rep_status();
        ck_abort_msg("%s: expected NAME '%s', got type %u (status %s '%s')", what, want, rep_type,
                     code_name(c), rep_msg);
    }
    ck_assert_int_eq(buf_get_u32(&rep, &count), 0);
    ck_assert_uint_eq(count, 1);
    ck_assert_int_eq(sfc_get_name(&rep, name, sizeof(name), &a), 0);
    ck_assert_msg(strcmp(name, want) == 0, "%s: expected '%s', got '%s'", what, want, name);
}

static void expect_realpath(const char *path, const char *want)
{
    char what[PATH_MAX + 32];

    run(put_req(SFC_REALPATH, "s", path));
    snprintf(what, sizeof(what), "REALPATH '%s'", path);
    expect_one_name(want, what);
}

static void hook(void *arg, uint64_t client, enum sfs_phase phase, size_t root, const char *rel,
                 const struct stat *st)
{
    (void)arg;
    (void)st;
    if (phase != SFS_CHANGED) {
        *(client ? &open_by_named : &open_by_unnamed) += phase == SFS_BEGIN ? 1 : -1;
        return;
    }
    ck_assert_uint_lt(nhooks, HOOKS_MAX);
    hooks[nhooks].root = root;
    hooks[nhooks].client = client;
    snprintf(hooks[nhooks].path, sizeof(hooks[nhooks].path), "%s", rel);
    nhooks++;
}

/* Resolve paths with openat2 (0) or the O_NOFOLLOW walk (1): the Check loop index. */
static void use_resolver(int i)
{
    cf_force_walk(root_rw, i == 1);
    cf_force_walk(root_ro, i == 1);
    ck_assert(cf_uses_openat2(root_rw) == (i == 0));
}

static struct tun_sftp_attr attr_perm(uint32_t perm)
{
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_PERMISSIONS, .perm = perm};
    return a;
}

/* ---- fixture ---- */

/* A new server (replacing srv) on the two roots, with empty rx and tx. */
static void make_server(void)
{
    const struct sfs_root roots[] = {{"proj", root_rw}, {"ro", root_ro}};

    sfs_free(srv);
    srv = NULL;
    ck_assert_int_eq(sfs_new(roots, 2, &srv), 0);
    buf_reset(&rx);
    buf_reset(&tx);
    next_id = 0;
    nhooks = 0;
    open_by_unnamed = open_by_named = 0;
}

static void new_server(void)
{
    char p[PATH_MAX];

    path_of(p, "proj");
    ck_assert_int_eq(cf_open_root(p, false, &root_rw), 0);
    path_of(p, "ro");
    ck_assert_int_eq(cf_open_root(p, true, &root_ro), 0);
    buf_init(&rx, RX_MAX);
    buf_init(&tx, 4 * (size_t)SFS_REPLY_MAX);
    make_server();
}

static void send_init(void)
{
    uint8_t init[] = {0, 0, 0, 5, SFC_INIT, 0, 0, 0, 3};

    ck_assert_int_eq(buf_put(&rx, init, sizeof(init)), 0);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
    ck_assert(take_reply());
    ck_assert_uint_eq(rep_type, SFC_VERSION);
}

static void setup_tree(void)
{
    char p[PATH_MAX];

    snprintf(base, sizeof(base), "%s/t.XXXXXX", top);
    ck_assert_ptr_nonnull(mkdtemp(base));
    put_dir("proj");
    put_file("proj/hello", "hello world", 0644);
    put_dir("proj/d");
    put_file("proj/d/file", "inside", 0644);
    put_dir("proj/empty");
    put_dir("ro");
    put_file("ro/f", "ro file", 0644);
    put_dir("ro/sub");
    put_file("ro/sub/g", "g", 0644);
    put_link("f", "ro/link");
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
    path_of(p, "outside/new");
    put_link(p, "proj/dang");
    put_link("d", "proj/in");
    path_of(p, "proj/fifo");
    ck_assert_int_eq(mkfifo(p, 0644), 0);

    static const char *const old[] = {
        "ro/f",  "ro/sub/g",       "ro/sub",           "ro/link",     "ro",     "proj2/x",
        "proj2", "outside/secret", "outside/dir/file", "outside/dir", "outside"};
    for (size_t i = 0; i < sizeof(old) / sizeof(old[0]); i++)
        make_old(old[i]);
    untouched = snapshot("proj");
    new_server();
}

static void setup(void)
{
    setup_tree();
    send_init();
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
    sfs_free(srv);
    srv = NULL;
    cf_close_root(root_rw);
    cf_close_root(root_ro);
    buf_free(&rx);
    buf_free(&tx);
    nftw(base, remove_one, 32, FTW_DEPTH | FTW_PHYS);
    free(untouched);
    free(snap_lines);
    snap_lines = NULL;
    snap_cap = snap_n = 0;
}

/* ==== INIT and framing ==== */

START_TEST(test_init_replies_version_3_with_extensions)
{
    static const char *const want[][2] = {
        {"posix-rename@openssh.com", "1"}, {"statvfs@openssh.com", "2"},
        {"fstatvfs@openssh.com", "2"},     {"hardlink@openssh.com", "1"},
        {"fsync@openssh.com", "1"},        {"limits@openssh.com", "1"},
        {"lsetstat@openssh.com", "1"},     {"fstat-id@offload", "1"},
        {"client-id@offload", "1"},
    };
    uint8_t init[] = {0, 0, 0, 5, SFC_INIT, 0, 0, 0, 3};
    char name[64], value[16];
    uint32_t version;

    ck_assert_int_eq(buf_put(&rx, init, sizeof(init)), 0);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
    ck_assert(take_reply());
    ck_assert_uint_eq(rep_type, SFC_VERSION);
    ck_assert_int_eq(buf_get_u32(&rep, &version), 0);
    ck_assert_uint_eq(version, 3);
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        ck_assert_msg(buf_get_cstring(&rep, name, sizeof(name)) == 0 &&
                          buf_get_cstring(&rep, value, sizeof(value)) == 0,
                      "VERSION: extension %zu ('%s') missing", i, want[i][0]);
        ck_assert_str_eq(name, want[i][0]);
        ck_assert_str_eq(value, want[i][1]);
    }
    ck_assert_uint_eq(buf_avail(&rep), 0);
    ck_assert_uint_eq(buf_avail(&tx), 0);
}
END_TEST

START_TEST(test_init_from_an_older_client_still_offers_3)
{
    uint8_t init[] = {0, 0, 0, 13, SFC_INIT, 0, 0, 0, 2, 0, 0, 0, 1, 'x', 0, 0, 0, 0};
    uint32_t version;

    init[3] = sizeof(init) - 4;
    ck_assert_int_eq(buf_put(&rx, init, sizeof(init)), 0);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
    ck_assert(take_reply());
    ck_assert_uint_eq(rep_type, SFC_VERSION);
    ck_assert_int_eq(buf_get_u32(&rep, &version), 0);
    ck_assert_uint_eq(version, 3);
}
END_TEST

START_TEST(test_first_packet_not_init_is_ebadmsg)
{
    uint8_t init[] = {0, 0, 0, 5, SFC_INIT, 0, 0, 0, 3};

    put_req(SFC_REALPATH, "s", ".");
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), -EBADMSG);
    ck_assert_uint_eq(buf_avail(&tx), 0);
    buf_reset(&rx);
    ck_assert_int_eq(buf_put(&rx, init, sizeof(init)), 0);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), -EBADMSG); /* for good */
    ck_assert_uint_eq(buf_avail(&tx), 0);
}
END_TEST

START_TEST(test_second_init_is_ebadmsg)
{
    uint8_t init[] = {0, 0, 0, 5, SFC_INIT, 0, 0, 0, 3};
    uint32_t id;

    send_init();
    id = put_req(SFC_REALPATH, "s", ".");
    ck_assert_int_eq(buf_put(&rx, init, sizeof(init)), 0);
    put_req(SFC_REALPATH, "s", ".");
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), -EBADMSG);
    ck_assert(take_reply()); /* the request before the second INIT was answered */
    ck_assert_uint_eq(rep_id, id);
    ck_assert(!take_reply()); /* and nothing after it */
}
END_TEST

START_TEST(test_client_version_packet_is_ebadmsg)
{
    uint8_t version[] = {0, 0, 0, 5, SFC_VERSION, 0, 0, 0, 3};

    ck_assert_int_eq(buf_put(&rx, version, sizeof(version)), 0);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), -EBADMSG);
    ck_assert_uint_eq(buf_avail(&tx), 0);
}
END_TEST

START_TEST(test_partial_packet_waits_in_rx)
{
    struct buf whole;
    uint32_t id;

    buf_init(&whole, RX_MAX);
    {
        struct buf save = rx;
        rx = whole;
        id = put_req(SFC_REALPATH, "s", "/proj/d");
        whole = rx;
        rx = save;
    }
    for (size_t i = 0; i < buf_avail(&whole); i++) {
        ck_assert_int_eq(buf_put_u8(&rx, buf_ptr(&whole)[i]), 0);
        ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
        if (i + 1 < buf_avail(&whole)) {
            ck_assert_msg(buf_avail(&tx) == 0, "a reply after %zu of %zu bytes", i + 1,
                          buf_avail(&whole));
            ck_assert_uint_eq(buf_avail(&rx), i + 1);
        }
    }
    ck_assert(take_reply());
    ck_assert_uint_eq(rep_id, id);
    expect_one_name("/proj/d", "REALPATH fed byte by byte");
    buf_free(&whole);
}
END_TEST

START_TEST(test_packet_over_limit_is_ebadmsg)
{
    uint8_t head[] = {0, 0, 0, 0, SFC_WRITE, 0, 0, 0, 1};

    head[0] = (uint8_t)((SFS_PACKET_MAX + 1) >> 24);
    head[1] = (uint8_t)((SFS_PACKET_MAX + 1) >> 16);
    head[2] = (uint8_t)((SFS_PACKET_MAX + 1) >> 8);
    head[3] = (uint8_t)(SFS_PACKET_MAX + 1);
    ck_assert_int_eq(buf_put(&rx, head, sizeof(head)), 0);
    /* refused at once, from its length alone */
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), -EBADMSG);
    ck_assert_uint_eq(buf_avail(&tx), 0);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), -EBADMSG);
}
END_TEST

START_TEST(test_packet_at_limit_accepted)
{
    static uint8_t filler[SFS_PACKET_MAX - 5];
    uint32_t id = put_req(99, "r", filler, sizeof(filler));

    ck_assert_uint_eq(buf_avail(&rx), 4 + (size_t)SFS_PACKET_MAX);
    run(id);
    expect_status(SFC_OP_UNSUPPORTED, "a packet of exactly SFS_PACKET_MAX bytes");
}
END_TEST

START_TEST(test_short_packet_length_is_ebadmsg)
{
    static const uint8_t lens[] = {0, 1, 4};

    for (size_t i = 0; i < sizeof(lens); i++) {
        uint8_t pkt[] = {0, 0, 0, lens[i], SFC_READ, 0, 0, 0, 0};

        make_server(); /* a stream refused stays refused: a new one for each length */
        send_init();
        ck_assert_int_eq(buf_put(&rx, pkt, sizeof(pkt)), 0);
        ck_assert_msg(sfs_process(srv, &rx, &tx) == -EBADMSG, "length %u: expected -EBADMSG",
                      lens[i]);
    }
}
END_TEST

/* Each truncation of a valid OPEN (a field running past the packet's end) gets BAD_MESSAGE with
 * the request's id, and the stream goes on; the whole request works. */
START_TEST(test_truncated_fields_give_bad_message_and_stream_continues)
{
    struct buf fields;
    struct hnd h;
    size_t full;

    buf_init(&fields, 4096);
    ck_assert_int_eq(buf_put_cstring(&fields, "/proj/hello"), 0);
    ck_assert_int_eq(buf_put_u32(&fields, SFC_FXF_READ), 0);
    /* ATTRS by hand: sfc_put_attr writes no extended pairs */
    ck_assert_int_eq(buf_put_u32(&fields, TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_UIDGID |
                                              TUN_SFTP_ATTR_PERMISSIONS | TUN_SFTP_ATTR_ACMODTIME |
                                              TUN_SFTP_ATTR_EXTENDED),
                     0);
    ck_assert_int_eq(buf_put_u64(&fields, 1), 0);    /* size */
    ck_assert_int_eq(buf_put_u32(&fields, 2), 0);    /* uid */
    ck_assert_int_eq(buf_put_u32(&fields, 3), 0);    /* gid */
    ck_assert_int_eq(buf_put_u32(&fields, 0644), 0); /* permissions */
    ck_assert_int_eq(buf_put_u32(&fields, 4), 0);    /* atime */
    ck_assert_int_eq(buf_put_u32(&fields, 5), 0);    /* mtime */
    ck_assert_int_eq(buf_put_u32(&fields, 1), 0);    /* one extended pair */
    ck_assert_int_eq(buf_put_cstring(&fields, "k"), 0);
    ck_assert_int_eq(buf_put_cstring(&fields, "v"), 0);
    full = buf_avail(&fields);
    for (size_t n = 0; n < full; n++) {
        char what[64];

        snprintf(what, sizeof(what), "OPEN cut to %zu of %zu bytes", n, full);
        run(put_req(SFC_OPEN, "r", buf_ptr(&fields), n));
        expect_status(SFC_BAD_MESSAGE, what);
    }
    run(put_req(SFC_OPEN, "r", buf_ptr(&fields), full));
    expect_handle(&h, "the whole OPEN");
    buf_free(&fields);
}
END_TEST

START_TEST(test_string_length_past_end_gives_bad_message)
{
    static const uint8_t huge[] = {0xff, 0xff, 0xff, 0xff, '/', 'p'};
    static const uint8_t past[] = {0, 0, 0, 9, '/', 'p'};

    run(put_req(SFC_STAT, "r", huge, sizeof(huge)));
    expect_status(SFC_BAD_MESSAGE, "STAT with a path length of 2^32-1");
    run(put_req(SFC_STAT, "r", past, sizeof(past)));
    expect_status(SFC_BAD_MESSAGE, "STAT with a path length 7 past the end");
    expect_realpath("/proj", "/proj"); /* the stream goes on */
}
END_TEST

START_TEST(test_attr_count_past_end_gives_bad_message)
{
    uint8_t attrs[] = {0x80, 0, 0, 0, 0, 0, 0, 40}; /* EXTENDED, 40 pairs, none there */

    run(put_req(SFC_SETSTAT, "sr", "/proj/hello", attrs, sizeof(attrs)));
    expect_status(SFC_BAD_MESSAGE, "SETSTAT with 40 extended pairs missing");
    attrs[7] = 0; /* twin: no pairs */
    run(put_req(SFC_SETSTAT, "sr", "/proj/hello", attrs, sizeof(attrs)));
    expect_status(SFC_OK, "SETSTAT with 0 extended pairs");
}
END_TEST

START_TEST(test_unknown_type_is_op_unsupported_and_stream_continues)
{
    static const uint8_t types[] = {0, 21, 99, SFC_STATUS, SFC_HANDLE, SFC_EXTENDED_REPLY, 255};

    for (size_t i = 0; i < sizeof(types); i++) {
        char what[32];

        snprintf(what, sizeof(what), "type %u", types[i]);
        run(put_req(types[i], "s", "/proj/hello"));
        expect_status(SFC_OP_UNSUPPORTED, what);
    }
    expect_realpath("proj", "/proj");
}
END_TEST

START_TEST(test_unknown_extension_is_op_unsupported)
{
    run(put_req(SFC_EXTENDED, "ss", "copy-data", "/proj/hello"));
    expect_status(SFC_OP_UNSUPPORTED, "extension copy-data");
    run(put_req(SFC_EXTENDED, "s", "posix-rename@openssh.co"));
    expect_status(SFC_OP_UNSUPPORTED, "extension with a known name's prefix");
    run(put_req(SFC_EXTENDED, ""));
    expect_status(SFC_BAD_MESSAGE, "EXTENDED without a name");
    run(put_req(SFC_EXTENDED, "s", "limits@openssh.com")); /* twin: a known one */
    ck_assert_uint_eq(rep_type, SFC_EXTENDED_REPLY);
}
END_TEST

START_TEST(test_pipelined_requests_answered_in_order)
{
    uint32_t ids[5];

    ids[0] = put_req(SFC_REALPATH, "s", "/proj");
    ids[1] = put_req(SFC_STAT, "s", "/nope");
    ids[2] = put_req(99, "");
    ids[3] = put_req(SFC_LSTAT, "s", "/proj/hello");
    ids[4] = put_req(SFC_REALPATH, "s", "/ro");
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
    for (size_t i = 0; i < 5; i++) {
        ck_assert_msg(take_reply(), "reply %zu missing", i);
        ck_assert_uint_eq(rep_id, ids[i]);
    }
    ck_assert(!take_reply());
}
END_TEST

/* While tx has less than SFS_REPLY_MAX bytes of room, requests wait in rx. */
START_TEST(test_full_tx_leaves_requests_in_rx)
{
    static uint8_t fill[3 * SFS_REPLY_MAX + 1];
    size_t pending;
    uint32_t id;

    ck_assert_int_eq(buf_put(&tx, fill, sizeof(fill)), 0);
    id = put_req(SFC_REALPATH, "s", "/proj");
    pending = buf_avail(&rx);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
    ck_assert_uint_eq(buf_avail(&rx), pending);
    ck_assert_uint_eq(buf_avail(&tx), sizeof(fill));
    buf_consume(&tx, sizeof(fill)); /* sent */
    run(id);
    expect_one_name("/proj", "REALPATH after tx drained");
}
END_TEST

START_TEST(test_small_tx_is_einval)
{
    struct buf small;

    buf_init(&small, SFS_REPLY_MAX - 1);
    put_req(SFC_REALPATH, "s", "/proj");
    ck_assert_int_eq(sfs_process(srv, &rx, &small), -EINVAL);
    ck_assert_uint_gt(buf_avail(&rx), 0); /* nothing consumed */
    buf_free(&small);
    run(next_id); /* twin: a big enough tx */
    expect_one_name("/proj", "REALPATH");
}
END_TEST

/* ==== namespace ==== */

START_TEST(test_realpath_cleans_paths)
{
    expect_realpath(".", "/");
    expect_realpath("", "/");
    expect_realpath("/", "/");
    expect_realpath("//./", "/");
    expect_realpath("/proj", "/proj");
    expect_realpath("proj", "/proj");
    expect_realpath("/proj/a/../b", "/proj/b");
    expect_realpath("proj//d/./file/", "/proj/d/file");
    expect_realpath("./ro/missing", "/ro/missing"); /* lexical: need not exist */
    expect_realpath("/proj/in", "/proj/in");        /* lexical: not resolved */
}
END_TEST

START_TEST(test_unknown_root_is_no_such_file)
{
    expect_path_status(SFC_REALPATH, "/nope", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_REALPATH, "/nope/x", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_STAT, "/nope", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_LSTAT, "nope/x", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_OPENDIR, "/nope", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_READLINK, "/nope", SFC_NO_SUCH_FILE);
    expect_open_status("/nope/x", SFC_FXF_READ, SFC_NO_SUCH_FILE);
    expect_path_status(SFC_STAT, "/etc/passwd", SFC_NO_SUCH_FILE); /* not the host's */
}
END_TEST

/* Names that share a prefix with a root name are not that root. */
START_TEST(test_sibling_prefix_names_are_not_roots)
{
    use_resolver(_i);
    expect_path_status(SFC_STAT, "/proj2/x", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_STAT, "/pro", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_STAT, "/projx", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_STAT, "/proj/../proj2/x", SFC_PERMISSION_DENIED);
    expect_open_status("/proj2/x", SFC_FXF_READ, SFC_NO_SUCH_FILE);
    expect_untouched();
    attrs_ok(SFC_STAT, "/proj/hello"); /* twin */
}
END_TEST

START_TEST(test_dotdot_cannot_leave_a_root)
{
    static const char *const paths[] = {
        "/..",
        "..",
        "/proj/..",
        "/proj/../ro/f",
        "/proj/../proj/hello",
        "/proj/d/../..",
        "/ro/sub/../../proj",
        "proj/./../ro",
        "/proj/../../outside/secret",
    };

    use_resolver(_i);

    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        expect_path_status(SFC_REALPATH, paths[i], SFC_PERMISSION_DENIED);
        expect_path_status(SFC_STAT, paths[i], SFC_PERMISSION_DENIED);
        expect_path_status(SFC_OPENDIR, paths[i], SFC_PERMISSION_DENIED);
        expect_open_status(paths[i], SFC_FXF_READ, SFC_PERMISSION_DENIED);
    }
    expect_realpath("/proj/d/..", "/proj"); /* twin: inside the root */
    expect_untouched();
}
END_TEST

START_TEST(test_top_is_a_readonly_directory)
{
    struct tun_sftp_attr a = attrs_ok(SFC_STAT, "/");

    ck_assert_msg(a.perm == (S_IFDIR | 0555), "STAT /: expected mode 040555, got 0%o", a.perm);
    a = attrs_ok(SFC_LSTAT, ".");
    ck_assert_uint_eq(a.perm, S_IFDIR | 0555);
    expect_open_status("/", SFC_FXF_READ, SFC_FAILURE);
}
END_TEST

START_TEST(test_top_refuses_every_change)
{
    struct tun_sftp_attr none = {0}, perm = attr_perm(0777);
    char *before = snapshot(NULL);

    expect_open_status("/new", SFC_FXF_WRITE | SFC_FXF_CREAT, SFC_PERMISSION_DENIED);
    expect_open_status("/", SFC_FXF_WRITE, SFC_PERMISSION_DENIED);
    run(put_req(SFC_MKDIR, "sa", "/new", &none));
    expect_status(SFC_PERMISSION_DENIED, "MKDIR /new");
    run(put_req(SFC_SETSTAT, "sa", "/", &perm));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT /");
    expect_path_status(SFC_REMOVE, "/proj", SFC_PERMISSION_DENIED);
    expect_path_status(SFC_RMDIR, "/proj", SFC_PERMISSION_DENIED);
    expect_path_status(SFC_RMDIR, "/", SFC_PERMISSION_DENIED);
    run(put_req(SFC_RENAME, "ss", "/proj", "/proj3"));
    expect_status(SFC_PERMISSION_DENIED, "RENAME /proj");
    run(put_req(SFC_RENAME, "ss", "/proj/hello", "/hello"));
    expect_status(SFC_PERMISSION_DENIED, "RENAME into the top");
    run(put_req(SFC_RENAME, "ss", "/proj/hello", "/ro"));
    expect_status(SFC_PERMISSION_DENIED, "RENAME onto a root");
    run(put_req(SFC_EXTENDED, "sss", "posix-rename@openssh.com", "/proj/hello", "/ro"));
    expect_status(SFC_PERMISSION_DENIED, "posix-rename onto a root");
    run(put_req(SFC_EXTENDED, "sss", "hardlink@openssh.com", "/proj/hello", "/h"));
    expect_status(SFC_PERMISSION_DENIED, "hardlink into the top");
    run(put_req(SFC_SYMLINK, "ss", "proj", "/lnk"));
    expect_status(SFC_PERMISSION_DENIED, "SYMLINK into the top");
    expect_same_snapshot(before, NULL, "the whole tree");
    free(before);
}
END_TEST

START_TEST(test_readdir_top_lists_roots)
{
    struct entry e[8];
    struct hnd h = opendir_ok("/");
    size_t n, batches;
    struct stat st;

    n = readdir_all(&h, e, 8, &batches);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(e[0].name, "proj");
    ck_assert_str_eq(e[1].name, "ro");
    lstat_of("proj", &st);
    ck_assert_uint_eq(e[0].a.perm, st.st_mode);
    ck_assert_uint_eq(e[0].a.mtime, (uint32_t)st.st_mtim.tv_sec);
    lstat_of("ro", &st);
    ck_assert_uint_eq(e[1].a.mtime, (uint32_t)st.st_mtim.tv_sec);
    ck_assert_msg(e[1].longname[0] == 'd', "long name of a root: '%s'", e[1].longname);
    close_ok(&h);
}
END_TEST

START_TEST(test_readdir_root_shows_entries_unfollowed)
{
    static const char *const names[] = {"hello", "d",  "empty", "fa", "fr",
                                        "la",    "lr", "dang",  "in", "fifo"};
    struct entry e[32];
    struct hnd h = opendir_ok("/proj");
    size_t n, batches;

    n = readdir_all(&h, e, 32, &batches);
    ck_assert_msg(n == sizeof(names) / sizeof(names[0]), "expected %zu names, got %zu",
                  sizeof(names) / sizeof(names[0]), n);
    for (size_t i = 0; i < n; i++) {
        const struct entry *x = find_entry(e, n, names[i]);
        char rel[64];
        struct stat st;

        ck_assert_msg(x != NULL, "'%s' not listed", names[i]);
        snprintf(rel, sizeof(rel), "proj/%s", names[i]);
        lstat_of(rel, &st);
        ck_assert_msg(x->a.perm == st.st_mode && x->a.size == (uint64_t)st.st_size,
                      "'%s': expected mode 0%o size %lld (lstat), got 0%o %llu", names[i],
                      st.st_mode, (long long)st.st_size, x->a.perm, (unsigned long long)x->a.size);
        ck_assert_msg(strlen(x->longname) > strlen(names[i]) &&
                          strcmp(x->longname + strlen(x->longname) - strlen(names[i]), names[i]) ==
                              0,
                      "long name of '%s' does not end with it: '%s'", names[i], x->longname);
    }
    ck_assert_msg(strncmp(find_entry(e, n, "fa")->longname, "lrwxrwxrwx", 10) == 0,
                  "long name of a symlink: '%s'", find_entry(e, n, "fa")->longname);
    ck_assert_msg(strncmp(find_entry(e, n, "hello")->longname, "-rw-r--r--", 10) == 0,
                  "long name of a 0644 file: '%s'", find_entry(e, n, "hello")->longname);
    ck_assert_uint_eq(find_entry(e, n, "d")->longname[0], 'd');
    ck_assert_uint_eq(find_entry(e, n, "fifo")->longname[0], 'p');
    close_ok(&h);
    expect_untouched();
}
END_TEST

START_TEST(test_readdir_empty_dir_is_eof)
{
    struct entry e[1];
    struct hnd h = opendir_ok("/proj/empty");
    size_t batches;

    ck_assert_uint_eq(readdir_all(&h, e, 1, &batches), 0);
    ck_assert_uint_eq(batches, 0);
    run(put_req(SFC_READDIR, "b", h.b, (size_t)h.n)); /* EOF again */
    expect_status(SFC_EOF, "READDIR after EOF");
}
END_TEST

START_TEST(test_readdir_returns_batches_of_100)
{
    static struct entry e[300];
    size_t n, batches;
    struct hnd h;

    put_dir("proj/many");
    for (int i = 0; i < 250; i++) {
        char rel[64];

        snprintf(rel, sizeof(rel), "proj/many/f%03d", i);
        put_file(rel, "", 0644);
    }
    h = opendir_ok("/proj/many");
    n = readdir_all(&h, e, 300, &batches);
    ck_assert_uint_eq(n, 250);
    ck_assert_uint_eq(batches, 3);
    for (int i = 0; i < 250; i++) {
        char name[16];

        snprintf(name, sizeof(name), "f%03d", i);
        ck_assert_msg(find_entry(e, n, name) != NULL, "'%s' not listed", name);
    }
}
END_TEST

START_TEST(test_opendir_follows_inward_symlink)
{
    struct entry e[4];
    struct hnd h = opendir_ok("/proj/in");
    size_t batches;

    ck_assert_uint_eq(readdir_all(&h, e, 4, &batches), 1);
    ck_assert_str_eq(e[0].name, "file");
    run(put_req(SFC_OPENDIR, "s", "/proj/la"));
    expect_status(SFC_PERMISSION_DENIED, "OPENDIR of an outward symlink");
    expect_untouched();
}
END_TEST

/* ==== files ==== */

START_TEST(test_open_write_read_roundtrip_binary)
{
    static uint8_t data[200000], got[sizeof(data)];
    struct tun_sftp_attr mode = attr_perm(0600);
    struct hnd h;
    char p[PATH_MAX];
    struct stat st;
    size_t done = 0;
    uint32_t code;

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 % 251); /* holds NULs */
    data[0] = data[1] = 0;
    h = open_ok("/proj/new.bin", SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_TRUNC, &mode);
    write_ok(&h, 100000, data + 100000, 100000); /* out of order */
    write_ok(&h, 0, data, 100000);
    close_ok(&h);

    path_of(p, "proj/new.bin");
    ck_assert_int_eq(stat(p, &st), 0);
    ck_assert_uint_eq(st.st_size, sizeof(data));
    ck_assert_msg((st.st_mode & 07777) == 0600, "created with mode 0%o, expected 0600",
                  st.st_mode & 07777);
    ck_assert_uint_eq(read_noatime(p, got, sizeof(got)), sizeof(data));
    ck_assert_msg(memcmp(got, data, sizeof(data)) == 0, "the file on disk differs from the data");

    memset(got, 0xa5, sizeof(got));
    h = open_ok("/proj/new.bin", SFC_FXF_READ, NULL);
    for (;;) {
        long n = read_h(&h, done, 65536, got + done, sizeof(got) - done, &code);
        if (n < 0)
            break;
        done += (size_t)n;
    }
    ck_assert_msg(code == SFC_EOF, "READ at the end: expected EOF, got %s", code_name(code));
    ck_assert_uint_eq(done, sizeof(data));
    ck_assert_msg(memcmp(got, data, sizeof(data)) == 0, "READ returned other bytes");
    close_ok(&h);
}
END_TEST

START_TEST(test_read_length_capped)
{
    static uint8_t big[SFS_READ_MAX + 50000], got[SFS_READ_MAX];
    struct hnd h;
    uint32_t code;

    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)i;
    put_file_n("proj/big", big, sizeof(big), 0644);
    h = open_ok("/proj/big", SFC_FXF_READ, NULL);
    ck_assert_int_eq(read_h(&h, 0, 0xffffffffu, got, sizeof(got), &code), SFS_READ_MAX);
    ck_assert_int_eq(memcmp(got, big, SFS_READ_MAX), 0);
    ck_assert_int_eq(read_h(&h, SFS_READ_MAX, 1u << 20, got, sizeof(got), &code), 50000);
    ck_assert_int_eq(read_h(&h, 0, 10, got, sizeof(got), &code), 10); /* twin: small */
}
END_TEST

START_TEST(test_read_at_huge_offsets_is_eof)
{
    static const uint64_t offs[] = {UINT64_MAX,       UINT64_MAX - 1,   1ull << 63,
                                    (1ull << 63) - 1, (1ull << 63) - 2, 1ull << 40};
    uint8_t got[16];
    struct hnd h = open_ok("/proj/hello", SFC_FXF_READ, NULL);
    uint32_t code;

    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        long n = read_h(&h, offs[i], 0xffffffffu, got, sizeof(got), &code);
        ck_assert_msg(n < 0 && code == SFC_EOF, "READ at %llu: expected EOF, got %ld / %s",
                      (unsigned long long)offs[i], n, n < 0 ? code_name(code) : "data");
    }
    ck_assert_int_eq(read_h(&h, 6, 100, got, sizeof(got), &code), 5); /* twin */
    ck_assert_int_eq(memcmp(got, "world", 5), 0);
}
END_TEST

START_TEST(test_write_at_huge_offset_fails)
{
    struct hnd h = open_ok("/proj/hello", SFC_FXF_WRITE, NULL);

    run(put_req(SFC_WRITE, "bqs", h.b, (size_t)h.n, UINT64_MAX, "x"));
    expect_status(SFC_FAILURE, "WRITE at 2^64-1");
    run(put_req(SFC_WRITE, "bqs", h.b, (size_t)h.n, (uint64_t)INT64_MAX, "xy"));
    expect_status(SFC_FAILURE, "WRITE past 2^63-1");
    expect_content("proj/hello", "hello world");
    write_ok(&h, 0, "J", 1); /* twin */
    expect_content("proj/hello", "Jello world");
}
END_TEST

START_TEST(test_open_missing_is_no_such_file)
{
    expect_open_status("/proj/missing", SFC_FXF_READ, SFC_NO_SUCH_FILE);
    expect_open_status("/proj/nodir/x", SFC_FXF_WRITE | SFC_FXF_CREAT, SFC_NO_SUCH_FILE);
    ck_assert(!exists("proj/missing"));
}
END_TEST

START_TEST(test_open_excl_refuses_existing)
{
    struct hnd h;

    expect_open_status("/proj/hello", SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_EXCL, SFC_FAILURE);
    expect_content("proj/hello", "hello world");
    h = open_ok("/proj/fresh", SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_EXCL, NULL); /* twin */
    close_ok(&h);
    ck_assert(exists("proj/fresh"));
}
END_TEST

START_TEST(test_open_trunc_and_append)
{
    struct hnd h = open_ok("/proj/hello", SFC_FXF_WRITE | SFC_FXF_TRUNC, NULL);

    close_ok(&h);
    expect_content("proj/hello", "");
    h = open_ok("/proj/d/file", SFC_FXF_WRITE | SFC_FXF_APPEND, NULL);
    write_ok(&h, 0, "+more", 5);
    close_ok(&h);
    expect_content("proj/d/file", "inside+more");
}
END_TEST

START_TEST(test_open_readonly_handle_refuses_write)
{
    struct hnd h = open_ok("/proj/hello", SFC_FXF_READ, NULL);

    run(put_req(SFC_WRITE, "bqs", h.b, (size_t)h.n, (uint64_t)0, "x"));
    expect_status(SFC_FAILURE, "WRITE on a handle opened for reading");
    expect_content("proj/hello", "hello world");
}
END_TEST

START_TEST(test_stat_lstat_fstat)
{
    struct tun_sftp_attr a;
    struct hnd h;
    struct stat st;

    lstat_of("proj/hello", &st);
    a = attrs_ok(SFC_STAT, "/proj/hello");
    ck_assert_uint_eq(a.flags, TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_UIDGID |
                                   TUN_SFTP_ATTR_PERMISSIONS | TUN_SFTP_ATTR_ACMODTIME);
    ck_assert_uint_eq(a.size, 11);
    ck_assert_uint_eq(a.perm, st.st_mode);
    ck_assert_uint_eq(a.uid, st.st_uid);
    ck_assert_uint_eq(a.mtime, (uint32_t)st.st_mtim.tv_sec);
    a = attrs_ok(SFC_STAT, "/proj/in"); /* inward symlink followed */
    ck_assert(S_ISDIR(a.perm));
    a = attrs_ok(SFC_LSTAT, "/proj/in");
    ck_assert(S_ISLNK(a.perm));
    h = open_ok("/proj/hello", SFC_FXF_READ, NULL);
    run(put_req(SFC_FSTAT, "b", h.b, (size_t)h.n));
    ck_assert_uint_eq(rep_type, SFC_ATTRS);
    ck_assert_int_eq(sfc_get_attr(&rep, &a), 0);
    ck_assert_uint_eq(a.size, 11);
    expect_path_status(SFC_STAT, "/proj/missing", SFC_NO_SUCH_FILE);
}
END_TEST

START_TEST(test_setstat_applies_size_mode_times)
{
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_PERMISSIONS |
                                       TUN_SFTP_ATTR_ACMODTIME,
                              .size = 5,
                              .perm = 0600,
                              .atime = 1200000000,
                              .mtime = 1300000000};
    struct stat st;

    run(put_req(SFC_SETSTAT, "sa", "/proj/hello", &a));
    expect_status(SFC_OK, "SETSTAT");
    lstat_of("proj/hello", &st);
    ck_assert_uint_eq(st.st_size, 5);
    ck_assert_uint_eq(st.st_mode & 07777, 0600);
    ck_assert_int_eq(st.st_atim.tv_sec, 1200000000);
    ck_assert_int_eq(st.st_mtim.tv_sec, 1300000000);
    expect_content("proj/hello", "hello");
    run(put_req(SFC_SETSTAT, "sa", "/proj/missing", &a));
    expect_status(SFC_NO_SUCH_FILE, "SETSTAT of a missing file");
}
END_TEST

START_TEST(test_setstat_uidgid_refused_without_change)
{
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_UIDGID | TUN_SFTP_ATTR_PERMISSIONS,
                              .uid = 4242,
                              .gid = 4242,
                              .perm = 0600};
    struct hnd h = open_ok("/proj/hello", SFC_FXF_READ | SFC_FXF_WRITE, NULL);
    struct stat st;

    run(put_req(SFC_SETSTAT, "sa", "/proj/hello", &a));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT giving the file to another owner");
    run(put_req(SFC_FSETSTAT, "ba", h.b, (size_t)h.n, &a));
    expect_status(SFC_PERMISSION_DENIED, "FSETSTAT giving the file to another owner");
    lstat_of("proj/hello", &st);
    ck_assert_msg((st.st_mode & 07777) == 0644, "mode changed to 0%o", st.st_mode & 07777);
    ck_assert_msg(st.st_uid != 4242 && st.st_gid != 4242, "owner changed to %u:%u",
                  (unsigned)st.st_uid, (unsigned)st.st_gid);
}
END_TEST

START_TEST(test_setstat_own_uidgid_accepted_as_noop)
{
    struct stat st;
    lstat_of("proj/hello", &st);
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_UIDGID | TUN_SFTP_ATTR_PERMISSIONS,
                              .uid = (uint32_t)st.st_uid,
                              .gid = (uint32_t)st.st_gid,
                              .perm = 0600};
    struct hnd h = open_ok("/proj/hello", SFC_FXF_READ | SFC_FXF_WRITE, NULL);

    run(put_req(SFC_SETSTAT, "sa", "/proj/hello", &a));
    expect_status(SFC_OK, "SETSTAT with the file's own uid/gid (cp -a)");
    lstat_of("proj/hello", &st);
    ck_assert_msg((st.st_mode & 07777) == 0600, "mode is 0%o, want 0600", st.st_mode & 07777);
    a.perm = 0640;
    run(put_req(SFC_FSETSTAT, "ba", h.b, (size_t)h.n, &a));
    expect_status(SFC_OK, "FSETSTAT with the file's own uid/gid");
    lstat_of("proj/hello", &st);
    ck_assert_msg((st.st_mode & 07777) == 0640, "mode is 0%o, want 0640", st.st_mode & 07777);
}
END_TEST

START_TEST(test_fsetstat_applies_to_open_file)
{
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_PERMISSIONS |
                                       TUN_SFTP_ATTR_ACMODTIME,
                              .size = 2,
                              .perm = 0640,
                              .atime = 1200000000,
                              .mtime = 1300000000};
    struct hnd h = open_ok("/proj/hello", SFC_FXF_READ | SFC_FXF_WRITE, NULL);
    struct stat st;

    run(put_req(SFC_FSETSTAT, "ba", h.b, (size_t)h.n, &a));
    expect_status(SFC_OK, "FSETSTAT");
    lstat_of("proj/hello", &st);
    ck_assert_uint_eq(st.st_size, 2);
    ck_assert_uint_eq(st.st_mode & 07777, 0640);
    ck_assert_int_eq(st.st_mtim.tv_sec, 1300000000);
}
END_TEST

START_TEST(test_mkdir_rmdir_remove)
{
    struct tun_sftp_attr mode = attr_perm(0750);
    struct stat st;

    run(put_req(SFC_MKDIR, "sa", "/proj/newdir", &mode));
    expect_status(SFC_OK, "MKDIR");
    lstat_of("proj/newdir", &st);
    ck_assert(S_ISDIR(st.st_mode));
    ck_assert_uint_eq(st.st_mode & 07777, 0750);
    run(put_req(SFC_MKDIR, "sa", "/proj/newdir", &mode));
    expect_status(SFC_FAILURE, "MKDIR of an existing name");
    expect_path_status(SFC_RMDIR, "/proj/d", SFC_FAILURE); /* not empty */
    expect_path_status(SFC_RMDIR, "/proj/newdir", SFC_OK);
    ck_assert(!exists("proj/newdir"));
    expect_path_status(SFC_REMOVE, "/proj/hello", SFC_OK);
    ck_assert(!exists("proj/hello"));
    expect_path_status(SFC_REMOVE, "/proj/hello", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_REMOVE, "/proj/d", SFC_FAILURE); /* a directory */
    ck_assert(exists("proj/d/file"));
}
END_TEST

START_TEST(test_rename_refuses_existing_target)
{
    run(put_req(SFC_RENAME, "ss", "/proj/hello", "/proj/d/file"));
    expect_status(SFC_FAILURE, "RENAME onto an existing file");
    expect_content("proj/hello", "hello world");
    expect_content("proj/d/file", "inside");
    run(put_req(SFC_RENAME, "ss", "/proj/hello", "/proj/d/moved")); /* twin */
    expect_status(SFC_OK, "RENAME to a new name");
    ck_assert(!exists("proj/hello"));
    expect_content("proj/d/moved", "hello world");
}
END_TEST

START_TEST(test_posix_rename_replaces)
{
    run(put_req(SFC_EXTENDED, "sss", "posix-rename@openssh.com", "/proj/hello", "/proj/d/file"));
    expect_status(SFC_OK, "posix-rename onto an existing file");
    ck_assert(!exists("proj/hello"));
    expect_content("proj/d/file", "hello world");
}
END_TEST

START_TEST(test_rename_across_roots_fails)
{
    run(put_req(SFC_EXTENDED, "sss", "posix-rename@openssh.com", "/proj/hello", "/ro/x"));
    expect_status(SFC_FAILURE, "posix-rename into another root");
    expect_content("proj/hello", "hello world");
    expect_untouched();
}
END_TEST

START_TEST(test_symlink_takes_openssh_argument_order)
{
    char p[PATH_MAX], text[64];
    ssize_t n;

    run(put_req(SFC_SYMLINK, "ss", "d/file", "/proj/newlink")); /* target, then link path */
    expect_status(SFC_OK, "SYMLINK");
    path_of(p, "proj/newlink");
    n = readlink(p, text, sizeof(text) - 1);
    ck_assert_int_gt(n, 0);
    text[n] = '\0';
    ck_assert_str_eq(text, "d/file");
    ck_assert(!exists("proj/d/file/newlink"));
    run(put_req(SFC_SYMLINK, "ss", "x", "/proj/hello"));
    expect_status(SFC_FAILURE, "SYMLINK over an existing name");
}
END_TEST

START_TEST(test_readlink_returns_text)
{
    char p[PATH_MAX + 32];

    path_of(p, "outside/secret");
    run(put_req(SFC_READLINK, "s", "/proj/fa"));
    expect_one_name(p, "READLINK of an absolute outward link");
    run(put_req(SFC_READLINK, "s", "/proj/fr"));
    expect_one_name("../outside/secret", "READLINK of a relative outward link");
    expect_path_status(SFC_READLINK, "/proj/hello", SFC_FAILURE); /* not a link */
    expect_untouched();
}
END_TEST

START_TEST(test_hardlink_creates_second_name)
{
    struct stat a, b;

    run(put_req(SFC_EXTENDED, "sss", "hardlink@openssh.com", "/proj/hello", "/proj/d/hl"));
    expect_status(SFC_OK, "hardlink");
    lstat_of("proj/hello", &a);
    lstat_of("proj/d/hl", &b);
    ck_assert_uint_eq(a.st_ino, b.st_ino);
    ck_assert_uint_eq(a.st_nlink, 2);
    run(put_req(SFC_EXTENDED, "sss", "hardlink@openssh.com", "/proj/hello", "/proj/d/hl"));
    expect_status(SFC_FAILURE, "hardlink onto an existing name");
}
END_TEST

static void expect_statvfs_reply(bool rdonly)
{
    uint64_t v[11];
    struct statvfs sv;

    ck_assert_msg(rep_type == SFC_EXTENDED_REPLY, "expected EXTENDED_REPLY, got %u", rep_type);
    for (int i = 0; i < 11; i++)
        ck_assert_int_eq(buf_get_u64(&rep, &v[i]), 0);
    ck_assert_uint_eq(buf_avail(&rep), 0);
    ck_assert_int_eq(statvfs(base, &sv), 0);
    ck_assert_uint_eq(v[0], sv.f_bsize);
    ck_assert_uint_eq(v[2], sv.f_blocks);
    ck_assert_uint_eq(v[10], sv.f_namemax);
    ck_assert_msg(((v[9] & 1) != 0) == rdonly, "ST_RDONLY: expected %d, flags %llu", rdonly,
                  (unsigned long long)v[9]);
}

START_TEST(test_statvfs_and_fstatvfs)
{
    struct hnd h;

    run(put_req(SFC_EXTENDED, "ss", "statvfs@openssh.com", "/proj/d"));
    expect_statvfs_reply(false);
    run(put_req(SFC_EXTENDED, "ss", "statvfs@openssh.com", "/ro"));
    expect_statvfs_reply(true);
    run(put_req(SFC_EXTENDED, "ss", "statvfs@openssh.com", "/"));
    expect_statvfs_reply(false);
    h = open_ok("/ro/f", SFC_FXF_READ, NULL);
    run(put_req(SFC_EXTENDED, "sb", "fstatvfs@openssh.com", h.b, (size_t)h.n));
    expect_statvfs_reply(true);
    run(put_req(SFC_EXTENDED, "ss", "statvfs@openssh.com", "/proj/missing"));
    expect_status(SFC_NO_SUCH_FILE, "statvfs of a missing path");
}
END_TEST

START_TEST(test_limits_reply)
{
    uint64_t v[4];

    run(put_req(SFC_EXTENDED, "s", "limits@openssh.com"));
    ck_assert_uint_eq(rep_type, SFC_EXTENDED_REPLY);
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(buf_get_u64(&rep, &v[i]), 0);
    ck_assert_uint_ge(v[0], 262144);
    ck_assert_uint_eq(v[1], 262144);
    ck_assert_uint_eq(v[2], 262144);
    ck_assert_uint_eq(v[3], SFS_HANDLES_MAX);
}
END_TEST

START_TEST(test_fsync_on_handle)
{
    struct hnd h = open_ok("/proj/hello", SFC_FXF_WRITE, NULL);
    static const uint8_t bogus[8] = {0, 0, 3, 0, 0, 0, 0, 1};

    run(put_req(SFC_EXTENDED, "sb", "fsync@openssh.com", h.b, (size_t)h.n));
    expect_status(SFC_OK, "fsync");
    run(put_req(SFC_EXTENDED, "sb", "fsync@openssh.com", bogus, sizeof(bogus)));
    expect_status(SFC_FAILURE, "fsync of a forged handle");
}
END_TEST

START_TEST(test_fstat_id_tells_the_inode)
{
    struct hnd h = open_ok("/proj/hello", SFC_FXF_READ, NULL);
    static const uint8_t bogus[8] = {0, 0, 3, 0, 0, 0, 0, 1};
    uint64_t dev, ino, size, mtime_ns;
    struct stat st;

    lstat_of("proj/hello", &st);
    run(put_req(SFC_EXTENDED, "sb", "fstat-id@offload", h.b, (size_t)h.n));
    ck_assert_uint_eq(rep_type, SFC_EXTENDED_REPLY);
    ck_assert_int_eq(buf_get_u64(&rep, &dev), 0);
    ck_assert_int_eq(buf_get_u64(&rep, &ino), 0);
    ck_assert_int_eq(buf_get_u64(&rep, &size), 0);
    ck_assert_int_eq(buf_get_u64(&rep, &mtime_ns), 0);
    ck_assert_uint_eq(dev, st.st_dev);
    ck_assert_uint_eq(ino, st.st_ino);
    ck_assert_uint_eq(size, (uint64_t)st.st_size);
    ck_assert_uint_eq(mtime_ns, (uint64_t)st.st_mtim.tv_sec * 1000000000u + st.st_mtim.tv_nsec);
    /* a replaced file: the open handle still tells the old inode */
    char a[PATH_MAX], b[PATH_MAX];
    path_of(a, "proj/hello.new");
    path_of(b, "proj/hello");
    FILE *f = fopen(a, "w");
    ck_assert_ptr_nonnull(f);
    fputs("other", f);
    fclose(f);
    ck_assert_int_eq(rename(a, b), 0);
    run(put_req(SFC_EXTENDED, "sb", "fstat-id@offload", h.b, (size_t)h.n));
    ck_assert_int_eq(buf_get_u64(&rep, &dev), 0);
    ck_assert_int_eq(buf_get_u64(&rep, &ino), 0);
    ck_assert_uint_eq(ino, st.st_ino);
    run(put_req(SFC_EXTENDED, "sb", "fstat-id@offload", bogus, sizeof(bogus)));
    expect_status(SFC_FAILURE, "fstat-id of a forged handle");
}
END_TEST

START_TEST(test_lsetstat_sets_times_on_link_itself)
{
    struct tun_sftp_attr a = {
        .flags = TUN_SFTP_ATTR_ACMODTIME, .atime = 1100000000, .mtime = 1100000000};
    struct stat st;

    run(put_req(SFC_EXTENDED, "ssa", "lsetstat@openssh.com", "/proj/in", &a));
    expect_status(SFC_OK, "lsetstat of a symlink");
    lstat_of("proj/in", &st);
    ck_assert_int_eq(st.st_mtim.tv_sec, 1100000000);
    lstat_of("proj/d", &st);
    ck_assert_int_ne(st.st_mtim.tv_sec, 1100000000);
}
END_TEST

START_TEST(test_change_hook_reports_changes)
{
    struct tun_sftp_attr none = {0}, mode = attr_perm(0600);
    static const char *const want[] = {"new",      "new", "new", "sub", "new",
                                       "sub/new2", "l",   "d/h", "l",   "sub/new2"};
    struct hnd h;

    sfs_set_change_hook(srv, hook, NULL);
    h = open_ok("/proj/new", SFC_FXF_WRITE | SFC_FXF_CREAT, NULL); /* new */
    write_ok(&h, 0, "x", 1);                                       /* new */
    run(put_req(SFC_FSETSTAT, "ba", h.b, (size_t)h.n, &mode));     /* new */
    expect_status(SFC_OK, "FSETSTAT");
    close_ok(&h);
    run(put_req(SFC_MKDIR, "sa", "/proj/sub", &none)); /* sub */
    expect_status(SFC_OK, "MKDIR");
    run(put_req(SFC_RENAME, "ss", "/proj/new", "/proj/sub/new2")); /* new, sub/new2 */
    expect_status(SFC_OK, "RENAME");
    run(put_req(SFC_SYMLINK, "ss", "hello", "/proj/l")); /* l */
    expect_status(SFC_OK, "SYMLINK");
    run(put_req(SFC_EXTENDED, "sss", "hardlink@openssh.com", "/proj/hello", "/proj/d/h"));
    expect_status(SFC_OK, "hardlink"); /* d/h */
    expect_path_status(SFC_REMOVE, "/proj/l", SFC_OK);
    expect_path_status(SFC_REMOVE, "/proj/sub/new2", SFC_OK);
    /* reads and failures report nothing */
    h = open_ok("/proj/hello", SFC_FXF_READ, NULL);
    close_ok(&h);
    expect_path_status(SFC_REMOVE, "/proj/missing", SFC_NO_SUCH_FILE);
    expect_path_status(SFC_REMOVE, "/ro/f", SFC_PERMISSION_DENIED);
    attrs_ok(SFC_STAT, "/proj/hello");

    ck_assert_msg(nhooks == sizeof(want) / sizeof(want[0]), "expected %zu changes, got %zu",
                  sizeof(want) / sizeof(want[0]), nhooks);
    for (size_t i = 0; i < nhooks; i++) {
        ck_assert_uint_eq(hooks[i].root, 0);
        ck_assert_uint_eq(hooks[i].client, 0); /* it gave no id */
        ck_assert_msg(strcmp(hooks[i].path, want[i]) == 0, "change %zu: expected '%s', got '%s'", i,
                      want[i], hooks[i].path);
    }
}
END_TEST

/* client-id@offload: the id reaches the hook with every later change; 0 is refused. */
START_TEST(test_client_id_reaches_the_change_hook)
{
    struct tun_sftp_attr none = {0};

    sfs_set_change_hook(srv, hook, NULL);
    run(put_req(SFC_EXTENDED, "sq", "client-id@offload", (uint64_t)0));
    expect_status(SFC_FAILURE, "client-id 0");
    run(put_req(SFC_EXTENDED, "sq", "client-id@offload", (uint64_t)0x1234567890abcdefULL));
    expect_status(SFC_OK, "client-id");
    run(put_req(SFC_MKDIR, "sa", "/proj/by-client", &none));
    expect_status(SFC_OK, "MKDIR");
    ck_assert_uint_eq(nhooks, 1);
    ck_assert_uint_eq(hooks[0].client, 0x1234567890abcdefULL);
    ck_assert_str_eq(hooks[0].path, "by-client");
    /* every BEGIN has its END, with the same id (also for the request that gave the id) */
    ck_assert_int_eq(open_by_unnamed, 0);
    ck_assert_int_eq(open_by_named, 0);
}
END_TEST

/* ==== handles ==== */

START_TEST(test_bad_handles_fail_cleanly)
{
    static const uint8_t h3[3] = {0, 0, 0}, forged[8] = {0, 0, 0x13, 0x88, 0, 0, 0, 1};
    static uint8_t h100[100];
    const struct {
        const void *p;
        size_t n;
        const char *what;
    } bad[] = {
        {"", 0, "an empty handle"},
        {h3, sizeof(h3), "a 3-byte handle"},
        {h100, sizeof(h100), "a 100-byte handle"},
        {forged, sizeof(forged), "a handle past the table"},
    };
    uint8_t got[16];

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        run(put_req(SFC_READ, "bqu", bad[i].p, bad[i].n, (uint64_t)0, 10u));
        expect_status(SFC_FAILURE, bad[i].what);
        run(put_req(SFC_WRITE, "bqs", bad[i].p, bad[i].n, (uint64_t)0, "x"));
        expect_status(SFC_FAILURE, bad[i].what);
        run(put_req(SFC_CLOSE, "b", bad[i].p, bad[i].n));
        expect_status(SFC_FAILURE, bad[i].what);
        run(put_req(SFC_FSTAT, "b", bad[i].p, bad[i].n));
        expect_status(SFC_FAILURE, bad[i].what);
        run(put_req(SFC_READDIR, "b", bad[i].p, bad[i].n));
        expect_status(SFC_FAILURE, bad[i].what);
    }
    {
        struct hnd h = open_ok("/proj/hello", SFC_FXF_READ, NULL); /* twin */
        uint32_t code;
        ck_assert_int_eq(read_h(&h, 0, 5, got, sizeof(got), &code), 5);
    }
}
END_TEST

START_TEST(test_stale_handle_after_close_fails)
{
    struct hnd h = open_ok("/proj/hello", SFC_FXF_READ, NULL);
    uint8_t got[16];
    uint32_t code;

    close_ok(&h);
    ck_assert_int_eq(read_h(&h, 0, 5, got, sizeof(got), &code), -1);
    ck_assert_msg(code == SFC_FAILURE, "READ on a closed handle: got %s", code_name(code));
    run(put_req(SFC_CLOSE, "b", h.b, (size_t)h.n));
    expect_status(SFC_FAILURE, "second CLOSE");
}
END_TEST

START_TEST(test_handle_of_wrong_kind_fails)
{
    struct hnd d = opendir_ok("/proj/d"), t = opendir_ok("/"), f;
    uint8_t got[16];
    uint32_t code;

    ck_assert_int_eq(read_h(&d, 0, 5, got, sizeof(got), &code), -1);
    ck_assert_msg(code == SFC_FAILURE, "READ on a dir handle: got %s", code_name(code));
    ck_assert_int_eq(read_h(&t, 0, 5, got, sizeof(got), &code), -1);
    ck_assert_msg(code == SFC_FAILURE, "READ on the top's handle: got %s", code_name(code));
    run(put_req(SFC_WRITE, "bqs", d.b, (size_t)d.n, (uint64_t)0, "x"));
    expect_status(SFC_FAILURE, "WRITE on a dir handle");
    f = open_ok("/proj/hello", SFC_FXF_READ, NULL);
    run(put_req(SFC_READDIR, "b", f.b, (size_t)f.n));
    expect_status(SFC_FAILURE, "READDIR on a file handle");
    ck_assert_int_eq(read_h(&f, 0, 5, got, sizeof(got), &code), 5); /* twin */
}
END_TEST

START_TEST(test_handle_table_full_fails_cleanly)
{
    struct hnd first, h;
    uint8_t got[16];
    uint32_t code;

    first = opendir_ok("/");
    for (int i = 1; i < SFS_HANDLES_MAX; i++)
        h = opendir_ok("/"); /* no descriptor behind these */
    expect_open_status("/proj/created", SFC_FXF_WRITE | SFC_FXF_CREAT, SFC_FAILURE);
    ck_assert_msg(!exists("proj/created"), "OPEN with a full table created the file");
    expect_path_status(SFC_OPENDIR, "/proj", SFC_FAILURE);
    close_ok(&first);
    h = opendir_ok("/"); /* the freed slot, reused for the same kind */
    ck_assert_msg(memcmp(first.b, h.b, 4) == 0, "expected the same slot to be reused");
    run(put_req(SFC_READDIR, "b", first.b, (size_t)first.n));
    expect_status(SFC_FAILURE, "READDIR with the old handle of a reused slot");
    run(put_req(SFC_READDIR, "b", h.b, (size_t)h.n));
    ck_assert_uint_eq(rep_type, SFC_NAME); /* twin: the new handle */
    close_ok(&h);
    h = open_ok("/proj/hello", SFC_FXF_READ, NULL); /* a freed slot serves a file, too */
    ck_assert_int_eq(read_h(&h, 0, 5, got, sizeof(got), &code), 5);
}
END_TEST

static int count_fds(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");

    ck_assert_ptr_nonnull(d);
    for (struct dirent *de; (de = readdir(d));)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

START_TEST(test_free_closes_every_handle)
{
    int before = count_fds();

    for (int i = 0; i < 10; i++) {
        open_ok("/proj/hello", SFC_FXF_READ, NULL);
        opendir_ok("/proj/d");
    }
    ck_assert_int_eq(count_fds(), before + 20);
    sfs_free(srv);
    srv = NULL;
    ck_assert_int_eq(count_fds(), before);
}
END_TEST

/* ==== confinement ==== */

START_TEST(test_outward_symlinks_not_followed)
{
    static const char *const paths[] = {"/proj/fa", "/proj/fr", "/proj/la/secret",
                                        "/proj/lr/secret", "/proj/la/dir/file"};

    use_resolver(_i);

    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        expect_open_status(paths[i], SFC_FXF_READ, SFC_PERMISSION_DENIED);
        expect_open_status(paths[i], SFC_FXF_WRITE, SFC_PERMISSION_DENIED);
        expect_path_status(SFC_STAT, paths[i], SFC_PERMISSION_DENIED);
        run(put_req(SFC_EXTENDED, "ss", "statvfs@openssh.com", paths[i]));
        expect_status(SFC_PERMISSION_DENIED, "statvfs through an outward link");
    }
    expect_path_status(SFC_LSTAT, "/proj/la/secret", SFC_PERMISSION_DENIED);
    expect_path_status(SFC_READLINK, "/proj/lr/dir", SFC_PERMISSION_DENIED);
    expect_untouched();
}
END_TEST

START_TEST(test_outward_symlinks_shown_by_lstat)
{
    struct tun_sftp_attr a;

    use_resolver(_i);
    a = attrs_ok(SFC_LSTAT, "/proj/fa");

    ck_assert_msg(S_ISLNK(a.perm), "LSTAT of an outward link: mode 0%o", a.perm);
    a = attrs_ok(SFC_LSTAT, "/proj/lr");
    ck_assert(S_ISLNK(a.perm));
    expect_untouched();
}
END_TEST

START_TEST(test_setstat_on_final_symlink_leaves_target)
{
    struct tun_sftp_attr perm = attr_perm(0777);
    struct tun_sftp_attr size = {.flags = TUN_SFTP_ATTR_SIZE, .size = 0};
    struct tun_sftp_attr times = {.flags = TUN_SFTP_ATTR_ACMODTIME, .atime = 5, .mtime = 5};

    use_resolver(_i);

    run(put_req(SFC_SETSTAT, "sa", "/proj/fa", &perm));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT permissions of an outward link");
    run(put_req(SFC_SETSTAT, "sa", "/proj/fr", &size));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT size of an outward link");
    run(put_req(SFC_SETSTAT, "sa", "/proj/fa", &times));
    expect_status(SFC_OK, "SETSTAT times of an outward link (the link's own)");
    run(put_req(SFC_SETSTAT, "sa", "/proj/la/secret", &perm));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT through an outward link");
    expect_untouched();
}
END_TEST

START_TEST(test_rename_moves_link_not_target)
{
    char p[PATH_MAX], text[PATH_MAX];
    ssize_t n;

    use_resolver(_i);

    run(put_req(SFC_RENAME, "ss", "/proj/fa", "/proj/fa2"));
    expect_status(SFC_OK, "RENAME of an outward link");
    path_of(p, "proj/fa2");
    n = readlink(p, text, sizeof(text) - 1);
    ck_assert_int_gt(n, 0);
    run(put_req(SFC_RENAME, "ss", "/proj/la/secret", "/proj/stolen"));
    expect_status(SFC_PERMISSION_DENIED, "RENAME from beyond an outward link");
    run(put_req(SFC_RENAME, "ss", "/proj/hello", "/proj/la/planted"));
    expect_status(SFC_PERMISSION_DENIED, "RENAME to beyond an outward link");
    run(put_req(SFC_EXTENDED, "sss", "posix-rename@openssh.com", "/proj/hello", "/proj/fr"));
    expect_status(SFC_OK, "posix-rename onto an outward link replaces the link");
    expect_content("proj/fr", "hello world");
    ck_assert(!exists("proj/stolen"));
    expect_untouched();
}
END_TEST

START_TEST(test_create_through_symlink_refused)
{
    use_resolver(_i);
    expect_open_status("/proj/dang", SFC_FXF_WRITE | SFC_FXF_CREAT, SFC_PERMISSION_DENIED);
    expect_open_status("/proj/fa", SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_TRUNC,
                       SFC_PERMISSION_DENIED);
    expect_open_status("/proj/la/new", SFC_FXF_WRITE | SFC_FXF_CREAT, SFC_PERMISSION_DENIED);
    expect_open_status("/proj/lr/new", SFC_FXF_WRITE | SFC_FXF_CREAT, SFC_PERMISSION_DENIED);
    {
        struct tun_sftp_attr none = {0};
        run(put_req(SFC_MKDIR, "sa", "/proj/la/newdir", &none));
        expect_status(SFC_PERMISSION_DENIED, "MKDIR beyond an outward link");
    }
    run(put_req(SFC_SYMLINK, "ss", "x", "/proj/lr/newlink"));
    expect_status(SFC_PERMISSION_DENIED, "SYMLINK beyond an outward link");
    run(put_req(SFC_EXTENDED, "sss", "hardlink@openssh.com", "/proj/la/secret", "/proj/h"));
    expect_status(SFC_PERMISSION_DENIED, "hardlink of a file beyond an outward link");
    expect_path_status(SFC_REMOVE, "/proj/la/secret", SFC_PERMISSION_DENIED);
    expect_path_status(SFC_RMDIR, "/proj/la/dir", SFC_PERMISSION_DENIED);
    ck_assert(!exists("proj/h"));
    expect_untouched();
}
END_TEST

START_TEST(test_nul_in_path_refused)
{
    static const char p1[] = "/proj/hello\0/../../outside/secret";
    static const char p2[] = "/pr\0oj/hello";
    struct tun_sftp_attr none = {0};

    use_resolver(_i);

    run(put_req(SFC_OPEN, "bua", p1, sizeof(p1) - 1, SFC_FXF_READ, &none));
    expect_status(SFC_FAILURE, "OPEN with a NUL in the path");
    run(put_req(SFC_STAT, "b", p2, sizeof(p2) - 1));
    expect_status(SFC_FAILURE, "STAT with a NUL in the root name");
    run(put_req(SFC_SYMLINK, "bs", "a\0b", (size_t)3, "/proj/nl"));
    expect_status(SFC_FAILURE, "SYMLINK with a NUL in the target");
    ck_assert(!exists("proj/nl"));
    run(put_req(SFC_STAT, "b", p1, (size_t)11)); /* twin: up to the NUL */
    ck_assert_uint_eq(rep_type, SFC_ATTRS);
    expect_untouched();
}
END_TEST

START_TEST(test_overlong_names_refused)
{
    char name[NAME_MAX + 2], path[PATH_MAX + 16];
    struct tun_sftp_attr none = {0};

    use_resolver(_i);

    memset(name, 'a', sizeof(name) - 1);
    name[NAME_MAX + 1] = '\0'; /* 256 bytes */
    snprintf(path, sizeof(path), "/proj/%s", name);
    run(put_req(SFC_MKDIR, "sa", path, &none));
    expect_status(SFC_FAILURE, "MKDIR of a 256-byte name");
    snprintf(path, sizeof(path), "/%s", name);
    expect_path_status(SFC_STAT, path, SFC_FAILURE);
    memset(path, 'b', PATH_MAX);
    memcpy(path, "/proj/", 6);
    for (size_t i = 100; i < PATH_MAX; i += 100)
        path[i] = '/';
    path[PATH_MAX] = '\0';
    expect_path_status(SFC_STAT, path, SFC_FAILURE);
    name[NAME_MAX] = '\0'; /* twin: 255 bytes */
    snprintf(path, sizeof(path), "/proj/%s", name);
    run(put_req(SFC_MKDIR, "sa", path, &none));
    expect_status(SFC_OK, "MKDIR of a 255-byte name");
}
END_TEST

START_TEST(test_fifo_refused_without_blocking)
{
    struct timespec t0, t1;

    use_resolver(_i);

    clock_gettime(CLOCK_MONOTONIC, &t0);
    expect_open_status("/proj/fifo", SFC_FXF_READ, SFC_PERMISSION_DENIED);
    expect_open_status("/proj/fifo", SFC_FXF_WRITE, SFC_PERMISSION_DENIED);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_msg(t1.tv_sec - t0.tv_sec < 2, "opening a FIFO took %ld s",
                  (long)(t1.tv_sec - t0.tv_sec));
    ck_assert(S_ISFIFO(attrs_ok(SFC_STAT, "/proj/fifo").perm)); /* described, not opened */
}
END_TEST

/* ==== read-only root ==== */

START_TEST(test_readonly_root_refuses_every_write)
{
    struct tun_sftp_attr none = {0}, perm = attr_perm(0777);
    struct tun_sftp_attr times = {.flags = TUN_SFTP_ATTR_ACMODTIME, .atime = 5, .mtime = 5};
    static const uint32_t writes[] = {
        SFC_FXF_WRITE,
        SFC_FXF_READ | SFC_FXF_WRITE,
        SFC_FXF_WRITE | SFC_FXF_CREAT,
        SFC_FXF_WRITE | SFC_FXF_TRUNC,
        SFC_FXF_READ | SFC_FXF_TRUNC,
        SFC_FXF_WRITE | SFC_FXF_APPEND,
        SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_EXCL,
    };
    struct hnd h, d;

    use_resolver(_i);

    for (size_t i = 0; i < sizeof(writes) / sizeof(writes[0]); i++) {
        expect_open_status("/ro/f", writes[i], SFC_PERMISSION_DENIED);
        expect_open_status("/ro/new", writes[i] | SFC_FXF_CREAT, SFC_PERMISSION_DENIED);
    }
    run(put_req(SFC_SETSTAT, "sa", "/ro/f", &perm));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT");
    run(put_req(SFC_SETSTAT, "sa", "/ro/f", &times));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT times");
    run(put_req(SFC_SETSTAT, "sa", "/ro", &none));
    expect_status(SFC_PERMISSION_DENIED, "SETSTAT of the root, no attributes");
    run(put_req(SFC_EXTENDED, "ssa", "lsetstat@openssh.com", "/ro/link", &times));
    expect_status(SFC_PERMISSION_DENIED, "lsetstat");
    expect_path_status(SFC_REMOVE, "/ro/f", SFC_PERMISSION_DENIED);
    expect_path_status(SFC_REMOVE, "/ro/link", SFC_PERMISSION_DENIED);
    run(put_req(SFC_MKDIR, "sa", "/ro/newdir", &none));
    expect_status(SFC_PERMISSION_DENIED, "MKDIR");
    run(put_req(SFC_MKDIR, "sa", "/ro", &none));
    expect_status(SFC_PERMISSION_DENIED, "MKDIR of the root");
    expect_path_status(SFC_RMDIR, "/ro/sub", SFC_PERMISSION_DENIED);
    run(put_req(SFC_RENAME, "ss", "/ro/f", "/ro/g"));
    expect_status(SFC_PERMISSION_DENIED, "RENAME");
    run(put_req(SFC_SYMLINK, "ss", "f", "/ro/l2"));
    expect_status(SFC_PERMISSION_DENIED, "SYMLINK");
    run(put_req(SFC_EXTENDED, "sss", "posix-rename@openssh.com", "/ro/f", "/ro/sub/g"));
    expect_status(SFC_PERMISSION_DENIED, "posix-rename");
    run(put_req(SFC_EXTENDED, "sss", "hardlink@openssh.com", "/ro/f", "/ro/hl"));
    expect_status(SFC_PERMISSION_DENIED, "hardlink");
    /* through handles opened for reading */
    h = open_ok("/ro/f", SFC_FXF_READ, NULL);
    run(put_req(SFC_WRITE, "bqs", h.b, (size_t)h.n, (uint64_t)0, "x"));
    expect_status(SFC_PERMISSION_DENIED, "WRITE on a read handle of a read-only root");
    run(put_req(SFC_FSETSTAT, "ba", h.b, (size_t)h.n, &perm));
    expect_status(SFC_PERMISSION_DENIED, "FSETSTAT");
    run(put_req(SFC_FSETSTAT, "ba", h.b, (size_t)h.n, &times));
    expect_status(SFC_PERMISSION_DENIED, "FSETSTAT times");
    d = opendir_ok("/ro/sub");
    run(put_req(SFC_FSETSTAT, "ba", d.b, (size_t)d.n, &perm));
    expect_status(SFC_PERMISSION_DENIED, "FSETSTAT of a directory handle");
    close_ok(&h);
    close_ok(&d);
    expect_untouched();
}
END_TEST

START_TEST(test_readonly_root_reads_work)
{
    struct hnd h = open_ok("/ro/f", SFC_FXF_READ, NULL);
    struct entry e[8];
    size_t batches;
    uint8_t got[16];
    uint32_t code;

    ck_assert_int_eq(read_h(&h, 0, sizeof(got), got, sizeof(got), &code), 7);
    ck_assert_int_eq(memcmp(got, "ro file", 7), 0);
    close_ok(&h);
    h = opendir_ok("/ro");
    ck_assert_uint_eq(readdir_all(&h, e, 8, &batches), 3);
    ck_assert_uint_eq(attrs_ok(SFC_STAT, "/ro/link").size, 7);
    run(put_req(SFC_READLINK, "s", "/ro/link"));
    expect_one_name("f", "READLINK on a read-only root");
}
END_TEST

/* ==== sfs_new ==== */

START_TEST(test_new_refuses_bad_root_names)
{
    static const char *const bad[] = {"", ".", "..", "a/b", "/"};
    struct sfs_root r[2] = {{"x", root_rw}, {"x", root_ro}};
    sfs_t *s = NULL;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r[0].name = bad[i];
        ck_assert_msg(sfs_new(r, 1, &s) == -EINVAL, "root name '%s': expected -EINVAL", bad[i]);
    }
    r[0].name = "x";
    ck_assert_int_eq(sfs_new(r, 2, &s), -EINVAL); /* repeated */
    ck_assert_int_eq(sfs_new(r, 0, &s), -EINVAL);
    r[1].root = NULL;
    r[1].name = "y";
    ck_assert_int_eq(sfs_new(r, 2, &s), -EINVAL);
    ck_assert_ptr_null(s);
    r[1].root = root_ro; /* twin */
    ck_assert_int_eq(sfs_new(r, 2, &s), 0);
    ck_assert_ptr_nonnull(s);
    sfs_free(s);
}
END_TEST

/* ==== suite ==== */

static TCase *tcase(Suite *s, const char *name, void (*setup_fn)(void))
{
    TCase *tc = tcase_create(name);

    tcase_add_checked_fixture(tc, setup_fn, teardown);
    tcase_set_timeout(tc, TIMEOUT_S);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *sftp_server_suite(void)
{
    Suite *s = suite_create("sftp_server");
    TCase *tc;

    tc = tcase(s, "init", setup_tree);
    tcase_add_test(tc, test_init_replies_version_3_with_extensions);
    tcase_add_test(tc, test_init_from_an_older_client_still_offers_3);
    tcase_add_test(tc, test_first_packet_not_init_is_ebadmsg);
    tcase_add_test(tc, test_second_init_is_ebadmsg);
    tcase_add_test(tc, test_new_refuses_bad_root_names);

    tc = tcase(s, "framing", setup);
    tcase_add_test(tc, test_client_version_packet_is_ebadmsg);
    tcase_add_test(tc, test_partial_packet_waits_in_rx);
    tcase_add_test(tc, test_packet_over_limit_is_ebadmsg);
    tcase_add_test(tc, test_packet_at_limit_accepted);
    tcase_add_test(tc, test_short_packet_length_is_ebadmsg);
    tcase_add_test(tc, test_truncated_fields_give_bad_message_and_stream_continues);
    tcase_add_test(tc, test_string_length_past_end_gives_bad_message);
    tcase_add_test(tc, test_attr_count_past_end_gives_bad_message);
    tcase_add_test(tc, test_unknown_type_is_op_unsupported_and_stream_continues);
    tcase_add_test(tc, test_unknown_extension_is_op_unsupported);
    tcase_add_test(tc, test_pipelined_requests_answered_in_order);
    tcase_add_test(tc, test_full_tx_leaves_requests_in_rx);
    tcase_add_test(tc, test_small_tx_is_einval);

    tc = tcase(s, "namespace", setup);
    tcase_add_test(tc, test_realpath_cleans_paths);
    tcase_add_test(tc, test_unknown_root_is_no_such_file);
    tcase_add_loop_test(tc, test_sibling_prefix_names_are_not_roots, 0, 2);
    tcase_add_loop_test(tc, test_dotdot_cannot_leave_a_root, 0, 2);
    tcase_add_test(tc, test_top_is_a_readonly_directory);
    tcase_add_test(tc, test_top_refuses_every_change);
    tcase_add_test(tc, test_readdir_top_lists_roots);
    tcase_add_test(tc, test_readdir_root_shows_entries_unfollowed);
    tcase_add_test(tc, test_readdir_empty_dir_is_eof);
    tcase_add_test(tc, test_readdir_returns_batches_of_100);
    tcase_add_test(tc, test_opendir_follows_inward_symlink);

    tc = tcase(s, "files", setup);
    tcase_add_test(tc, test_open_write_read_roundtrip_binary);
    tcase_add_test(tc, test_read_length_capped);
    tcase_add_test(tc, test_read_at_huge_offsets_is_eof);
    tcase_add_test(tc, test_write_at_huge_offset_fails);
    tcase_add_test(tc, test_open_missing_is_no_such_file);
    tcase_add_test(tc, test_open_excl_refuses_existing);
    tcase_add_test(tc, test_open_trunc_and_append);
    tcase_add_test(tc, test_open_readonly_handle_refuses_write);
    tcase_add_test(tc, test_stat_lstat_fstat);
    tcase_add_test(tc, test_setstat_applies_size_mode_times);
    tcase_add_test(tc, test_setstat_uidgid_refused_without_change);
    tcase_add_test(tc, test_setstat_own_uidgid_accepted_as_noop);
    tcase_add_test(tc, test_fsetstat_applies_to_open_file);
    tcase_add_test(tc, test_mkdir_rmdir_remove);
    tcase_add_test(tc, test_rename_refuses_existing_target);
    tcase_add_test(tc, test_posix_rename_replaces);
    tcase_add_test(tc, test_rename_across_roots_fails);
    tcase_add_test(tc, test_symlink_takes_openssh_argument_order);
    tcase_add_test(tc, test_readlink_returns_text);
    tcase_add_test(tc, test_hardlink_creates_second_name);
    tcase_add_test(tc, test_statvfs_and_fstatvfs);
    tcase_add_test(tc, test_limits_reply);
    tcase_add_test(tc, test_fsync_on_handle);
    tcase_add_test(tc, test_fstat_id_tells_the_inode);
    tcase_add_test(tc, test_lsetstat_sets_times_on_link_itself);
    tcase_add_test(tc, test_change_hook_reports_changes);
    tcase_add_test(tc, test_client_id_reaches_the_change_hook);

    tc = tcase(s, "handles", setup);
    tcase_add_test(tc, test_bad_handles_fail_cleanly);
    tcase_add_test(tc, test_stale_handle_after_close_fails);
    tcase_add_test(tc, test_handle_of_wrong_kind_fails);
    tcase_add_test(tc, test_handle_table_full_fails_cleanly);
    tcase_add_test(tc, test_free_closes_every_handle);

    tc = tcase(s, "confinement", setup);
    tcase_add_loop_test(tc, test_outward_symlinks_not_followed, 0, 2);
    tcase_add_loop_test(tc, test_outward_symlinks_shown_by_lstat, 0, 2);
    tcase_add_loop_test(tc, test_setstat_on_final_symlink_leaves_target, 0, 2);
    tcase_add_loop_test(tc, test_rename_moves_link_not_target, 0, 2);
    tcase_add_loop_test(tc, test_create_through_symlink_refused, 0, 2);
    tcase_add_loop_test(tc, test_nul_in_path_refused, 0, 2);
    tcase_add_loop_test(tc, test_overlong_names_refused, 0, 2);
    tcase_add_loop_test(tc, test_fifo_refused_without_blocking, 0, 2);

    tc = tcase(s, "readonly", setup);
    tcase_add_loop_test(tc, test_readonly_root_refuses_every_write, 0, 2);
    tcase_add_test(tc, test_readonly_root_reads_work);
    return s;
}

int main(void)
{
    SRunner *sr;
    int failed;

    umask(022);
    /* a failing test leaves its directory behind (no teardown after a failure): all go here */
    snprintf(top, sizeof(top), "/tmp/test_sftp_server.XXXXXX");
    if (!mkdtemp(top)) {
        perror("mkdtemp");
        return EXIT_FAILURE;
    }
    sr = srunner_create(sftp_server_suite());
    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(top, remove_one, 32, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
