/*
 * engine.h -- THE interface of uringloop's completion engine.
 *
 * Python submits operations, each tagged with a user_data it owns
 * (slot | generation << 32; the slot indexes the engine's op table), and
 * receives fixed-size completion records from ul_run(). Two backends sit
 * behind this interface: io_uring (native completions) and epoll (readiness
 * turned into the same records inside C). Python never asks which one runs.
 *
 * Everything between the CDEF markers is also the cffi cdef, so it must stay
 * in the subset cffi parses: no #include, no macros with arguments.
 */
#ifndef UL_ENGINE_H
#define UL_ENGINE_H
#include <stdint.h>

/* CDEF BEGIN */
#define UL_F_MORE 1     /* the op lives on: more records follow */
#define UL_F_BUFFER 2   /* bid names a pool buffer holding res bytes */
#define UL_F_ADDR 4     /* a peer address can be read with ul_op_addr() */
#define UL_F_SHORT 8    /* a send/write that stopped early: res counts the bytes that
                           went out (> 0, or 0 when the kernel took nothing and said no
                           error), bid holds the errno that stopped it (0: a write that
                           returned 0) */
#define UL_F_MSG 16     /* with UL_F_BUFFER: bid names a datagram-pool buffer laid out
                           as io_uring_recvmsg_out (namelen, controllen, payloadlen,
                           flags: 4 x u32), the sender's address (UL_DGRAM_NAME bytes
                           reserved), then res bytes of payload */
#define UL_DGRAM_NAME 128       /* address bytes reserved in a datagram buffer */
#define UL_DGRAM_HDR 144        /* header + address: the payload starts here */

#define UL_BACKEND_AUTO 0
#define UL_BACKEND_URING 1
#define UL_BACKEND_EPOLL 2

/* ul_config.options */
#define UL_OPT_NO_MULTISHOT 1   /* emulate multishot recv/accept by resubmission */
#define UL_OPT_NO_BUFRING 2     /* no provided-buffer ring: engine picks buffers */
#define UL_OPT_NO_DEFER 4       /* skip the SINGLE_ISSUER|DEFER_TASKRUN rung */
#define UL_OPT_NO_CANCEL_FD 8   /* cancel per op even where CANCEL_FD exists */
#define UL_OPT_NO_BUNDLE 64     /* multishot recv takes one pool buffer per completion */
/* a stream's multishot recv takes the kernel's total byte limit where the probe
 * finds it (6.16+; decision 924); without it (the default since decision 945)
 * it runs until cancelled, as on kernels before 6.16 */
#define UL_OPT_RECV_LIMIT 8192
/* The most a stream's receive takes from the kernel between two hand-overs of
 * records to Python: the stock loop's one recv(max_size) a turn (decision 924) */
#define UL_RECV_TURN_BYTES 262144
/* Test only (io_uring; epoll ignores it): the first time an op is issued on
 * an fd that is not ready for it, recv/recv_into/recvmsg/send/sendv/sendmsg/
 * accept complete with -EAGAIN without doing anything (a NOP stands in, as a
 * non-blocking call would say), and a connect that succeeded reports
 * -EINPROGRESS, so the EAGAIN -> poll -> reissue and the connect SO_ERROR
 * paths run on kernels that never take them. */
#define UL_OPT_TEST_EAGAIN 16
/* Pool guard mode (also URINGLOOP_GUARD=1 at engine creation): pool buffers are
 * page-aligned and PROT_NONE while neither the kernel nor a record holds them. */
#define UL_OPT_GUARD 32
/* Test only (io_uring): every pool receive completion that brings data has
 * its buffer taken back from it before it is read, as if the kernel had
 * broken the buffer-select contract (data, no buffer id), so the engine's
 * guard for that case runs (it ends the op with -EIO, never naming bid 0). */
#define UL_OPT_TEST_NOBUF 4096
/* ul_recv_into's flags: wait for data before the first attempt (a hint;
 * the bit is MSG_CMSG_CLOEXEC's, which means nothing to recv(2)) */
#define UL_RECV_WAIT_FIRST 0x40000000
/* ... and, more: the owner keeps fd open until the op's final record and
 * its last read of fd came short or said EAGAIN (UL_POLL_DRAINED's promise,
 * below; implies UL_RECV_WAIT_FIRST; the bit is MSG_FASTOPEN's, a send flag
 * that means nothing to recv(2); decision 391) */
#define UL_RECV_DRAINED 0x20000000
/* ul_recv's multishot argument, or'd in: fd is a SOCK_STREAM socket (its
 * caller knows: a stream transport). epoll then takes a short read as the
 * socket read empty also at submission, when the fd is idle (its
 * registration is then made or re-armed, which reports what came since),
 * and asks no SO_TYPE; io_uring ignores it (decision 745) */
#define UL_RECV_STREAM 2

typedef struct ul_record {
    uint64_t user_data;
    int32_t res;
    uint16_t flags;
    uint16_t bid;
} ul_record;

typedef struct ul_config {
    uint32_t sq_entries;    /* 0 = default (1024) */
    uint32_t cq_entries;    /* 0 = default (16384) */
    uint32_t buf_count;     /* pool buffers, power of two; 0 = 1024 */
    uint32_t buf_size;      /* bytes per pool buffer; 0 = 16384 */
    uint32_t record_cap;    /* records per run; 0 = 4096 */
    uint32_t options;       /* UL_OPT_* */
} ul_config;

typedef struct ul_info {
    int backend;                 /* UL_BACKEND_URING or UL_BACKEND_EPOLL */
    uint32_t ring_flags;         /* IORING_SETUP_* obtained */
    uint32_t features;           /* IORING_FEAT_* */
    uint32_t sq_entries, cq_entries;
    int multishot_recv, multishot_accept, buffer_ring, cancel_fd, registered_ring;
    int guard;                   /* pool guard mode (UL_OPT_GUARD / URINGLOOP_GUARD=1) */
    uint32_t buf_count, buf_size;
    int multishot_read;          /* ul_read_pool uses READ_MULTISHOT */
    int recv_bundle;             /* multishot recv fills several pool buffers per CQE */
    uint32_t recv_limit;         /* io_uring: a stream's multishot recv ends after this many
                                    bytes and is re-armed by the next run (6.16+; 0: runs
                                    until cancelled); epoll: what a receive takes a turn
                                    (decision 924) */
    uint32_t op_bytes;           /* the engine's record per op slot */
    uint32_t fd_bytes;           /* the fd table's entry per fd number, with what the
                                    backend keeps beside it (decision 1004) */
    char reason[256];            /* why this backend (fallback reason) */
} ul_info;

typedef struct ul_probe {
    int available;               /* io_uring can run here */
    int err;                     /* errno of the failure, 0 when available */
    uint32_t features;
    int last_op;                 /* highest opcode the kernel knows, -1 if unknown */
    uint8_t ops[256];            /* 1 = opcode supported */
    char reason[256];
    int recv_limit;              /* a multishot RECV takes a total byte limit (sqe->optlen,
                                    6.16+): 1, or 0 where its prep refuses it (decision 924) */
} ul_probe;

typedef struct ul_stats {
    uint64_t enters;             /* io_uring_enter / epoll_wait calls */
    uint64_t waits;              /* of which blocked (timeout != 0) */
    uint64_t submitted;          /* SQEs / syscalls issued for ops */
    uint64_t records;            /* records emitted */
    uint64_t cq_overflows;       /* times the CQ overflow flag was seen */
    uint64_t rearms;             /* internal multishot / poll re-arms */
    uint64_t eagain_retries;     /* EAGAIN turned into a readiness wait */
    uint64_t wakeups;            /* eventfd writes by ul_wake */
    uint64_t guard_faults;       /* guard mode: records with -EFAULT (must stay 0) */
    uint32_t in_flight;          /* ops whose final record is pending */
    uint32_t bufs_free;          /* pool buffers available to the kernel */
    uint64_t ident_captures;     /* file identities taken (one syscall each) */
    uint64_t ident_checks;       /* continuations that compared it (one each) */
    uint64_t cqes;               /* io_uring: CQEs reaped (epoll: 0) */
    uint32_t addr_blocks;        /* op slots holding an address block (sendmsg, recvmsg,
                                    connect, datagram pool receives) */
    uint32_t pool_resident;      /* stream pool buffers used since the engine last
                                    handed their pages back (or ever) */
    uint32_t fd_entries;         /* entries of the engine's fd table */
    uint64_t pool_takes;         /* stream pool buffers taken (for records or tries) */
    uint64_t ident_cookies;      /* io_uring: file identities the ring gave (no syscall) */
    uint32_t ring_want;          /* io_uring: buffers the stream ring is kept at (grows when
                                    it runs dry, shrinks when runs take little: decision
                                    759); 0 without a buffer ring and on epoll */
    uint64_t pend_walked;        /* records of pend a close looked at (decision 827) */
    uint64_t ctl_failed;         /* epoll: epoll_ctl calls that failed, a fallback's
                                    first try included (MOD on a number whose file
                                    was closed: ENOENT; decision 989); io_uring: 0 */
} ul_stats;

typedef struct ul_engine ul_engine;

/* Process-wide io_uring probe (cached after the first call). */
int ul_probe_uring(ul_probe *out);

/* backend: UL_BACKEND_*; on failure returns NULL and writes a message to err. */
ul_engine *ul_new(int backend, const ul_config *cfg, char *err, int errlen);
/* Cancel everything, reap until nothing is in flight (bounded by timeout_ns),
 * free. Returns the number of ops that never completed (their memory is
 * leaked on purpose rather than freed under the kernel). */
int ul_free(ul_engine *e, int64_t timeout_ns);
/* In a fork()ed child, for an engine the parent made: close the child's copies
 * of the engine's fds and free its plain heap memory. Touches no ring, buffer
 * ring or pool memory (they are MADV_DONTFORK: not mapped in the child) and
 * no kernel request (they are the parent's). e is invalid afterwards. */
void ul_forget(ul_engine *e);

void ul_get_info(ul_engine *e, ul_info *out);
void ul_get_stats(ul_engine *e, ul_stats *out);
ul_record *ul_records(ul_engine *e);
uint8_t *ul_pool(ul_engine *e);

/* Operations. Return 0, or -errno when the op cannot be accepted (bad slot,
 * slot busy, bad arguments; -EEXIST: submitted from another thread while
 * ul_run runs); then no record will come for it. */
int ul_nop(ul_engine *e, uint64_t ud);
/* max caps a one-shot receive (0 = the pool buffer size). A one-shot
 * receive waits for data before it tries: io_uring always (decision 357),
 * epoll after the fd's last one-shot receive found it empty and none since
 * filled its length (decision 368); a hint, the result is the same. */
int ul_recv(ul_engine *e, uint64_t ud, int fd, int multishot, uint32_t max);
/* multishot: 0 or 1, or'd with UL_RECV_STREAM (above) */
/* flags: MSG_* flags for recv(2), and UL_RECV_WAIT_FIRST: a read of fd
 * has just come short or said EAGAIN, so the receive waits for data before
 * it tries (io_uring: IORING_RECVSEND_POLL_FIRST; epoll: no attempt at
 * submit when the fd is idle, as its re-arm reports data already there).
 * A hint: the result is the same either way (decision 389).
 * UL_RECV_DRAINED: as UL_RECV_WAIT_FIRST, from an owner that keeps fd open
 * until the record; epoll may then wait on the fd's registration as it is,
 * no re-arm (as UL_POLL_DRAINED, decision 391). */
int ul_recv_into(ul_engine *e, uint64_t ud, int fd, char *buf, uint32_t len, int flags);
int ul_send(ul_engine *e, uint64_t ud, int fd, const char *buf, uint32_t len, int flags);
/* Ordered like ul_send: iov points to niov `struct iovec`s, copied at submit;
 * the buffers they name belong to the op until its final record. */
int ul_sendv(ul_engine *e, uint64_t ud, int fd, const void *iov, uint32_t niov, int flags);
int ul_sendmsg(ul_engine *e, uint64_t ud, int fd, const char *buf, uint32_t len,
               const char *addr, uint32_t addrlen, int flags);
int ul_recvmsg(ul_engine *e, uint64_t ud, int fd, char *buf, uint32_t len, int flags);
/* Datagrams into the engine's datagram pool, one record per datagram
 * (UL_F_BUFFER|UL_F_MSG); multishot where the kernel has it, else emulated.
 * A datagram longer than a pool buffer is consumed and reported as -EMSGSIZE
 * (UL_F_MORE: the receive goes on): never delivered cut. */
int ul_recvmsg_pool(ul_engine *e, uint64_t ud, int fd, int multishot);
/* The datagram pool: its address; buffer size, count and the bid of its first
 * buffer (bids of datagram buffers follow the stream pool's). */
uint8_t *ul_dgram_pool(ul_engine *e, uint32_t *buf_size, uint32_t *count, uint32_t *first_bid);
/* As ul_recv, with read(2): pipes, FIFOs, ptys, character devices (and
 * sockets). io_uring: READ_MULTISHOT (6.7+) on the buffer ring, else one-shot
 * READs; epoll: a read without waiting per attempt. EOF is a final res 0. */
int ul_read_pool(ul_engine *e, uint64_t ud, int fd, int multishot, uint32_t max);
int ul_accept(ul_engine *e, uint64_t ud, int fd, int multishot);
int ul_connect(ul_engine *e, uint64_t ud, int fd, const char *addr, uint32_t addrlen);
/* level 0: one record; 1: level-triggered, a record (MORE) each run the fd
 * is ready, as add_reader; 2 (UL_POLL_KEPT): as 1, for an owner that keeps
 * fd open until the op's final record and reads the fd at each record (a
 * pipe transport), so a re-arm need not check which file fd names: epoll
 * keeps such an fd registered level-triggered, no epoll_ctl per re-arm */
#define UL_POLL_KEPT 2
/* 3 (UL_POLL_DRAINED): one record, as 0, from an owner that keeps fd open
 * until the record and whose last read of fd came short or said EAGAIN
 * (nothing read since): epoll may then wait on the fd's edge-triggered
 * registration as it is, no epoll_ctl, since any byte, hang-up or error
 * after that read raises an edge of its own; it re-arms as for 0 when an
 * edge may have been missed meanwhile (a wait reported the fd readable
 * with nothing waiting on it) or a hang-up was seen (decision 391).
 * io_uring treats it as 0. */
#define UL_POLL_DRAINED 3
/* 4 (UL_POLL_MULTI): a record (MORE) each time fd may have become ready
 * since the last one (a hint: a record may find nothing), until cancelled
 * or an error, from an owner that keeps fd open until the op's final record
 * or closes it through ul_close_fd. io_uring: one multishot POLL_ADD, issued
 * again when the kernel ends it by itself (wake-ups that come before the
 * loop runs the poll's task work make one record); epoll: as 1. A record
 * that comes after the op was asked to cancel is dropped: the final record
 * follows (decision 765). */
#define UL_POLL_MULTI 4
int ul_poll(ul_engine *e, uint64_t ud, int fd, uint32_t events, int level);
int ul_read(ul_engine *e, uint64_t ud, int fd, char *buf, uint32_t len, int64_t offset);
int ul_write(ul_engine *e, uint64_t ud, int fd, const char *buf, uint32_t len, int64_t offset);
int ul_shutdown(ul_engine *e, uint64_t ud, int fd, int how);
/* flags: UL_CLOSE_RESET_IF_DATA, the close resets a TCP connection
 * (SO_LINGER 0 just before close(2)) if a receive (recv, recv_into) on fd
 * delivers bytes after this call, its cancel's included: bytes the caller
 * will not read, which the stock loop would have left in the kernel, whose
 * close(2) then resets (decisions 463, 497). UL_CLOSE_HOLD, the close(2)
 * also waits for ul_close_release (the stock transport closes its socket
 * in _call_connection_lost, a turn after close(); decision 873); ul_free
 * releases what is still held. */
#define UL_CLOSE_RESET_IF_DATA 1
#define UL_CLOSE_HOLD 2
int ul_close_fd(ul_engine *e, uint64_t ud, int fd, int flags);
/* The held close of fd (close_ud) may close now: at once if no op of fd is
 * live, else when the last one ends. 0, or -ENOENT when that close is not
 * pending and held. */
int ul_close_release(ul_engine *e, uint64_t close_ud, int fd);
/* The close of fd (close_ud, still pending: its ops are being cancelled)
 * resets the connection: for bytes of a record delivered before the close
 * was asked for that the caller dropped (decision 497). 0, or -ENOENT when
 * that close is not pending (done already). */
int ul_close_reset(ul_engine *e, uint64_t close_ud, int fd);

/* 0 when found (its record will come), -ENOENT otherwise. */
int ul_cancel(ul_engine *e, uint64_t target_ud);
/* Number of ops asked to cancel. */
int ul_cancel_fd(ul_engine *e, int fd);

/* Copy the peer address of a completed recvmsg/ accept slot; returns its length. */
int ul_op_addr(ul_engine *e, uint32_t slot, char *out, uint32_t cap);

/* Hand what is queued to the kernel now, without waiting (one syscall on
 * io_uring; nothing on epoll, which starts ops as they are submitted). For
 * ops whose start is observable, such as connect. Returns 0 or -errno. */
int ul_flush(ul_engine *e);

/* The loop stops running: take every request out of the kernel (ops wait in
 * the engine, to be issued again by the next ul_run) and let go of the thread
 * that ran it, so that the next ul_run may come from any thread. Costs one
 * cancel per request in the kernel; nothing on epoll. Returns 0, or -errno:
 * -EEXIST from a thread other than the one that ran it, -ETIME when a
 * request would not leave the kernel in time (the engine stays bound). */
int ul_park(ul_engine *e);

/* Thread-safe. Makes a sleeping ul_run return; no syscall when awake. */
void ul_wake(ul_engine *e);

/* Tests only: while on != 0, every allocation the engine makes after
 * ul_new fails, as if memory were exhausted. */
void ul_test_fail_allocs(int on);

/* One loop turn. timeout_ns < 0: wait until something completes; 0: never
 * wait. Returns the number of records written to ul_records(), or -errno
 * (-EINTR: a signal arrived; call again after running Python handlers). */
int ul_run(ul_engine *e, int64_t timeout_ns);

/* ul_run for a caller that runs Python's signal handlers between calls (the
 * native turn, sched.c): a run that waits returns 0 after a kernel wakeup
 * that made no record (an event no op wanted, the idle trim's timeout)
 * instead of waiting again inside, since a signal delivered in that moment
 * ended no wait with EINTR and its handler would otherwise wait for the
 * next I/O (decision 632). */
int ul_run_turn(ul_engine *e, int64_t timeout_ns);

/* 1 when a ul_run would find a completion without waiting: records are
 * pending, the io_uring CQ holds entries, the kernel flags deferred work
 * for us, or a send from Python waits to be submitted (io_uring: it completes
 * within the enter that submits it when the socket has room; decision 340),
 * or a cancel or a stream's multishot receive from Python does (io_uring:
 * the cancel's target ends within that enter; the receive's bytes are often
 * there already; decisions 847, 848) (epoll: an fd waits on the retry
 * list). A hint read from memory, no syscall: 0 says nothing (the run may
 * still find something). The native turn runs ul_run(e, 0) with the GIL
 * kept when it says 1 (decision 290). */
int ul_ready(ul_engine *e);

/* 1 when a receive of fd waits in the engine: io_uring, a one-shot pool
 * receive (ul_recv, multishot 0) is live on fd (they take their turns, in
 * the order asked, one in the kernel at a time: decision 688); epoll, a
 * read-side op waits for fd's readiness. A receive made outside the engine
 * (recv(2) of the caller's own) then would take bytes before it. */
int ul_recv_busy(ul_engine *e, int fd);

/* 1 when C accepted an op with this user_data and Python has not read its
 * final record yet (the op is live, or its record waits for the next run):
 * a submission that raised after the slot was taken asks this before it
 * gives the slot back (decision 428). 0 otherwise. */
int ul_op_known(ul_engine *e, uint64_t ud);
/* 1 when an op on fd has ended with result res (a negative errno) and its
 * record has not been handed out yet: io_uring's CQ holds it unreaped (a
 * ring without DEFER_TASKRUN posts a receive's completion when the task
 * work runs, at any syscall's return), or it waits in the engine for the
 * next run. A look at memory, no syscall, nothing consumed (decision 839). */
int ul_ended_with(ul_engine *e, int fd, int32_t res);
/* The ops of fd still live, after the fd's cancels waiting in io_uring's SQ
 * were submitted and what is done reaped (their records come at the next
 * run): 0 when none is, and fd's owner may close(2) it with no op of ours
 * left to act on the number (decision 962). -EEXIST from another thread. */
int ul_fd_settle(ul_engine *e, int fd);
/* fd's owner closes it next, with close(2) of its own, and no op of the
 * engine's is live on it (ul_fd_settle said 0): epoll takes the fd out of its
 * set (EPOLL_CTL_DEL, as a close through ul_close_fd does) and forgets the
 * registration, so the next file to get the number is armed with one ADD,
 * not a MOD that fails with ENOENT first (decision 989). io_uring: nothing.
 * 0; -EBUSY (nothing done) while ops of fd are live; -EEXIST from another
 * thread. */
int ul_fd_closing(ul_engine *e, int fd);
/* CDEF END */

#endif
