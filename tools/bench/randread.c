/*
 * randread: random aligned preads from one file, for tools/bench/loopback.
 *
 *   randread FILE [COUNT=2000] [SIZE=4096] [SEED=1]
 *
 * Reads COUNT blocks of SIZE bytes at offsets drawn from a seeded splitmix64,
 * aligned to SIZE, anywhere in the file; the same seed gives the same offsets.
 * Exits 0 when every read returned its full block, 1 on any error or short
 * read. Prints "COUNT reads, BYTES bytes" on stdout.
 *
 * Built by the bench script with `cc -O2`; no dependencies beyond libc.
 */
#define _POSIX_C_SOURCE   200809L
#define _FILE_OFFSET_BITS 64
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static unsigned long long num(const char *s, const char *what)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || *end || end == s || v == 0) {
        fprintf(stderr, "randread: bad %s '%s'\n", what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    unsigned long long count = 2000, size = 4096, i, total = 0;
    uint64_t seed = 1, blocks;
    struct stat st;
    char *buf;
    int fd;

    if (argc < 2 || argc > 5) {
        fprintf(stderr, "usage: randread FILE [COUNT=2000] [SIZE=4096] [SEED=1]\n");
        return 2;
    }
    if (argc > 2)
        count = num(argv[2], "count");
    if (argc > 3)
        size = num(argv[3], "size");
    if (argc > 4)
        seed = num(argv[4], "seed");
    if (size > (64u << 20) || !(buf = malloc(size))) {
        fprintf(stderr, "randread: block size %llu too large\n", size);
        return 2;
    }
    fd = open(argv[1], O_RDONLY);
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "randread: cannot open '%s': %s\n", argv[1], strerror(errno));
        return 1;
    }
    blocks = (uint64_t)st.st_size / size;
    if (blocks == 0) {
        fprintf(stderr, "randread: '%s' is smaller than one block\n", argv[1]);
        return 1;
    }
    for (i = 0; i < count; i++) {
        off_t off = (off_t)((splitmix64(&seed) % blocks) * size);
        size_t got = 0;

        while (got < size) {
            ssize_t n = pread(fd, buf + got, size - got, off + (off_t)got);

            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                fprintf(stderr, "randread: cannot read '%s' at %lld: %s\n", argv[1], (long long)off,
                        n < 0 ? strerror(errno) : "short read");
                return 1;
            }
            got += (size_t)n;
        }
        total += got;
    }
    close(fd);
    free(buf);
    printf("%llu reads, %llu bytes\n", count, total);
    return 0;
}
