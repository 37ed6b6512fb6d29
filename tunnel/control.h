/* control.h - the laptop side's control tunnel (docs/connect.md): one SSH connection to the
 * cloud host's ordinary sshd that carries
 *
 *   - an exec channel running one remote command ("offload mountd --session ID"), its
 *     stdin/stdout bridged to a local socketpair, its stderr collected;
 *   - direct-streamlocal channels to unix sockets on the cloud host (the docker API) and
 *     direct-tcpip channels to its TCP ports (published ports), each bridged to a socketpair;
 *   - reverse forwards: a connection to 127.0.0.1:PORT on the cloud host reaches a TCP address on
 *     the laptop (the exports).
 *
 * The connection is made by tun_ssh_connect (ssh_config, known_hosts, agent and keys, as
 * `offload mount`). It is kept alive with keepalive@openssh.com requests on an idle link, and an
 * answerless link counts as lost. A lost connection is made again with backoff (1 s doubling to
 * 30 s): then every reverse forward is asked for again on the port it had, and the exec channel
 * is started again (a new generation with a new socketpair). A host key that changed, or that is
 * no longer known, ends the reconnecting for good: the tunnel never connects to it.
 *
 * Bridging: every channel is joined to one local socket (a socketpair end, or the TCP connection
 * a reverse forward makes). Neither side reads more than the other can take (the channel's
 * window, 64 KiB buffered a direction), and an end of data is passed on as a half-close: EOF on
 * the local socket becomes the channel's EOF, the channel's EOF becomes shutdown(SHUT_WR). A
 * channel is closed once both directions have ended or either side failed.
 *
 * Threads: one owner thread per tunnel makes every libssh call (sessions are not thread-safe);
 * the other functions hand it work through a queue and an eventfd and may be called from any
 * thread. The status callback runs on the owner thread: it must return quickly and may call only
 * ctl_exec_fd (with timeout 0), ctl_exec_stderr and ctl_stats; the blocking calls (ctl_open_*,
 * ctl_*_rforward, ctl_stop) refuse to run there with -EDEADLK.
 */
#ifndef OFFLOAD_CONTROL_H
#define OFFLOAD_CONTROL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ssh_client.h"

typedef struct ctl ctl_t;

enum ctl_event_kind {
    CTL_EV_CONNECTED,    /* the first connection runs (reported once, from the owner thread) */
    CTL_EV_LOST,         /* the connection is gone (msg: why); reconnecting starts at once */
    CTL_EV_RETRY,        /* a reconnect attempt failed (msg); the next one in delay_ms */
    CTL_EV_RECONNECTED,  /* connected again */
    CTL_EV_GAVE_UP,      /* no more attempts (msg): the host key changed or is not known;
                          * without a status callback this goes to stderr */
    CTL_EV_EXEC_STARTED, /* exec channel generation gen runs; fd is its local end, borrowed:
                          * dup() it to keep it, or take one with ctl_exec_fd */
    CTL_EV_EXEC_STDERR,  /* one line (msg, at most 1 KiB) the remote command wrote on stderr */
    CTL_EV_EXEC_EXITED,  /* exec generation gen ended: status is the remote exit status, or -1
                          * (killed by a signal, no status, could not start, link lost); msg
                          * says it for a person: exit status 127 gives "'offload' is not
                          * installed on 'HOST' (...)" */
    CTL_EV_RFORWARD,     /* after a reconnect: the reverse forward of port is back (ok), or the
                          * server refused it for now (msg; asked again with backoff) */
};

struct ctl_event {
    enum ctl_event_kind kind;
    const char *msg; /* NULL or one line, valid during the call */
    int status;      /* EXEC_EXITED */
    int fd;          /* EXEC_STARTED, else -1 */
    unsigned gen;    /* EXEC_*: 1 for the first exec channel, one more each time it starts */
    int port;        /* RFORWARD */
    bool ok;         /* RFORWARD */
    int delay_ms;    /* RETRY */
};

typedef void (*ctl_status_fn)(void *arg, const struct ctl_event *ev);

struct ctl_opts {
    struct tun_ssh_opts ssh; /* the destination and how to reach it (strings are copied) */
    const char *exec_cmd;    /* remote command of the exec channel (copied); NULL: none */
    int keepalive_s;         /* keepalive interval on an idle link; 0: 15; <0: none */
    int keepalive_max;       /* intervals without a packet from the server before the link
                              * counts as lost; 0: 3 */
    int backoff_min_ms;      /* first delay between reconnect attempts; 0: 1000 */
    int backoff_max_ms;      /* its bound as it doubles; 0: 30000 */
    ctl_status_fn status;    /* may be NULL */
    void *status_arg;
};

struct ctl_stats {
    uint64_t bytes_up;      /* channel payload laptop -> cloud host, every connection */
    uint64_t bytes_down;    /* cloud host -> laptop */
    unsigned channels_open; /* bridged channels now (the exec channel included) */
    unsigned rforwards;     /* reverse forwards registered (bound or waiting for a reconnect) */
    unsigned reconnects;    /* successful reconnects */
    unsigned exec_gen;      /* generation of the last exec channel started, 0: none yet */
    bool connected;
    bool gave_up;     /* CTL_EV_GAVE_UP happened */
    uint64_t idle_ms; /* since the last payload byte moved either way (or since the start) */
};

/* Connect (in the calling thread, so that an unreachable host, an unknown or changed host key or
 * refused keys are reported here, with tun_ssh_connect's message in err and its negative errno),
 * then start the owner thread, which reports CTL_EV_CONNECTED and starts the exec channel. On
 * success *out is the tunnel, to be ended with ctl_stop. */
int ctl_start(const struct ctl_opts *o, ctl_t **out, char *err, size_t errlen);

/* A new descriptor (the caller closes it) for the local end of the running exec channel whose
 * generation is above 'after' (0: any), waiting up to timeout_ms for one to start (-1: no bound).
 * *gen (may be NULL) gets its generation. Reading it gives the remote command's stdout,
 * shutdown(SHUT_WR) sends the channel's EOF; when the channel ends the descriptor reads EOF.
 * Returns the descriptor, or -ETIMEDOUT, -ECHILD (a generation above 'after' ran and ended
 * already: CTL_EV_EXEC_EXITED said why; the next one starts after a reconnect), -EPIPE (the
 * tunnel gave up or is stopping), -EINVAL (no exec command). Any thread; on the owner thread
 * only with timeout 0. */
int ctl_exec_fd(ctl_t *ctl, unsigned after, int timeout_ms, unsigned *gen);

/* Copy the last bytes (up to 4 KiB) the current or last exec channel wrote on stderr into buf,
 * NUL-terminated. Returns the length copied. Any thread. */
size_t ctl_exec_stderr(ctl_t *ctl, char *buf, size_t len);

/* Open a direct-streamlocal@openssh.com channel to the unix socket remote_path on the cloud host
 * and bridge it to a socketpair; *fd gets the caller's end (blocking, close-on-exec; the caller
 * closes it). Blocks until the server opened the channel or refused it (bounded: 30 s). Returns 0,
 * or a negative errno with a message in err: -ENOTCONN (not connected now), -ECONNREFUSED (the
 * server refused: no such socket, forwarding disabled), -ECONNRESET (the link dropped meanwhile),
 * -ETIMEDOUT, -ECANCELED (ctl_stop), -EDEADLK (called from the owner thread). Any other thread. */
int ctl_open_unix(ctl_t *ctl, const char *remote_path, int *fd, char *err, size_t errlen);

/* The same with a direct-tcpip channel to host:port as the cloud host resolves and reaches it. */
int ctl_open_tcp(ctl_t *ctl, const char *host, int port, int *fd, char *err, size_t errlen);

/* Ask the server to listen on 127.0.0.1:remote_port of the cloud host (tcpip-forward; 0 = any:
 * the tunnel tries random free ports in 16384..32767 itself, because libssh 0.10 cannot reliably
 * read the port a server chose) and, for every connection there, connect to local_host:local_port
 * (resolved now, here) and bridge the two. *bound_port gets the port. After a reconnect the same
 * port is asked for again. Blocks until the server answered. Returns 0, or -ENOTCONN, -EINVAL
 * (bad port, local_host does not resolve), -EADDRINUSE (already forwarded by this tunnel, or the
 * server refused every port tried), -ECONNRESET, -ECANCELED, -EDEADLK, with a message in err.
 * Any other thread. */
int ctl_add_rforward(ctl_t *ctl, int remote_port, const char *local_host, int local_port,
                     int *bound_port, char *err, size_t errlen);

/* Cancel the reverse forward of bound_port (cancel-tcpip-forward when connected; connections
 * already bridged go on until they end). Blocks until the server answered or, when not
 * connected, until the owner thread dropped it. Returns 0, -ENOENT, -ECANCELED or -EDEADLK. Any
 * other thread. */
int ctl_remove_rforward(ctl_t *ctl, int bound_port);

/* A snapshot of the counters. Any thread. */
void ctl_stats(ctl_t *ctl, struct ctl_stats *st);

/* Stop: fail waiting calls with -ECANCELED, close every channel and the connection, join the
 * owner thread, free everything (descriptors already handed out stay the caller's and read EOF).
 * May wait for a connection attempt in progress (bounded by the connect timeout). NULL is a
 * no-op. Any other thread. */
void ctl_stop(ctl_t *ctl);

#endif
