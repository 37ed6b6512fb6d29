/* dockerproxy.c - the docker API proxy: create-body rewriter, per-connection HTTP relay, listener;
 * see dockerproxy.h. */
#include "dockerproxy.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <http_parser.h>
#include <jansson.h>

#include "buf.h"

#define CHUNK        (64u << 10)          /* bytes read at once from either side */
#define HEADER_MAX   (1u << 20)           /* request line and headers, as dockerd's own limit */
#define PENDING_MAX  (HEADER_MAX + CHUNK) /* raw bytes of a request head not yet judged */
#define MSG_MAX      512
#define LOG_URL_MAX  160 /* bytes of a URL a log line shows */
#define CONTINUE_100 "HTTP/1.1 100 Continue\r\n\r\n"

/* ==== the create-body rewriter ============================================================== */

struct rw {
    dp_rewrite_fn fn;
    void *arg;
    int count; /* sources rewritten */
    int status;
    char *msg;
    size_t msglen;
};

static int rw_fail(struct rw *w, int err, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int rw_fail(struct rw *w, int err, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (w->msglen)
        vsnprintf(w->msg, w->msglen, fmt, ap);
    va_end(ap);
    w->status = status;
    return err;
}

static int status_for(int err)
{
    switch (err) {
    case -ENOENT:
    case -EINVAL:
        return 400;
    case -EACCES:
    case -EPERM:
        return 403;
    default:
        return 500;
    }
}

/* The next member of obj whose key is 'name' without regard to case (dockerd's JSON decoder
 * matches field names so, and every such member sets the field). *it starts NULL. */
static json_t *key_next(json_t *obj, const char *name, void **it)
{
    size_t n = strlen(name);

    *it = *it ? json_object_iter_next(obj, *it) : json_object_iter(obj);
    for (; *it; *it = json_object_iter_next(obj, *it))
        if (json_object_iter_key_len(*it) == n && strcasecmp(json_object_iter_key(*it), name) == 0)
            return json_object_iter_value(*it);
    return NULL;
}

/* The member that wins for dockerd: the last one matching 'name'. */
static json_t *key_last(json_t *obj, const char *name)
{
    void *it = NULL;
    json_t *v, *last = NULL;

    while ((v = key_next(obj, name, &it)) != NULL)
        last = v;
    return last;
}

/* Whether the comma-separated options hold 'opt'. */
static bool has_option(const char *opts, const char *opt)
{
    size_t n = strlen(opt);

    for (const char *p = opts; *p;) {
        size_t len = strcspn(p, ",");
        if (len == n && strncmp(p, opt, n) == 0)
            return true;
        p += len + (p[len] == ',');
    }
    return false;
}

/* Ask the callback for the cloud path of one laptop source. */
static int rw_call(struct rw *w, const char *src, bool ro, bool mount_api, char *out, size_t outlen)
{
    char m[MSG_MAX] = "";
    int r;

    out[0] = '\0';
    r = w->fn(w->arg, src, ro, mount_api, out, outlen, m, sizeof(m));
    if (r < 0 && m[0])
        return rw_fail(w, r, status_for(r), "%s", m);
    if (r < 0)
        return rw_fail(w, r, status_for(r), "cannot share '%s': %s", src, strerror(-r));
    if (out[0] != '/' || memchr(out, '\0', outlen) == NULL || strchr(out, ':') != NULL)
        return rw_fail(w, -EIO, 500, "the rewrite of bind source '%s' gave an unusable path", src);
    w->count++;
    return 0;
}

/* Check that v is null or an array whose every element is of 'type': 0, or -EINVAL (400). */
static int rw_array_of(struct rw *w, const json_t *v, json_type type, const char *what)
{
    size_t i;
    json_t *e;

    if (json_is_null(v))
        return 0;
    if (!json_is_array(v))
        return rw_fail(w, -EINVAL, 400, "invalid %s", what);
    json_array_foreach(v, i, e)
    {
        if (json_typeof(e) != type)
            return rw_fail(w, -EINVAL, 400, "invalid %s", what);
    }
    return 0;
}

/* The C string of a JSON string without NUL bytes, or NULL after rw_fail (400). */
static const char *rw_cstr(struct rw *w, const json_t *v, const char *what)
{
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        rw_fail(w, -EINVAL, 400, "invalid %s: expected a string without NUL bytes", what);
        return NULL;
    }
    return json_string_value(v);
}

/* HostConfig.Binds: "src:dst[:opts]" with an absolute src is a bind; "name:dst" is a named
 * volume, "dst" and "dst:opts" are anonymous volumes; more than three fields dockerd refuses. */
static int rw_binds(struct rw *w, json_t *binds)
{
    char cloud[PATH_MAX], *src, *nspec;
    const char *spec, *c1, *c2;
    size_t i;
    json_t *v, *ns;
    int r;

    if ((r = rw_array_of(w, binds, JSON_STRING, "HostConfig.Binds: expected strings")) < 0)
        return r;
    json_array_foreach(binds, i, v)
    {
        if ((spec = rw_cstr(w, v, "bind specification")) == NULL)
            return -EINVAL;
        c1 = strchr(spec, ':');
        if (spec[0] != '/' || c1 == NULL || c1[1] != '/')
            continue;
        c2 = strchr(c1 + 1, ':');
        if (c2 && strchr(c2 + 1, ':'))
            continue;
        if ((src = strndup(spec, (size_t)(c1 - spec))) == NULL)
            return rw_fail(w, -ENOMEM, 500, "out of memory");
        r = rw_call(w, src, c2 && has_option(c2 + 1, "ro"), false, cloud, sizeof(cloud));
        free(src);
        if (r < 0)
            return r;
        if (asprintf(&nspec, "%s%s", cloud, c1) < 0)
            return rw_fail(w, -ENOMEM, 500, "out of memory");
        ns = json_string(nspec);
        free(nspec);
        if (ns == NULL || json_array_set_new(binds, i, ns) != 0)
            return rw_fail(w, -EIO, 500, "the rewritten bind '%s' is not valid UTF-8", spec);
    }
    return 0;
}

/* HostConfig.Mounts: each object of Type "bind" with an absolute Source. */
static int rw_mounts(struct rw *w, json_t *mounts)
{
    char cloud[PATH_MAX];
    const char *src;
    size_t i;
    json_t *m, *s, *type, *ns;
    void *it;
    int r;

    if ((r = rw_array_of(w, mounts, JSON_OBJECT, "HostConfig.Mounts: expected objects")) < 0)
        return r;
    json_array_foreach(mounts, i, m)
    {
        type = key_last(m, "Type");
        if (!json_is_string(type) || strcmp(json_string_value(type), "bind") != 0)
            continue;
        bool ro = json_is_true(key_last(m, "ReadOnly"));
        for (it = NULL; (s = key_next(m, "Source", &it)) != NULL;) {
            if (json_is_null(s))
                continue;
            if ((src = rw_cstr(w, s, "mount Source")) == NULL)
                return -EINVAL;
            if (src[0] != '/')
                continue;
            if ((r = rw_call(w, src, ro, true, cloud, sizeof(cloud))) < 0)
                return r;
            ns = json_string(cloud);
            if (ns == NULL || json_object_iter_set_new(m, it, ns) != 0)
                return rw_fail(w, -EIO, 500, "the rewritten source of '%s' is not valid UTF-8",
                               src);
        }
    }
    return 0;
}

static int rw_host_config(struct rw *w, json_t *hc)
{
    void *it;
    json_t *v;
    int r;

    if (json_is_null(hc))
        return 0;
    if (!json_is_object(hc))
        return rw_fail(w, -EINVAL, 400, "invalid HostConfig: expected an object");
    for (it = NULL; (v = key_next(hc, "Binds", &it)) != NULL;)
        if ((r = rw_binds(w, v)) < 0)
            return r;
    for (it = NULL; (v = key_next(hc, "Mounts", &it)) != NULL;)
        if ((r = rw_mounts(w, v)) < 0)
            return r;
    return 0;
}

static char *copy_bytes(const char *p, size_t n)
{
    char *c = malloc(n + 1);
    if (c) {
        if (n)
            memcpy(c, p, n);
        c[n] = '\0';
    }
    return c;
}

int dp_rewrite_create(const char *body, size_t len, dp_rewrite_fn fn, void *arg, char **out,
                      size_t *outlen, int *status, char *msg, size_t msglen)
{
    struct rw w = {.fn = fn, .arg = arg, .status = 200, .msg = msg, .msglen = msglen};
    json_error_t je;
    json_t *root = NULL, *hc;
    void *it;
    int r = 0;

    *out = NULL;
    *outlen = 0;
    if (msglen)
        msg[0] = '\0';
    if (len > 0) {
        root =
            json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
        if (root == NULL) {
            r = rw_fail(&w, -EINVAL, 400, "invalid JSON in the container create request: %s",
                        je.text);
            goto out;
        }
        if (!json_is_object(root) && !json_is_null(root)) {
            r = rw_fail(&w, -EINVAL, 400,
                        "invalid container create request: expected a JSON object");
            goto out;
        }
    }
    if (json_is_object(root))
        for (it = NULL; (hc = key_next(root, "HostConfig", &it)) != NULL;)
            if ((r = rw_host_config(&w, hc)) < 0)
                goto out;
    if (w.count == 0) {
        *out = copy_bytes(body, len);
        *outlen = len;
    } else if ((*out = json_dumps(root, JSON_COMPACT)) != NULL) {
        *outlen = strlen(*out);
    }
    if (*out == NULL)
        r = rw_fail(&w, -ENOMEM, 500, "out of memory");
    else
        r = w.count;
out:
    json_decref(root);
    *status = r < 0 ? w.status : 200;
    return r;
}

/* ==== the proxy ============================================================================== */

enum kind { K_PASS, K_CREATE, K_EXEC_START, K_ATTACH };
enum mode {
    M_HEAD,   /* the head is being read: its raw bytes wait in 'pending' */
    M_PASS,   /* forwarded raw as it comes */
    M_BUFFER, /* the body is collected (decoded) and the request rebuilt when complete */
};

/* Lock order: dp->lock -> c->wlock. */
struct conn {
    struct dp_proxy *dp;
    unsigned id;
    pthread_t thread; /* written by the accept thread; read by whoever reaps */
    pthread_t pump;
    int cfd, ufd;          /* protected by dp->lock (dp_stop shuts them down) */
    pthread_mutex_t wlock; /* serialises writes to cfd: the pump and local answers */
    struct conn *next;     /* protected by dp->lock */
    /* the connection thread only: */
    http_parser parser;
    struct buf pending; /* raw bytes of the message whose head is not yet complete */
    struct buf url;
    struct buf head; /* "Name: value\r\n" lines, for rebuilding a buffered request */
    struct buf body; /* the decoded body of a buffered request */
    enum kind kind;
    enum mode mode;
    bool in_value, head_done, complete, keep_alive, expect_continue;
    int fail;   /* an HTTP status the callbacks chose when they stopped the parser */
    bool raw;   /* hijacked: the rest goes both ways unparsed */
    bool drain; /* after a last request ("Connection: close"): the rest is dropped */
};

struct dp_proxy {
    struct dp_config cfg;
    char *path;
    dev_t sock_dev;
    ino_t sock_ino;
    int lfd;
    int stop_pipe[2];
    pthread_t acceptor;
    pthread_mutex_t lock;
    pthread_cond_t gone;   /* a connection moved to 'dead' */
    struct conn *live;     /* protected by lock */
    struct conn *dead;     /* protected by lock: ended, to be joined and freed */
    unsigned nlive;        /* protected by lock */
    unsigned next_id;      /* protected by lock */
    bool stopping;         /* protected by lock */
    struct dp_stats stats; /* protected by lock */
    time_t last_activity;  /* protected by lock */
};

static time_t mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec;
}

static void dp_log(struct dp_proxy *dp, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void dp_log(struct dp_proxy *dp, const char *fmt, ...)
{
    char line[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (dp->cfg.log)
        dp->cfg.log(dp->cfg.log_arg, line);
    else
        fprintf(stderr, "offload dockerproxy: %s\n", line);
}

static void count(struct dp_proxy *dp, uint64_t *field, uint64_t n)
{
    pthread_mutex_lock(&dp->lock);
    *field += n;
    pthread_mutex_unlock(&dp->lock);
}

/* Write all n bytes to a stream socket; 0 or a negative errno. */
static int send_all(int fd, const void *p, size_t n, int flags)
{
    const char *s = p;

    while (n > 0) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL | flags);
        if (w < 0 && errno == ENOTSOCK)
            w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Answer a request the way dockerd answers errors: status, JSON {"message": msg}. */
static int send_answer(int fd, pthread_mutex_t *wlock, int status, const char *msg, bool close,
                       int flags)
{
    json_t *o = json_pack("{s:s}", "message", msg);
    char *js = o ? json_dumps(o, JSON_COMPACT) : NULL;
    char head[256];
    int r, n;

    json_decref(o);
    if (js == NULL) /* msg was not UTF-8 (a path), or no memory */
        js = strdup("{\"message\":\"the docker proxy refused the request\"}");
    if (js == NULL)
        return -ENOMEM;
    n = snprintf(head, sizeof(head),
                 "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                 "%s\r\n",
                 status, http_status_str((enum http_status)status), strlen(js) + 1,
                 close ? "Connection: close\r\n" : "");
    if (wlock)
        pthread_mutex_lock(wlock);
    if ((r = send_all(fd, head, (size_t)n, flags)) == 0 &&
        (r = send_all(fd, js, strlen(js), flags)) == 0)
        r = send_all(fd, "\n", 1, flags);
    if (wlock)
        pthread_mutex_unlock(wlock);
    free(js);
    return r;
}

/* ---- request classification --------------------------------------------------------------- */

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* The API route a URL names, as dockerd's router sees it: the path, percent-decoded, without
 * the query and the "/vN.NN" prefix. Returns a malloc'd string or NULL. */
static char *api_route(const char *url, size_t n)
{
    struct http_parser_url u;
    const char *p = url;
    size_t plen;
    char *out, *o;

    http_parser_url_init(&u);
    if (n <= UINT16_MAX && http_parser_parse_url(url, n, 0, &u) == 0 &&
        (u.field_set & (1u << UF_PATH))) {
        p = url + u.field_data[UF_PATH].off;
        plen = u.field_data[UF_PATH].len;
    } else {
        plen = strcspn(url, "?#");
        plen = plen < n ? plen : n;
    }
    if ((out = malloc(plen + 1)) == NULL)
        return NULL;
    for (o = out; plen > 0; plen--, p++) {
        if (*p == '%' && plen >= 3 && hexval(p[1]) >= 0 && hexval(p[2]) >= 0) {
            *o++ = (char)(hexval(p[1]) << 4 | hexval(p[2]));
            p += 2, plen -= 2;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    o = out;
    if (o[0] == '/' && o[1] == 'v' && o[2] >= '0' && o[2] <= '9') {
        size_t v = 2 + strspn(o + 2, "0123456789.");
        if (o[v] == '/')
            memmove(out, out + v, strlen(out + v) + 1);
    }
    return out;
}

/* "/containers/{name:.*}/attach" and the like: a prefix, a non-empty name, a suffix. */
static bool route_is(const char *r, const char *prefix, const char *suffix)
{
    size_t n = strlen(r), pl = strlen(prefix), sl = strlen(suffix);

    return n > pl + sl && strncmp(r, prefix, pl) == 0 && strcmp(r + n - sl, suffix) == 0;
}

static enum kind classify(struct conn *c)
{
    enum kind k = K_PASS;
    char *r;

    if (c->parser.method != HTTP_POST)
        return K_PASS;
    if ((r = api_route((const char *)buf_ptr(&c->url), buf_avail(&c->url))) == NULL)
        return K_PASS;
    if (strcmp(r, "/containers/create") == 0)
        k = K_CREATE;
    else if (route_is(r, "/containers/", "/attach"))
        k = K_ATTACH;
    else if (route_is(r, "/exec/", "/start"))
        k = K_EXEC_START;
    free(r);
    return k;
}

/* Whether the head holds header 'name' (with value 'value', if not NULL), without regard to
 * case. */
static bool head_has(const struct buf *head, const char *name, const char *value)
{
    const char *p = (const char *)buf_ptr(head), *end = p + buf_avail(head);
    size_t nl = strlen(name);

    while (p && p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (eol == NULL)
            break;
        if ((size_t)(eol - p) > nl && p[nl] == ':' && strncasecmp(p, name, nl) == 0) {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            if (value == NULL ||
                ((size_t)(eol - v) == strlen(value) && strncasecmp(v, value, eol - v) == 0))
                return true;
        }
        p = eol + 2;
    }
    return false;
}

/* ---- http_parser callbacks (the connection thread) ------------------------------------------ */

static int on_message_begin(http_parser *p)
{
    struct conn *c = p->data;

    buf_reset(&c->url);
    buf_reset(&c->head);
    buf_reset(&c->body);
    c->kind = K_PASS;
    c->mode = M_HEAD;
    c->in_value = c->head_done = c->complete = c->expect_continue = false;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    return buf_put(&c->url, at, n) == 0 ? 0 : -1;
}

static int on_header_field(http_parser *p, const char *at, size_t n)
{
    struct conn *c = p->data;

    if (c->head_done) /* a trailer after a chunked body: not kept */
        return 0;
    if (c->in_value && buf_put(&c->head, "\r\n", 2) != 0)
        return -1;
    c->in_value = false;
    return buf_put(&c->head, at, n) == 0 ? 0 : -1;
}

static int on_header_value(http_parser *p, const char *at, size_t n)
{
    struct conn *c = p->data;
    uint8_t *w;

    if (c->head_done)
        return 0;
    if (!c->in_value && buf_put(&c->head, ": ", 2) != 0)
        return -1;
    c->in_value = true;
    if (buf_reserve(&c->head, n, &w) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) /* a folded line's CR LF would break the rebuilt head */
        w[i] = at[i] == '\r' || at[i] == '\n' ? ' ' : (uint8_t)at[i];
    buf_commit(&c->head, n);
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    struct conn *c = p->data;
    struct dp_proxy *dp = c->dp;

    if (c->in_value && buf_put(&c->head, "\r\n", 2) != 0)
        return -1;
    c->head_done = true;
    pthread_mutex_lock(&dp->lock);
    dp->stats.requests++;
    dp->last_activity = mono_now();
    pthread_mutex_unlock(&dp->lock);
    c->kind = classify(c);
    if (dp->cfg.verbose) {
        int ul = (int)(buf_avail(&c->url) < LOG_URL_MAX ? buf_avail(&c->url) : LOG_URL_MAX);
        dp_log(dp, "connection %u: %s %.*s%s", c->id, http_method_str(p->method), ul,
               (const char *)buf_ptr(&c->url), p->flags & F_CHUNKED ? " (chunked body)" : "");
    }
    if (c->kind != K_CREATE && c->kind != K_EXEC_START) {
        c->mode = M_PASS;
        return 0;
    }
    if (!(p->flags & F_CHUNKED) && p->content_length != ULLONG_MAX &&
        p->content_length > DP_MAX_BODY) {
        c->fail = 413;
        return -1;
    }
    c->mode = M_BUFFER;
    c->expect_continue = head_has(&c->head, "Expect", "100-continue");
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t n)
{
    struct conn *c = p->data;

    if (c->mode != M_BUFFER)
        return 0;
    if (buf_put(&c->body, at, n) != 0) {
        c->fail = 413;
        return -1;
    }
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct conn *c = p->data;

    c->complete = true;
    c->keep_alive = http_should_keep_alive(p);
    http_parser_pause(p, 1); /* execute returns here: the message's raw end is known */
    return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- the relay (the connection thread) --------------------------------------------------------
 */

/* The rewrite callback seen through the connection, for its log lines. */
static int conn_rewrite(void *arg, const char *src, bool ro, bool mount_api, char *out,
                        size_t outlen, char *msg, size_t msglen)
{
    struct conn *c = arg;
    struct dp_proxy *dp = c->dp;
    int r = dp->cfg.rewrite_bind(dp->cfg.rewrite_arg, src, ro, mount_api, out, outlen, msg, msglen);

    if (r == 0 && dp->cfg.verbose)
        dp_log(dp, "connection %u: %s '%s' -> '%s'%s", c->id, mount_api ? "mount" : "bind", src,
               out, ro ? " (read-only)" : "");
    return r;
}

/* Forward a buffered request with a new body: the head as received but for its framing
 * (Content-Length, Transfer-Encoding) and Expect, which the proxy already answered. */
static int send_rebuilt(struct conn *c, const char *body, size_t n)
{
    struct buf h;
    const char *p = (const char *)buf_ptr(&c->head), *end = p + buf_avail(&c->head);
    char line[64];
    int r;

    buf_init(&h, 2 * HEADER_MAX);
    snprintf(line, sizeof(line), "%s ", http_method_str(c->parser.method));
    if ((r = buf_put(&h, line, strlen(line))) != 0 ||
        (r = buf_put(&h, buf_ptr(&c->url), buf_avail(&c->url))) != 0)
        goto out;
    snprintf(line, sizeof(line), " HTTP/%u.%u\r\n", c->parser.http_major, c->parser.http_minor);
    if ((r = buf_put(&h, line, strlen(line))) != 0)
        goto out;
    while (p && p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (eol == NULL)
            break;
        size_t len = (size_t)(eol - p) + 2;
        if (strncasecmp(p, "content-length:", 15) != 0 &&
            strncasecmp(p, "transfer-encoding:", 18) != 0 && strncasecmp(p, "expect:", 7) != 0 &&
            (r = buf_put(&h, p, len)) != 0)
            goto out;
        p += len;
    }
    snprintf(line, sizeof(line), "Content-Length: %zu\r\n\r\n", n);
    if ((r = buf_put(&h, line, strlen(line))) != 0)
        goto out;
    if ((r = send_all(c->ufd, buf_ptr(&h), buf_avail(&h), 0)) == 0)
        r = send_all(c->ufd, body, n, 0);
out:
    buf_free(&h);
    return r;
}

/* Whether an exec start body asks for a detached exec (no hijack then). */
static bool exec_detached(const char *body, size_t n)
{
    json_t *root = json_loadb(body, n, JSON_ALLOW_NUL, NULL);
    bool detach = json_is_object(root) && json_is_true(key_last(root, "Detach"));

    json_decref(root);
    return detach;
}

/* A request was read whole: forward what is buffered, decide whether the stream is hijacked.
 * Returns 0, or <0 to close the connection. */
static int finish_message(struct conn *c)
{
    struct dp_proxy *dp = c->dp;
    const char *body = (const char *)buf_ptr(&c->body);
    size_t n = buf_avail(&c->body);
    bool hijack = c->parser.upgrade;
    int r = 0;

    if (c->kind == K_CREATE) {
        char msg[MSG_MAX], *out;
        size_t outlen;
        int status;
        r = dp_rewrite_create(body ? body : "", n, conn_rewrite, c, &out, &outlen, &status, msg,
                              sizeof(msg));
        if (r < 0) {
            dp_log(dp, "connection %u: refused a container create (%d): %s", c->id, status, msg);
            count(dp, &dp->stats.errors, 1);
            c->drain = !c->keep_alive;
            return send_answer(c->cfd, &c->wlock, status, msg, !c->keep_alive, 0);
        }
        count(dp, &dp->stats.rewrites, (uint64_t)r);
        r = send_rebuilt(c, out, outlen);
        free(out);
    } else if (c->kind == K_EXEC_START) {
        hijack = !exec_detached(body ? body : "", n);
        r = send_rebuilt(c, body ? body : "", n);
    } else if (c->kind == K_ATTACH) {
        hijack = true;
    }
    if (r < 0)
        return r;
    if (hijack) {
        c->raw = true;
        if (dp->cfg.verbose)
            dp_log(dp, "connection %u: hijacked, now a raw stream both ways", c->id);
    } else if (!c->keep_alive) {
        c->drain = true;
    }
    return 0;
}

/* Route the bytes the parser just consumed, which all belong to the current message. */
static int route(struct conn *c, const char *p, size_t n)
{
    int r;

    switch (c->mode) {
    case M_HEAD:
        return buf_put(&c->pending, p, n);
    case M_PASS:
        if (buf_avail(&c->pending)) {
            r = send_all(c->ufd, buf_ptr(&c->pending), buf_avail(&c->pending), 0);
            buf_reset(&c->pending);
            if (r < 0)
                return r;
        }
        return send_all(c->ufd, p, n, 0);
    case M_BUFFER:
        buf_reset(&c->pending);
        return 0;
    }
    return 0;
}

/* Parse and forward n bytes from the client. Returns 0, or <0 to close the connection (after
 * answering it when the client was at fault). */
static int feed(struct conn *c, const char *data, size_t n)
{
    struct dp_proxy *dp = c->dp;
    size_t off = 0;
    int r;

    while (off < n && !c->raw && !c->drain) {
        size_t m = http_parser_execute(&c->parser, &parser_settings, data + off, n - off);
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e != HPE_OK && e != HPE_PAUSED) {
            int status = c->fail ? c->fail : 400;
            char msg[MSG_MAX];
            if (status == 413)
                snprintf(msg, sizeof(msg), "request body over the docker proxy's limit (%u bytes)",
                         DP_MAX_BODY);
            else
                snprintf(msg, sizeof(msg), "malformed HTTP request: %s", http_errno_description(e));
            dp_log(dp, "connection %u: %s; answering %d and closing", c->id, msg, status);
            count(dp, &dp->stats.errors, 1);
            send_answer(c->cfd, &c->wlock, status, msg, true, 0);
            return -EPROTO;
        }
        if ((r = route(c, data + off, m)) < 0) {
            if (r == -EMSGSIZE) {
                dp_log(dp, "connection %u: request head over %u bytes; answering 400 and closing",
                       c->id, PENDING_MAX);
                count(dp, &dp->stats.errors, 1);
                send_answer(c->cfd, &c->wlock, 400, "request head too large", true, 0);
            }
            return r;
        }
        off += m;
        if (e == HPE_PAUSED) {          /* paused only by on_message_complete */
            c->expect_continue = false; /* the body came without waiting */
            if ((r = finish_message(c)) < 0)
                return r;
            http_parser_pause(&c->parser, 0);
        } else if (m == 0) {
            break; /* not reached: the parser stops early only on error or pause */
        } else if (c->expect_continue && c->mode == M_BUFFER) {
            /* the client waits for 100 Continue before it sends the body we buffer */
            c->expect_continue = false;
            pthread_mutex_lock(&c->wlock);
            r = send_all(c->cfd, CONTINUE_100, strlen(CONTINUE_100), 0);
            pthread_mutex_unlock(&c->wlock);
            if (r < 0)
                return r;
        }
    }
    if (c->raw && off < n) /* bytes after the hijacking request belong to the stream */
        return send_all(c->ufd, data + off, n - off, 0);
    return 0;
}

/* daemon -> client: a plain byte copy, until the daemon ends its side. */
static void *pump_main(void *arg)
{
    struct conn *c = arg;
    char *b = malloc(CHUNK);

    while (b) {
        ssize_t n = read(c->ufd, b, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        pthread_mutex_lock(&c->wlock);
        int r = send_all(c->cfd, b, (size_t)n, 0);
        pthread_mutex_unlock(&c->wlock);
        if (r < 0)
            break;
    }
    free(b);
    shutdown(c->cfd, SHUT_WR);
    return NULL;
}

/* client -> daemon: parse and forward until the client ends its side or the stream fails. */
static void relay(struct conn *c)
{
    char *b = malloc(CHUNK);
    int r = b ? 0 : -ENOMEM;

    while (r == 0) {
        ssize_t n = read(c->cfd, b, CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            r = -errno;
        if (n <= 0)
            break;
        if (c->raw)
            r = send_all(c->ufd, b, (size_t)n, 0);
        else if (!c->drain)
            r = feed(c, b, (size_t)n);
    }
    free(b);
    if (r == 0) {
        shutdown(c->ufd, SHUT_WR); /* the client's half-close, passed on */
    } else {
        shutdown(c->ufd, SHUT_RDWR);
        shutdown(c->cfd, SHUT_RDWR);
    }
}

static void conn_free(struct conn *c)
{
    buf_free(&c->pending);
    buf_free(&c->url);
    buf_free(&c->head);
    buf_free(&c->body);
    pthread_mutex_destroy(&c->wlock);
    free(c);
}

/* After an answer that ends the connection: let the client finish sending its request (were it
 * to meet a closed socket, it would report EPIPE, not the answer), reading what it sends for a
 * while, until it closes. */
static void linger_close(int fd)
{
    char b[4096];
    size_t total = 0;

    shutdown(fd, SHUT_WR);
    while (total < (1u << 20)) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 2000) <= 0)
            break;
        ssize_t n = read(fd, b, sizeof(b));
        if (n <= 0)
            break;
        total += (size_t)n;
    }
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct dp_proxy *dp = c->dp;
    char err[256] = "";
    int ufd;

    ufd = dp->cfg.connect_upstream(dp->cfg.connect_arg, err, sizeof(err));
    if (ufd < 0) {
        char msg[sizeof(err) + 64];
        snprintf(msg, sizeof(msg), "cannot reach the docker daemon: %s",
                 err[0] ? err : strerror(-ufd));
        dp_log(dp, "connection %u: %s; answering 502", c->id, msg);
        count(dp, &dp->stats.errors, 1);
        send_answer(c->cfd, &c->wlock, 502, msg, true, 0);
        linger_close(c->cfd);
        goto out;
    }
    pthread_mutex_lock(&dp->lock);
    if (dp->stopping)
        close(ufd);
    else
        c->ufd = ufd;
    pthread_mutex_unlock(&dp->lock);
    if (c->ufd < 0)
        goto out;
    if (pthread_create(&c->pump, NULL, pump_main, c) != 0) {
        dp_log(dp, "connection %u: cannot start a thread; answering 503", c->id);
        count(dp, &dp->stats.errors, 1);
        send_answer(c->cfd, &c->wlock, 503, "the docker proxy is out of threads", true, 0);
        goto out;
    }
    relay(c);
    pthread_join(c->pump, NULL);
out:
    pthread_mutex_lock(&dp->lock);
    close(c->cfd);
    if (c->ufd >= 0)
        close(c->ufd);
    c->cfd = c->ufd = -1;
    for (struct conn **pp = &dp->live; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    c->next = dp->dead;
    dp->dead = c;
    dp->nlive--;
    pthread_cond_broadcast(&dp->gone);
    pthread_mutex_unlock(&dp->lock);
    return NULL;
}

/* ---- the listener ------------------------------------------------------------------------------
 */

/* Join and free the connections that ended. */
static void reap(struct dp_proxy *dp)
{
    pthread_mutex_lock(&dp->lock);
    struct conn *c = dp->dead;
    dp->dead = NULL;
    pthread_mutex_unlock(&dp->lock);
    while (c) {
        struct conn *next = c->next;
        pthread_join(c->thread, NULL);
        conn_free(c);
        c = next;
    }
}

static void refuse(struct dp_proxy *dp, int fd, const char *why)
{
    dp_log(dp, "refused a client connection: %s; answering 503", why);
    count(dp, &dp->stats.errors, 1);
    send_answer(fd, NULL, 503, why, true, MSG_DONTWAIT);
    close(fd);
}

static void accept_one(struct dp_proxy *dp, int fd)
{
    struct conn *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        refuse(dp, fd, "the docker proxy is out of memory");
        return;
    }
    c->dp = dp;
    c->cfd = fd;
    c->ufd = -1;
    pthread_mutex_init(&c->wlock, NULL);
    buf_init(&c->pending, PENDING_MAX);
    buf_init(&c->url, HEADER_MAX);
    buf_init(&c->head, HEADER_MAX);
    buf_init(&c->body, DP_MAX_BODY);
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;

    pthread_mutex_lock(&dp->lock);
    if (dp->nlive >= DP_MAX_CONNS) {
        pthread_mutex_unlock(&dp->lock);
        conn_free(c);
        refuse(dp, fd, "too many connections to the docker proxy");
        return;
    }
    c->id = ++dp->next_id;
    c->next = dp->live;
    dp->live = c;
    dp->nlive++;
    dp->stats.conns++;
    if (pthread_create(&c->thread, NULL, conn_main, c) != 0) {
        dp->live = c->next;
        dp->nlive--;
        pthread_mutex_unlock(&dp->lock);
        conn_free(c);
        refuse(dp, fd, "the docker proxy is out of threads");
        return;
    }
    pthread_mutex_unlock(&dp->lock);
}

static void *accept_main(void *arg)
{
    struct dp_proxy *dp = arg;

    for (;;) {
        struct pollfd pf[2] = {{.fd = dp->lfd, .events = POLLIN},
                               {.fd = dp->stop_pipe[0], .events = POLLIN}};
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            dp_log(dp, "cannot wait for clients: %s", strerror(errno));
            break;
        }
        if (pf[1].revents)
            break;
        reap(dp);
        if (!(pf[0].revents & POLLIN))
            continue;
        int fd = accept4(dp->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) {
                dp_log(dp, "cannot accept a client: %s", strerror(errno));
                poll(NULL, 0, 100); /* the backlog stays readable: do not spin */
            }
            continue;
        }
        accept_one(dp, fd);
    }
    return NULL;
}

/* Refuse a path where something lives: a socket that still accepts, or not a socket. */
static int check_listen_path(const char *path, const struct sockaddr_un *sa, char *err,
                             size_t errlen)
{
    struct stat st;
    int fd, r;

    if (lstat(path, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        r = -errno;
        snprintf(err, errlen, "cannot listen on '%s': %s", path, strerror(-r));
        return r;
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errlen, "cannot listen on '%s': it exists and is not a socket", path);
        return -EEXIST;
    }
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return -errno;
    r = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
    close(fd);
    if (r == 0) {
        snprintf(err, errlen, "cannot listen on '%s': something already listens there", path);
        return -EADDRINUSE;
    }
    return 0; /* stale: replaced by the rename */
}

/* Bind under a temporary name, make it 0600, listen, then rename into place. */
static int make_listener(struct dp_proxy *dp, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX}, tmp = {.sun_family = AF_UNIX};
    const char *path = dp->path;
    struct stat st;
    int fd, r;

    if (strlen(path) + 16 >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "cannot listen on '%s': path too long for a unix socket", path);
        return -ENAMETOOLONG;
    }
    strcpy(sa.sun_path, path);
    snprintf(tmp.sun_path, sizeof(tmp.sun_path), "%s.%d.tmp", path, (int)getpid());
    if ((r = check_listen_path(path, &sa, err, errlen)) < 0)
        return r;
    if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        goto fail;
    unlink(tmp.sun_path);
    if (bind(fd, (const struct sockaddr *)&tmp, sizeof(tmp)) != 0)
        goto fail;
    if (chmod(tmp.sun_path, 0600) != 0 || listen(fd, 128) != 0 || rename(tmp.sun_path, path) != 0 ||
        stat(path, &st) != 0) {
        r = -errno;
        unlink(tmp.sun_path);
        errno = -r;
        goto fail;
    }
    dp->lfd = fd;
    dp->sock_dev = st.st_dev;
    dp->sock_ino = st.st_ino;
    return 0;
fail:
    r = -errno;
    snprintf(err, errlen, "cannot listen on '%s': %s", path, strerror(errno));
    if (fd >= 0)
        close(fd);
    return r;
}

struct dp_proxy *dp_start(const struct dp_config *cfg, char *err, size_t errlen)
{
    struct dp_proxy *dp;

    if (cfg == NULL || cfg->listen_path == NULL || cfg->connect_upstream == NULL ||
        cfg->rewrite_bind == NULL) {
        snprintf(err, errlen, "docker proxy: listen path and callbacks are required");
        return NULL;
    }
    if ((dp = calloc(1, sizeof(*dp))) == NULL || (dp->path = strdup(cfg->listen_path)) == NULL) {
        snprintf(err, errlen, "docker proxy: out of memory");
        free(dp);
        return NULL;
    }
    dp->cfg = *cfg;
    dp->cfg.listen_path = dp->path;
    dp->lfd = dp->stop_pipe[0] = dp->stop_pipe[1] = -1;
    dp->last_activity = mono_now();
    http_parser_set_max_header_size(HEADER_MAX);
    if (make_listener(dp, err, errlen) < 0)
        goto fail;
    if (pipe2(dp->stop_pipe, O_CLOEXEC) != 0) {
        snprintf(err, errlen, "docker proxy: cannot make a pipe: %s", strerror(errno));
        goto fail_unlink;
    }
    pthread_mutex_init(&dp->lock, NULL);
    pthread_cond_init(&dp->gone, NULL);
    if (pthread_create(&dp->acceptor, NULL, accept_main, dp) != 0) {
        snprintf(err, errlen, "docker proxy: cannot start a thread");
        pthread_cond_destroy(&dp->gone);
        pthread_mutex_destroy(&dp->lock);
        goto fail_unlink;
    }
    return dp;
fail_unlink:
    unlink(dp->path);
fail:
    if (dp->lfd >= 0)
        close(dp->lfd);
    if (dp->stop_pipe[0] >= 0) {
        close(dp->stop_pipe[0]);
        close(dp->stop_pipe[1]);
    }
    free(dp->path);
    free(dp);
    return NULL;
}

void dp_stop(struct dp_proxy *dp)
{
    struct stat st;
    ssize_t w;

    if (dp == NULL)
        return;
    w = write(dp->stop_pipe[1], "x", 1);
    (void)w;
    pthread_join(dp->acceptor, NULL);
    close(dp->lfd);
    if (stat(dp->path, &st) == 0 && st.st_dev == dp->sock_dev && st.st_ino == dp->sock_ino)
        unlink(dp->path);

    pthread_mutex_lock(&dp->lock);
    dp->stopping = true;
    for (struct conn *c = dp->live; c; c = c->next) {
        shutdown(c->cfd, SHUT_RDWR);
        if (c->ufd >= 0)
            shutdown(c->ufd, SHUT_RDWR);
    }
    while (dp->nlive > 0)
        pthread_cond_wait(&dp->gone, &dp->lock);
    pthread_mutex_unlock(&dp->lock);
    reap(dp);

    close(dp->stop_pipe[0]);
    close(dp->stop_pipe[1]);
    pthread_cond_destroy(&dp->gone);
    pthread_mutex_destroy(&dp->lock);
    free(dp->path);
    free(dp);
}

time_t dp_last_activity(struct dp_proxy *dp)
{
    pthread_mutex_lock(&dp->lock);
    time_t t = dp->last_activity;
    pthread_mutex_unlock(&dp->lock);
    return t;
}

unsigned dp_active(struct dp_proxy *dp)
{
    pthread_mutex_lock(&dp->lock);
    unsigned n = dp->nlive;
    pthread_mutex_unlock(&dp->lock);
    return n;
}

void dp_get_stats(struct dp_proxy *dp, struct dp_stats *out)
{
    pthread_mutex_lock(&dp->lock);
    *out = dp->stats;
    pthread_mutex_unlock(&dp->lock);
}
