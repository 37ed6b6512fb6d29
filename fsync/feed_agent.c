/* feed_agent.c - watcher -> laptop index -> deltas -> subscribers (see feed_agent.h, docs/feed.md)
 */
#include "feed_agent.h"

#include "deadline.h"
#include "feed_codec.h"
#include "index.h"
#include "watch.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define FA_BLOCK        65536u      /* the mount's block size; HELLO must agree */
#define COALESCE_MS     5           /* a batch ends after this long without an event... */
#define COALESCE_MAX_MS 100         /* ...or once it is this old */
#define DATA_MAX_FILE   64          /* DATA blocks pushed for one file in one change */
#define DATA_MAX_BATCH  (64u << 20) /* bytes of DATA kept for one batch */
#define SEND_CHUNK      (1u << 20)
#define HASHES_MAX      4096 /* hashes in one HASHES frame */
/* A file only its writer's mount follows is hashed once it has been quiet this long (see
 * only_writer_follows): a 1 GiB write through the mount was hashed whole at every batch */
#define HASH_QUIET_NS (1000LL * 1000000)

enum op_kind { OP_ENTRY, OP_REMOVE, OP_RENAME, OP_HASHES, OP_DATA };

struct op {
    enum op_kind kind;
    char *path, *path2; /* path2: RENAME's target, ENTRY's link text */
    struct idx_file f;  /* ENTRY */
    uint64_t version, first;
    uint32_t n;      /* HASHES: count; DATA: raw length */
    uint8_t *bytes;  /* HASHES: n x 16; DATA: raw bytes */
    bool small;      /* DATA of a small file: sent to every subscriber */
    uint64_t client; /* ENTRY, REMOVE, RENAME: the SFTP client whose own change this is, or 0 */
};

struct batch {
    struct op *v;
    size_t n, cap;
    size_t data_bytes;
};

/* A set of paths (the files one subscriber holds): open addressing, tombstones. */
struct strset {
    char **slot;
    size_t cap, used;
};

/* What SFTP clients' changes left (the endpoint's change hook): every state of a file one of
 * them left (inode, type and mode, size, mtime in ns), and every path one of them left empty,
 * for OWN_KEEP_NS. The watcher reports a path some time after it changed, when it may have
 * changed again: a state it finds there that a client's change left is that client's own. A
 * change made on the laptop leaves a state (an mtime in ns) that no client made. */
#define OWN_SLOTS   65536
#define OWN_PROBE   16
#define OWN_KEEP_NS (120LL * 1000000000)
struct own_rec {
    uint64_t key; /* own_key_state or own_key_path; 0: free */
    uint64_t client;
    int64_t t;
};

struct fa_export {
    const struct fa_root *r;
    struct own_rec *own; /* OWN_SLOTS; protected by fa->lock */
    idx_t *idx;
    fw_t *w; /* agent thread only */
    bool started;
    uint64_t gen; /* agent thread only */
    int64_t stamp;
};

struct fa_sub {
    fa_t *fa;
    struct tun_ep_chan *ch;     /* one reference held by the sub */
    struct feed_dec dec;        /* session thread only */
    struct feed_enc enc;        /* agent thread only */
    struct fa_export *ex;       /* protected by fa->lock */
    bool want_snap, live, dead; /* protected by fa->lock */
    char refuse[256];           /* protected by fa->lock: why HELLO was refused */
    struct strset held;         /* protected by fa->lock */
    uint64_t acked;             /* protected by fa->lock */
    uint64_t sent_gen;          /* protected by fa->lock: the last generation sent */
    uint64_t client;            /* protected by fa->lock: its SFTP client's id (CLIENT), or 0 */
    struct fa_sub *next;        /* protected by fa->lock */
};

/* Lock order: fa->lock is a leaf (never held while sending or touching the index). */
struct fa {
    struct fa_export *ex;
    size_t nex;
    char state_dir[PATH_MAX];
    int verbose;
    int wake_fd;
    pthread_t thread;
    pthread_mutex_t lock;
    struct fa_sub *subs; /* protected by lock */
    struct hold_req {
        struct fa_export *ex;
        char *path;
    } * to_hash;                   /* files a mount started to hold: hash them; protected by lock */
    size_t n_to_hash, cap_to_hash; /* protected by lock */
    struct deferred_hash {
        struct fa_export *ex;
        char *path;
        int64_t due;                 /* now_ns() after which it goes to to_hash */
    } * deferred;                    /* agent thread only */
    size_t n_deferred, cap_deferred; /* agent thread only */
    bool stop;                       /* protected by lock */
    struct fa_stats stats;           /* protected by lock */
    uint8_t *blockbuf;               /* agent thread only */
    /* Held for reading by each named client's request from before it starts until its hook has
     * heard what it left (SFS_BEGIN to SFS_END); taken for writing by the agent to look between
     * requests (requests_pause). Writers first: a steady stream of requests cannot starve
     * the agent. Never held by the agent while it sends or waits for a session. */
    pthread_rwlock_t requests;
};

static void vlog(const fa_t *fa, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vlog(const fa_t *fa, const char *fmt, ...)
{
    if (!fa->verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "offload serve: feed: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void elog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void elog(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "offload serve: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void wake(fa_t *fa)
{
    uint64_t one = 1;
    ssize_t w = write(fa->wake_fd, &one, sizeof(one));
    (void)w;
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- string set --------------------------------------------------------------------------- */

#define TOMB ((char *)1)

static uint64_t str_hash(const char *s)
{
    return XXH3_64bits(s, strlen(s));
}

static bool set_has(const struct strset *s, const char *p)
{
    if (!s->cap)
        return false;
    for (size_t i = str_hash(p) & (s->cap - 1), k = 0; k < s->cap;
         i = (i + 1) & (s->cap - 1), k++) {
        if (!s->slot[i])
            return false;
        if (s->slot[i] != TOMB && strcmp(s->slot[i], p) == 0)
            return true;
    }
    return false;
}

static void set_del(struct strset *s, const char *p)
{
    if (!s->cap)
        return;
    for (size_t i = str_hash(p) & (s->cap - 1), k = 0; k < s->cap;
         i = (i + 1) & (s->cap - 1), k++) {
        if (!s->slot[i])
            return;
        if (s->slot[i] != TOMB && strcmp(s->slot[i], p) == 0) {
            free(s->slot[i]);
            s->slot[i] = TOMB;
            return;
        }
    }
}

static int set_add_owned(struct strset *s, char *p);

static int set_grow(struct strset *s)
{
    struct strset n = {.cap = s->cap ? s->cap * 2 : 64};
    if (!(n.slot = calloc(n.cap, sizeof(char *))))
        return -ENOMEM;
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i] && s->slot[i] != TOMB)
            set_add_owned(&n, s->slot[i]);
    free(s->slot);
    *s = n;
    return 0;
}

static int set_add_owned(struct strset *s, char *p)
{
    if ((s->used + 1) * 2 > s->cap && set_grow(s) != 0) {
        free(p);
        return -ENOMEM;
    }
    size_t i = str_hash(p) & (s->cap - 1);
    while (s->slot[i] && s->slot[i] != TOMB)
        i = (i + 1) & (s->cap - 1);
    if (!s->slot[i])
        s->used++;
    s->slot[i] = p;
    return 0;
}

static int set_add(struct strset *s, const char *p)
{
    if (set_has(s, p))
        return 0;
    char *c = strdup(p);
    return c ? set_add_owned(s, c) : -ENOMEM;
}

static void set_free(struct strset *s)
{
    for (size_t i = 0; i < s->cap; i++)
        if (s->slot[i] && s->slot[i] != TOMB)
            free(s->slot[i]);
    free(s->slot);
    memset(s, 0, sizeof(*s));
}

/* 'p' is 'prefix' or below it. */
static bool under(const char *p, const char *prefix)
{
    size_t n = strlen(prefix);
    return n == 0 || (strncmp(p, prefix, n) == 0 && (p[n] == '\0' || p[n] == '/'));
}

/* After a rename, paths at or below 'from' now live below 'to' (and what was at 'to' is gone);
 * with 'to' NULL they are just gone. */
static void set_rename(struct strset *s, const char *from, const char *to)
{
    char **moved = NULL;
    size_t nm = 0;
    for (size_t i = 0; i < s->cap; i++) {
        char *p = s->slot[i];
        if (!p || p == TOMB)
            continue;
        if ((to && under(p, to)) || under(p, from)) {
            char *np = NULL;
            if (to && under(p, from) && asprintf(&np, "%s%s", to, p + strlen(from)) < 0)
                np = NULL;
            char **nv = realloc(moved, (nm + 1) * sizeof(*moved));
            if (np && nv) {
                moved = nv;
                moved[nm++] = np;
            } else {
                free(np);
                if (nv)
                    moved = nv;
            }
            free(p);
            s->slot[i] = TOMB;
        }
    }
    for (size_t i = 0; i < nm; i++)
        set_add_owned(s, moved[i]);
    free(moved);
}

/* --- own changes ------------------------------------------------------------------------- */

static int64_t ts_ns(struct timespec t);
static int64_t now_ns(void);

static uint64_t own_key_state(uint64_t dev, uint64_t ino, uint32_t mode, uint64_t size,
                              int64_t mtime_ns)
{
    uint64_t v[5] = {dev, ino, mode, size, (uint64_t)mtime_ns};
    return XXH3_64bits(v, sizeof(v)) | 1; /* never 0, the free slot */
}

static uint64_t own_key_path(const char *rel)
{
    return XXH3_64bits_withSeed(rel, strlen(rel), 0x6f776e) | 1;
}

/* The key of "a client changed something at this path" (whatever it left there). */
static uint64_t own_key_touched(const char *rel)
{
    return XXH3_64bits_withSeed(rel, strlen(rel), 0x746f756368) | 1;
}

/* The slot of 'key' (fa->lock held): its own, else a free or stale one, else the oldest (at
 * worst a change is then taken for a foreign one: applied, never lost). */
static struct own_rec *own_slot(struct fa_export *ex, uint64_t key, int64_t now, bool *found)
{
    struct own_rec *slot = NULL, *oldest = NULL;
    *found = false;
    for (size_t i = 0; i < OWN_PROBE; i++) {
        struct own_rec *r = &ex->own[(key + i) % OWN_SLOTS];
        if (r->key == key) {
            *found = now - r->t <= OWN_KEEP_NS;
            return r;
        }
        if (!slot && (r->key == 0 || now - r->t > OWN_KEEP_NS))
            slot = r; /* keep probing: the key may sit further on */
        if (!oldest || r->t < oldest->t)
            oldest = r;
    }
    return slot ? slot : oldest;
}

void fa_note_change(void *arg, uint64_t client, enum sfs_phase phase, size_t root, const char *rel,
                    const struct stat *st)
{
    fa_t *fa = arg;
    if (client == 0)
        return;
    if (phase == SFS_BEGIN) {
        pthread_rwlock_rdlock(&fa->requests);
        return;
    }
    if (phase == SFS_END) {
        pthread_rwlock_unlock(&fa->requests);
        return;
    }
    if (root >= fa->nex || strcmp(rel, ".") == 0)
        return;
    struct fa_export *ex = &fa->ex[root];
    uint64_t key = st ? own_key_state(st->st_dev, st->st_ino, st->st_mode, (uint64_t)st->st_size,
                                      ts_ns(st->st_mtim))
                      : own_key_path(rel);
    int64_t now = now_ns();
    bool found;
    pthread_mutex_lock(&fa->lock);
    struct own_rec *r = own_slot(ex, key, now, &found);
    *r = (struct own_rec){.key = key, .client = client, .t = now};
    if (st) {
        uint64_t tkey = own_key_touched(rel);
        r = own_slot(ex, tkey, now, &found);
        *r = (struct own_rec){.key = tkey, .client = client, .t = now};
    }
    pthread_mutex_unlock(&fa->lock);
}

/* Did a client make something at 'rel' lately? Then that client knows the name, even when this
 * side never indexed it (made and removed again between two batches). */
static bool client_touched(fa_t *fa, struct fa_export *ex, const char *rel)
{
    bool found;
    pthread_mutex_lock(&fa->lock);
    own_slot(ex, own_key_touched(rel), now_ns(), &found);
    pthread_mutex_unlock(&fa->lock);
    return found;
}

/* The client one of whose changes left 'rel' as it is now (f NULL: nothing there), or 0. */
static uint64_t own_client(fa_t *fa, struct fa_export *ex, const char *rel,
                           const struct idx_file *f)
{
    uint64_t key = f ? own_key_state(f->dev, f->ino, f->mode, f->size, f->mtime_ns)
                     : own_key_path(rel),
             client = 0;
    bool found;
    pthread_mutex_lock(&fa->lock);
    const struct own_rec *r = own_slot(ex, key, now_ns(), &found);
    if (found)
        client = r->client;
    pthread_mutex_unlock(&fa->lock);
    return client;
}

/* --- batches of operations ---------------------------------------------------------------- */

static struct op *op_add(struct batch *b, enum op_kind k, const char *path)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        struct op *v = realloc(b->v, cap * sizeof(*v));
        if (!v)
            return NULL;
        b->v = v;
        b->cap = cap;
    }
    struct op *o = &b->v[b->n];
    memset(o, 0, sizeof(*o));
    o->kind = k;
    if (!(o->path = strdup(path)))
        return NULL;
    b->n++;
    return o;
}

static void batch_clear(struct batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->v[i].path);
        free(b->v[i].path2);
        free(b->v[i].bytes);
    }
    b->n = 0;
    b->data_bytes = 0;
}

/* --- the laptop index --------------------------------------------------------------------- */

static const char *base_of(const char *rel)
{
    const char *s = strrchr(rel, '/');
    return s ? s + 1 : rel;
}

static void parent_of(const char *rel, char *out, size_t len)
{
    const char *s = strrchr(rel, '/');
    size_t n = s ? (size_t)(s - rel) : 0;
    if (n >= len)
        n = len - 1;
    memcpy(out, rel, n);
    out[n] = '\0';
}

static bool held_by_any(fa_t *fa, struct fa_export *ex, const char *rel)
{
    bool any = false;
    pthread_mutex_lock(&fa->lock);
    for (struct fa_sub *s = fa->subs; s && !any; s = s->next)
        any = s->ex == ex && s->live && !s->dead && set_has(&s->held, rel);
    pthread_mutex_unlock(&fa->lock);
    return any;
}

struct old_hashes {
    uint8_t *h;
    uint32_t *len;
    size_t n, cap;
};

static int collect_hash(void *arg, const struct idx_block *b)
{
    struct old_hashes *o = arg;
    if (b->blkno >= 1u << 28)
        return 0;
    size_t need = (size_t)b->blkno + 1;
    if (need > o->cap) {
        size_t cap = need * 2;
        uint8_t *h = realloc(o->h, cap * IDX_HASH_LEN);
        if (h)
            o->h = h;
        uint32_t *l = realloc(o->len, cap * sizeof(uint32_t));
        if (l)
            o->len = l;
        if (!h || !l)
            return -ENOMEM;
        memset(o->len + o->cap, 0xff, (cap - o->cap) * sizeof(uint32_t));
        o->cap = cap;
    }
    memcpy(o->h + b->blkno * IDX_HASH_LEN, b->hash, IDX_HASH_LEN);
    o->len[b->blkno] = b->len;
    if (need > o->n)
        o->n = need;
    return 0;
}

/* Queue HASHES for the run of n hashes starting at block 'first'; takes 'run'. */
static int add_hashes(struct batch *b, const char *rel, uint64_t version, uint64_t first,
                      uint32_t n, uint8_t *run)
{
    struct op *o = op_add(b, OP_HASHES, rel);
    if (!o) {
        free(run);
        return -ENOMEM;
    }
    o->version = version;
    o->first = first;
    o->n = n;
    o->bytes = run;
    return 0;
}

/* The file 'rel' opened for hashing, and its stat. -ENOENT (or another error) when it cannot be,
 * -EAGAIN when what is there now is not a regular file. */
static int open_regular(struct fa_export *ex, const char *rel, int *fd, struct stat *st)
{
    int r = cf_openat(ex->r->root, rel, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0, fd);
    if (r < 0)
        return r;
    if (fstat(*fd, st) != 0 || !S_ISREG(st->st_mode)) {
        close(*fd);
        return -EAGAIN;
    }
    return 0;
}

/* Hash the file's blocks and store them in the index. With a batch, queue HASHES (and DATA) for
 * the blocks that changed since 'old' (all of them when old is NULL); without, only record.
 * 'fd' is the inode f describes (its stat made f), or -1: then the path is opened here, and if
 * another inode is there now nothing is hashed (its own event follows). The hashes always belong
 * to the inode the row announces, never to a file that replaced it meanwhile. */
static int hash_file(fa_t *fa, struct fa_export *ex, const char *rel, const struct idx_file *f,
                     const struct old_hashes *old, struct batch *b, int fd)
{
    int r;
    bool own = fd < 0;
    if (own) {
        struct stat st;
        if ((r = open_regular(ex, rel, &fd, &st)) < 0)
            return r == -ENOENT || r == -EAGAIN ? 0 : r; /* gone again: the next event says so */
        if (st.st_ino != f->ino || st.st_dev != f->dev || (uint64_t)st.st_size != f->size) {
            close(fd);
            return 0; /* replaced since: the next event says so */
        }
    }
    bool small = f->size <= FA_BLOCK;
    bool held = b && !small && held_by_any(fa, ex, rel);
    uint64_t nblocks = (f->size + FA_BLOCK - 1) / FA_BLOCK;
    uint8_t *run = NULL;
    uint64_t run_first = 0;
    uint32_t run_n = 0, ndata = 0;
    r = 0;
    for (uint64_t blk = 0; blk < nblocks && r == 0; blk++) {
        ssize_t got = pread(fd, fa->blockbuf, FA_BLOCK, (off_t)(blk * FA_BLOCK));
        if (got < 0) {
            r = -errno;
            break;
        }
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(fa->blockbuf, (size_t)got));
        struct idx_block row = {
            .file = f->id, .blkno = blk, .version = f->version, .len = (uint32_t)got};
        memcpy(row.hash, c.digest, IDX_HASH_LEN);
        if ((r = idx_block_put(ex->idx, &row)) < 0 || !b)
            continue;
        bool changed = !old || blk >= old->n || old->len[blk] != (uint32_t)got ||
                       memcmp(old->h + blk * IDX_HASH_LEN, c.digest, IDX_HASH_LEN) != 0;
        if (!changed) {
            if (run_n)
                r = add_hashes(b, rel, f->version, run_first, run_n, run);
            run = NULL;
            run_n = 0;
            continue;
        }
        if (!run_n) {
            if (!(run = malloc((size_t)HASHES_MAX * IDX_HASH_LEN))) {
                r = -ENOMEM;
                break;
            }
            run_first = blk;
        }
        memcpy(run + (size_t)run_n * IDX_HASH_LEN, c.digest, IDX_HASH_LEN);
        run_n++;
        bool data = (small || held) && ndata < DATA_MAX_FILE &&
                    b->data_bytes + (size_t)got <= DATA_MAX_BATCH;
        if (data || run_n == HASHES_MAX) {
            /* a DATA frame follows the HASHES that announce its block */
            r = add_hashes(b, rel, f->version, run_first, run_n, run);
            run = NULL;
            run_n = 0;
        }
        if (r == 0 && data) {
            struct op *d = op_add(b, OP_DATA, rel);
            if (!d || (got && !(d->bytes = malloc((size_t)got)))) {
                r = -ENOMEM;
                break;
            }
            d->version = f->version;
            d->first = blk;
            d->n = (uint32_t)got;
            d->small = small;
            memcpy(d->bytes, fa->blockbuf, (size_t)got);
            b->data_bytes += (size_t)got;
            ndata++;
        }
    }
    if (r == 0 && run_n)
        r = add_hashes(b, rel, f->version, run_first, run_n, run);
    else
        free(run);
    if (own)
        close(fd);
    return r;
}

static int sync_path(fa_t *fa, struct fa_export *ex, const char *rel, bool deep, struct batch *b);

/* Is the file at 'rel', as f describes it, a state one SFTP client's own change left, and is
 * that client's mount the only subscriber of the export? Then nobody needs its block hashes
 * now: the writer's mount leaves its own changes alone (docs/feed.md, step 6). Its ENTRY still
 * goes out (tagged OWN); the hashing waits until the file is quiet (defer_hash). A mount that
 * subscribes meanwhile gets the file in its snapshot and asks for hashes by HOLD as usual; a
 * later change of a file without hashes is announced as all blocks changed. */
static bool only_writer_follows(fa_t *fa, struct fa_export *ex, const char *rel,
                                const struct idx_file *f)
{
    uint64_t c = own_client(fa, ex, rel, f);
    if (c == 0 || !client_touched(fa, ex, rel))
        return false;
    bool only = true;
    pthread_mutex_lock(&fa->lock);
    for (struct fa_sub *s = fa->subs; s && only; s = s->next)
        if (s->ex == ex && !s->dead && s->client != c)
            only = false;
    pthread_mutex_unlock(&fa->lock);
    return only;
}

/* Queue 'path' (taken over: freed here when it cannot be queued) for hash_held. fa->lock held.
 * Returns whether it was queued. */
static bool queue_hash(fa_t *fa, struct fa_export *ex, char *path)
{
    if (path && fa->n_to_hash == fa->cap_to_hash) {
        size_t cap = fa->cap_to_hash ? fa->cap_to_hash * 2 : 16;
        void *v = realloc(fa->to_hash, cap * sizeof(*fa->to_hash));
        if (v) {
            fa->to_hash = v;
            fa->cap_to_hash = cap;
        }
    }
    if (!path || fa->n_to_hash == fa->cap_to_hash) {
        free(path);
        return false;
    }
    fa->to_hash[fa->n_to_hash++] = (struct hold_req){ex, path};
    return true;
}

/* Hold the named clients' requests off: until requests_resume, no request is in progress and
 * every change made so far has been told to the hook, so a state seen now is one a request left
 * (and was noted), never one in the middle of a request. Waits for the requests in progress,
 * at most PAUSE_WAIT_MS (a request may block: a slow disk, a FIFO); false when it gave up (then
 * a passing state may be taken for a foreign change: applied, never lost). */
#define PAUSE_WAIT_MS 100
static bool requests_pause(fa_t *fa)
{
    struct timespec until = deadline_ms(CLOCK_REALTIME, PAUSE_WAIT_MS);
    return pthread_rwlock_timedwrlock(&fa->requests, &until) == 0;
}

static void requests_resume(fa_t *fa)
{
    pthread_rwlock_unlock(&fa->requests);
}

/* Hash 'rel' once it has been quiet for HASH_QUIET_NS (agent thread). */
static int defer_hash(fa_t *fa, struct fa_export *ex, const char *rel)
{
    int64_t due = now_ns() + HASH_QUIET_NS;
    for (size_t i = 0; i < fa->n_deferred; i++)
        if (fa->deferred[i].ex == ex && strcmp(fa->deferred[i].path, rel) == 0) {
            fa->deferred[i].due = due;
            return 0;
        }
    if (fa->n_deferred == fa->cap_deferred) {
        size_t cap = fa->cap_deferred ? fa->cap_deferred * 2 : 16;
        void *v = realloc(fa->deferred, cap * sizeof(*fa->deferred));
        if (!v)
            return -ENOMEM;
        fa->deferred = v;
        fa->cap_deferred = cap;
    }
    char *p = strdup(rel);
    if (!p)
        return -ENOMEM;
    fa->deferred[fa->n_deferred++] = (struct deferred_hash){ex, p, due};
    return 0;
}

/* Deferred files that are quiet now go to hash_held (which hashes a file only when its current
 * version has no hashes yet). Returns the ms until the next one is due, or -1. */
static int promote_deferred(fa_t *fa)
{
    int64_t now = now_ns(), next = -1;
    for (size_t i = 0; i < fa->n_deferred;) {
        struct deferred_hash *d = &fa->deferred[i];
        if (d->due > now) {
            if (next < 0 || d->due - now < next)
                next = d->due - now;
            i++;
            continue;
        }
        /* not queued (no memory): hashed at its next change instead */
        pthread_mutex_lock(&fa->lock);
        queue_hash(fa, d->ex, d->path);
        pthread_mutex_unlock(&fa->lock);
        *d = fa->deferred[--fa->n_deferred];
    }
    return next < 0 ? -1 : (int)(next / 1000000) + 1;
}

static int64_t ts_ns(struct timespec t)
{
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static bool meta_differs(const struct idx_file *a, const struct idx_file *b)
{
    return a->mode != b->mode || a->uid != b->uid || a->gid != b->gid || a->nlink != b->nlink ||
           a->size != b->size || a->mtime_ns != b->mtime_ns || a->ctime_ns != b->ctime_ns ||
           a->ino != b->ino || a->dev != b->dev;
}

struct child_scan {
    char (*names)[NAME_MAX + 1];
    size_t n, cap;
    int64_t stamp;
};

static int stale_child(void *arg, const struct idx_file *f)
{
    struct child_scan *cs = arg;
    if (f->attr_time_ns >= cs->stamp)
        return 0;
    if (cs->n == cs->cap) {
        size_t cap = cs->cap ? cs->cap * 2 : 16;
        void *v = realloc(cs->names, cap * sizeof(*cs->names));
        if (!v)
            return -ENOMEM;
        cs->names = v;
        cs->cap = cap;
    }
    snprintf(cs->names[cs->n++], NAME_MAX + 1, "%s", f->name);
    return 0;
}

/* dir + "/" + name into out (callers check that it fits; an empty result if it does not). */
static void join(char *out, size_t len, const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name), sep = a ? 1 : 0;
    if (a + sep + b + 1 > len) {
        out[0] = '\0';
        return;
    }
    memcpy(out, dir, a);
    out[a] = '/';
    memcpy(out + a + sep, name, b + 1);
}

/* List the directory 'rel' (row 'id') and bring every child up to date; children the index has
 * and the directory has not are removed. */
static int sync_dir(fa_t *fa, struct fa_export *ex, const char *rel, int64_t id, bool deep,
                    struct batch *b)
{
    DIR *d;
    int r = cf_opendir(ex->r->root, *rel ? rel : ".", &d);
    if (r < 0)
        return r == -ENOENT || r == -ENOTDIR ? 0 : r;
    int64_t stamp = ++ex->stamp;
    char child[PATH_MAX];
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0 ||
            !cf_visible(ex->r->root, rel, de->d_name))
            continue;
        if (strlen(rel) + strlen(de->d_name) + 2 > sizeof(child))
            continue;
        join(child, sizeof(child), rel, de->d_name);
        if ((r = sync_path(fa, ex, child, deep, b)) < 0 && r != -ENOENT && r != -EPERM &&
            r != -EACCES)
            break;
        r = 0;
        struct idx_file cf;
        if (idx_lookup(ex->idx, id, de->d_name, &cf) == 0)
            idx_touch_attr(ex->idx, cf.id, stamp);
    }
    closedir(d);
    if (r < 0)
        return r;
    struct child_scan cs = {.stamp = stamp};
    r = idx_children(ex->idx, id, 0, stale_child, &cs);
    for (size_t i = 0; r == 0 && i < cs.n; i++) {
        join(child, sizeof(child), rel, cs.names[i]);
        r = sync_path(fa, ex, child, false, b);
    }
    free(cs.names);
    return r;
}

/* Bring the index row of 'rel' up to date with the file system and queue what changed. With
 * 'deep', existing directories are listed again too (a rescan). */
static int sync_path(fa_t *fa, struct fa_export *ex, const char *rel, bool deep, struct batch *b)
{
    struct stat st;
    struct idx_file parent, old, f;
    char pdir[PATH_MAX];
    int r;

    if ((r = cf_lstat(ex->r->root, *rel ? rel : ".", &st)) < 0 && r != -ENOENT && r != -ENOTDIR)
        return r;
    bool exists = r == 0;
    if (*rel) {
        parent_of(rel, pdir, sizeof(pdir));
        if ((r = idx_resolve(ex->idx, pdir, &parent)) == -ENOENT && exists) {
            if ((r = sync_path(fa, ex, pdir, false, b)) < 0 ||
                (r = idx_resolve(ex->idx, pdir, &parent)) < 0)
                return r;
        }
        if (r < 0)
            return exists ? r : 0;
        r = idx_lookup(ex->idx, parent.id, base_of(rel), &old);
    } else {
        r = idx_get(ex->idx, IDX_ROOT_ID, &old);
        parent.id = 0;
    }
    if (r < 0 && r != -ENOENT)
        return r;
    bool known = r == 0;
    if (!exists) {
        if (!known) {
            /* a name a client made, removed before it was indexed: the client has it */
            if (*rel && client_touched(fa, ex, rel) && !op_add(b, OP_REMOVE, rel))
                return -ENOMEM;
            return 0;
        }
        if (!*rel)
            return -ESTALE; /* the root itself is gone */
        if ((r = idx_delete(ex->idx, old.id, NULL, NULL)) < 0)
            return r;
        return op_add(b, OP_REMOVE, rel) ? 0 : -ENOMEM;
    }
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode) && !S_ISLNK(st.st_mode) &&
        !S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode) &&
        !S_ISBLK(st.st_mode))
        return 0;

    int fd = -1;
    if (S_ISREG(st.st_mode) && ex->started && *rel) {
        /* a big file a client is writing: look between two of its requests, so that the state
         * seen is one a request left and can be told as the client's own (only_writer_follows:
         * then it is not hashed whole again for every batch of the write) */
        bool pause = st.st_size > (off_t)FA_BLOCK * 16 && client_touched(fa, ex, rel);
        if (pause)
            pause = requests_pause(fa);
        /* the row describes the inode whose blocks are hashed below: open it first and take its
         * stat from the open file (a rename over the path in between cannot pair one file's
         * metadata with another's hashes) */
        struct stat ost;
        if (open_regular(ex, rel, &fd, &ost) == 0)
            st = ost;
        else
            fd = -1;
        if (pause)
            requests_resume(fa);
    }
    struct old_hashes oh = {0};
    bool had_blocks = known && S_ISREG(old.mode) && S_ISREG(st.st_mode);
    if (had_blocks && (r = idx_blocks(ex->idx, old.id, old.version, collect_hash, &oh)) < 0)
        goto out;

    memset(&f, 0, sizeof(f));
    f.parent = parent.id;
    snprintf(f.name, sizeof(f.name), "%s", *rel ? base_of(rel) : "");
    f.dev = st.st_dev;
    f.ino = st.st_ino;
    f.mode = st.st_mode;
    f.uid = st.st_uid;
    f.gid = st.st_gid;
    f.nlink = (uint32_t)st.st_nlink;
    f.size = (uint64_t)st.st_size;
    f.atime_ns = ts_ns(st.st_atim);
    f.mtime_ns = ts_ns(st.st_mtim);
    f.ctime_ns = ts_ns(st.st_ctim);
    f.attr_time_ns = ex->stamp;
    bool type_changed = known && (old.mode & S_IFMT) != (st.st_mode & S_IFMT);
    if (type_changed) {
        /* a different kind of file under the same name: remove, then add */
        if ((r = idx_delete(ex->idx, old.id, NULL, NULL)) < 0)
            goto out;
        if (!op_add(b, OP_REMOVE, rel)) {
            r = -ENOMEM;
            goto out;
        }
        known = had_blocks = false;
    }
    int changed = idx_put(ex->idx, &f);
    if (changed < 0) {
        r = changed;
        goto out;
    }
    bool content = !known || changed == 1;
    char link[PATH_MAX] = "";
    if (S_ISLNK(st.st_mode)) {
        if ((r = cf_readlink(ex->r->root, rel, link, sizeof(link))) < 0)
            link[0] = '\0';
        else
            idx_set_link(ex->idx, f.id, link);
    }
    if (!known || meta_differs(&old, &f) || content) {
        struct op *o = op_add(b, OP_ENTRY, rel);
        if (!o || (S_ISLNK(st.st_mode) && !(o->path2 = strdup(link)))) {
            r = -ENOMEM;
            goto out;
        }
        o->f = f;
    }
    r = 0;
    /* the first scan records metadata only: blocks are hashed when a file changes, or when a
     * mount starts to hold it (HOLD), like git's index hashes what it must */
    if (S_ISREG(st.st_mode) && content && ex->started && b && only_writer_follows(fa, ex, rel, &f))
        r = defer_hash(fa, ex, rel);
    else if (S_ISREG(st.st_mode) && content && ex->started)
        r = hash_file(fa, ex, rel, &f, had_blocks ? &oh : NULL, b, fd);
    else if (S_ISDIR(st.st_mode) && (!known || deep || old.mtime_ns != f.mtime_ns))
        /* a folder whose mtime moved is listed again: a name that came and went between two
         * looks of the watcher cannot stay behind */
        r = sync_dir(fa, ex, rel, f.id, deep, b);
out:
    if (fd >= 0)
        close(fd);
    free(oh.h);
    free(oh.len);
    return r;
}

/* --- sending ------------------------------------------------------------------------------ */

static int send_buf(fa_t *fa, struct fa_sub *s, struct buf *out)
{
    size_t n = buf_avail(out);
    int r = n ? tun_ep_chan_send(s->ch, buf_ptr(out), n) : 0;
    buf_reset(out);
    if (r == 0) {
        pthread_mutex_lock(&fa->lock);
        fa->stats.bytes_sent += n;
        pthread_mutex_unlock(&fa->lock);
    }
    return r;
}

static void to_entry(const struct idx_file *f, const char *path, const char *link,
                     struct feed_entry *e)
{
    memset(e, 0, sizeof(*e));
    e->path = path;
    e->mode = f->mode;
    e->uid = f->uid;
    e->gid = f->gid;
    e->nlink = f->nlink;
    e->size = f->size;
    e->atime_ns = f->atime_ns;
    e->mtime_ns = f->mtime_ns;
    e->ctime_ns = f->ctime_ns;
    e->dev = f->dev;
    e->ino = f->ino;
    e->version = f->version;
    e->link = link ? link : "";
}

struct snap {
    fa_t *fa;
    struct fa_sub *s;
    struct fa_export *ex;
    struct buf out;
    uint64_t count;
    char path[PATH_MAX];
    int err;
};

static int snap_each(void *arg, const struct idx_file *f)
{
    struct snap *sn = arg;
    size_t mark = strlen(sn->path);
    if (mark + strlen(f->name) + 2 > sizeof(sn->path))
        return 0;
    if (mark)
        strcat(sn->path, "/");
    strcat(sn->path, f->name);
    char link[PATH_MAX] = "";
    if (S_ISLNK(f->mode) && idx_get_link(sn->ex->idx, f->id, link, sizeof(link)) < 0)
        link[0] = '\0';
    struct feed_entry e;
    to_entry(f, sn->path, link, &e);
    int r = feed_put_entry(&sn->s->enc, &sn->out, &e);
    sn->count++;
    if (r == 0 && buf_avail(&sn->out) >= SEND_CHUNK)
        r = send_buf(sn->fa, sn->s, &sn->out);
    if (r == 0 && S_ISDIR(f->mode))
        r = idx_children(sn->ex->idx, f->id, 0, snap_each, sn);
    sn->path[mark] = '\0';
    return r;
}

static int send_snapshot(fa_t *fa, struct fa_sub *s, struct fa_export *ex)
{
    struct snap sn = {.fa = fa, .s = s, .ex = ex};
    struct idx_file root;
    struct feed_entry e;
    int r;
    buf_init(&sn.out, FEED_FRAME_MAX * 2 + SEND_CHUNK);
    char rootname[NAME_MAX + 2];
    snprintf(rootname, sizeof(rootname), "/%s", ex->r->name);
    if ((r = feed_put_hello(&s->enc, &sn.out, FA_BLOCK, FEED_HELLO_OWN, rootname,
                            "offload serve")) < 0 ||
        (r = feed_put_u64msg(&s->enc, &sn.out, FEED_SNAP_BEGIN, ex->gen)) < 0 ||
        (r = idx_get(ex->idx, IDX_ROOT_ID, &root)) < 0)
        goto out;
    to_entry(&root, "", NULL, &e);
    if ((r = feed_put_entry(&s->enc, &sn.out, &e)) < 0)
        goto out;
    sn.count = 1;
    if ((r = idx_children(ex->idx, IDX_ROOT_ID, 0, snap_each, &sn)) < 0)
        goto out;
    if ((r = feed_put_u64msg(&s->enc, &sn.out, FEED_SNAP_END, sn.count)) < 0 ||
        (r = feed_put_u64msg(&s->enc, &sn.out, FEED_BATCH_END, ex->gen)) < 0)
        goto out;
    r = send_buf(fa, s, &sn.out);
    vlog(fa, "snapshot of /%s sent: %" PRIu64 " entries", ex->r->name, sn.count);
out:
    buf_free(&sn.out);
    return r;
}

static int encode_op(fa_t *fa, struct fa_sub *s, const struct op *o, struct buf *out)
{
    struct feed_entry e;
    switch (o->kind) {
    case OP_ENTRY:
        to_entry(&o->f, o->path, o->path2, &e);
        return feed_put_entry(&s->enc, out, &e);
    case OP_REMOVE:
        return feed_put_path(&s->enc, out, FEED_REMOVE, o->path);
    case OP_RENAME:
        return feed_put_rename(&s->enc, out, o->path, o->path2);
    case OP_HASHES:
        return feed_put_hashes(&s->enc, out, o->path, o->version, o->first, o->n, o->bytes);
    case OP_DATA: {
        pthread_mutex_lock(&fa->lock);
        bool want = o->small || set_has(&s->held, o->path);
        pthread_mutex_unlock(&fa->lock);
        if (!want)
            return 0;
        return feed_put_data(&s->enc, out, o->path, o->version, o->first, o->bytes, o->n, true);
    }
    }
    return -EINVAL;
}

/* The client whose change left the regular file 'f' seen at 'rel', or 0. A state no client left
 * may have been seen in the middle of a request (an open's truncate before its write, a
 * truncate before the times that come with it): if the file has changed since and a client
 * left what is there now, that passing state was that client's too. 'same_file': the file now
 * at 'rel' must be the one seen (a rename's file, which a new file at that name is not). */
static uint64_t file_client(fa_t *fa, struct fa_export *ex, const char *rel,
                            const struct idx_file *f, bool same_file)
{
    uint64_t c = own_client(fa, ex, rel, f);
    struct stat st;
    if (c || !S_ISREG(f->mode) || cf_lstat(ex->r->root, rel, &st) != 0 ||
        (same_file && st.st_ino != f->ino))
        return c;
    if (st.st_ino == f->ino && (uint64_t)st.st_size == f->size && ts_ns(st.st_mtim) == f->mtime_ns)
        return 0; /* unchanged since: no client left it */
    struct idx_file now = {.mode = st.st_mode,
                           .size = (uint64_t)st.st_size,
                           .dev = st.st_dev,
                           .ino = st.st_ino,
                           .mtime_ns = ts_ns(st.st_mtim)};
    return own_client(fa, ex, rel, &now);
}

/* Which of the batch's changes were made by an SFTP client that named itself, and by which. Its
 * changes in progress are waited for first (briefly): a change the watcher saw may have been
 * made by a request whose hook has not run yet. */
static void tag_own(fa_t *fa, struct fa_export *ex, struct batch *b)
{
    if (requests_pause(fa)) /* those in progress finish */
        requests_resume(fa);
    for (size_t i = 0; i < b->n; i++) {
        struct op *o = &b->v[i];
        if (o->kind == OP_ENTRY) {
            o->client = file_client(fa, ex, o->path, &o->f, false);
            /* a state a client left, but at a name it never touched: moved there by someone
             * else (a laptop mv of a file the client wrote), which the client does not know */
            if (o->client && !client_touched(fa, ex, o->path))
                o->client = 0;
        } else if (o->kind == OP_REMOVE) {
            o->client = own_client(fa, ex, o->path, NULL);
        } else if (o->kind == OP_RENAME) {
            uint64_t c = file_client(fa, ex, o->path2, &o->f, true);
            o->client = c && own_client(fa, ex, o->path, NULL) == c ? c : 0;
        }
    }
}

static void send_batch(fa_t *fa, struct fa_export *ex, struct batch *b)
{
    struct buf out;
    tag_own(fa, ex, b);
    buf_init(&out, FEED_FRAME_MAX * 2 + SEND_CHUNK);
    for (;;) {
        /* one subscriber at a time, without the lock while sending */
        struct fa_sub *s = NULL;
        pthread_mutex_lock(&fa->lock);
        for (struct fa_sub *it = fa->subs; it && !s; it = it->next)
            if (it->ex == ex && it->live && !it->dead && it->sent_gen < ex->gen)
                s = it;
        if (s)
            s->sent_gen = ex->gen;
        pthread_mutex_unlock(&fa->lock);
        if (!s)
            break;
        int r = 0;
        for (size_t i = 0; i < b->n && r == 0; i++) {
            const struct op *o = &b->v[i];
            if (o->kind == OP_RENAME) {
                pthread_mutex_lock(&fa->lock);
                set_rename(&s->held, o->path, o->path2);
                pthread_mutex_unlock(&fa->lock);
            } else if (o->kind == OP_REMOVE) {
                pthread_mutex_lock(&fa->lock);
                set_rename(&s->held, o->path, NULL);
                pthread_mutex_unlock(&fa->lock);
            }
            if (o->client &&
                (o->kind == OP_ENTRY || o->kind == OP_REMOVE || o->kind == OP_RENAME)) {
                pthread_mutex_lock(&fa->lock);
                bool own = s->client == o->client;
                fa->stats.own_tags += own;
                pthread_mutex_unlock(&fa->lock);
                if (own)
                    r = feed_put_u64msg(&s->enc, &out, FEED_OWN, 1);
            }
            if (r == 0)
                r = encode_op(fa, s, o, &out);
            if (r == 0 && buf_avail(&out) >= SEND_CHUNK)
                r = send_buf(fa, s, &out);
        }
        if (r == 0)
            r = feed_put_u64msg(&s->enc, &out, FEED_BATCH_END, ex->gen);
        if (r == 0)
            r = send_buf(fa, s, &out);
        buf_reset(&out);
        if (r < 0) {
            vlog(fa, "subscriber of /%s dropped: %s", ex->r->name, strerror(-r));
            tun_ep_chan_close(s->ch);
        }
    }
    buf_free(&out);
}

/* --- events ------------------------------------------------------------------------------- */

struct batch_ctx {
    fa_t *fa;
    struct fa_export *ex;
    struct batch b;
    int err;
};

static int do_rename(fa_t *fa, struct fa_export *ex, const char *from, const char *to,
                     struct batch *b)
{
    struct idx_file src, dst_parent;
    struct stat st;
    char pdir[PATH_MAX];
    int r;
    if (idx_resolve(ex->idx, from, &src) != 0 || cf_lstat(ex->r->root, to, &st) != 0 ||
        src.ino != st.st_ino)
        goto fallback;
    parent_of(to, pdir, sizeof(pdir));
    if (idx_resolve(ex->idx, pdir, &dst_parent) != 0) {
        if ((r = sync_path(fa, ex, pdir, false, b)) < 0 ||
            idx_resolve(ex->idx, pdir, &dst_parent) != 0)
            goto fallback;
    }
    if (idx_rename(ex->idx, src.id, dst_parent.id, base_of(to), NULL, NULL) != 0)
        goto fallback;
    struct op *o = op_add(b, OP_RENAME, from);
    if (!o || !(o->path2 = strdup(to)))
        return -ENOMEM;
    o->f = (struct idx_file){.mode = st.st_mode,
                             .size = (uint64_t)st.st_size,
                             .dev = st.st_dev,
                             .ino = st.st_ino,
                             .mtime_ns = ts_ns(st.st_mtim)};
    return sync_path(fa, ex, to, false, b); /* its ctime changed; a folder's content did not */
fallback:
    if ((r = sync_path(fa, ex, from, false, b)) < 0)
        return r;
    return sync_path(fa, ex, to, false, b);
}

static int on_events(void *arg, const struct fw_event *ev, size_t n)
{
    struct batch_ctx *bc = arg;
    fa_t *fa = bc->fa;
    struct fa_export *ex = bc->ex;
    char pdir[PATH_MAX];
    int r = 0;
    idx_begin(ex->idx);
    ex->stamp = now_ns();
    for (size_t i = 0; i < n && r >= 0; i++) {
        const struct fw_event *e = &ev[i];
        switch (e->kind) {
        case FW_RESCAN:
            pthread_mutex_lock(&fa->lock);
            fa->stats.rescans++;
            pthread_mutex_unlock(&fa->lock);
            vlog(fa, "rescanning /%s/%s", ex->r->name, e->path);
            r = sync_path(fa, ex, e->path, true, &bc->b);
            break;
        case FW_RENAMED:
            r = do_rename(fa, ex, e->from, e->path, &bc->b);
            break;
        default:
            r = sync_path(fa, ex, e->path, false, &bc->b);
            break;
        }
        if (r == -ENOENT || r == -EPERM || r == -EACCES || r == -ENOTDIR || r == -ELOOP)
            r = 0;
        /* the folder holding a change changed too (mtime, size, nlink) */
        if (r >= 0 && *e->path) {
            parent_of(e->path, pdir, sizeof(pdir));
            r = sync_path(fa, ex, pdir, false, &bc->b);
            if (r == -ENOENT)
                r = 0;
            if (r >= 0 && e->from && *e->from) {
                parent_of(e->from, pdir, sizeof(pdir));
                r = sync_path(fa, ex, pdir, false, &bc->b);
                if (r == -ENOENT)
                    r = 0;
            }
        }
    }
    if (idx_commit(ex->idx) < 0 && r >= 0)
        r = -EIO;
    if (r < 0) {
        elog("cannot follow changes in '%s': %s; rescanning", ex->r->path, strerror(-r));
        bc->err = r;
    }
    if (bc->b.n) {
        ex->gen++;
        pthread_mutex_lock(&fa->lock);
        fa->stats.batches++;
        for (size_t i = 0; i < bc->b.n; i++) {
            const struct op *o = &bc->b.v[i];
            fa->stats.entries += o->kind == OP_ENTRY;
            fa->stats.removes += o->kind == OP_REMOVE;
            fa->stats.renames += o->kind == OP_RENAME;
            fa->stats.hashes += o->kind == OP_HASHES ? o->n : 0;
            fa->stats.data_blocks += o->kind == OP_DATA;
            fa->stats.data_bytes += o->kind == OP_DATA ? o->n : 0;
        }
        pthread_mutex_unlock(&fa->lock);
        vlog(fa, "batch %" PRIu64 " of /%s: %zu events, %zu operations", ex->gen, ex->r->name, n,
             bc->b.n);
        send_batch(fa, ex, &bc->b);
    }
    batch_clear(&bc->b);
    return 0;
}

/* Watch first, then scan: nothing that changes during the scan is missed. */
static int export_start(fa_t *fa, struct fa_export *ex)
{
    char db[PATH_MAX + NAME_MAX + 8];
    int r;
    struct fw_config cfg = {
        .quiet_ms = COALESCE_MS,
        .max_ms = COALESCE_MAX_MS,
        .only = cf_root_only(ex->r->root),
        .transient = true, /* sync_path tells a client's names from the rest */
    };
    if ((r = fw_open(ex->r->path, &cfg, &ex->w)) < 0) {
        elog("cannot watch '%s': %s", ex->r->path, strerror(-r));
        return r;
    }
    snprintf(db, sizeof(db), "%s/%s.db", fa->state_dir, ex->r->name);
    unlink(db);
    if ((r = idx_open(db, &ex->idx)) < 0) {
        elog("cannot open the index '%s': %s", db, strerror(-r));
        return r;
    }
    idx_set_exclusive(ex->idx);
    struct batch b = {0};
    ex->stamp = now_ns();
    idx_begin(ex->idx);
    r = sync_path(fa, ex, "", true, &b);
    if (idx_commit(ex->idx) < 0 && r >= 0)
        r = -EIO;
    batch_clear(&b);
    free(b.v);
    if (r < 0) {
        elog("cannot scan '%s': %s", ex->r->path, strerror(-r));
        return r;
    }
    ex->started = true;
    vlog(fa, "watching '%s' as /%s", ex->r->path, ex->r->name);
    return 0;
}

static void serve_new_subscribers(fa_t *fa)
{
    for (;;) {
        struct fa_sub *s = NULL;
        char refuse[256] = "";
        pthread_mutex_lock(&fa->lock);
        for (struct fa_sub *it = fa->subs; it && !s; it = it->next)
            if (it->want_snap && !it->dead)
                s = it;
        if (s) {
            s->want_snap = false;
            snprintf(refuse, sizeof(refuse), "%s", s->refuse);
        }
        pthread_mutex_unlock(&fa->lock);
        if (!s)
            return;
        struct buf out;
        buf_init(&out, 4096);
        int r = 0;
        if (*refuse) {
            feed_put_error(&s->enc, &out, EINVAL, refuse);
            send_buf(fa, s, &out);
            tun_ep_chan_close(s->ch);
        } else if (!s->ex->started && (r = export_start(fa, s->ex)) < 0) {
            feed_put_error(&s->enc, &out, (uint32_t)-r, "the agent cannot serve this root");
            send_buf(fa, s, &out);
            tun_ep_chan_close(s->ch);
        } else if ((r = send_snapshot(fa, s, s->ex)) < 0) {
            tun_ep_chan_close(s->ch);
        } else {
            pthread_mutex_lock(&fa->lock);
            s->live = true;
            s->sent_gen = s->ex->gen;
            fa->stats.subscribers++;
            pthread_mutex_unlock(&fa->lock);
        }
        buf_free(&out);
    }
}

static int count_block(void *arg, const struct idx_block *b)
{
    (void)b;
    (*(size_t *)arg)++;
    return 1; /* one is enough */
}

/* Files a mount now holds: hash them once, so that their next change is sent as the blocks that
 * really changed. */
static void hash_held(fa_t *fa)
{
    for (;;) {
        struct hold_req h = {0};
        pthread_mutex_lock(&fa->lock);
        if (fa->n_to_hash)
            h = fa->to_hash[--fa->n_to_hash];
        pthread_mutex_unlock(&fa->lock);
        if (!h.path)
            return;
        struct idx_file f;
        size_t n = 0;
        if (h.ex->started && idx_resolve(h.ex->idx, h.path, &f) == 0 && S_ISREG(f.mode) &&
            idx_blocks(h.ex->idx, f.id, f.version, count_block, &n) >= 0 && n == 0 && f.size) {
            idx_begin(h.ex->idx);
            hash_file(fa, h.ex, h.path, &f, NULL, NULL, -1);
            idx_commit(h.ex->idx);
            vlog(fa, "hashed '%s' (a mount holds it, or a client's write is over)", h.path);
        }
        free(h.path);
    }
}

static void reap(fa_t *fa)
{
    pthread_mutex_lock(&fa->lock);
    for (struct fa_sub **pp = &fa->subs; *pp;) {
        struct fa_sub *s = *pp;
        if (!s->dead) {
            pp = &s->next;
            continue;
        }
        *pp = s->next;
        set_free(&s->held);
        tun_ep_chan_unref(s->ch);
        feed_dec_free(&s->dec);
        free(s);
    }
    pthread_mutex_unlock(&fa->lock);
}

static void *agent_main(void *arg)
{
    fa_t *fa = arg;
    struct pollfd pf[1 + 64];
    for (;;) {
        pthread_mutex_lock(&fa->lock);
        bool stop = fa->stop;
        pthread_mutex_unlock(&fa->lock);
        if (stop)
            break;
        size_t n = 0;
        int timeout = -1;
        pf[n++] = (struct pollfd){.fd = fa->wake_fd, .events = POLLIN};
        for (size_t i = 0; i < fa->nex && n < 65; i++) {
            if (!fa->ex[i].started)
                continue;
            pf[n++] = (struct pollfd){.fd = fw_fd(fa->ex[i].w), .events = POLLIN};
            int t = fw_timeout_ms(fa->ex[i].w);
            if (t >= 0 && (timeout < 0 || t < timeout))
                timeout = t;
        }
        int dt = promote_deferred(fa);
        if (dt >= 0 && (timeout < 0 || dt < timeout))
            timeout = dt;
        if (poll(pf, n, timeout) < 0 && errno != EINTR)
            break;
        if (pf[0].revents) {
            uint64_t v;
            ssize_t rd = read(fa->wake_fd, &v, sizeof(v));
            (void)rd;
        }
        reap(fa);
        serve_new_subscribers(fa);
        promote_deferred(fa);
        hash_held(fa);
        for (size_t i = 0; i < fa->nex; i++) {
            struct fa_export *ex = &fa->ex[i];
            if (!ex->started)
                continue;
            struct batch_ctx bc = {.fa = fa, .ex = ex};
            int r = fw_process(ex->w, on_events, &bc);
            if (r < 0)
                elog("watching '%s' failed: %s", ex->r->path, strerror(-r));
            if (bc.err < 0) {
                /* the index lost track: rescan the whole root as a batch of its own */
                struct fw_event ev = {.kind = FW_RESCAN, .path = "", .is_dir = true};
                struct batch_ctx bc2 = {.fa = fa, .ex = ex};
                on_events(&bc2, &ev, 1);
                free(bc2.b.v);
            }
            free(bc.b.v);
        }
    }
    return NULL;
}

/* --- subsystem hooks (session threads) ---------------------------------------------------- */

static int hook_open(void *arg, struct tun_ep_chan *ch, void **ctx)
{
    fa_t *fa = arg;
    struct fa_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    if (feed_dec_init(&s->dec, FA_BLOCK) != 0) {
        free(s);
        return -ENOMEM;
    }
    feed_enc_init(&s->enc);
    s->fa = fa;
    s->ch = ch;
    tun_ep_chan_ref(ch);
    pthread_mutex_lock(&fa->lock);
    s->next = fa->subs;
    fa->subs = s;
    pthread_mutex_unlock(&fa->lock);
    *ctx = s;
    return 0;
}

static int hook_input(void *ctx, struct buf *rx)
{
    struct fa_sub *s = ctx;
    fa_t *fa = s->fa;
    struct feed_msg m;
    int r;
    while ((r = feed_get(&s->dec, rx, &m)) == 0) {
        pthread_mutex_lock(&fa->lock);
        switch (m.type) {
        case FEED_HELLO:
            if (s->ex || s->want_snap) {
                r = -EPROTO;
                break;
            }
            s->want_snap = true;
            if (m.u.hello.version != FEED_VERSION)
                snprintf(s->refuse, sizeof(s->refuse), "feed version %u is not served (want %u)",
                         m.u.hello.version, FEED_VERSION);
            else if (m.u.hello.block_size != FA_BLOCK)
                snprintf(s->refuse, sizeof(s->refuse), "block size %u is not served (want %u)",
                         m.u.hello.block_size, FA_BLOCK);
            for (size_t i = 0; i < fa->nex && !s->ex; i++) {
                const char *want = m.u.hello.root + (m.u.hello.root[0] == '/');
                if (strcmp(want, fa->ex[i].r->name) == 0)
                    s->ex = &fa->ex[i];
            }
            if (!s->ex && !*s->refuse)
                snprintf(s->refuse, sizeof(s->refuse), "no exported root '%.200s'", m.u.hello.root);
            if (!s->ex)
                s->ex = &fa->ex[0]; /* only for the encoder; the refusal closes the feed */
            wake(fa);
            break;
        case FEED_ACK:
            s->acked = m.u.generation;
            break;
        case FEED_CLIENT:
            s->client = m.u.generation;
            break;
        case FEED_HOLD:
            set_add(&s->held, m.u.path.path);
            if (s->live && fa->n_to_hash < 4096 && queue_hash(fa, s->ex, strdup(m.u.path.path)))
                wake(fa);
            break;
        case FEED_DROP:
            set_del(&s->held, m.u.path.path);
            break;
        case FEED_ERROR:
            elog("mountd reports: %s", m.u.error.message);
            r = -ECONNABORTED;
            break;
        default:
            elog("feed from mountd: unexpected %s frame; closing the feed", feed_type_name(m.type));
            r = -EPROTO;
            break;
        }
        pthread_mutex_unlock(&fa->lock);
        if (r < 0)
            return r;
    }
    if (r == -EAGAIN)
        return 0;
    elog("feed from mountd: bad frame (%s); closing the feed", strerror(-r));
    return r;
}

static void hook_closed(void *ctx)
{
    struct fa_sub *s = ctx;
    fa_t *fa = s->fa;
    pthread_mutex_lock(&fa->lock);
    s->dead = true;
    pthread_mutex_unlock(&fa->lock);
    wake(fa);
}

void fa_subsys(fa_t *fa, struct tun_ep_subsys *sub)
{
    *sub = (struct tun_ep_subsys){.name = FA_SUBSYS,
                                  .open = hook_open,
                                  .input = hook_input,
                                  .closed = hook_closed,
                                  .arg = fa};
}

int fa_new(const struct fa_root *roots, size_t nroots, const char *state_dir, int verbose,
           fa_t **out, char *err, size_t errlen)
{
    fa_t *fa = calloc(1, sizeof(*fa));
    if (!fa || !(fa->ex = calloc(nroots, sizeof(*fa->ex))) || !(fa->blockbuf = malloc(FA_BLOCK))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (nroots > 64) {
        snprintf(err, errlen, "the feed serves at most 64 roots");
        goto fail;
    }
    fa->nex = nroots;
    for (size_t i = 0; i < nroots; i++) {
        fa->ex[i].r = &roots[i];
        if (!(fa->ex[i].own = calloc(OWN_SLOTS, sizeof(struct own_rec)))) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    }
    snprintf(fa->state_dir, sizeof(fa->state_dir), "%s", state_dir);
    fa->verbose = verbose;
    pthread_mutex_init(&fa->lock, NULL);
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    pthread_rwlock_init(&fa->requests, &ra);
    pthread_rwlockattr_destroy(&ra);
    if ((fa->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
        pthread_create(&fa->thread, NULL, agent_main, fa) != 0) {
        snprintf(err, errlen, "cannot start the feed thread: %s", strerror(errno));
        if (fa->wake_fd >= 0)
            close(fa->wake_fd);
        pthread_mutex_destroy(&fa->lock);
        pthread_rwlock_destroy(&fa->requests);
        goto fail;
    }
    *out = fa;
    return 0;
fail:
    if (fa) {
        for (size_t i = 0; fa->ex && i < fa->nex; i++)
            free(fa->ex[i].own);
        free(fa->ex);
        free(fa->blockbuf);
    }
    free(fa);
    return -ENOMEM;
}

void fa_get_stats(fa_t *fa, struct fa_stats *st)
{
    pthread_mutex_lock(&fa->lock);
    *st = fa->stats;
    pthread_mutex_unlock(&fa->lock);
}

void fa_free(fa_t *fa)
{
    if (!fa)
        return;
    pthread_mutex_lock(&fa->lock);
    fa->stop = true;
    for (struct fa_sub *s = fa->subs; s; s = s->next)
        s->dead = true;
    pthread_mutex_unlock(&fa->lock);
    wake(fa);
    pthread_join(fa->thread, NULL);
    reap(fa);
    for (size_t i = 0; i < fa->nex; i++) {
        if (fa->ex[i].w)
            fw_close(fa->ex[i].w);
        if (fa->ex[i].idx) {
            char p[PATH_MAX + NAME_MAX + 16];
            idx_close(fa->ex[i].idx);
            snprintf(p, sizeof(p), "%s/%s.db", fa->state_dir, fa->ex[i].r->name);
            unlink(p);
            strcat(p, "-wal");
            unlink(p);
            p[strlen(p) - 4] = '\0';
            strcat(p, "-shm");
            unlink(p);
        }
    }
    for (size_t i = 0; i < fa->n_to_hash; i++)
        free(fa->to_hash[i].path);
    free(fa->to_hash);
    for (size_t i = 0; i < fa->n_deferred; i++)
        free(fa->deferred[i].path);
    free(fa->deferred);
    close(fa->wake_fd);
    pthread_mutex_destroy(&fa->lock);
    pthread_rwlock_destroy(&fa->requests);
    for (size_t i = 0; i < fa->nex; i++)
        free(fa->ex[i].own);
    free(fa->ex);
    free(fa->blockbuf);
    free(fa);
}
