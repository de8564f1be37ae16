/* pipe_floor: what reading a child's stdout costs with no event loop at all.
 *
 * The child is subprocess_bench.py's (`dd if=/dev/zero bs=BLOCK`, MIB MiB);
 * its stdout is a pipe (of the kernel's size, or SIZE bytes set with
 * F_SETPIPE_SZ right after the spawn, as subprocess_bench.py --pipe-size) or
 * a socketpair (what uvloop gives a child). This process reads it with
 * blocking read()s of READ bytes into one buffer: one copy per byte, no
 * readiness wait, no Python. The throughput no loop can pass on that kind
 * of channel, with the writer's waits that come with it.
 *
 * Prints MiB/s, this process's and the child's CPU ms per MiB, this
 * process's and the child's waits per MiB (voluntary context switches).
 * Usage: cc -O2 -o pipe_floor pipe_floor.c &&
 *        ./pipe_floor MIB BLOCK [pipe|sock] [SIZE] [READ]
 * (BLOCK, SIZE, READ in bytes; READ defaults to 256 KiB, uvloop's read size.)
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double sec(const struct timeval *t) { return (double)t->tv_sec + (double)t->tv_usec / 1e6; }

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: pipe_floor MIB BLOCK [pipe|sock] [SIZE] [READ]\n");
        return 1;
    }
    long mib = atol(argv[1]), block = atol(argv[2]);
    int sock = argc > 3 && strcmp(argv[3], "sock") == 0;
    long size = argc > 4 ? atol(argv[4]) : 0, rsize = argc > 5 ? atol(argv[5]) : 256 * 1024;
    if (mib <= 0 || block <= 0 || (mib << 20) % block || rsize <= 0) {
        fprintf(stderr, "pipe_floor: MIB > 0, BLOCK divides MIB MiB, READ > 0\n");
        return 1;
    }
    int fds[2];
    if (sock ? socketpair(AF_UNIX, SOCK_STREAM, 0, fds) : pipe(fds))
        return perror("pipe_floor"), 1;
    char bs[64], count[64];
    snprintf(bs, sizeof bs, "bs=%ld", block);
    snprintf(count, sizeof count, "count=%ld", (mib << 20) / block);
    struct timespec w0, w1;
    clock_gettime(CLOCK_MONOTONIC, &w0);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execlp("dd", "dd", "if=/dev/zero", bs, count, "status=none", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    if (size && !sock && fcntl(fds[0], F_SETPIPE_SZ, (int)size) < 0)
        return perror("F_SETPIPE_SZ"), 1;
    char *buf = malloc((size_t)rsize);
    struct rusage r0, r1, c1;
    getrusage(RUSAGE_SELF, &r0);
    long long total = 0;
    for (ssize_t k; (k = read(fds[0], buf, (size_t)rsize)) != 0; total += k)
        if (k < 0)
            return perror("read"), 1;
    int status;
    waitpid(pid, &status, 0);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    getrusage(RUSAGE_SELF, &r1);
    getrusage(RUSAGE_CHILDREN, &c1);
    if (total != mib << 20 || !WIFEXITED(status) || WEXITSTATUS(status))
        return fprintf(stderr, "pipe_floor: %lld bytes, status %d\n", total, status), 1;
    double wall = (double)(w1.tv_sec - w0.tv_sec) + (double)(w1.tv_nsec - w0.tv_nsec) / 1e9;
    double cpu = sec(&r1.ru_utime) + sec(&r1.ru_stime) - sec(&r0.ru_utime) - sec(&r0.ru_stime);
    printf("%s%s: %.0f MiB/s, reader %.3f ms/MiB %.1f waits/MiB, child %.3f ms/MiB "
           "%.1f waits/MiB\n", sock ? "socketpair" : "pipe", size ? " (resized)" : "",
           (double)mib / wall, cpu * 1e3 / (double)mib,
           (double)(r1.ru_nvcsw - r0.ru_nvcsw) / (double)mib,
           (sec(&c1.ru_utime) + sec(&c1.ru_stime)) * 1e3 / (double)mib,
           (double)c1.ru_nvcsw / (double)mib);
    return 0;
}
