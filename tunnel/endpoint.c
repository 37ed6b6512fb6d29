/* endpoint.c - the export endpoint: libssh server, one thread per session (see endpoint.h). */
#define WITH_SERVER
#include "endpoint.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>

#define RX_MAX (16u << 20) /* bytes received on a channel and not yet handled */
/* Receive window granted to an SFTP channel. libssh's own refill in callback mode stops at
 * 1.28 MB, which caps a write burst at window/RTT (12 MB/s at 50 ms); see chan_grow. */
#define RX_WINDOW    (8u << 20)
#define OUT_HIGH     (4u << 20) /* stop handling SFTP requests while this much output waits */
#define WRITE_CHUNK  (64u << 10)
#define AUTH_TIMEOUT 30 /* seconds a client has to authenticate */
#define SFTP_LEN_MAX (256u * 1024 + 1024)
#define SFTP_SUBSYS  "sftp"

enum ch_kind { CH_NEW, CH_SFTP, CH_SUBSYS };

/* Lock order: ep->lock -> ch->lock. */
struct tun_ep_chan {
    pthread_mutex_t lock;
    pthread_cond_t space; /* signalled when out drains or the channel closes */
    int refs;             /* protected by lock */
    bool closed;          /* protected by lock: the session is done with it */
    bool close_req;       /* protected by lock */
    struct buf out;       /* protected by lock: bytes waiting for the channel window */
    struct ep_session *sess;
    /* session thread only: */
    ssh_channel channel;
    struct ssh_channel_callbacks_struct cb;
    struct buf rx;
    enum ch_kind kind;
    sfs_t *sfs;
    const struct tun_ep_subsys *sub;
    void *sub_ctx;
    bool remote_closed, eof_sent, failed;
    size_t rx_since_grow; /* bytes received since the window was last raised to RX_WINDOW */
};

struct ep_session {
    tun_ep_t *ep;
    ssh_session s;
    ssh_event ev;
    int wake_fd;
    pthread_t thread;
    struct ssh_server_callbacks_struct scb;
    bool authed, stop;
    time_t started;
    struct tun_ep_chan *ch[TUN_EP_MAX_CHANNELS];
    struct ep_session *next; /* protected by ep->lock */
};

struct tun_ep {
    struct tun_ep_opts o;
    ssh_bind bind;
    ssh_key host_pub, client_key;
    char addr[INET6_ADDRSTRLEN];
    uint16_t port;
    char fingerprint[128];
    pthread_t acceptor;
    int stop_fd;
    pthread_mutex_t lock;
    pthread_cond_t gone;         /* a session ended */
    struct ep_session *sessions; /* protected by lock */
    int nsessions;               /* protected by lock */
    bool stopping;               /* protected by lock */
};

static void logf_(const tun_ep_t *ep, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(const tun_ep_t *ep, const char *fmt, ...)
{
    if (!ep->o.verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "offload serve: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void wake(struct ep_session *ss)
{
    uint64_t one = 1;
    ssize_t r = write(ss->wake_fd, &one, sizeof(one));
    (void)r;
}

/* --- channels ----------------------------------------------------------------------------- */

void tun_ep_chan_ref(struct tun_ep_chan *ch)
{
    pthread_mutex_lock(&ch->lock);
    ch->refs++;
    pthread_mutex_unlock(&ch->lock);
}

void tun_ep_chan_unref(struct tun_ep_chan *ch)
{
    pthread_mutex_lock(&ch->lock);
    bool last = --ch->refs == 0;
    pthread_mutex_unlock(&ch->lock);
    if (!last)
        return;
    buf_free(&ch->out);
    buf_free(&ch->rx);
    pthread_cond_destroy(&ch->space);
    pthread_mutex_destroy(&ch->lock);
    free(ch);
}

int tun_ep_chan_send(struct tun_ep_chan *ch, const void *p, size_t n)
{
    bool own = false;
    pthread_mutex_lock(&ch->lock);
    if (!ch->closed)
        own = pthread_equal(pthread_self(), ch->sess->thread);
    while (!ch->closed && !ch->close_req && buf_avail(&ch->out) > TUN_EP_CHAN_QUEUE) {
        if (own) {
            pthread_mutex_unlock(&ch->lock);
            return -EAGAIN;
        }
        pthread_cond_wait(&ch->space, &ch->lock);
    }
    int r = ch->closed || ch->close_req ? -EPIPE : buf_put(&ch->out, p, n);
    struct ep_session *ss = ch->closed ? NULL : ch->sess;
    if (r == 0 && ss)
        wake(ss);
    pthread_mutex_unlock(&ch->lock);
    return r;
}

void tun_ep_chan_close(struct tun_ep_chan *ch)
{
    pthread_mutex_lock(&ch->lock);
    ch->close_req = true;
    if (!ch->closed)
        wake(ch->sess);
    pthread_cond_broadcast(&ch->space);
    pthread_mutex_unlock(&ch->lock);
}

/* Hand the channel's whole SFTP packets to the server while little output waits. */
static void sftp_run(struct tun_ep_chan *ch)
{
    while (!ch->failed && buf_avail(&ch->rx) >= 4) {
        pthread_mutex_lock(&ch->lock);
        size_t pending = buf_avail(&ch->out);
        pthread_mutex_unlock(&ch->lock);
        if (pending > OUT_HIGH)
            return;
        const uint8_t *p = buf_ptr(&ch->rx);
        uint32_t len = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
        struct buf one;
        if (len > SFTP_LEN_MAX) {
            buf_view(&one, p, buf_avail(&ch->rx)); /* let the server judge and refuse it */
        } else {
            if (buf_avail(&ch->rx) < 4 + (size_t)len)
                return;
            buf_view(&one, p, 4 + (size_t)len);
        }
        pthread_mutex_lock(&ch->lock);
        int r = sfs_process(ch->sfs, &one, &ch->out);
        pthread_mutex_unlock(&ch->lock);
        if (r < 0) {
            ch->failed = true;
            logf_(ch->sess->ep, "sftp stream refused (%s); closing the channel", strerror(-r));
            return;
        }
        buf_consume(&ch->rx, one.off);
        if (one.off == 0)
            return;
    }
}

static int on_data(ssh_session s, ssh_channel c, void *data, uint32_t len, int is_stderr,
                   void *userdata)
{
    (void)s, (void)c;
    struct tun_ep_chan *ch = userdata;
    if (is_stderr || ch->failed)
        return (int)len;
    size_t room = RX_MAX - buf_avail(&ch->rx);
    size_t take = len < room ? len : room;
    if (take && buf_put(&ch->rx, data, take) != 0)
        take = 0;
    ch->rx_since_grow += take;
    if (ch->kind == CH_SFTP) {
        sftp_run(ch);
    } else if (ch->kind == CH_SUBSYS) {
        if (ch->sub->input(ch->sub_ctx, &ch->rx) < 0)
            ch->failed = true;
    } else {
        buf_reset(&ch->rx); /* data before a subsystem was chosen: nobody to give it to */
    }
    return (int)take;
}

static void on_eof(ssh_session s, ssh_channel c, void *userdata)
{
    (void)s, (void)c;
    struct tun_ep_chan *ch = userdata;
    ch->remote_closed = true;
}

static void on_close(ssh_session s, ssh_channel c, void *userdata)
{
    on_eof(s, c, userdata);
}

static int on_subsystem(ssh_session s, ssh_channel c, const char *name, void *userdata)
{
    (void)s, (void)c;
    struct tun_ep_chan *ch = userdata;
    tun_ep_t *ep = ch->sess->ep;
    if (ch->kind != CH_NEW)
        return -1;
    if (strcmp(name, SFTP_SUBSYS) == 0) {
        if (sfs_new(ep->o.roots, ep->o.nroots, &ch->sfs) != 0)
            return -1;
        if (ep->o.on_change)
            sfs_set_change_hook(ch->sfs, ep->o.on_change, ep->o.change_arg);
        ch->kind = CH_SFTP;
        ch->rx_since_grow = RX_WINDOW; /* grant the large window on the next loop */
        logf_(ep, "sftp subsystem started");
        return 0;
    }
    for (size_t i = 0; i < ep->o.nsubsys; i++) {
        const struct tun_ep_subsys *sub = &ep->o.subsys[i];
        if (strcmp(name, sub->name) != 0)
            continue;
        if (sub->open(sub->arg, ch, &ch->sub_ctx) != 0)
            return -1;
        ch->sub = sub;
        ch->kind = CH_SUBSYS;
        logf_(ep, "subsystem '%s' started", name);
        return 0;
    }
    logf_(ep, "refusing unknown subsystem '%s'", name);
    return -1;
}

static ssh_channel on_channel_open(ssh_session s, void *userdata)
{
    struct ep_session *ss = userdata;
    if (!ss->authed)
        return NULL;
    int slot = -1;
    for (int i = 0; i < TUN_EP_MAX_CHANNELS && slot < 0; i++)
        if (!ss->ch[i])
            slot = i;
    if (slot < 0)
        return NULL;
    struct tun_ep_chan *ch = calloc(1, sizeof(*ch));
    if (!ch)
        return NULL;
    ch->channel = ssh_channel_new(s);
    if (!ch->channel) {
        free(ch);
        return NULL;
    }
    pthread_mutex_init(&ch->lock, NULL);
    pthread_cond_init(&ch->space, NULL);
    ch->refs = 1; /* the session's */
    ch->sess = ss;
    buf_init(&ch->out, SIZE_MAX / 2);
    buf_init(&ch->rx, RX_MAX);
    ch->cb.userdata = ch;
    ch->cb.channel_data_function = on_data;
    ch->cb.channel_eof_function = on_eof;
    ch->cb.channel_close_function = on_close;
    ch->cb.channel_subsystem_request_function = on_subsystem;
    ssh_callbacks_init(&ch->cb);
    ssh_set_channel_callbacks(ch->channel, &ch->cb);
    ss->ch[slot] = ch;
    return ch->channel;
}

static int on_auth_pubkey(ssh_session s, const char *user, struct ssh_key_struct *pubkey,
                          char state, void *userdata)
{
    (void)s;
    struct ep_session *ss = userdata;
    if (ssh_key_cmp(pubkey, ss->ep->client_key, SSH_KEY_CMP_PUBLIC) != 0) {
        logf_(ss->ep, "refusing an unknown key for user '%s'", user);
        return SSH_AUTH_DENIED;
    }
    if (state == SSH_PUBLICKEY_STATE_NONE)
        return SSH_AUTH_SUCCESS; /* the key would do: the client may sign with it */
    if (state != SSH_PUBLICKEY_STATE_VALID)
        return SSH_AUTH_DENIED;
    ss->authed = true;
    return SSH_AUTH_SUCCESS;
}

/* Move queued output into the channel window; honour close requests. Session thread. */
static void chan_flush(struct tun_ep_chan *ch)
{
    static __thread uint8_t chunk[WRITE_CHUNK];
    for (;;) {
        if (ch->remote_closed || !ssh_channel_is_open(ch->channel))
            return;
        uint32_t win = ssh_channel_window_size(ch->channel);
        pthread_mutex_lock(&ch->lock);
        size_t n = buf_avail(&ch->out);
        if (n > win)
            n = win;
        if (n > sizeof(chunk))
            n = sizeof(chunk);
        if (n)
            memcpy(chunk, buf_ptr(&ch->out), n);
        bool closing = ch->close_req && buf_avail(&ch->out) == 0;
        pthread_mutex_unlock(&ch->lock);
        if (closing || (ch->failed && n == 0)) {
            if (!ch->eof_sent) {
                ssh_channel_send_eof(ch->channel);
                ssh_channel_close(ch->channel);
                ch->eof_sent = true;
            }
            return;
        }
        if (n == 0)
            return;
        int w = ssh_channel_write(ch->channel, chunk, (uint32_t)n);
        if (w <= 0) {
            if (w < 0)
                ch->remote_closed = true;
            return;
        }
        pthread_mutex_lock(&ch->lock);
        buf_consume(&ch->out, (size_t)w);
        pthread_cond_broadcast(&ch->space);
        pthread_mutex_unlock(&ch->lock);
    }
}

/* Keep an SFTP channel's receive window near RX_WINDOW while its input keeps up. libssh grows a
 * window beyond its 1.28 MB base only inside ssh_channel_read_timeout() asked for more than is
 * buffered plus granted. So, with the data callback off for the call (no packet for this channel
 * is consumed behind our back, and rx is not touched), read into rx's free tail: the read grants
 * the window first, then moves whatever libssh holds for the channel, in order, into rx.
 * Granted only when rx has room for a whole window: a slow disk still pushes back. */
static void chan_grow(struct tun_ep_chan *ch)
{
    if (ch->kind != CH_SFTP || ch->failed || ch->remote_closed ||
        ch->rx_since_grow < RX_WINDOW / 2 || RX_MAX - buf_avail(&ch->rx) < RX_WINDOW)
        return;
    uint8_t *tail;
    if (buf_reserve(&ch->rx, RX_WINDOW, &tail) != 0)
        return;
    ch->cb.channel_data_function = NULL;
    int n = ssh_channel_read_timeout(ch->channel, tail, RX_WINDOW, 0, 0);
    ch->cb.channel_data_function = on_data;
    ch->rx_since_grow = 0;
    if (n == SSH_ERROR) {
        ch->remote_closed = true;
        return;
    }
    if (n > 0) {
        buf_commit(&ch->rx, (size_t)n);
        ch->rx_since_grow = (size_t)n;
        sftp_run(ch);
    }
}

static void chan_end(struct ep_session *ss, int slot)
{
    struct tun_ep_chan *ch = ss->ch[slot];
    ss->ch[slot] = NULL;
    if (ch->kind == CH_SUBSYS)
        ch->sub->closed(ch->sub_ctx);
    sfs_free(ch->sfs);
    ch->sfs = NULL;
    pthread_mutex_lock(&ch->lock);
    ch->closed = true;
    pthread_cond_broadcast(&ch->space);
    pthread_mutex_unlock(&ch->lock);
    /* libssh may still deliver the close for a channel freed before the peer closed it: no
     * callback may reach the memory freed below */
    ssh_remove_channel_callbacks(ch->channel, &ch->cb);
    if (ssh_channel_is_open(ch->channel))
        ssh_channel_close(ch->channel);
    ssh_channel_free(ch->channel);
    ch->channel = NULL;
    tun_ep_chan_unref(ch);
}

static int on_wake(socket_t fd, int revents, void *userdata)
{
    (void)revents, (void)userdata;
    uint64_t v;
    ssize_t r = read(fd, &v, sizeof(v));
    (void)r;
    return 0;
}

static void session_loop(struct ep_session *ss)
{
    tun_ep_t *ep = ss->ep;
    ss->ev = ssh_event_new();
    if (!ss->ev || ssh_event_add_session(ss->ev, ss->s) != SSH_OK ||
        ssh_event_add_fd(ss->ev, ss->wake_fd, POLLIN, on_wake, ss) != SSH_OK)
        return;
    for (;;) {
        int rc = ssh_event_dopoll(ss->ev, 500);
        bool stop;
        pthread_mutex_lock(&ep->lock);
        stop = ep->stopping;
        pthread_mutex_unlock(&ep->lock);
        if (rc == SSH_ERROR || stop)
            break;
        if (!ss->authed && time(NULL) - ss->started > AUTH_TIMEOUT) {
            logf_(ep, "client did not authenticate within %d s", AUTH_TIMEOUT);
            break;
        }
        for (int i = 0; i < TUN_EP_MAX_CHANNELS; i++) {
            struct tun_ep_chan *ch = ss->ch[i];
            if (!ch)
                continue;
            if (ch->kind == CH_SFTP) {
                sftp_run(ch); /* requests held back while output was high */
                chan_grow(ch);
            }
            chan_flush(ch);
            if (ch->remote_closed || (ch->eof_sent && !ssh_channel_is_open(ch->channel)))
                chan_end(ss, i);
        }
        if (!ssh_is_connected(ss->s))
            break;
    }
}

static void *session_main(void *arg)
{
    struct ep_session *ss = arg;
    tun_ep_t *ep = ss->ep;
    long timeout = 10;
    ssh_options_set(ss->s, SSH_OPTIONS_TIMEOUT, &timeout);
    ss->scb.userdata = ss;
    ss->scb.auth_pubkey_function = on_auth_pubkey;
    ss->scb.channel_open_request_session_function = on_channel_open;
    ssh_callbacks_init(&ss->scb);
    ssh_set_server_callbacks(ss->s, &ss->scb);
    ssh_set_auth_methods(ss->s, SSH_AUTH_METHOD_PUBLICKEY);
    if (ssh_handle_key_exchange(ss->s) != SSH_OK) {
        logf_(ep, "key exchange failed: %s", ssh_get_error(ss->s));
    } else {
        ssh_set_blocking(ss->s, 0);
        session_loop(ss);
    }
    for (int i = 0; i < TUN_EP_MAX_CHANNELS; i++)
        if (ss->ch[i])
            chan_end(ss, i);
    if (ss->ev) {
        ssh_event_remove_fd(ss->ev, ss->wake_fd); /* else its record is never freed */
        ssh_event_remove_session(ss->ev, ss->s);
        ssh_event_free(ss->ev);
    }
    ssh_disconnect(ss->s);
    ssh_free(ss->s);
    close(ss->wake_fd);
    logf_(ep, "session ended");

    pthread_mutex_lock(&ep->lock);
    for (struct ep_session **pp = &ep->sessions; *pp; pp = &(*pp)->next)
        if (*pp == ss) {
            *pp = ss->next;
            break;
        }
    ep->nsessions--;
    pthread_cond_broadcast(&ep->gone);
    pthread_mutex_unlock(&ep->lock);
    free(ss);
    return NULL;
}

static void *accept_main(void *arg)
{
    tun_ep_t *ep = arg;
    struct pollfd pf[2] = {{.fd = ssh_bind_get_fd(ep->bind), .events = POLLIN},
                           {.fd = ep->stop_fd, .events = POLLIN}};
    for (;;) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[1].revents)
            break;
        if (!(pf[0].revents & POLLIN))
            continue;
        ssh_session s = ssh_new();
        if (!s)
            continue;
        if (ssh_bind_accept(ep->bind, s) != SSH_OK) {
            ssh_free(s);
            continue;
        }
        struct ep_session *ss = calloc(1, sizeof(*ss));
        if (ss)
            ss->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        pthread_mutex_lock(&ep->lock);
        bool ok = ss && ss->wake_fd >= 0 && ep->nsessions < TUN_EP_MAX_SESSIONS && !ep->stopping;
        if (ok) {
            ss->ep = ep;
            ss->s = s;
            ss->started = time(NULL);
            pthread_attr_t at;
            pthread_attr_init(&at);
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            ok = pthread_create(&ss->thread, &at, session_main, ss) == 0;
            pthread_attr_destroy(&at);
            if (ok) {
                ss->next = ep->sessions;
                ep->sessions = ss;
                ep->nsessions++;
            }
        }
        pthread_mutex_unlock(&ep->lock);
        if (!ok) {
            logf_(ep, "refusing a connection (too many sessions or out of resources)");
            ssh_disconnect(s);
            ssh_free(s);
            if (ss && ss->wake_fd >= 0)
                close(ss->wake_fd);
            free(ss);
        }
    }
    return NULL;
}

static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return r;
}

int tun_ep_start(const struct tun_ep_opts *o, tun_ep_t **out, char *err, size_t errlen)
{
    ssh_key host = NULL;
    int r = -EIO;
    tun_ep_t *ep = calloc(1, sizeof(*ep));
    if (!ep)
        return fail(err, errlen, -ENOMEM, "out of memory");
    ep->o = *o;
    ep->stop_fd = -1;
    pthread_mutex_init(&ep->lock, NULL);
    pthread_cond_init(&ep->gone, NULL);
    snprintf(ep->addr, sizeof(ep->addr), "%s", o->bind_addr ? o->bind_addr : "127.0.0.1");
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, ep->addr, &a4) != 1 && inet_pton(AF_INET6, ep->addr, &a6) != 1) {
        r = fail(err, errlen, -EINVAL, "cannot listen on '%s': not an IP address", ep->addr);
        goto out;
    }
    if (ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &host) != SSH_OK ||
        ssh_pki_generate(SSH_KEYTYPE_ED25519, 0, &ep->client_key) != SSH_OK ||
        ssh_pki_export_privkey_to_pubkey(host, &ep->host_pub) != SSH_OK) {
        r = fail(err, errlen, -EIO, "cannot generate the session keys");
        goto out;
    }
    unsigned char *hash = NULL;
    size_t hlen = 0;
    if (ssh_get_publickey_hash(ep->host_pub, SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) == 0) {
        char *fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen);
        snprintf(ep->fingerprint, sizeof(ep->fingerprint), "%s", fp ? fp : "");
        ssh_string_free_char(fp);
        ssh_clean_pubkey_hash(&hash);
    }
    ep->bind = ssh_bind_new();
    bool no = false;
    int port = o->port;
    int verbosity = 0;
    if (!ep->bind || ssh_bind_options_set(ep->bind, SSH_BIND_OPTIONS_PROCESS_CONFIG, &no) != 0 ||
        ssh_bind_options_set(ep->bind, SSH_BIND_OPTIONS_LOG_VERBOSITY, &verbosity) != 0 ||
        ssh_bind_options_set(ep->bind, SSH_BIND_OPTIONS_BINDADDR, ep->addr) != 0 ||
        ssh_bind_options_set(ep->bind, SSH_BIND_OPTIONS_BINDPORT, &port) != 0 ||
        ssh_bind_options_set(ep->bind, SSH_BIND_OPTIONS_IMPORT_KEY, host) != 0) {
        r = fail(err, errlen, -EIO, "cannot set up the ssh server: %s",
                 ep->bind ? ssh_get_error(ep->bind) : "out of memory");
        goto out;
    }
    host = NULL; /* the bind owns it now */
    if (ssh_bind_listen(ep->bind) != SSH_OK) {
        const char *e = ssh_get_error(ep->bind);
        r = fail(err, errlen, strstr(e, "in use") ? -EADDRINUSE : -EIO,
                 "cannot listen on '%s:%d': %s", ep->addr, port, e);
        goto out;
    }
    struct sockaddr_storage sa;
    socklen_t salen = sizeof(sa);
    if (getsockname(ssh_bind_get_fd(ep->bind), (struct sockaddr *)&sa, &salen) != 0) {
        r = fail(err, errlen, -errno, "cannot read the listening port: %s", strerror(errno));
        goto out;
    }
    ep->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                              : ((struct sockaddr_in *)&sa)->sin_port);
    ep->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (ep->stop_fd < 0 || pthread_create(&ep->acceptor, NULL, accept_main, ep) != 0) {
        r = fail(err, errlen, -EIO, "cannot start the accept thread");
        goto out;
    }
    *out = ep;
    return 0;
out:
    ssh_key_free(host);
    if (ep->bind)
        ssh_bind_free(ep->bind);
    ssh_key_free(ep->host_pub);
    ssh_key_free(ep->client_key);
    if (ep->stop_fd >= 0)
        close(ep->stop_fd);
    free(ep);
    return r;
}

uint16_t tun_ep_port(const tun_ep_t *ep)
{
    return ep->port;
}

const char *tun_ep_fingerprint(const tun_ep_t *ep)
{
    return ep->fingerprint;
}

static int write_text(const char *path, const char *text, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return fail(err, errlen, -errno, "cannot write '%s': %s", path, strerror(errno));
    size_t n = strlen(text);
    ssize_t w = write(fd, text, n);
    int e = errno;
    if (close(fd) != 0 || w != (ssize_t)n)
        return fail(err, errlen, -(w < 0 ? e : EIO), "cannot write '%s': %s", path,
                    strerror(w < 0 ? e : EIO));
    return 0;
}

int tun_ep_write_details(tun_ep_t *ep, const char *dir, const char *alias, char *err, size_t errlen)
{
    char path[PATH_MAX], text[4096];
    char *pub = NULL;
    struct stat st;
    int r;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return fail(err, errlen, -errno, "cannot create '%s': %s", dir, strerror(errno));
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return fail(err, errlen, -ENOTDIR, "cannot use '%s': not a directory", dir);
    if (st.st_mode & 077 || st.st_uid != geteuid())
        return fail(err, errlen, -EPERM,
                    "cannot use '%s': it must belong to you and be private (chmod 700)", dir);
    if (strlen(dir) > sizeof(path) - 32)
        return fail(err, errlen, -ENAMETOOLONG, "cannot use '%s': path too long", dir);
    snprintf(path, sizeof(path), "%s/id_ed25519", dir);
    unlink(path);
    mode_t old = umask(077);
    int k = ssh_pki_export_privkey_file(ep->client_key, NULL, NULL, NULL, path);
    umask(old);
    if (k != SSH_OK)
        return fail(err, errlen, -EIO, "cannot write '%s'", path);
    if (ssh_pki_export_pubkey_base64(ep->host_pub, &pub) != SSH_OK)
        return fail(err, errlen, -EIO, "cannot export the host key");
    snprintf(text, sizeof(text), "[%s]:%u ssh-ed25519 %s\n", ep->addr, ep->port, pub);
    ssh_string_free_char(pub);
    snprintf(path, sizeof(path), "%s/known_hosts", dir);
    if ((r = write_text(path, text, err, errlen)) != 0)
        return r;
    snprintf(text, sizeof(text),
             "# offload export endpoint, host key %s\n"
             "Host %s\n"
             "  HostName %s\n"
             "  Port %u\n"
             "  User offload\n"
             "  IdentityFile %s/id_ed25519\n"
             "  IdentitiesOnly yes\n"
             "  UserKnownHostsFile %s/known_hosts\n"
             "  GlobalKnownHostsFile /dev/null\n"
             "  StrictHostKeyChecking yes\n",
             ep->fingerprint, alias, ep->addr, ep->port, dir, dir);
    snprintf(path, sizeof(path), "%s/ssh_config", dir);
    return write_text(path, text, err, errlen);
}

void tun_ep_stop(tun_ep_t *ep)
{
    if (!ep)
        return;
    uint64_t one = 1;
    ssize_t w = write(ep->stop_fd, &one, sizeof(one));
    (void)w;
    pthread_join(ep->acceptor, NULL);
    pthread_mutex_lock(&ep->lock);
    ep->stopping = true;
    for (struct ep_session *ss = ep->sessions; ss; ss = ss->next)
        wake(ss);
    while (ep->nsessions > 0)
        pthread_cond_wait(&ep->gone, &ep->lock);
    pthread_mutex_unlock(&ep->lock);
    ssh_bind_free(ep->bind);
    ssh_key_free(ep->host_pub);
    ssh_key_free(ep->client_key);
    close(ep->stop_fd);
    pthread_cond_destroy(&ep->gone);
    pthread_mutex_destroy(&ep->lock);
    free(ep);
}
