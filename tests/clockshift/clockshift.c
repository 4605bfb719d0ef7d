/*
 * clockshift: an LD_PRELOAD library that moves a process's realtime clock, for the uptime
 * tests (tests/uptime.rs natively, tests/qemu-user.sh under qemu-arm / qemu-aarch64).
 *
 * CLOCKSHIFT_FILE names a file holding an offset in seconds (a decimal integer, may be negative);
 * it is added to CLOCK_REALTIME and CLOCK_REALTIME_COARSE only, so monotonic time (timers,
 * tokio, Instant) runs on undisturbed, as it does when NTP steps a board's clock. The file is
 * re-read at most once a second (by the monotonic clock), so a test moves the clock while the
 * process runs by rewriting it. A missing or unreadable file means offset 0.
 *
 * Wrapped: clock_gettime, gettimeofday, time, and on 32-bit targets also their 64-bit-time
 * variants __clock_gettime64, __gettimeofday64 and __time64, which is what Rust's std calls on
 * armv7 glibc (Debian's libfaketime 0.9.10 does not wrap __clock_gettime64, hence this file).
 *
 * Build: gcc -shared -fPIC -O2 -o clockshift.so clockshift.c -ldl
 *        arm-linux-gnueabihf-gcc -shared -fPIC -O2 -o clockshift-armhf.so clockshift.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int64_t offset_s;      /* the offset in force */
static int64_t next_read_ns;  /* monotonic time of the next re-read */

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime(void) {
    static clock_gettime_fn fn;
    clock_gettime_fn f = __atomic_load_n(&fn, __ATOMIC_ACQUIRE);
    if (!f) {
        f = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
        __atomic_store_n(&fn, f, __ATOMIC_RELEASE);
    }
    return f;
}

/* The offset, re-read from CLOCKSHIFT_FILE at most once a second. Plain syscalls only: no stdio,
 * nothing that could ask for the time again. Two threads re-reading at once is harmless. */
static int64_t offset(void) {
    struct timespec now;
    if (real_clock_gettime()(CLOCK_MONOTONIC, &now) != 0)
        return __atomic_load_n(&offset_s, __ATOMIC_RELAXED);
    int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    if (now_ns >= __atomic_load_n(&next_read_ns, __ATOMIC_RELAXED)) {
        __atomic_store_n(&next_read_ns, now_ns + 1000000000, __ATOMIC_RELAXED);
        int64_t value = 0;
        const char *path = getenv("CLOCKSHIFT_FILE");
        int fd = path ? open(path, O_RDONLY | O_CLOEXEC) : -1;
        if (fd >= 0) {
            char buf[32];
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                value = strtoll(buf, NULL, 10);
            }
        }
        __atomic_store_n(&offset_s, value, __ATOMIC_RELAXED);
    }
    return __atomic_load_n(&offset_s, __ATOMIC_RELAXED);
}

static int is_realtime(clockid_t clock) {
    return clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE;
}

int clock_gettime(clockid_t clock, struct timespec *tp) {
    int rc = real_clock_gettime()(clock, tp);
    if (rc == 0 && is_realtime(clock))
        tp->tv_sec += (time_t)offset();
    return rc;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    typedef int (*fn_t)(struct timeval *, void *);
    static fn_t real;
    if (!real)
        real = (fn_t)dlsym(RTLD_NEXT, "gettimeofday");
    int rc = real(tv, tz);
    if (rc == 0)
        tv->tv_sec += (time_t)offset();
    return rc;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}

#if __SIZEOF_POINTER__ == 4
/* glibc's 64-bit time interfaces on 32-bit targets (struct __timespec64: 64-bit seconds, 32-bit
 * nanoseconds and padding; struct __timeval64: 64-bit seconds and microseconds). */
struct timespec64 { int64_t tv_sec; int32_t tv_nsec; int32_t pad; };
struct timeval64 { int64_t tv_sec; int64_t tv_usec; };

int __clock_gettime64(clockid_t clock, struct timespec64 *tp) {
    typedef int (*fn_t)(clockid_t, struct timespec64 *);
    static fn_t real;
    if (!real)
        real = (fn_t)dlsym(RTLD_NEXT, "__clock_gettime64");
    int rc = real(clock, tp);
    if (rc == 0 && is_realtime(clock))
        tp->tv_sec += offset();
    return rc;
}

int __gettimeofday64(struct timeval64 *restrict tv, void *restrict tz) {
    typedef int (*fn_t)(struct timeval64 *, void *);
    static fn_t real;
    if (!real)
        real = (fn_t)dlsym(RTLD_NEXT, "__gettimeofday64");
    int rc = real(tv, tz);
    if (rc == 0)
        tv->tv_sec += offset();
    return rc;
}

int64_t __time64(int64_t *out) {
    struct timespec64 ts;
    __clock_gettime64(CLOCK_REALTIME, &ts);
    if (out)
        *out = ts.tv_sec;
    return ts.tv_sec;
}
#endif
