/* mountd_int.h - what mountd.c shares with the other parts of the mount in fsync/ (the feed
 * client, feed_mount.c). Private to fsync/.
 *
 * Lock order: m->of_lock, then of->lock, then m->fm_lock, then the index's own mutex;
 * m->bg_lock is a leaf.
 */
#ifndef OFFLOAD_MOUNTD_INT_H
#define OFFLOAD_MOUNTD_INT_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <limits.h>
#include <pthread.h>
#include <sys/types.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "blockcache.h"
#include "index.h"
#include "mount.h"
#include "stats.h"

#define RA_START         4   /* blocks of read-ahead after the second sequential read */
#define RA_MAX           128 /* at most 8 MiB ahead: the SSH receive window */
#define BATCH_MAX        8   /* blocks per verified batch (each batch ends with an fstat) */
#define FETCH_TRIES      3   /* a read retries this often after a stale handle or a change */
#define OF_BUCKETS       1024
#define OF_KEEP_MAX      1024 /* files kept loaded between reads when the kernel skips open */
#define OF_EVICT_SAMPLE  16   /* kept files compared to choose the one to let go */
#define PF_THREADS       32   /* listings and small files prefetched in parallel */
#define PF_AHEAD         512  /* files queued ahead of a reader walking the tree (feed live) */
#define PF_DEPTH         3    /* levels below a listing somebody asked for */
#define PF_QUEUE_MAX     4096
#define PF_FILE_MAX      (256 * 1024) /* files up to this size are fetched with their siblings */
#define PF_FILES_PER_DIR 512
#define PF_DIRS_SEEN     1024
#define FEED_KERNEL_TTL  3600.0 /* kernel cache time of entries and attributes under a live feed */

enum bstate { B_MISSING = 0, B_CACHED, B_VERIFIED, B_FETCHING };

struct ofile {
    struct ofile *next; /* hash chain; protected by m->of_lock */
    int refs;           /* protected by m->of_lock */
    bool kept;          /* the table holds one of the refs (no-open mode); m->of_lock */
    uint64_t last_use;  /* m->of_lock */
    int64_t id;

    pthread_mutex_t lock; /* protects everything below */
    pthread_cond_t cond;  /* broadcast when blocks change state or the handle opens */
    bool loaded;          /* state and cache file set up (lazily, at the first read) */
    struct idx_file want; /* the version to load at the first read */
    uint64_t version, size;
    int64_t mtime_ns;
    uint64_t dev, ino; /* the source's identity of this version (0: unknown) */
    int fd;
    int retired[8]; /* fds of earlier versions, closed with the ofile (readers may hold them) */
    int n_retired;
    uint64_t nblocks;
    uint8_t *state;
    uint8_t (*hash)[16];
    bool changed; /* the server copy changed under a fetch: revalidate before serving */
    int err;      /* last fetch error */
    struct tun_sftp_handle h;
    bool have_handle, opening;
    uint64_t next_seq; /* block after the last read */
    uint32_t ra;       /* read-ahead window, blocks */
    uint64_t ra_next;  /* first block read-ahead has not requested yet */
};

struct mountd {
    struct fs_mount_opts o;
    char root[PATH_MAX];
    char cache_dir[PATH_MAX];
    idx_t *idx;
    tun_sftp_t *sftp;
    struct fs_stats st;
    fs_stats_server_t *srv;
    struct fuse_session *se;
    int64_t ttl_ns;
    int64_t epoch_ns; /* when this mount started */
    bool no_opendir;  /* the kernel can skip opendir/releasedir (set once, in init) */
    double ttl_s;
    uint64_t budget;

    pthread_mutex_t of_lock;
    struct ofile *of_hash[OF_BUCKETS]; /* open files by id; protected by of_lock */
    size_t n_kept;                     /* ofiles kept by the table; of_lock */
    uint64_t of_tick;                  /* of_lock */
    size_t of_hand;                    /* of_lock: where the next eviction looks first */
    bool no_open; /* the kernel can skip open/release: files are found by inode at read */

    pthread_mutex_t bg_lock;   /* protects the queues below and stopping */
    pthread_cond_t bg_cond;    /* the block flusher's timer; stopping */
    pthread_cond_t inval_cond; /* the invalidator: its queues went from empty to not; stopping */
    pthread_cond_t pf_cond;    /* the prefetchers: work queued; stopping */
    struct idx_block *pend;    /* block rows waiting for the flusher */
    size_t n_pend, cap_pend;
    int64_t *touch; /* files whose blocks were just used (LRU), batched */
    size_t n_touch, cap_touch;
    fuse_ino_t *inval; /* inodes whose kernel caches must go */
    size_t n_inval, cap_inval;
    struct inval_ent {
        fuse_ino_t parent;
        char name[256];
    } * inval_ent; /* names whose kernel dentries must go */
    size_t n_inval_ent, cap_inval_ent;
    bool stopping;
    /* directory prefetch: listings of subdirectories before anyone asks (protected by
     * bg_lock; dirs being listed are in 'listing' so a listing is never done twice at once) */
    struct pf_item {
        int64_t dir;
        int depth;
    } * pf;
    size_t n_pf, cap_pf;
    int64_t *pf_files; /* small files to fetch before they are read (FIFO) */
    size_t pf_head, n_pf_files, cap_pf_files;
    int64_t pf_dirs_done[PF_DIRS_SEEN]; /* folders whose files were queued, this mount */
    size_t n_pf_dirs_done;
    int64_t listing[64];
    int n_listing;
    pthread_cond_t list_cond;
    pthread_t prefetchers[PF_THREADS];
    struct batch *done_head, *done_tail; /* fetched batches for the writer */
    pthread_cond_t done_cond;
    bool writer_stop;
    pthread_t flusher, invalidator, writer;

    /* the change feed (feed_mount.c) */
    struct fm *fm;                 /* NULL when the server offers none */
    atomic_bool feed_live;         /* the index follows the feed: no TTL, long kernel caching */
    _Atomic int64_t feed_epoch_ns; /* rows confirmed since then are current while live */

    /* reflection of feed changes through the mount (md_reflect) */
    char mountpoint[PATH_MAX];
    bool reflect;        /* set once before mounting: replay feed changes (rw superblock) */
    bool writable;       /* set once before mounting: changes through the mount are written back */
    bool flush_on_close; /* close waits for the write-back as fsync does */
    bool follow_replace; /* a file replaced on the laptop keeps its inode here (single-file
                          * binds: the bind follows the name; see feed_mount.c apply_entry) */
    struct wb *wb;       /* the write-back sender (writeback.c), NULL on a read-only mount */
    struct ar *ar;       /* the attribute refresher (attr_refresh.c), NULL when not needed */
    pthread_mutex_t recent_lock;
    struct recent_path {
        uint64_t hash; /* of the source path */
        int64_t t;     /* last changed here, or acknowledged by the source */
    } recent[65536];   /* protected by recent_lock */
    struct written_back {
        int64_t file; /* row id */
        int64_t t;    /* when the source acknowledged a change of it */
    } wback[4096];    /* a ring, protected by recent_lock */
    size_t n_wback;   /* entries ever added (the ring holds the last 4096) */
    atomic_bool mounted;
    _Atomic pid_t rf_tid; /* the thread that reflects (the feed thread) */
    pthread_mutex_t rf_lock;
    struct rf_overlay {
        int64_t parent;
        char name[256];
        bool hide;         /* the name does not exist yet for the reflector */
        struct idx_file f; /* else: the row it still sees there */
    } rf_ov[2];            /* protected by rf_lock */
    int rf_n;              /* protected by rf_lock */
};

enum md_rf_kind { MD_RF_CREATE, MD_RF_DELETE, MD_RF_RENAME, MD_RF_MODIFY, MD_RF_ATTRIB };
struct md_reflection {
    enum md_rf_kind kind;
    const char *path;    /* relative to the mount; RENAME: the old path */
    const char *path2;   /* RENAME: the new path */
    uint32_t mode;       /* CREATE, MODIFY: the file's type */
    int64_t mtime_ns;    /* MODIFY, ATTRIB: the file's modification time */
    int64_t hide_parent; /* CREATE, RENAME: the new name, hidden from the reflector's lookups */
    const char *hide_name;
    struct idx_file ghost; /* DELETE, RENAME: the row as it was at the old name */
};

/* mountd.c */
int64_t md_wall_ns(void);
void md_log(struct mountd *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Have the kernel forget the attributes and pages of 'ino' (invalidator thread). */
void md_queue_inval(struct mountd *m, fuse_ino_t ino);
/* Have the kernel forget the name 'name' in 'parent' (a dentry, positive or negative). */
void md_queue_inval_entry(struct mountd *m, fuse_ino_t parent, const char *name);
/* Replay a change the feed applied through the mount, for inotify watchers (feed thread). */
void md_reflect(struct mountd *m, const struct md_reflection *rf);
/* Block 'blk' of file 'id' at 'version' was stored by the feed (carried over or pushed): a loaded
 * open file that misses it takes it from the cache instead of fetching it. */
void md_block_cached(struct mountd *m, int64_t id, uint64_t version, uint64_t blk,
                     const uint8_t hash[16]);
/* Block 'blk' of file 'id' at 'version' is no longer cached: a loaded open file forgets it. */
void md_block_changed(struct mountd *m, int64_t id, uint64_t version, uint64_t blk);
/* The feed gave file 'id' a new version: an open file still at an older one revalidates at its
 * next read, so that it never serves the old version into the kernel's page cache again. */
void md_file_changed(struct mountd *m, int64_t id, uint64_t version);
/* idx_delete's gone(): remove the cache file of a deleted row. */
void md_gone_cb(void *arg, int64_t id, uint64_t version);
/* The server path of row id. */
int md_node_path(struct mountd *m, int64_t id, char *out, size_t len);

/* writeback.c: journal rows sent to the source in order (docs/writeback.md). wb_start/wb_stop
 * around the mount; wb_kick after a batch with journal rows (any thread); wb_wait waits (at most
 * timeout_ms; 0: not at all) until every row concerning 'file' (any file when 0) journaled before
 * the call is acknowledged, and returns the first write-back error of that file not reported yet
 * (and forgets it), or -EIO when the time ran out (any thread but the sender). */
#define WB_FSYNC_TIMEOUT_MS 60000
/* Index changes are committed in groups at most this old (docs/writeback.md, "Durability"): a
 * commit per operation wrote ~45 WAL pages per file of a tar x */
#define GROUP_COMMIT_MS 10
#define ECHO_WINDOW_NS  (5LL * 1000000000) /* a feed change this close to our own is its echo */
/* Note that the source path 'path' was changed through the mount (now, or acknowledged now). */
void md_note_local(struct mountd *m, const char *path);
/* Was the source path changed through the mount in the last ECHO_WINDOW_NS (or is a change of
 * it still waiting to be written back)? The feed then leaves it alone: the local copy wins. */
bool md_recent_local(struct mountd *m, const char *path);
/* The same for a rename as a whole (from -> to, source paths): its echo can come back after
 * the old name was used again, when the names alone no longer tell it. */
void md_note_rename(struct mountd *m, const char *from, const char *to);
bool md_recent_rename(struct mountd *m, const char *from, const char *to);
/* Row 'file' had a change written back just now (the write-back sender). A snapshot the source
 * took before that change landed does not show it: the rows written back within
 * ECHO_WINDOW_NS of a snapshot are kept by it (md_written_back_since). */
void md_note_written_back(struct mountd *m, int64_t file);
/* When row 'file' last had a change written back (wall ns), if the ring still holds it; else 0. */
int64_t md_written_back_at(struct mountd *m, int64_t file);
/* The rows written back at or after 'since' (wall ns): their ids in *out (free it), and how
 * many. */
size_t md_written_back_since(struct mountd *m, int64_t since, int64_t **out);
int wb_start(struct mountd *m);
void wb_stop(struct mountd *m);
void wb_kick(struct mountd *m);
int wb_wait(struct mountd *m, int64_t file, int timeout_ms);

/* attr_refresh.c: after a folder was listed or a file read through a read-write mount, stat
 * it again in the background so that the kernel's atime invalidation does not cost the user's
 * next stat a round trip into mountd. ar_start before the FUSE loop; ar_note after replying to a
 * READDIR or READ (any thread; nothing unless the feed is live); ar_stop when the loop ended;
 * ar_join once the session is unmounted (a stat in flight ends with the connection). */
int ar_start(struct mountd *m);
void ar_note(struct mountd *m, fuse_ino_t ino);
void ar_stop(struct mountd *m);
void ar_join(struct mountd *m);

/* feed_mount.c: the change feed client (docs/feed.md). fm_start starts its thread when the
 * server offers the feed for the mounted root; fm_hold tells the agent mountd now caches blocks
 * of file 'id' (any thread). */
int fm_start(struct mountd *m);
void fm_stop(struct mountd *m);
void fm_hold(struct mountd *m, int64_t id);
/* Wait (at most 2 s) while the feed is applying a content change of file 'id', so that a reader
 * gets the carried-over and pushed blocks instead of fetching them. Any thread. */
void fm_wait_file(struct mountd *m, int64_t id);

#endif
