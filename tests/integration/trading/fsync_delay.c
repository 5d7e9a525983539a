/* A slow disk for the journal tests: fsync and fdatasync sleep KUBEQUANT_FSYNC_DELAY_MS (a decimal,
 * default 0) before the real call. Loaded with LD_PRELOAD into the trading runtime's process;
 * SQLite's commit (synchronous=FULL) fsyncs the WAL through these. The test compiles it:
 *     gcc -shared -fPIC -O2 -o libfsync_delay.so fsync_delay.c -ldl
 * KUBEQUANT_FSYNC_DELAY_PREFIX, if set, limits the delay to files whose path starts with it (the
 * journal's folder; the paper broker's record, the venue, keeps its own pace).
 * KUBEQUANT_FSYNC_COUNT_FILE, if set, names a file that gets the number of delayed calls at exit.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long delay_ns; /* nanoseconds */
static atomic_long calls;

static const char *prefix;

/* Whether fd is a file under KUBEQUANT_FSYNC_DELAY_PREFIX (always, without one). */
static int delayed(int fd) {
    if (!prefix || !*prefix) return 1;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 0) return 0;
    path[n] = '\0';
    return strncmp(path, prefix, strlen(prefix)) == 0;
}

/* Read the settings once, as the library loads (before any thread of the program runs). */
__attribute__((constructor)) static void configure(void) {
    const char *ms = getenv("KUBEQUANT_FSYNC_DELAY_MS");
    double value = ms ? atof(ms) : 0.0;
    prefix = getenv("KUBEQUANT_FSYNC_DELAY_PREFIX");
    delay_ns = value > 0 ? (long)(value * 1e6) : 0;
}

static void slow_down(int fd) {
    if (delay_ns <= 0) return;
    int saved = errno;
    if (!delayed(fd)) {
        errno = saved;
        return;
    }
    struct timespec left = {delay_ns / 1000000000L, delay_ns % 1000000000L};
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {
    }
    errno = saved;
    atomic_fetch_add(&calls, 1);
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow_down(fd);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow_down(fd);
    return real(fd);
}

__attribute__((destructor)) static void report(void) {
    const char *path = getenv("KUBEQUANT_FSYNC_COUNT_FILE");
    if (!path) return;
    FILE *out = fopen(path, "w");
    if (!out) return;
    fprintf(out, "%ld\n", atomic_load(&calls));
    fclose(out);
}
