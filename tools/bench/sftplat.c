/* sftplat.c - latency and throughput of offload's SFTP client against a server, without FUSE.
 *
 *   sftplat [-F ssh_config] DEST FILE LEN DEPTH COUNT
 *
 * Reads COUNT blocks of LEN bytes at pseudo-random 64 KiB-aligned offsets of FILE, keeping
 * DEPTH requests in flight, and prints the mean time per request and the throughput. DEPTH 1
 * measures latency; a deep pipeline measures what one SSH session can move.
 */
#include "sftp_client.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int inflight, failed;
static long long total;

static void done(void *arg, int err, const uint8_t *data, uint32_t n)
{
    (void)arg, (void)data;
    pthread_mutex_lock(&mu);
    inflight--;
    if (err)
        failed++;
    total += n;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv)
{
    struct tun_sftp_opts o;
    struct tun_sftp_attr a;
    struct tun_sftp_handle h;
    struct timespec t0, t1;
    tun_sftp_t *s;
    char err[512];
    int i = 1;

    memset(&o, 0, sizeof(o));
    if (argc > 2 && strcmp(argv[1], "-F") == 0) {
        o.ssh.ssh_config = argv[2];
        i = 3;
    }
    if (argc - i != 5) {
        fprintf(stderr, "usage: sftplat [-F ssh_config] DEST FILE LEN DEPTH COUNT\n");
        return 2;
    }
    o.ssh.dest = argv[i];
    const char *file = argv[i + 1];
    uint32_t len = (uint32_t)atoi(argv[i + 2]);
    int depth = atoi(argv[i + 3]), count = atoi(argv[i + 4]);
    if (len == 0 || len > TUN_SFTP_READ_MAX || depth < 1 || count < 1) {
        fprintf(stderr, "sftplat: LEN 1..%d, DEPTH >= 1, COUNT >= 1\n", TUN_SFTP_READ_MAX);
        return 2;
    }
    if (tun_sftp_start(&o, &s, err, sizeof(err)) != 0) {
        fprintf(stderr, "sftplat: %s\n", err);
        return 1;
    }
    if (tun_sftp_stat(s, file, &a) != 0 || tun_sftp_open(s, file, &h) != 0) {
        fprintf(stderr, "sftplat: cannot open '%s'\n", file);
        tun_sftp_stop(s);
        return 1;
    }
    uint64_t blocks = a.size / 65536 ? a.size / 65536 : 1, x = 88172645463325252ULL;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pthread_mutex_lock(&mu);
    for (int sent = 0; sent < count || inflight > 0;) {
        while (sent < count && inflight < depth) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            inflight++;
            sent++;
            pthread_mutex_unlock(&mu);
            if (tun_sftp_read_async(s, &h, (x % blocks) * 65536, len, done, NULL) != 0)
                done(NULL, -1, NULL, 0);
            pthread_mutex_lock(&mu);
        }
        if (inflight > 0)
            pthread_cond_wait(&cv, &mu);
    }
    pthread_mutex_unlock(&mu);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double sec = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%d reads of %u bytes, depth %d: %.3f ms per read, %.1f MB/s, %d failed\n", count, len,
           depth, sec * 1e3 / count, (double)total / sec / 1e6, failed);
    tun_sftp_close(s, &h);
    tun_sftp_stop(s);
    return failed ? 1 : 0;
}
