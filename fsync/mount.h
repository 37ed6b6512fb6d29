/* mount.h - mountd: the lazy FUSE filesystem over SFTP (fs_mount_*).
 *
 * fs_mount_run() connects to the server, checks the remote directory, opens the block index and
 * cache in cache_dir, mounts 'mountpoint' and serves until unmounted or signalled (SIGINT,
 * SIGTERM, SIGHUP unmount cleanly). Contents are fetched lazily by 64 KiB block with pipelined
 * SFTP reads, verified against the server's size and mtime after each batch, stored in sparse
 * cache files and recorded in the index; metadata is cached in the index for attr_ttl_ms.
 */
#ifndef OFFLOAD_MOUNT_H
#define OFFLOAD_MOUNT_H

#include <stddef.h>
#include <stdint.h>

#include "sftp_client.h"

struct fs_mount_opts {
    struct tun_sftp_opts sftp; /* server, timeouts */
    const char *remote_path;   /* directory on the server */
    const char *mountpoint;
    const char *cache_dir;    /* NULL: ~/.cache/offload/<hash of server and path> */
    uint64_t cache_size;      /* byte budget of the block cache; 0 means 10 GiB */
    int attr_ttl_ms;          /* metadata cache time; <0 means 20 s */
    int debug;                /* libfuse debug output and verbose logs */
    const char *fuse_opts;    /* extra -o options, already checked by fs_mount_check_opt */
    const char *stats_socket; /* NULL: fs_mount_stats_path(mountpoint) */
    int snapshot_wait_ms;     /* how long mounting waits for the change feed's first snapshot:
                               * <0 means 30 s; 0: mount at once, served over SFTP with the TTL
                               * until the snapshot is in (then the feed takes over) */
};

/* Run the filesystem. 'ready_fd' (or -1) receives one byte once the mount is up ('0') or has
 * failed ('1'); after success the caller may detach. Returns a process exit status: 0 after a
 * clean unmount, 1 on a startup failure (a message was printed to stderr). */
int fs_mount_run(const struct fs_mount_opts *o, int ready_fd);

/* Is 'opt' (one item of -o, maybe "name=value") accepted for the FUSE mount? 1 yes, 0 no. */
int fs_mount_check_opt(const char *opt);
/* The comma-separated list of accepted -o options, for messages. */
const char *fs_mount_known_opts(void);

/* Where the counters of the mount at 'mountpoint' are served (a unix socket path). */
int fs_mount_stats_path(const char *mountpoint, char *out, size_t len);

#endif
