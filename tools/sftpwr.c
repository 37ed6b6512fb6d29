/* sftpwr.c - drive the write side of offload's SFTP client (tunnel/sftp_client.h), for the tests.
 *
 *   sftpwr [-F ssh_config] [-t op_timeout_ms] DEST
 *
 * Connects to DEST's sftp subsystem and reads commands from stdin, one per line, words separated
 * by single spaces (paths without spaces). Each command answers one line on stdout: its result,
 * "0" or an errno name ("ENOENT", "ECONNRESET", ...), then details. "USAGE ..." for a bad command.
 *
 *   ext NAME | writemax | connected | waitconn 0|1 SECONDS | resume | quit
 *   open SLOT PATH FLAGS [MODE]     FLAGS: letters r w a c t x (READ WRITE APPEND CREAT TRUNC
 *                                   EXCL); MODE (octal) is sent as the create attributes
 *   close SLOT | fsync SLOT | fsetstat SLOT SPEC | setstat PATH SPEC
 *                                   SPEC: size=N,mode=OCTAL,atime=S,mtime=S (any of them; the
 *                                   times go together)
 *   remove PATH | mkdir PATH MODE | rmdir PATH | rename FROM TO [noreplace|exchange]
 *   symlink TARGET LINKPATH | hardlink FROM TO | readlink PATH | stat PATH
 *   writebig SLOT LEN               one write_async of LEN bytes: its submit result
 *   put SLOT FILE BS DEPTH          write local FILE at its offsets in BS-byte write_async
 *                                   requests, DEPTH in flight: "0 blocks=N bytes=M"
 *   async CMD ARGS...               queue CMD (remove, mkdir, rmdir, rename, symlink, hardlink,
 *                                   setstat) on the ordered stream: "0 queued", or the refusal
 *   wait SECONDS                    wait for every queued async command: their results in order
 *   pipeline SEED N DIRA DIRB [swap]
 *       N mixed write-side operations (from SEED) on three open files (also linked as K/w0..w2,
       a name no operation touches) and a small set of names,
 *       pipelined on the ordered stream under DIRA, then one at a time with the synchronous calls
 *       under DIRB; every result must be the same: "0 ops=N failed=F errors=..." or "MISMATCH ...".
 *       swap sends each group of 10 operations in reverse order under DIRA, which must be caught.
 *   cut PATH FILE BS DEPTH MARKER SECONDS [paths]
 *       write FILE to PATH (created, truncated) as put does, over and over, keeping DEPTH in
 *       flight, with a MKDIR of PATH.d/N as every 8th request of the stream (with paths: only
 *       MKDIRs; a DEPTH over 1023 keeps some of them queued in the client); after the first
 *       2 x DEPTH completions create MARKER, so the test can cut the link; stop at the first
 *       failure. Then check the reconnect rules: each request completed exactly once, none
 *       succeeded after the first failure (ok_after_failure), a MKDIR that succeeded exists and a
 *       canceled one does not (mkdirs_wrong), new writes are refused (halted) until resume, the
 *       old handle is stale on the new connection; reopen, write again every block never written,
 *       close: "0 ok=.. reset=.. canceled=.. stale=.. other=.. ok_after_failure=..
 mkdirs_checked=..
 *       mkdirs_wrong=.. halted=ERR stale_after=ERR rewritten=N close=ERR"
 */
#include "sftp_client.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SLOTS   16
#define CMD_MAX 8192

static tun_sftp_t *S;
static struct tun_sftp_handle slots[SLOTS];
static bool slot_open[SLOTS];

/* Completions of async requests: one entry per request, indexed by the request's number. */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int *res;            /* protected by mu */
static unsigned char *hits; /* completions seen per request; protected by mu */
static size_t *order;       /* when each request completed (1, 2, ...); protected by mu */
static size_t n_req, cap_req, n_done, n_failed; /* protected by mu */

static const char *ename(int err)
{
    const char *n;

    if (err == 0)
        return "0";
    n = strerrorname_np(-err);
    return n ? n : "EUNKNOWN";
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void track_reset(void)
{
    pthread_mutex_lock(&mu);
    n_req = n_done = n_failed = 0;
    pthread_mutex_unlock(&mu);
}

/* A new request number (mu held), or -1 when out of memory. */
static long track_new(void)
{
    if (n_req == cap_req) {
        size_t c = cap_req ? cap_req * 2 : 4096;
        int *r = realloc(res, c * sizeof(*r));
        if (r == NULL)
            return -1;
        res = r;
        unsigned char *h = realloc(hits, c);
        if (h == NULL)
            return -1;
        hits = h;
        size_t *o = realloc(order, c * sizeof(*o));
        if (o == NULL)
            return -1;
        order = o;
        cap_req = c;
    }
    res[n_req] = 1; /* not completed */
    hits[n_req] = 0;
    order[n_req] = 0;
    return (long)n_req++;
}

/* Record request i's result (mu held). */
static void record(size_t i, int err)
{
    if (hits[i]++ == 0) {
        order[i] = ++n_done;
        n_failed += err != 0;
    }
    res[i] = err;
}

static void on_done(void *arg, int err)
{
    pthread_mutex_lock(&mu);
    record((size_t)(uintptr_t)arg, err);
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

/* Wait (mu held) until at most 'left' requests are outstanding; false on timeout. */
static bool wait_outstanding(size_t left, int64_t deadline)
{
    while (n_req - n_done > left) {
        struct timespec ts;
        if (now_ms() > deadline)
            return false;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&cv, &mu, &ts);
    }
    return true;
}

/* Requests that completed other than exactly once (mu held). */
static size_t bad_hits(void)
{
    size_t bad = 0;
    for (size_t i = 0; i < n_req; i++)
        bad += hits[i] != 1;
    return bad;
}

/* ---- argument parsing ---- */

static int slot_of(const char *w)
{
    char *end;
    long v = w ? strtol(w, &end, 10) : -1;
    return w && *end == '\0' && v >= 0 && v < SLOTS ? (int)v : -1;
}

static bool parse_u64(const char *w, int base, uint64_t *v)
{
    char *end;
    if (w == NULL || *w == '\0')
        return false;
    errno = 0;
    *v = strtoull(w, &end, base);
    return errno == 0 && *end == '\0';
}

static bool parse_spec(char *spec, struct tun_sftp_attr *a)
{
    char *save, *kv;
    uint64_t v;

    memset(a, 0, sizeof(*a));
    if (spec == NULL)
        return false;
    for (kv = strtok_r(spec, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (eq == NULL)
            return false;
        *eq++ = '\0';
        if (!parse_u64(eq, strcmp(kv, "mode") == 0 ? 8 : 10, &v))
            return false;
        if (strcmp(kv, "size") == 0) {
            a->flags |= TUN_SFTP_ATTR_SIZE;
            a->size = v;
        } else if (strcmp(kv, "mode") == 0) {
            a->flags |= TUN_SFTP_ATTR_PERMISSIONS;
            a->perm = (uint32_t)v;
        } else if (strcmp(kv, "atime") == 0) {
            a->flags |= TUN_SFTP_ATTR_ACMODTIME;
            a->atime = (uint32_t)v;
        } else if (strcmp(kv, "mtime") == 0) {
            a->flags |= TUN_SFTP_ATTR_ACMODTIME;
            a->mtime = (uint32_t)v;
        } else {
            return false;
        }
    }
    return a->flags != 0;
}

static bool parse_rename_flags(const char *w, unsigned *flags)
{
    if (w == NULL)
        *flags = 0;
    else if (strcmp(w, "noreplace") == 0)
        *flags = RENAME_NOREPLACE;
    else if (strcmp(w, "exchange") == 0)
        *flags = RENAME_EXCHANGE;
    else
        return false;
    return true;
}

/* A namespace command (words w[0..]) as an op; false if malformed. Strings point into w. */
static bool parse_op(char **w, int n, struct tun_sftp_op *op, struct tun_sftp_attr *attr)
{
    uint64_t v;

    memset(op, 0, sizeof(*op));
    if (n == 2 && strcmp(w[0], "remove") == 0) {
        op->type = TUN_SFTP_OP_REMOVE;
        op->path = w[1];
    } else if (n == 2 && strcmp(w[0], "rmdir") == 0) {
        op->type = TUN_SFTP_OP_RMDIR;
        op->path = w[1];
    } else if (n == 3 && strcmp(w[0], "mkdir") == 0 && parse_u64(w[2], 8, &v)) {
        op->type = TUN_SFTP_OP_MKDIR;
        op->path = w[1];
        op->mode = (uint32_t)v;
    } else if ((n == 3 || n == 4) && strcmp(w[0], "rename") == 0 &&
               parse_rename_flags(n == 4 ? w[3] : NULL, &op->flags)) {
        op->type = TUN_SFTP_OP_RENAME;
        op->path = w[1];
        op->to = w[2];
    } else if (n == 3 && strcmp(w[0], "symlink") == 0) {
        op->type = TUN_SFTP_OP_SYMLINK;
        op->target = w[1];
        op->path = w[2];
    } else if (n == 3 && strcmp(w[0], "hardlink") == 0) {
        op->type = TUN_SFTP_OP_HARDLINK;
        op->path = w[1];
        op->to = w[2];
    } else if (n == 3 && strcmp(w[0], "setstat") == 0 && parse_spec(w[2], attr)) {
        op->type = TUN_SFTP_OP_SETSTAT;
        op->path = w[1];
        op->attr = *attr;
    } else {
        return false;
    }
    return true;
}

/* The synchronous call for a namespace op. */
static int run_sync(const struct tun_sftp_op *op)
{
    switch (op->type) {
    case TUN_SFTP_OP_SETSTAT:
        return tun_sftp_setstat(S, op->path, &op->attr);
    case TUN_SFTP_OP_FSETSTAT:
        return tun_sftp_fsetstat(S, op->h, &op->attr);
    case TUN_SFTP_OP_REMOVE:
        return tun_sftp_remove(S, op->path);
    case TUN_SFTP_OP_MKDIR:
        return tun_sftp_mkdir(S, op->path, op->mode);
    case TUN_SFTP_OP_RMDIR:
        return tun_sftp_rmdir(S, op->path);
    case TUN_SFTP_OP_RENAME:
        return tun_sftp_rename(S, op->path, op->to, op->flags);
    case TUN_SFTP_OP_SYMLINK:
        return tun_sftp_symlink(S, op->target, op->path);
    case TUN_SFTP_OP_HARDLINK:
        return tun_sftp_hardlink(S, op->path, op->to);
    case TUN_SFTP_OP_FSYNC:
        return tun_sftp_fsync(S, op->h);
    case TUN_SFTP_OP_CLOSE:
        return tun_sftp_close(S, op->h);
    case TUN_SFTP_OP_WRITE:
        break;
    }
    return -EINVAL;
}

/* One op on the stream, waited for: the synchronous twin of a WRITE (there is no sync write). */
static int run_async_wait(const struct tun_sftp_op *op)
{
    long i;
    int r;

    pthread_mutex_lock(&mu);
    i = track_new();
    pthread_mutex_unlock(&mu);
    if (i < 0)
        return -ENOMEM;
    if ((r = tun_sftp_op_async(S, op, on_done, (void *)(uintptr_t)i)) != 0) {
        pthread_mutex_lock(&mu);
        record((size_t)i, r);
        pthread_mutex_unlock(&mu);
        return r;
    }
    pthread_mutex_lock(&mu);
    if (!wait_outstanding(0, now_ms() + 120000)) {
        pthread_mutex_unlock(&mu);
        return -ETIMEDOUT;
    }
    r = res[i];
    pthread_mutex_unlock(&mu);
    return r;
}

/* ---- put and cut: a local file written in blocks ---- */

struct file {
    uint8_t *data;
    size_t len;
};

static int load(const char *path, struct file *f)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t got = 0;

    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0 || (f->data = malloc((size_t)st.st_size + 1)) == NULL) {
        close(fd);
        return -ENOMEM;
    }
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, f->data + got, (size_t)st.st_size - got);
        if (n <= 0) {
            close(fd);
            free(f->data);
            return n < 0 ? -errno : -EIO;
        }
        got += (size_t)n;
    }
    close(fd);
    f->len = got;
    return 0;
}

/* Queue block b of f on h (mu not held); its request number goes to *idx. */
static int put_block(const struct tun_sftp_handle *h, const struct file *f, uint32_t bs, size_t b,
                     long *idx)
{
    size_t off = b * bs, len = f->len - off < bs ? f->len - off : bs;
    int r;

    pthread_mutex_lock(&mu);
    *idx = track_new();
    pthread_mutex_unlock(&mu);
    if (*idx < 0)
        return -ENOMEM;
    r = tun_sftp_write_async(S, h, off, f->data + off, (uint32_t)len, on_done,
                             (void *)(uintptr_t)*idx);
    if (r != 0) {
        pthread_mutex_lock(&mu);
        record((size_t)*idx, r);
        pthread_mutex_unlock(&mu);
    }
    return r;
}

/* Write blocks [0, nb) of f with depth in flight; 0 or the first error (in request order). */
static int put_all(const struct tun_sftp_handle *h, const struct file *f, uint32_t bs, int depth,
                   const bool *skip, size_t *written)
{
    size_t nb = (f->len + bs - 1) / bs;
    int first = 0;
    long idx;

    track_reset();
    *written = 0;
    for (size_t b = 0; b < nb; b++) {
        if (skip && skip[b])
            continue;
        pthread_mutex_lock(&mu);
        bool ok = wait_outstanding((size_t)depth - 1, now_ms() + 120000);
        pthread_mutex_unlock(&mu);
        if (!ok)
            return -ETIMEDOUT;
        if (put_block(h, f, bs, b, &idx) != 0)
            break;
        (*written)++;
    }
    pthread_mutex_lock(&mu);
    if (!wait_outstanding(0, now_ms() + 120000))
        first = -ETIMEDOUT;
    for (size_t i = 0; i < n_req && first == 0; i++)
        first = res[i];
    if (first == 0 && bad_hits() != 0)
        first = -EPROTO;
    pthread_mutex_unlock(&mu);
    return first;
}

static void cmd_put(char **w, int n)
{
    int slot = n == 5 ? slot_of(w[1]) : -1, depth = n == 5 ? atoi(w[4]) : 0, r;
    uint32_t bs = n == 5 ? (uint32_t)atoi(w[3]) : 0;
    struct file f;
    size_t written;

    if (slot < 0 || !slot_open[slot] || bs == 0 || depth < 1) {
        printf("USAGE put SLOT FILE BS DEPTH (open slot)\n");
        return;
    }
    if ((r = load(w[2], &f)) != 0) {
        printf("%s cannot read '%s'\n", ename(r), w[2]);
        return;
    }
    r = put_all(&slots[slot], &f, bs, depth, NULL, &written);
    printf("%s blocks=%zu bytes=%zu\n", ename(r), written, f.len);
    free(f.data);
}

/* Queue request number 'sent' of the cut: every 8th a MKDIR of dirs/N (a path request; N its
 * request number), the others a write; blk[N] is the block written, -1 for a MKDIR. */
static int cut_submit(const struct tun_sftp_handle *h, const struct file *f, uint32_t bs,
                      const char *dirs, size_t sent, bool paths, long *blk)
{
    size_t nb = (f->len + bs - 1) / bs;
    char p[PATH_MAX + 32];
    long idx;
    int r;

    if (!paths && sent % 8 != 7) {
        r = put_block(h, f, bs, (sent - sent / 8) % nb, &idx);
        blk[idx] = (long)((sent - sent / 8) % nb);
        return r;
    }
    pthread_mutex_lock(&mu);
    idx = track_new();
    pthread_mutex_unlock(&mu);
    if (idx < 0)
        return -ENOMEM;
    blk[idx] = -1;
    snprintf(p, sizeof(p), "%s/%ld", dirs, idx);
    r = tun_sftp_op_async(S,
                          &(struct tun_sftp_op){.type = TUN_SFTP_OP_MKDIR, .path = p, .mode = 0755},
                          on_done, (void *)(uintptr_t)idx);
    if (r != 0) {
        pthread_mutex_lock(&mu);
        record((size_t)idx, r);
        pthread_mutex_unlock(&mu);
    }
    return r;
}

static void cmd_cut(char **w, int n)
{
    struct tun_sftp_handle h, h2;
    struct file f = {0};
    struct tun_sftp_attr a;
    bool paths = n == 8 && strcmp(w[7], "paths") == 0, ok_args = n == 7 || paths;
    uint32_t bs = ok_args ? (uint32_t)atoi(w[3]) : 0;
    int depth = ok_args ? atoi(w[4]) : 0, seconds = ok_args ? atoi(w[6]) : 0, r;
    size_t nb, sent = 0, ok = 0, reset = 0, canceled = 0, stale = 0, other = 0, rewritten = 0;
    size_t first_fail = SIZE_MAX, late_ok = 0, dirs_wrong = 0, mkdirs = 0;
    bool marked = false, failed = false;
    bool *done_ok = NULL;
    long *blk = NULL;
    size_t blk_cap = 1 << 16;
    char dirs[PATH_MAX], p[PATH_MAX + 32];

    if (bs == 0 || depth < 1 || seconds < 1) {
        printf("USAGE cut PATH FILE BS DEPTH MARKER SECONDS [paths]\n");
        return;
    }
    if ((r = load(w[2], &f)) != 0) {
        printf("%s cannot read '%s'\n", ename(r), w[2]);
        return;
    }
    nb = (f.len + bs - 1) / bs;
    done_ok = calloc(nb, sizeof(*done_ok));
    blk = malloc(blk_cap * sizeof(*blk));
    snprintf(dirs, sizeof(dirs), "%s.d", w[1]);
    if ((r = tun_sftp_mkdir(S, dirs, 0755)) != 0 ||
        (r = tun_sftp_open_flags(S, w[1], SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_TRUNC, NULL,
                                 &h)) != 0) {
        printf("%s cannot make '%s' or '%s'\n", ename(r), dirs, w[1]);
        goto out;
    }
    /* over and over until a request fails (the test cuts the link after MARKER appears) */
    track_reset();
    int64_t deadline = now_ms() + seconds * 1000;
    while (!failed && now_ms() < deadline) {
        if (sent == blk_cap) {
            long *b = realloc(blk, 2 * blk_cap * sizeof(*blk));
            if (b == NULL)
                break;
            blk = b;
            blk_cap *= 2;
        }
        pthread_mutex_lock(&mu);
        wait_outstanding((size_t)depth - 1, deadline);
        failed = n_failed > 0;
        size_t done = n_done;
        pthread_mutex_unlock(&mu);
        if (!marked && done >= 2 * (size_t)depth) {
            int fd = open(w[5], O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
            if (fd >= 0)
                close(fd);
            marked = true;
        }
        if (!failed && cut_submit(&h, &f, bs, dirs, sent, paths, blk) != 0)
            failed = true;
        sent++;
    }
    pthread_mutex_lock(&mu);
    bool drained = wait_outstanding(0, now_ms() + 60000);
    for (size_t i = 0; i < n_req; i++) {
        if (res[i] == 0) {
            ok++;
            if (blk[i] >= 0)
                done_ok[blk[i]] = true;
        } else {
            reset += res[i] == -ECONNRESET;
            canceled += res[i] == -ECANCELED;
            stale += res[i] == -ESTALE;
            other += res[i] != -ECONNRESET && res[i] != -ECANCELED && res[i] != -ESTALE;
            if (order[i] < first_fail)
                first_fail = order[i];
        }
    }
    /* the stream is ordered: once one request failed for the cut, none queued before it succeeds */
    for (size_t i = 0; i < n_req; i++)
        late_ok += res[i] == 0 && order[i] > first_fail;
    size_t bad = bad_hits();
    pthread_mutex_unlock(&mu);
    if (!failed || !drained || bad) {
        printf("%s no cut seen or completions wrong: failed=%d drained=%d not_once=%zu ok=%zu\n",
               failed ? "EPROTO" : "ENOCUT", failed, drained, bad, ok);
        goto out;
    }
    /* halted: a new stream request is refused until resume */
    r = tun_sftp_write_async(S, &h, 0, f.data, 1, on_done, NULL);
    const char *halted = ename(r);
    if (r == 0) {
        printf("EPROTO a write was queued on a halted stream\n");
        goto out;
    }
    for (int i = 0; i < 300 && !tun_sftp_connected(S); i++)
        usleep(100000);
    /* a MKDIR that succeeded exists, one canceled does not (one cut in flight may or may not) */
    for (size_t i = 0; i < n_req; i++) {
        if (blk[i] >= 0 || res[i] == -ECONNRESET)
            continue;
        mkdirs++;
        snprintf(p, sizeof(p), "%s/%zu", dirs, i);
        r = tun_sftp_lstat(S, p, &a);
        dirs_wrong += res[i] == 0 ? r != 0 : r != -ENOENT;
    }
    tun_sftp_resume(S);
    /* the old handle belongs to the lost connection */
    track_reset();
    r = run_async_wait(&(struct tun_sftp_op){
        .type = TUN_SFTP_OP_WRITE, .h = &h, .off = 0, .data = f.data, .len = 1});
    const char *stale_after = ename(r);
    tun_sftp_resume(S);
    if ((r = tun_sftp_open_flags(S, w[1], SFC_FXF_WRITE, NULL, &h2)) != 0) {
        printf("%s cannot reopen '%s'\n", ename(r), w[1]);
        goto out;
    }
    for (size_t b = 0; b < nb; b++)
        rewritten += !done_ok[b];
    size_t written;
    r = put_all(&h2, &f, bs, depth, done_ok, &written);
    int rc = tun_sftp_close(S, &h2);
    printf("%s ok=%zu reset=%zu canceled=%zu stale=%zu other=%zu ok_after_failure=%zu "
           "mkdirs_checked=%zu mkdirs_wrong=%zu halted=%s stale_after=%s rewritten=%zu close=%s\n",
           ename(r), ok, reset, canceled, stale, other, late_ok, mkdirs, dirs_wrong, halted,
           stale_after, rewritten, ename(rc));
out:
    free(blk);
    free(done_ok);
    free(f.data);
}

/* ---- pipeline: the ordered stream against sequential execution ---- */

static const char *const names[] = {"a",     "b",       "c",    "d",     "D1", "D2", "D1/a", "D1/b",
                                    "D1/D3", "D1/D3/a", "D2/a", "D2/D1", "w0", "w1", "w2",   "l"};
#define N_NAMES  (sizeof(names) / sizeof(names[0]))
#define N_FILES  3
#define DATA_MAX 8192

struct gen_op {
    enum tun_sftp_op_type type;
    int a, b; /* indexes into names (path, to / symlink target); a is the file for handle ops */
    struct tun_sftp_attr attr;
    uint32_t mode;
    unsigned flags;
    uint64_t off;
    uint32_t len;
    uint64_t data_seed;
};

static uint64_t xs(uint64_t *x)
{
    *x ^= *x << 13, *x ^= *x >> 7, *x ^= *x << 17;
    return *x;
}

static void gen(uint64_t seed, struct gen_op *o, size_t n)
{
    static const uint32_t modes[] = {0600, 0644, 0700, 0755};
    uint64_t x = seed * 2654435761u + 88172645463325252ull;

    for (size_t i = 0; i < n; i++) {
        unsigned p = (unsigned)(xs(&x) % 100);
        memset(&o[i], 0, sizeof(o[i]));
        o[i].a = (int)(xs(&x) % N_NAMES);
        o[i].b = (int)(xs(&x) % N_NAMES);
        if (p < 22) {
            o[i].type = TUN_SFTP_OP_WRITE;
            o[i].a = (int)(xs(&x) % N_FILES);
            o[i].off = xs(&x) % 200000;
            o[i].len = 1 + (uint32_t)(xs(&x) % DATA_MAX);
            o[i].data_seed = xs(&x);
        } else if (p < 33) {
            o[i].type = TUN_SFTP_OP_SETSTAT;
            if (p < 28) {
                o[i].attr.flags = TUN_SFTP_ATTR_PERMISSIONS;
                o[i].attr.perm = modes[xs(&x) % 4];
            } else {
                o[i].attr.flags = TUN_SFTP_ATTR_SIZE;
                o[i].attr.size = xs(&x) % 150000;
            }
        } else if (p < 36) {
            o[i].type = TUN_SFTP_OP_SETSTAT;
            o[i].attr.flags = TUN_SFTP_ATTR_ACMODTIME;
            o[i].attr.atime = 1000000000u + (uint32_t)(xs(&x) % 100000000);
            o[i].attr.mtime = 1000000000u + (uint32_t)(xs(&x) % 100000000);
        } else if (p < 43) {
            o[i].type = TUN_SFTP_OP_FSETSTAT;
            o[i].a = (int)(xs(&x) % N_FILES);
            if (p < 40) {
                o[i].attr.flags = TUN_SFTP_ATTR_SIZE;
                o[i].attr.size = xs(&x) % 150000;
            } else {
                o[i].attr.flags = TUN_SFTP_ATTR_PERMISSIONS;
                o[i].attr.perm = modes[xs(&x) % 4];
            }
        } else if (p < 51) {
            o[i].type = TUN_SFTP_OP_REMOVE;
        } else if (p < 59) {
            o[i].type = TUN_SFTP_OP_MKDIR;
            o[i].mode = xs(&x) % 2 ? 0755 : 0700;
        } else if (p < 65) {
            o[i].type = TUN_SFTP_OP_RMDIR;
        } else if (p < 79) {
            o[i].type = TUN_SFTP_OP_RENAME;
            o[i].flags = p < 73 ? 0 : RENAME_NOREPLACE;
        } else if (p < 86) {
            o[i].type = TUN_SFTP_OP_SYMLINK;
        } else if (p < 96) {
            o[i].type = TUN_SFTP_OP_HARDLINK;
        } else {
            o[i].type = TUN_SFTP_OP_FSYNC;
            o[i].a = (int)(xs(&x) % N_FILES);
        }
    }
}

/* The op of o under root, with h[] the open files; paths go to p1/p2, data to buf. */
static void make_op(const struct gen_op *o, const char *root, struct tun_sftp_handle *h, char *p1,
                    char *p2, uint8_t *buf, struct tun_sftp_op *op)
{
    memset(op, 0, sizeof(*op));
    op->type = o->type;
    snprintf(p1, PATH_MAX, "%s/%s", root, names[o->a]);
    snprintf(p2, PATH_MAX, "%s/%s", root, names[o->b]);
    op->path = p1;
    op->to = p2;
    op->target = names[o->b]; /* relative, without "..": it resolves inside root */
    op->attr = o->attr;
    op->mode = o->mode;
    op->flags = o->flags;
    switch (o->type) {
    case TUN_SFTP_OP_WRITE: {
        uint64_t x = o->data_seed | 1;
        for (uint32_t i = 0; i < o->len; i++)
            buf[i] = (uint8_t)xs(&x);
        op->data = buf;
        op->len = o->len;
        op->off = o->off;
    }
        /* fall through */
    case TUN_SFTP_OP_FSETSTAT:
    case TUN_SFTP_OP_FSYNC:
    case TUN_SFTP_OP_CLOSE:
        op->h = &h[o->a];
        op->path = op->to = op->target = NULL;
        break;
    default:
        break;
    }
}

static const char *op_name(enum tun_sftp_op_type t)
{
    static const char *const n[] = {"?",      "setstat", "fsetstat", "remove", "mkdir", "rmdir",
                                    "rename", "symlink", "hardlink", "fsync",  "close", "write"};
    return (unsigned)t < sizeof(n) / sizeof(n[0]) ? n[t] : "?";
}

/* Create and open root/w0..w2, each also linked as root/K/wN, a name no operation touches, so
 * that what the writes did is in the final tree whatever the names went through. */
static int open_files(const char *root, struct tun_sftp_handle *h)
{
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_PERMISSIONS, .perm = 0644};
    char p[PATH_MAX], k[PATH_MAX];
    int r;

    snprintf(k, sizeof(k), "%s/K", root);
    if ((r = tun_sftp_mkdir(S, k, 0755)) != 0)
        return r;
    for (int i = 0; i < N_FILES; i++) {
        snprintf(p, sizeof(p), "%s/w%d", root, i);
        snprintf(k, sizeof(k), "%s/K/w%d", root, i);
        if ((r = tun_sftp_open_flags(S, p,
                                     SFC_FXF_READ | SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_TRUNC,
                                     &a, &h[i])) != 0 ||
            (r = tun_sftp_hardlink(S, p, k)) != 0)
            return r;
    }
    return 0;
}

/* The op sent at position k: with swap, each group of 10 ops goes out in reverse order. */
static size_t swapped(size_t k, size_t nops, bool swap)
{
    size_t g = k - k % 10;

    if (!swap || g + 10 > nops)
        return k;
    return g + 9 - k % 10;
}

static void cmd_pipeline(char **w, int n)
{
    uint64_t seed;
    size_t nops = n >= 5 ? (size_t)atol(w[2]) : 0, total, failed = 0, mismatches = 0;
    bool swap = n == 6 && strcmp(w[5], "swap") == 0;
    struct tun_sftp_handle ha[N_FILES], hb[N_FILES];
    struct gen_op *o;
    int *sync_res, r;
    char p1[PATH_MAX], p2[PATH_MAX], first[512] = "";
    static uint8_t buf[DATA_MAX];
    int errs[8] = {0};
    const char *errname[8] = {0};

    if ((n != 5 && !(n == 6 && swap)) || !parse_u64(w[1], 10, &seed) || nops == 0) {
        printf("USAGE pipeline SEED N DIRA DIRB [swap]\n");
        return;
    }
    total = nops + N_FILES; /* and a CLOSE of each file */
    o = calloc(total, sizeof(*o));
    sync_res = calloc(total, sizeof(*sync_res));
    gen(seed, o, nops);
    for (int i = 0; i < N_FILES; i++) {
        o[nops + i].type = TUN_SFTP_OP_CLOSE;
        o[nops + i].a = i;
    }
    if ((r = open_files(w[3], ha)) != 0 || (r = open_files(w[4], hb)) != 0) {
        printf("%s cannot open the files\n", ename(r));
        goto out;
    }

    /* DIRA: everything on the ordered stream at once (the client keeps up to 1023 on the wire) */
    track_reset();
    for (size_t k = 0; k < total; k++) {
        size_t i = swapped(k, nops, swap);
        struct tun_sftp_op op;
        long idx;

        make_op(&o[i], w[3], ha, p1, p2, buf, &op);
        pthread_mutex_lock(&mu);
        idx = track_new();
        pthread_mutex_unlock(&mu);
        if (idx != (long)k) {
            printf("ENOMEM tracking\n");
            goto out;
        }
        if ((r = tun_sftp_op_async(S, &op, on_done, (void *)(uintptr_t)k)) != 0) {
            pthread_mutex_lock(&mu);
            record(k, r);
            pthread_mutex_unlock(&mu);
        }
    }
    pthread_mutex_lock(&mu);
    bool drained = wait_outstanding(0, now_ms() + 300000);
    size_t bad = bad_hits();
    pthread_mutex_unlock(&mu);
    if (!drained || bad) {
        printf("EPROTO pipeline: drained=%d, %zu requests not completed exactly once\n", drained,
               bad);
        goto out;
    }

    /* DIRB: one at a time, with the synchronous calls (WRITE: the stream, waited for) */
    for (size_t i = 0; i < total; i++) {
        struct tun_sftp_op op;
        make_op(&o[i], w[4], hb, p1, p2, buf, &op);
        sync_res[i] = op.type == TUN_SFTP_OP_WRITE ? run_async_wait(&op) : run_sync(&op);
    }

    for (size_t k = 0; k < total; k++) {
        size_t i = swapped(k, nops, swap);
        int ra = res[k], rb = sync_res[i];
        if (rb != 0) {
            failed++;
            for (int j = 0; j < 8; j++)
                if (errname[j] == NULL || strcmp(errname[j], ename(rb)) == 0) {
                    errname[j] = ename(rb);
                    errs[j]++;
                    break;
                }
        }
        if (ra != rb && mismatches++ == 0)
            snprintf(first, sizeof(first), "op %zu (%s %s -> %s): pipelined %s, sequential %s", i,
                     op_name(o[i].type), names[o[i].a], names[o[i].b], ename(ra), ename(rb));
    }
    if (mismatches) {
        printf("MISMATCH %zu of %zu results differ; first: %s\n", mismatches, total, first);
        goto out;
    }
    printf("0 ops=%zu failed=%zu errors=", total, failed);
    for (int j = 0; j < 8 && errname[j]; j++)
        printf("%s%s:%d", j ? "," : "", errname[j], errs[j]);
    printf("\n");
out:
    free(o);
    free(sync_res);
}

/* ---- the command loop ---- */

static void cmd_open(char **w, int n)
{
    int slot = n >= 4 ? slot_of(w[1]) : -1, r;
    uint32_t pflags = 0;
    struct tun_sftp_attr a = {0};
    uint64_t mode;

    if (slot < 0 || n > 5 || (n == 5 && !parse_u64(w[4], 8, &mode))) {
        printf("USAGE open SLOT PATH FLAGS [MODE]\n");
        return;
    }
    for (const char *c = w[3]; *c; c++)
        pflags |= *c == 'r'   ? SFC_FXF_READ
                  : *c == 'w' ? SFC_FXF_WRITE
                  : *c == 'a' ? SFC_FXF_APPEND
                  : *c == 'c' ? SFC_FXF_CREAT
                  : *c == 't' ? SFC_FXF_TRUNC
                  : *c == 'x' ? SFC_FXF_EXCL
                              : 0;
    if (n == 5) {
        a.flags = TUN_SFTP_ATTR_PERMISSIONS;
        a.perm = (uint32_t)mode;
    }
    r = tun_sftp_open_flags(S, w[2], pflags, n == 5 ? &a : NULL, &slots[slot]);
    slot_open[slot] = r == 0;
    printf("%s\n", ename(r));
}

static void dispatch(char **w, int n)
{
    struct tun_sftp_op op;
    struct tun_sftp_attr a;
    int slot = n >= 2 ? slot_of(w[1]) : -1, r;
    char out[PATH_MAX];

    if (strcmp(w[0], "ext") == 0 && n == 2) {
        printf("0 %d\n", tun_sftp_has_ext(S, w[1]));
    } else if (strcmp(w[0], "writemax") == 0) {
        printf("0 %u\n", tun_sftp_write_max(S));
    } else if (strcmp(w[0], "connected") == 0) {
        printf("0 %d\n", tun_sftp_connected(S));
    } else if (strcmp(w[0], "waitconn") == 0 && n == 3) {
        int want = atoi(w[1]);
        int64_t deadline = now_ms() + atoi(w[2]) * 1000;
        while (tun_sftp_connected(S) != want && now_ms() < deadline)
            usleep(20000);
        printf("%s\n", tun_sftp_connected(S) == want ? "0" : "ETIMEDOUT");
    } else if (strcmp(w[0], "resume") == 0) {
        tun_sftp_resume(S);
        printf("0\n");
    } else if (strcmp(w[0], "open") == 0) {
        cmd_open(w, n);
    } else if ((strcmp(w[0], "close") == 0 || strcmp(w[0], "fsync") == 0) && n == 2 && slot >= 0) {
        r = w[0][0] == 'c' ? tun_sftp_close(S, &slots[slot]) : tun_sftp_fsync(S, &slots[slot]);
        printf("%s\n", ename(r));
    } else if (strcmp(w[0], "fsetstat") == 0 && n == 3 && slot >= 0 && parse_spec(w[2], &a)) {
        printf("%s\n", ename(tun_sftp_fsetstat(S, &slots[slot], &a)));
    } else if (strcmp(w[0], "readlink") == 0 && n == 2) {
        r = tun_sftp_readlink(S, w[1], out, sizeof(out));
        printf("%s %s\n", ename(r), r ? "" : out);
    } else if (strcmp(w[0], "stat") == 0 && n == 2) {
        r = tun_sftp_lstat(S, w[1], &a);
        if (r)
            printf("%s\n", ename(r));
        else
            printf("0 size=%llu mode=%o atime=%u mtime=%u\n", (unsigned long long)a.size, a.perm,
                   a.atime, a.mtime);
    } else if (strcmp(w[0], "writebig") == 0 && n == 3 && slot >= 0) {
        size_t len = (size_t)atol(w[2]);
        void *d = calloc(1, len + 1);
        track_reset();
        pthread_mutex_lock(&mu);
        long i = track_new();
        pthread_mutex_unlock(&mu);
        r = d ? tun_sftp_write_async(S, &slots[slot], 0, d, (uint32_t)len, on_done,
                                     (void *)(uintptr_t)i)
              : -ENOMEM;
        if (r == 0) {
            pthread_mutex_lock(&mu);
            wait_outstanding(0, now_ms() + 60000);
            r = res[i];
            pthread_mutex_unlock(&mu);
        }
        free(d);
        printf("%s\n", ename(r));
    } else if (strcmp(w[0], "put") == 0) {
        cmd_put(w, n);
    } else if (strcmp(w[0], "cut") == 0) {
        cmd_cut(w, n);
    } else if (strcmp(w[0], "pipeline") == 0) {
        cmd_pipeline(w, n);
    } else if (strcmp(w[0], "async") == 0 && n >= 2 && parse_op(w + 1, n - 1, &op, &a)) {
        pthread_mutex_lock(&mu);
        long i = track_new();
        pthread_mutex_unlock(&mu);
        r = i < 0 ? -ENOMEM : tun_sftp_op_async(S, &op, on_done, (void *)(uintptr_t)i);
        if (r != 0 && i >= 0) {
            pthread_mutex_lock(&mu);
            n_req--; /* not queued: no completion will come */
            pthread_mutex_unlock(&mu);
        }
        printf("%s%s\n", ename(r), r ? "" : " queued");
    } else if (strcmp(w[0], "wait") == 0 && n == 2) {
        pthread_mutex_lock(&mu);
        bool ok = wait_outstanding(0, now_ms() + atoi(w[1]) * 1000);
        printf("%s", ok && bad_hits() == 0 ? "0" : "ETIMEDOUT");
        for (size_t i = 0; i < n_req; i++)
            printf(" %s", hits[i] ? ename(res[i]) : "pending");
        printf("\n");
        n_req = n_done = n_failed = 0;
        pthread_mutex_unlock(&mu);
    } else if (parse_op(w, n, &op, &a)) {
        printf("%s\n", ename(run_sync(&op)));
    } else {
        printf("USAGE unknown command '%s' or wrong arguments\n", w[0]);
    }
}

int main(int argc, char **argv)
{
    struct tun_sftp_opts o;
    char err[512], line[CMD_MAX];
    int c;

    memset(&o, 0, sizeof(o));
    while ((c = getopt(argc, argv, "F:t:")) != -1) {
        if (c == 'F')
            o.ssh.ssh_config = optarg;
        else if (c == 't')
            o.op_timeout_ms = atoi(optarg);
        else
            return 2;
    }
    if (optind != argc - 1) {
        fprintf(stderr, "usage: sftpwr [-F ssh_config] [-t op_timeout_ms] DEST < commands\n");
        return 2;
    }
    o.ssh.dest = argv[optind];
    if (tun_sftp_start(&o, &S, err, sizeof(err)) != 0) {
        fprintf(stderr, "sftpwr: %s\n", err);
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof(line), stdin)) {
        char *w[16], *save;
        int n = 0;

        line[strcspn(line, "\n")] = '\0';
        for (char *t = strtok_r(line, " ", &save); t && n < 16; t = strtok_r(NULL, " ", &save))
            w[n++] = t;
        if (n == 0)
            continue;
        if (strcmp(w[0], "quit") == 0)
            break;
        dispatch(w, n);
    }
    tun_sftp_stop(S);
    free(res);
    free(hits);
    free(order);
    return 0;
}
