/* LD_PRELOAD shim for tests/test_engine_recv_path.py: counts io_uring_register
 * calls made through syscall(3) (how the engine makes them);
 * uring_register_count() (via ctypes) reads the count. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <sys/syscall.h>

#ifndef SYS_io_uring_register
#define SYS_io_uring_register 427
#endif

static long count;

long uring_register_count(void) { return count; }

long syscall(long nr, ...)
{
    static long (*real)(long, ...);
    if (!real)
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    va_list ap;
    va_start(ap, nr);
    long a[6];
    for (int i = 0; i < 6; i++)
        a[i] = va_arg(ap, long);
    va_end(ap);
    if (nr == SYS_io_uring_register)
        count++;
    return real(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
