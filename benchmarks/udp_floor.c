/* udp_floor: what a UDP round trip costs with no event loop at all.
 *
 * Both ends of loop_bench.py's udp_pingpong in one thread on blocking
 * sockets: the client sends, the server's recvfrom returns it at once (the
 * loopback delivery happened inside that send), the server answers with
 * sendto, the client's recv returns it. Four syscalls per round trip, no
 * readiness wait, no retry that ends in EAGAIN: the kernel's share that every
 * loop pays, so a loop's CPU per round trip minus this is what the loop adds.
 * Prints wall time, this process's CPU time per round trip and the kernel's
 * share of it. Usage: cc -O2 -o udp_floor udp_floor.c && ./udp_floor N [SIZE]
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

static double us(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) * 1e6 + (double)(b->tv_nsec - a->tv_nsec) / 1e3;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: udp_floor N [SIZE]\n");
        return 1;
    }
    int n = atoi(argv[1]), size = argc > 2 ? atoi(argv[2]) : 64;
    if (n <= 0 || size <= 0 || size > 65507) {
        fprintf(stderr, "udp_floor: N > 0, 0 < SIZE <= 65507\n");
        return 1;
    }
    int srv = socket(AF_INET, SOCK_DGRAM, 0), cli = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (srv < 0 || cli < 0 || bind(srv, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        getsockname(srv, (struct sockaddr *)&addr, &alen) < 0 ||
        connect(cli, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("udp_floor");
        return 1;
    }
    static char buf[65536], msg[65536];
    memset(msg, 7, (size_t)size);
    struct timespec w0, w1, c0, c1;
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    clock_gettime(CLOCK_MONOTONIC, &w0);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
    for (int i = 0; i < n; i++) {
        struct sockaddr_in from;
        socklen_t flen = sizeof from;
        if (send(cli, msg, (size_t)size, 0) != size)
            return perror("send"), 1;
        ssize_t k = recvfrom(srv, buf, sizeof buf, 0, (struct sockaddr *)&from, &flen);
        if (k != size || sendto(srv, buf, (size_t)k, 0, (struct sockaddr *)&from, flen) != k)
            return perror("server"), 1;
        if (recv(cli, buf, sizeof buf, 0) != size)
            return perror("recv"), 1;
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    getrusage(RUSAGE_SELF, &r1);
    double cpu = us(&c0, &c1);
    double sys = (double)(r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e6 +
                 (double)(r1.ru_stime.tv_usec - r0.ru_stime.tv_usec);
    printf("%d B round trips: wall %.2f us, CPU %.2f us (kernel %.0f %%) per round trip\n", size,
           us(&w0, &w1) / n, cpu / n, sys / cpu * 100);
    return 0;
}
