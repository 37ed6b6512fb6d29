/* writeback.c - mountd's write-back sender: journal rows go to the source in order, pipelined
 * (docs/writeback.md).
 *
 * Threads: one sender thread scans the journal, opens write handles (synchronous SFTP calls: it
 * is not the SFTP owner thread) and queues asynchronous requests in journal order; the SFTP owner
 * thread runs the completions, which only record the outcome under wb->lock and wake the sender;
 * the sender then removes acknowledged rows and cleans their blocks in one index batch. FUSE
 * threads call wb_kick and wb_wait.
 */
#include "mountd_int.h"

#include "deadline.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WB_INFLIGHT    256     /* journal rows sent and not yet acknowledged */
#define WB_COALESCE_NS 1000000 /* wait after the first change of a burst, before the scan */
#define WB_HANDLES     64      /* write handles kept open, by file */
#define WB_SCAN        64      /* rows taken from the journal at a time */
#define WB_OPENING     32      /* files being created at once (their OPEN sent, no handle yet) */

/* One journal row in flight: it is done when all of its requests are answered. */
struct wb_row {
    struct wb *wb;
    int64_t seq, file;
    uint64_t version, first, count; /* WRITE: the blocks it sent */
    int kind;
    int pending; /* requests outstanding; protected by wb->lock */
    int err;     /* first error; protected by wb->lock */
    char path[IDX_PATH_MAX];
    char path2[IDX_PATH_MAX];
    struct wb_row *next; /* in the done list; protected by wb->lock */
};

struct wb_handle {
    int64_t file; /* 0: free */
    struct tun_sftp_handle h;
    uint64_t last_use;
};

/* A file whose CREATE is on its way (an OPEN on the stream, not yet answered): its later rows
 * wait here, in order, for the handle; rows of other files go on meanwhile. Creates pipeline so:
 * a `tar x` pays no round trip per file. */
struct wb_defer {
    struct wb_row *row;
    struct idx_jentry e;
};
struct wb_opening {
    int64_t file; /* 0: free */
    bool done;    /* protected by wb->lock, with err and h */
    int err;
    struct tun_sftp_handle h;
    struct wb_row *create; /* the CREATE row, answered with the open */
    struct wb_defer *q;    /* sender thread only */
    size_t n, cap;
};

/* Lock order: wb->lock is a leaf. */
struct wb {
    struct mountd *m;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;    /* rows added, rows done, stop */
    pthread_cond_t drained; /* rows removed from the journal (fsync waiters) */
    bool stop, kicked;      /* protected by lock */
    struct wb_row *done;    /* answered rows; protected by lock */
    size_t inflight;        /* protected by lock */
    uint64_t drains;        /* protected by lock: settles so far, for waiters not to miss one */
    struct wb_err {
        int64_t file;
        int err;
    } errs[64]; /* errors not yet reported to a writer; protected by lock */
    /* sender thread only */
    int64_t last_sent;
    bool halted;
    struct wb_handle handles[WB_HANDLES];
    uint64_t tick;
    struct wb_opening opening[WB_OPENING];
    size_t n_opening;
};

static void row_done(void *arg, int err)
{
    struct wb_row *row = arg;
    struct wb *wb = row->wb;
    pthread_mutex_lock(&wb->lock);
    if (err && !row->err)
        row->err = err;
    if (--row->pending == 0) {
        row->next = wb->done;
        wb->done = row;
        pthread_cond_broadcast(&wb->cond);
    }
    pthread_mutex_unlock(&wb->lock);
}

static void record_error(struct wb *wb, int64_t file, int err)
{
    pthread_mutex_lock(&wb->lock);
    size_t free_slot = 64;
    for (size_t i = 0; i < 64; i++) {
        if (wb->errs[i].file == file) {
            free_slot = i;
            break;
        }
        if (!wb->errs[i].file && free_slot == 64)
            free_slot = i;
    }
    if (free_slot < 64 && !wb->errs[free_slot].err)
        wb->errs[free_slot] = (struct wb_err){file, err};
    pthread_mutex_unlock(&wb->lock);
}

static struct wb_handle *handle_find(struct wb *wb, int64_t file)
{
    for (size_t i = 0; i < WB_HANDLES; i++)
        if (wb->handles[i].file == file) {
            wb->handles[i].last_use = ++wb->tick;
            return &wb->handles[i];
        }
    return NULL;
}

static void handle_forget(struct wb *wb, int64_t file, bool close_it)
{
    for (size_t i = 0; i < WB_HANDLES; i++)
        if (wb->handles[i].file == file) {
            if (close_it)
                tun_sftp_close_async(wb->m->sftp, &wb->handles[i].h);
            wb->handles[i].file = 0;
        }
}

static void handle_keep(struct wb *wb, int64_t file, const struct tun_sftp_handle *h)
{
    struct wb_handle *slot = NULL;
    for (size_t i = 0; i < WB_HANDLES && !slot; i++)
        if (!wb->handles[i].file)
            slot = &wb->handles[i];
    if (!slot) {
        slot = &wb->handles[0];
        for (size_t i = 1; i < WB_HANDLES; i++)
            if (wb->handles[i].last_use < slot->last_use)
                slot = &wb->handles[i];
        tun_sftp_close_async(wb->m->sftp, &slot->h);
    }
    slot->file = file;
    slot->h = *h;
    slot->last_use = ++wb->tick;
}

/* A write handle for the row's file, opened at the row's path if there is none. */
static int handle_get(struct wb *wb, const struct idx_jentry *e, bool create, uint32_t mode,
                      struct tun_sftp_handle *out)
{
    struct wb_handle *wh = handle_find(wb, e->file);
    if (wh && !create) {
        *out = wh->h;
        return 0;
    }
    if (wh)
        handle_forget(wb, e->file, true);
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_PERMISSIONS, .perm = mode & 07777};
    uint32_t flags = SFC_FXF_WRITE | (create ? SFC_FXF_CREAT | SFC_FXF_TRUNC : 0);
    int r = tun_sftp_open_flags(wb->m->sftp, e->path, flags, create ? &a : NULL, out);
    if (r == 0)
        handle_keep(wb, e->file, out);
    return r;
}

static struct wb_row *row_new(struct wb *wb, const struct idx_jentry *e)
{
    struct wb_row *row = calloc(1, sizeof(*row));
    if (!row)
        return NULL;
    row->wb = wb;
    row->seq = e->seq;
    row->file = e->file;
    row->kind = (int)e->kind;
    row->pending = 1; /* the sender's own hold, released once everything is queued */
    snprintf(row->path, sizeof(row->path), "%s", e->path);
    snprintf(row->path2, sizeof(row->path2), "%s", e->path2);
    return row;
}

/* Queue the requests of one row. Returns 0 (the row completes through row_done), or <0 when
 * nothing could be queued (the row is answered with that error at once). */
static int send_row(struct wb *wb, const struct idx_jentry *e, struct wb_row *row)
{
    struct mountd *m = wb->m;
    struct tun_sftp_handle h;
    struct tun_sftp_op op = {0};
    bool close_after = false;
    int r;

    switch (e->kind) {
    case IDX_J_CREATE:
        return handle_get(wb, e, true, e->mode, &h);
    case IDX_J_WRITE: {
        struct idx_file f;
        if (idx_get(m->idx, e->file, &f) != 0 || !S_ISREG(f.mode))
            return 0; /* removed since: its unlink follows in the journal */
        uint64_t end = e->off + e->len > f.size ? f.size : e->off + e->len;
        if (e->off >= end)
            return 0;
        if ((r = handle_get(wb, e, false, 0, &h)) != 0)
            return r;
        int fd = fs_cache_open_ro(m->cache_dir, f.id, f.version);
        if (fd < 0)
            return fd;
        row->version = f.version;
        row->first = e->off / FS_BLOCK_SIZE;
        row->count = (end - 1) / FS_BLOCK_SIZE - row->first + 1;
        uint32_t chunk = tun_sftp_write_max(m->sftp), got = 0;
        r = 0;
        for (uint64_t off = e->off; r == 0 && off < end; off += got) {
            uint32_t n = (uint32_t)(end - off < chunk ? end - off : chunk);
            pthread_mutex_lock(&wb->lock);
            row->pending++; /* before it is queued: its answer may come at once */
            pthread_mutex_unlock(&wb->lock);
            /* the cache file's bytes read straight into the request */
            r = tun_sftp_write_fd_async(m->sftp, &h, off, fd, n, &got, row_done, row);
            if (r != 0 || got == 0) {
                pthread_mutex_lock(&wb->lock);
                row->pending--;
                pthread_mutex_unlock(&wb->lock);
            }
            FS_STAT_ADD(&m->st, bytes_written_back, r == 0 ? got : 0);
            if (r == 0 && got == 0)
                break; /* truncated here since: a later row of the journal says so too */
        }
        close(fd);
        return r;
    }
    case IDX_J_FSYNC:
        /* after the file's writes on the same stream: the source has them when it syncs */
        if (!tun_sftp_has_ext(m->sftp, "fsync@openssh.com"))
            return 0; /* a server without it: acknowledged is all it can give */
        struct wb_handle *wh = handle_find(wb, e->file);
        if (wh) {
            h = wh->h; /* the handle its writes went through */
        } else {
            /* none kept (nothing written lately, a file only read, or a folder): a read-only
             * handle for the sync alone, which any file or folder the laptop lets us see can
             * give (sftp-server opens a folder as a file, and syncs only file handles) */
            if ((r = tun_sftp_open_flags(m->sftp, e->path, SFC_FXF_READ, NULL, &h)) != 0)
                /* gone on the source since, or the list of shared roots: nothing to sync */
                return r == -ENOENT || r == -EISDIR ? 0 : r;
            close_after = true;
        }
        op.type = TUN_SFTP_OP_FSYNC;
        op.h = &h;
        row->count = 1; /* sent: counted once answered */
        break;
    case IDX_J_MKDIR:
        op.type = TUN_SFTP_OP_MKDIR;
        op.path = e->path;
        op.mode = e->mode & 07777;
        break;
    case IDX_J_RMDIR:
        op.type = TUN_SFTP_OP_RMDIR;
        op.path = e->path;
        break;
    case IDX_J_UNLINK:
        handle_forget(wb, e->file, true);
        op.type = TUN_SFTP_OP_REMOVE;
        op.path = e->path;
        break;
    case IDX_J_RENAME:
        op.type = TUN_SFTP_OP_RENAME;
        op.path = e->path;
        op.to = e->path2;
        op.flags = e->flags;
        break;
    case IDX_J_LINK:
        op.type = TUN_SFTP_OP_HARDLINK;
        op.path = e->path;
        op.to = e->path2;
        break;
    case IDX_J_SYMLINK:
        op.type = TUN_SFTP_OP_SYMLINK;
        op.path = e->path;
        op.target = e->path2;
        break;
    case IDX_J_SETATTR:
        op.type = TUN_SFTP_OP_SETSTAT;
        op.path = e->path;
        if (e->valid & IDX_J_SET_MODE) {
            op.attr.flags |= TUN_SFTP_ATTR_PERMISSIONS;
            op.attr.perm = e->mode & 07777;
        }
        if (e->valid & IDX_J_SET_SIZE) {
            op.attr.flags |= TUN_SFTP_ATTR_SIZE;
            op.attr.size = e->size;
        }
        if (e->valid & (IDX_J_SET_ATIME | IDX_J_SET_MTIME)) {
            op.attr.flags |= TUN_SFTP_ATTR_ACMODTIME;
            op.attr.atime = (uint32_t)(e->atime_ns / 1000000000);
            op.attr.mtime = (uint32_t)(e->mtime_ns / 1000000000);
        }
        break;
    default:
        return 0; /* nothing to send for this kind */
    }
    pthread_mutex_lock(&wb->lock);
    row->pending++;
    pthread_mutex_unlock(&wb->lock);
    if ((r = tun_sftp_op_async(m->sftp, &op, row_done, row)) != 0) {
        pthread_mutex_lock(&wb->lock);
        row->pending--;
        pthread_mutex_unlock(&wb->lock);
    }
    if (close_after)
        tun_sftp_close_async(m->sftp, &h); /* after the sync on the same stream */
    return r;
}

struct scan_ctx {
    struct wb *wb;
    size_t sent;
};

static void open_done(void *arg, int err, const struct tun_sftp_handle *h)
{
    struct wb_opening *o = arg;
    struct wb *wb = o->create->wb;
    struct wb_row *create = o->create;
    pthread_mutex_lock(&wb->lock);
    o->done = true;
    o->err = err;
    if (h)
        o->h = *h;
    pthread_mutex_unlock(&wb->lock);
    row_done(create, err); /* broadcasts wb->cond */
}

static struct wb_opening *opening_of(struct wb *wb, int64_t file)
{
    for (size_t i = 0; file && wb->n_opening && i < WB_OPENING; i++)
        if (wb->opening[i].file == file)
            return &wb->opening[i];
    return NULL;
}

/* The file's CREATE is answered (wait for it when 'wait'): keep its handle and send the rows that
 * waited for it, in order. Returns false when it is not answered yet. */
static bool opening_finish(struct wb *wb, struct wb_opening *o, bool wait)
{
    pthread_mutex_lock(&wb->lock);
    while (wait && !o->done)
        pthread_cond_wait(&wb->cond, &wb->lock);
    bool done = o->done;
    int err = o->err;
    struct tun_sftp_handle h = o->h;
    pthread_mutex_unlock(&wb->lock);
    if (!done)
        return false;
    if (err == 0)
        handle_keep(wb, o->file, &h);
    for (size_t i = 0; i < o->n; i++) {
        /* without the handle, what needs it fails as the create did (a lost link: ECANCELED,
         * and the journal sends them again) */
        int r = err ? err : send_row(wb, &o->q[i].e, o->q[i].row);
        row_done(o->q[i].row, r); /* the sender's hold */
    }
    free(o->q);
    memset(o, 0, sizeof(*o));
    wb->n_opening--;
    return true;
}

/* Finish every answered create; with 'all', wait for the others too. */
static void openings_finish(struct wb *wb, bool all)
{
    for (size_t i = 0; wb->n_opening && i < WB_OPENING; i++)
        if (wb->opening[i].file)
            opening_finish(wb, &wb->opening[i], all);
}

/* Rows that change names: a row waiting for a handle holds a path from before them. */
static bool is_barrier(const struct idx_jentry *e)
{
    return e->kind == IDX_J_RENAME || e->kind == IDX_J_UNLINK || e->kind == IDX_J_RMDIR ||
           e->kind == IDX_J_LINK || e->kind == IDX_J_FSYNC;
}

/* Send a CREATE as an OPEN on the stream without waiting for its handle. */
static int create_async(struct wb *wb, const struct idx_jentry *e, struct wb_row *row)
{
    struct wb_opening *o = NULL;
    for (size_t i = 0; i < WB_OPENING && !o; i++)
        if (!wb->opening[i].file)
            o = &wb->opening[i];
    if (!o)
        return -EAGAIN;
    handle_forget(wb, e->file, true);
    *o = (struct wb_opening){.file = e->file, .create = row};
    wb->n_opening++;
    pthread_mutex_lock(&wb->lock);
    row->pending++;
    pthread_mutex_unlock(&wb->lock);
    struct tun_sftp_attr a = {.flags = TUN_SFTP_ATTR_PERMISSIONS, .perm = e->mode & 07777};
    int r = tun_sftp_open_async(wb->m->sftp, e->path, SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_TRUNC,
                                &a, open_done, o);
    if (r != 0) {
        pthread_mutex_lock(&wb->lock);
        row->pending--;
        pthread_mutex_unlock(&wb->lock);
        memset(o, 0, sizeof(*o));
        wb->n_opening--;
    }
    return r;
}

static int scan_each(void *arg, const struct idx_jentry *e)
{
    struct scan_ctx *c = arg;
    struct wb *wb = c->wb;
    struct wb_row *row = row_new(wb, e);
    if (!row)
        return -ENOMEM;
    pthread_mutex_lock(&wb->lock);
    wb->inflight++;
    pthread_mutex_unlock(&wb->lock);
    wb->last_sent = e->seq;
    c->sent++;
    openings_finish(wb, false);
    struct wb_opening *o = opening_of(wb, e->file);
    if (o && !is_barrier(e)) {
        /* a later row of a file being created: after its handle, in order */
        if (o->n == o->cap) {
            size_t cap = o->cap ? o->cap * 2 : 8;
            struct wb_defer *q = realloc(o->q, cap * sizeof(*q));
            if (!q) {
                row_done(row, -ENOMEM);
                return 0;
            }
            o->q = q;
            o->cap = cap;
        }
        o->q[o->n++] = (struct wb_defer){row, *e};
        return 0;
    }
    if (wb->n_opening && (is_barrier(e) || o))
        openings_finish(wb, true);
    int r;
    if (e->kind == IDX_J_CREATE) {
        if ((r = create_async(wb, e, row)) == -EAGAIN) {
            openings_finish(wb, true);
            r = create_async(wb, e, row);
        }
    } else {
        r = send_row(wb, e, row);
    }
    row_done(row, r); /* the sender's hold */
    return r == -ECANCELED ? r : 0;
}

/* Remove answered rows from the journal, clean what they sent, keep their errors. */
static void settle(struct wb *wb)
{
    struct mountd *m = wb->m;
    pthread_mutex_lock(&wb->lock);
    struct wb_row *list = wb->done;
    wb->done = NULL;
    pthread_mutex_unlock(&wb->lock);
    if (!list)
        return;
    idx_begin(m->idx);
    size_t n = 0;
    for (struct wb_row *row = list; row; row = row->next) {
        n++;
        if (row->err == -ECANCELED || row->err == -ECONNRESET || row->err == -ESTALE ||
            (row->err == -EIO && !tun_sftp_connected(m->sftp))) {
            wb->halted = true; /* the link broke: resent from the journal once it is back */
            continue;
        }
        if (row->err) {
            static const char *const kinds[] = {"?",       "create", "mkdir", "symlink",
                                                "link",    "unlink", "rmdir", "rename",
                                                "setattr", "write",  "fsync"};
            md_log(m, "cannot write back '%s' (%s, journal row %" PRId64 "): %s", row->path,
                   row->kind > 0 && row->kind <= 10 ? kinds[row->kind] : "?", row->seq,
                   strerror(-row->err));
            record_error(wb, row->file, row->err);
            /* the cloud copy goes back to the source's state: drop what was written here */
            if (row->file) {
                idx_blocks_drop(m->idx, row->file);
                idx_touch_attr(m->idx, row->file, 0);
                md_queue_inval(m, (fuse_ino_t)row->file);
            }
            FS_STAT_ADD(&m->st, write_back_errors, 1);
        }
        idx_journal_done(m->idx, row->seq);
        if (row->kind != IDX_J_FSYNC) {  /* a sync changes nothing the feed could echo */
            md_note_local(m, row->path); /* its echo from the source comes after this */
            if (!row->err && row->kind != IDX_J_UNLINK && row->kind != IDX_J_RMDIR)
                md_note_written_back(m, row->file);
        }
        if (row->kind == IDX_J_RENAME || row->kind == IDX_J_LINK)
            md_note_local(m, row->path2);
        if (row->kind == IDX_J_FSYNC && row->count && !row->err)
            FS_STAT_ADD(&m->st, source_fsyncs, 1);
        if (row->kind == IDX_J_WRITE && row->count && !row->err)
            idx_blocks_clean(m->idx, row->file, row->version, row->first, row->count, row->seq);
        FS_STAT_ADD(&m->st, written_back, 1);
    }
    idx_commit(m->idx);
    pthread_mutex_lock(&wb->lock);
    wb->inflight -= n;
    wb->drains++;
    pthread_cond_broadcast(&wb->drained);
    pthread_mutex_unlock(&wb->lock);
    while (list) {
        struct wb_row *next = list->next;
        free(list);
        list = next;
    }
}

static void *wb_main(void *arg)
{
    struct wb *wb = arg;
    struct mountd *m = wb->m;
    for (;;) {
        pthread_mutex_lock(&wb->lock);
        if (!wb->stop && !wb->kicked && !wb->done) {
            struct timespec ts = deadline_ms(CLOCK_REALTIME, 200);
            pthread_cond_timedwait(&wb->cond, &wb->lock, &ts);
        }
        bool stop = wb->stop && wb->inflight == 0;
        bool idle_kick = wb->kicked && wb->inflight == 0 && !wb->done && !stop;
        size_t inflight = wb->inflight;
        pthread_mutex_unlock(&wb->lock);
        if (idle_kick) {
            /* the first change after a quiet spell: let the ones right behind it (the rest of
             * a tar x's file) join its scan, for one wake-up and one scan instead of several */
            struct timespec d = {0, WB_COALESCE_NS};
            nanosleep(&d, NULL);
        }
        pthread_mutex_lock(&wb->lock);
        wb->kicked = false;
        pthread_mutex_unlock(&wb->lock);
        /* creates answered (or failed with the link) release the rows that waited for them */
        openings_finish(wb, stop || wb->halted);
        settle(wb);
        if (stop)
            break;
        if (wb->halted) {
            /* wait for every answer, then for the link, then resend what is left */
            if (inflight > 0 || !tun_sftp_connected(m->sftp))
                continue;
            tun_sftp_resume(m->sftp);
            for (size_t i = 0; i < WB_HANDLES; i++)
                wb->handles[i].file = 0; /* handles of the old connection are gone */
            wb->last_sent = 0;
            wb->halted = false;
            md_log(m, "write-back resumes after a lost link");
        }
        if (inflight >= WB_INFLIGHT)
            continue;
        struct scan_ctx c = {.wb = wb};
        size_t room = WB_INFLIGHT - inflight;
        int sr =
            idx_journal_scan(m->idx, wb->last_sent, room < WB_SCAN ? room : WB_SCAN, scan_each, &c);
        if (sr < 0 && sr != -EBUSY && m->o.debug)
            md_log(m, "write-back: journal scan: %s", strerror(-sr));
    }
    for (size_t i = 0; i < WB_HANDLES; i++)
        if (wb->handles[i].file)
            tun_sftp_close_async(m->sftp, &wb->handles[i].h);
    return NULL;
}

int wb_start(struct mountd *m)
{
    struct wb *wb = calloc(1, sizeof(*wb));
    if (!wb)
        return -ENOMEM;
    wb->m = m;
    pthread_mutex_init(&wb->lock, NULL);
    pthread_cond_init(&wb->cond, NULL);
    pthread_cond_init(&wb->drained, NULL);
    m->wb = wb;
    if (pthread_create(&wb->thread, NULL, wb_main, wb) != 0) {
        m->wb = NULL;
        free(wb);
        return -EAGAIN;
    }
    return 0;
}

void wb_kick(struct mountd *m)
{
    struct wb *wb = m->wb;
    if (!wb)
        return;
    pthread_mutex_lock(&wb->lock);
    if (!wb->kicked) { /* one wake-up for a run of changes: the scan takes them all */
        wb->kicked = true;
        pthread_cond_broadcast(&wb->cond);
    }
    pthread_mutex_unlock(&wb->lock);
}

static int log_row(void *arg, const struct idx_jentry *e)
{
    md_log(arg,
           "write-back: journal row %" PRId64 " kind %d file %" PRId64 " '%s' off %" PRIu64
           " len %" PRIu64 " still waiting",
           e->seq, (int)e->kind, e->file, e->path, e->off, e->len);
    return 0;
}

/* The first laptop error recorded for 'file' since it was last taken (cleared), else r. */
static int take_error(struct wb *wb, int64_t file, int r)
{
    pthread_mutex_lock(&wb->lock);
    for (size_t i = 0; i < 64; i++)
        if (wb->errs[i].file == file && wb->errs[i].err) {
            r = wb->errs[i].err;
            wb->errs[i] = (struct wb_err){0, 0};
        }
    pthread_mutex_unlock(&wb->lock);
    return r;
}

int wb_wait(struct mountd *m, int64_t file, int timeout_ms)
{
    struct wb *wb = m->wb;
    if (!wb)
        return 0;
    if (timeout_ms <= 0) /* a close that does not wait only collects errors */
        return take_error(wb, file, 0);
    idx_sync(m->idx); /* what the laptop will hold is kept here too, should mountd die */
    int64_t upto = idx_journal_last_seq(m->idx);
    struct timespec until = deadline_ms(CLOCK_REALTIME, timeout_ms);
    wb_kick(m);
    int r = 0;
    for (;;) {
        uint64_t n = 0;
        pthread_mutex_lock(&wb->lock);
        uint64_t seen = wb->drains; /* read before counting: a settle in between is not missed */
        pthread_mutex_unlock(&wb->lock);
        if (idx_journal_count(m->idx, file, upto, &n) < 0 || n == 0)
            break;
        int w = 0;
        pthread_mutex_lock(&wb->lock);
        while (wb->drains == seen && w != ETIMEDOUT)
            w = pthread_cond_timedwait(&wb->drained, &wb->lock, &until);
        pthread_mutex_unlock(&wb->lock);
        if (w == ETIMEDOUT) {
            pthread_mutex_lock(&wb->lock);
            size_t inflight = wb->inflight;
            pthread_mutex_unlock(&wb->lock);
            int sr = idx_journal_scan(m->idx, 0, 3, log_row, m);
            if (sr < 0)
                md_log(m, "write-back: the journal cannot be scanned: %s", strerror(-sr));
            md_log(m,
                   "write-back of file %" PRId64 " not done after %d ms (%" PRIu64
                   " rows left up to %" PRId64 ", %zu in flight, last sent %" PRId64 ")",
                   file, timeout_ms, n, upto, inflight, wb->last_sent);
            r = -EIO;
            break;
        }
    }
    return take_error(wb, file, r);
}

void wb_stop(struct mountd *m)
{
    struct wb *wb = m->wb;
    if (!wb)
        return;
    pthread_mutex_lock(&wb->lock);
    wb->stop = true;
    pthread_cond_broadcast(&wb->cond);
    pthread_mutex_unlock(&wb->lock);
    pthread_join(wb->thread, NULL);
    m->wb = NULL;
    pthread_cond_destroy(&wb->cond);
    pthread_cond_destroy(&wb->drained);
    pthread_mutex_destroy(&wb->lock);
    free(wb);
}
