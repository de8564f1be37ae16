/*
 * internal.h -- what common.c shares with the two backends.
 *
 * Ownership in one paragraph. Python owns user_data (slot | gen << 32) and the
 * objects behind a slot. C owns an op record per slot, in chunks that never
 * move, because the kernel may write into memory inside the op (a recvmsg's
 * sockaddr) until the op's final completion. An op is "live" from submission
 * until common.c emits its final record (ul__finish); only then may Python
 * reuse the slot. Every live op is linked into its fd's list, which is how
 * cancel-by-fd and close find them without a kernel index and how close waits
 * until the last one is gone before it calls close(2).
 *
 * Kernel user_data (io_uring) is derived from Python's: the op's own request
 * uses ud itself; an internal readiness poll (EAGAIN turned into a wait) uses
 * ud | KUD_POLL; the engine's own requests use KUD_SPECIAL values. Python's
 * generation is kept below 2^30, so these never collide.
 */
#ifndef UL_INTERNAL_H
#define UL_INTERNAL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "engine.h"

/* The datagram pool: buffers big enough for any UDP datagram (65,527 bytes of
 * IPv6 payload) after the header and address, so one is never cut. */
#define UL_DGRAM_BUFS 128
#define UL_DGRAM_BUF_SIZE (UL_DGRAM_HDR + 65536 + 3952)  /* 68 KiB */

#define KUD_POLL (1ULL << 63)
#define KUD_SPECIAL (3ULL << 62)
#define KUD_WAKE (KUD_SPECIAL | 1)
#define KUD_IGNORE (KUD_SPECIAL | 2)
#define KUD_COOKIE (KUD_SPECIAL | 3) /* io_uring: a ring-taken identity (uring.c) */

#define UL_FD_STEP 256          /* the fd table grows by this many entries */
#define CHUNK_SHIFT 10
#define CHUNK_SIZE (1U << CHUNK_SHIFT)
#define MAX_SLOTS (1U << 24)

enum op_kind {
    K_NOP, K_RECV, K_RECV_INTO, K_SEND, K_SENDMSG, K_RECVMSG, K_ACCEPT,
    K_CONNECT, K_POLL, K_READ, K_WRITE, K_SHUTDOWN, K_CLOSE, K_SENDV, K_RECVMSG_POOL,
    K_READ_POOL,  /* read(2) into the stream pool: pipes, FIFOs, ttys, char devices */
};

enum op_state {
    S_FREE,     /* no op in this slot */
    S_QUEUED,   /* waiting behind the head of its fd's ordered queue */
    S_BACKLOG,  /* waiting for a submission slot or for the next run */
    S_ACTIVE,   /* handed to the backend (kernel request / epoll wait) */
};

/* What only the ops that carry a peer address use (sendmsg, recvmsg, connect,
 * a datagram pool receive): a block of its own, so that the op every idle
 * stream pays for (its multishot receive) is 144 bytes instead of 352
 * (decision 250). op_begin takes it for those kinds and it stays with the
 * slot until the slot is begun for another kind: ul_op_addr reads the
 * address after the final record, before Python reuses the slot. */
struct ul_addr_block {
    struct sockaddr_storage addr;
    struct msghdr msg;
    struct iovec iov;
    uint32_t addrlen;
};

static inline int ul__takes_addr(int kind)
{
    return kind == K_SENDMSG || kind == K_RECVMSG || kind == K_CONNECT || kind == K_RECVMSG_POOL;
}

struct ul_op {
    uint64_t ud;            /* 0 = free */
    uint64_t kud;           /* io_uring: user_data of the request in flight */
    uint8_t kind, state, cancelled, multishot;
    uint8_t level, connecting, in_wait, nb;  /* nb: epoll's NB_* mode of a read/write/accept */
    uint8_t parked;             /* taken out of the kernel by ul_park */
    uint8_t on_backlog;
    uint8_t has_ident;          /* ident is valid */
    uint8_t forced;             /* UL_OPT_TEST_EAGAIN state (uring.c FORCED_*) */
    uint8_t stream;             /* epoll K_RECV: 0 not known yet, 1 a stream socket,
                                   2 not one (SO_TYPE read once per op) */
    uint8_t wide;               /* epoll multishot K_RECV: its last read took a whole
                                   buffer or more, so the next reads RECV_IOV at once;
                                   K_RECVMSG_POOL: its last recvmmsg filled its batch,
                                   so the next takes DGRAM_BUDGET at once */
    uint8_t drained;            /* K_RECV_INTO with UL_RECV_DRAINED, or K_POLL with
                                   UL_POLL_DRAINED: epoll may wait with no re-arm */
    /* four flags share one byte, so that the record is 128 bytes */
    uint8_t rider : 1;          /* queued send whose bytes ride in its head's SENDMSG */
    uint8_t no_ms : 1;          /* K_READ_POOL: the file refused READ_MULTISHOT (not
                                   pollable): one-shot reads from then on */
    uint8_t wait_first : 1;     /* K_RECV_INTO asked with UL_RECV_WAIT_FIRST */
    uint8_t ring_ident : 1;     /* io_uring: a getsockopt SQE next to the op's writes
                                   ident (uring.c, ring_cookie) */
    int fd;
    uint32_t sqe_idx;           /* io_uring: SQ index of the op's latest SQE */
    uint32_t reg_gen;           /* epoll: the fd's reg_gen when ident was last
                                   known to hold */
    int32_t fd_prev, fd_next;   /* list of live ops on fd */
    int32_t oq_next;            /* ordered queue (send/write/shutdown); io_uring: the
                                   fd's queue of one-shot pool receives (rq_head) */
    int32_t wq_next;            /* epoll wait queue */
    int32_t bl_next;            /* backlog (a list through the ops: never allocates) */
    int32_t bid;                /* pool buffer taken by a one-shot pool recv */
    uint32_t len, done;
    int msg_flags;
    uint32_t events;            /* poll mask, or shutdown's how */
    uint32_t turn;              /* a multishot K_RECV counted by the engine (epoll's, the
                                   emulated one on io_uring): the engine's handovers
                                   when its done (bytes taken since) was last reset
                                   (decision 924) */
    uint64_t ident;             /* the file fd named when the op was asked for
                                   (ul__ident), valid when has_ident */
    char *buf;
    int64_t offset;
    struct ul_iov_block *blk;   /* K_SENDV: its cursor's iovec block; io_uring, a batch's
                                   head: the batch's block, whose `under` keeps the
                                   head's own (decision 1003; ul__op_iov, ul__op_batch) */
    struct ul_addr_block *ax;   /* ul__takes_addr kinds and one-shot accepts; kept
                                   across op_begin (above) */
};

/* K_SENDV's iovecs, and a batch of sends (uring.c), live in an iovec block:
 * the iovecs behind the msghdr that io_uring's SENDMSG reads, one allocation
 * for both, owned by the op until its final record. The counts only sends
 * use are the block's too, not every op record's (decision 1003): an idle
 * connection's receive op is 24 bytes smaller. */
struct ul_iov_block {
    struct msghdr msg;
    uint32_t n;                 /* K_SENDV: its iovecs; a batch: its ops, the head included */
    uint32_t idx;               /* K_SENDV: the first iovec not fully sent */
    struct ul_iov_block *under; /* a batch's: its head's own block (a K_SENDV head), or NULL */
    uint8_t batch;              /* this is a batch's block */
    struct iovec v[];
};

static inline struct ul_iov_block *ul__iov_block_new(uint32_t n, uint8_t batch)
{
    struct ul_iov_block *b = malloc(sizeof *b + (size_t)n * sizeof(struct iovec));
    if (b) {
        b->n = n;
        b->idx = 0;
        b->under = NULL;
        b->batch = batch;
    }
    return b;
}

static inline void ul__iov_block_free(struct ul_iov_block *b)
{
    free(b);
}

/* a K_SENDV op's own (cursor) block, batched or not */
static inline struct ul_iov_block *ul__op_iov(const struct ul_op *op)
{
    struct ul_iov_block *b = op->blk;
    return b && b->batch ? b->under : b;
}

/* the batch op heads (io_uring), or NULL */
static inline struct ul_iov_block *ul__op_batch(const struct ul_op *op)
{
    struct ul_iov_block *b = op->blk;
    return b && b->batch ? b : NULL;
}

/* the batch's block goes; the head's own is its block again */
static inline void ul__op_unbatch(struct ul_op *op)
{
    struct ul_iov_block *b = op->blk;
    op->blk = b->under;
    ul__iov_block_free(b);
}

struct ul_fd {
    int32_t ops_head;           /* live ops on this fd */
    uint32_t nops;
    int32_t oq_head, oq_tail;   /* ordered queue; the head is in progress */
    int32_t close_slot;         /* slot of the pending close, -1 if none */
    uint8_t closing, advancing; /* advancing: ADV_OQ, ADV_RQ (common.c) */
    uint8_t reset;              /* the pending close resets (ul_close_reset, or a
                                   receive brought bytes after reset_if_data) */
    uint8_t reset_if_data;      /* the pending close_fd asked for it (decision 497) */
    uint8_t held;               /* the pending close waits for ul_close_release too,
                                   and its op is not counted in in_flight until
                                   then (UL_CLOSE_HOLD, decision 873) */
    uint8_t own;                /* one of the engine's own fds (the wake eventfd, the
                                   ring fd, the epoll fd): every op on it ends with
                                   -EBADF at once, as on a closing fd (decision 427) */
    uint8_t pend_any;           /* pend_lo/pend_hi are set (decision 827) */
    int32_t rq_head, rq_tail;   /* epoll: ops waiting for readability; io_uring: the
                                   fd's one-shot pool receives (sock_recv), in the
                                   order asked, linked by oq_next; only the head
                                   is in the kernel (decision 688) */
    /* (what only epoll keeps per fd is its own table's, epoll.c struct
     * ep_fd: 76 -> 44 bytes an entry on io_uring, decision 1004) */
    /* the pend sequence numbers (pend_taken + index) of the first and the last
     * record of this fd's ops that may still wait in pend: a close walks pend
     * from there, not from its start (decision 827) */
    uint32_t pend_lo, pend_hi;
};

struct ul_backend {
    int (*submit)(ul_engine *e, struct ul_op *op);   /* start an op (state ACTIVE) */
    void (*cancel)(ul_engine *e, struct ul_op *op);  /* op is ACTIVE */
    int (*cancel_fd)(ul_engine *e, int fd);          /* fast path, or -1 to do per op */
    int (*run)(ul_engine *e, int64_t timeout_ns);    /* submit, wait, reap */
    int (*flush)(ul_engine *e);                      /* submit now, no wait */
    void (*recycle)(ul_engine *e, uint16_t bid);     /* give a pool buffer back */
    void (*before_close)(ul_engine *e, int fd);      /* last chance before close(2) */
    void (*fd_closing)(ul_engine *e, int fd);        /* ul_fd_closing: its owner closes fd */
    void (*destroy)(ul_engine *e);
    void (*forget)(ul_engine *e);                    /* fork child: close fds, free heap */
    int (*reserve)(ul_engine *e, uint32_t ops);      /* room for ops live ops, or -ENOMEM */
    int (*park)(ul_engine *e);                       /* no kernel request left (ul_park) */
    int (*quiet)(ul_engine *e);  /* run(e, 0) would do nothing (no submit, reap,
                                    re-issue); NULL: never assumed */
    int (*ready)(ul_engine *e);  /* a run would find a completion without waiting
                                    (ul_ready); NULL: never assumed */
    void (*trim)(ul_engine *e);  /* idle after a burst: hand cold pool pages back
                                    (NULL: ul__pool_release(e, 0), decision 986) */
    int (*settle)(ul_engine *e); /* submit what waits in the SQ and reap what is
                                    done, not waiting (a held close released while
                                    its fd's cancels are unsubmitted, decision 875;
                                    NULL: the cancels end at once) */
    int (*fd_grow)(ul_engine *e, int n); /* the fd table grew to n entries: the
                                    backend's own table too (0, or -ENOMEM; NULL:
                                    none, decision 1004) */
    int (*ended_with)(ul_engine *e, int fd, int32_t res); /* a completion of an op
                                    on fd with res waits unreaped (ul_ended_with;
                                    NULL: none can) */
};

struct ul_engine {
    const struct ul_backend *be;
    void *bs;                   /* backend state */
    uint32_t be_fd_bytes;       /* what the backend keeps per fd beside fds (info's
                                   fd_bytes, decision 1004) */
    ul_config cfg;
    ul_info info;
    ul_stats st;
    int closed;
    int recv_queue;             /* io_uring: one-shot pool receives of an fd wait
                                   their turn in C (rq_head; decision 688) */
    int guard;                  /* pool guard mode: see ul__guard() */
    int in_run;                 /* atomic: read by other threads' submissions */
    const void *run_thread;     /* the thread in ul_run while in_run */
    int woken;                  /* the wake eventfd fired during this run */
    uint32_t handovers;         /* ul_run returns (records handed to Python), mod 2^32:
                                   epoll's stream receive takes at most
                                   UL_RECV_TURN_BYTES between two (decision 924) */

    struct ul_op **chunks;
    uint32_t nchunks;
    uint32_t in_flight;

    struct ul_fd *fds;
    int nfds;
    uint32_t nreset;            /* fds whose pending close has reset_if_data (497) */

    ul_record *rec;             /* what Python reads after ul_run */
    uint32_t nrec;
    ul_record *pend;            /* records made outside a run, or past rec's capacity */
    uint32_t npend, pend_cap;
    uint32_t pend_taken;        /* records pend_move has taken from pend, ever (mod 2^32) */

    uint8_t *pool;
    size_t pool_bytes;
    uint16_t *free_bids;        /* engine-picked buffers (no buffer ring) */
    uint32_t nfree;
    uint16_t *used_bids;        /* delivered in the last run: recycled at the next */
    uint8_t *resident;          /* per stream buffer: used since its pages were last
                                   handed back (ul__pool_release) */
    uint32_t nresident;
    uint32_t trim_at;           /* ul_run trims the pool once idle with more resident */
    uint8_t *dpool;             /* datagram pool: UL_DGRAM_BUFS x UL_DGRAM_BUF_SIZE, bids
                                   from cfg.buf_count on */
    size_t dpool_bytes;
    uint16_t *dfree;            /* engine-picked datagram buffers (no ring for them) */
    uint32_t ndfree;
    uint32_t nused;

    int32_t bl_head, bl_tail;   /* FIFO of ops to (re)start, linked by slot */
    uint32_t bl_count;
    uint32_t reserved;          /* live ops that pend (and the backend) have room for */

    int wake_fd;
    atomic_int sleeping;
    atomic_int wake_pending;
};

/* common.c, for the backends */
void *ul__realloc(void *p, size_t n);   /* realloc, failing when a test says so */
void ul__out_of_memory(const char *what) __attribute__((noreturn));
struct ul_op *ul__op_find(ul_engine *e, uint32_t slot);
static inline uint32_t ul__slot(uint64_t ud) { return (uint32_t)ud; }
void ul__emit(ul_engine *e, struct ul_op *op, int32_t res, uint16_t flags, uint16_t bid);
void ul__finish(ul_engine *e, struct ul_op *op, int32_t res, uint16_t flags, uint16_t bid);
void ul__sent(ul_engine *e, struct ul_op *op, int32_t res);
void ul__stop(ul_engine *e, struct ul_op *op, int err);
void ul__iov_advance(struct ul_op *op, uint32_t n);
void ul__oq_drop(ul_engine *e, struct ul_op *op, int32_t res);
struct ul_op *ul__op_at(ul_engine *e, int32_t slot);
/* ops that take a stream-pool buffer per read (engine-picked without a ring) */
static inline int ul__is_pool_read(const struct ul_op *op)
{
    return op->kind == K_RECV || op->kind == K_READ_POOL;
}
/* What a stream receive took since the engine last handed records to Python
 * (ul_run's return): op->done, reset when op->turn is behind (decision 924).
 * op->done and op->turn, which receives use for nothing else. */
static inline uint32_t ul__turn_taken(ul_engine *e, struct ul_op *op)
{
    if (op->turn != e->handovers) {
        op->turn = e->handovers;
        op->done = 0;
    }
    return op->done;
}
/* A stream receive took n more bytes: 1 once that reaches the stock loop's
 * one recv(max_size), UL_RECV_TURN_BYTES: it goes on only in the next run. */
static inline int ul__turn_full(ul_engine *e, struct ul_op *op, uint32_t n)
{
    op->done = ul__turn_taken(e, op) + n;
    return op->done >= UL_RECV_TURN_BYTES;
}

static inline int ul__is_send(const struct ul_op *op)
{
    return op->kind == K_SEND || op->kind == K_SENDV || op->kind == K_WRITE;
}
void ul__backlog_push(ul_engine *e, struct ul_op *op);
int ul__backlog_pop(ul_engine *e, struct ul_op **out);
int ul__pool_take(ul_engine *e);
int ul__dpool_take(ul_engine *e);
static inline int ul__is_dbid(ul_engine *e, uint32_t bid) { return bid >= e->cfg.buf_count; }
static inline uint8_t *ul__dbuf(ul_engine *e, uint32_t bid)
{
    return e->dpool + (size_t)(bid - e->cfg.buf_count) * UL_DGRAM_BUF_SIZE;
}
void ul__dmsg_prep(ul_engine *e, uint32_t bid, struct msghdr *m, struct iovec *iov);
int32_t ul__dmsg_fill(ul_engine *e, uint32_t bid, uint32_t namelen, int32_t res);
void ul__dmsg_setup(ul_engine *e, struct ul_op *op);
int32_t ul__dmsg_done(ul_engine *e, struct ul_op *op, int32_t res);
void ul__dgram_result(ul_engine *e, struct ul_op *op, int32_t n, uint16_t bid, int more,
                      int *rearm);
void ul__pool_put(ul_engine *e, uint16_t bid);
/* bid goes to the kernel or to a record: its pages count as resident */
static inline void ul__pool_touch(ul_engine *e, uint16_t bid)
{
    if (!e->resident[bid]) {
        e->resident[bid] = 1;
        e->nresident++;
    }
}
#define UL_POOL_KEEP 64         /* a trim waits for this many buffers more (pool_trim) */
#define UL_TRIM_IDLE_NS 100000000LL  /* idle this long after a burst: trim (ul_run) */
void ul__pool_release(ul_engine *e, uint32_t keep);
void ul__pool_used(ul_engine *e, uint16_t bid);
void ul__guard(ul_engine *e, uint16_t bid, int open);
int ul__wake_prepare_sleep(ul_engine *e);
void ul__wake_after_sleep(ul_engine *e);
void ul__wake_drain(ul_engine *e);
struct ul_fd *ul__fd(ul_engine *e, int fd);
int ul__fd_own(ul_engine *e, int fd);
int ul__may_continue(const struct ul_op *op);
void ul__ident_capture(ul_engine *e, struct ul_op *op);
int ul__ident_gone(ul_engine *e, struct ul_op *op);
uint64_t ul__ident_now(ul_engine *e, int fd);

/* backends */
extern const struct ul_backend ul_uring_backend;
extern const struct ul_backend ul_epoll_backend;
int ul__uring_init(ul_engine *e, char *err, int errlen);
int ul__epoll_init(ul_engine *e, char *err, int errlen);

#define UL_MIN(a, b) ((a) < (b) ? (a) : (b))

#endif
