/* fuzz_sftp_server.c - libFuzzer target for the confined SFTP server (tunnel/sftp_server.h).
 *
 * The input is a stream of requests as a client would send them after INIT (the target puts an
 * INIT in front). Each input gets a new server on two roots in a per-process temporary directory,
 * resolving paths with openat2 or, for inputs of odd length, with confine.c's O_NOFOLLOW walk:
 *
 *   <dir>/rw/   root "rw", read-write: a, d/b, d/e/, l -> a, out -> ../outside/secret,
 *               abs -> <dir>/outside, fifo
 *   <dir>/ro/   root "ro", read-only: f, sub/g, out -> ../outside/secret, fifo
 *   <dir>/outside/secret, <dir>/outside/d/x
 *
 * The stream is fed in chunks (so partial packets happen) and every reply is checked: a well-formed
 * packet of a reply type, exactly one per request, in order, carrying the request's id, its payload
 * consumed exactly by its type's format. The target models the framing itself to know how many
 * requests the server must answer and whether it must give up with -EBADMSG.
 * After each input: nothing beside rw/ changed (a fingerprint of every entry's inode, mode, size,
 * link count, mtime and ctime, the atimes of the files outside, which are from 2001 so that a read
 * on this relatime file system would move them, contents and link texts); no descriptor into the
 * tree is left open after sfs_free; and rw/ is rebuilt when the change hook reported a change.
 */
#include "sftp_server.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sftp_codec.h"

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);           \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define OLD_TIME 1000000000 /* 2001-09-09 */
#define MAX_REQS 65536
#define FP_MAX   (1 << 16)

static char dir[PATH_MAX];
static cf_root_t *root_rw, *root_ro;
static char fingerprint[FP_MAX]; /* of everything but rw/, taken once */
static int dirty;                /* the hook saw a change in rw/ */

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- the tree ---- */

static void path_of(char *out, const char *rel)
{
    int n = snprintf(out, PATH_MAX, "%s/%s", dir, rel);
    CHECK(n > 0 && n < PATH_MAX);
}

static void put_file(const char *rel, const char *content)
{
    char p[PATH_MAX];
    int fd;

    path_of(p, rel);
    fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    CHECK(write(fd, content, strlen(content)) == (ssize_t)strlen(content));
    close(fd);
}

static void put_dir(const char *rel)
{
    char p[PATH_MAX];

    path_of(p, rel);
    CHECK(mkdir(p, 0755) == 0);
}

static void put_link(const char *target, const char *rel)
{
    char p[PATH_MAX];

    path_of(p, rel);
    CHECK(symlink(target, p) == 0);
}

static void put_fifo(const char *rel)
{
    char p[PATH_MAX];

    path_of(p, rel);
    CHECK(mkfifo(p, 0644) == 0);
}

static void make_old(const char *rel)
{
    struct timespec ts[2] = {{OLD_TIME, 0}, {OLD_TIME, 0}};
    char p[PATH_MAX];

    path_of(p, rel);
    CHECK(utimensat(AT_FDCWD, p, ts, AT_SYMLINK_NOFOLLOW) == 0);
}

static void fill_rw(void)
{
    char p[PATH_MAX];

    put_file("rw/a", "0123456789");
    put_dir("rw/d");
    put_file("rw/d/b", "bbb");
    put_dir("rw/d/e");
    put_link("a", "rw/l");
    put_link("../outside/secret", "rw/out");
    path_of(p, "outside");
    put_link(p, "rw/abs");
    put_fifo("rw/fifo");
}

/* Remove the entry 'name' of the directory dfd and everything beneath it, whatever modes the
 * fuzzer gave them. */
static void remove_tree(int dfd, const char *name)
{
    struct stat st;

    CHECK(fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0);
    if (S_ISDIR(st.st_mode)) {
        struct dirent *de;
        DIR *d;
        int fd;

        CHECK(fchmodat(dfd, name, 0700, 0) == 0);
        fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        CHECK(fd >= 0 && (d = fdopendir(fd)) != NULL);
        while ((de = readdir(d)) != NULL)
            if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
                remove_tree(dirfd(d), de->d_name);
        closedir(d);
        CHECK(unlinkat(dfd, name, AT_REMOVEDIR) == 0);
    } else {
        CHECK(unlinkat(dfd, name, 0) == 0);
    }
}

/* Empty rw/ (keeping the directory itself: the root is bound to it) and fill it again. */
static void reset_rw(void)
{
    struct dirent *de;
    char p[PATH_MAX];
    DIR *d;

    path_of(p, "rw");
    CHECK(chmod(p, 0755) == 0);
    CHECK((d = opendir(p)) != NULL);
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            remove_tree(dirfd(d), de->d_name);
    closedir(d);
    fill_rw();
}

/* ---- the fingerprint of everything but rw/ ---- */

static size_t fp_len;
static char *fp_out;
static char rw_path[PATH_MAX];

static int fp_one(const char *p, const struct stat *st, int type, struct FTW *ftw)
{
    char extra[128] = "";
    int n;
    (void)type;
    (void)ftw;

    if (strcmp(p, rw_path) == 0)
        return FTW_SKIP_SUBTREE;
    if (S_ISREG(st->st_mode)) {
        char content[64];
        int fd = open(p, O_RDONLY | O_NOATIME | O_CLOEXEC | O_NOFOLLOW);
        ssize_t r = fd >= 0 ? read(fd, content, sizeof(content) - 1) : -1;

        if (fd >= 0)
            close(fd);
        content[r > 0 ? r : 0] = '\0';
        /* reading ro/ through the server is allowed: only files outside keep their atime */
        snprintf(extra, sizeof(extra), " '%s' atime=%lld", content,
                 strstr(p + strlen(dir), "/outside/") ? (long long)st->st_atim.tv_sec : 0LL);
    } else if (S_ISLNK(st->st_mode)) {
        char text[PATH_MAX];
        ssize_t r = readlink(p, text, sizeof(text) - 1);

        text[r > 0 ? r : 0] = '\0';
        snprintf(extra, sizeof(extra), " -> '%.100s'", text);
    }
    n = snprintf(fp_out + fp_len, FP_MAX - fp_len, "%s %o %lld %lu %lu %lld.%09ld %lld.%09ld%s\n",
                 p + strlen(dir), st->st_mode, (long long)st->st_size, (unsigned long)st->st_ino,
                 (unsigned long)st->st_nlink, (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
                 (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec, extra);
    CHECK(n > 0 && (size_t)n < FP_MAX - fp_len);
    fp_len += (size_t)n;
    return FTW_CONTINUE;
}

static void take_fingerprint(char *out)
{
    fp_out = out;
    fp_len = 0;
    out[0] = '\0';
    path_of(rw_path, "rw");
    CHECK(nftw(dir, fp_one, 16, FTW_PHYS | FTW_ACTIONRETVAL) == 0);
}

/* How many of our descriptors point into the temporary directory (the two roots hold one each).
 * Other descriptors come and go with libFuzzer itself (its symbolizer's pipes). */
static int fds_into_dir(void)
{
    size_t dlen = strlen(dir);
    struct dirent *de;
    DIR *d = opendir("/proc/self/fd");
    int n = 0;

    CHECK(d != NULL);
    while ((de = readdir(d)) != NULL) {
        char link[64], target[PATH_MAX];
        ssize_t len;

        if (de->d_name[0] == '.' || atoi(de->d_name) == dirfd(d))
            continue;
        snprintf(link, sizeof(link), "/proc/self/fd/%s", de->d_name);
        len = readlink(link, target, sizeof(target) - 1);
        if (len <= 0)
            continue;
        target[len] = '\0';
        if (strncmp(target, dir, dlen) == 0 && (target[dlen] == '/' || target[dlen] == '\0'))
            n++;
    }
    closedir(d);
    return n;
}

static void on_change(void *arg, uint64_t client, enum sfs_phase phase, size_t root,
                      const char *rel, const struct stat *st)
{
    (void)arg;
    (void)st;
    if (phase != SFS_CHANGED)
        return;
    (void)client;
    (void)rel;
    CHECK(root == 0); /* only rw/ may change */
    dirty = 1;
}

static void cleanup(void)
{
    cf_close_root(root_rw);
    cf_close_root(root_ro);
    remove_tree(AT_FDCWD, dir);
}

static void init_once(void)
{
    const char *tmp = getenv("TMPDIR");
    char p[PATH_MAX];

    snprintf(dir, sizeof(dir), "%s/fuzz_sftp_server.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    CHECK(mkdtemp(dir) != NULL);
    put_dir("rw");
    put_dir("ro");
    put_dir("outside");
    put_dir("outside/d");
    put_file("outside/secret", "sentinel");
    put_file("outside/d/x", "x");
    put_file("ro/f", "ro file");
    put_dir("ro/sub");
    put_file("ro/sub/g", "g");
    put_link("../outside/secret", "ro/out");
    put_fifo("ro/fifo");
    fill_rw();
    make_old("outside/secret");
    make_old("outside/d/x");
    path_of(p, "rw");
    CHECK(cf_open_root(p, false, &root_rw) == 0);
    path_of(p, "ro");
    CHECK(cf_open_root(p, true, &root_ro) == 0);
    take_fingerprint(fingerprint);
    CHECK(fds_into_dir() == 2);
    atexit(cleanup);
}

/* ---- the stream ---- */

/* The requests in the stream that the server must answer, as the framing rules say (INIT already
 * sent): their ids in ids[], how many in *n; returns whether the stream must be refused. */
static int model(const uint8_t *d, size_t size, uint32_t *ids, size_t *n)
{
    size_t off = 0;

    *n = 0;
    while (size - off >= 4) {
        uint32_t len = be32(d + off);

        if (len == 0 || (size - off >= 5 && len > SFS_PACKET_MAX))
            return 1;
        if (size - off < 5)
            return 0;
        if (d[off + 4] != SFC_VERSION && len < 5)
            return 1;
        if (size - off - 4 < len)
            return 0;
        if (d[off + 4] == SFC_INIT || d[off + 4] == SFC_VERSION)
            return 1;
        CHECK(*n < MAX_REQS);
        ids[(*n)++] = be32(d + off + 5);
        off += 4 + (size_t)len;
    }
    return 0;
}

static void check_status(struct buf *p)
{
    char msg[256], lang[16];
    uint32_t code;

    CHECK(sfc_get_status(p, &code) == 0);
    CHECK(code <= SFC_OP_UNSUPPORTED && code != SFC_NO_CONNECTION && code != SFC_CONNECTION_LOST);
    CHECK(buf_get_cstring(p, msg, sizeof(msg)) == 0);
    CHECK(msg[0] != '\0' && !(msg[0] >= 'A' && msg[0] <= 'Z'));
    CHECK(buf_get_cstring(p, lang, sizeof(lang)) == 0);
}

static void check_names(struct buf *p)
{
    struct tun_sftp_attr a;
    char name[PATH_MAX + NAME_MAX + 2];
    const uint8_t *ln;
    uint32_t count, lnlen;

    CHECK(buf_get_u32(p, &count) == 0);
    CHECK(count >= 1 && count <= SFS_READDIR_BATCH);
    for (uint32_t i = 0; i < count; i++) {
        CHECK(buf_get_cstring(p, name, sizeof(name)) == 0);
        CHECK(name[0] != '\0');
        CHECK(strcmp(name, ".") != 0 && strcmp(name, "..") != 0);
        CHECK(buf_get_string(p, &ln, &lnlen) == 0);
        CHECK(sfc_get_attr(p, &a) == 0);
    }
}

/* One reply, which must answer request 'id'. */
static void check_reply(uint8_t type, uint32_t id, uint32_t want_id, struct buf *p)
{
    struct tun_sftp_attr a;
    const uint8_t *s;
    uint32_t n;
    uint64_t v;

    CHECK(id == want_id);
    switch (type) {
    case SFC_STATUS:
        check_status(p);
        break;
    case SFC_HANDLE:
        CHECK(buf_get_string(p, &s, &n) == 0 && n == 8);
        break;
    case SFC_DATA:
        CHECK(buf_get_string(p, &s, &n) == 0 && n > 0 && n <= SFS_READ_MAX);
        break;
    case SFC_NAME:
        check_names(p);
        break;
    case SFC_ATTRS:
        CHECK(sfc_get_attr(p, &a) == 0);
        CHECK(a.flags == (TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_UIDGID | TUN_SFTP_ATTR_PERMISSIONS |
                          TUN_SFTP_ATTR_ACMODTIME));
        break;
    case SFC_EXTENDED_REPLY: /* statvfs (11 u64) or limits (4 u64) */
        n = 0;
        while (buf_get_u64(p, &v) == 0)
            n++;
        CHECK(n == 11 || n == 4);
        break;
    default:
        CHECK(!"a reply of an unknown type");
    }
    CHECK(buf_avail(p) == 0);
}

static void check_version(struct buf *tx)
{
    struct buf p;
    uint8_t type;
    uint32_t id, version;

    CHECK(sfc_get_packet(tx, SFS_REPLY_MAX, &type, &id, &p) == 0);
    CHECK(type == SFC_VERSION);
    CHECK(buf_get_u32(&p, &version) == 0 && version == 3);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t init[] = {0, 0, 0, 5, SFC_INIT, 0, 0, 0, 3};
    static uint32_t ids[MAX_REQS];
    static char now[FP_MAX];
    size_t chunk = 1 + size % 997, nids, answered = 0;
    struct buf rx, tx;
    int must_refuse, r = 0;
    sfs_t *s;

    if (!root_rw)
        init_once();
    const struct sfs_root roots[] = {{"rw", root_rw}, {"ro", root_ro}};
    must_refuse = model(data, size, ids, &nids);
    cf_force_walk(root_rw, size & 1); /* both resolvers of confine.c, by the input's length */
    cf_force_walk(root_ro, size & 1);
    CHECK(sfs_new(roots, 2, &s) == 0);
    sfs_set_change_hook(s, on_change, NULL);
    buf_init(&rx, 4 + (size_t)SFS_PACKET_MAX + chunk + sizeof(init));
    buf_init(&tx, 2 * (size_t)SFS_REPLY_MAX);
    CHECK(buf_put(&rx, init, sizeof(init)) == 0);
    CHECK(sfs_process(s, &rx, &tx) == 0);
    check_version(&tx);
    for (size_t i = 0; i < size && r == 0; i += chunk) {
        size_t before;

        CHECK(buf_put(&rx, data + i, size - i < chunk ? size - i : chunk) == 0);
        do {
            struct buf p;
            uint8_t type;
            uint32_t id;

            before = buf_avail(&rx);
            r = sfs_process(s, &rx, &tx);
            CHECK(r == 0 || r == -EBADMSG);
            while (sfc_get_packet(&tx, SFS_REPLY_MAX, &type, &id, &p) == 0) {
                CHECK(answered < nids);
                check_reply(type, id, ids[answered++], &p);
            }
            CHECK(buf_avail(&tx) == 0);
        } while (r == 0 && buf_avail(&rx) != before);
    }
    CHECK(answered == nids);
    CHECK((r == -EBADMSG) == (must_refuse != 0));
    sfs_free(s);
    buf_free(&rx);
    buf_free(&tx);

    CHECK(fds_into_dir() == 2); /* sfs_free closed every handle */
    take_fingerprint(now);
    if (strcmp(now, fingerprint) != 0) {
        fprintf(stderr, "changed beside rw/.\nbefore:\n%s\nafter:\n%s", fingerprint, now);
        abort();
    }
    if (dirty) {
        reset_rw();
        dirty = 0;
    }
    return 0;
}
