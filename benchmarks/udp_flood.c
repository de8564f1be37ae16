/* udp_flood: the sender of loop_bench.py's udp_flood scenario.
 *
 * Sends 64-byte datagrams to 127.0.0.1:PORT as fast as it can, 64 at a time
 * with sendmmsg, until killed (or for COUNT datagrams when given). A Python
 * sender is slower than the receivers it should saturate: with it, every loop
 * measured its speed. Usage: udp_flood PORT [COUNT]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define BATCH 64

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: udp_flood PORT [COUNT]\n");
        return 1;
    }
    long long left = argc > 2 ? atoll(argv[2]) : -1;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        perror("udp_flood");
        return 1;
    }
    static char payload[64];
    struct iovec iov = {.iov_base = payload, .iov_len = sizeof payload};
    struct mmsghdr msgs[BATCH];
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    while (left != 0) {
        unsigned n = left > 0 && left < BATCH ? (unsigned)left : BATCH;
        int sent = sendmmsg(fd, msgs, n, 0);
        if (sent > 0 && left > 0)
            left -= sent;
        /* errors (ECONNREFUSED before the receiver is up, ENOBUFS): go on */
    }
    return 0;
}
