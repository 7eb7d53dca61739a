/*
 * memtool: the benchmark's memory helpers, in C so they measure the machine rather
 * than an interpreter. Built by the bench with gcc -O2 (static, like memhog).
 *
 *   memtool warm MIB     touch MIB MiB of fresh anonymous memory, then free it. On this
 *                        VM freed guest memory goes back to the host, and touching it
 *                        again is 10x slower until the host has handed it back; this
 *                        untimed warm-up runs before every "warm" measurement, the same
 *                        for every tool.
 *   memtool memcpy MIB   memcpy bandwidth between two warmed MIB MiB buffers; prints
 *                        the best of several passes in bytes per second.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *fresh(size_t bytes) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("memtool: mmap");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: memtool warm|memcpy MIB\n");
        return 2;
    }
    size_t bytes = (size_t)strtoul(argv[2], NULL, 10) << 20;
    if (bytes == 0) return 2;
    if (!strcmp(argv[1], "warm")) {
        char *p = fresh(bytes);
        for (size_t i = 0; i < bytes; i += 4096) p[i] = (char)i;
        munmap(p, bytes);
        return 0;
    }
    if (!strcmp(argv[1], "memcpy")) {
        char *src = fresh(bytes), *dst = fresh(bytes);
        memset(src, 0x5a, bytes);
        memset(dst, 0xa5, bytes);
        double best = 0;
        double start = now();
        for (int pass = 0; pass < 20 && (pass < 3 || now() - start < 2.0); pass++) {
            double t0 = now();
            memcpy(dst, src, bytes);
            double t = now() - t0;
            __asm__ volatile("" : : "r"(dst) : "memory");
            if (t > 0 && bytes / t > best) best = bytes / t;
            src[pass] = (char)pass;
        }
        printf("%.0f\n", best);
        return 0;
    }
    fprintf(stderr, "memtool: unknown command %s\n", argv[1]);
    return 2;
}
