/* stats.h - mountd's counters, and a unix socket that serves them as JSON.
 *
 * Counters are plain uint64_t updated with relaxed atomics by any thread. The server thread
 * answers every connection with one JSON object (the counters, plus what the 'extra' callback
 * appends) and closes it; the inspector and the benchmarks read it.
 */
#ifndef OFFLOAD_STATS_H
#define OFFLOAD_STATS_H

#include <stddef.h>
#include <stdint.h>

struct fs_stats {
    uint64_t requests;      /* FUSE requests served */
    uint64_t cache_hits;    /* blocks served from the local block cache */
    uint64_t cache_misses;  /* blocks that had to be fetched for a reader */
    uint64_t bytes_fetched; /* file content bytes received from the server */
    uint64_t blocks_fetched;
    uint64_t readahead_blocks;   /* blocks fetched ahead of a sequential reader */
    uint64_t verify_failures;    /* cached blocks whose hash did not match: dropped, refetched */
    uint64_t changed_underneath; /* fetches discarded because the file changed on the server */
    uint64_t meta_fetches;       /* lstat/readdir/readlink answered by the server (not the index) */
    uint64_t prefetched_files;   /* small files fetched with a sibling, before anyone read them */
    uint64_t stale_served;       /* expired metadata served because the server could not be asked */
    uint64_t feed_batches;       /* change feed batches applied (the snapshot counts as one) */
    uint64_t feed_data_blocks;   /* blocks the feed pushed into the cache */
    uint64_t reflected;          /* feed changes replayed through the mount for inotify */
    uint64_t local_changes;      /* changes made through the mount (journaled) */
    uint64_t feed_echoes;        /* feed changes left alone: the echo of our own */
    uint64_t written_back;       /* journal rows acknowledged by the source */
    uint64_t bytes_written_back; /* file bytes sent to the source */
    uint64_t write_back_errors;  /* rows the source refused (reported at fsync/close) */
    uint64_t source_fsyncs;      /* fsyncs the source carried out for an fsync here */
    uint64_t late_invalidations; /* reads answered while their file changed: pages dropped again */
    uint64_t attr_refreshes;     /* listed folders and read files stat'ed again in the background */
};

#define FS_STAT_ADD(st, field, n) __atomic_add_fetch(&(st)->field, (n), __ATOMIC_RELAXED)

typedef struct fs_stats_server fs_stats_server_t;

/* Append JSON members (each preceded by a comma) describing the caller's own state. */
typedef void (*fs_stats_extra_fn)(void *arg, char *out, size_t len);

/* Listen on 'path' (replacing a stale socket, mode 0600) and serve JSON from a thread.
 * Returns 0 or a negative errno. */
int fs_stats_serve(const char *path, struct fs_stats *st, fs_stats_extra_fn extra, void *arg,
                   fs_stats_server_t **out);
/* Stop serving and unlink the socket. */
void fs_stats_stop(fs_stats_server_t *srv);

/* Format the counters as JSON members (no braces) into out. */
void fs_stats_format(const struct fs_stats *st, char *out, size_t len);

/* Client side: connect to 'path', read the JSON document into out. 0 or negative errno. */
int fs_stats_fetch(const char *path, char *out, size_t len);

#endif
