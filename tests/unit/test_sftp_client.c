/* test_sftp_client.c - unit tests of the SFTP client's request encoding (tunnel/sftp_client.h).
 *
 * tun_sftp_op_encode builds exactly the packets tun_sftp_op_async and the synchronous write-side
 * calls send. Each test decodes what it built field by field with the codec; the last ones hand the
 * packets to our own server (sftp_server.h) on a temporary directory and check the disk, which
 * proves the field order (SYMLINK's above all) against a real parser.
 */
#include "sftp_client.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sftp_server.h"

#define PKT_MAX  (256 * 1024 + 1024) /* what sftp_client.c gives its request buffers */
#define ALL_EXTS (TUN_SFTP_EXT_POSIX_RENAME | TUN_SFTP_EXT_HARDLINK | TUN_SFTP_EXT_FSYNC)

static struct buf out;
static struct buf pl; /* payload of the packet taken by take() */

static void setup(void)
{
    buf_init(&out, PKT_MAX);
}

static void teardown(void)
{
    buf_free(&out);
}

static struct tun_sftp_handle handle_of(const char *bytes)
{
    struct tun_sftp_handle h = {.gen = 7, .len = (uint32_t)strlen(bytes)};
    memcpy(h.data, bytes, h.len);
    return h;
}

/* Encode op with id 42 and take the packet back: its type is returned, its payload is in pl. */
static uint8_t encode_take(const struct tun_sftp_op *op, unsigned exts)
{
    uint8_t type;
    uint32_t id;
    int r = tun_sftp_op_encode(op, exts, 42, &out);

    ck_assert_msg(r == 0, "encode op %d: expected 0, got %d (%s)", op->type, r, strerror(-r));
    r = sfc_get_packet(&out, PKT_MAX, &type, &id, &pl);
    ck_assert_msg(r == 0, "the encoded packet does not parse: %d", r);
    ck_assert_uint_eq(id, 42);
    ck_assert_uint_eq(buf_avail(&out), 0);
    return type;
}

static void expect_str(const char *want, const char *what)
{
    const uint8_t *p;
    uint32_t n;

    ck_assert_msg(buf_get_string(&pl, &p, &n) == 0, "%s: expected '%s', got end of packet", what,
                  want);
    ck_assert_msg(n == strlen(want) && memcmp(p, want, n) == 0, "%s: expected '%s', got '%.*s'",
                  what, want, (int)n, (const char *)p);
}

static void expect_end(void)
{
    ck_assert_msg(buf_avail(&pl) == 0, "expected the end of the packet, %zu bytes remain",
                  buf_avail(&pl));
}

static void expect_encode_fails(const struct tun_sftp_op *op, unsigned exts, int want)
{
    static const uint8_t before[] = {1, 2, 3, 4, 5};
    int r;

    buf_reset(&out);
    ck_assert_int_eq(buf_put(&out, before, sizeof(before)), 0);
    r = tun_sftp_op_encode(op, exts, 1, &out);
    ck_assert_msg(r == want, "op %d: expected %d (%s), got %d (%s)", op->type, want,
                  strerror(-want), r, strerror(-r));
    ck_assert_msg(buf_avail(&out) == sizeof(before) && memcmp(buf_ptr(&out), before, 5) == 0,
                  "op %d: a refused encode changed the buffer (%zu bytes)", op->type,
                  buf_avail(&out));
}

START_TEST(test_setstat_is_path_then_attrs)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_SETSTAT,
                             .path = "/d/f",
                             .attr = {.flags = TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_ACMODTIME,
                                      .size = 12345,
                                      .atime = 1000000000,
                                      .mtime = 1234567890}};
    struct tun_sftp_attr a;

    ck_assert_uint_eq(encode_take(&op, 0), SFC_SETSTAT);
    expect_str("/d/f", "path");
    ck_assert_int_eq(sfc_get_attr(&pl, &a), 0);
    ck_assert_uint_eq(a.flags, TUN_SFTP_ATTR_SIZE | TUN_SFTP_ATTR_ACMODTIME);
    ck_assert_uint_eq(a.size, 12345);
    ck_assert_uint_eq(a.atime, 1000000000);
    ck_assert_uint_eq(a.mtime, 1234567890);
    expect_end();
}
END_TEST

START_TEST(test_fsetstat_is_handle_then_attrs)
{
    struct tun_sftp_handle h = handle_of("H\001\002");
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_FSETSTAT,
                             .h = &h,
                             .attr = {.flags = TUN_SFTP_ATTR_PERMISSIONS, .perm = 0640}};
    struct tun_sftp_attr a;

    ck_assert_uint_eq(encode_take(&op, 0), SFC_FSETSTAT);
    expect_str("H\001\002", "handle");
    ck_assert_int_eq(sfc_get_attr(&pl, &a), 0);
    ck_assert_uint_eq(a.flags, TUN_SFTP_ATTR_PERMISSIONS);
    ck_assert_uint_eq(a.perm, 0640);
    expect_end();
}
END_TEST

START_TEST(test_remove_and_rmdir_are_a_path)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_REMOVE, .path = "a b/ü"};

    ck_assert_uint_eq(encode_take(&op, 0), SFC_REMOVE);
    expect_str("a b/ü", "path");
    expect_end();
    op.type = TUN_SFTP_OP_RMDIR;
    ck_assert_uint_eq(encode_take(&op, 0), SFC_RMDIR);
    expect_str("a b/ü", "path");
    expect_end();
}
END_TEST

START_TEST(test_mkdir_sends_only_the_permission_bits)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_MKDIR, .path = "/d", .mode = 040755};
    struct tun_sftp_attr a;

    ck_assert_uint_eq(encode_take(&op, 0), SFC_MKDIR);
    expect_str("/d", "path");
    ck_assert_int_eq(sfc_get_attr(&pl, &a), 0);
    ck_assert_uint_eq(a.flags, TUN_SFTP_ATTR_PERMISSIONS);
    ck_assert_uint_eq(a.perm, 0755);
    expect_end();
}
END_TEST

START_TEST(test_rename_replace_uses_posix_rename)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_RENAME, .path = "/old", .to = "/new"};

    ck_assert_uint_eq(encode_take(&op, TUN_SFTP_EXT_POSIX_RENAME), SFC_EXTENDED);
    expect_str("posix-rename@openssh.com", "extension name");
    expect_str("/old", "old path");
    expect_str("/new", "new path");
    expect_end();
}
END_TEST

START_TEST(test_rename_replace_without_posix_rename_is_eopnotsupp)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_RENAME, .path = "/old", .to = "/new"};

    expect_encode_fails(&op, ALL_EXTS & ~TUN_SFTP_EXT_POSIX_RENAME, -EOPNOTSUPP);
}
END_TEST

START_TEST(test_rename_noreplace_is_plain_rename)
{
    struct tun_sftp_op op = {
        .type = TUN_SFTP_OP_RENAME, .path = "/old", .to = "/new", .flags = RENAME_NOREPLACE};

    /* with or without posix-rename: plain RENAME is the one that refuses an existing target */
    ck_assert_uint_eq(encode_take(&op, ALL_EXTS), SFC_RENAME);
    expect_str("/old", "old path");
    expect_str("/new", "new path");
    expect_end();
    ck_assert_uint_eq(encode_take(&op, 0), SFC_RENAME);
}
END_TEST

START_TEST(test_rename_exchange_and_unknown_flags_are_einval)
{
    struct tun_sftp_op op = {
        .type = TUN_SFTP_OP_RENAME, .path = "/a", .to = "/b", .flags = RENAME_EXCHANGE};

    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.flags = RENAME_NOREPLACE | RENAME_EXCHANGE;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.flags = RENAME_WHITEOUT;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.flags = 0x80000000u;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
}
END_TEST

START_TEST(test_symlink_sends_target_then_link)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_SYMLINK, .path = "/dir/link", .target = "../t"};

    ck_assert_uint_eq(encode_take(&op, 0), SFC_SYMLINK);
    expect_str("../t", "first string: the target (OpenSSH's order)");
    expect_str("/dir/link", "second string: the link path");
    expect_end();
}
END_TEST

START_TEST(test_hardlink_uses_extension)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_HARDLINK, .path = "/a", .to = "/b"};

    ck_assert_uint_eq(encode_take(&op, TUN_SFTP_EXT_HARDLINK), SFC_EXTENDED);
    expect_str("hardlink@openssh.com", "extension name");
    expect_str("/a", "existing path");
    expect_str("/b", "new link");
    expect_end();
}
END_TEST

START_TEST(test_hardlink_not_announced_is_eopnotsupp)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_HARDLINK, .path = "/a", .to = "/b"};

    expect_encode_fails(&op, ALL_EXTS & ~TUN_SFTP_EXT_HARDLINK, -EOPNOTSUPP);
}
END_TEST

START_TEST(test_fsync_uses_extension_with_handle)
{
    struct tun_sftp_handle h = handle_of("12345678");
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_FSYNC, .h = &h};

    ck_assert_uint_eq(encode_take(&op, TUN_SFTP_EXT_FSYNC), SFC_EXTENDED);
    expect_str("fsync@openssh.com", "extension name");
    expect_str("12345678", "handle");
    expect_end();
}
END_TEST

START_TEST(test_fsync_not_announced_is_eopnotsupp)
{
    struct tun_sftp_handle h = handle_of("12345678");
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_FSYNC, .h = &h};

    expect_encode_fails(&op, ALL_EXTS & ~TUN_SFTP_EXT_FSYNC, -EOPNOTSUPP);
}
END_TEST

START_TEST(test_close_is_the_handle)
{
    struct tun_sftp_handle h = handle_of("hh");
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_CLOSE, .h = &h};

    ck_assert_uint_eq(encode_take(&op, 0), SFC_CLOSE);
    expect_str("hh", "handle");
    expect_end();
}
END_TEST

START_TEST(test_write_is_handle_offset_data)
{
    static uint8_t data[TUN_SFTP_WRITE_MAX];
    struct tun_sftp_handle h = handle_of("W");
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_WRITE,
                             .h = &h,
                             .off = 0x0102030405060708ull,
                             .data = data,
                             .len = sizeof(data)};
    const uint8_t *p;
    uint64_t off;
    uint32_t n;

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7 + 3);
    ck_assert_uint_eq(encode_take(&op, 0), SFC_WRITE);
    expect_str("W", "handle");
    ck_assert_int_eq(buf_get_u64(&pl, &off), 0);
    ck_assert_uint_eq(off, 0x0102030405060708ull);
    ck_assert_int_eq(buf_get_string(&pl, &p, &n), 0);
    ck_assert_uint_eq(n, sizeof(data));
    ck_assert_msg(memcmp(p, data, n) == 0, "written data differs from the data given");
    expect_end();
}
END_TEST

START_TEST(test_write_of_zero_bytes_has_empty_data)
{
    struct tun_sftp_handle h = handle_of("W");
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_WRITE, .h = &h, .off = 5};
    const uint8_t *p;
    uint64_t off;
    uint32_t n;

    ck_assert_uint_eq(encode_take(&op, 0), SFC_WRITE);
    expect_str("W", "handle");
    ck_assert_int_eq(buf_get_u64(&pl, &off), 0);
    ck_assert_int_eq(buf_get_string(&pl, &p, &n), 0);
    ck_assert_uint_eq(n, 0);
    expect_end();
}
END_TEST

START_TEST(test_write_over_max_is_einval)
{
    static uint8_t data[TUN_SFTP_WRITE_MAX + 1];
    struct tun_sftp_handle h = handle_of("W");
    struct tun_sftp_op op = {
        .type = TUN_SFTP_OP_WRITE, .h = &h, .data = data, .len = TUN_SFTP_WRITE_MAX + 1};

    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.data = NULL; /* len without data */
    op.len = 10;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
}
END_TEST

START_TEST(test_bad_handle_is_einval)
{
    static const enum tun_sftp_op_type types[] = {TUN_SFTP_OP_FSETSTAT, TUN_SFTP_OP_FSYNC,
                                                  TUN_SFTP_OP_CLOSE, TUN_SFTP_OP_WRITE};
    struct tun_sftp_handle h = handle_of("x");

    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        struct tun_sftp_op op = {.type = types[i]};
        expect_encode_fails(&op, ALL_EXTS, -EINVAL); /* no handle */
        op.h = &h;
        h.len = 0;
        expect_encode_fails(&op, ALL_EXTS, -EINVAL);
        h.len = TUN_SFTP_HANDLE_MAX + 1;
        expect_encode_fails(&op, ALL_EXTS, -EINVAL);
        h.len = UINT32_MAX;
        expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    }
}
END_TEST

START_TEST(test_missing_strings_are_einval)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_SETSTAT};

    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.type = TUN_SFTP_OP_REMOVE;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.type = TUN_SFTP_OP_MKDIR;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.type = TUN_SFTP_OP_RMDIR;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_RENAME, .path = "/a"}; /* no new name */
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_HARDLINK, .to = "/b"}; /* no old name */
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_SYMLINK, .path = "/l"}; /* no target */
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_SYMLINK, .target = "t"}; /* no link path */
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
}
END_TEST

START_TEST(test_unknown_type_is_einval)
{
    struct tun_sftp_op op = {.path = "/a", .to = "/b", .target = "t"};

    op.type = 0;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.type = TUN_SFTP_OP_WRITE + 1;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
    op.type = (enum tun_sftp_op_type) - 1;
    expect_encode_fails(&op, ALL_EXTS, -EINVAL);
}
END_TEST

START_TEST(test_path_too_long_for_packet_is_enametoolong_and_out_unchanged)
{
    char *big = malloc(PKT_MAX);
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_RENAME, .path = "/a", .to = big};

    ck_assert_ptr_nonnull(big);
    memset(big, 'x', PKT_MAX - 1);
    big[PKT_MAX - 1] = '\0';
    expect_encode_fails(&op, ALL_EXTS, -ENAMETOOLONG); /* fails in the middle of the packet */
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_SYMLINK, .path = "/l", .target = big};
    expect_encode_fails(&op, ALL_EXTS, -ENAMETOOLONG);
    free(big);
}
END_TEST

START_TEST(test_tight_buffer_takes_whole_packet_or_nothing)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_REMOVE, .path = "/abc"};
    size_t whole = 4 + 1 + 4 + 4 + 4; /* length, type, id, path */
    uint8_t type;
    uint32_t id;

    for (size_t max = 0; max < whole; max++) {
        buf_free(&out);
        buf_init(&out, max);
        ck_assert_int_eq(tun_sftp_op_encode(&op, 0, 1, &out), -ENAMETOOLONG);
        ck_assert_uint_eq(buf_avail(&out), 0);
    }
    buf_free(&out);
    buf_init(&out, whole);
    ck_assert_int_eq(tun_sftp_op_encode(&op, 0, 9, &out), 0);
    ck_assert_int_eq(sfc_get_packet(&out, PKT_MAX, &type, &id, &pl), 0);
    ck_assert_uint_eq(type, SFC_REMOVE);
    ck_assert_uint_eq(id, 9);
}
END_TEST

START_TEST(test_packets_append_after_existing_content)
{
    struct tun_sftp_op a = {.type = TUN_SFTP_OP_MKDIR, .path = "/a", .mode = 0700};
    struct tun_sftp_op b = {.type = TUN_SFTP_OP_RMDIR, .path = "/b"};
    uint8_t type;
    uint32_t id;

    ck_assert_int_eq(tun_sftp_op_encode(&a, 0, 1, &out), 0);
    ck_assert_int_eq(tun_sftp_op_encode(&b, 0, 2, &out), 0);
    ck_assert_int_eq(sfc_get_packet(&out, PKT_MAX, &type, &id, &pl), 0);
    ck_assert_uint_eq(type, SFC_MKDIR);
    ck_assert_uint_eq(id, 1);
    ck_assert_int_eq(sfc_get_packet(&out, PKT_MAX, &type, &id, &pl), 0);
    ck_assert_uint_eq(type, SFC_RMDIR);
    ck_assert_uint_eq(id, 2);
    expect_str("/b", "second packet's path");
    ck_assert_uint_eq(buf_avail(&out), 0);
}
END_TEST

/* ---- against our own server ---- */

static char dir[64];
static cf_root_t *root;
static sfs_t *srv;
static struct buf rx, tx;
static uint32_t next_id;

static void srv_setup(void)
{
    struct sfs_root rr = {"r", NULL};
    uint8_t init[] = {0, 0, 0, 5, SFC_INIT, 0, 0, 0, 3};

    snprintf(dir, sizeof(dir), "/tmp/test_sftp_client.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    ck_assert_int_eq(cf_open_root(dir, false, &root), 0);
    rr.root = root;
    ck_assert_int_eq(sfs_new(&rr, 1, &srv), 0);
    buf_init(&rx, PKT_MAX * 2);
    buf_init(&tx, 4 * (size_t)SFS_REPLY_MAX);
    buf_init(&out, PKT_MAX);
    ck_assert_int_eq(buf_put(&rx, init, sizeof(init)), 0);
    ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
    buf_reset(&tx); /* the VERSION */
    next_id = 0;
}

static void srv_teardown(void)
{
    char cmd[128];

    sfs_free(srv);
    cf_close_root(root);
    buf_free(&rx);
    buf_free(&tx);
    buf_free(&out);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

/* Hand the server one packet from rx and return the reply's type; its payload goes to pl. */
static uint8_t serve(uint32_t id)
{
    static uint8_t copy[SFS_REPLY_MAX];
    struct buf p;
    uint8_t type;
    uint32_t rid;

    ck_assert_int_eq(sfs_process(srv, &rx, &tx), 0);
    ck_assert_int_eq(sfc_get_packet(&tx, SFS_REPLY_MAX, &type, &rid, &p), 0);
    ck_assert_uint_eq(rid, id);
    memcpy(copy, buf_ptr(&p) ? buf_ptr(&p) : copy, buf_avail(&p));
    buf_view(&pl, copy, buf_avail(&p));
    buf_reset(&tx);
    return type;
}

/* Run op on the server; the status code it answers. */
static uint32_t run_op(const struct tun_sftp_op *op)
{
    uint32_t id = ++next_id, code;

    ck_assert_int_eq(tun_sftp_op_encode(op, ALL_EXTS, id, &rx), 0);
    ck_assert_uint_eq(serve(id), SFC_STATUS);
    ck_assert_int_eq(sfc_get_status(&pl, &code), 0);
    return code;
}

static void expect_op(const struct tun_sftp_op *op, uint32_t want)
{
    uint32_t got = run_op(op);
    ck_assert_msg(got == want, "op %d on '%s': expected status %u, got %u", op->type,
                  op->path ? op->path : "(handle)", want, got);
}

static void disk(char *p, const char *rel)
{
    snprintf(p, PATH_MAX, "%s/%s", dir, rel);
}

static void put(const char *rel, const char *content)
{
    char p[PATH_MAX];
    FILE *f;

    disk(p, rel);
    ck_assert_ptr_nonnull(f = fopen(p, "w"));
    fputs(content, f);
    fclose(f);
}

static void expect_content(const char *rel, const char *want)
{
    char p[PATH_MAX], got[256] = "";
    FILE *f;
    size_t n;

    disk(p, rel);
    f = fopen(p, "r");
    ck_assert_msg(f != NULL, "'%s' missing: %s", rel, strerror(errno));
    n = fread(got, 1, sizeof(got) - 1, f);
    got[n] = '\0';
    fclose(f);
    ck_assert_msg(strcmp(got, want) == 0, "'%s': expected '%s', got '%s'", rel, want, got);
}

static bool exists(const char *rel)
{
    char p[PATH_MAX];
    struct stat st;

    disk(p, rel);
    return lstat(p, &st) == 0;
}

START_TEST(test_server_makes_symlink_with_given_target_at_given_path)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_SYMLINK, .path = "/r/link", .target = "../t/x"};
    char p[PATH_MAX], got[PATH_MAX];
    ssize_t n;

    expect_op(&op, SFC_OK);
    disk(p, "link");
    n = readlink(p, got, sizeof(got) - 1);
    ck_assert_msg(n >= 0, "no symlink at 'link': %s", strerror(errno));
    got[n] = '\0';
    ck_assert_str_eq(got, "../t/x");
    ck_assert(!exists("../t/x") && !exists("t"));
    expect_op(&op, SFC_FAILURE); /* it exists now */
}
END_TEST

START_TEST(test_server_renames_replace_and_noreplace_as_encoded)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_RENAME, .path = "/r/a", .to = "/r/b"};

    put("a", "A");
    put("b", "B");
    op.flags = RENAME_NOREPLACE;
    expect_op(&op, SFC_FAILURE);
    expect_content("a", "A");
    expect_content("b", "B");
    op.flags = 0;
    expect_op(&op, SFC_OK);
    ck_assert(!exists("a"));
    expect_content("b", "A");
    op = (struct tun_sftp_op){
        .type = TUN_SFTP_OP_RENAME, .path = "/r/b", .to = "/r/c", .flags = RENAME_NOREPLACE};
    expect_op(&op, SFC_OK);
    expect_content("c", "A");
}
END_TEST

START_TEST(test_server_hardlinks_mkdirs_chmods_removes_as_encoded)
{
    struct tun_sftp_op op = {.type = TUN_SFTP_OP_HARDLINK, .path = "/r/f", .to = "/r/g"};
    char p[PATH_MAX], q[PATH_MAX];
    struct stat a, b;

    put("f", "F");
    expect_op(&op, SFC_OK);
    disk(p, "f");
    disk(q, "g");
    ck_assert_int_eq(stat(p, &a), 0);
    ck_assert_int_eq(stat(q, &b), 0);
    ck_assert_uint_eq(a.st_ino, b.st_ino);
    ck_assert_uint_eq(a.st_nlink, 2);

    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_MKDIR, .path = "/r/d", .mode = 0700};
    expect_op(&op, SFC_OK);
    disk(p, "d");
    ck_assert_int_eq(stat(p, &a), 0);
    ck_assert(S_ISDIR(a.st_mode));
    ck_assert_uint_eq(a.st_mode & 07777, 0700);

    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_SETSTAT,
                              .path = "/r/g",
                              .attr = {.flags = TUN_SFTP_ATTR_PERMISSIONS | TUN_SFTP_ATTR_ACMODTIME,
                                       .perm = 0604,
                                       .atime = 1000000000,
                                       .mtime = 1234567890}};
    expect_op(&op, SFC_OK);
    ck_assert_int_eq(stat(q, &b), 0);
    ck_assert_uint_eq(b.st_mode & 07777, 0604);
    ck_assert_int_eq(b.st_mtime, 1234567890);
    ck_assert_int_eq(b.st_atime, 1000000000);

    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_REMOVE, .path = "/r/f"};
    expect_op(&op, SFC_OK);
    ck_assert(!exists("f"));
    expect_op(&op, SFC_NO_SUCH_FILE);
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_RMDIR, .path = "/r/d"};
    expect_op(&op, SFC_OK);
    ck_assert(!exists("d"));
}
END_TEST

START_TEST(test_server_writes_fsyncs_truncates_closes_through_encoded_handle)
{
    struct tun_sftp_attr create = {.flags = TUN_SFTP_ATTR_PERMISSIONS, .perm = 0600};
    struct tun_sftp_handle h;
    const uint8_t *p;
    uint32_t id = ++next_id, n;
    size_t mark;

    ck_assert_int_eq(sfc_put_begin(&rx, SFC_OPEN, id, &mark), 0);
    ck_assert_int_eq(buf_put_cstring(&rx, "/r/w"), 0);
    ck_assert_int_eq(buf_put_u32(&rx, SFC_FXF_WRITE | SFC_FXF_CREAT | SFC_FXF_EXCL), 0);
    ck_assert_int_eq(sfc_put_attr(&rx, &create), 0);
    sfc_put_end(&rx, mark);
    ck_assert_uint_eq(serve(id), SFC_HANDLE);
    ck_assert_int_eq(buf_get_string(&pl, &p, &n), 0);
    ck_assert(n > 0 && n <= TUN_SFTP_HANDLE_MAX);
    memcpy(h.data, p, n);
    h.len = n;
    h.gen = 1;

    struct tun_sftp_op op = {
        .type = TUN_SFTP_OP_WRITE, .h = &h, .off = 3, .data = "world", .len = 5};
    expect_op(&op, SFC_OK);
    op.off = 0;
    op.data = "hel";
    op.len = 3;
    expect_op(&op, SFC_OK);
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_FSYNC, .h = &h};
    expect_op(&op, SFC_OK);
    op = (struct tun_sftp_op){
        .type = TUN_SFTP_OP_FSETSTAT, .h = &h, .attr = {.flags = TUN_SFTP_ATTR_SIZE, .size = 5}};
    expect_op(&op, SFC_OK);
    op = (struct tun_sftp_op){.type = TUN_SFTP_OP_CLOSE, .h = &h};
    expect_op(&op, SFC_OK);
    expect_content("w", "helwo");
    expect_op(&op, SFC_FAILURE); /* closed: the handle is stale */
}
END_TEST

static Suite *sftp_client_suite(void)
{
    Suite *s = suite_create("sftp_client");
    TCase *tc = tcase_create("encode");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_setstat_is_path_then_attrs);
    tcase_add_test(tc, test_fsetstat_is_handle_then_attrs);
    tcase_add_test(tc, test_remove_and_rmdir_are_a_path);
    tcase_add_test(tc, test_mkdir_sends_only_the_permission_bits);
    tcase_add_test(tc, test_rename_replace_uses_posix_rename);
    tcase_add_test(tc, test_rename_replace_without_posix_rename_is_eopnotsupp);
    tcase_add_test(tc, test_rename_noreplace_is_plain_rename);
    tcase_add_test(tc, test_rename_exchange_and_unknown_flags_are_einval);
    tcase_add_test(tc, test_symlink_sends_target_then_link);
    tcase_add_test(tc, test_hardlink_uses_extension);
    tcase_add_test(tc, test_hardlink_not_announced_is_eopnotsupp);
    tcase_add_test(tc, test_fsync_uses_extension_with_handle);
    tcase_add_test(tc, test_fsync_not_announced_is_eopnotsupp);
    tcase_add_test(tc, test_close_is_the_handle);
    tcase_add_test(tc, test_write_is_handle_offset_data);
    tcase_add_test(tc, test_write_of_zero_bytes_has_empty_data);
    tcase_add_test(tc, test_write_over_max_is_einval);
    tcase_add_test(tc, test_bad_handle_is_einval);
    tcase_add_test(tc, test_missing_strings_are_einval);
    tcase_add_test(tc, test_unknown_type_is_einval);
    tcase_add_test(tc, test_path_too_long_for_packet_is_enametoolong_and_out_unchanged);
    tcase_add_test(tc, test_tight_buffer_takes_whole_packet_or_nothing);
    tcase_add_test(tc, test_packets_append_after_existing_content);
    suite_add_tcase(s, tc);

    tc = tcase_create("our_server");
    tcase_add_checked_fixture(tc, srv_setup, srv_teardown);
    tcase_add_test(tc, test_server_makes_symlink_with_given_target_at_given_path);
    tcase_add_test(tc, test_server_renames_replace_and_noreplace_as_encoded);
    tcase_add_test(tc, test_server_hardlinks_mkdirs_chmods_removes_as_encoded);
    tcase_add_test(tc, test_server_writes_fsyncs_truncates_closes_through_encoded_handle);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(sftp_client_suite());
    int failed;

    srunner_run_all(sr, CK_ENV);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
