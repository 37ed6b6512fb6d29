/* endpoint.h - the export endpoint: an SSH server embedded in the agent (libssh server mode) that
 * serves the exported roots over SFTP (sftp_server.h) and offers further subsystems as hooks, for
 * the change feed (tun_ep_*).
 *
 * Keys: tun_ep_start() makes a fresh ed25519 host key and a fresh ed25519 client key in memory.
 * The only client accepted is the holder of that client key (public key authentication; no
 * password, no keyboard-interactive). tun_ep_write_details() writes what a client needs into a
 * private directory: the client key, a known_hosts line for the host key and an ssh_config
 * snippet, so that `offload mount -F DIR/ssh_config offload-endpoint:/name MNT`, OpenSSH's
 * `sftp -F DIR/ssh_config offload-endpoint` and `sshfs -F DIR/ssh_config ...` all work. No secret
 * ever appears on a command line or in the environment.
 *
 * Threads: one accept thread; one thread per SSH session, which owns the libssh session and
 * every channel on it (libssh sessions are not thread-safe). Subsystem hooks run on the session
 * thread; other threads talk to a channel only through tun_ep_chan_send / tun_ep_chan_close.
 */
#ifndef OFFLOAD_ENDPOINT_H
#define OFFLOAD_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "sftp_server.h"

#define TUN_EP_MAX_SESSIONS 64          /* concurrent SSH sessions; more are refused at accept */
#define TUN_EP_MAX_CHANNELS 8           /* channels per session */
#define TUN_EP_CHAN_QUEUE   (16u << 20) /* bytes tun_ep_chan_send may queue before it waits */

typedef struct tun_ep tun_ep_t;
struct tun_ep_chan;

/* A subsystem of our own (the feed plugs in here). Every callback runs on the session thread. */
struct tun_ep_subsys {
    const char *name; /* e.g. "offload-feed@offload" */
    /* A client asked for the subsystem on channel 'ch'. Return 0 and set *ctx to accept (the
     * hook may keep 'ch' after tun_ep_chan_ref until it calls tun_ep_chan_unref), <0 to refuse. */
    int (*open)(void *arg, struct tun_ep_chan *ch, void **ctx);
    /* Bytes from the client were appended to rx: consume what can be used (whole frames); leave
     * the rest. Return <0 to close the channel. */
    int (*input)(void *ctx, struct buf *rx);
    /* The channel is gone (closed by either side, or the session ended). Last call for ctx. */
    void (*closed)(void *ctx);
    void *arg;
};

struct tun_ep_opts {
    const char *bind_addr; /* NULL: 127.0.0.1 */
    uint16_t port;         /* 0: any free port (see tun_ep_port) */
    const struct sfs_root *roots;
    size_t nroots;
    const struct tun_ep_subsys *subsys; /* may be NULL */
    size_t nsubsys;
    int verbose; /* log each session and channel to stderr */
    /* Every change an SFTP client makes (sftp_server.h's change hook, on the session thread);
     * may be NULL. */
    sfs_change_fn on_change;
    void *change_arg;
};

/* Make the keys, bind and listen, and start accepting in a thread of its own. The roots array and
 * the subsystem table must stay valid until tun_ep_stop(). Returns 0 and *out, or a negative errno
 * with a one-line message in err (-EADDRINUSE, -EACCES, -EINVAL, -EIO). */
int tun_ep_start(const struct tun_ep_opts *o, tun_ep_t **out, char *err, size_t errlen);

/* The port the endpoint listens on. */
uint16_t tun_ep_port(const tun_ep_t *ep);

/* Write, into the directory 'dir' (created 0700 if missing; it must not be group or world
 * accessible): id_ed25519 (the client's private key), known_hosts (the host key for
 * [addr]:port, also under 'alias'), ssh_config (Host 'alias' with HostName, Port, User,
 * IdentityFile, UserKnownHostsFile, StrictHostKeyChecking yes). Returns 0 or a negative errno
 * with a message in err. Any thread. */
int tun_ep_write_details(tun_ep_t *ep, const char *dir, const char *alias, char *err,
                         size_t errlen);

/* The SHA-256 fingerprint of the host key ("SHA256:..."), for logs. */
const char *tun_ep_fingerprint(const tun_ep_t *ep);

/* Stop accepting, end every session (their channels' closed hooks run), free everything. */
void tun_ep_stop(tun_ep_t *ep);

/* Counted references to a channel for hooks that send from other threads. */
void tun_ep_chan_ref(struct tun_ep_chan *ch);
void tun_ep_chan_unref(struct tun_ep_chan *ch);

/* Queue n bytes for the client on channel 'ch' and wake its session thread. Waits while more than
 * TUN_EP_CHAN_QUEUE bytes are queued (back pressure: a slow link slows the sender). Returns 0, or
 * -EPIPE once the channel is closed. Any thread except the session thread when it would have to
 * wait (the session thread gets -EAGAIN instead of waiting). */
int tun_ep_chan_send(struct tun_ep_chan *ch, const void *p, size_t n);

/* Ask the session thread to send EOF and close the channel. Any thread. */
void tun_ep_chan_close(struct tun_ep_chan *ch);

#endif
