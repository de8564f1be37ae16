/* udp_flood: the sender of loop_bench.py's udp_flood scenario, and a C
 * receiver to hold it against.
 *
 *   udp_flood PORT [COUNT]  send 64-byte datagrams to 127.0.0.1:PORT as fast
 *                           as it can until SIGTERM/SIGINT (or COUNT sent),
 *                           then print "sent N SECONDS" (datagrams the kernel
 *                           took, from the first send to the end)
 *   udp_flood -r N          bind 127.0.0.1:0 (SO_RCVBUF 4 MiB, as loop_bench's
 *                           endpoint), print "port P", receive N datagrams with
 *                           recvmmsg, print "received N SECONDS CPU_SECONDS WAITS"
 *                           (first to N-th datagram: wall and process CPU time,
 *                           voluntary context switches: waits for datagrams)
 *
 * On loopback the sender's syscall also runs the receiving side's network
 * work (route, socket lookup, enqueue, wake-up), so a sender of one datagram
 * per message (even 64 to a sendmmsg) was no faster than the loops it fed.
 * This one sends with UDP GSO (UDP_SEGMENT): one message of SEGS x 64 bytes
 * travels the stack once, and the receiving socket cuts it into SEGS
 * separate 64-byte datagrams at enqueue, because it has not enabled UDP_GRO
 * (loop_bench checks that every datagram it gets is 64 bytes). BATCH such
 * messages go in one sendmmsg. Where the kernel refuses UDP_SEGMENT it sends
 * one datagram per message and says so on stderr.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif

#define SIZE 64
#define SEGS 64  /* UDP_MAX_SEGMENTS of older kernels */
#define BATCH 16 /* messages per sendmmsg */

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

static double seconds(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static int receive(long long n)
{
    int fd = socket(AF_INET, SOCK_DGRAM, 0), rcvbuf = 1 << 22;
    struct sockaddr_in addr = {.sin_family = AF_INET};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof addr;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) < 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &alen) < 0) {
        perror("udp_flood -r");
        return 1;
    }
    printf("port %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    static char bufs[64][SIZE + 1];
    struct iovec iov[64];
    struct mmsghdr msgs[64];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < 64; i++) {
        iov[i] = (struct iovec){.iov_base = bufs[i], .iov_len = sizeof bufs[i]};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct timespec w0, w1, c0, c1;
    struct rusage r0, r1;
    long long got = 0;
    while (got < n) {
        int k = recvmmsg(fd, msgs, 64, MSG_WAITFORONE, NULL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            perror("recvmmsg");
            return 1;
        }
        for (int i = 0; i < k; i++)
            if (msgs[i].msg_len != SIZE) {
                fprintf(stderr, "udp_flood -r: a datagram of %u bytes\n", msgs[i].msg_len);
                return 1;
            }
        if (got == 0) {
            clock_gettime(CLOCK_MONOTONIC, &w0);
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
            getrusage(RUSAGE_SELF, &r0);
        }
        got += k;
    }
    clock_gettime(CLOCK_MONOTONIC, &w1);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
    getrusage(RUSAGE_SELF, &r1);
    printf("received %lld %.6f %.6f %ld\n", got, seconds(&w0, &w1), seconds(&c0, &c1),
           r1.ru_nvcsw - r0.ru_nvcsw);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "-r") == 0 && argc < 3)) {
        fprintf(stderr, "usage: udp_flood PORT [COUNT] | udp_flood -r N\n");
        return 1;
    }
    if (strcmp(argv[1], "-r") == 0)
        return receive(atoll(argv[2]));
    long long left = argc > 2 ? atoll(argv[2]) : -1, sent = 0;
    int fd = socket(AF_INET, SOCK_DGRAM, 0), sndbuf = 1 << 22, seg = SIZE;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("udp_flood");
        return 1;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf); /* best effort */
    int segs = SEGS;
    if (setsockopt(fd, IPPROTO_UDP, UDP_SEGMENT, &seg, sizeof seg) < 0) {
        fprintf(stderr, "udp_flood: no UDP_SEGMENT (%s): one datagram per message\n",
                strerror(errno));
        segs = 1;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    static char payload[SEGS * SIZE];
    struct iovec iov = {.iov_base = payload, .iov_len = (size_t)segs * SIZE};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct timespec t0, t1;
    int started = 0;
    while (left != 0 && !stop) {
        unsigned n = BATCH;
        if (left > 0 && left < (long long)BATCH * segs) {
            /* the tail: whole messages, then single datagrams */
            n = left >= segs ? (unsigned)(left / segs) : 1;
            if (left < segs)
                iov.iov_len = SIZE;
        }
        int k = sendmmsg(fd, msgs, n, 0);
        if (k <= 0)
            continue; /* ECONNREFUSED before the receiver is up, EINTR: go on */
        if (!started) {
            clock_gettime(CLOCK_MONOTONIC, &t0);
            started = 1;
        }
        long long d = (long long)k * (long long)(iov.iov_len / SIZE);
        sent += d;
        if (left > 0)
            left -= d;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("sent %lld %.6f\n", sent, started ? seconds(&t0, &t1) : 0.0);
    return 0;
}
