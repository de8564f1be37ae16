/*
 * epoll.c -- the epoll backend: readiness turned into completions in C.
 *
 * Why it has this shape. epoll only says "you may try now", so this backend
 * performs each operation itself and reports the result as the very record
 * io_uring would have produced. An op is tried at once when submitted (as
 * io_uring does inline); only on EAGAIN does it wait, in one of three queues
 * of its fd: readers, writers, polls. Each fd is registered once, edge-
 * triggered, for IN|RDHUP, and OUT while something waits to write (see
 * arm), and stays registered until close_fd. Edge triggering means an
 * event must be followed by attempts until EAGAIN (or a short stream read,
 * which drained the socket: drained_by_short_read); an fd whose readers stop
 * early (the per-turn budget, or an empty buffer pool) goes on a ready list
 * and is tried again next turn without waiting, so no edge is ever lost.
 * A stream receive tried at submission on an idle fd (UL_RECV_STREAM) stops
 * at a short read too: its wait registers the fd anew, which reports what
 * came since the read (decision 745).
 *
 * The fd-number trap. A user may close a socket behind our back and get the
 * same number for a new one; the kernel then dropped our registration. So
 * whenever an fd goes from "nothing waiting" to "something waiting" we
 * EPOLL_CTL_MOD it (ADD on ENOENT): that also re-reports current readiness.
 *
 * Regular files cannot be watched (epoll_ctl says EPERM). Reads and writes on
 * them never return EAGAIN, so they complete at submission; a poll on one
 * completes at once with POLLIN|POLLOUT, which is what poll(2) reports.
 *
 * Level-triggered polls (add_reader semantics) are one-shot polls re-armed at
 * the next turn through the backlog; re-arming is a MOD, which re-reports the
 * current state, so a still-readable fd fires again. The MOD also re-checks
 * which file the number names. A level poll whose owner keeps the fd open
 * until the poll's final record (UL_POLL_KEPT: a pipe transport) needs no
 * such check: while such polls are all an fd waits for, the fd is
 * registered without EPOLLET and re-arming them is no syscall (decision
 * 382). When anything else comes to wait on the fd, it goes back to
 * edge-triggered; when an event finds no kept poll waiting (the poll was
 * cancelled), too, so an fd nothing waits on does not keep firing.
 *
 * A one-shot read or poll from such an owner that has just read the socket
 * empty (UL_RECV_DRAINED, UL_POLL_DRAINED: a stream transport's direct
 * reads) needs neither the check nor the re-report: every edge since that
 * read is still to come, so it waits on the registration as it is, unless
 * an edge was spent meanwhile on nobody, or the peer hung up already
 * (waits_as_registered, decision 391).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "internal.h"

#define WAKE_TAG UINT64_MAX
#define NEVENTS 512
#define BUDGET 32   /* reads or accepts per op per turn */

enum { TRY_WAIT = 0, TRY_DONE = 1, TRY_YIELD = 2 };
enum { Q_READ, Q_WRITE, Q_POLL };
enum { DR_NO = 0, DR_EVENT = 1, DR_SUBMIT = 2 };  /* ep.drained_ok */

struct ep {
    int epfd;
    int drained_ok;  /* DR_EVENT: the readers being run were woken by an
                        event that carried no hang-up or error; DR_SUBMIT: a
                        stream receive is tried at submission on an idle fd
                        (decision 745). Either way a short stream read
                        drained the socket (try_recv_pool) */
    int32_t ready_head, ready_tail;  /* fds to retry next turn, linked through
                                        ul_fd.ready_next: never allocates */
    struct epoll_event evs[NEVENTS];
    struct ep_fd *x; /* what epoll keeps per fd, beside the engine's fd table
                        (e->fds): as many entries (ep_fd_grow; decision 1004) */
};

/* What only this backend keeps per fd: its own table, so that io_uring's fd
 * table entries are 44 bytes, not 76 (decision 1004). Entry i is fd i's. */
struct ep_fd {
    uint8_t registered, regular, on_ready_list;
    uint8_t reg_out;            /* the registration asks for EPOLLOUT */
    uint8_t reg_lt;             /* ... and is level-triggered (kept_polls_only) */
    uint8_t missed;             /* a wait reported fd readable with no op to take it,
                                   since the last (re)registration (decision 391) */
    uint8_t hup;                /* a wait reported a hang-up or an error on fd */
    uint8_t rwait;              /* the last one-shot pool receive (sock_recv) on fd
                                   found it empty and has not filled its length
                                   since: the next one waits first (decision 368) */
    int32_t wq_head, wq_tail;   /* ops waiting for writability */
    int32_t pq_head, pq_tail;   /* poll ops */
    int32_t ready_next;
    uint32_t reg_gen;           /* (re)registrations so far */
};

static struct ep_fd *EX(ul_engine *e, int fd)
{
    return &((struct ep *)e->bs)->x[fd];
}

/* a new or closed fd's entry, as common.c's fd_reset makes the engine's */
static void ep_fd_reset(struct ep_fd *x)
{
    memset(x, 0, sizeof *x);
    x->wq_head = x->wq_tail = x->pq_head = x->pq_tail = x->ready_next = -1;
}

/* the engine's fd table grew to n entries (ul__fd): this one too */
static int ep_fd_grow(ul_engine *e, int n)
{
    struct ep *p = e->bs;
    if (p == NULL)
        return 0;  /* (ul__epoll_init grows it to nfds) */
    struct ep_fd *x = ul__realloc(p->x, (size_t)n * sizeof *x);
    if (!x)
        return -ENOMEM;
    for (int i = e->nfds; i < n; i++)
        ep_fd_reset(&x[i]);
    p->x = x;
    return 0;
}

static struct ul_op *op_at(ul_engine *e, int32_t slot)
{
    return &e->chunks[(uint32_t)slot >> CHUNK_SHIFT][slot & (CHUNK_SIZE - 1)];
}

static int32_t slot_of(const struct ul_op *op) { return (int32_t)ul__slot(op->ud); }

static int queue_of(const struct ul_op *op)
{
    switch (op->kind) {
    case K_POLL:
        return Q_POLL;
    case K_SEND:
    case K_SENDV:
    case K_SENDMSG:
    case K_WRITE:
    case K_CONNECT:
        return Q_WRITE;
    default:
        return Q_READ;
    }
}

/* fd f's queue q: its head and tail (x: f's entry here, for Q_WRITE and
 * Q_POLL; NULL will do for Q_READ) */
static int32_t *qhead(struct ul_fd *f, struct ep_fd *x, int q)
{
    return q == Q_READ ? &f->rq_head : q == Q_WRITE ? &x->wq_head : &x->pq_head;
}

static int32_t *qtail(struct ul_fd *f, struct ep_fd *x, int q)
{
    return q == Q_READ ? &f->rq_tail : q == Q_WRITE ? &x->wq_tail : &x->pq_tail;
}

static int fd_idle(ul_engine *e, const struct ul_fd *f, int fd)
{
    const struct ep_fd *x = EX(e, fd);
    return f->rq_head < 0 && x->wq_head < 0 && x->pq_head < 0;
}

static inline void q_push(ul_engine *e, struct ul_fd *f, struct ul_op *op, int front)
{
    int q = queue_of(op);
    struct ep_fd *x = q == Q_READ ? NULL : EX(e, op->fd); /* (f is op->fd's) */
    int32_t *h = qhead(f, x, q), *t = qtail(f, x, q), s = slot_of(op);
    op->in_wait = 1;
    if (front) {
        op->wq_next = *h;
        *h = s;
        if (*t < 0)
            *t = s;
    } else {
        op->wq_next = -1;
        if (*t >= 0)
            op_at(e, *t)->wq_next = s;
        else
            *h = s;
        *t = s;
    }
}

static void q_remove(ul_engine *e, struct ul_fd *f, struct ul_op *op)
{
    int q = queue_of(op);
    struct ep_fd *x = q == Q_READ ? NULL : EX(e, op->fd); /* (f is op->fd's) */
    int32_t *h = qhead(f, x, q), *t = qtail(f, x, q), s = slot_of(op), prev = -1;
    for (int32_t i = *h; i >= 0; prev = i, i = op_at(e, i)->wq_next) {
        if (i != s)
            continue;
        if (prev >= 0)
            op_at(e, prev)->wq_next = op->wq_next;
        else
            *h = op->wq_next;
        if (*t == s)
            *t = prev;
        break;
    }
    op->in_wait = 0;
    op->wq_next = -1;
}

static void mark_ready(ul_engine *e, int fd)
{
    struct ep *p = e->bs;
    struct ep_fd *x = EX(e, fd);
    if (x->on_ready_list)
        return;
    x->on_ready_list = 1;
    x->ready_next = -1;
    if (p->ready_tail >= 0)
        EX(e, p->ready_tail)->ready_next = fd;
    else
        p->ready_head = fd;
    p->ready_tail = fd;
}

/* fd is being closed (its ul_fd is reset next): off the retry list */
static void unmark_ready(ul_engine *e, int fd)
{
    struct ep *p = e->bs;
    int32_t prev = -1;
    for (int32_t i = p->ready_head; i >= 0; prev = i, i = EX(e, i)->ready_next) {
        if (i != fd)
            continue;
        if (prev >= 0)
            EX(e, prev)->ready_next = EX(e, fd)->ready_next;
        else
            p->ready_head = EX(e, fd)->ready_next;
        if (p->ready_tail == fd)
            p->ready_tail = prev;
        break;
    }
    EX(e, fd)->on_ready_list = 0;
}

/* op waits for writability: a writer (send, write, connect) or a poll for
 * POLLOUT */
static int op_wants_out(const struct ul_op *op)
{
    return queue_of(op) == Q_WRITE ||
           (queue_of(op) == Q_POLL && (op->events & (POLLOUT | POLLWRNORM)));
}

/* EPOLLOUT is wanted: an op of f's waits for writability */
static int wants_out(ul_engine *e, int fd)
{
    const struct ep_fd *x = EX(e, fd);
    if (x->wq_head >= 0)
        return 1;
    for (int32_t s = x->pq_head; s >= 0; s = op_at(e, s)->wq_next)
        if (op_wants_out(op_at(e, s)))
            return 1;
    return 0;
}

/* Only kept level polls for reading wait on f: it may be registered
 * level-triggered (decision 382) */
static int kept_polls_only(ul_engine *e, const struct ul_fd *f, int fd)
{
    const struct ep_fd *x = EX(e, fd);
    if (f->rq_head >= 0 || x->wq_head >= 0 || x->pq_head < 0)
        return 0;
    for (int32_t s = x->pq_head; s >= 0; s = op_at(e, s)->wq_next) {
        const struct ul_op *op = op_at(e, s);
        if (op->level != UL_POLL_KEPT || op_wants_out(op))
            return 0;
    }
    return 1;
}

/* (Re)register fd. Returns 0, or -errno; EPERM marks a regular file.
 * EPOLLOUT only while something waits to write (decision 356): a re-arm
 * reports the fd's current state, and a writable socket would answer a
 * receive's re-arm with an OUT event no op waits for, so the next wait
 * returned at once, empty-handed, and the loop turned once more. */
static int arm(ul_engine *e, int fd, int force_mod)
{
    struct ep *p = e->bs;
    struct ul_fd *f = &e->fds[fd];
    struct ep_fd *x = EX(e, fd);
    int out = wants_out(e, fd), lt = kept_polls_only(e, f, fd);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (lt ? 0 : EPOLLET) |
                                       (out ? EPOLLOUT : 0),
                             .data.u64 = (uint64_t)fd};
    if (x->registered && !force_mod)
        return 0;
    int op = x->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    int r = epoll_ctl(p->epfd, op, fd, &ev);
    if (r < 0 && op == EPOLL_CTL_MOD && errno == ENOENT) {
        e->st.ctl_failed++;  /* the file was closed behind us (decision 989) */
        r = epoll_ctl(p->epfd, op = EPOLL_CTL_ADD, fd, &ev);
    } else if (r < 0 && op == EPOLL_CTL_ADD && errno == EEXIST) {
        e->st.ctl_failed++;
        r = epoll_ctl(p->epfd, op = EPOLL_CTL_MOD, fd, &ev);
    }
    if (r < 0)
        e->st.ctl_failed++;
    e->st.submitted++;
    if (r < 0) {
        if (errno == EPERM)
            x->regular = 1;
        return -errno;
    }
    x->registered = 1;
    x->reg_out = (uint8_t)out;
    x->reg_lt = (uint8_t)lt;
    x->missed = 0;  /* the MOD re-reports what is there (waits_as_registered) */
    x->reg_gen++;  /* events may come from another file than before */
    return 0;
}

/* A poll of f's waits for what a read would take */
static int polls_want_in(ul_engine *e, int fd)
{
    for (int32_t s = EX(e, fd)->pq_head; s >= 0; s = op_at(e, s)->wq_next)
        if (op_at(e, s)->events & (POLLIN | POLLRDNORM | POLLPRI | POLLRDHUP))
            return 1;
    return 0;
}

/* op, leaving f idle, may wait on f's registration as it is, with no
 * epoll_ctl (decision 391). Its owner keeps the fd open until op's record,
 * so the number names the file registered (the fd-number trap of the
 * contract cannot spring: decision 382's reasoning), and read it until a
 * read came short or said EAGAIN (op->drained): the socket was empty then,
 * so every byte, hang-up or error since has raised an edge of the
 * registration (edge-triggered, for reading only) that a wait has yet to
 * report, unless a wait reported the fd readable while nothing waited to
 * read (missed: that edge is spent) or the peer hung up already (hup: a
 * FIN queued behind the bytes a short read stopped before raises no edge
 * after it). Otherwise the re-arm, which reports what is there now. A
 * registration asking for EPOLLOUT is re-armed too, which drops it
 * (decision 356). */
static int waits_as_registered(ul_engine *e, const struct ul_op *op)
{
    const struct ep_fd *x = EX(e, op->fd);
    return op->drained && x->registered && !x->reg_lt && !x->reg_out && !x->missed && !x->hup &&
           !op_wants_out(op);
}

/*
 * Never block, never touch the caller's file flags. The engine does not own
 * O_NONBLOCK of an fd it did not create (a pipe or tty may be shared with
 * another process), and a fcntl per submission costs a syscall. So each
 * attempt says "don't wait" itself: MSG_DONTWAIT for sockets, RWF_NOWAIT
 * (preadv2/pwritev2) for reads and writes. Where RWF_NOWAIT is refused (a
 * regular file on some filesystems, a tty), and for accept, which has no
 * per-call flag, the fd's own mode is read once for the op (F_GETFL): a
 * blocking fd is then tried only when poll() says it is ready.
 */
#define NB_NOWAIT 0     /* RWF_NOWAIT / MSG_DONTWAIT do the job */
#define NB_PLAIN 1      /* plain read/write/accept4: the fd is non-blocking */
#define NB_GATED 2      /* the fd blocks: try only when poll() says ready */

static uint8_t plain_mode(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return (fl >= 0 && !(fl & O_NONBLOCK)) ? NB_GATED : NB_PLAIN;
}

/* NB_GATED: 1 when fd is ready for op now (a regular file always is) */
static int gate_open(const struct ul_op *op, short events)
{
    struct pollfd p = {.fd = op->fd, .events = events};
    return op->nb != NB_GATED || poll(&p, 1, 0) != 0;
}

/* read (offset -1) into the n buffers of v without blocking */
static ssize_t nowait_readv(struct ul_op *op, const struct iovec *v, int n)
{
    if (op->nb == NB_NOWAIT) {
        ssize_t r = preadv2(op->fd, v, n, -1, RWF_NOWAIT);
        if (r >= 0 || (errno != EOPNOTSUPP && errno != EINVAL))
            return r;
        op->nb = plain_mode(op->fd);
    }
    if (!gate_open(op, POLLIN)) {
        errno = EAGAIN;
        return -1;
    }
    return readv(op->fd, v, n);
}

static ssize_t nowait_read_into(struct ul_op *op, char *b, size_t n)
{
    struct iovec v = {b, n};
    return nowait_readv(op, &v, 1);
}

static ssize_t nowait_read(struct ul_op *op) { return nowait_read_into(op, op->buf, op->len); }

static ssize_t nowait_write(struct ul_op *op, char *b, size_t n)
{
    struct iovec v = {b, n};
    if (op->nb == NB_NOWAIT) {
        ssize_t r = pwritev2(op->fd, &v, 1, -1, RWF_NOWAIT);
        if (r >= 0 || (errno != EOPNOTSUPP && errno != EINVAL))
            return r;
        op->nb = plain_mode(op->fd);
    }
    if (!gate_open(op, POLLOUT)) {
        errno = EAGAIN;
        return -1;
    }
    return write(op->fd, b, n);
}

/* ------------------------------------------------------------- attempts */

/* A pool read takes at most 32 KiB per attempt, and an fd is tried at most
 * twice per run (its event, then the retry list): a pipe's default capacity
 * per turn. What a writer refills while we read would otherwise make each
 * turn's bytes (the joined chunk a transport gets) hundreds of KiB, and glibc
 * serves every such allocation with fresh pages (mmap, or a heap grown and
 * trimmed again): measured, 2.5 ms of CPU per MiB against 0.6 (decision 165). */
#define READ_TURN_BYTES 32768

/* After a short read (less than the buffer) from a stream socket, the
 * socket's receive queue was empty at that moment: another read would only
 * say EAGAIN. Any byte, FIN or error that arrives later raises a new edge,
 * so waiting is safe, except when the event we are serving already carried
 * a hang-up or an error (FIN queued behind the data: no new edge will come,
 * read on to the 0). Datagram sockets are never drained by a short read.
 * At submission (DR_SUBMIT, decision 745) the fd is idle, so the wait that
 * follows (re)registers it (enqueue: ADD, or MOD), which reports what is
 * queued by then, a FIN behind the bytes read included, and every later
 * byte, FIN or error raises an edge of that registration; there the op's
 * caller has said it is a stream socket (UL_RECV_STREAM), or it is not
 * taken as one: no SO_TYPE asked, the syscall the shortcut saves. */
static int drained_by_short_read(ul_engine *e, struct ul_op *op)
{
    int ok = ((struct ep *)e->bs)->drained_ok;
    if (ok != DR_EVENT)
        return ok == DR_SUBMIT && op->stream == 1;
    if (!op->stream) {
        int type = 0;
        socklen_t len = sizeof type;
        op->stream = (getsockopt(op->fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
                      type == SOCK_STREAM) ? 1 : 2;
    }
    return op->stream == 1;
}

/* A multishot pool read (pipes, FIFOs, ttys) fills up to READ_IOV_MAX pool
 * buffers with one readv, as many as the turn's READ_TURN_BYTES has room for
 * (two 16 KiB buffers): half the syscalls of a buffer per read, and a writer
 * blocked on a full pipe is woken once per read that finds the pipe full,
 * not once per buffer (decision 326). A record per buffer, as before. */
#define READ_IOV_MAX 8

/* Up to want free pool buffers as op->len-byte iovecs (v, with their ids in
 * bids): how many there were. */
static inline int take_bufs(ul_engine *e, struct ul_op *op, struct iovec *v, uint16_t *bids, int want)
{
    int n = 0;
    for (int bid; n < want && (bid = ul__pool_take(e)) >= 0; n++) {
        bids[n] = (uint16_t)bid;
        v[n].iov_base = (char *)e->pool + (size_t)bid * e->cfg.buf_size;
        v[n].iov_len = op->len;
    }
    return n;
}

/* A multishot read of r bytes (r <= 0: none) into the n buffers of bids: a
 * record per buffer filled, in order; the others go back, the stack's top
 * as it was. How many were filled. */
static inline int emit_bufs(ul_engine *e, struct ul_op *op, ssize_t r, const uint16_t *bids, int n)
{
    int k = 0;
    for (ssize_t left = r; left > 0; k++) {
        uint32_t len = left < (ssize_t)op->len ? (uint32_t)left : op->len;
        ul__emit(e, op, (int32_t)len, UL_F_MORE | UL_F_BUFFER, bids[k]);
        left -= len;
    }
    for (int i = n - 1; i >= k; i--)
        ul__pool_put(e, bids[i]);
    return k;
}

static int try_read_pool(ul_engine *e, struct ul_op *op)
{
    size_t got = 0;
    for (int k = 0; k < BUDGET && got < READ_TURN_BYTES; k++) {
        struct iovec v[READ_IOV_MAX];
        uint16_t bids[READ_IOV_MAX];
        size_t want = op->multishot ? (READ_TURN_BYTES - got + op->len - 1) / op->len : 1;
        int n = take_bufs(e, op, v, bids, want < READ_IOV_MAX ? (int)want : READ_IOV_MAX);
        if (n == 0)
            return TRY_YIELD;  /* buffers come back at the next recycle */
        ssize_t r = nowait_readv(op, v, n);
        int err = errno;
        e->st.submitted++;
        if (r > 0 && !op->multishot) {
            if ((size_t)r >= op->len)  /* more is likely there: try first again */
                EX(e, op->fd)->rwait = 0;
            ul__finish(e, op, (int32_t)r, UL_F_BUFFER, bids[0]);
            return TRY_DONE;  /* n was 1 */
        }
        emit_bufs(e, op, r, bids, n);
        if (r > 0) {
            got += (size_t)r;
            continue;
        }
        if (r < 0 && err == EINTR)
            continue;
        if (r < 0 && (err == EAGAIN || err == EWOULDBLOCK))
            return TRY_WAIT;
        ul__finish(e, op, r == 0 ? 0 : -err, 0, 0);
        return TRY_DONE;
    }
    return TRY_YIELD;  /* the rest next turn, from the retry list */
}

/* A multishot stream receive fills up to this many pool buffers per call
 * (recvmsg with one iovec entry per buffer, decision 338): a 100 KiB message
 * is one syscall, not seven recv()s of 16 KiB. Only while the op's reads
 * come big (op->wide: the last one took a whole buffer or more); otherwise
 * one buffer, so a small message does not take and give back eight
 * (decision 339). */
#define RECV_IOV 8

/* A multishot stream receive takes at most UL_RECV_TURN_BYTES between two
 * hand-overs of records to Python (ul_run's returns: its attempt at
 * submission, its event's and the retry list's in the run after it count
 * together), the stock loop's one recv(max_size) a turn; the rest stays in
 * the socket, where the peer's send queue and a reset see it, until the next
 * run (decision 924). op->done counts what it took since op->turn. */
static int try_recv_pool(ul_engine *e, struct ul_op *op)
{
    if (op->kind == K_READ_POOL)
        return try_read_pool(e, op);
    if (op->multishot)
        ul__turn_taken(e, op);
    int used = 0; /* buffers read into this turn: at most BUDGET */
    while (used < BUDGET) {
        size_t room = op->multishot ? UL_RECV_TURN_BYTES - op->done : op->len;
        if (room == 0)
            return TRY_YIELD;  /* the rest after Python has had these */
        int want = op->multishot && op->wide ? RECV_IOV : 1, m = 0;
        if (want > BUDGET - used)
            want = BUDGET - used;
        if ((size_t)want * op->len > room)
            want = (int)((room + op->len - 1) / op->len);
        uint16_t bids[RECV_IOV];
        struct iovec iov[RECV_IOV];
        m = take_bufs(e, op, iov, bids, want);
        if (m == 0)
            return TRY_YIELD;  /* buffers come back at the next recycle */
        size_t asked = (size_t)m * op->len;
        if (asked > room) {  /* the last buffer takes what is left of the turn's */
            iov[m - 1].iov_len -= asked - room;
            asked = room;
        }
        ssize_t r;
        if (m == 1) {
            r = recv(op->fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT);
        } else {
            struct msghdr msg = {0};
            msg.msg_iov = iov;
            msg.msg_iovlen = (size_t)m;
            r = recvmsg(op->fd, &msg, MSG_DONTWAIT);
        }
        int err = errno;
        e->st.submitted++;
        if (r > 0 && !op->multishot) {
            if ((size_t)r >= op->len)  /* more is likely there: try first again */
                EX(e, op->fd)->rwait = 0;
            ul__finish(e, op, (int32_t)r, UL_F_BUFFER, bids[0]);
            return TRY_DONE; /* m == 1 */
        }
        int k = emit_bufs(e, op, r, bids, m);
        used += k > 0 ? k : 1;
        if (r > 0) {
            op->wide = (size_t)r >= op->len;
            if (op->multishot)
                op->done += (uint32_t)r;
            if ((size_t)r < asked && drained_by_short_read(e, op))
                return TRY_WAIT;
            continue;
        }
        if (r < 0 && err == EINTR)
            continue;
        if (r < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
            if (!op->multishot)  /* the next sock_recv waits first (decision 368) */
                EX(e, op->fd)->rwait = 1;
            return TRY_WAIT;
        }
        ul__finish(e, op, r == 0 ? 0 : -err, 0, 0);
        return TRY_DONE;
    }
    return TRY_YIELD;
}

/* Datagrams into the datagram pool, in the layout of io_uring's multishot
 * recvmsg (ul__dmsg_prep); multishot emulated. They are read by recvmmsg,
 * 2, then 4, 8, 16, 32 at a time up to DGRAM_BUDGET a turn (a one-shot: 1),
 * each into its own pool buffer (those left unused go back): a burst costs a
 * syscall per batch, and a ping-pong's single datagram one syscall, the
 * kernel meeting the EAGAIN inside it. While an op's batches come back full
 * (op->wide: a flood) its next try reads the whole budget at once
 * (decision 362).
 * A count short of the batch means the queue was empty at that moment, or
 * that recvmmsg met an error after the first datagram and keeps it in
 * sk_err for the next call. Either way a later datagram or that error has
 * raised, or will raise, an edge of its own (sk_err is checked before each
 * datagram, so an error met mid-batch was set after the epoll_wait that
 * woke us), so waiting is safe, as after a short stream read, except when
 * the event being served already carried an error or a hang-up, or the
 * receive was tried at submission: then it reads on to EAGAIN or the
 * error, as successive recvmsg calls would. */
#define DGRAM_BUDGET 64 /* datagrams per op per turn; half the datagram pool */
static int try_recvmsg_pool(ul_engine *e, struct ul_op *op)
{
    struct mmsghdr mm[DGRAM_BUDGET];
    struct iovec iov[DGRAM_BUDGET];
    uint16_t bids[DGRAM_BUDGET];
    int batch = !op->multishot ? 1 : op->wide ? DGRAM_BUDGET : 2;
    for (int n = 0; n < DGRAM_BUDGET; batch *= 2) {
        int want = UL_MIN(batch, DGRAM_BUDGET - n), k = 0, bid;
        while (k < want && (bid = ul__dpool_take(e)) >= 0) {
            bids[k] = (uint16_t)bid;
            ul__dmsg_prep(e, (uint32_t)bid, &mm[k].msg_hdr, &iov[k]);
            k++;
        }
        if (k == 0)
            return TRY_YIELD;  /* buffers come back at the next recycle */
        int r;
        do
            r = recvmmsg(op->fd, mm, (unsigned)k, op->msg_flags | MSG_DONTWAIT, NULL);
        while (r < 0 && errno == EINTR);
        int err = errno;
        e->st.submitted++;
        op->wide = r == k;
        for (int i = k; i-- > (r > 0 ? r : 0);)
            ul__pool_put(e, bids[i]);  /* back in the order they were taken */
        if (r <= 0) {
            if (r == 0 || err == EAGAIN || err == EWOULDBLOCK)
                return TRY_WAIT;
            ul__finish(e, op, -err, 0, 0);
            return TRY_DONE;
        }
        for (int i = 0; i < r; i++) {
            int rearm;
            int32_t len =
                ul__dmsg_fill(e, bids[i], mm[i].msg_hdr.msg_namelen, (int32_t)mm[i].msg_len);
            ul__dgram_result(e, op, len, bids[i], 1, &rearm);
        }
        if (!op->multishot)
            return TRY_DONE;
        n += r;
        if (r < k && ((struct ep *)e->bs)->drained_ok == DR_EVENT)
            return TRY_WAIT;
    }
    return TRY_YIELD;
}

static int try_accept(ul_engine *e, struct ul_op *op)
{
    for (int n = 0; n < BUDGET; n++) {
        if (!gate_open(op, POLLIN))
            return TRY_WAIT;
        /* a one-shot accept takes the peer's address (decision 422) */
        int addr = !op->multishot && op->ax;
        if (addr)
            op->ax->addrlen = sizeof op->ax->addr;
        int r = accept4(op->fd, addr ? (struct sockaddr *)&op->ax->addr : NULL,
                        addr ? (socklen_t *)&op->ax->addrlen : NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        e->st.submitted++;
        if (r >= 0) {
            if (!op->multishot) {
                ul__finish(e, op, r, addr ? UL_F_ADDR : 0, 0);
                return TRY_DONE;
            }
            ul__emit(e, op, r, UL_F_MORE, 0);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return TRY_WAIT;
        ul__finish(e, op, -errno, 0, 0);
        return TRY_DONE;
    }
    return TRY_YIELD;
}

/* send / ordered or positional write: all of it, or an error */
static int try_write_all(ul_engine *e, struct ul_op *op)
{
    while (op->done < op->len) {
        ssize_t r;
        char *b = op->buf + op->done;
        size_t n = op->len - op->done;
        if (op->kind == K_SENDV) {
            struct ul_iov_block *c = ul__op_iov(op);
            struct msghdr m = {.msg_iov = c->v + c->idx,
                               .msg_iovlen = UL_MIN(c->n - c->idx, 1024u)};
            r = sendmsg(op->fd, &m, op->msg_flags | MSG_DONTWAIT);
        } else if (op->kind == K_SEND) {
            r = send(op->fd, b, n, op->msg_flags | MSG_DONTWAIT);
        } else if (op->offset >= 0) {
            r = pwrite(op->fd, b, n, op->offset);
        } else {
            r = nowait_write(op, b, n);
        }
        e->st.submitted++;
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return TRY_WAIT;
        if (r <= 0) {
            ul__stop(e, op, r < 0 ? errno : 0);  /* says what went out before */
            return TRY_DONE;
        }
        op->done += (uint32_t)r;
        if (op->offset >= 0)
            op->offset += r;
        if (op->kind == K_SENDV)
            ul__iov_advance(op, (uint32_t)r);
    }
    ul__finish(e, op, (int32_t)op->done, 0, 0);
    return TRY_DONE;
}

static int try_op(ul_engine *e, struct ul_op *op)
{
    ssize_t r;
    uint16_t fl = 0;
    switch (op->kind) {
    case K_RECV:
    case K_READ_POOL:
        return try_recv_pool(e, op);
    case K_ACCEPT:
        return try_accept(e, op);
    case K_RECVMSG_POOL:
        return try_recvmsg_pool(e, op);
    case K_SEND:
    case K_SENDV:
    case K_WRITE:
        return try_write_all(e, op);
    case K_RECV_INTO:
        r = recv(op->fd, op->buf, op->len, op->msg_flags | MSG_DONTWAIT);
        break;
    case K_RECVMSG:
        op->ax->msg.msg_namelen = sizeof(struct sockaddr_storage);
        r = recvmsg(op->fd, &op->ax->msg, op->msg_flags | MSG_DONTWAIT);
        if (r >= 0) {
            op->ax->addrlen = op->ax->msg.msg_namelen;
            fl = UL_F_ADDR;
        }
        break;
    case K_SENDMSG:
        r = sendmsg(op->fd, &op->ax->msg, op->msg_flags | MSG_DONTWAIT);
        break;
    case K_READ:
        r = op->offset >= 0 ? pread(op->fd, op->buf, op->len, op->offset) : nowait_read(op);
        break;
    case K_CONNECT:
        if (op->connecting) {
            int err = 0;
            socklen_t len = sizeof err;
            if (getsockopt(op->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
            if (err == EINPROGRESS || err == EALREADY)
                return TRY_WAIT;
            ul__finish(e, op, -err, 0, 0);
            return TRY_DONE;
        }
        r = connect(op->fd, (struct sockaddr *)&op->ax->addr, op->ax->addrlen);
        if (r < 0 && errno == EINPROGRESS) {
            op->connecting = 1;
            return TRY_WAIT;
        }
        break;
    default:
        r = 0;
        break;
    }
    e->st.submitted++;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return TRY_WAIT;
    ul__finish(e, op, r < 0 ? -errno : (int32_t)r, fl, 0);
    return TRY_DONE;
}

/* Waiting ops of fd that were asked for another file than the one fd names
 * now (user code closed the number and it was reused): they end with -EBADF.
 * Returns 1 when some did (the fd may be idle now and must be re-armed). */
static int purge_stale(ul_engine *e, int fd)
{
    struct ul_fd *f = &e->fds[fd];
    int32_t heads[2] = {f->rq_head, EX(e, fd)->wq_head};
    int any = 0;
    for (int q = 0; q < 2; q++)
        for (int32_t s = heads[q]; s >= 0; s = op_at(e, s)->wq_next)
            any |= op_at(e, s)->has_ident;
    if (!any)
        return 0;
    uint64_t now = ul__ident_now(e, fd);
    int n = 0;
    for (int q = Q_READ; q <= Q_WRITE; q++) {
        int32_t s = *qhead(&e->fds[fd], EX(e, fd), q);
        while (s >= 0) {
            struct ul_op *op = op_at(e, s);
            s = op->wq_next;
            if (op->has_ident && op->ident != now) {
                q_remove(e, &e->fds[fd], op);
                ul__stop(e, op, EBADF);
                n++;
            }
        }
    }
    return n > 0;
}

/* Queue op on its fd. Whenever the fd leaves idle it is (re)registered, MOD
 * then ADD on ENOENT, whatever `registered` says: the user may have closed the
 * number behind our back (the kernel then dropped the registration) and the
 * number may now name another file. Trusting the flag here is how a receive
 * on a reused number waited forever (review D3). Registration failure ends
 * the op with the error. Returns 0 when op is queued. */
static int enqueue(ul_engine *e, struct ul_op *op)
{
    struct ul_fd *f = &e->fds[op->fd];
    int was_idle = fd_idle(e, f, op->fd);
    /* it will be tried again later by number: remember which file it is
     * for (common.c, identity); ops start to wait only while the number is
     * known to name their file (at submission, or in a run) */
    if (ul__may_continue(op))
        ul__ident_capture(e, op);
    /* the fd is busy: with ops of a file that is gone from this number, the
     * kernel dropped its registration and only they kept the fd from going
     * idle (and being re-armed) */
    if (!was_idle && purge_stale(e, op->fd))
        was_idle = 1;
    f = &e->fds[op->fd];
    struct ep_fd *x = EX(e, op->fd);
    q_push(e, f, op, 0);
    op->reg_gen = x->reg_gen;
    if (!was_idle && x->registered && !x->reg_lt && (x->reg_out || !op_wants_out(op)))
        return 0;
    if (was_idle && waits_as_registered(e, op))
        return 0;  /* a drained receive (decision 391) */
    int r = (x->regular && op->kind == K_READ_POOL) ? -EPERM : arm(e, op->fd, 1);
    if (r == -EPERM && op->kind == K_READ_POOL) {
        /* a file epoll cannot watch (a regular file, /dev/zero) is always
         * ready: the pool read goes on from the ready list, turn by turn */
        mark_ready(e, op->fd);
        return 0;
    }
    if (r < 0) {
        q_remove(e, f, op);
        ul__finish(e, op, r == -EPERM ? -EINVAL : r, 0, 0);
        return r;
    }
    op->reg_gen = EX(e, op->fd)->reg_gen;
    return 0;
}

/* op could not complete now: queue it and make sure its fd is watched */
static void wait_for(ul_engine *e, struct ul_op *op)
{
    enqueue(e, op);
}

/* rearm: op is a level poll back from the backlog, not a new submission */
static void poll_arm(ul_engine *e, struct ul_op *op, int rearm)
{
    struct ul_fd *f = &e->fds[op->fd];
    const struct ep_fd *x = EX(e, op->fd);
    int was_idle = fd_idle(e, f, op->fd);
    q_push(e, f, op, 0);
    /* a kept poll on its level-triggered registration: nothing to do
     * (decision 382; its owner kept the fd, so it names the same file) */
    if (rearm && op->level == UL_POLL_KEPT && x->registered && x->reg_lt &&
        kept_polls_only(e, f, op->fd))
        return;
    /* a drained poll on an edge-triggered one: nothing to do (decision 391) */
    if (!rearm && was_idle && waits_as_registered(e, op))
        return;
    int r = arm(e, op->fd, 1);
    if (r == -EPERM) {  /* regular file: always ready */
        q_remove(e, f, op);
        int32_t rev = (int32_t)(op->events & (POLLIN | POLLOUT | POLLRDNORM | POLLWRNORM));
        if (op->level && !op->cancelled) {
            ul__emit(e, op, rev, UL_F_MORE, 0);
            ul__backlog_push(e, op);
        } else {
            ul__finish(e, op, rev, 0, 0);
        }
    } else if (r < 0) {
        q_remove(e, f, op);
        ul__finish(e, op, r, 0, 0);
    }
}

static int ep_submit(ul_engine *e, struct ul_op *op)
{
    op->state = S_ACTIVE;
    switch (op->kind) {
    case K_NOP:
        ul__finish(e, op, 0, 0, 0);
        return 0;
    case K_POLL:
        poll_arm(e, op, 0);
        return 0;
    case K_ACCEPT:
        if (op->nb == NB_NOWAIT)  /* accept4 has no per-call flag: read the mode once */
            op->nb = plain_mode(op->fd);
        break;
    default:
        break;
    }
    struct ul_fd *f = &e->fds[op->fd];
    /* earlier readers go first; a receive asked to wait first (a read of
     * the socket just came short, decision 389) waits without an attempt
     * when the fd is idle: leaving idle re-arms it (enqueue), and the
     * re-arm reports data (or a hang-up) that is there already. So does a
     * one-shot pool receive (sock_recv) after one that found fd empty and
     * no one-shot receive since that filled its length: in a request /
     * response exchange it is asked for before its data comes, and its
     * attempt would only say EAGAIN (decision 368; io_uring: 357) */
    int wait_first = op->wait_first || (op->kind == K_RECV && !op->multishot && EX(e, op->fd)->rwait);
    int idle = fd_idle(e, f, op->fd), r;
    if (op->kind != K_SEND && queue_of(op) == Q_READ && (f->rq_head >= 0 || (wait_first && idle))) {
        r = TRY_WAIT;
    } else if (op->kind == K_RECV && op->stream == 1 && idle) {
        /* a stream transport's receive: a short read ends the attempt, the
         * fd's re-arm reports what came since (decision 745) */
        struct ep *p = e->bs;
        p->drained_ok = DR_SUBMIT;
        r = try_op(e, op);
        p->drained_ok = DR_NO;
    } else {
        r = try_op(e, op);
    }
    if (r == TRY_WAIT)
        wait_for(e, op);
    else if (r == TRY_YIELD && enqueue(e, op) == 0)
        mark_ready(e, op->fd);  /* go on next turn without waiting for an edge */
    return 0;
}

static void ep_cancel(ul_engine *e, struct ul_op *op)
{
    if (op->in_wait)
        q_remove(e, &e->fds[op->fd], op);
    ul__stop(e, op, ECANCELED);  /* a send that already sent part says so */
}

/* Attempt the ops of one queue, in order, until one has to wait. */
/* retried: the fd is tried again without an event (the ready list): its
 * number may name another file since the last try, with no re-registration
 * to tell, so an op that carries an identity compares it. */
static void run_queue(ul_engine *e, int fd, int q, int retried)
{
    for (;;) {
        struct ul_fd *f = &e->fds[fd];
        int32_t s = *qhead(f, EX(e, fd), q);
        if (s < 0)
            return;
        struct ul_op *op = op_at(e, s);
        q_remove(e, f, op);
        /* Events for fd come from the file that was registered last; only
         * when that may be another file than op's (a re-registration since
         * op's identity was last known to hold) is the identity compared:
         * one syscall per re-registration, not per event. */
        if (op->has_ident && (retried || op->reg_gen != EX(e, fd)->reg_gen)) {
            if (ul__ident_gone(e, op)) {  /* the number names another file now */
                ul__stop(e, op, EBADF);
                continue;
            }
            op->reg_gen = EX(e, fd)->reg_gen;
        }
        int r = try_op(e, op);
        if (r == TRY_DONE)
            continue;
        q_push(e, &e->fds[fd], op, 1);
        if (r == TRY_YIELD)
            mark_ready(e, fd);
        return;
    }
}

static void run_polls(ul_engine *e, int fd, uint32_t events)
{
    struct ul_fd *f = &e->fds[fd];
    int32_t s = EX(e, fd)->pq_head;
    while (s >= 0) {
        struct ul_op *op = op_at(e, s);
        s = op->wq_next;
        uint32_t rev = events & (op->events | POLLERR | POLLHUP);
        if (!rev)
            continue;
        q_remove(e, f, op);
        if (op->level && !op->cancelled) {
            ul__emit(e, op, (int32_t)rev, UL_F_MORE, 0);
            e->st.rearms++;
            ul__backlog_push(e, op);
        } else {
            ul__finish(e, op, (int32_t)rev, 0, 0);
        }
    }
}

static int ep_run(ul_engine *e, int64_t timeout_ns)
{
    struct ep *p = e->bs;
    int err = 0;
    struct ul_op *op;
    for (uint32_t n = e->bl_count; n-- && ul__backlog_pop(e, &op);) {
        op->state = S_ACTIVE;
        if (op->kind == K_POLL)
            poll_arm(e, op, op->level != 0);
        else
            ep_submit(e, op);
    }
    int wait = timeout_ns != 0 && e->nrec == 0 && e->npend == 0 && p->ready_head < 0;
    if (wait && !ul__wake_prepare_sleep(e))
        wait = 0;
    int ms = 0;
    if (wait)
        ms = timeout_ns < 0 ? -1
             : timeout_ns > 2000000000LL * 1000000LL ? 2000000000
             : (int)((timeout_ns + 999999) / 1000000);
    int n = epoll_wait(p->epfd, p->evs, NEVENTS, ms);
    int saved = errno;
    if (wait) {
        ul__wake_after_sleep(e);
        e->st.waits++;
    }
    e->st.enters++;
    if (n < 0) {
        n = 0;
        if (saved == EINTR)
            err = -EINTR;
    }
    for (int i = 0; i < n; i++) {
        uint64_t tag = p->evs[i].data.u64;
        uint32_t ev = p->evs[i].events;
        if (tag == WAKE_TAG) {
            ul__wake_drain(e);
            continue;
        }
        int fd = (int)tag;
        if (fd >= e->nfds)
            continue;
        /* (no table grows during a run: one pointer for the event) */
        struct ep_fd *x = EX(e, fd);
        if (!x->registered)
            continue;
        /* level-triggered, but no kept poll waits any more: edge-triggered
         * again, or the fd would fire at every wait (decision 382) */
        if (x->reg_lt && !kept_polls_only(e, &e->fds[fd], fd))
            arm(e, fd, 1);
        /* what a drained op may not wait through (waits_as_registered) */
        struct ul_fd *f = &e->fds[fd];
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            x->hup = 1;
        if ((ev & (EPOLLIN | EPOLLPRI)) && f->rq_head < 0 && !polls_want_in(e, fd))
            x->missed = 1;
        if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR | EPOLLPRI)) {
            p->drained_ok = (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) ? DR_NO : DR_EVENT;
            run_queue(e, fd, Q_READ, 0);
            p->drained_ok = DR_NO;
        }
        if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            run_queue(e, fd, Q_WRITE, 0);
        if (x->pq_head >= 0)
            run_polls(e, fd, ev);
    }
    /* fds that stopped early last time (budget, pool): go on, no waiting. The
     * list is taken whole; fds that stop early again go on a new one. */
    int32_t fd = p->ready_head;
    p->ready_head = p->ready_tail = -1;
    while (fd >= 0) {
        struct ep_fd *x = EX(e, fd);
        int32_t next = x->ready_next;
        x->on_ready_list = 0;
        x->ready_next = -1;
        run_queue(e, fd, Q_READ, 1);
        run_queue(e, fd, Q_WRITE, 1);
        fd = next;
    }
    return err;
}

/* ep_run(e, 0) would find nothing: no op is in flight, so none waits on an
 * fd's readiness, and nothing is on the backlog or the retry list. An event
 * epoll_wait(0) could still return then concerns no op (it would be read and
 * dropped: an op submitted later is tried at once and re-arms its fd) or is a
 * stale eventfd count (a wake is seen through wake_pending without it). So
 * skipping the call changes nothing that can be observed (decision 291). */
static int ep_quiet(ul_engine *e)
{
    struct ep *p = e->bs;
    return e->in_flight == 0 && e->bl_count == 0 && p->ready_head < 0;
}

/* fds wait on the retry list: the next run will not wait */
static int ep_ready(ul_engine *e)
{
    struct ep *p = e->bs;
    return p->ready_head >= 0;
}

static void ep_recycle(ul_engine *e, uint16_t bid)
{
    ul__pool_put(e, bid);  /* either pool: the bid says which */
}

static void ep_before_close(ul_engine *e, int fd)
{
    struct ep *p = e->bs;
    if (EX(e, fd)->on_ready_list)
        unmark_ready(e, fd);
    if (EX(e, fd)->registered)
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, fd, NULL);
}

/* fd is closed next, and its engine entry reset (common.c do_close): its
 * entry here too (decision 1004) */
static void ep_before_close_reset(ul_engine *e, int fd)
{
    ep_before_close(e, fd);
    ep_fd_reset(EX(e, fd));
}

/* ul_fd_closing: no op of ours is live on fd and its owner closes it next.
 * The DEL keeps review D3's rule where the file outlives the number (a dup,
 * a fork child's copy): no registration is left to report that file's
 * events under a number another file gets. Forgotten, the number is armed
 * next with one ADD (decision 989). */
static void ep_fd_closing(ul_engine *e, int fd)
{
    ep_before_close(e, fd);
    struct ep_fd *x = EX(e, fd);
    x->registered = x->regular = x->reg_out = x->reg_lt = 0;
    x->missed = x->hup = x->rwait = 0;
}

static void ep_destroy(ul_engine *e)
{
    struct ep *p = e->bs;
    if (!p)
        return;
    close(p->epfd);
    free(p->x);
    free(p);
    e->bs = NULL;
}

/* fork child: the epoll set is shared with the parent, so it is only closed */
static void ep_forget(ul_engine *e)
{
    ep_destroy(e);
}

const struct ul_backend ul_epoll_backend = {
    .submit = ep_submit,
    .cancel = ep_cancel,
    .cancel_fd = NULL,
    .run = ep_run,
    .flush = NULL,
    .recycle = ep_recycle,
    .before_close = ep_before_close_reset,
    .fd_closing = ep_fd_closing,
    .destroy = ep_destroy,
    .forget = ep_forget,
    .quiet = ep_quiet,
    .ready = ep_ready,
    .fd_grow = ep_fd_grow,
};

int ul__epoll_init(ul_engine *e, char *err, int errlen)
{
    struct ep *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, (size_t)errlen, "out of memory");
        return -1;
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (p->epfd < 0) {
        snprintf(err, (size_t)errlen, "epoll_create1: %s", strerror(errno));
        free(p);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, e->wake_fd, &ev) < 0) {
        snprintf(err, (size_t)errlen, "epoll_ctl(eventfd): %s", strerror(errno));
        close(p->epfd);
        free(p);
        return -1;
    }
    if (ul__fd_own(e, p->epfd) < 0) {  /* no op may name it (decision 427) */
        snprintf(err, (size_t)errlen, "out of memory");
        close(p->epfd);
        free(p);
        return -1;
    }
    p->ready_head = p->ready_tail = -1;
    /* this backend's fd table, as long as the engine's (decision 1004) */
    if (e->nfds > 0 && !(p->x = ul__realloc(NULL, (size_t)e->nfds * sizeof *p->x))) {
        snprintf(err, (size_t)errlen, "out of memory");
        close(p->epfd);
        free(p);
        return -1;
    }
    for (int i = 0; i < e->nfds; i++)
        ep_fd_reset(&p->x[i]);
    e->bs = p;
    e->be = &ul_epoll_backend;
    e->be_fd_bytes = sizeof(struct ep_fd);
    e->info.backend = UL_BACKEND_EPOLL;
    e->info.recv_limit = UL_RECV_TURN_BYTES;
    return 0;
}
