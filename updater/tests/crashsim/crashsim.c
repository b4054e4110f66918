/* Crash simulation for the crash-point sweep (updater/tests/crashpoints.rs), loaded with
 * LD_PRELOAD into the updater under test.
 *
 * Every write-like call (pwrite64/pwrite, write to a file descriptor above 2, fsync, fdatasync,
 * rename/renameat/renameat2) is one "operation". With CRASH_AT=N the process kills itself with
 * SIGKILL just before operation N (1-based); CRASH_AT=0 never crashes. At exit the number of
 * operations is written to $CRASH_COUNT_FILE, so a test can learn how many crash points a run
 * has.
 *
 * Writes to the disk image (the file whose path ends in $CRASH_DISK_SUFFIX) are held in memory,
 * as a disk's volatile write cache holds them, until fsync/fdatasync on that descriptor applies
 * them: a crash loses every write that was not flushed. Reads of that file see the held writes.
 * Other files (state files) go straight to the file system, whose rename is atomic.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>
#include <pthread.h>

static long crash_at = -1;
static long ops = 0;
static const char *disk_suffix = NULL;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

#define MAX_FDS 1024
static int is_disk[MAX_FDS];

struct pending { int fd; off_t off; size_t len; unsigned char *data; struct pending *next; };
static struct pending *held = NULL;

static void init(void) {
    static int done = 0;
    if (done) return;
    done = 1;
    const char *a = getenv("CRASH_AT");
    crash_at = a ? atol(a) : 0;
    disk_suffix = getenv("CRASH_DISK_SUFFIX");
}

static void op(void) {
    init();
    long n = __atomic_add_fetch(&ops, 1, __ATOMIC_SEQ_CST);
    if (crash_at > 0 && n == crash_at) kill(getpid(), SIGKILL);
}

__attribute__((destructor)) static void report(void) {
    const char *f = getenv("CRASH_COUNT_FILE");
    if (!f) return;
    FILE *o = fopen(f, "w");
    if (o) { fprintf(o, "%ld\n", ops); fclose(o); }
}

#define REAL(name, ret, ...) \
    static ret (*real_##name)(__VA_ARGS__); \
    if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name);

static void track(int fd, const char *path) {
    init();
    if (fd < 0 || fd >= MAX_FDS) return;
    size_t n = strlen(path), s = disk_suffix ? strlen(disk_suffix) : 0;
    is_disk[fd] = disk_suffix && n >= s && strcmp(path + n - s, disk_suffix) == 0;
}

int open64(const char *path, int flags, ...) {
    REAL(open64, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, mode_t); va_end(ap);
    int fd = real_open64(path, flags, mode);
    track(fd, path);
    return fd;
}

int open(const char *path, int flags, ...) {
    REAL(open, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, mode_t); va_end(ap);
    int fd = real_open(path, flags, mode);
    track(fd, path);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    REAL(openat, int, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, mode_t); va_end(ap);
    int fd = real_openat(dirfd, path, flags, mode);
    track(fd, path);
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    REAL(openat64, int, int, const char *, int, ...);
    va_list ap; va_start(ap, flags); mode_t mode = va_arg(ap, mode_t); va_end(ap);
    int fd = real_openat64(dirfd, path, flags, mode);
    track(fd, path);
    return fd;
}

int close(int fd) {
    REAL(close, int, int);
    if (fd >= 0 && fd < MAX_FDS) is_disk[fd] = 0;
    return real_close(fd);
}

static ssize_t hold(int fd, const void *buf, size_t len, off_t off) {
    struct pending *p = malloc(sizeof *p);
    p->data = malloc(len ? len : 1);
    memcpy(p->data, buf, len);
    p->fd = fd; p->off = off; p->len = len; p->next = NULL;
    pthread_mutex_lock(&lock);
    struct pending **t = &held;
    while (*t) t = &(*t)->next;
    *t = p;
    pthread_mutex_unlock(&lock);
    return (ssize_t)len;
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t);
    op();
    if (fd >= 0 && fd < MAX_FDS && is_disk[fd]) return hold(fd, buf, len, off);
    return real_pwrite64(fd, buf, len, off);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) { return pwrite64(fd, buf, len, off); }

ssize_t write(int fd, const void *buf, size_t len) {
    REAL(write, ssize_t, int, const void *, size_t);
    if (fd > 2) op();
    return real_write(fd, buf, len);
}

ssize_t pread64(int fd, void *buf, size_t len, off_t off) {
    REAL(pread64, ssize_t, int, void *, size_t, off_t);
    if (fd < 0 || fd >= MAX_FDS || !is_disk[fd]) return real_pread64(fd, buf, len, off);
    /* Read and overlay under the lock, so a concurrent drain cannot slip between the two. */
    pthread_mutex_lock(&lock);
    ssize_t r = real_pread64(fd, buf, len, off);
    if (r < 0) {
        pthread_mutex_unlock(&lock);
        return r;
    }
    /* Overlay the held writes that overlap [off, off + len), oldest first. */
    for (struct pending *p = held; p; p = p->next) {
        off_t a = p->off > off ? p->off : off;
        off_t b = (off_t)(p->off + p->len) < (off_t)(off + len) ? (off_t)(p->off + p->len) : (off_t)(off + len);
        if (a < b) memcpy((char *)buf + (a - off), p->data + (a - p->off), (size_t)(b - a));
    }
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t pread(int fd, void *buf, size_t len, off_t off) { return pread64(fd, buf, len, off); }

static int drain(int fd) {
    REAL(pwrite64, ssize_t, int, const void *, size_t, off_t);
    /* The lock stays held until every write is applied, so a concurrent pread (the install's
     * read-back thread) never sees a write neither held nor applied. */
    pthread_mutex_lock(&lock);
    struct pending *p = held;
    held = NULL;
    int rc = 0;
    while (p) {
        /* The cache is per disk, not per descriptor: any flush of the disk drains it all. */
        size_t done = 0;
        while (done < p->len) {
            ssize_t w = real_pwrite64(fd, p->data + done, p->len - done, p->off + (off_t)done);
            if (w <= 0) { rc = -1; break; }
            done += (size_t)w;
        }
        struct pending *n = p->next;
        free(p->data); free(p);
        p = n;
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

int fsync(int fd) {
    REAL(fsync, int, int);
    op();
    if (fd >= 0 && fd < MAX_FDS && is_disk[fd] && drain(fd) < 0) return -1;
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync, int, int);
    op();
    if (fd >= 0 && fd < MAX_FDS && is_disk[fd] && drain(fd) < 0) return -1;
    return real_fdatasync(fd);
}

int rename(const char *a, const char *b) {
    REAL(rename, int, const char *, const char *);
    op();
    return real_rename(a, b);
}

int renameat(int da, const char *a, int db, const char *b) {
    REAL(renameat, int, int, const char *, int, const char *);
    op();
    return real_renameat(da, a, db, b);
}

int renameat2(int da, const char *a, int db, const char *b, unsigned int flags) {
    REAL(renameat2, int, int, const char *, int, const char *, unsigned int);
    op();
    return real_renameat2(da, a, db, b, flags);
}
