/* loadgen: a closed-loop echo and HTTP load generator for benchmarks/net_bench.py.
 *
 * N connections, each with exactly one message of a fixed size in flight: send
 * it, read the same number of bytes back, (optionally) compare them with what
 * was sent, then send the next. With --http PATH a message is instead one
 * HTTP/1.1 keep-alive `GET PATH` and its reply is a response read whole (status
 * line, headers, a Content-Length body; a chunked response, one without a
 * length or one that asks to close is refused, exit 2): its status must be 200
 * (status_errors counts the others) and under --verify its body must be
 * --expect's bytes (verify_errors). One thread, TCP or Unix sockets, two modes:
 *   uring  io_uring (raw syscalls, constants from uringloop/_core/uapi.h): per
 *          connection one SEND and one RECV SQE per message, both MSG_WAITALL
 *          for echo (the kernel finishes a partial transfer itself; an HTTP
 *          receive has no known length: one more RECV per missing piece),
 *          every batch submitted by the io_uring_enter that also waits;
 *   epoll  level-triggered epoll, send()/recv() (the default; TLS and --idle
 *          always use it, and so does --mode uring when io_uring cannot start).
 * TLS is OpenSSL (built without it when -DLOADGEN_NO_TLS).
 *
 * Message seq is the bytes of one shared pseudo-random table from offset
 * seq % PAT_SHIFTS: sending needs no copy or fill, --verify is a memcmp, and
 * a stale or reordered echo differs from what is expected.
 *
 * Protocol with the driver (stdout, line by line, flushed):
 *   START             the warm-up is over, the measured window begins
 *   {...json...}      the window is over: requests, rps, p50_us, p99_us,
 *                     cpu_s (this process's utime+stime over the window), mode,
 *                     http (size is then the last response's length)
 * With --idle the connections are only opened (each does one round trip so
 * the server certainly holds it), then "READY n" is printed and the program
 * waits until stdin closes, then exits (closing with RST, no TIME_WAIT).
 *
 * With --reconnect (TCP, epoll mode, no TLS) a connection carries one message
 * only: each of the N slots connects (non-blocking, TCP_NODELAY), sends one
 * message of -s bytes, reads the whole echo, closes and connects again; under
 * --http the request carries `Connection: close`, the response is read whole
 * and then the server's close (EOF) is awaited before the slot reconnects.
 * requests/s is then connections/s; latency runs from socket() to the whole
 * reply. Who closes first: the echo client (its TIME_WAIT is reused on
 * loopback under net.ipv4.tcp_tw_reuse = 2, the default), the HTTP server.
 * Closes are plain FIN (no SO_LINGER 0), so the server sees an ordinary EOF.
 *
 * Usage: loadgen (--tcp HOST:PORT | --unix PATH) [-c CONNS] [-s SIZE]
 *                [-d SECONDS] [-w WARMUP_SECONDS] [--mode epoll|uring]
 *                [--verify] [--tls] [--idle] [--http PATH [--expect BODY]]
 *                [--reconnect] [--think NS]
 * --think NS: before each message (the first included), NS nanoseconds of
 * busy work (a spin on CLOCK_MONOTONIC), outside the latency: a client slower
 * per request by a known amount (decision 940).
 * Exit status: 0 on success, 1 on a usage/connect error, 2 when a byte
 * differed under --verify, a response was not 200 or could not be read, or a
 * connection closed early.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef LOADGEN_NO_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#include "../uringloop/_core/uapi.h"

/* latency histogram: 1 µs buckets up to 1 s, the last bucket takes the rest */
#define HIST_MAX 1000000
/* message seq starts at byte seq % PAT_SHIFTS of the pattern table */
#define PAT_SHIFTS 1024
/* --http: a connection's first response buffer; it grows for a bigger one */
#define HTTP_BUF 2048
/* --http: a longer head is refused */
#define HTTP_MAX_HEAD 65536

typedef struct {
    int fd;
    uint64_t seq;       /* message number: the payload pattern depends on it */
    size_t sent;        /* bytes of the current message written */
    size_t got;         /* bytes of its reply read */
    uint64_t t0;        /* send time of the current message, ns */
    int want_out;       /* EPOLLOUT currently armed */
    int rdone;          /* the current message's reply is whole */
    /* --http: the response so far (got bytes of hcap), its head's length once
     * parsed (0 before), its Content-Length and status */
    unsigned char *hbuf;
    size_t hcap, hhead, hbody;
    int hstatus;
#ifndef LOADGEN_NO_TLS
    SSL *ssl;
#endif
} Conn;

static size_t msg_size = 1024;
static int verify = 0, use_tls = 0, use_uring = 0;
static unsigned char *pat;   /* msg_size + PAT_SHIFTS pseudo-random bytes */
static unsigned char *rbufs; /* where echoes land: one per connection in uring mode with
                                --verify (its receives are in flight at once), else one */
static Conn *cs;
static uint32_t *hist;
static uint64_t measured, errors_verify, completed; /* completed: warm-up included */
static const char *http_path;     /* --http: GET this path on every connection */
static const char *expect;        /* --expect: the body --verify wants */
static size_t expect_len;
static char *req;                 /* --http: the request, the same for every message */
static size_t out_len;            /* bytes of one message: msg_size or the request's */
static uint64_t errors_status;    /* --http: responses whose status was not 200 */
static size_t last_resp;          /* --http: the last whole response's length */
static int measuring;
static int reconnect;             /* --reconnect: one message per connection */
static struct sockaddr_storage peer_sa; /* --reconnect: where to connect */
static socklen_t peer_len;
static uint64_t connects;         /* --reconnect: connections opened */
static uint64_t think_ns;         /* --think: ns of busy work before each next message */
#ifndef LOADGEN_NO_TLS
static SSL_CTX *ssl_ctx;
#endif

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

static const unsigned char *msg_bytes(const Conn *c)
{
    return pat + c->seq % PAT_SHIFTS;
}

/* what is sent: the echo message, or the request */
static const unsigned char *out_bytes(const Conn *c)
{
    return http_path ? (const unsigned char *)req : msg_bytes(c);
}

static unsigned char *conn_rbuf(const Conn *c)
{
    return use_uring && verify ? rbufs + msg_size * (size_t)(c - cs) : rbufs;
}

/* where the next bytes of the reply go, and how many may come there (> 0) */
static unsigned char *in_ptr(Conn *c)
{
    return http_path ? c->hbuf + c->got : conn_rbuf(c) + c->got;
}

static size_t in_room(const Conn *c)
{
    return http_path ? c->hcap - c->got : msg_size - c->got;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static int open_conn(const char *tcp_host, const char *tcp_port, const char *unix_path)
{
    int fd;
    if (unix_path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(unix_path) >= sizeof sa.sun_path) {
            errno = ENAMETOOLONG;
            die("unix path");
        }
        strcpy(sa.sun_path, unix_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die("connect");
    } else {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
        int rc = getaddrinfo(tcp_host, tcp_port, &hints, &ai);
        if (rc != 0) {
            fprintf(stderr, "loadgen: getaddrinfo: %s\n", gai_strerror(rc));
            exit(1);
        }
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die("socket");
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0)
            die("connect");
        freeaddrinfo(ai);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* I/O that hides TLS: >0 bytes, 0 = peer closed, -1 = would block, -2 = error */
static ssize_t io_write(Conn *c, const void *buf, size_t n)
{
#ifndef LOADGEN_NO_TLS
    if (c->ssl) {
        int r = SSL_write(c->ssl, buf, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        return (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? -1 : -2;
    }
#endif
    ssize_t r = send(c->fd, buf, n, MSG_NOSIGNAL);
    if (r < 0)
        return (errno == EAGAIN || errno == EINTR) ? -1 : -2;
    return r;
}

static ssize_t io_read(Conn *c, void *buf, size_t n)
{
#ifndef LOADGEN_NO_TLS
    if (c->ssl) {
        int r = SSL_read(c->ssl, buf, (int)n);
        if (r > 0)
            return r;
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return 0;
        return (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) ? -1 : -2;
    }
#endif
    ssize_t r = recv(c->fd, buf, n, 0);
    if (r < 0)
        return (errno == EAGAIN || errno == EINTR) ? -1 : -2;
    return r;
}

static void set_out(int ep, Conn *c, int on)
{
    if (c->want_out == on)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_out = on;
}

/* write as much of the current message as the socket takes */
static void pump_write(int ep, Conn *c)
{
    while (c->sent < out_len) {
        ssize_t r = io_write(c, out_bytes(c) + c->sent, out_len - c->sent);
        if (r == -1) {
            set_out(ep, c, 1);
            return;
        }
        if (r < 0) {
            fprintf(stderr, "loadgen: send failed: %s\n", strerror(errno));
            exit(2);
        }
        c->sent += (size_t)r;
    }
    set_out(ep, c, 0);
}

static void next_msg(Conn *c)
{
    if (think_ns) { /* the client made slower per request by a known amount (decision 940) */
        uint64_t until = now_ns() + think_ns;
        while (now_ns() < until)
            ;
    }
    c->seq++;
    c->sent = c->got = c->hhead = 0;
    c->rdone = 0;
    c->t0 = now_ns();
}

static void record(uint64_t ns)
{
    completed++;
    if (!measuring)
        return;
    uint64_t us = ns / 1000;
    hist[us < HIST_MAX ? us : HIST_MAX - 1]++;
    measured++;
}

static double percentile(double p)
{
    uint64_t want = (uint64_t)(p * (double)measured), seen = 0;
    if (want >= measured && measured > 0)
        want = measured - 1;
    for (uint64_t i = 0; i < HIST_MAX; i++) {
        seen += hist[i];
        if (seen > want)
            return (double)i + 0.5;
    }
    return (double)HIST_MAX;
}

static void closed_early(Conn *c, const char *why)
{
    fprintf(stderr, "loadgen: connection %d closed by the server (%s)\n", (int)(c - cs), why);
    exit(2);
}

/* ------------------------------------------------------------------ --http */

/* the first line of what c has buffered, for a message */
static const char *first_line(const Conn *c)
{
    static char line[120];
    size_t n = 0;
    while (n < c->got && n < sizeof line - 1 && c->hbuf[n] != '\r' && c->hbuf[n] != '\n')
        n++;
    memcpy(line, c->hbuf, n);
    line[n] = 0;
    return line;
}

static void bad_response(const Conn *c, const char *why)
{
    fprintf(stderr, "loadgen: connection %d: %s (response \"%s\")\n", (int)(c - cs), why,
            first_line(c));
    exit(2);
}

/* does the header value [v, end) hold the token tok (case-insensitive)? */
static int has_token(const unsigned char *v, const unsigned char *end, const char *tok)
{
    size_t n = strlen(tok);
    for (; v + n <= end; v++)
        if (!strncasecmp((const char *)v, tok, n))
            return 1;
    return 0;
}

/* parse the response head in c->hbuf: 0 while it is incomplete; else set
 * hhead (its length, blank line included), hbody and hstatus and return 1.
 * Refuses (exit 2) what a keep-alive Content-Length reader cannot follow. */
static int http_head(Conn *c)
{
    const unsigned char *b = c->hbuf, *end = b + c->got;
    const unsigned char *eol = memchr(b, '\n', (size_t)(end - b));
    if (!eol)
        return 0;
    /* "HTTP/1.x NNN reason" */
    if (eol - b < 12 || memcmp(b, "HTTP/1.", 7) != 0 || b[8] != ' ' || b[9] < '0' ||
        b[9] > '9' || b[10] < '0' || b[10] > '9' || b[11] < '0' || b[11] > '9')
        bad_response(c, "no HTTP/1.x status line");
    int status = (b[9] - '0') * 100 + (b[10] - '0') * 10 + (b[11] - '0');
    long long clen = -1;
    const unsigned char *p = eol + 1;
    for (;;) {
        eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            return 0;
        size_t len = (size_t)(eol - p); /* the '\r' included */
        if (len == 0 || (len == 1 && p[0] == '\r'))
            break;
        unsigned char h = p[0] | 0x20;
        if (h == 'c' && len > 15 && !strncasecmp((const char *)p, "content-length:", 15)) {
            const unsigned char *v = p + 15;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            if (v == eol || *v < '0' || *v > '9')
                bad_response(c, "a Content-Length that is not a number");
            clen = 0;
            for (; v < eol && *v >= '0' && *v <= '9'; v++)
                if ((clen = clen * 10 + (*v - '0')) > (1LL << 40))
                    bad_response(c, "a Content-Length above 1 TiB");
        } else if (h == 'c' && len > 11 && !strncasecmp((const char *)p, "connection:", 11)) {
            if (!reconnect && has_token(p + 11, eol, "close"))
                bad_response(c, "the server closes the connection (Connection: close); "
                                "--http keeps connections alive");
        } else if (h == 't' && len > 18 &&
                   !strncasecmp((const char *)p, "transfer-encoding:", 18)) {
            if (has_token(p + 18, eol, "chunked"))
                bad_response(c, "a chunked response: --http reads Content-Length bodies only");
        }
        p = eol + 1;
    }
    if (clen < 0) {
        if (status / 100 != 1 && status != 204 && status != 304)
            bad_response(c, "a response without Content-Length: --http reads Content-Length "
                            "bodies only");
        clen = 0;
    }
    c->hhead = (size_t)(eol + 1 - b);
    c->hbody = (size_t)clen;
    c->hstatus = status;
    return 1;
}

static void http_grow(Conn *c, size_t want)
{
    unsigned char *nb = realloc(c->hbuf, want);
    if (!nb)
        die("realloc");
    c->hbuf = nb;
    c->hcap = want;
}

/* n more bytes of the response landed at c->hbuf + c->got: 1 when it is whole
 * (checked, its latency recorded); else 0 with room for more at in_ptr(c) */
static int http_take(Conn *c, size_t n)
{
    c->got += n;
    if (!c->hhead && !http_head(c)) {
        if (c->got == c->hcap) {
            if (c->hcap >= HTTP_MAX_HEAD)
                bad_response(c, "a response head above 64 KiB");
            http_grow(c, 2 * c->hcap);
        }
        return 0;
    }
    size_t whole = c->hhead + c->hbody;
    if (c->got < whole) {
        if (c->hcap < whole)
            http_grow(c, whole);
        return 0;
    }
    if (c->got > whole)
        bad_response(c, "bytes after the response, where one request was in flight");
    if (c->hstatus != 200 && errors_status++ == 0)
        fprintf(stderr, "loadgen: a response with status %d (the first): \"%s\"\n", c->hstatus,
                first_line(c));
    if (verify && (c->hbody != expect_len || memcmp(c->hbuf + c->hhead, expect, expect_len)) &&
        errors_verify++ == 0)
        fprintf(stderr, "loadgen: a body other than --expect's (the first): %zu bytes\n",
                c->hbody);
    last_resp = whole;
    record(now_ns() - c->t0);
    c->rdone = 1;
    return 1;
}

/* ------------------------------------------------------------------ replies */

/* n more bytes of the reply landed at in_ptr(c): compare them, count them; 1
 * when the reply is whole (its latency then recorded) */
static int take(Conn *c, size_t n)
{
    if (http_path)
        return http_take(c, n);
    if (verify && memcmp(conn_rbuf(c) + c->got, msg_bytes(c) + c->got, n) != 0)
        errors_verify++;
    c->got += n;
    if (c->got < msg_size)
        return 0;
    record(now_ns() - c->t0);
    c->rdone = 1;
    return 1;
}

/* the measured window: START when the warm-up ends; 1 once the window is over */
static uint64_t t_measure, t_end, t_real_start;
static double cpu_start;

static int window_over(void)
{
    uint64_t t = now_ns();
    if (!measuring && t >= t_measure) {
        measuring = 1;
        t_real_start = t;
        cpu_start = cpu_seconds();
        printf("START\n");
        fflush(stdout);
    }
    return t >= t_end;
}

/* ------------------------------------------------------------------ epoll */

/* --reconnect: open c's next connection (non-blocking; its send waits for
 * EPOLLOUT) and start its one message; latency counts from here */
static void conn_start(int ep, Conn *c)
{
    next_msg(c);
    c->fd = socket(peer_sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&peer_sa, peer_len) < 0 && errno != EINPROGRESS) {
        if (errno == EADDRNOTAVAIL)
            fprintf(stderr, "loadgen: no ephemeral port left (TIME_WAIT; "
                            "net.ipv4.tcp_tw_reuse?)\n");
        die("connect");
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl");
    c->want_out = 1;
    connects++;
}

static void conn_restart(int ep, Conn *c)
{
    close(c->fd);
    conn_start(ep, c);
}

static void run_epoll(int conns, int idle)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die("epoll_create1");
    for (int i = 0; i < conns && !reconnect; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev) < 0)
            die("epoll_ctl");
    }
    int done_idle = 0;
    for (int i = 0; i < conns; i++) {
        if (reconnect) {
            conn_start(ep, &cs[i]);
            continue;
        }
        next_msg(&cs[i]);
        pump_write(ep, &cs[i]);
    }
    struct epoll_event evs[256];
    while (!window_over()) {
        int n = epoll_wait(ep, evs, 256, 50);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            Conn *c = evs[k].data.ptr;
            if ((evs[k].events & EPOLLOUT) && c->sent < out_len)
                pump_write(ep, c);
            if (!(evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            for (;;) { /* TLS may hold decrypted bytes past one read: drain */
                if (c->rdone) { /* --reconnect --http: the response is whole, await EOF */
                    unsigned char extra[64];
                    ssize_t r = io_read(c, extra, sizeof extra);
                    if (r == -1)
                        break;
                    if (r > 0)
                        bad_response(c, "bytes after the response, before the server's close");
                    if (r < 0)
                        closed_early(c, strerror(errno));
                    conn_restart(ep, c);
                    break;
                }
                ssize_t r = io_read(c, in_ptr(c), in_room(c));
                if (r == -1)
                    break;
                if (r <= 0)
                    closed_early(c, r == 0 ? "EOF" : strerror(errno));
                if (!take(c, (size_t)r))
                    continue;
                if (idle) {
                    if (++done_idle == conns) {
                        printf("READY %d\n", conns);
                        fflush(stdout);
                        char b[64];
                        while (read(0, b, sizeof b) > 0)
                            ;
                        struct linger lg = {1, 0};
                        for (int j = 0; j < conns; j++)
                            setsockopt(cs[j].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
                        exit(0);
                    }
                    break;
                }
                if (c->sent < out_len) {
                    fprintf(stderr, "loadgen: reply arrived before the send finished\n");
                    exit(2);
                }
                if (reconnect && http_path)
                    continue; /* the server closes: read its EOF */
                if (reconnect) {
                    conn_restart(ep, c);
                    break;
                }
                next_msg(c);
                pump_write(ep, c);
                break;
            }
        }
    }
}

/* ------------------------------------------------------------------ io_uring */

typedef struct {
    int fd;
    unsigned *sq_head, *sq_tail, sq_mask, tail; /* tail: ours, published at enter */
    unsigned *cq_head, *cq_tail, cq_mask;
    struct ul_sqe *sqes;
    struct ul_cqe *cqes;
} Ring;

/* 0, or -1 with errno when this kernel cannot give what run_uring needs */
static int ring_init(Ring *r, unsigned entries)
{
    struct ul_uring_params p;
    memset(&p, 0, sizeof p);
    /* completions are reaped only inside our own enter (6.1+); plain flags before */
    p.flags = UL_SETUP_SINGLE_ISSUER | UL_SETUP_DEFER_TASKRUN | UL_SETUP_SUBMIT_ALL;
    r->fd = (int)syscall(UL_NR_io_uring_setup, entries, &p);
    if (r->fd < 0 && errno == EINVAL) {
        memset(&p, 0, sizeof p);
        r->fd = (int)syscall(UL_NR_io_uring_setup, entries, &p);
    }
    if (r->fd < 0)
        return -1;
    if (!(p.features & UL_FEAT_SINGLE_MMAP) || !(p.features & UL_FEAT_EXT_ARG)) {
        close(r->fd);
        errno = ENOSYS; /* before 5.11: no timed wait in the enter */
        return -1;
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct ul_cqe);
    size_t len = sq_len > cq_len ? sq_len : cq_len;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   UL_OFF_SQ_RING);
    void *sqes = mmap(NULL, p.sq_entries * sizeof(struct ul_sqe), PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_POPULATE, r->fd, UL_OFF_SQES);
    if (m == MAP_FAILED || sqes == MAP_FAILED)
        die("mmap io_uring");
    r->sq_head = (unsigned *)(m + p.sq_off.head);
    r->sq_tail = (unsigned *)(m + p.sq_off.tail);
    r->sq_mask = *(unsigned *)(m + p.sq_off.ring_mask);
    r->tail = *r->sq_tail;
    unsigned *array = (unsigned *)(m + p.sq_off.array);
    for (unsigned i = 0; i < p.sq_entries; i++)
        array[i] = i;
    r->cq_head = (unsigned *)(m + p.cq_off.head);
    r->cq_tail = (unsigned *)(m + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(m + p.cq_off.ring_mask);
    r->cqes = (struct ul_cqe *)(m + p.cq_off.cqes);
    r->sqes = sqes;
    return 0;
}

/* submit what is queued and wait up to 50 ms for a completion */
static void ring_enter(Ring *r)
{
    __atomic_store_n(r->sq_tail, r->tail, __ATOMIC_RELEASE);
    unsigned pending = r->tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    struct ul_kernel_timespec ts = {0, 50000000};
    struct ul_getevents_arg arg = {.ts = (uint64_t)(uintptr_t)&ts};
    if (syscall(UL_NR_io_uring_enter, r->fd, pending, 1,
                UL_ENTER_GETEVENTS | UL_ENTER_EXT_ARG, &arg, sizeof arg) < 0 &&
        errno != ETIME && errno != EINTR && errno != EAGAIN && errno != EBUSY)
        die("io_uring_enter");
}

/* user_data: the connection's index << 1, | 1 for its send. A connection has
 * at most its send and its receive queued or in flight, and the ring has 2
 * entries per connection: it is never full. */
static void queue(Ring *r, Conn *c, int is_send)
{
    struct ul_sqe *s = &r->sqes[r->tail & r->sq_mask];
    memset(s, 0, sizeof *s);
    s->opcode = is_send ? UL_OP_SEND : UL_OP_RECV;
    s->fd = c->fd;
    if (is_send) {
        s->addr = (uint64_t)(uintptr_t)(out_bytes(c) + c->sent);
        s->len = (uint32_t)(out_len - c->sent);
        s->op_flags = MSG_NOSIGNAL | MSG_WAITALL;
    } else {
        /* an HTTP response's length is known only once its head is in */
        s->addr = (uint64_t)(uintptr_t)in_ptr(c);
        s->len = (uint32_t)in_room(c);
        s->op_flags = http_path ? 0 : MSG_WAITALL;
    }
    s->user_data = (uint64_t)(c - cs) << 1 | (uint64_t)is_send;
    r->tail++;
}

static void start_uring(Ring *r, Conn *c)
{
    next_msg(c);
    queue(r, c, 1);
    queue(r, c, 0);
}

static void run_uring(Ring *r, int conns)
{
    for (int i = 0; i < conns; i++)
        start_uring(r, &cs[i]);
    while (!window_over()) {
        ring_enter(r);
        unsigned head = *r->cq_head, tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct ul_cqe *e = &r->cqes[head & r->cq_mask];
            Conn *c = &cs[e->user_data >> 1];
            int is_send = (int)(e->user_data & 1);
            if (e->res < 0) {
                if (!is_send)
                    closed_early(c, strerror(-e->res));
                fprintf(stderr, "loadgen: send failed: %s\n", strerror(-e->res));
                exit(2);
            }
            if (is_send) {
                c->sent += (size_t)e->res;
                if (c->sent < out_len) { /* cut short (a signal): the rest */
                    queue(r, c, 1);
                    continue;
                }
            } else {
                if (e->res == 0)
                    closed_early(c, "EOF");
                if (!take(c, (size_t)e->res)) {
                    queue(r, c, 0);
                    continue;
                }
            }
            if (c->sent == out_len && c->rdone)
                start_uring(r, c);
        }
        __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    }
}

#ifndef LOADGEN_NO_TLS
static void tls_attach(Conn *c)
{
    c->ssl = SSL_new(ssl_ctx);
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) { /* the socket is still blocking here */
        ERR_print_errors_fp(stderr);
        fprintf(stderr, "loadgen: TLS handshake failed\n");
        exit(1);
    }
}
#endif

int main(int argc, char **argv)
{
    const char *tcp = NULL, *unix_path = NULL;
    int conns = 1, idle = 0;
    double duration = 5.0, warmup = 1.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--tcp") && v) tcp = v, i++;
        else if (!strcmp(a, "--unix") && v) unix_path = v, i++;
        else if (!strcmp(a, "-c") && v) conns = atoi(v), i++;
        else if (!strcmp(a, "-s") && v) msg_size = (size_t)atol(v), i++;
        else if (!strcmp(a, "-d") && v) duration = atof(v), i++;
        else if (!strcmp(a, "-w") && v) warmup = atof(v), i++;
        else if (!strcmp(a, "--mode") && v && !strcmp(v, "uring")) use_uring = 1, i++;
        else if (!strcmp(a, "--mode") && v && !strcmp(v, "epoll")) use_uring = 0, i++;
        else if (!strcmp(a, "--verify")) verify = 1;
        else if (!strcmp(a, "--tls")) use_tls = 1;
        else if (!strcmp(a, "--idle")) idle = 1;
        else if (!strcmp(a, "--http") && v) http_path = v, i++;
        else if (!strcmp(a, "--expect") && v) expect = v, i++;
        else if (!strcmp(a, "--reconnect")) reconnect = 1;
        else if (!strcmp(a, "--think") && v) think_ns = (uint64_t)atoll(v), i++;
        else {
            fprintf(stderr, "usage: loadgen (--tcp HOST:PORT | --unix PATH) [-c N] [-s SIZE] "
                            "[-d SEC] [-w SEC] [--mode epoll|uring] [--verify] [--tls] [--idle] "
                            "[--http PATH [--expect BODY]] [--reconnect] [--think NS]\n");
            return 1;
        }
    }
    if ((!tcp) == (!unix_path) || conns < 1 || msg_size < 1) {
        fprintf(stderr, "loadgen: give exactly one of --tcp/--unix, -c >= 1, -s >= 1\n");
        return 1;
    }
    if (http_path && (idle || http_path[0] != '/' || strpbrk(http_path, " \r\n"))) {
        fprintf(stderr, "loadgen: --http wants a PATH starting with '/' (no blanks), not --idle\n");
        return 1;
    }
    if (http_path && verify && !expect) {
        fprintf(stderr, "loadgen: --verify with --http wants --expect BODY\n");
        return 1;
    }
    if (expect && !http_path) {
        fprintf(stderr, "loadgen: --expect goes with --http\n");
        return 1;
    }
    if (expect)
        expect_len = strlen(expect);
    if (reconnect && (!tcp || use_tls || idle)) {
        fprintf(stderr, "loadgen: --reconnect wants --tcp, no --tls, no --idle\n");
        return 1;
    }
#ifdef LOADGEN_NO_TLS
    if (use_tls) {
        fprintf(stderr, "loadgen: built without OpenSSL (LOADGEN_NO_TLS)\n");
        return 1;
    }
#else
    if (use_tls) {
        ssl_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL); /* loopback, our own test cert */
        SSL_CTX_set_mode(ssl_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    }
#endif
    char host[256] = "", port[32] = "";
    if (tcp) {
        const char *colon = strrchr(tcp, ':');
        if (!colon || (size_t)(colon - tcp) >= sizeof host) {
            fprintf(stderr, "loadgen: --tcp wants HOST:PORT\n");
            return 1;
        }
        memcpy(host, tcp, (size_t)(colon - tcp));
        snprintf(port, sizeof port, "%s", colon + 1);
    }
    out_len = msg_size;
    if (http_path) { /* wrk's request: the request line and Host */
        size_t n = strlen(http_path) + (tcp ? strlen(tcp) : 9) + 64;
        req = malloc(n);
        if (!req)
            die("malloc");
        out_len = (size_t)snprintf(req, n, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", http_path,
                                   tcp ? tcp : "localhost",
                                   reconnect ? "Connection: close\r\n" : "");
    }

    if (reconnect) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai;
        int rc = getaddrinfo(host, port, &hints, &ai);
        if (rc != 0) {
            fprintf(stderr, "loadgen: getaddrinfo: %s\n", gai_strerror(rc));
            return 1;
        }
        memcpy(&peer_sa, ai->ai_addr, ai->ai_addrlen);
        peer_len = ai->ai_addrlen;
        freeaddrinfo(ai);
    }
    Ring ring;
    if (use_uring && (use_tls || idle || reconnect))
        use_uring = 0;
    if (use_uring && ring_init(&ring, 2 * (unsigned)conns) < 0) {
        fprintf(stderr, "loadgen: io_uring unavailable (%s): epoll mode\n", strerror(errno));
        use_uring = 0;
    }
    cs = calloc((size_t)conns, sizeof *cs);
    pat = malloc(msg_size + PAT_SHIFTS);
    rbufs = malloc(use_uring && verify && !http_path ? msg_size * (size_t)conns : msg_size);
    hist = calloc(HIST_MAX, sizeof *hist);
    if (!cs || !pat || !rbufs || !hist)
        die("malloc");
    uint32_t x = 2463534242u; /* xorshift32 */
    for (size_t i = 0; i < msg_size + PAT_SHIFTS; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        pat[i] = (unsigned char)x;
    }
    for (int i = 0; i < conns; i++) {
        Conn *c = &cs[i];
        c->fd = -1;
        if (reconnect)
            goto bufs;
        c->fd = open_conn(host, port, unix_path);
#ifndef LOADGEN_NO_TLS
        if (use_tls)
            tls_attach(c);
#endif
        if (!use_uring)
            fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    bufs:
        if (http_path) {
            c->hbuf = malloc(HTTP_BUF);
            if (!c->hbuf)
                die("malloc");
            c->hcap = HTTP_BUF;
        }
    }

    t_measure = now_ns() + (uint64_t)(warmup * 1e9);
    t_end = t_measure + (uint64_t)(duration * 1e9);
    if (idle) /* one round trip each, then hold */
        t_measure = t_end = UINT64_MAX;
    if (use_uring)
        run_uring(&ring, conns);
    else
        run_epoll(conns, idle);
    double secs = (double)(now_ns() - t_real_start) / 1e9;
    double cpu = cpu_seconds() - cpu_start;
    printf("{\"requests\": %llu, \"seconds\": %.6f, \"rps\": %.1f, \"p50_us\": %.1f, "
           "\"p99_us\": %.1f, \"conns\": %d, \"size\": %zu, \"verified\": %s, "
           "\"verify_errors\": %llu, \"completed\": %llu, \"cpu_s\": %.6f, \"mode\": \"%s\", "
           "\"http\": %s, \"status_errors\": %llu, \"reconnect\": %s, \"connects\": %llu}\n",
           (unsigned long long)measured, secs, (double)measured / secs, percentile(0.50),
           percentile(0.99), conns, http_path ? last_resp : msg_size, verify ? "true" : "false",
           (unsigned long long)errors_verify, (unsigned long long)completed, cpu,
           use_uring ? "uring" : "epoll", http_path ? "true" : "false",
           (unsigned long long)errors_status, reconnect ? "true" : "false",
           (unsigned long long)connects);
    fflush(stdout);
    return errors_verify || errors_status ? 2 : 0;
}
