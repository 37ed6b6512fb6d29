/* test_dockerproxy.c - unit tests of the docker API proxy (tunnel/dockerproxy.h): the create-body
 * rewriter as a pure function, and the request stream through dp_start with a fake daemon at the
 * far end of a socketpair. */
#include "dockerproxy.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_MS 5000

/* ==== the rewriter ============================================================================ */

/* What the rewrite callback saw, and what it answers. */
struct calls {
    int n;
    char src[8][256];
    bool ro[8], mount_api[8];
    int fail;            /* 0, or the negative errno to return */
    const char *failmsg; /* message for a failure ("" leaves it empty) */
    const char *out;     /* a fixed answer instead of the /cloud mapping */
};

/* Maps "/laptop/..." to "/cloud/...", refuses the rest with -EACCES. */
static int fake_rewrite(void *arg, const char *src, bool ro, bool mount_api, char *out,
                        size_t outlen, char *msg, size_t msglen)
{
    struct calls *k = arg;

    if (k->n < 8) {
        snprintf(k->src[k->n], sizeof(k->src[0]), "%s", src);
        k->ro[k->n] = ro;
        k->mount_api[k->n] = mount_api;
    }
    k->n++;
    if (k->fail) {
        snprintf(msg, msglen, "%s", k->failmsg);
        return k->fail;
    }
    if (k->out) {
        snprintf(out, outlen, "%s", k->out);
        return 0;
    }
    if (strncmp(src, "/laptop/", 8) != 0) {
        snprintf(msg, msglen, "'%s' is not shared", src);
        return -EACCES;
    }
    snprintf(out, outlen, "/cloud/%s", src + 8);
    return 0;
}

struct result {
    int r, status;
    char *out;
    size_t outlen;
    char msg[512];
    json_t *json; /* out parsed, when r >= 0 */
};

static void rewrite(const char *body, struct calls *k, struct result *res)
{
    memset(res, 0, sizeof(*res));
    res->r = dp_rewrite_create(body, strlen(body), fake_rewrite, k, &res->out, &res->outlen,
                               &res->status, res->msg, sizeof(res->msg));
    if (res->r >= 0) {
        ck_assert_ptr_nonnull(res->out);
        ck_assert_uint_eq(strlen(res->out), res->outlen);
        if (res->outlen)
            res->json = json_loads(res->out, 0, NULL);
    } else {
        ck_assert_ptr_null(res->out);
    }
}

static void result_free(struct result *res)
{
    free(res->out);
    json_decref(res->json);
}

/* The string at json path "a.b.N.c" (N an array index). */
static const char *jstr(json_t *root, const char *path)
{
    char p[256], *save = NULL;
    json_t *v = root;

    snprintf(p, sizeof(p), "%s", path);
    for (char *t = strtok_r(p, ".", &save); t && v; t = strtok_r(NULL, ".", &save))
        v = json_is_array(v) ? json_array_get(v, strtoul(t, NULL, 10)) : json_object_get(v, t);
    return json_string_value(v);
}

/* The body is refused as the client's fault: -EINVAL, 400, a message, no callback call. */
static void expect_refused_400(const char *body)
{
    struct calls k = {0};
    struct result res;

    rewrite(body, &k, &res);
    ck_assert_msg(res.r == -EINVAL && res.status == 400,
                  "body '%s': expected -EINVAL and 400, got %d and %d", body, res.r, res.status);
    ck_assert_msg(strstr(res.msg, "invalid") != NULL, "body '%s': message '%s'", body, res.msg);
    ck_assert_int_eq(k.n, 0);
    result_free(&res);
}

START_TEST(test_binds_rewritten_with_ro_rw_and_z_options)
{
    struct calls k = {0};
    struct result res;

    rewrite("{\"Image\":\"busybox\",\"HostConfig\":{\"Binds\":[\"/laptop/a:/app\","
            "\"/laptop/b:/b:ro\",\"/laptop/c:/c:rw\",\"/laptop/d:/d:ro,z\",\"/laptop/e:/e:Z\"],"
            "\"Memory\":1073741824}}",
            &k, &res);
    ck_assert_int_eq(res.r, 5);
    ck_assert_ptr_nonnull(res.json);
    ck_assert_str_eq(jstr(res.json, "HostConfig.Binds.0"), "/cloud/a:/app");
    ck_assert_str_eq(jstr(res.json, "HostConfig.Binds.1"), "/cloud/b:/b:ro");
    ck_assert_str_eq(jstr(res.json, "HostConfig.Binds.2"), "/cloud/c:/c:rw");
    ck_assert_str_eq(jstr(res.json, "HostConfig.Binds.3"), "/cloud/d:/d:ro,z");
    ck_assert_str_eq(jstr(res.json, "HostConfig.Binds.4"), "/cloud/e:/e:Z");
    ck_assert_str_eq(jstr(res.json, "Image"), "busybox");
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(res.json, "HostConfig"), "Memory")),
        1073741824);
    ck_assert_int_eq(k.n, 5);
    bool want_ro[5] = {false, true, false, true, false};
    for (int i = 0; i < 5; i++) {
        ck_assert_msg(k.ro[i] == want_ro[i], "bind %d (%s): expected readonly %d, got %d", i,
                      k.src[i], want_ro[i], k.ro[i]);
        ck_assert_msg(!k.mount_api[i], "bind %d: expected is_mount_api false", i);
    }
    ck_assert_str_eq(k.src[0], "/laptop/a");
    ck_assert_int_eq(res.status, 200);
    result_free(&res);
}
END_TEST

START_TEST(test_named_anonymous_and_relative_binds_pass_byte_for_byte)
{
    const char *body = "{ \"HostConfig\" : {\"Binds\": [\"vol:/data\", \"/anon\", \"/anon2:ro\","
                       " \"rel/x:/y\", \"./x:/y\", \"/a:b\", \"/a:/b:ro:extra\"] } }";
    struct calls k = {0};
    struct result res;

    rewrite(body, &k, &res);
    ck_assert_int_eq(res.r, 0);
    ck_assert_int_eq(k.n, 0);
    ck_assert_str_eq(res.out, body); /* not even re-serialised */
    result_free(&res);
}
END_TEST

START_TEST(test_mounts_bind_rewritten_volume_and_tmpfs_untouched)
{
    struct calls k = {0};
    struct result res;

    rewrite("{\"HostConfig\":{\"Mounts\":["
            "{\"Type\":\"bind\",\"Source\":\"/laptop/m\",\"Target\":\"/m\",\"ReadOnly\":true},"
            "{\"Type\":\"bind\",\"Source\":\"/laptop/w\",\"Target\":\"/w\"},"
            "{\"Type\":\"volume\",\"Source\":\"vol\",\"Target\":\"/v\"},"
            "{\"Type\":\"volume\",\"Source\":\"/laptop/not-a-bind\",\"Target\":\"/v2\"},"
            "{\"Type\":\"tmpfs\",\"Target\":\"/t\"}]}}",
            &k, &res);
    ck_assert_int_eq(res.r, 2);
    ck_assert_str_eq(jstr(res.json, "HostConfig.Mounts.0.Source"), "/cloud/m");
    ck_assert(json_is_true(json_object_get(
        json_array_get(json_object_get(json_object_get(res.json, "HostConfig"), "Mounts"), 0),
        "ReadOnly")));
    ck_assert_str_eq(jstr(res.json, "HostConfig.Mounts.0.Target"), "/m");
    ck_assert_str_eq(jstr(res.json, "HostConfig.Mounts.1.Source"), "/cloud/w");
    ck_assert_str_eq(jstr(res.json, "HostConfig.Mounts.2.Source"), "vol");
    ck_assert_str_eq(jstr(res.json, "HostConfig.Mounts.3.Source"), "/laptop/not-a-bind");
    ck_assert_ptr_null(jstr(res.json, "HostConfig.Mounts.4.Source"));
    ck_assert_int_eq(k.n, 2);
    ck_assert(k.ro[0] && k.mount_api[0]);
    ck_assert(!k.ro[1] && k.mount_api[1]);
    result_free(&res);
}
END_TEST

START_TEST(test_missing_or_null_host_config_passes_unchanged)
{
    const char *bodies[] = {"{\"Image\":\"busybox\",\"Cmd\":[\"true\"]}", "{\"HostConfig\":null}",
                            "{\"HostConfig\":{\"Binds\":null,\"Mounts\":null}}", "null", ""};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        struct calls k = {0};
        struct result res;
        rewrite(bodies[i], &k, &res);
        ck_assert_msg(res.r == 0, "body '%s': expected 0 rewrites, got %d (%s)", bodies[i], res.r,
                      res.msg);
        ck_assert_str_eq(res.out, bodies[i]);
        result_free(&res);
    }
}
END_TEST

START_TEST(test_invalid_json_is_400)
{
    const char *bodies[] = {"{",        "{\"HostConfig\":{\"Binds\":[\"/laptop/a:/a\"]}",
                            "not json", "[1,2]",
                            "\"str\"",  "{\"a\":1}x",
                            " "};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect_refused_400(bodies[i]);
}
END_TEST

START_TEST(test_ill_typed_binds_and_mounts_are_400)
{
    const char *bodies[] = {
        "{\"HostConfig\":3}",
        "{\"HostConfig\":{\"Binds\":\"/laptop/a:/a\"}}",
        "{\"HostConfig\":{\"Binds\":[1]}}",
        "{\"HostConfig\":{\"Binds\":[\"/laptop/a\\u0000x:/a\"]}}",
        "{\"HostConfig\":{\"Mounts\":{}}}",
        "{\"HostConfig\":{\"Mounts\":[1]}}",
        "{\"HostConfig\":{\"Mounts\":[{\"Type\":\"bind\",\"Source\":7}]}}",
    };
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++)
        expect_refused_400(bodies[i]);
}
END_TEST

START_TEST(test_duplicate_keys_are_400)
{
    /* dockerd would merge both HostConfig objects; one seen by the proxy would hide a bind */
    expect_refused_400("{\"HostConfig\":{\"Binds\":[\"/etc:/x\"]},\"HostConfig\":{}}");
}
END_TEST

START_TEST(test_keys_matched_without_case_like_dockerd)
{
    struct calls k = {0};
    struct result res;

    rewrite("{\"hostconfig\":{\"binds\":[\"/laptop/a:/a\"],\"MOUNTS\":[{\"type\":\"bind\","
            "\"source\":\"/laptop/b\",\"target\":\"/b\",\"readonly\":true}]}}",
            &k, &res);
    ck_assert_int_eq(res.r, 2);
    ck_assert_str_eq(jstr(res.json, "hostconfig.binds.0"), "/cloud/a:/a");
    ck_assert_str_eq(jstr(res.json, "hostconfig.MOUNTS.0.source"), "/cloud/b");
    ck_assert(k.ro[1]);
    result_free(&res);
}
END_TEST

START_TEST(test_callback_errors_map_to_status)
{
    struct {
        int err, status;
    } cases[] = {{-ENOENT, 400}, {-EINVAL, 400}, {-EACCES, 403},
                 {-EPERM, 403},  {-EIO, 500},    {-ENOSPC, 500}};
    const char *msg = "invalid mount config for type \"bind\": bind source path does not exist: "
                      "/laptop/gone";
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct calls k = {.fail = cases[i].err, .failmsg = msg};
        struct result res;
        rewrite("{\"HostConfig\":{\"Mounts\":[{\"Type\":\"bind\",\"Source\":\"/laptop/gone\","
                "\"Target\":\"/g\"}]}}",
                &k, &res);
        ck_assert_msg(res.r == cases[i].err && res.status == cases[i].status,
                      "errno %d: expected %d and status %d, got %d and %d", -cases[i].err,
                      cases[i].err, cases[i].status, res.r, res.status);
        ck_assert_str_eq(res.msg, msg);
        result_free(&res);
    }
}
END_TEST

START_TEST(test_callback_error_without_message_gets_one)
{
    struct calls k = {.fail = -EACCES, .failmsg = ""};
    struct result res;

    rewrite("{\"HostConfig\":{\"Binds\":[\"/laptop/x:/x\"]}}", &k, &res);
    ck_assert_int_eq(res.status, 403);
    ck_assert_str_eq(res.msg, "cannot share '/laptop/x': Permission denied");
    result_free(&res);
}
END_TEST

START_TEST(test_callback_unusable_path_is_500)
{
    const char *bad[] = {"relative/path", "/with:colon", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct calls k = {.out = bad[i]};
        struct result res;
        rewrite("{\"HostConfig\":{\"Binds\":[\"/laptop/x:/x\"]}}", &k, &res);
        ck_assert_msg(res.status == 500, "answer '%s': expected 500, got %d", bad[i], res.status);
        result_free(&res);
    }
}
END_TEST

/* ==== the proxy with a fake daemon ==============================================================
 *
 * connect_upstream makes a socketpair: the proxy gets one end, the test (the "daemon") the other.
 */

struct fake {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int daemon[512]; /* daemon ends, in connection order */
    int n;
    bool refuse;
};

static struct fake F;
static char dir[64], sock[100];
static struct calls K;
static struct dp_proxy *P;

static int fake_connect(void *arg, char *err, size_t errlen)
{
    struct fake *f = arg;
    int sv[2];

    if (f->refuse) {
        snprintf(err, errlen, "the tunnel is down");
        return -ECONNREFUSED;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return -errno;
    pthread_mutex_lock(&f->lock);
    f->daemon[f->n++] = sv[1];
    pthread_cond_broadcast(&f->cond);
    pthread_mutex_unlock(&f->lock);
    return sv[0];
}

/* The daemon end of connection i (0-based), waiting for the proxy to make it. */
static int daemon_end(int i)
{
    struct timespec dl;
    int fd = -1;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += TIMEOUT_MS / 1000;
    pthread_mutex_lock(&F.lock);
    while (F.n <= i && pthread_cond_timedwait(&F.cond, &F.lock, &dl) == 0)
        ;
    if (F.n > i)
        fd = F.daemon[i];
    pthread_mutex_unlock(&F.lock);
    ck_assert_msg(fd >= 0, "expected the proxy to open upstream connection %d", i);
    return fd;
}

static void quiet_log(void *arg, const char *line)
{
    (void)arg, (void)line;
}

static void proxy_setup(void)
{
    struct dp_config cfg = {.connect_upstream = fake_connect,
                            .connect_arg = &F,
                            .rewrite_bind = fake_rewrite,
                            .rewrite_arg = &K,
                            .log = quiet_log};
    char err[256];

    memset(&F, 0, sizeof(F));
    memset(&K, 0, sizeof(K));
    pthread_mutex_init(&F.lock, NULL);
    pthread_cond_init(&F.cond, NULL);
    snprintf(dir, sizeof(dir), "/tmp/test_dockerproxy.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(sock, sizeof(sock), "%s/docker.sock", dir);
    cfg.listen_path = sock;
    P = dp_start(&cfg, err, sizeof(err));
    ck_assert_msg(P != NULL, "dp_start: %s", err);
}

static void proxy_teardown(void)
{
    dp_stop(P);
    P = NULL;
    for (int i = 0; i < F.n; i++)
        close(F.daemon[i]);
    rmdir(dir);
}

static struct dp_stats stats(void)
{
    struct dp_stats st;
    dp_get_stats(P, &st);
    return st;
}

static int client(void)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
    ck_assert_int_ge(fd, 0);
    ck_assert_msg(connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "connect '%s': %s", sock,
                  strerror(errno));
    return fd;
}

static void put(int fd, const char *s)
{
    size_t n = strlen(s);
    ck_assert_msg(send(fd, s, n, MSG_NOSIGNAL) == (ssize_t)n, "send: %s", strerror(errno));
}

/* Read until 'want' bytes came, EOF, or the timeout. Returns the count; buf is NUL-terminated. */
static size_t get(int fd, char *buf, size_t want, int timeout_ms)
{
    size_t got = 0;

    while (got < want) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, timeout_ms) <= 0)
            break;
        ssize_t n = read(fd, buf + got, want - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    return got;
}

/* Expect exactly the bytes of 'want' on fd. */
static void expect(int fd, const char *want, const char *what)
{
    size_t n = strlen(want);
    char *b = malloc(n + 1);

    size_t got = get(fd, b, n, TIMEOUT_MS);
    ck_assert_msg(got == n && memcmp(b, want, n) == 0, "%s: expected %zu bytes '%s', got %zu '%s'",
                  what, n, want, got, b);
    free(b);
}

/* Read one HTTP message head (up to the blank line) into buf. */
static void get_head(int fd, char *buf, size_t cap)
{
    size_t got = 0;

    while (got + 1 < cap && (got < 4 || memcmp(buf + got - 4, "\r\n\r\n", 4) != 0)) {
        if (get(fd, buf + got, 1, TIMEOUT_MS) != 1)
            break;
        got++;
    }
    buf[got] = '\0';
}

/* The daemon end d gets 'req' (sent already by the client c), answers 'resp', which reaches the
 * client unchanged. */
static void exchange(int c, int d, const char *req, const char *resp)
{
    expect(d, req, "request at the daemon");
    put(d, resp);
    expect(c, resp, "response at the client");
}

static void expect_silence(int fd, int ms, const char *what)
{
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    char b[256];
    ssize_t n = 0;

    if (poll(&pf, 1, ms) > 0)
        n = read(fd, b, sizeof(b) - 1);
    b[n > 0 ? n : 0] = '\0';
    ck_assert_msg(n == 0 && pf.revents == 0, "%s: expected nothing, got %zd bytes '%s'", what, n,
                  b);
}

static void expect_eof(int fd, const char *what)
{
    char b[256];
    size_t n = get(fd, b, sizeof(b) - 1, TIMEOUT_MS);
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    ck_assert_msg(n == 0 && poll(&pf, 1, 0) == 1, "%s: expected EOF, got %zu bytes '%s'", what, n,
                  b);
}

START_TEST(test_pipelined_requests_and_responses_pass_unchanged)
{
    const char *reqs = "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n"
                       "POST /v1.41/images/busybox/tag?repo=x HTTP/1.1\r\nHost: docker\r\n"
                       "Content-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
                       "HEAD /_ping HTTP/1.1\r\nHost: docker\r\nX-Odd:   spaced  value \r\n\r\n"
                       "GET /v1.41/version HTTP/1.1\r\nHost: docker\r\n\r\n";
    const char *resps = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK"
                        "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
                        "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{}\r\n";
    int c = client();

    put(c, reqs);
    exchange(c, daemon_end(0), reqs, resps);
    ck_assert_uint_eq(stats().requests, 4);
    ck_assert_uint_eq(stats().errors, 0);
    close(c);
}
END_TEST

START_TEST(test_requests_split_byte_by_byte_pass_unchanged)
{
    const char *req = "POST /v1.41/containers/x/wait HTTP/1.1\r\nHost: docker\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                      "GET /_ping HTTP/1.1\r\n\r\n";
    int c = client();

    for (const char *p = req; *p; p++) {
        ck_assert_int_eq(send(c, p, 1, MSG_NOSIGNAL), 1);
        usleep(200);
    }
    expect(daemon_end(0), req, "requests at the daemon");
    close(c);
}
END_TEST

START_TEST(test_chunked_upload_passes_unchanged)
{
    const char *head = "POST /v1.41/build?t=x HTTP/1.1\r\nHost: docker\r\n"
                       "Content-Type: application/x-tar\r\nTransfer-Encoding: chunked\r\n\r\n";
    const char *chunks[] = {"5\r\nhello\r\n", "1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n",
                            "0\r\nX-Trailer: t\r\n\r\n"};
    int c = client();

    put(c, head);
    int d = daemon_end(0);
    expect(d, head, "build head at the daemon, before the body");
    for (int i = 0; i < 3; i++) {
        put(c, chunks[i]);
        expect(d, chunks[i], "a chunk at the daemon as it came");
    }
    /* a streamed answer reaches the client piece by piece, before the daemon ends it */
    const char *parts[] = {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                           "10\r\n{\"stream\":\"x\"}\n\r\n", "0\r\n\r\n"};
    for (int i = 0; i < 3; i++) {
        put(d, parts[i]);
        expect(c, parts[i], "a streamed response part at the client");
    }
    close(c);
}
END_TEST

/* Split a forwarded request into head and body; check its framing. */
static void take_request(int d, char *head, size_t hcap, char **body)
{
    get_head(d, head, hcap);
    const char *cl = strcasestr(head, "\r\nContent-Length: ");
    ck_assert_msg(cl != NULL, "expected a Content-Length in '%s'", head);
    size_t n = strtoul(cl + 18, NULL, 10);
    *body = malloc(n + 1);
    ck_assert_uint_eq(get(d, *body, n, TIMEOUT_MS), n);
}

START_TEST(test_chunked_create_rewritten_with_content_length)
{
    const char *json =
        "{\"Image\":\"busybox\",\"HostConfig\":{\"Binds\":[\"/laptop/src:/app:ro\"],"
        "\"Mounts\":[{\"Type\":\"bind\",\"Source\":\"/laptop/m\",\"Target\":\"/m\"}]}}";
    char req[1024], head[1024], *body;
    int c = client();

    snprintf(req, sizeof(req),
             "POST /v1.41/containers/create?name=web HTTP/1.1\r\nHost: docker\r\n"
             "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
             "10\r\n%.16s\r\n%zx\r\n%s\r\n0\r\n\r\n",
             json, strlen(json) - 16, json + 16);
    put(c, req);
    int d = daemon_end(0);
    take_request(d, head, sizeof(head), &body);
    ck_assert_msg(strncmp(head, "POST /v1.41/containers/create?name=web HTTP/1.1\r\n", 49) == 0,
                  "request line: '%s'", head);
    ck_assert_msg(strcasestr(head, "Transfer-Encoding") == NULL, "chunked left in '%s'", head);
    ck_assert_msg(strstr(head, "\r\nHost: docker\r\n") &&
                      strstr(head, "Content-Type: application/json"),
                  "headers lost: '%s'", head);
    json_t *j = json_loads(body, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(jstr(j, "HostConfig.Binds.0"), "/cloud/src:/app:ro");
    ck_assert_str_eq(jstr(j, "HostConfig.Mounts.0.Source"), "/cloud/m");
    json_decref(j);
    free(body);

    /* the connection goes on: the answer comes back, the next request is forwarded */
    exchange(c, d, "", "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}");
    put(c, "GET /_ping HTTP/1.1\r\n\r\n");
    exchange(c, d, "GET /_ping HTTP/1.1\r\n\r\n", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    ck_assert_uint_eq(stats().rewrites, 2);
    ck_assert_uint_eq(stats().requests, 2);
    close(c);
}
END_TEST

START_TEST(test_create_with_expect_continue_gets_100_from_the_proxy)
{
    const char *json = "{\"HostConfig\":{\"Binds\":[\"/laptop/a:/a\"]}}";
    char req[512], head[1024], *body;
    int c = client();

    snprintf(
        req, sizeof(req),
        "POST /containers/create HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: %zu\r\n\r\n",
        strlen(json));
    put(c, req);
    expect(c, "HTTP/1.1 100 Continue\r\n\r\n", "interim answer");
    put(c, json);
    take_request(daemon_end(0), head, sizeof(head), &body);
    ck_assert_msg(strcasestr(head, "Expect:") == NULL, "Expect forwarded: '%s'", head);
    ck_assert_str_eq(body, "{\"HostConfig\":{\"Binds\":[\"/cloud/a:/a\"]}}");
    free(body);
    close(c);
}
END_TEST

START_TEST(test_refused_create_answered_by_the_proxy_and_connection_kept)
{
    const char *json = "{\"HostConfig\":{\"Mounts\":[{\"Type\":\"bind\",\"Source\":\"/etc\","
                       "\"Target\":\"/x\"}]}}";
    char req[512], head[512], body[256];
    int c = client();

    snprintf(req, sizeof(req),
             "POST /v1.24/containers/create HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(json), json);
    put(c, req);
    get_head(c, head, sizeof(head));
    ck_assert_msg(strncmp(head, "HTTP/1.1 403 Forbidden\r\n", 24) == 0, "answer: '%s'", head);
    ck_assert_msg(strstr(head, "Content-Type: application/json\r\n"), "answer: '%s'", head);
    size_t n = strtoul(strcasestr(head, "Content-Length: ") + 16, NULL, 10);
    ck_assert_uint_eq(get(c, body, n, TIMEOUT_MS), n);
    ck_assert_str_eq(body, "{\"message\":\"'/etc' is not shared\"}\n");
    int d = daemon_end(0);
    expect_silence(d, 200, "the daemon after a refused create");
    put(c, "GET /_ping HTTP/1.1\r\n\r\n");
    expect(d, "GET /_ping HTTP/1.1\r\n\r\n", "the next request on the same connection");
    struct dp_stats st = stats();
    ck_assert_uint_eq(st.errors, 1);
    close(c);
}
END_TEST

/* A hijacked attach: raw bytes both ways, the client's half-close reaches the daemon, the daemon
 * keeps writing after it, and its close reaches the client. */
static void hijack_half_close(const char *req)
{
    int c = client();

    put(c, req);
    int d = daemon_end(0);
    expect(d, req, "hijacking request");
    const char *up = "HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
                     "Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n";
    put(d, up);
    expect(c, up, "upgrade answer");
    static const char raw[] = "GARBAGE that is no HTTP \r\n\r\n\x01\x00 at all\n";
    const size_t rn = sizeof(raw) - 1; /* a NUL inside */
    ck_assert_int_eq(send(c, raw, rn, MSG_NOSIGNAL), (ssize_t)rn);
    char b[64];
    ck_assert_uint_eq(get(d, b, rn, TIMEOUT_MS), rn);
    ck_assert(memcmp(b, raw, rn) == 0);
    ck_assert_int_eq(shutdown(c, SHUT_WR), 0);
    expect_eof(d, "the daemon after the client's half-close");
    put(d, "output after stdin closed\n");
    expect(c, "output after stdin closed\n", "output after the half-close");
    ck_assert_uint_eq(dp_active(P), 1);
    close(d);
    expect_eof(c, "the client after the daemon closed");
    close(c);
    for (int i = 0; i < 200 && dp_active(P) > 0; i++)
        usleep(10000);
    ck_assert_uint_eq(dp_active(P), 0);
}

START_TEST(test_upgrade_hijack_propagates_half_close)
{
    hijack_half_close("POST /v1.41/containers/abc/attach?stream=1&stdin=1&stdout=1 HTTP/1.1\r\n"
                      "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n");
}
END_TEST

START_TEST(test_attach_without_upgrade_header_hijacks)
{
    hijack_half_close("POST /containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: docker\r\n"
                      "Content-Length: 0\r\n\r\n");
}
END_TEST

START_TEST(test_exec_start_hijacks_unless_detached)
{
    const char *json = "{\"Detach\":false,\"Tty\":false}";
    const char *create = "{\"HostConfig\":{\"Binds\":[\"/laptop/a:/a\"]}}";
    char req[512], head[512], *body;
    int c = client();

    /* detached: a plain request, and parsing goes on (the create after it is rewritten) */
    snprintf(req, sizeof(req),
             "POST /v1.41/exec/e1/start HTTP/1.1\r\nContent-Length: 15\r\n\r\n{\"Detach\":true}"
             "POST /v1.41/containers/create HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%s",
             strlen(create), create);
    put(c, req);
    int d = daemon_end(0);
    take_request(d, head, sizeof(head), &body);
    ck_assert_str_eq(body, "{\"Detach\":true}");
    free(body);
    take_request(d, head, sizeof(head), &body);
    ck_assert_str_eq(body, "{\"HostConfig\":{\"Binds\":[\"/cloud/a:/a\"]}}");
    free(body);
    /* attached: what follows is the exec's stdin, raw */
    snprintf(req, sizeof(req),
             "POST /exec/e2/start HTTP/1.1\r\nContent-Length: %zu\r\n\r\n%sGET /not/a/request\r\n",
             strlen(json), json);
    put(c, req);
    take_request(d, head, sizeof(head), &body);
    ck_assert_str_eq(body, json);
    free(body);
    expect(d, "GET /not/a/request\r\n", "raw stdin after the exec start");
    shutdown(c, SHUT_WR);
    expect_eof(d, "the daemon after the client's half-close");
    close(c);
}
END_TEST

START_TEST(test_malformed_request_answered_400_and_closed)
{
    const char *bad[] = {"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                         "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                         "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char head[512];
        int c = client();
        put(c, bad[i]);
        get_head(c, head, sizeof(head));
        ck_assert_msg(strncmp(head, "HTTP/1.1 400 Bad Request\r\n", 26) == 0,
                      "'%s': expected a 400 answer, got '%s'", bad[i], head);
        ck_assert_msg(strstr(head, "Connection: close\r\n"), "'%s': answer '%s'", bad[i], head);
        char b[512];
        get(c, b, sizeof(b) - 1, TIMEOUT_MS);
        ck_assert_msg(strstr(b, "{\"message\":\"malformed HTTP request"), "body '%s'", b);
        struct pollfd pf = {.fd = c, .events = POLLIN};
        ck_assert_int_eq(poll(&pf, 1, TIMEOUT_MS), 1);
        ck_assert_int_eq(read(c, b, 1), 0);
        close(c);
    }
    struct dp_stats st = stats();
    ck_assert_uint_eq(st.errors, 4);
    /* the proxy still serves */
    int c = client();
    put(c, "GET /_ping HTTP/1.1\r\n\r\n");
    expect(daemon_end(4), "GET /_ping HTTP/1.1\r\n\r\n", "a request after the bad ones");
    close(c);
}
END_TEST

START_TEST(test_client_gone_mid_request_ends_upstream_with_nothing_sent)
{
    const char *partial[] = {
        "GET /_ping HTTP/1.1\r\nHost: do",
        "POST /containers/create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"Ho"};
    for (int i = 0; i < 2; i++) {
        int c = client();
        put(c, partial[i]);
        close(c);
        expect_eof(daemon_end(i), partial[i]);
    }
    struct dp_stats st = stats();
    ck_assert_uint_eq(st.errors, 0);
}
END_TEST

START_TEST(test_oversized_create_body_is_413)
{
    char head[512];
    int c = client();

    put(c, "POST /containers/create HTTP/1.1\r\nContent-Length: 9437184\r\n\r\n{");
    get_head(c, head, sizeof(head));
    ck_assert_msg(strncmp(head, "HTTP/1.1 413 ", 13) == 0, "answer: '%s'", head);
    close(c);

    /* chunked: caught while the body grows */
    c = client();
    put(c, "POST /containers/create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    char *chunk = malloc(1 << 20);
    memset(chunk, ' ', 1 << 20);
    char sz[32];
    snprintf(sz, sizeof(sz), "%x\r\n", 1 << 20);
    bool answered = false;
    for (int i = 0; i < 10 && !answered; i++) {
        put(c, sz);
        if (send(c, chunk, 1 << 20, MSG_NOSIGNAL) != 1 << 20 ||
            send(c, "\r\n", 2, MSG_NOSIGNAL) != 2)
            answered = true;
    }
    free(chunk);
    get_head(c, head, sizeof(head));
    ck_assert_msg(strncmp(head, "HTTP/1.1 413 ", 13) == 0, "answer: '%s'", head);
    close(c);
}
END_TEST

START_TEST(test_unreachable_daemon_is_502)
{
    char head[512], b[512];

    F.refuse = true;
    int c = client();
    put(c, "GET /_ping HTTP/1.1\r\n\r\n");
    get_head(c, head, sizeof(head));
    ck_assert_msg(strncmp(head, "HTTP/1.1 502 Bad Gateway\r\n", 26) == 0, "answer '%s'", head);
    get(c, b, sizeof(b) - 1, TIMEOUT_MS);
    ck_assert_msg(strstr(b, "cannot reach the docker daemon: the tunnel is down"), "body '%s'", b);
    close(c);
}
END_TEST

START_TEST(test_activity_and_active_counters)
{
    time_t before = dp_last_activity(P);

    ck_assert_uint_eq(dp_active(P), 0);
    int c1 = client();
    int d1 = daemon_end(0);
    int c2 = client();
    daemon_end(1);
    ck_assert_uint_eq(dp_active(P), 2);
    ck_assert_int_eq(dp_last_activity(P), before); /* connecting is no activity */
    usleep(1100 * 1000);
    put(c1, "GET /_ping HTTP/1.1\r\n\r\n");
    expect(d1, "GET /_ping HTTP/1.1\r\n\r\n", "request");
    ck_assert_int_gt(dp_last_activity(P), before);
    close(c1);
    close(c2);
    for (int i = 0; i < F.n; i++)
        shutdown(F.daemon[i], SHUT_RDWR);
    for (int i = 0; i < 200 && dp_active(P) > 0; i++)
        usleep(10000);
    ck_assert_uint_eq(dp_active(P), 0);
}
END_TEST

START_TEST(test_connections_over_the_limit_get_503)
{
    static int cs[DP_MAX_CONNS];
    struct rlimit rl;
    char head[256];

    /* three descriptors a connection: client, proxy's end, daemon's end (and the socketpair) */
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 8 * DP_MAX_CONNS) {
        rl.rlim_cur = rl.rlim_max < 8 * DP_MAX_CONNS ? rl.rlim_max : 8 * DP_MAX_CONNS;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    for (int i = 0; i < DP_MAX_CONNS; i++)
        cs[i] = client();
    daemon_end(DP_MAX_CONNS - 1);
    ck_assert_uint_eq(dp_active(P), DP_MAX_CONNS);
    int c = client();
    get_head(c, head, sizeof(head));
    ck_assert_msg(strncmp(head, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0, "answer '%s'",
                  head);
    close(c);
    for (int i = 0; i < DP_MAX_CONNS; i++)
        close(cs[i]);
}
END_TEST

START_TEST(test_stop_ends_open_streams)
{
    int c = client();
    put(c, "POST /containers/a/attach?stdin=1 HTTP/1.1\r\nUpgrade: tcp\r\nConnection: "
           "Upgrade\r\n\r\n");
    daemon_end(0);
    int c2 = client();
    daemon_end(1);
    dp_stop(P); /* must not wait for the clients or the daemon */
    P = NULL;
    expect_eof(c, "a hijacked client after dp_stop");
    expect_eof(c2, "an idle client after dp_stop");
    struct stat st;
    ck_assert_int_eq(stat(sock, &st), -1);
    close(c);
    close(c2);
}
END_TEST

START_TEST(test_listen_socket_is_private_and_live_one_refused)
{
    struct stat st;
    char err[256];
    struct dp_config cfg = {.listen_path = sock,
                            .connect_upstream = fake_connect,
                            .connect_arg = &F,
                            .rewrite_bind = fake_rewrite,
                            .log = quiet_log};

    ck_assert_int_eq(stat(sock, &st), 0);
    ck_assert(S_ISSOCK(st.st_mode));
    ck_assert_uint_eq(st.st_mode & 0777, 0600);
    ck_assert_ptr_null(dp_start(&cfg, err, sizeof(err)));
    ck_assert_msg(strstr(err, "already listens"), "error: '%s'", err);

    /* a stale socket is replaced; a file that is not a socket is refused */
    char other[100];
    snprintf(other, sizeof(other), "%s/stale.sock", dir);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", other);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    cfg.listen_path = other;
    struct dp_proxy *p2 = dp_start(&cfg, err, sizeof(err));
    ck_assert_msg(p2 != NULL, "a stale socket: %s", err);
    dp_stop(p2);
    ck_assert_int_eq(stat(other, &st), -1);
    FILE *f = fopen(other, "w");
    fclose(f);
    ck_assert_ptr_null(dp_start(&cfg, err, sizeof(err)));
    ck_assert_msg(strstr(err, "not a socket"), "error: '%s'", err);
    unlink(other);
}
END_TEST

static TCase *tcase(Suite *s, const char *name, bool proxy)
{
    TCase *tc = tcase_create(name);
    if (proxy)
        tcase_add_checked_fixture(tc, proxy_setup, proxy_teardown);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    return tc;
}

static Suite *dockerproxy_suite(void)
{
    Suite *s = suite_create("dockerproxy");
    TCase *tc;

    tc = tcase(s, "rewrite", false);
    tcase_add_test(tc, test_binds_rewritten_with_ro_rw_and_z_options);
    tcase_add_test(tc, test_named_anonymous_and_relative_binds_pass_byte_for_byte);
    tcase_add_test(tc, test_mounts_bind_rewritten_volume_and_tmpfs_untouched);
    tcase_add_test(tc, test_missing_or_null_host_config_passes_unchanged);
    tcase_add_test(tc, test_invalid_json_is_400);
    tcase_add_test(tc, test_ill_typed_binds_and_mounts_are_400);
    tcase_add_test(tc, test_duplicate_keys_are_400);
    tcase_add_test(tc, test_keys_matched_without_case_like_dockerd);
    tcase_add_test(tc, test_callback_errors_map_to_status);
    tcase_add_test(tc, test_callback_error_without_message_gets_one);
    tcase_add_test(tc, test_callback_unusable_path_is_500);

    tc = tcase(s, "stream", true);
    tcase_add_test(tc, test_pipelined_requests_and_responses_pass_unchanged);
    tcase_add_test(tc, test_requests_split_byte_by_byte_pass_unchanged);
    tcase_add_test(tc, test_chunked_upload_passes_unchanged);
    tcase_add_test(tc, test_chunked_create_rewritten_with_content_length);
    tcase_add_test(tc, test_create_with_expect_continue_gets_100_from_the_proxy);
    tcase_add_test(tc, test_refused_create_answered_by_the_proxy_and_connection_kept);
    tcase_add_test(tc, test_upgrade_hijack_propagates_half_close);
    tcase_add_test(tc, test_attach_without_upgrade_header_hijacks);
    tcase_add_test(tc, test_exec_start_hijacks_unless_detached);
    tcase_add_test(tc, test_malformed_request_answered_400_and_closed);
    tcase_add_test(tc, test_client_gone_mid_request_ends_upstream_with_nothing_sent);
    tcase_add_test(tc, test_oversized_create_body_is_413);
    tcase_add_test(tc, test_unreachable_daemon_is_502);
    tcase_add_test(tc, test_activity_and_active_counters);
    tcase_add_test(tc, test_connections_over_the_limit_get_503);
    tcase_add_test(tc, test_stop_ends_open_streams);
    tcase_add_test(tc, test_listen_socket_is_private_and_live_one_refused);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(dockerproxy_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
