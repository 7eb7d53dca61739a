/*
 * memhog: the benchmark's workload. Built static (gcc -static -O2) so the same binary
 * runs in a busybox rootfs, in a runc bundle and on the host.
 *
 *   memhog [-c] [-d DIR] [-t TAG] MIB
 *       Allocates MIB MiB of anonymous memory, fills it (incompressible splitmix64
 *       output, or with -c compressible data) and keeps a checksum. Then, every ~100 ms,
 *       it writes "NONCE COUNTER" to DIR/counter (atomically: temp file + rename).
 *       On SIGUSR1 it re-reads all its memory, compares with the checksum and writes
 *       "OK|BAD NONCE COUNTER" to DIR/result. NONCE is random per start, so a restored
 *       process proves it is the checkpointed one (a restarted one has a new nonce and a
 *       counter starting at 1). TAG is only there for the bench to find the process.
 *
 *   memhog --gen [-c] MIB
 *       Writes the same kind of data (MIB MiB) to stdout, for measuring zstd on it.
 *
 * Why C and static: the process must be the same, byte for byte, under every tool, and
 * must not depend on the rootfs's libraries.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t verify_requested;

static void on_usr1(int sig) {
    (void)sig;
    verify_requested = 1;
}

static inline uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Compressible variant: memory in 512-byte blocks, half of them (at random) random
 * bytes and half one 8-byte value repeated, so zstd -3 shrinks it to about half at its
 * usual speed (a finer-grained pattern, e.g. random letters, makes zstd pathologically
 * slow, which heap data is not). */
static void fill(uint64_t *words, size_t count, uint64_t seed, int comp) {
    uint64_t s = seed, block = 0;
    int repeat = 0;
    for (size_t i = 0; i < count; i++) {
        if (comp && i % 64 == 0) {
            block = splitmix64(&s);
            repeat = (int)(block & 1);
        }
        words[i] = repeat ? block : splitmix64(&s);
    }
}

/* Four independent lanes so the multiply chain does not serialise the whole scan. */
static uint64_t checksum(const uint64_t *words, size_t count) {
    uint64_t h[4] = {0xcbf29ce484222325ULL, 1, 2, 3};
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {
        for (int l = 0; l < 4; l++) {
            h[l] = (h[l] ^ words[i + l]) * 0x100000001b3ULL;
        }
    }
    for (; i < count; i++) h[0] = (h[0] ^ words[i]) * 0x100000001b3ULL;
    return h[0] ^ (h[1] * 3) ^ (h[2] * 5) ^ (h[3] * 7);
}

static void write_atomic(const char *dir, const char *name, const char *text) {
    char path[4096], tmp[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    size_t len = strlen(text);
    ssize_t n = write(fd, text, len);
    close(fd);
    if (n == (ssize_t)len) rename(tmp, path);
}

static int generate(size_t mib, int comp) {
    enum { CHUNK = 1 << 20 };
    uint64_t *buf = malloc(CHUNK);
    if (!buf) return 1;
    uint64_t seed = 0x5eed;
    for (size_t m = 0; m < mib; m++) {
        fill(buf, CHUNK / 8, seed + m * 0x1000193ULL, comp);
        size_t off = 0;
        while (off < CHUNK) {
            ssize_t n = write(1, (char *)buf + off, CHUNK - off);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return 1;
            off += (size_t)n;
        }
    }
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: memhog [-c] [-d DIR] [-t TAG] MIB | memhog --gen [-c] MIB\n");
    exit(2);
}

int main(int argc, char **argv) {
    int comp = 0, gen = 0;
    const char *dir = "/tmp";
    long mib = -1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-c")) comp = 1;
        else if (!strcmp(argv[i], "--gen")) gen = 1;
        else if (!strcmp(argv[i], "-d") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) i++; /* tag: only for ps */
        else if (argv[i][0] != '-') mib = strtol(argv[i], NULL, 10);
        else usage();
    }
    if (mib <= 0) usage();
    if (gen) return generate((size_t)mib, comp);

    uint64_t nonce = 0;
    if (getrandom(&nonce, sizeof nonce, 0) != sizeof nonce) nonce = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    nonce &= 0xffffffffffffULL;

    size_t bytes = (size_t)mib << 20;
    uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("memhog: mmap");
        return 1;
    }
    size_t count = bytes / 8;
    fill(mem, count, nonce, comp);
    const uint64_t sum = checksum(mem, count);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);

    char line[256];
    for (uint64_t counter = 1;; counter++) {
        snprintf(line, sizeof line, "%llu %llu\n", (unsigned long long)nonce, (unsigned long long)counter);
        write_atomic(dir, "counter", line);
        if (verify_requested) {
            verify_requested = 0;
            int ok = checksum(mem, count) == sum;
            snprintf(line, sizeof line, "%s %llu %llu\n", ok ? "OK" : "BAD", (unsigned long long)nonce,
                     (unsigned long long)counter);
            write_atomic(dir, "result", line);
        }
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL); /* EINTR from SIGUSR1 just shortens one period */
    }
}
