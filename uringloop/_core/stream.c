/* uringloop._sched.Stream: the hot half of a stream socket transport in C.
 *
 * Included by sched.c (it uses the slot table and the loop's Core). One
 * Stream belongs to one uringloop.transports.stream.SocketTransport (as its
 * _core: composition, because asyncio.BaseTransport has __slots__ and a C
 * base with its own layout cannot be mixed in). It holds what the hot path
 * touches: the write queue (buffer, buffer_size, sending, dirty), the water
 * marks, the protocol's receive methods (bound once in set_protocol), the
 * transport's context; and it is itself the owner of the transport's engine
 * ops:
 *
 *  - calling the Stream (res, more, data) is the multishot receive's
 *    callback: a record that nothing unusual surrounds goes straight to
 *    protocol.data_received(bytes), or for a BufferedProtocol into
 *    get_buffer()'s buffer and buffer_updated(n);
 *  - write(data) (installed as the transport's own write attribute) queues
 *    the bytes and puts the Stream on the loop's dirty list;
 *  - _flush() (the turn calls it right before the engine waits) hands the
 *    whole queue to the socket in one non-blocking send() or sendmsg(); what
 *    the kernel leaves (a full socket buffer) goes as one send or sendv whose
 *    owner is the Stream itself, in a slot marked SLOT_SENT: the table hands
 *    its completion to stream_sent (no bound method kept per Stream;
 *    decisions 255, 305).
 *
 * The table's delivery hands both kinds of record to the C functions behind
 * these (stream_recv, stream_sent) with the record's fields (stream_deliver);
 * Python objects for a record are made only where it goes to Python.
 *
 * Anything unusual (rfast/wfast cleared by the transport whenever it is
 * closing, paused, holding records, lost, at EOF, sendfile; a final record,
 * an error, callbacks queued in _ready) takes the transport's Python methods,
 * which are the stock selector transport's behaviour: _on_recv, _write_slow,
 * _flush_slow, _on_sent, _feed_buffer, _fatal_error. Records are handled in
 * the transport's context, as the Python callbacks were (ctx.run).
 */

/* A record held behind _ready (stream_hold; decision 740): res as Python
 * passed it, or NULL for a record of C's, whose int (nres) is made only
 * where Python sees it; more; data (bytes or None), a reference. */
typedef struct {
    PyObject *res;
    PyObject *data;
    Py_ssize_t nres;
    char more;
} HeldRec;

/* A Stream's held records, in order: a block of PyMem's, not a list of
 * tuples (decision 740) */
typedef struct {
    Py_ssize_t n, cap;
    HeldRec r[];
} HeldQ;

typedef struct {
    PyObject_HEAD
    /* laid out widest first, with no holes, and C's own flags a bit each:
     * 208 bytes, 224 with the GC header, three pymalloc size classes below
     * the 272 the declaration order of the fields' history made (decisions
     * 984, 987) */
    PyObject *transport;
    Core *loop;
    PyObject *ctx;
    PyObject *on_data;    /* data_received, or get_buffer for a BufferedProtocol */
    PyObject *on_updated; /* buffer_updated (BufferedProtocol) */
    PyObject *protocol;   /* the first argument of on_data/on_updated where *_self */
    PyObject *buffer;     /* list of bytes written since the last flush; NULL
                           * until the first write that queues, and after a
                           * vectored send took it */
    HeldQ *held;          /* the records waiting behind _ready, or NULL (decision 740) */
    Py_buffer *dbuf;      /* the protocol's buffer a direct receive fills, or NULL (decision 350) */
    Py_ssize_t buffer_size; /* queued + in the send in flight */
    Py_ssize_t sending;     /* length of the send in flight (0: none) */
    Py_ssize_t high, low;   /* the transport's water marks */
    Py_ssize_t hold; /* bytes of the queue that are held bytearrays (decision 646) */
    unsigned long long recv_ud; /* the transport's multishot recv (0: none) */
    unsigned long long pms; /* a Protocol's direct reads' multishot poll, kept while they go
                             * on (0: none); recv_ud == pms while the Stream waits on it
                             * (UL_POLL_MULTI, decision 765) */
    unsigned long long close_ud; /* the transport's held close of fd (engine close_fd's
                                  * hold): released where _call_connection_lost
                                  * closes the socket (0: none; decision 873) */
    int rsize;            /* > 0: the read op is a level poll, and each of its
                           * records is one read(2) of up to rsize bytes into a
                           * new bytes (a pipe transport, decision 365) */
    unsigned int sends;     /* flushes that sent (tests count them) */
    unsigned int inline_sends; /* of those, taken whole by the socket at once: no engine op */
    unsigned int directs;   /* send() calls made by write() itself (tests count them) */
    unsigned int nows;      /* sendmsg() calls of the queue by write() and the held
                             * writes' release (stream_send_now; tests count them) */
    unsigned int feeds; /* chunks put straight into a StreamReader's buffer (tests count them) */
    unsigned int wseq;
    unsigned int rseq; /* the loop's batch whose records the Stream had last (824) */
    int fd;
    uint32_t peer_addr;   /* an IPv4 peer's address (network order), where peer */
    uint32_t conn_lost;   /* a SocketTransport's _conn_lost (the property's; stock's
                           * count, kept to 2**32 - 1; decision 1002) */
    uint16_t peer_port;   /* ... and its port (host order) */
    unsigned char rgrow;  /* > 0: full reads (rsize bytes) left before the
                           * transport hears of them: the last clears rfast, so
                           * its record goes to _on_recv (a child's pipe that
                           * streams is enlarged there, decision 580; pipe.py's
                           * GROW_AFTER, 16) */
    /* the flags Python reads and sets (BOOL_ATTR, T_BOOL: a byte each) */
    char buffered, rfast, wfast, dirty;
    char rdirect;  /* R_*: where a BufferedProtocol's receive stands (decision 350) */
    char dkind;    /* the SLOT_DIRECT op in flight is a Protocol's poll (decision 373) */
    /* C's own flags, a bit each (decision 987): every one is set to 0 or 1 */
    unsigned char peer : 1;  /* the transport's peername is kept here (keep_peer) */
    unsigned char phup : 1;  /* a record of it said RDHUP, HUP or ERR: a FIN or error
                              * queued behind the bytes a short read took raises no
                              * later wake-up, so the waits are one-shot polls from
                              * then on, as before (decision 765) */
    unsigned char wdirect : 1; /* such a send took a whole write in the loop's batch
                                * wseq: later writes of that batch queue behind it
                                * (decision 714) */
    unsigned char draining : 1; /* _drain is handing held records over: _ready does
                                 * not count */
    unsigned char data_self : 1, updated_self : 1; /* on_data/on_updated are functions:
                                                    * pass protocol */
    unsigned char registered : 1; /* in fd_streams (the loop's fd -> transport registry) */
    unsigned char bigfill : 1; /* the last feed filled a whole get_buffer() buffer of a
                                * pool buffer or more, or a Protocol's last chunk was
                                * DIRECT_MIN pool buffers or more */
    unsigned char dfull : 1;   /* the last direct read filled its buffer: the next read
                                * is the rest of a big message, and coming short of a
                                * pool buffer it is its tail, not a sign that the reads
                                * came small (decision 718) */
    unsigned char sreader : 1; /* the protocol is a stock asyncio.StreamReaderProtocol:
                                * its chunks may go straight into its reader (636) */
    unsigned char chain : 1;   /* buffer_updated runs for a direct read that filled its
                                * buffer: the next read follows at once (decision 646) */
    unsigned char borrowed : 1; /* transport is not a reference of the Stream's:
                                 * release() (694) */
    unsigned char release_due : 1; /* release() was refused while an op was in flight (695) */
    unsigned char eofc : 1;    /* a SocketTransport's: its EOF record may take
                                * stream_eof (707) */
    unsigned char fdclosing : 1; /* the transport's _fd_closing (the property's,
                                  * decision 1002): the turn's flush has nothing to do
                                  * (_flush_slow's return; decision 820) */
    unsigned char rfirst : 1;  /* the record being delivered is the Stream's first of
                                * batch rseq */
    /* flags Python sets too, a bit each behind getsets (decision 1002) */
    unsigned char wpaused : 1; /* the protocol's writing is paused */
    unsigned char direct : 1;  /* write() sends at once when idle while the turn delivers
                                * records (the epoll backend; decisions 210, 398) */
    unsigned char feed_rest : 1; /* buffer_updated runs with more of its record to come: a
                                  * close there drops it, and _close_fd resets (634) */
    unsigned char rdone : 2;   /* a SocketTransport's _read_done: RD_NO (False), RD_ERR
                                * (True: a read error), RD_EOF ("eof") (decision 1002) */
    unsigned char chold : 1;   /* close_ud is held: not released yet (decision 873) */
    unsigned char creset : 1;  /* _close_reset is close_ud, else None (decision 1002) */
} Stream;

enum { RD_NO = 0, RD_ERR = 1, RD_EOF = 2 };
_Static_assert(sizeof(Stream) == 208 || sizeof(void *) != 8,
               "the Stream is 208 bytes, 224 with its GC header (decisions 984, 1002)");

static int stream_flush_dirty(Core *self);

/* The held close of the Stream's fd may close(2) now (or when its ops
 * end): where the stock transport's _call_connection_lost closes its
 * socket (decision 873). The writes of the loop's transports queued
 * since the last flush go to the kernel first (flush: the turn's
 * _flush_dirty): the stock write() sent them when called, before this
 * close (a peer in the same process, decision 874). A closed engine (the
 * table detached) has closed it (ul_free). 0, or -1 with the flush's
 * exception set (the close released all the same). */
static int stream_close_release(Stream *s, int flush)
{
    unsigned long long ud = s->chold ? s->close_ud : 0;
    s->chold = 0; /* (close_ud stays: close_reset's, decision 1002) */
    Core *loop = s->loop;
    int rc = 0;
    if (loop == NULL || ud == 0)
        return 0;
    Py_INCREF(loop);
    if (flush && loop->dirty != NULL && PyList_CheckExact(loop->dirty) &&
        PyList_GET_SIZE(loop->dirty) > 0)
        rc = stream_flush_dirty(loop);
    Table *t = loop->table;
    if (t != NULL && t->engine != NULL)
        (void)t->close_release(t->engine, ud, s->fd);
    Py_DECREF(loop);
    return rc;
}

/* Stream.rdirect. A BufferedProtocol whose reads fill its buffer (of at
 * least a pool buffer) takes them in its own buffer, no pool in between:
 * its multishot pool receive is cancelled (R_SWITCHING until its final
 * record), then one-shot receives into get_buffer(-1)'s buffer follow one
 * another (R_DIRECT) while they bring a pool buffer or more; a smaller one
 * goes back to the pool receive (_start_reading). R_HELD: one came while
 * callbacks were ahead of it in _ready, its bytes wait in the buffer for
 * _drain. R_STALE: set_protocol came while the buffer (dbuf) was the old
 * protocol's. A Protocol whose chunks come big reads into a new bytes of
 * DIRECT_BYTES per read, which becomes data_received's argument, cut to
 * what came; between reads it waits with a one-shot poll, no buffer (dkind,
 * R_DIRECT; decision 373). */
enum { R_POOL, R_SWITCHING, R_DIRECT, R_HELD, R_STALE };

/* The stream transports' part of the loop's fd -> transport registry (the
 * stock loop's _transports, a WeakValueDictionary: a KeyedRef and a dict
 * entry, 125 bytes a connection): the Stream last registered for each fd
 * number, borrowed. A Stream leaves it when it is cleared, with its
 * transport (the transport keeps its Stream for life), or when released
 * (a lost transport, closing for good: decision 694), so an entry never
 * outlives the transport, as a weak value would not (decision 257). One
 * table for the process: an fd number is one file at a time; a lookup
 * checks the loop. */
static Stream **fd_streams;
static int fd_streams_cap;

static int stream_register(Stream *s)
{
    if (s->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "register(): the Stream has no fd");
        return -1;
    }
    if (s->fd >= fd_streams_cap) {
        /* up to the next 256 numbers, as the engine's fd table (decisions
         * 252, 312): every entry is written, so a doubled table kept up to
         * twice them */
        int cap = (s->fd / 256 + 1) * 256;
        Stream **t = PyMem_Realloc(fd_streams, (size_t)cap * sizeof *t);
        if (t == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memset(t + fd_streams_cap, 0, (size_t)(cap - fd_streams_cap) * sizeof *t);
        fd_streams = t;
        fd_streams_cap = cap;
    }
    Stream *old = fd_streams[s->fd];
    if (old != NULL && old != s)
        old->registered = 0; /* a closed transport's number, reused */
    fd_streams[s->fd] = s;
    s->registered = 1;
    return 0;
}

static void stream_unregister(Stream *s)
{
    if (s->registered && s->fd >= 0 && s->fd < fd_streams_cap && fd_streams[s->fd] == s)
        fd_streams[s->fd] = NULL;
    s->registered = 0;
}

/* The write queue: none (NULL), one bytes object (a single write queued as
 * itself: no list, decision 310), or a list of ours (more than one chunk;
 * or what Python set). The C paths may use it unless Python set anything
 * else there. */
static inline int stream_queue_ok(Stream *s)
{
    return s->buffer == NULL || PyList_CheckExact(s->buffer) || PyBytes_CheckExact(s->buffer);
}

/* chunks queued (where stream_queue_ok) */
static inline Py_ssize_t stream_queue_len(Stream *s)
{
    if (s->buffer == NULL)
        return 0;
    return PyList_CheckExact(s->buffer) ? PyList_GET_SIZE(s->buffer) : 1;
}

/* the queue as a list (a single bytes becomes [bytes]; none, []): for the
 * paths that take more than one chunk, and for Python. NULL on error. */
static PyObject *stream_queue_list(Stream *s)
{
    PyObject *q = s->buffer;
    if (q != NULL && !PyBytes_CheckExact(q))
        return q;
    PyObject *l = PyList_New(q != NULL);
    if (l == NULL)
        return NULL;
    if (q != NULL)
        PyList_SET_ITEM(l, 0, q); /* our reference moves into the list */
    return s->buffer = l;
}

/* b joins the queue: the first chunk is the queue itself. 0 or -1 */
static int stream_append(Stream *s, PyObject *b)
{
    if (s->buffer == NULL) {
        s->buffer = Py_NewRef(b);
        return 0;
    }
    PyObject *l = stream_queue_list(s);
    return l ? PyList_Append(l, b) : -1;
}

/* fn(arg), or fn(protocol, arg) where fn is a function kept unbound (see
 * stream_bind); protocol is a reference the caller holds */
static PyObject *stream_proto_call(PyObject *fn, PyObject *protocol, PyObject *arg)
{
    if (protocol == NULL)
        return PyObject_CallOneArg(fn, arg);
    PyObject *argv[2] = {protocol, arg};
    return PyObject_Vectorcall(fn, argv, 2, NULL);
}

static PyTypeObject StreamType;
static PyTypeObject CoreType; /* sched.c, below */
static PyObject *s_on_recv, *s_write_slow, *s_flush_slow, *s_on_sent, *s_after_sent;
static PyObject *s_feed_buffer, *s_fatal_error, *s_maybe_pause, *s_maybe_resume, *s_send_now;
static PyObject *s_call_soon, *s_drain, *kw_context;
static PyObject *s_writelines_slow;
static PyObject *s_start_reading;
static PyObject *s_eof_text, *s_eof_received, *s_eof_done, *s_close, *s_closing;
static PyObject *s_protocol, *s_buffer_updated, *s_get_buffer;
static PyObject *s_resume_behind;
static PyObject *s_send_now_tail, *s_flush, *m_data_failed, *m_get_buffer_failed, *m_updated_failed, *m_write_failed;

/* SocketTransport's slots, for accepted_transport and stream_close_fast
 * (decisions 811, 812): set by accepted_setup */
enum {
    A_SOCKOBJ, A_LOOP, A_PPAUSED, A_HIGH, A_LOW, A_EXTRA, A_TSOCK, A_CORE,
    A_ENGINE, A_SOCKNAME, A_PEERNAME, A_SERVER, A_CLOSING, A_PAUSED,
    A_PROTOCOL, A_N
};
static struct {
    PyTypeObject *cls; /* SocketTransport; NULL until accepted_setup */
    Py_ssize_t off[A_N];
    PyObject *high, *low, *in_core, *share, *buffered_type, *start_reading;
    int tracks; /* Server._attach/_detach take the transport (3.13+) */
    /* close_setup: stream.py's close, _Kind, _ignore, _INET (decision 812);
     * its _on_recv and socket.socket (decisions 833, 834) */
    PyObject *close, *kind_type, *ignore, *inet, *on_recv, *socket_type;
    PyObject *object_class; /* object's __class__ descriptor (is_buffered) */
} acc;
#define ASLOT(o, i) (*(PyObject **)((char *)(o) + acc.off[i]))
static inline void aset(PyObject *o, int i, PyObject *v) /* v: a new reference */
{
    PyObject *old = ASLOT(o, i);
    ASLOT(o, i) = v;
    Py_XDECREF(old);
}
static PyObject *s_engine, *s_backend, *s_epoll, *s_attach, *s_connection_made,
    *s_start_reading_c, *s_resume_h, *s_unread, *s_held, *s_e,
    *s_call_connection_lost, *s_closed, *s_family, *s_close_fd, *s_connection_lost,
    *s_protocol_connected, *s_empty_waiter, *s_sock_closed, *s_fileno, *s_detach, *s_set_exception,
    *s_lost, *m_closed_by_peer;
static PyObject *sr_one, *sr_zero, *s_dunder_class;
static int stream_close_fast(Stream *s, PyObject *t);

/* transport.<name>(*args), inside the transport's context when enter */
static PyObject *stream_call(Stream *s, PyObject *name, PyObject *const *args, Py_ssize_t n,
                             int enter)
{
    PyObject *argv[4];
    argv[0] = s->transport;
    for (Py_ssize_t i = 0; i < n; i++)
        argv[i + 1] = args[i];
    if (enter && PyContext_Enter(s->ctx) < 0)
        return NULL;
    PyObject *r = PyObject_VectorcallMethod(name, argv, (size_t)(n + 1), NULL);
    if (enter && PyContext_Exit(s->ctx) < 0)
        Py_CLEAR(r);
    return r;
}

static int stream_unhold_rc(Stream *s);

/* A protocol callback raised (the exception is set): SystemExit and
 * KeyboardInterrupt go on (-1); anything else is the transport's fatal error
 * with the stock message (0, or -1 if that raised). */
static int stream_protocol_failed(Stream *s, PyObject *msg)
{
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *exc = take_exception();
    if (s->hold > 0 && stream_unhold_rc(s) < 0) /* the stock write sent them (646) */
        PyErr_Clear();
    PyObject *args[2] = {exc, msg};
    PyObject *r = stream_call(s, s_fatal_error, args, 2, 0);
    Py_DECREF(exc);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* the pieces' bytes from piece i, offset off on, as one bytes (for the
 * Python fallbacks) */
static PyObject *pieces_rest(const Piece *pc, int cnt, int i, Py_ssize_t off)
{
    Py_ssize_t total = 0;
    for (int j = i; j < cnt; j++)
        total += pc[j].n;
    PyObject *b = PyBytes_FromStringAndSize(NULL, total - off);
    if (b == NULL)
        return NULL;
    char *q = PyBytes_AS_STRING(b);
    for (int j = i; j < cnt; j++, off = 0) {
        memcpy(q, pc[j].p + off, (size_t)(pc[j].n - off));
        q += pc[j].n - off;
    }
    return b;
}

/* ---- chunks straight into a stock StreamReader (decision 636) ----
 *
 * asyncio's streams take a chunk as StreamReaderProtocol.data_received(data)
 * -> StreamReader.feed_data(data): self._buffer.extend(data), then
 * _wakeup_waiter() and the pause check. Those functions (and the
 * _stream_reader property) are the same code in CPython 3.10-3.13. When the
 * transport's protocol is exactly a StreamReaderProtocol, its reader exactly
 * a StreamReader with an exact bytearray buffer, and the stock functions are
 * still the ones the loop saw at import (transports/stream.py checks them
 * there and hands them over), the chunk's bytes go into that bytearray
 * itself (a pool buffer's bytes appended, a direct read received into its
 * tail) and the rest of feed_data is done here, with no bytes made for the
 * chunk and no Python frame. Anything else (debug mode, the reader gone or
 * at EOF, a buffer exported, patched methods, a subclass) is today's
 * data_received call. */
static PyTypeObject *sr_proto_type, *sr_reader_type;
static PyObject *sr_data_received, *sr_stream_reader, *sr_feed_data, *sr_wakeup;
static PyObject *sr_code[3]; /* the three functions' __code__, as captured */
static PyObject *s_data_received, *s_stream_reader, *s_feed_data, *s_wakeup_waiter;
static PyObject *s_stream_reader_wr, *s_eof, *s_rbuffer, *s_waiter, *s_transport, *s_paused;
static PyObject *s_limit, *s_pause_reading, *s_cancelled, *s_set_result, *sr_two;

/* stream_reader_stock(StreamReaderProtocol, StreamReader, data_received,
 * _stream_reader, feed_data, _wakeup_waiter): the stock objects, checked by
 * the caller; None turns the feed off */
static PyObject *stream_reader_stock(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs == 1 && args[0] == Py_None) {
        Py_CLEAR(sr_proto_type);
        Py_RETURN_NONE;
    }
    if (nargs != 6 || !PyType_Check(args[0]) || !PyType_Check(args[1]) ||
        !PyFunction_Check(args[2]) || !PyFunction_Check(args[4]) || !PyFunction_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "stream_reader_stock(protocol type, reader type, "
                                         "data_received, _stream_reader, feed_data, _wakeup_waiter)");
        return NULL;
    }
    Py_XSETREF(sr_proto_type, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(sr_reader_type, (PyTypeObject *)Py_NewRef(args[1]));
    Py_XSETREF(sr_data_received, Py_NewRef(args[2]));
    Py_XSETREF(sr_stream_reader, Py_NewRef(args[3]));
    Py_XSETREF(sr_feed_data, Py_NewRef(args[4]));
    Py_XSETREF(sr_wakeup, Py_NewRef(args[5]));
    Py_XSETREF(sr_code[0], Py_NewRef(PyFunction_GET_CODE(args[2])));
    Py_XSETREF(sr_code[1], Py_NewRef(PyFunction_GET_CODE(args[4])));
    Py_XSETREF(sr_code[2], Py_NewRef(PyFunction_GET_CODE(args[5])));
    Py_RETURN_NONE;
}

/* obj.name is the stock function fn bound to obj, as the stock code's
 * self.feed_data / self._wakeup_waiter finds it: neither the class's
 * attribute replaced nor an instance attribute shadowing it */
static int sr_method_is(PyObject *obj, PyObject *name, PyObject *fn)
{
    PyObject *m = PyObject_GetAttr(obj, name);
    int ok = m != NULL && PyMethod_Check(m) && PyMethod_GET_FUNCTION(m) == fn &&
             PyMethod_GET_SELF(m) == obj;
    if (m == NULL)
        PyErr_Clear();
    Py_XDECREF(m);
    return ok;
}

/* The StreamReader the next chunk may go straight into: 1 with *reader and
 * *buf (its _buffer) as new references, or 0 (nothing set): the chunk takes
 * data_received, which does what the stock code does in every other case. */
static int stream_reader_of(Stream *s, PyObject **reader, PyObject **buf)
{
    PyTypeObject *pt = sr_proto_type, *rt = sr_reader_type;
    *reader = *buf = NULL;
    if (!s->sreader || pt == NULL || s->protocol == NULL || !Py_IS_TYPE(s->protocol, pt) ||
        s->loop->debug != Py_False || _PyType_Lookup(pt, s_data_received) != sr_data_received ||
        _PyType_Lookup(pt, s_stream_reader) != sr_stream_reader ||
        PyFunction_GET_CODE(sr_data_received) != sr_code[0] ||
        PyFunction_GET_CODE(sr_feed_data) != sr_code[1] ||
        PyFunction_GET_CODE(sr_wakeup) != sr_code[2])
        return 0;
    PyObject *wr = PyObject_GetAttr(s->protocol, s_stream_reader_wr), *r = NULL;
    if (wr == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (PyWeakref_CheckRefExact(wr)) {
#if PY_VERSION_HEX >= 0x030D0000
        if (PyWeakref_GetRef(wr, &r) < 0) {
            PyErr_Clear();
            r = NULL;
        }
#else
        r = Py_NewRef(PyWeakref_GET_OBJECT(wr));
#endif
    }
    Py_DECREF(wr);
    if (r == NULL || !Py_IS_TYPE(r, rt) || !sr_method_is(r, s_feed_data, sr_feed_data) ||
        !sr_method_is(r, s_wakeup_waiter, sr_wakeup)) {
        Py_XDECREF(r);
        return 0;
    }
    PyObject *eof = PyObject_GetAttr(r, s_eof);
    PyObject *b = eof == Py_False ? PyObject_GetAttr(r, s_rbuffer) : NULL;
    Py_XDECREF(eof);
    if (b == NULL || !PyByteArray_CheckExact(b) || ((PyByteArrayObject *)b)->ob_exports > 0) {
        PyErr_Clear();
        Py_XDECREF(b);
        Py_DECREF(r);
        return 0;
    }
    *reader = r;
    *buf = b;
    return 1;
}

/* what StreamReader.feed_data does after its extend: _wakeup_waiter(), then
 * the pause check (its NotImplementedError branch too). 0, or -1 with an
 * exception set (one the stock code would raise in data_received). */
static int stream_reader_after(PyObject *reader)
{
    PyObject *w = PyObject_GetAttr(reader, s_waiter), *x;
    if (w == NULL)
        return -1;
    if (w != Py_None) {
        int t = -1;
        if (PyObject_SetAttr(reader, s_waiter, Py_None) == 0 &&
            (x = PyObject_CallMethodNoArgs(w, s_cancelled)) != NULL) {
            t = PyObject_IsTrue(x);
            Py_DECREF(x);
        }
        if (t == 0) {
            x = PyObject_CallMethodOneArg(w, s_set_result, Py_None);
            t = x ? 1 : -1;
            Py_XDECREF(x);
        }
        if (t < 0) {
            Py_DECREF(w);
            return -1;
        }
    }
    Py_DECREF(w);
    PyObject *tr = PyObject_GetAttr(reader, s_transport);
    if (tr == NULL)
        return -1;
    int rc = 0, paused = 1;
    if (tr != Py_None) {
        x = PyObject_GetAttr(reader, s_paused);
        paused = x ? PyObject_IsTrue(x) : -1;
        Py_XDECREF(x);
    }
    if (paused == 0) { /* len(self._buffer) > 2 * self._limit */
        PyObject *b = PyObject_GetAttr(reader, s_rbuffer);
        Py_ssize_t n = b ? PyObject_Size(b) : -1;
        Py_XDECREF(b);
        PyObject *lim = n >= 0 ? PyObject_GetAttr(reader, s_limit) : NULL;
        int gt = -1, overflow = 1;
        long long l = lim && PyLong_CheckExact(lim) ? PyLong_AsLongLongAndOverflow(lim, &overflow) : 0;
        if (lim != NULL && !overflow && l > -(1LL << 60) && l < (1LL << 60)) {
            gt = (long long)n > 2 * l;
        } else if (lim != NULL) {
            PyObject *two = PyNumber_Multiply(sr_two, lim), *len = PyLong_FromSsize_t(n);
            gt = two && len ? PyObject_RichCompareBool(len, two, Py_GT) : -1;
            Py_XDECREF(two);
            Py_XDECREF(len);
        }
        Py_XDECREF(lim);
        if (gt < 0) {
            rc = -1;
        } else if (gt) {
            x = PyObject_CallMethodNoArgs(tr, s_pause_reading);
            if (x != NULL) {
                Py_DECREF(x);
                rc = PyObject_SetAttr(reader, s_paused, Py_True);
            } else if (PyErr_ExceptionMatches(PyExc_NotImplementedError)) {
                PyErr_Clear(); /* the transport cannot pause: forgotten, as stock */
                rc = PyObject_SetAttr(reader, s_transport, Py_None);
            } else {
                rc = -1;
            }
        }
    } else if (paused < 0) {
        rc = -1;
    }
    Py_DECREF(tr);
    return rc;
}

/* the chunk's cnt pieces (total bytes) appended to buf, as extend() would */
static int stream_reader_extend(PyObject *buf, const Piece *pc, int cnt, Py_ssize_t total)
{
    Py_ssize_t n0 = PyByteArray_GET_SIZE(buf);
    if (total > PY_SSIZE_T_MAX - n0) {
        PyErr_NoMemory();
        return -1;
    }
    if (PyByteArray_Resize(buf, n0 + total) < 0)
        return -1;
    char *p = PyByteArray_AS_STRING(buf) + n0;
    for (int i = 0; i < cnt; i++) {
        memcpy(p, pc[i].p, (size_t)pc[i].n);
        p += pc[i].n;
    }
    return 0;
}

/* data_received(data) on the transport's fast path, in the transport's
 * context (entered). 1 called, 0 it raised and that was reported, or -1
 * with an exception set. */
static int stream_data(Stream *s, PyObject *data)
{
    PyObject *cb = Py_NewRef(s->on_data); /* set_protocol may replace them */
    PyObject *protocol = s->data_self ? Py_NewRef(s->protocol) : NULL;
    PyObject *r = stream_proto_call(cb, protocol, data);
    Py_DECREF(cb);
    Py_XDECREF(protocol);
    int rc = r ? 1 : stream_protocol_failed(s, m_data_failed);
    Py_XDECREF(r);
    return rc;
}

/* A Protocol's chunk on the fast path: its cnt pieces (total > 0 bytes;
 * data, when not NULL, is the chunk as one bytes) straight into the
 * StreamReader's buffer, or data_received(bytes). In the transport's
 * context (entered). 1 when the protocol took it, 0 when it raised (reported
 * as stock: the transport fails), -1 with an exception set. */
static int stream_chunk(Stream *s, PyObject *data, const Piece *pc, int cnt, Py_ssize_t total)
{
    PyObject *reader, *buf;
    int rc;
    if (stream_reader_of(s, &reader, &buf)) {
        rc = stream_reader_extend(buf, pc, cnt, total);
        Py_DECREF(buf);
        if (rc == 0) {
            s->feeds++;
            rc = stream_reader_after(reader);
        }
        Py_DECREF(reader);
        return rc == 0 ? 1 : stream_protocol_failed(s, m_data_failed);
    }
    PyObject *own = data ? Py_NewRef(data) : pieces_rest(pc, cnt, 0, 0);
    if (own == NULL)
        return -1;
    rc = stream_data(s, own);
    Py_DECREF(own);
    return rc;
}

/* buffer_updated(n) of the transport's protocol now, in the transport's
 * context (entered), as the stock read calls self._protocol.buffer_updated
 * after get_buffer() and recv_into(): a protocol that get_buffer() set
 * (set_protocol) is the one told, and one with no buffer_updated (a
 * Protocol) fails the stock way, an AttributeError reported as that call's
 * failure (decision 404). 0; 1 if it raised and that was reported (the
 * transport closes); -1 with an exception set. */
static int stream_updated(Stream *s, Py_ssize_t n)
{
    PyObject *updated, *protocol = NULL, *num = PyLong_FromSsize_t(n), *r = NULL;
    if (num == NULL)
        return -1;
    if (s->buffered && s->on_updated != NULL) {
        updated = Py_NewRef(s->on_updated);
        protocol = s->updated_self ? Py_NewRef(s->protocol) : NULL;
    } else {
        PyObject *p = PyObject_GetAttr(s->transport, s_protocol);
        updated = p ? PyObject_GetAttr(p, s_buffer_updated) : NULL;
        Py_XDECREF(p);
    }
    if (updated != NULL)
        r = stream_proto_call(updated, protocol, num);
    Py_DECREF(num);
    Py_XDECREF(updated);
    Py_XDECREF(protocol);
    int rc = r ? 0 : stream_protocol_failed(s, m_updated_failed);
    Py_XDECREF(r);
    return rc < 0 ? -1 : r ? 0 : 1;
}

static int stream_hold(Stream *s, PyObject *res, Py_ssize_t nres, int more, PyObject *data);

/* A protocol callback let SystemExit or KeyboardInterrupt through (set)
 * with n received bytes not handed over yet (pc[i] from off on): they wait
 * as a held record for the next _drain, first in line, as the stock loop
 * leaves unread bytes in the socket for its next read when one of these
 * goes through (decision 405). The exception stays set. */
static void stream_keep_rest(Stream *s, const Piece *pc, int cnt, int i, Py_ssize_t off,
                             Py_ssize_t n)
{
    if (n <= 0 || s->transport == NULL ||
        !(PyErr_ExceptionMatches(PyExc_SystemExit) ||
          PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)))
        return;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *rest = pieces_rest(pc, cnt, i, off);
    if (rest != NULL)
        (void)stream_hold(s, NULL, n, 1, rest);
    Py_XDECREF(rest);
    PyErr_Clear(); /* out of memory: the bytes are lost with it */
    PyErr_Restore(type, value, tb);
}

/* a BufferedProtocol: received bytes (cnt pieces, total bytes: one record,
 * or a turn's pool records of the receive, decision 335) into get_buffer()'s
 * buffer, then buffer_updated(k); while the transport stays on its fast
 * path (rfast) with the same protocol, the next buffer the same way, until
 * all is fed. Otherwise the rest is a record of its own for the
 * transport's _on_recv (which drops it after close(), holds it while paused,
 * hands it to a protocol set meanwhile the way its kind takes it), and a
 * buffer C does not take goes with the rest to _feed_buffer(rest, 0, buf),
 * which reports it as stock does. 0 or -1. */
static int stream_feed_pieces(Stream *s, const Piece *pc, int cnt, Py_ssize_t total)
{
    PyObject *get_buffer = Py_NewRef(s->on_data);
    PyObject *protocol = Py_XNewRef(s->protocol);
    PyObject *gself = s->data_self ? protocol : NULL;
    int rc = 0, i = 0;
    Py_ssize_t pos = 0, off = 0; /* bytes fed; the next byte is pc[i].p[off] */
    s->bigfill = 0;
    for (;;) {
        PyObject *r, *rest, *num = PyLong_FromSsize_t(total - pos);
        PyObject *buf = num ? stream_proto_call(get_buffer, gself, num) : NULL;
        Py_XDECREF(num);
        if (buf == NULL) {
            rc = stream_protocol_failed(s, m_get_buffer_failed);
            if (rc < 0)
                stream_keep_rest(s, pc, cnt, i, off, total - pos);
            break;
        }
        Py_buffer dst;
        if (PyObject_GetBuffer(buf, &dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0 ||
            dst.len == 0) {
            /* read-only, empty, not contiguous...: Python says what is wrong */
            if (PyErr_Occurred())
                PyErr_Clear();
            else
                PyBuffer_Release(&dst);
            PyObject *args[3] = {pieces_rest(pc, cnt, i, off), PyLong_FromLong(0), buf};
            r = args[0] && args[1] ? stream_call(s, s_feed_buffer, args, 3, 0) : NULL;
            Py_XDECREF(args[0]);
            Py_XDECREF(args[1]);
            Py_XDECREF(r);
            Py_DECREF(buf);
            rc = r ? 0 : -1;
            break;
        }
        Py_ssize_t k = dst.len < total - pos ? dst.len : total - pos;
        if (k == dst.len && s->loop->table != NULL && k >= s->loop->table->buf_size)
            s->bigfill = 1;
        for (Py_ssize_t done = 0; done < k;) {
            Py_ssize_t m = pc[i].n - off < k - done ? pc[i].n - off : k - done;
            memcpy((char *)dst.buf + done, pc[i].p + off, (size_t)m);
            done += m;
            off += m;
            if (off == pc[i].n) {
                i++;
                off = 0;
            }
        }
        PyBuffer_Release(&dst);
        Py_DECREF(buf);
        pos += k;
        s->feed_rest = pos < total;
        rc = stream_updated(s, k);
        s->feed_rest = 0;
        if (rc != 0) {
            if (rc < 0)
                stream_keep_rest(s, pc, cnt, i, off, total - pos);
            else
                rc = 0; /* reported: the transport closes */
            break;
        }
        if (pos == total || s->transport == NULL)
            break;
        if (s->rfast && s->buffered && s->on_data == get_buffer && s->protocol == protocol)
            continue; /* what _feed_buffer's checks would let through */
        if (!(rest = pieces_rest(pc, cnt, i, off))) {
            rc = -1;
            break;
        }
        PyObject *args[3] = {PyLong_FromSsize_t(total - pos), Py_True, rest};
        r = args[0] ? stream_call(s, s_on_recv, args, 3, 0) : NULL;
        Py_XDECREF(args[0]);
        Py_DECREF(rest);
        Py_XDECREF(r);
        rc = r ? 0 : -1;
        break;
    }
    Py_DECREF(get_buffer);
    Py_XDECREF(protocol);
    return rc;
}

/* A Protocol's chunk of this many pool buffers or more says its reads come
 * big (decision 373): one turn's pool records, joined */
#define DIRECT_MIN 4

/* What a Protocol's direct receive asks for: a new bytes of this size,
 * decision 271's chunk (below glibc's 128 KiB mmap threshold with the bytes
 * header, so the bytes comes from the heap and its memory is reused warm) */
#define DIRECT_BYTES (112 * 1024)

/* After a feed of pool bytes: when it filled a whole buffer of the
 * protocol's of a pool buffer or more, or a Protocol's chunk was of
 * DIRECT_MIN pool buffers or more, the reads come big, and the protocol's
 * buffer (a new bytes for a Protocol) takes the next ones itself once the
 * pool receive, cancelled here, has ended (stream_deliver; decisions 350,
 * 373). A read pipe's Stream has no recv_ud. */
static void stream_maybe_direct(Stream *s)
{
    Table *t = s->loop->table;
    if (s->bigfill && s->rdirect == R_POOL && s->recv_ud != 0 && s->rfast &&
        s->held == NULL && s->on_data != NULL && (!s->buffered || s->on_updated != NULL) &&
        s->transport != NULL && t != NULL && t->engine != NULL &&
        t->cancel(t->engine, s->recv_ud) == 0) {
        s->rdirect = R_SWITCHING;
        s->dfull = 1; /* bigfill: the feed filled its buffer (decision 718) */
    }
}

/* one record's bytes (a pool view, or the bytes of a record that was held) */
static int stream_feed(Stream *s, PyObject *data)
{
    Piece pc;
    if (PyBytes_Check(data)) {
        pc.p = PyBytes_AS_STRING(data);
        pc.n = PyBytes_GET_SIZE(data);
    } else {
        pc.p = PyMemoryView_GET_BUFFER(data)->buf;
        pc.n = PyMemoryView_GET_BUFFER(data)->len;
    }
    return stream_feed_pieces(s, &pc, 1, pc.n);
}

/* nothing in the loop's _ready would run before this record's callback in
 * the stock loop (which queues its reader callbacks behind what is ready:
 * then the transport holds the record, in Python). While the native turn
 * delivers a batch, what earlier records' callbacks added does not count:
 * the stock loop runs all reader callbacks of one poll before any of those. */
static int ready_empty(Core *loop)
{
    if (loop->batching) /* (the Python turn's too: decision 454) */
        return loop->batch_ready == 0;
    PyObject *r = loop->ready;
    /* (the Python turn's due timers collected before its records: decision 414) */
    return r != NULL && Py_IS_TYPE(r, S.deque_type) && Py_SIZE(r) <= loop->pre_timers;
}

/* A record of the loop's batch reaches the Stream (the table's delivery):
 * whether it is the Stream's first of the batch is noted (decision 824) */
static inline void stream_mark(Stream *s)
{
    Core *loop = s->loop;
    if (loop != NULL && loop->batching) {
        s->rfirst = s->rseq != loop->batch_seq;
        s->rseq = loop->batch_seq;
    }
}

/* The record being delivered is the Stream's first of the batch the loop
 * delivers now: it waits only for what _ready held at the poll, as the data
 * records do (ready_empty), since stock queues every reader's callback of a
 * poll before it runs any; a later one of the same batch waits for what
 * the earlier ones scheduled too, as stock reads a socket once a turn
 * (decisions 454, 824) */
static inline int stream_first(Stream *s)
{
    Core *loop = s->loop;
    return loop != NULL && loop->batching && s->rseq == loop->batch_seq && s->rfirst;
}

/* The drain queued at the end of _ready in the transport's context, as
 * the stock loop queues a reader's handle: appended to _ready itself
 * (`_add_callback`), not through `loop.call_soon`, which it never calls for
 * I/O (decision 377); its callback the Stream itself, called with no
 * argument (Stream_call: _drain), so no bound method is made and none is
 * kept (decisions 313, 741). In debug mode, with a patched get_debug or a
 * foreign _ready, loop.call_soon(self._drain, context=) as before (a bound
 * method, which the debug turn's reports name). 0 or -1. */
static int stream_schedule_drain(Stream *s)
{
    PyObject *h;
    if (s->ctx != NULL && PyContext_CheckExact(s->ctx) && makes_handles(s->loop)) {
        h = soon(s->loop, (PyObject *)s, S.empty_tuple, s->ctx);
    } else {
        PyObject *drain = PyObject_GetAttr((PyObject *)s, s_drain);
        if (drain == NULL)
            return -1;
        PyObject *argv[3] = {(PyObject *)s->loop, drain, s->ctx};
        h = PyObject_VectorcallMethod(s_call_soon, argv, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                      kw_context);
        Py_DECREF(drain);
    }
    /* behind what _ready held before the poll, before the timers collected
     * ahead of this batch's records, as stock queues its reader (decision 414) */
    int rc = h == NULL                                               ? -1
             : s->loop->batch_ready > 0 ? io_place(s->loop, h)
                                                                     : 0;
    Py_XDECREF(h);
    return rc;
}

/* The held records: a HeldQ of HELDQ_CAP0 records at first, doubled when
 * full (several records of one Stream held in one turn) */
#define HELDQ_CAP0 2

static HeldQ *heldq_new(void)
{
    HeldQ *q = PyMem_Malloc(sizeof(HeldQ) + HELDQ_CAP0 * sizeof(HeldRec));
    if (q == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    q->n = 0;
    q->cap = HELDQ_CAP0;
    return q;
}

/* room for one more record at the end of *qp (it may move). 0 or -1 */
static int heldq_room(HeldQ **qp)
{
    HeldQ *q = *qp;
    if (q->n < q->cap)
        return 0;
    Py_ssize_t cap = q->cap * 2;
    q = PyMem_Realloc(q, sizeof(HeldQ) + (size_t)cap * sizeof(HeldRec));
    if (q == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    q->cap = cap;
    *qp = q;
    return 0;
}

/* records [from, to) of q let go of their references */
static void heldq_drop(HeldQ *q, Py_ssize_t from, Py_ssize_t to)
{
    for (Py_ssize_t i = from; i < to; i++) {
        Py_XDECREF(q->r[i].res);
        Py_DECREF(q->r[i].data);
    }
}

/* q and its records gone */
static void heldq_free(HeldQ *q)
{
    heldq_drop(q, 0, q->n);
    PyMem_Free(q);
}

/* a record's res as an int (PyLong_AsLong's -1 with an exception set for
 * what is none) */
static inline long held_res(const HeldRec *a)
{
    return a->res != NULL ? PyLong_AsLong(a->res) : (long)a->nres;
}

/* A record that must wait behind what _ready held before the poll (the
 * stock loop queues its reader callback there): it joins the Stream's held
 * records, and the first of them queues one drain (in the transport's
 * context), as the stock loop re-queues its reader handle. Every record that
 * comes while some are held waits with them, in order. A pool view lives
 * only during this call: its bytes are copied (into the spare bytes where
 * it fits, decision 730). res is Python's int for the record (a record that
 * came through Python, kept as it came), or NULL: nres is its value, made
 * an int only where Python sees it (decision 740). 0, or -1 with an
 * exception set. */
static int stream_hold(Stream *s, PyObject *res, Py_ssize_t nres, int more, PyObject *data)
{
    PyObject *keep;
    if (data == Py_None || PyBytes_CheckExact(data))
        keep = Py_NewRef(data);
    else if (PyMemoryView_Check(data) && PyBuffer_IsContiguous(PyMemoryView_GET_BUFFER(data), 'C'))
        keep = bytes_of(PyMemoryView_GET_BUFFER(data)->buf, PyMemoryView_GET_BUFFER(data)->len);
    else
        keep = PyBytes_FromObject(data);
    if (keep == NULL)
        return -1;
    if (s->held == NULL) {
        HeldQ *q = heldq_new();
        if (q == NULL)
            goto fail;
        if (stream_schedule_drain(s) < 0) {
            PyMem_Free(q);
            goto fail;
        }
        if (s->held == NULL) {
            s->held = q;
        } else {
            PyMem_Free(q); /* (call_soon's Python held some meanwhile) */
        }
    }
    if (heldq_room(&s->held) < 0)
        goto fail;
    HeldRec *a = &s->held->r[s->held->n++];
    a->res = Py_XNewRef(res);
    a->data = keep;
    a->nres = nres;
    a->more = (char)(more != 0);
    return 0;
fail:
    Py_DECREF(keep);
    return -1;
}

/* A record (res, more, data) as Python sees it, for the paths that hand it
 * to Python: held (stream_hold) or the transport's _on_recv. args is the
 * caller's own (res, more, data) when it has them (a call from Python, a
 * held record), else NULL: they are made here (the table's delivery passes
 * the record's fields, decision 260). */
static PyObject *stream_recv_slow(Stream *s, int32_t res, int more, PyObject *data,
                                  PyObject *const *args, int hold, int enter)
{
    if (hold) /* the int is made only if Python asks for it (decision 740) */
        return stream_hold(s, args ? args[0] : NULL, res, more, data) < 0 ? NULL
                                                                         : Py_NewRef(Py_None);
    PyObject *own[3] = {NULL, more ? Py_True : Py_False, data};
    if (args == NULL) {
        if (!(own[0] = PyLong_FromLong(res)))
            return NULL;
        args = own;
    }
    PyObject *r = stream_call(s, s_on_recv, args, 3, enter);
    Py_XDECREF(own[0]);
    return r;
}

/* A SocketTransport's EOF record (its receive's final one) when nothing
 * unusual surrounds it (rfast: not closing, paused, holding or lost; no
 * records held here; nothing in _ready ahead of it, as _on_recv's
 * _sched_ahead(stream) asks: for the Stream's first record of the batch
 * what _ready held at the poll, as for data, decision 824; for a later one
 * all of _ready; out of debug mode with the stock get_debug, so
 * _on_eof logs nothing): what _on_recv's EOF branch, _on_eof and its
 * finally do, without their frames (decision 707). eof_received() is
 * called here; a falsy None or False answer closes (the transport's close,
 * looked up as Python would), then _start_reading runs unless the
 * transport is closing; any other answer or an exception goes to the
 * transport's _eof_done(keep_open, exc), which holds the rest of _on_eof
 * in Python. enter: the transport's context is not current yet. */
static int stream_eof_ok(Stream *s)
{
    if (!s->eofc || !s->rfast || s->transport == NULL || s->held != NULL || s->draining ||
        !makes_handles(s->loop))
        return 0;
    if (stream_first(s))
        return ready_empty(s->loop);
    PyObject *ready = s->loop->ready;
    return Py_IS_TYPE(ready, S.deque_type) && Py_SIZE(ready) <= s->loop->pre_timers;
}

static PyObject *stream_eof(Stream *s, int enter)
{
    PyObject *t = Py_NewRef(s->transport);
    Py_INCREF(s);
    PyObject *r = NULL;
    if (enter && PyContext_Enter(s->ctx) < 0)
        goto out;
    s->recv_ud = 0; /* the _recv_ud property's None */
    PyObject *proto = NULL, *keep = NULL;
    s->rdone = RD_EOF; /* _read_done = "eof": truthy; resume_reading reads it again */
    if ((proto = PyObject_GetAttr(t, s_protocol)) == NULL)
        goto done;
    s->wfast = 0; /* _sync with _read_done set: writes from here leave at once (903) */
    keep = PyObject_VectorcallMethod(s_eof_received, &proto, 1, NULL);
    Py_DECREF(proto);
    if (keep == NULL || (keep != Py_None && keep != Py_False)) {
        PyObject *exc = keep == NULL ? take_exception() : Py_NewRef(Py_None);
        if (exc == NULL)
            goto done;
        PyObject *argv[3] = {t, keep != NULL ? keep : Py_None, exc};
        r = PyObject_VectorcallMethod(s_eof_done, argv, 3, NULL);
        Py_DECREF(exc);
        goto done;
    }
    /* close(): its common case here in C (decision 812), else the method */
    int fast = stream_close_fast(s, t);
    if (fast == 0)
        r = PyObject_VectorcallMethod(s_close, &t, 1, NULL);
    else
        r = fast > 0 ? Py_NewRef(Py_None) : NULL;
    /* _on_recv's finally, also when close raised */
    PyObject *exc = r == NULL ? take_exception() : NULL;
    PyObject *closing = PyObject_GetAttr(t, s_closing);
    int c = closing == NULL ? -1 : PyObject_IsTrue(closing);
    Py_XDECREF(closing);
    PyObject *again = c == 0 ? PyObject_VectorcallMethod(s_start_reading, &t, 1, NULL) : NULL;
    if (c == 0 && again != NULL) {
        Py_DECREF(again);
        give_exception(exc);
    } else if (c != 1) {
        Py_XDECREF(exc); /* the finally's own exception replaces it */
        Py_CLEAR(r);
    } else {
        give_exception(exc);
    }
done:
    Py_XDECREF(keep);
    if (enter && PyContext_Exit(s->ctx) < 0)
        Py_CLEAR(r);
out:
    Py_DECREF(s);
    Py_DECREF(t);
    return r;
}

/* A receive's final record with no bytes (the -ECANCELED of close()'s
 * cancel, an error, an EOF) for an exact SocketTransport whose class keeps
 * stream.py's _on_recv, once the transport is closing (its _closing slot
 * True): all _on_recv does then is note that the receive has ended (decision
 * 833). Reads only. */
static inline int stream_closing_final(Stream *s)
{
    PyObject *t = s->transport;
    return acc.on_recv != NULL && t != NULL && Py_TYPE(t) == acc.cls &&
           ASLOT(t, A_CLOSING) == Py_True && _PyType_Lookup(acc.cls, s_on_recv) == acc.on_recv;
}

/* a record: straight to the protocol when nothing unusual surrounds it,
 * else held (stream_hold) or the transport's _on_recv. The fast path reads
 * only more and data; res and args serve the others (stream_recv_slow).
 * enter: the transport's context is not current yet (it is inside _drain). */
static PyObject *stream_recv(Stream *s, int32_t res, int more, PyObject *data,
                             PyObject *const *args, int enter)
{
    if (s->held != NULL && !s->draining)
        return stream_recv_slow(s, res, more, data, args, 1, enter);
    if (s->rfast && more && s->on_data != NULL && s->transport != NULL &&
        ((s->buffered && PyMemoryView_Check(data) && PyMemoryView_GET_BUFFER(data)->len > 0) ||
         (PyBytes_CheckExact(data) && PyBytes_GET_SIZE(data) > 0 && (!s->buffered || s->draining)))) {
        if (!s->draining && !ready_empty(s->loop)) /* a pool view is copied there */
            return stream_recv_slow(s, res, more, data, args, 1, enter);
        Py_INCREF(s);
        int rc = -1;
        if (!enter || PyContext_Enter(s->ctx) == 0) {
            if (s->buffered) {
                rc = stream_feed(s, data);
            } else {
                Piece pc = {PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)};
                /* not a stock StreamReaderProtocol (636): data_received itself */
                rc = s->sreader ? stream_chunk(s, data, &pc, 1, pc.n) : stream_data(s, data);
                if (rc > 0 && s->loop->table != NULL) {
                    s->bigfill = pc.n >= DIRECT_MIN * s->loop->table->buf_size;
                    stream_maybe_direct(s);
                }
            }
            if (enter && PyContext_Exit(s->ctx) < 0)
                rc = -1;
        }
        Py_DECREF(s);
        if (rc < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (s->transport == NULL)
        Py_RETURN_NONE;
    if (res == 0 && !more && data == Py_None && args == NULL && stream_eof_ok(s))
        return stream_eof(s, enter);
    if (res <= 0 && !more && data == Py_None && args == NULL && stream_closing_final(s)) {
        /* _on_recv's first steps, written out (decision 833): the receive
         * has ended (`self._core.recv_ud = 0`), and a closing transport
         * hands nothing over (its `if self._closing: ... return`; bytes,
         * res > 0, are _dropped's, in Python) */
        s->recv_ud = 0;
        Py_RETURN_NONE;
    }
    return stream_recv_slow(s, res, more, data, args, 0, enter);
}

static PyObject *Stream_drain(Stream *s, PyObject *unused);

/* the receive callback called from Python: self(res, more, data) (the
 * table's records come through stream_deliver: no vectorcall pointer is
 * kept per Stream, decision 311); self() is the queued drain of held
 * records (stream_schedule_drain, decision 741) */
static PyObject *Stream_call(Stream *s, PyObject *args, PyObject *kw)
{
    if (PyTuple_CheckExact(args) && PyTuple_GET_SIZE(args) == 0 &&
        (kw == NULL || PyDict_GET_SIZE(kw) == 0))
        return Stream_drain(s, NULL); /* the queued drain (decision 741) */
    if (!PyTuple_CheckExact(args) || PyTuple_GET_SIZE(args) != 3 ||
        (kw != NULL && PyDict_GET_SIZE(kw) > 0)) {
        PyErr_SetString(PyExc_TypeError, "Stream(res, more, data)");
        return NULL;
    }
    PyObject *const *argv = &PyTuple_GET_ITEM(args, 0);
    return stream_recv(s, 0, argv[1] == Py_True, argv[2], argv, 1);
}

/* the receive may go on in the protocol's buffer, or a Protocol's in a new
 * bytes (decisions 350, 373) */
static inline int stream_direct_ok(Stream *s)
{
    return s->rfast && s->on_data != NULL && (!s->buffered || s->on_updated != NULL) &&
           s->transport != NULL && s->held == NULL && s->recv_ud == 0;
}

/* reads in a row a direct receive may make before it waits again */
#define DIRECT_READS 16

/* stream_read_direct's how: the engine's receive tries at once (D_SUBMIT),
 * a recv() at once first (D_NOW: the last read filled its buffer), or the
 * engine's receive waits for data first (D_DRAINED: the last read came
 * short, so the socket was empty; decision 389) */
enum { D_SUBMIT, D_NOW, D_DRAINED };

/* the pool receive again (_start_reading): the reads came small, or the
 * protocol's kind changed. 0, or -1 with an exception set. */
static int stream_back_to_pool(Stream *s)
{
    s->dfull = 0;
    PyObject *r = stream_call(s, s_start_reading, NULL, 0, 0);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* the direct op's final record res (EOF, an error, -ECANCELED) for
 * stream_recv, as a receive's last record. enter: the transport's context
 * is not current yet. 0, or -1 with an exception set. */
static int stream_final(Stream *s, int32_t res, int enter)
{
    PyObject *r = stream_recv(s, res, 0, Py_None, NULL, enter);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* A Protocol's direct receive waits in the engine for the socket to
 * become readable: a one-shot poll(POLLIN), no buffer (a connection that
 * goes quiet holds nothing: decision 373), whose record is the Stream's
 * (stream_poll_record). drained: the Stream's last read came short or said
 * EAGAIN; the transport keeps its fd open until the poll's record (close
 * goes through the engine's close_fd), so epoll may wait on the fd's
 * registration with no epoll_ctl (UL_POLL_DRAINED, decision 391). 0, or -1
 * with an exception set. */
static int stream_arm_poll(Stream *s, int drained)
{
    Table *t = s->loop->table;
    if (t->poll_multi && drained && !s->phup) {
        /* io_uring, after a read that came short or said EAGAIN: one
         * multishot poll for the reads' whole run, no SQE per wait; it
         * stays armed between its records, so every byte, FIN or error
         * after that read wakes it again. Not after a read that filled its
         * bytes (more may wait already, which no later wake-up reports):
         * a one-shot poll then, as before, the kept one staying (decision
         * 765) */
        if (s->pms == 0) {
            uint64_t ud = table_take(t, (PyObject *)s, NULL, SLOT_DIRECT | SLOT_KEPT);
            int rc = ud ? t->poll(t->engine, ud, s->fd, POLLIN | POLLRDHUP, UL_POLL_MULTI) : -1;
            if (rc < 0) {
                if (ud)
                    table_refused(t, ud, rc);
                return -1;
            }
            s->pms = ud;
        }
        s->dkind = 1;
        s->recv_ud = s->pms;
        s->rdirect = R_DIRECT;
        return 0;
    }
    uint64_t ud = table_take(t, (PyObject *)s, NULL, SLOT_DIRECT);
    int rc = ud ? t->poll(t->engine, ud, s->fd, POLLIN, drained ? UL_POLL_DRAINED : 0) : -1;
    if (rc < 0) {
        if (ud)
            table_refused(t, ud, rc);
        return -1;
    }
    s->dkind = 1;
    s->recv_ud = ud;
    s->rdirect = R_DIRECT;
    return 0;
}

#define RECV_NOMEM PY_SSIZE_T_MIN

/* one recv(MSG_DONTWAIT) of up to DIRECT_BYTES into a new bytes, cut to
 * what came: > 0 bytes (*out the bytes), 0 EOF, -errno (-EAGAIN: nothing
 * waits), or RECV_NOMEM with an exception set. */
static ssize_t stream_recv_bytes(Stream *s, PyObject **out)
{
    PyObject *b = *out = PyBytes_FromStringAndSize(NULL, DIRECT_BYTES);
    if (b == NULL)
        return RECV_NOMEM;
    ssize_t got;
    do
        got = recv(s->fd, PyBytes_AS_STRING(b), DIRECT_BYTES, MSG_DONTWAIT);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        got = errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (got <= 0) {
        Py_CLEAR(*out);
        return got;
    }
    if (got < DIRECT_BYTES && _PyBytes_Resize(out, got) < 0)
        return RECV_NOMEM; /* the bytes are lost with the memory: as a failed read */
    return got;
}

/* one recv(MSG_DONTWAIT) of up to DIRECT_BYTES into the tail of a
 * StreamReader's bytearray buf (grown for it, cut back to what came:
 * decision 636), as stream_recv_bytes returns. */
static ssize_t stream_recv_tail(Stream *s, PyObject *buf)
{
    Py_ssize_t n0 = PyByteArray_GET_SIZE(buf);
    if (n0 > PY_SSIZE_T_MAX - DIRECT_BYTES) {
        PyErr_NoMemory();
        return RECV_NOMEM;
    }
    if (PyByteArray_Resize(buf, n0 + DIRECT_BYTES) < 0)
        return RECV_NOMEM;
    ssize_t got;
    do
        got = recv(s->fd, PyByteArray_AS_STRING(buf) + n0, DIRECT_BYTES, MSG_DONTWAIT);
    while (got < 0 && errno == EINTR);
    if (got < 0)
        got = errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if (PyByteArray_Resize(buf, n0 + (got > 0 ? got : 0)) < 0)
        return RECV_NOMEM; /* the bytes are lost with the memory: as a failed read */
    return got;
}

/* The receive of a Protocol whose chunks come big (decision 373), in the
 * transport's context (entered): each read lands in a new bytes of
 * DIRECT_BYTES, cut to what came (an in-place shrink of the heap block)
 * and handed to data_received, with no pool buffer in between: one copy of
 * every byte, the kernel's, as decision 365's pipe reader. now: the socket
 * is likely readable (a poll said so), read at once; while a read fills
 * its bytes the next one follows at once too (as decision 350), up to
 * DIRECT_READS; otherwise the Stream waits with a poll (stream_arm_poll).
 * A read of less than a pool buffer (not the tail after a read that
 * filled its bytes: dfull, decision 718), or a BufferedProtocol set
 * meanwhile, goes back to the pool receive; EAGAIN waits again. EOF and errors are a
 * final record for stream_recv (the transport's _on_recv). 0, or -1 with
 * an exception set. */
static int stream_read_bytes(Stream *s, int now)
{
    Table *t = s->loop->table;
    for (int reads = 0; t != NULL && t->engine != NULL && stream_direct_ok(s); reads++) {
        if (s->buffered)
            return stream_back_to_pool(s);
        if (!now || reads >= DIRECT_READS) /* drained: a read here came short */
            return stream_arm_poll(s, !now && reads > 0);
        PyObject *b, *reader;
        int into = stream_reader_of(s, &reader, &b);
        ssize_t got = into ? stream_recv_tail(s, b) : stream_recv_bytes(s, &b);
        if (got <= 0 || got == RECV_NOMEM) {
            if (into) {
                Py_DECREF(reader);
                Py_DECREF(b);
            }
            if (got == RECV_NOMEM)
                return -1;
            if (got == -EAGAIN)
                return stream_arm_poll(s, 1);
            return stream_final(s, (int32_t)got, 0); /* EOF, an error: the op's final record */
        }
        int rc;
        if (into) { /* the rest of feed_data (decision 636) */
            s->feeds++;
            rc = stream_reader_after(reader) == 0 ? 0 : stream_protocol_failed(s, m_data_failed);
            Py_DECREF(reader);
        } else {
            rc = stream_data(s, b);
        }
        Py_DECREF(b);
        if (rc < 0)
            return -1;
        now = got == DIRECT_BYTES;
        /* small now: the pool again; not a big message's tail, after a
         * read that filled its bytes (the next message may be big too, and
         * the poll holds nothing; decision 718) */
        int tail = s->dfull;
        s->dfull = (char)now;
        if (got < t->buf_size && !tail && stream_direct_ok(s))
            return stream_back_to_pool(s);
    }
    return 0;
}

/* The receive of a BufferedProtocol whose reads come big, in the
 * transport's context (entered; decision 350), the stock way: get_buffer(-1)
 * and a recv_into that buffer, then buffer_updated(n). When the last read
 * filled its buffer (again), more is likely waiting: read at once, as the
 * stock loop and libuv read on while a read fills the buffer; otherwise,
 * or once the socket says EAGAIN, a one-shot engine receive into the
 * buffer, which stays exported (a bytearray cannot be resized) until its
 * record (stream_direct_record); after a read that came short or said
 * EAGAIN it waits for data before it tries (UL_RECV_WAIT_FIRST, decision
 * 389: epoll's attempt at submit only met EAGAIN). EOF and errors are a
 * final record for stream_recv (the transport's _on_recv). A buffer smaller than a pool
 * buffer, or one recv_into would refuse, is let go and the pool receive
 * takes over (_start_reading): it asks get_buffer again when bytes come and
 * reports a bad buffer the stock way. 0, or -1 with an exception set. */
static int stream_read_direct_loop(Stream *s, int how);

/* stream_read_direct_loop, then what its callbacks held leaves (decision 646) */
static int stream_read_direct(Stream *s, int how)
{
    int rc = stream_read_direct_loop(s, how);
    if (s->hold > 0) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (stream_unhold_rc(s) < 0) {
            if (type != NULL)
                PyErr_Clear(); /* the first exception is the one that goes on */
            else
                rc = -1;
        }
        if (type != NULL)
            PyErr_Restore(type, value, tb);
    }
    return rc;
}

static int stream_read_direct_loop(Stream *s, int how)
{
    Table *t = s->loop->table;
    if (!s->buffered)
        return stream_read_bytes(s, how == D_NOW);
    for (int reads = 0; t != NULL && t->engine != NULL && stream_direct_ok(s); reads++) {
        if (!s->buffered) /* set_protocol inside buffer_updated */
            return stream_back_to_pool(s);
        PyObject *protocol = Py_XNewRef(s->protocol), *get_buffer = Py_NewRef(s->on_data);
        PyObject *num = PyLong_FromLong(-1);
        PyObject *buf = num ? stream_proto_call(get_buffer, s->data_self ? protocol : NULL, num)
                            : NULL;
        Py_XDECREF(num);
        Py_DECREF(get_buffer); /* set_protocol inside it let go of s->on_data */
        Py_XDECREF(protocol);
        if (buf == NULL)
            return stream_protocol_failed(s, m_get_buffer_failed);
        Py_buffer *b = PyMem_Malloc(sizeof *b);
        int ok = b != NULL && PyObject_GetBuffer(buf, b, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0;
        Py_DECREF(buf);
        if (!ok || b->len < t->buf_size || !stream_direct_ok(s)) {
            if (ok)
                PyBuffer_Release(b);
            PyMem_Free(b);
            PyErr_Clear();
            if (!stream_direct_ok(s))
                return 0;
            return stream_back_to_pool(s);
        }
        size_t len = b->len < (1 << 30) ? (size_t)b->len : (1u << 30); /* res is an int32 */
        ssize_t got = -1;
        if (how == D_NOW && reads < DIRECT_READS) {
            do
                got = recv(s->fd, b->buf, len, MSG_DONTWAIT);
            while (got < 0 && errno == EINTR);
            if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
                got = -errno;
            } else if (got < 0) {
                got = -1; /* EAGAIN: wait below, without another try */
                how = D_DRAINED;
            }
        }
        if (got >= 0 || got < -1) {
            PyBuffer_Release(b);
            PyMem_Free(b);
            if (got <= 0) /* EOF, an error: the op's final record */
                return stream_final(s, (int32_t)got, 0);
            s->dfull = (size_t)got == len;
            s->chain = (size_t)got == len && reads + 1 < DIRECT_READS;
            int urc = stream_updated(s, got);
            s->chain = 0;
            if (urc < 0)
                return -1;
            /* a read here follows one that filled its buffer: one that
             * comes short, even of a pool buffer, is the tail of a big
             * message, and the next receive stays the protocol's (it waits
             * first); a first read that comes small goes back to the pool
             * (stream_direct_done; decision 718) */
            how = (size_t)got == len ? D_NOW : D_DRAINED;
            continue;
        }
        uint64_t ud = table_take(t, (PyObject *)s, NULL, SLOT_DIRECT);
        /* D_DRAINED: the transport keeps its fd open until the record, so
         * epoll may wait on its registration as it is (decision 391) */
        int rc = ud ? t->recv_into(t->engine, ud, s->fd, b->buf, (uint32_t)len,
                                   how == D_DRAINED ? UL_RECV_DRAINED : 0)
                    : -1;
        if (rc < 0) {
            PyBuffer_Release(b);
            PyMem_Free(b);
            if (ud)
                table_refused(t, ud, rc);
            return -1;
        }
        s->dbuf = b;
        s->recv_ud = ud;
        s->rdirect = R_DIRECT;
        return 0;
    }
    return 0;
}

/* A direct receive's protocol callback let SystemExit or KeyboardInterrupt
 * through (rc < 0, the exception set) before the next receive was armed:
 * the pool receive is (_start_reading, which knows when not to), so that the
 * loop, run again, reads on as the stock loop's reader does; the transport
 * went deaf before (decision 405). The exception stays set. */
static int stream_rearm(Stream *s, int rc)
{
    if (rc >= 0 || s->recv_ud != 0 || s->dbuf != NULL || s->rdirect != R_POOL ||
        s->transport == NULL)
        return rc;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (stream_back_to_pool(s) < 0)
        PyErr_Clear(); /* the first exception is the one that goes on */
    PyErr_Restore(type, value, tb);
    return rc;
}

/* The direct receive's res bytes are in the protocol's buffer (dbuf):
 * buffer_updated(res) once the buffer is let go (the protocol may resize
 * it then), and the next receive (stream_read_direct) while they come big.
 * Anything unusual (paused, closing, other records held, another protocol
 * set meanwhile) makes the bytes an ordinary final record, as an emulated
 * multishot receive's last one, for stream_recv; so are EOF, errors and
 * the cancel's -ECANCELED. enter: the transport's context is not current
 * yet. 0, or -1 with an exception set. */
static int stream_direct_done(Stream *s, int32_t res, int enter)
{
    Py_buffer *b = s->dbuf;
    size_t len = (size_t)b->len;
    int fast = res > 0 && (s->rdirect == R_DIRECT || s->rdirect == R_HELD) && s->rfast &&
               s->buffered && s->on_updated != NULL && s->transport != NULL &&
               (s->held == NULL || s->draining);
    PyObject *data = res > 0 && !fast ? PyBytes_FromStringAndSize(b->buf, res) : Py_NewRef(Py_None);
    s->dbuf = NULL;
    s->rdirect = R_POOL;
    PyBuffer_Release(b);
    PyMem_Free(b);
    if (data == NULL)
        return -1;
    Py_INCREF(s);
    int rc = -1;
    if (!fast) {
        PyObject *r = stream_recv(s, res, 0, data, NULL, enter);
        Py_XDECREF(r);
        rc = r ? 0 : -1;
    } else if (!enter || PyContext_Enter(s->ctx) == 0) {
        s->chain = (size_t)res == len;
        rc = stream_updated(s, res);
        s->chain = 0;
        if (rc > 0) {
            rc = 0; /* reported: the transport closes */
        } else if (rc == 0 && stream_direct_ok(s)) {
            int tail = s->dfull; /* this read went on from one that filled its buffer */
            s->dfull = (size_t)res == len;
            if (res >= s->loop->table->buf_size || tail) {
                rc = stream_read_direct(s, (size_t)res == len ? D_NOW : D_DRAINED);
            } else { /* small now: the pool again */
                rc = stream_back_to_pool(s);
            }
        }
        if (s->hold > 0 && rc == 0 && stream_unhold_rc(s) < 0) /* the chain ended */
            rc = -1;
        if (enter && PyContext_Exit(s->ctx) < 0)
            rc = -1;
    }
    Py_DECREF(data);
    rc = stream_rearm(s, rc);
    Py_DECREF(s);
    return rc;
}

/* The poll of a Protocol's direct receive ended (decision 373): the
 * socket is readable (or hung up, or in error), and the reads go on
 * (stream_read_bytes). When what _ready held before the poll (or records
 * held already) must go first, one read is made now and its bytes are held
 * as a pool receive's record would be, and the poll waits again (a small
 * read is held as the op's last record: the pool receive follows). Paused,
 * closing, another protocol set meanwhile, or the poll cancelled or failed:
 * nothing was read, the record says -ECANCELED (or the error) to the
 * transport's _on_recv, whose next receive is the pool's. 1, or -1 with an
 * exception set. */
static int stream_poll_record(Stream *s, int32_t res)
{
    int was = s->rdirect;
    s->dkind = 0;
    s->rdirect = R_POOL;
    int ok = res >= 0 && was == R_DIRECT && s->rfast && !s->buffered && s->on_data != NULL &&
             s->transport != NULL && s->loop->table != NULL && s->loop->table->engine != NULL;
    int rc = -1;
    Py_INCREF(s);
    if (!ok) {
        rc = stream_final(s, res < 0 ? res : -ECANCELED, 1);
    } else if (s->held != NULL || !ready_empty(s->loop)) {
        PyObject *b;
        ssize_t got = stream_recv_bytes(s, &b);
        if (got == -EAGAIN) {
            rc = stream_arm_poll(s, 1);
        } else if (got > 0) {
            /* a big message's tail keeps the poll (decision 718) */
            int more = got >= s->loop->table->buf_size || s->dfull;
            s->dfull = got == DIRECT_BYTES;
            int h = stream_hold(s, NULL, got, more, b);
            Py_DECREF(b);
            rc = h < 0 ? -1 : more ? stream_arm_poll(s, got < DIRECT_BYTES) : 0;
        } else if (got != RECV_NOMEM) {
            rc = stream_final(s, (int32_t)got, 1);
        }
    } else if (PyContext_Enter(s->ctx) == 0) {
        rc = stream_read_bytes(s, 1);
        if (PyContext_Exit(s->ctx) < 0)
            rc = -1;
    }
    rc = stream_rearm(s, rc);
    Py_DECREF(s);
    return rc < 0 ? -1 : 1;
}

/* A record of a SLOT_DIRECT slot: the direct receive ended (decision 350).
 * Bytes that must wait behind what _ready held before the poll (or behind
 * records held already) stay in the protocol's buffer, and a held record
 * (res, False, None) stands for them until _drain (R_HELD). 1, or -1 with
 * an exception set. */
static int stream_direct_record(PyObject *owner, int32_t res, int more, uint64_t ud, int kept)
{
    Stream *s = (Stream *)owner;
    if (kept && ud != s->recv_ud) {
        /* a kept multishot poll the Stream does not wait on (decision 765):
         * nothing read, nothing said. Its own (pms) while a one-shot poll
         * waits after a read that filled its bytes: that one reports, but a
         * FIN or error seen here still makes the later waits one-shot
         * polls. One let go of (cancelled when the reads ended): its records
         * until the final one, which frees the slot. */
        if (ud == s->pms && !more)
            s->pms = 0;
        else if (ud == s->pms && res >= 0 && (res & (POLLRDHUP | POLLHUP | POLLERR)))
            s->phup = 1;
        return 1;
    }
    stream_mark(s);
    s->recv_ud = 0;
    if (s->dkind) {
        if (kept) { /* the kept poll the Stream waits on (recv_ud == pms) */
            if (!more)
                s->pms = 0; /* ended (cancelled, an error): as a one-shot poll's record */
            else if (res >= 0 && (res & (POLLRDHUP | POLLHUP | POLLERR)))
                s->phup = 1;
        }
        int rc = stream_poll_record(s, res);
        if (s->pms != 0 && (s->phup || !s->dkind || s->rdirect != R_DIRECT)) {
            /* the reads ended (the pool receive again, EOF, paused, another
             * protocol), or a FIN or error was seen: the kept poll goes; the
             * engine drops its records once the cancel is asked, and those
             * in the batch already reach the test above */
            Table *t = s->loop->table;
            if (t != NULL && t->engine != NULL)
                (void)t->cancel(t->engine, s->pms); /* -ENOENT: it ended already */
            s->pms = 0;
        }
        return rc;
    }
    if (res > 0 && s->rdirect == R_DIRECT && (s->held != NULL || !ready_empty(s->loop))) {
        if (stream_hold(s, NULL, res, 0, Py_None) < 0)
            return -1;
        s->rdirect = R_HELD;
        return 1;
    }
    return stream_direct_done(s, res, 1) < 0 ? -1 : 1;
}

/* _drain(): the held records, in order, as if they came now (called from
 * _ready in the transport's context): each goes to the protocol, or to
 * _on_recv when the transport paused, closed or the record is unusual. */
static PyObject *Stream_drain(Stream *s, PyObject *unused)
{
    (void)unused;
    HeldQ *q = s->held;
    if (q == NULL || s->draining)
        Py_RETURN_NONE;
    s->held = NULL; /* q is ours now: nothing else changes it */
    s->draining = 1;
    Py_INCREF(s);
    int ok = 1;
    Py_ssize_t i = 0;
    for (; i < q->n; i++) {
        int cnt = 0;
        const HeldRec *a = &q->r[i];
        if (a->data == Py_None && !a->more && s->dbuf != NULL && s->recv_ud == 0 &&
            (s->rdirect == R_HELD || s->rdirect == R_STALE)) {
            /* a direct receive's bytes, still in the protocol's buffer */
            if (stream_direct_done(s, (int32_t)held_res(a), 0) < 0) {
                ok = 0;
                break;
            }
            continue;
        }
        if (s->buffered && s->rfast && s->on_data != NULL && s->transport != NULL) {
            /* a BufferedProtocol's data records in a row are fed together,
             * as when they come (decision 335); q is ours, so are they */
            Piece pc[GATHER_MAX];
            Py_ssize_t total = 0;
            for (; cnt < GATHER_MAX && i + cnt < q->n; cnt++) {
                const HeldRec *b = &q->r[i + cnt];
                if (!b->more || !PyBytes_CheckExact(b->data) || PyBytes_GET_SIZE(b->data) == 0)
                    break;
                pc[cnt].p = PyBytes_AS_STRING(b->data);
                total += pc[cnt].n = PyBytes_GET_SIZE(b->data);
            }
            if (cnt > 0) {
                if (stream_feed_pieces(s, pc, cnt, total) < 0)
                    ok = 0;
                else
                    stream_maybe_direct(s);
                i += cnt - 1; /* the last one handed over */
            }
        }
        if (cnt == 0) {
            /* a record that came through Python goes on with its own int;
             * one of C's is made an int only if it goes to Python (no
             * args: stream_recv's EOF path is not taken while draining) */
            PyObject *r;
            if (a->res != NULL) {
                PyObject *args[3] = {a->res, a->more ? Py_True : Py_False, a->data};
                r = stream_recv(s, 0, a->more, a->data, args, 0);
            } else {
                r = stream_recv(s, (int32_t)a->nres, a->more, a->data, NULL, 0);
            }
            if (r == NULL)
                ok = 0;
            Py_XDECREF(r);
        }
        if (!ok)
            break;
    }
    s->draining = 0;
    if (!ok && i + 1 < q->n) {
        /* SystemExit or KeyboardInterrupt went through: the rest waits for
         * another _drain, first in line; behind what the failed feed kept
         * of its own record (stream_keep_rest: held meanwhile, its _drain
         * queued; decision 405) */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        Py_ssize_t done = i + 1, rest = q->n - done;
        heldq_drop(q, 0, done);
        memmove(q->r, q->r + done, (size_t)rest * sizeof(HeldRec));
        q->n = rest;
        if (s->held != NULL) {
            Py_ssize_t k = 0;
            for (; k < rest && heldq_room(&s->held) == 0; k++)
                s->held->r[s->held->n++] = q->r[k]; /* its references move */
            memmove(q->r, q->r + k, (size_t)(rest - k) * sizeof(HeldRec));
            q->n = rest - k; /* out of memory: the rest is lost */
        } else if (stream_schedule_drain(s) == 0) {
            s->held = q;
            q = NULL;
        }
        PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    if (q != NULL)
        heldq_free(q);
    Py_DECREF(s);
    return ok ? Py_NewRef(Py_None) : NULL;
}

static int stream_mark_dirty(Stream *s)
{
    if (s->dirty)
        return 0;
    PyObject *dirty = s->loop->dirty;
    if (dirty == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the loop has no _dirty list");
        return -1;
    }
    int rc;
    if (PyList_CheckExact(dirty)) {
        rc = PyList_Append(dirty, (PyObject *)s);
    } else {
        PyObject *r = PyObject_CallMethodOneArg(dirty, S.s_append, (PyObject *)s);
        rc = r ? 0 : -1;
        Py_XDECREF(r);
    }
    if (rc == 0)
        s->dirty = 1;
    return rc;
}

/* More than the high-water mark is queued and no send is in flight: one
 * non-blocking sendmsg() of the queue now, as the stock transport sends on
 * every write (see SocketTransport._send_now for why not at the end of the
 * turn), without joining the chunks. What the kernel left stays queued; the
 * transport then decides about pausing the protocol. The queue may hold
 * bytearrays here (held writes, decision 646, or a gathered write's own
 * buffer): what is left of them is queued as bytes (a copy), so the queue
 * is bytes again afterwards and nothing is held. */
static PyObject *stream_send_now(Stream *s)
{
    s->hold = 0;
    PyObject *buf = stream_queue_list(s);
    if (buf == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(buf);
    if (n > 64)
        return stream_call(s, s_send_now, NULL, 0, 0);
    struct iovec iov[64];
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(buf, i);
        if (PyBytes_CheckExact(b)) {
            iov[i].iov_base = PyBytes_AS_STRING(b);
            iov[i].iov_len = (size_t)PyBytes_GET_SIZE(b);
        } else if (PyByteArray_CheckExact(b)) {
            iov[i].iov_base = PyByteArray_AS_STRING(b);
            iov[i].iov_len = (size_t)PyByteArray_GET_SIZE(b);
        } else {
            return stream_call(s, s_send_now, NULL, 0, 0);
        }
    }
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)n;
    ssize_t k;
    s->nows++;
    do
        k = sendmsg(s->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (k < 0 && errno == EINTR);
    if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            PyErr_SetFromErrno(PyExc_OSError);
            PyObject *exc = take_exception();
            PyObject *args[2] = {exc, m_write_failed};
            PyObject *r = stream_call(s, s_fatal_error, args, 2, 0);
            Py_DECREF(exc);
            return r;
        }
        k = 0;
    }
    /* drop what left; what is left of the chunks becomes bytes (the first,
     * partly sent, cut) */
    Py_ssize_t left = k, i = 0;
    while (i < n && left >= (Py_ssize_t)iov[i].iov_len)
        left -= (Py_ssize_t)iov[i++].iov_len;
    for (Py_ssize_t j = i; j < n; j++) {
        PyObject *b = PyList_GET_ITEM(buf, j);
        Py_ssize_t cut = j == i ? left : 0;
        if (cut == 0 && PyBytes_CheckExact(b))
            continue;
        PyObject *rest = PyBytes_FromStringAndSize((char *)iov[j].iov_base + cut,
                                                   (Py_ssize_t)iov[j].iov_len - cut);
        if (rest == NULL)
            return NULL;
        PyList_SetItem(buf, j, rest); /* steals rest, drops b */
    }
    if (i > 0 && PyList_SetSlice(buf, 0, i, NULL) < 0)
        return NULL;
    s->buffer_size -= k;
    if (s->buffer_size > s->high || s->wpaused)
        return stream_call(s, s_send_now_tail, NULL, 0, 0);
    Py_RETURN_NONE;
}

/* The held writes leave now (decision 646): at the end of the read chain
 * that held them, and before anything else may see or change the queue. */
static PyObject *stream_unhold(Stream *s)
{
    if (s->hold == 0)
        Py_RETURN_NONE;
    if (s->transport == NULL || !stream_queue_ok(s)) {
        s->hold = 0;
        Py_RETURN_NONE;
    }
    return stream_send_now(s);
}

/* stream_unhold where only success matters: 0, or -1 with an exception set */
static int stream_unhold_rc(Stream *s)
{
    if (s->hold == 0)
        return 0;
    PyObject *r = stream_unhold(s);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* A write of the batch being delivered was taken whole by the socket at
 * write() (stream_write_direct): the batch's later writes gather for the
 * turn's flush, as when that write put the Stream on the dirty list */
static inline int stream_sent_in_batch(Stream *s)
{
    return s->wdirect && s->loop->in_batch && s->wseq == s->loop->batch_seq;
}

/* write() on an idle transport (nothing queued, none in flight, no write
 * yet this turn) with direct set, from a callback of the turn's records
 * (decision 398): one non-blocking send() now, as the stock
 * transport and uvloop do; only what the kernel leaves is queued (a copy of
 * the rest: the caller may reuse a mutable buffer), and later writes of the
 * turn gather behind it into one send at the turn's flush: the Stream goes
 * on the dirty list, or, when the socket took it all in the batch, is
 * stamped with the batch (stream_sent_in_batch, decision 714). Returns 1 if
 * it took the write (*r is the result), 0 if data has no simple buffer (the
 * caller queues a copy). */
static int stream_write_direct(Stream *s, PyObject *data, PyObject **r)
{
    Py_buffer view;
    if (PyBytes_CheckExact(data)) {
        /* bytes are read in place: no buffer export (about 130 instructions
         * a write, decision 263); PyBuffer_Release ignores a view without obj */
        view.obj = NULL;
        view.buf = PyBytes_AS_STRING(data);
        view.len = PyBytes_GET_SIZE(data);
    } else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* not contiguous: bytes(data) sorts it out */
        return 0;
    }
    *r = NULL;
    const char *p = view.buf;
    Py_ssize_t len = view.len, k = 0;
    if (len > 0) {
        do
            k = send(s->fd, p, (size_t)len, MSG_DONTWAIT | MSG_NOSIGNAL);
        while (k < 0 && errno == EINTR);
        s->directs++;
    }
    if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            PyErr_SetFromErrno(PyExc_OSError);
            PyBuffer_Release(&view);
            PyObject *exc = take_exception();
            PyObject *args[2] = {exc, m_write_failed};
            *r = stream_call(s, s_fatal_error, args, 2, 0);
            Py_DECREF(exc);
            return 1;
        }
        k = 0;
    }
    if (k == len) {
        PyBuffer_Release(&view);
        if (s->loop->in_batch) {
            /* nothing to flush: the batch's later writes queue (and go on
             * the dirty list) as the dirty mark made them, without the mark
             * and the flush's visit (decision 714) */
            s->wdirect = 1;
            s->wseq = s->loop->batch_seq;
            *r = Py_NewRef(Py_None);
            return 1;
        }
        *r = stream_mark_dirty(s) < 0 ? NULL : Py_NewRef(Py_None);
        return 1;
    }
    PyObject *rest = k == 0 && PyBytes_CheckExact(data)
                         ? Py_NewRef(data)
                         : PyBytes_FromStringAndSize(p + k, len - k);
    PyBuffer_Release(&view);
    if (rest == NULL)
        return 1;
    int rc = stream_append(s, rest);
    Py_DECREF(rest);
    if (rc < 0)
        return 1;
    s->buffer_size += len - k;
    if (stream_mark_dirty(s) < 0)
        return 1;
    /* the kernel left more than the mark: pause as the stock write() does */
    *r = s->buffer_size > s->high ? stream_call(s, s_send_now_tail, NULL, 0, 0)
                                  : Py_NewRef(Py_None);
    return 1;
}

/* after write()/writelines() queued: the turn's flush, and above the
 * high-water mark the transport decides (pause the protocol behind a send in
 * flight, or send now) */
static PyObject *stream_queued(Stream *s)
{
    if (stream_queue_len(s) > 0 && stream_mark_dirty(s) < 0)
        return NULL;
    if (s->buffer_size > s->high) {
        PyObject *r = s->sending ? stream_call(s, s_maybe_pause, NULL, 0, 0) : stream_send_now(s);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

/* From this size on, write() of a bytearray or memoryview to a transport
 * with nothing queued and nothing in flight is one send() at once, on both
 * backends (decision 336): a copy for the turn's flush costs at least a
 * syscall from about 16 KiB up, and more with each byte. */
#define DIRECT_MUTABLE (16 * 1024)

/* data is referenced by its caller's expression alone: no one else can
 * change it after write() returns, so the queue may keep it as it is */
static inline int stream_unique_temp(PyObject *data)
{
#if PY_VERSION_HEX >= 0x030E0000
    return PyUnstable_Object_IsUniqueReferencedTemporary(data);
#else
    return Py_REFCNT(data) == 1;
#endif
}

/* A write that may wait for the next one of its read chain (decision 646):
 * a bytearray of DIRECT_MUTABLE bytes or more written from a
 * buffer_updated whose read filled its buffer (the next read follows at
 * once), that is a temporary of the caller's (the usual
 * `write(self.buf[:n])`: kept, not copied), with only held writes queued,
 * none in flight, not paused, and the held bytes not over the high-water
 * mark: a write far past it leaves at once, as before. */
static inline int stream_holdable(Stream *s, PyObject *data, Py_ssize_t len)
{
    return s->chain && PyByteArray_CheckExact(data) && len >= DIRECT_MUTABLE &&
           !s->sending && !s->wpaused && s->buffer_size == s->hold &&
           s->buffer_size + len <= s->high && stream_unique_temp(data);
}

/* write(data): the transport's write() */
static PyObject *Stream_write(Stream *s, PyObject *data)
{
    if (!s->wfast || s->transport == NULL || !stream_queue_ok(s))
        goto slow;
    PyObject *b;
    if (s->hold > 0) {
        /* writes are held (decision 646): this one is held too, or they
         * leave with it in one sendmsg(); anything else sends them first */
        if (!s->sending && s->buffer_size == s->hold &&
            (PyBytes_CheckExact(data) || PyByteArray_CheckExact(data))) {
            Py_ssize_t len = Py_SIZE(data);
            if (len == 0)
                Py_RETURN_NONE;
            int held = stream_holdable(s, data, len);
            if (stream_append(s, data) < 0)
                return NULL;
            s->buffer_size += len;
            if (held) {
                s->hold += len;
                Py_RETURN_NONE;
            }
            return stream_send_now(s);
        }
        PyObject *r = stream_unhold(s);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
        if (!s->wfast || s->transport == NULL || !stream_queue_ok(s))
            goto slow;
    }
    if (!s->sending && stream_queue_len(s) == 0 &&
        (PyBytes_CheckExact(data) || PyByteArray_CheckExact(data) || PyMemoryView_Check(data))) {
        /* idle: epoll sends at once while the turn delivers records (a
         * protocol callback's write, decision 210); a write from _ready (a
         * task, a call_soon callback) waits for the turn's flush, as on
         * io_uring, so the turn's responses leave together (decision 398);
         * io_uring only what is over the high-water mark (sent at once
         * anyway: no copy of it first). A mutable buffer of DIRECT_MUTABLE
         * bytes or more is sent at once on both, even after another write
         * of the turn (decision 336): its copy for the flush costs more
         * than the send() call */
        Py_ssize_t len = PyMemoryView_Check(data) ? PyMemoryView_GET_BUFFER(data)->len
                                                   : Py_SIZE(data);
        PyObject *r;
        if (s->chain && stream_holdable(s, data, len)) {
            /* the queue is a list holding the bytearray itself */
            PyObject *l = PyList_New(1);
            if (l == NULL)
                return NULL;
            PyList_SET_ITEM(l, 0, Py_NewRef(data));
            Py_XSETREF(s->buffer, l);
            s->buffer_size += len;
            s->hold = len;
            if (!s->dirty && stream_mark_dirty(s) < 0)
                return NULL;
            Py_RETURN_NONE;
        }
        if (((!s->dirty && !stream_sent_in_batch(s) &&
              ((s->direct && s->loop->in_batch) || len > s->high)) ||
             (len >= DIRECT_MUTABLE && !PyBytes_CheckExact(data))) &&
            stream_write_direct(s, data, &r))
            return r;
    }
    if (PyBytes_CheckExact(data)) {
        b = Py_NewRef(data);
    } else if (PyByteArray_CheckExact(data)) {
        /* the send leaves later: a mutable buffer is copied now, as the
         * stock loop of 3.10/3.11 copies into its bytearray; into the spare
         * bytes when it fits (decision 733: the last flush let it go) */
        b = bytes_of(PyByteArray_AS_STRING(data), PyByteArray_GET_SIZE(data));
        if (b == NULL)
            return NULL;
    } else if (PyMemoryView_Check(data)) {
        b = PyBytes_FromObject(data);
        if (b == NULL)
            return NULL;
    } else {
        goto slow;
    }
    Py_ssize_t len = PyBytes_GET_SIZE(b);
    if (len == 0) {
        Py_DECREF(b);
        Py_RETURN_NONE;
    }
    int rc = stream_append(s, b);
    Py_DECREF(b);
    if (rc < 0)
        return NULL;
    s->buffer_size += len;
    return stream_queued(s);
slow:
    if (s->transport == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the transport is gone");
        return NULL;
    }
    return stream_call(s, s_write_slow, &data, 1, 0);
}

/* writelines(list_of_data): the transport's writelines() on 3.12+ (the
 * stock one queues every item, copied, at once; before 3.12 it is write() of
 * the joined items). A list or tuple of bytes-like items is queued here, as
 * write() queues; anything else (an iterator, an item that is not bytes-like,
 * a state the fast path does not cover) goes to the transport's
 * _writelines_slow, the stock checks and messages. */
static PyObject *Stream_writelines(Stream *s, PyObject *items)
{
    if (s->transport == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the transport is gone");
        return NULL;
    }
    if (s->hold > 0 && stream_unhold_rc(s) < 0) /* held writes leave first (646) */
        return NULL;
    if (!s->wfast || !stream_queue_ok(s) ||
        !(PyList_CheckExact(items) || PyTuple_CheckExact(items)))
        return stream_call(s, s_writelines_slow, &items, 1, 0);
    /* a list could change under the copies below: they read a snapshot */
    PyObject *seq = PyList_CheckExact(items) ? PyList_AsTuple(items) : Py_NewRef(items);
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(seq);
    PyObject *result = NULL, *chunks = NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyObject_CheckBuffer(PyTuple_GET_ITEM(seq, i))) {
            /* the stock memoryview(data) says what is wrong */
            result = stream_call(s, s_writelines_slow, &items, 1, 0);
            goto out;
        }
    if (n == 0) {
        result = Py_NewRef(Py_None);
        goto out;
    }
    if (!(chunks = PyList_New(0)))
        goto out;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyTuple_GET_ITEM(seq, i);
        /* it leaves later: a mutable buffer is copied now, as stock */
        PyObject *b = PyBytes_CheckExact(d) ? Py_NewRef(d) : PyBytes_FromObject(d);
        if (b == NULL)
            goto out;
        int rc = PyBytes_GET_SIZE(b) ? PyList_Append(chunks, b) : 0;
        total += PyBytes_GET_SIZE(b);
        Py_DECREF(b);
        if (rc < 0)
            goto out;
    }
    if (s->buffer == NULL) {
        s->buffer = chunks; /* the queue is these */
        chunks = NULL;
    } else {
        PyObject *q = stream_queue_list(s);
        Py_ssize_t end = q ? PyList_GET_SIZE(q) : 0;
        if (q == NULL || PyList_SetSlice(q, end, end, chunks) < 0)
            goto out;
    }
    s->buffer_size += total;
    result = stream_queued(s);
out:
    Py_XDECREF(chunks);
    Py_DECREF(seq);
    return result;
}

/* unhold(): held writes leave now, before the transport's Python code
 * looks at or changes the queue (decision 646) */
static PyObject *Stream_unhold(Stream *s, PyObject *unused)
{
    (void)unused;
    return stream_unhold(s);
}

/* Empties the spare dirty list as list.clear() does, without
 * PyList_SetSlice's general path (decisions 261, 262), and keeps its
 * storage: no one else can reach that list (code that its items'
 * deallocation runs cannot append to it). */
static void stream_dirty_clear(PyObject *buf)
{
    PyListObject *l = (PyListObject *)buf;
    PyObject **items = l->ob_item;
    Py_ssize_t n = Py_SIZE(l);
    Py_SET_SIZE(l, 0);
    while (n-- > 0)
        Py_DECREF(items[n]);
}

/* _flush(): the turn's writes leave as one send (unless one is in flight:
 * then when it completes). The socket is asked first, with one non-blocking
 * send() of a single chunk or sendmsg() of the whole queue: what it takes needs no engine op, no slot,
 * no record and no completion; only a rest (the socket buffer was full: a
 * short send, or EAGAIN) goes to the engine's ordered queue, from where the
 * kernel left off (decision 305). */
/* One non-blocking send of iov[0:n] (send() for one chunk: sendmsg() makes
 * the kernel copy in a msghdr and an iovec first, decision 370): the bytes
 * the socket took (0 for EAGAIN), taken off buffer_size; -1 with the stock
 * write's error set (the caller reports it as "Fatal write error on socket
 * transport"). The flush's, and close()'s (stream_close_fast, decision 820) */
static Py_ssize_t stream_send_once(Stream *s, struct iovec *iov, Py_ssize_t n)
{
    Py_ssize_t k;
    do {
        if (n == 1) {
            k = send(s->fd, iov[0].iov_base, iov[0].iov_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        } else {
            struct msghdr msg = {0};
            msg.msg_iov = iov;
            msg.msg_iovlen = (size_t)n;
            k = sendmsg(s->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        }
    } while (k < 0 && errno == EINTR);
    if (k < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        k = 0;
    }
    s->buffer_size -= k;
    return k;
}

static PyObject *Stream_flush(Stream *s, PyObject *unused)
{
    (void)unused;
    s->dirty = 0;
    if (s->hold > 0 && stream_unhold_rc(s) < 0) /* not left yet: a chain that raised */
        return NULL;
    Table *t = s->loop->table;
    if (!s->wfast && s->fdclosing)
        Py_RETURN_NONE; /* _flush_slow's: the fd is closing (decision 820) */
    if (!s->wfast || s->transport == NULL || t == NULL || t->engine == NULL ||
        !stream_queue_ok(s))
        return s->transport ? stream_call(s, s_flush_slow, NULL, 0, 0) : Py_NewRef(Py_None);
    PyObject *buf = s->buffer;
    Py_ssize_t n = stream_queue_len(s);
    if (n == 0 || s->sending)
        Py_RETURN_NONE;
    if (n > MAX_IOV) /* more than one send takes: Python sends it */
        return stream_call(s, s_flush_slow, NULL, 0, 0);
    /* a single write is the queue itself (bytes); a list's chunks are checked */
    int listed = PyList_CheckExact(buf);
    struct iovec small[16], *iov = small;
    PyObject *result = NULL;
    Py_ssize_t total = 0, k = 0, first = 0;
    if (!listed && !s->wpaused && PyBytes_GET_SIZE(buf) <= INT32_MAX) {
        /* one write (the usual turn): a plain send() of the bytes, with no
         * iovec or msghdr built for it (decision 722); a rest goes to the
         * engine below, as the general path's does */
        total = PyBytes_GET_SIZE(buf);
        small[0].iov_base = PyBytes_AS_STRING(buf);
        small[0].iov_len = (size_t)total;
        s->sends++;
        if ((k = stream_send_once(s, small, 1)) < 0)
            return NULL;
        if (k == total) { /* all of it (decision 310) */
            s->inline_sends++;
            s->buffer = NULL;
            bytes_drop(buf); /* the spare when ours was the last (decision 730) */
            Py_RETURN_NONE;
        }
        small[0].iov_base = (char *)small[0].iov_base + k;
        small[0].iov_len -= (size_t)k;
        Py_INCREF(t);
        goto rest;
    }
    if (n > 16 && !(iov = PyMem_Malloc((size_t)n * sizeof *iov)))
        return PyErr_NoMemory();
    Py_INCREF(t);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = listed ? PyList_GET_ITEM(buf, i) : buf;
        if (!PyBytes_CheckExact(b))
            goto slow;
        iov[i].iov_base = PyBytes_AS_STRING(b);
        iov[i].iov_len = (size_t)PyBytes_GET_SIZE(b);
        total += PyBytes_GET_SIZE(b);
    }
    if (total > INT32_MAX)
        goto slow; /* more than one send takes */
    /* the socket first, unless the protocol is paused (its resume is the
     * completion's business). Nothing of ours is in flight on the fd: the
     * Stream's sends are its fd's only ordered ops (sendall refuses a
     * transport's socket, write_eof and sendfile leave the fast path) */
    s->sends++;
    if (!s->wpaused) {
        if ((k = stream_send_once(s, iov, n)) < 0)
            goto out;
        if (k == total) { /* all of it: no queue until the next write (decision 310) */
            s->inline_sends++;
            Py_CLEAR(s->buffer);
            result = Py_NewRef(Py_None);
            goto out;
        }
        /* the rest leaves from where the kernel stopped */
        for (Py_ssize_t left = k; left > 0; first++) {
            if ((size_t)left < iov[first].iov_len) {
                iov[first].iov_base = (char *)iov[first].iov_base + left;
                iov[first].iov_len -= (size_t)left;
                break;
            }
            left -= (Py_ssize_t)iov[first].iov_len;
        }
    }
rest:;
    uint64_t ud;
    int rc;
    if (n == 1) {
        PyObject *b = listed ? PyList_GET_ITEM(buf, 0) : buf;
        if (!(ud = table_take(t, (PyObject *)s, b, SLOT_SENT)))
            goto out;
        rc = t->send(t->engine, ud, s->fd, iov[0].iov_base, (uint32_t)iov[0].iov_len, 0);
    } else {
        /* the list itself keeps the bytes: it leaves the Stream below */
        if (!(ud = table_take(t, (PyObject *)s, buf, SLOT_SENT)))
            goto out;
        rc = t->sendv(t->engine, ud, s->fd, iov + first, (uint32_t)(n - first), 0);
    }
    /* the queue is the op's now (as Python's _flush swaps the list first):
     * a single send keeps its bytes, a vectored one the list itself; the
     * Stream keeps no queue until the next write (decision 310) */
    Py_CLEAR(s->buffer);
    if (rc < 0) {
        result = table_refused(t, ud, rc);
        goto out;
    }
    s->sending = total - k;
    result = Py_NewRef(Py_None);
    goto out;
slow:
    result = stream_call(s, s_flush_slow, NULL, 0, 0);
out:
    if (iov != small)
        PyMem_Free(iov);
    Py_DECREF(t);
    return result;
}

/* A send's completion (res, more, data; args as for stream_recv_slow, NULL
 * from the table's delivery). The common case (all of it went out, nothing
 * to resume, the queue goes on the dirty list or stays empty) runs no Python
 * code, so it enters no context (decision 260); anything else is as before. */
static PyObject *stream_sent(Stream *s, int32_t res, int more, PyObject *data,
                             PyObject *const *args)
{
    if (s->transport == NULL)
        Py_RETURN_NONE;
    if (!s->wfast || res < 0 || data != Py_None) {
        PyObject *own[3] = {NULL, more ? Py_True : Py_False, data};
        if (args == NULL) {
            if (!(own[0] = PyLong_FromLong(res)))
                return NULL;
            args = own;
        }
        PyObject *r = stream_call(s, s_on_sent, args, 3, 1);
        Py_XDECREF(own[0]);
        return r;
    }
    s->buffer_size -= s->sending;
    s->sending = 0;
    PyObject *dirty = s->loop->dirty;
    if (!s->wpaused && stream_queue_ok(s) &&
        (stream_queue_len(s) == 0 || s->dirty || (dirty != NULL && PyList_CheckExact(dirty)))) {
        if (stream_queue_len(s) > 0 && stream_mark_dirty(s) < 0)
            return NULL;
        Py_RETURN_NONE; /* nothing queued, no waiter, not closing; or queued for the flush */
    }
    Py_INCREF(s);
    PyObject *r = NULL;
    if (PyContext_Enter(s->ctx) < 0)
        goto out;
    if (s->wpaused && s->buffer_size <= s->low) { /* may write more */
        /* the stock writer callback that resumes is queued behind what
         * _ready held before the poll: so is this resume then (decision 522) */
        r = stream_call(s, ready_empty(s->loop) ? s_maybe_resume : s_resume_behind, NULL, 0, 0);
        if (r == NULL)
            goto exit;
        Py_DECREF(r);
    }
    if (s->wfast && stream_queue_ok(s) && stream_queue_len(s) > 0)
        r = stream_mark_dirty(s) < 0 ? NULL : Py_NewRef(Py_None);
    else if (s->wfast && stream_queue_ok(s))
        r = Py_NewRef(Py_None); /* nothing queued, no waiter, not closing */
    else
        r = stream_call(s, s_after_sent, NULL, 0, 0); /* resume_writing changed things */
exit:
    if (PyContext_Exit(s->ctx) < 0)
        Py_CLEAR(r);
out:
    Py_DECREF(s);
    return r;
}

/* sent(res, more, data): a send's completion (the owner of the sends that
 * Python submits; the table hands the ones C submits over directly) */
static PyObject *Stream_sent(Stream *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "sent(res, more, data)");
        return NULL;
    }
    if (s->transport == NULL)
        Py_RETURN_NONE;
    long res = PyLong_AsLong(args[0]);
    if (res == -1 && PyErr_Occurred())
        return NULL;
    if (res < INT32_MIN || res > INT32_MAX) /* not a record's: the Python path says why */
        return stream_call(s, s_on_sent, args, 3, 1);
    return stream_sent(s, (int32_t)res, args[1] == Py_True, args[2], args);
}

/* A pipe transport's poll record (rsize > 0): the pipe is readable. One
 * read(2) of up to rsize bytes straight into the bytes data_received gets,
 * no pool buffer between (decision 365), handed over as the read op's
 * record would be: (bytes read, more, bytes), or EOF (0) or -errno, after
 * which it reads no more (rsize 0) and the transport ends the poll. One
 * read a record: the level poll brings the rest at the next turn, so a
 * turn's bytes stay what one read takes (more per turn made the consumer's
 * allocations pass glibc's mmap threshold, decision 366). Nothing when
 * someone else read it first (EAGAIN): the poll waits on. 1, or -1 with an
 * exception set. */
static int stream_read_pipe(Stream *s)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, s->rsize);
    if (b == NULL)
        return -1;
    ssize_t n;
    int err;
    do {
        n = read(s->fd, PyBytes_AS_STRING(b), (size_t)s->rsize);
        err = errno;
    } while (n < 0 && err == EINTR);
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
        Py_DECREF(b);
        return 1;
    }
    if (n <= 0) { /* the last read: the transport ends the poll */
        s->rsize = 0;
        Py_DECREF(b);
        b = Py_NewRef(Py_None);
    } else if (n < s->rsize) {
        if (_PyBytes_Resize(&b, n) < 0)
            return -1;
    } else if (s->rgrow > 0 && --s->rgrow == 0) {
        s->rfast = 0; /* the transport's _on_read sees this one (decision 580) */
    }
    PyObject *r = stream_recv(s, n < 0 ? -err : (int32_t)n, 1, b, NULL, 1);
    Py_DECREF(b);
    Py_XDECREF(r);
    return r ? 1 : -1;
}

/* The table's delivery of a record whose owner is a Stream (the receive)
 * or its bound sent (a send): straight to stream_recv/stream_sent with the
 * record's fields, without the result int, the bools and the vectorcall of
 * the owner that the generic call builds (decision 260). 1 when handed
 * over, 0 for any other owner, -1 with an exception set. */
static PyTypeObject AcceptorCoreType;
static PyTypeObject *aco_cls; /* stream.py's Acceptor (acceptor_setup), or NULL */
static int accept_record(PyObject *owner, int32_t res, int more);

static int stream_deliver(PyObject *owner, int32_t res, int more, PyObject *data)
{
    PyObject *r;
    if (Py_IS_TYPE(owner, &StreamType) && ((Stream *)owner)->rsize > 0 && more && res >= 0 &&
        data == Py_None) {
        return stream_read_pipe((Stream *)owner);
    } else if (Py_IS_TYPE(owner, &StreamType)) {
        Stream *s = (Stream *)owner;
        stream_mark(s);
        if (s->rdirect == R_SWITCHING && !more) {
            /* the pool receive cancelled for a direct one has ended: that
             * one follows, unless something else came up meanwhile */
            s->rdirect = R_POOL;
            if (res == -ECANCELED && s->rfast && s->on_data != NULL &&
                (!s->buffered || s->on_updated != NULL) && s->transport != NULL &&
                s->held == NULL) {
                s->recv_ud = 0;
                int rc = -1;
                Py_INCREF(s);
                if (PyContext_Enter(s->ctx) == 0) {
                    rc = stream_read_direct(s, D_SUBMIT);
                    if (PyContext_Exit(s->ctx) < 0)
                        rc = -1;
                }
                rc = stream_rearm(s, rc);
                Py_DECREF(s);
                return rc < 0 ? -1 : 1;
            }
        }
        r = stream_recv(s, res, more, data, NULL, 1);
    } else if (PyCFunction_CheckExact(owner) &&
               PyCFunction_GET_FUNCTION(owner) == (PyCFunction)(void (*)(void))Stream_sent &&
               PyCFunction_GET_SELF(owner) != NULL &&
               Py_IS_TYPE(PyCFunction_GET_SELF(owner), &StreamType)) {
        r = stream_sent((Stream *)PyCFunction_GET_SELF(owner), res, more, data, NULL);
    } else if (Py_IS_TYPE(owner, aco_cls)) {
        return accept_record(owner, res, more); /* an Acceptor's record (decision 867) */
    } else {
        return 0;
    }
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 1;
}

/* A BufferedProtocol's receive on its fast path (nothing held, not paused
 * or closing, nothing ahead of it in _ready): table_deliver may hand it a
 * turn's pool records at once (stream_deliver_pieces). */
static int stream_gathers(PyObject *owner, int coalesced)
{
    Stream *s = (Stream *)owner;
    return Py_IS_TYPE(owner, &StreamType) &&
           (coalesced ? !s->buffered && s->sreader : s->buffered) && s->rfast &&
           s->held == NULL && s->on_data != NULL && s->transport != NULL && ready_empty(s->loop);
}

/* A StreamReaderProtocol's pool records of a turn (cnt pieces), in the
 * transport's context (entered): chunks of up to COALESCE_MAX bytes, as
 * coalesce() would join them, each straight into its reader's buffer
 * (decision 636) or, when no longer on the fast path, a record of its own
 * for stream_recv. 0, or -1 with an exception set. */
static int stream_chunks(Stream *s, const Piece *pc, int cnt)
{
    for (int i = 0; i < cnt;) {
        Py_ssize_t n = pc[i].n;
        int j = i + 1;
        while (j < cnt && n + pc[j].n <= COALESCE_MAX)
            n += pc[j++].n;
        int rc;
        if (s->rfast && !s->buffered && s->on_data != NULL && s->transport != NULL &&
            s->held == NULL && ready_empty(s->loop)) {
            rc = stream_chunk(s, NULL, pc + i, j - i, n);
            if (rc > 0 && s->loop->table != NULL) {
                s->bigfill = n >= DIRECT_MIN * s->loop->table->buf_size;
                stream_maybe_direct(s);
            }
        } else {
            PyObject *b = pieces_rest(pc + i, j - i, 0, 0), *r = NULL;
            if (b != NULL) {
                r = stream_recv(s, (int32_t)n, 1, b, NULL, 0);
                Py_DECREF(b);
            }
            Py_XDECREF(r);
            rc = r ? 0 : -1;
        }
        if (rc < 0)
            return -1;
        i = j;
    }
    return 0;
}

/* a turn's pool records of the receive (cnt pieces, total bytes) into
 * get_buffer()'s buffers, in the transport's context (decision 335). 1, or
 * -1 with an exception set. */
static int stream_deliver_pieces(PyObject *owner, const Piece *pc, int cnt, Py_ssize_t total)
{
    Stream *s = (Stream *)owner;
    int rc = -1;
    stream_mark(s);
    Py_INCREF(s);
    int buffered = s->buffered;
    if (PyContext_Enter(s->ctx) == 0) {
        rc = buffered ? stream_feed_pieces(s, pc, cnt, total) : stream_chunks(s, pc, cnt);
        if (PyContext_Exit(s->ctx) < 0)
            rc = -1;
    }
    if (rc == 0 && buffered)
        stream_maybe_direct(s);
    Py_DECREF(s);
    return rc < 0 ? -1 : 1;
}

/* A record of a SLOT_SENT slot (a send the Stream's _flush submitted, the
 * Stream itself its owner, not a bound sent() kept per Stream: decision
 * 255): table_deliver hands it here. 1, or -1 with an exception set. */
static int stream_sent_record(PyObject *owner, int32_t res, int more, PyObject *data)
{
    PyObject *r = stream_sent((Stream *)owner, res, more, data, NULL);
    Py_XDECREF(r);
    return r ? 1 : -1;
}

/* protocol.<name>, looked up once. A plain function found on the class (the
 * bound method's __func__, its __self__ the protocol) is kept alone and
 * called with the protocol first, as the interpreter calls a method: no
 * bound-method object kept per transport (72 bytes). *self says which. */
static PyObject *stream_bind(PyObject *protocol, PyObject *name, char *self)
{
    PyObject *m = PyObject_GetAttr(protocol, name);
    *self = 0;
    if (m != NULL && PyMethod_Check(m) && PyMethod_GET_SELF(m) == protocol &&
        PyFunction_Check(PyMethod_GET_FUNCTION(m))) {
        PyObject *fn = Py_NewRef(PyMethod_GET_FUNCTION(m));
        Py_DECREF(m);
        *self = 1;
        return fn;
    }
    return m;
}

/* set_protocol's work: bind proto's receive methods once (buffered: the
 * BufferedProtocol's); None unbinds. Fails for no reason of its own (a
 * protocol without the methods takes the Python path). */
static void stream_set_protocol(Stream *s, PyObject *proto, int buffered)
{
    PyObject *on_data = NULL, *on_updated = NULL, *protocol = NULL;
    char data_self = 0, updated_self = 0;
    if (proto != Py_None) {
        /* a protocol without these methods takes the Python path, which
         * fails as the stock transport does, when data comes */
        on_data = stream_bind(proto, buffered ? s_get_buffer : s_data_received, &data_self);
        if (on_data != NULL && buffered) {
            on_updated = stream_bind(proto, s_buffer_updated, &updated_self);
            if (on_updated == NULL)
                Py_CLEAR(on_data);
        }
        if (on_data == NULL)
            PyErr_Clear();
        else if (data_self || updated_self)
            protocol = Py_NewRef(proto);
    }
    if (s->dbuf != NULL)
        s->rdirect = R_STALE; /* its bytes are the old protocol's: handed over as bytes */
    s->buffered = (char)buffered;
    /* the stock StreamReaderProtocol, its stock data_received found on the class */
    s->sreader = (char)(!buffered && sr_proto_type != NULL && proto != Py_None &&
                        Py_IS_TYPE(proto, sr_proto_type) && data_self &&
                        on_data == sr_data_received);
    s->data_self = data_self;
    s->updated_self = updated_self;
    Py_XSETREF(s->on_data, on_data);
    Py_XSETREF(s->on_updated, on_updated);
    Py_XSETREF(s->protocol, protocol);
}

/* set_protocol(protocol, buffered): bind its receive methods once; None unbinds */
static PyObject *Stream_set_protocol(Stream *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_protocol(protocol, buffered)");
        return NULL;
    }
    int buffered = PyObject_IsTrue(args[1]);
    if (buffered < 0)
        return NULL;
    stream_set_protocol(s, args[0], buffered);
    Py_RETURN_NONE;
}

/* keep_peer(peername): an IPv4 peer's (host, port), as getpeername() gave
 * it when the transport was made, is kept here as its address and port, and
 * the transport makes the tuple only when asked for (decision 311): True.
 * Kept only if it comes back the same (inet_ntop's text, as the socket
 * module's); anything else (IPv6, a Unix address, None) stays the
 * transport's own: False. */
static PyObject *Stream_keep_peer(Stream *s, PyObject *peer)
{
    s->peer = 0;
    if (!PyTuple_CheckExact(peer) || PyTuple_GET_SIZE(peer) != 2)
        Py_RETURN_FALSE;
    PyObject *host = PyTuple_GET_ITEM(peer, 0), *port = PyTuple_GET_ITEM(peer, 1);
    if (!PyUnicode_CheckExact(host) || !PyUnicode_IS_ASCII(host) || !PyLong_CheckExact(port))
        Py_RETURN_FALSE;
    const char *text = (const char *)PyUnicode_DATA(host);
    long p = PyLong_AsLong(port);
    struct in_addr a;
    char back[INET_ADDRSTRLEN];
    if (p < 0 || p > 65535 || inet_pton(AF_INET, text, &a) != 1 ||
        !inet_ntop(AF_INET, &a, back, sizeof back) || strcmp(back, text) != 0) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    s->peer_addr = a.s_addr;
    s->peer_port = (uint16_t)p;
    s->peer = 1;
    Py_RETURN_TRUE;
}

/* sa (len bytes, from getsockname or getpeername) as the socket module
 * makes an IPv4 or IPv6 address, shared through cache when one is given;
 * None for another family */
static PyObject *inet_name(const struct sockaddr_storage *sa, socklen_t len, ul_addr_cache **cache)
{
    if (!((sa->ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) ||
          (sa->ss_family == AF_INET6 && len >= sizeof(struct sockaddr_in6))))
        Py_RETURN_NONE;
    return cache ? ul_addr_obj(cache, (const uint8_t *)sa, len, NULL)
                 : ul_addr_new((const uint8_t *)sa, len);
}

/* the local addresses of accepted connections: a server's connections
 * mostly share one (base.py's _share, done here before the tuple is made) */
static ul_addr_cache *accepted_socknames;

/* what the stock transport asks an accepted TCP socket (IPv4 or IPv6) for
 * when it is made, straight from the fd with no socket object (decision
 * 597): the socket's sockname and peername (each None when its call fails;
 * sockname shared with the server's other connections; True: an IPv4 peer
 * kept in the Stream, decision 311), TCP_NODELAY when nodelay (its error
 * raised, as base_events._set_nodelay); then the protocol's binding, the
 * direct flag and the fast paths on (decision 785). 0, or -1 with nothing
 * bound and nothing returned. */
static int stream_accepted(Stream *s, PyObject *nodelay, PyObject *protocol, int buffered,
                           int direct, PyObject **sockname_out, PyObject **peer_out)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    PyObject *sockname = getsockname(s->fd, (struct sockaddr *)&ss, &len) < 0
                             ? Py_NewRef(Py_None)
                             : inet_name(&ss, len, &accepted_socknames);
    if (sockname == NULL)
        return -1;
    PyObject *peer;
    s->peer = 0;
    len = sizeof ss;
    if (getpeername(s->fd, (struct sockaddr *)&ss, &len) < 0) {
        peer = Py_NewRef(Py_None);
    } else if (ss.ss_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, &ss, sizeof sin);
        s->peer_addr = sin.sin_addr.s_addr;
        s->peer_port = ntohs(sin.sin_port);
        s->peer = 1;
        peer = Py_NewRef(Py_True);
    } else {
        peer = inet_name(&ss, len, NULL);
    }
    if (peer == NULL)
        goto fail;
    int on = PyObject_IsTrue(nodelay);
    if (on < 0)
        goto fail;
    if (on && setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    /* _made's set_protocol(protocol, buffered), the direct flag and the fast
     * paths on (decision 785) */
    stream_set_protocol(s, protocol, buffered);
    s->direct = direct != 0;
    s->rfast = s->wfast = 1;
    *sockname_out = sockname;
    *peer_out = peer;
    return 0;
fail:
    s->peer = 0;
    Py_DECREF(sockname);
    Py_XDECREF(peer);
    return -1;
}

/* register(): the transport is the loop's for its fd (stream_for_fd finds
 * it); unregister(): no longer (sendfile hands the fd to sock_sendfile) */
static PyObject *Stream_register(Stream *s, PyObject *unused)
{
    (void)unused;
    if (stream_register(s) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Stream_unregister(Stream *s, PyObject *unused)
{
    (void)unused;
    stream_unregister(s);
    Py_RETURN_NONE;
}

/* release(): the transport's connection_lost has run; unless the Stream is
 * still someone else's (an engine op's slot, the loop's dirty list, a
 * queued _drain, held records or writes), the Stream stops holding its
 * transport, so the pair is no reference cycle: both go when the last
 * reference to the transport does, with no collection of the garbage
 * collector (decision 694). From then on only the transport reaches the
 * Stream (its _core), and a lost transport starts no op, queues nothing and
 * holds nothing, so the Stream never calls a transport that is gone; the
 * transport's __del__ calls unlink() all the same. It leaves the fd
 * registry too: it holds transports that may be open, and a lost one is
 * closing for good (what _ensure_fd_no_transport ignores). Refused
 * (nothing done) when anything but the transport's _core slot and the
 * caller's call (self._core.release()) holds a reference to the Stream. */
static void stream_release(Stream *s, Py_ssize_t refs)
{
    if (s->borrowed || s->transport == NULL)
        return;
    if (Py_REFCNT(s) <= refs && s->recv_ud == 0 && s->sending == 0 && !s->dirty &&
        !s->draining && s->held == NULL && s->dbuf == NULL && s->hold == 0 &&
        (s->buffer == NULL || (PyList_CheckExact(s->buffer) && PyList_GET_SIZE(s->buffer) == 0))) {
        stream_unregister(s);
        s->release_due = 0;
        s->borrowed = 1;
        /* release(): alive, the caller's self; table_put_final: this may
         * be its last reference (its __del__ unlinks s, which the caller
         * holds) */
        Py_DECREF(s->transport);
        return;
    }
    s->release_due = 1; /* table_put_final tries again (decision 695) */
}

static PyObject *Stream_release(Stream *s, PyObject *unused)
{
    (void)unused;
    stream_release(s, 2);
    Py_RETURN_NONE;
}

/* lost(): the end of the transport's _call_connection_lost, its
 * set_protocol(None, False) and release() in one call (decision 786) */
static PyObject *Stream_lost(Stream *s, PyObject *unused)
{
    (void)unused;
    if (s->chold && stream_close_release(s, 1) < 0)
        return NULL; /* (Python's _call_connection_lost, decision 873) */
    stream_set_protocol(s, Py_None, 0);
    stream_release(s, 2);
    Py_RETURN_NONE;
}

/* table_deliver's end of a slot, after its op's final record: a Stream
 * whose release() came while an op of its own was in flight (a server's
 * close(): its cancelled receive ends a run later) is released once the
 * slot has let go of it, if then only its transport holds it (decision
 * 695) */
static void table_put_final(Table *t, uint32_t slot)
{
    PyObject *o = t->slots[slot].owner;
    if (o == NULL || !Py_IS_TYPE(o, &StreamType) || !((Stream *)o)->release_due) {
        table_put(t, slot);
        return;
    }
    Py_INCREF(o);
    table_put(t, slot);
    stream_release((Stream *)o, 2); /* the transport's _core, and o here */
    Py_DECREF(o);
}

/* unlink(): the transport is going (its __del__); a released Stream forgets it */
static PyObject *Stream_unlink(Stream *s, PyObject *unused)
{
    (void)unused;
    if (s->borrowed) {
        stream_unregister(s);
        s->transport = NULL;
        s->borrowed = 0;
    }
    Py_RETURN_NONE;
}

/* start_reading(): an accepted TCP transport's first _start_reading, the
 * handle accepted_transport queues after connection_made (decision
 * 755). stream.py's _start_reading arms the multishot receive unless one is
 * alive (recv_ud), the transport has seen its EOF or a read error
 * (_read_done), or it is closing, paused or holding records; rfast is false
 * whenever it is closing, paused, holding (_held not None) or lost (_sync,
 * 600), so with rfast set the first three need no look. Then the receive
 * is the one _start_reading submits for such a transport: recv(fd, self,
 * True, 0, not buffered, buffered, True) (the Acceptor's transports are
 * SOCK_STREAM sockets: _stream_sock, 745). Anything else (rfast off,
 * _read_done not False, the transport gone, the engine closed) calls the
 * transport's _start_reading, which decides as before. */
static PyObject *Stream_start_reading(Stream *s, PyObject *unused)
{
    (void)unused;
    PyObject *t = s->transport;
    if (t == NULL)
        Py_RETURN_NONE; /* (connection_lost has run: nothing to read for) */
    if (s->recv_ud != 0)
        Py_RETURN_NONE;
    Table *tb = s->loop->table;
    if (s->rfast && tb != NULL && tb->engine != NULL && tb->recv != NULL) {
        if (s->rdone == RD_NO) { /* (_read_done, the property's: decision 1002) */
            uint64_t ud =
                table_take(tb, (PyObject *)s, NULL, s->buffered ? SLOT_VIEW : SLOT_COALESCE);
            if (!ud)
                return NULL;
            int rc = tb->recv(tb->engine, ud, s->fd, 1 | UL_RECV_STREAM, 0);
            if (rc < 0)
                return table_refused(tb, ud, rc);
            s->recv_ud = ud;
            Py_RETURN_NONE;
        }
    }
    Py_INCREF(s);
    Py_INCREF(t);
    PyObject *r = stream_call(s, s_start_reading, NULL, 0, 0);
    Py_DECREF(t);
    Py_DECREF(s);
    return r;
}

/* _fatal_error(exc, message): the transport's (the loop's flush calls it on
 * what is on its dirty list) */
static PyObject *Stream_fatal_error(Stream *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (s->transport == NULL || nargs > 2)
        Py_RETURN_NONE;
    return stream_call(s, s_fatal_error, args, nargs, 0);
}

/* a new Stream; the checks are the caller's (Stream_new, accepted_transport) */
static PyObject *stream_make(PyTypeObject *tp, PyObject *transport, PyObject *loop, int fd,
                             PyObject *ctx, int eofc)
{
    Stream *s = (Stream *)tp->tp_alloc(tp, 0);
    if (s == NULL)
        return NULL;
    s->transport = Py_NewRef(transport);
    s->loop = (Core *)Py_NewRef(loop);
    s->ctx = Py_NewRef(ctx);
    s->fd = fd;
    s->eofc = (char)eofc;
    s->high = 64 * 1024;
    s->low = 16 * 1024;
    return (PyObject *)s;
}

/* Stream(transport, loop, fd, context) */
static PyObject *Stream_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *transport, *loop, *ctx;
    int fd, eofc = 0;
    if (kw != NULL && PyDict_GET_SIZE(kw) > 0) {
        PyErr_SetString(PyExc_TypeError, "Stream() takes no keyword arguments");
        return NULL;
    }
    /* PyArg_ParseTuple("OO!iO!|p") written out: its format parsing was
     * most of a Stream's making, once per connection (decision 710) */
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n < 4 || n > 5) {
        PyErr_Format(PyExc_TypeError, "Stream() takes 4 or 5 arguments (%zd given)", n);
        return NULL;
    }
    transport = PyTuple_GET_ITEM(args, 0);
    loop = PyTuple_GET_ITEM(args, 1);
    ctx = PyTuple_GET_ITEM(args, 3);
    if (!PyObject_TypeCheck(loop, &CoreType) || !PyContext_CheckExact(ctx)) {
        PyErr_SetString(PyExc_TypeError, "Stream(transport, loop, fd, context[, eof])");
        return NULL;
    }
    long lfd = PyLong_AsLong(PyTuple_GET_ITEM(args, 2));
    if (lfd == -1 && PyErr_Occurred())
        return NULL;
    if (lfd < INT_MIN || lfd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "Stream(): fd out of range");
        return NULL;
    }
    fd = (int)lfd;
    if (n == 5 && (eofc = PyObject_IsTrue(PyTuple_GET_ITEM(args, 4))) < 0)
        return NULL;
    return stream_make(tp, transport, loop, fd, ctx, eofc);
}

static int Stream_traverse(Stream *s, visitproc visit, void *arg)
{
    if (!s->borrowed)
        Py_VISIT(s->transport);
    Py_VISIT(s->loop);
    Py_VISIT(s->ctx);
    Py_VISIT(s->on_data);
    Py_VISIT(s->on_updated);
    Py_VISIT(s->protocol);
    Py_VISIT(s->buffer);
    if (s->held != NULL) {
        for (Py_ssize_t i = 0; i < s->held->n; i++) {
            Py_VISIT(s->held->r[i].res);
            Py_VISIT(s->held->r[i].data);
        }
    }
    return 0;
}

static int Stream_clear(Stream *s)
{
    if (s->chold) /* a transport that never ran _call_connection_lost, collected
                           * (dealloc, or the collector's clear of a cycle): s->loop
                           * is still set here (decision 873) */
        (void)stream_close_release(s, 0);
    stream_unregister(s);
    if (s->borrowed) {
        s->transport = NULL;
        s->borrowed = 0;
    }
    Py_CLEAR(s->transport);
    Py_CLEAR(s->loop);
    Py_CLEAR(s->ctx);
    Py_CLEAR(s->on_data);
    Py_CLEAR(s->on_updated);
    Py_CLEAR(s->protocol);
    Py_CLEAR(s->buffer);
    HeldQ *q = s->held;
    s->held = NULL;
    if (q != NULL)
        heldq_free(q);
    return 0;
}

static void Stream_dealloc(Stream *s)
{
    PyObject_GC_UnTrack(s);
    if (s->dbuf != NULL) { /* its op's slot held s: the receive is over */
        PyBuffer_Release(s->dbuf);
        PyMem_Free(s->dbuf);
    }
    Stream_clear(s);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *Stream_get_bool(Stream *s, void *c)
{
    return PyBool_FromLong(*((char *)s + (Py_ssize_t)c));
}

static int Stream_set_bool(Stream *s, PyObject *v, void *c)
{
    int b = v ? PyObject_IsTrue(v) : -1;
    if (b < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    *((char *)s + (Py_ssize_t)c) = (char)b;
    return 0;
}

/* the flags Python sets that are bits (decision 1002) */
#define BIT_GETSET(field)                                                     \
    static PyObject *Stream_get_##field(Stream *s, void *unused)              \
    {                                                                         \
        (void)unused;                                                         \
        return PyBool_FromLong(s->field);                                     \
    }                                                                         \
    static int Stream_set_##field(Stream *s, PyObject *v, void *unused)       \
    {                                                                         \
        (void)unused;                                                         \
        int b = v ? PyObject_IsTrue(v) : -1;                                  \
        if (b < 0) {                                                          \
            if (!PyErr_Occurred())                                            \
                PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute"); \
            return -1;                                                        \
        }                                                                     \
        s->field = b != 0;                                                    \
        return 0;                                                             \
    }
BIT_GETSET(wpaused)
BIT_GETSET(direct)
BIT_GETSET(feed_rest)
BIT_GETSET(fdclosing)

static int no_delete(PyObject *v)
{
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    return 0;
}

/* read_done: a SocketTransport's _read_done (False, True or "eof") */
static PyObject *Stream_get_read_done(Stream *s, void *unused)
{
    (void)unused;
    if (s->rdone == RD_EOF)
        return Py_NewRef(s_eof_text);
    return PyBool_FromLong(s->rdone == RD_ERR);
}

static int Stream_set_read_done(Stream *s, PyObject *v, void *unused)
{
    (void)unused;
    if (no_delete(v) < 0)
        return -1;
    if (PyUnicode_Check(v)) {
        int eq = PyUnicode_Compare(v, s_eof_text) == 0;
        if (eq) {
            s->rdone = RD_EOF;
            return 0;
        }
        if (PyErr_Occurred())
            return -1;
    }
    int b = PyObject_IsTrue(v);
    if (b < 0)
        return -1;
    s->rdone = b ? RD_ERR : RD_NO;
    return 0;
}

/* conn_lost: a SocketTransport's _conn_lost, stock's count (an int >= 0) */
static PyObject *Stream_get_conn_lost(Stream *s, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLong(s->conn_lost);
}

static int Stream_set_conn_lost(Stream *s, PyObject *v, void *unused)
{
    (void)unused;
    if (no_delete(v) < 0)
        return -1;
    PyObject *i = PyNumber_Index(v);
    if (i == NULL)
        return -1;
    int neg = PyObject_RichCompareBool(i, sr_zero, Py_LT);
    unsigned long long n = 0;
    if (neg == 0) {
        n = PyLong_AsUnsignedLongLong(i);
        if (n == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* bigger than 64 bits */
            n = UINT32_MAX;
        }
    }
    Py_DECREF(i);
    if (neg < 0)
        return -1;
    if (neg > 0) {
        PyErr_SetString(PyExc_ValueError, "conn_lost is a count");
        return -1;
    }
    s->conn_lost = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
    return 0;
}

/* close_ud: the transport's held close of fd, released by lost() (0: none;
 * decision 873). The user_data stays in the Stream after the release, for
 * close_reset (decision 1002) */
static PyObject *Stream_get_close_ud(Stream *s, void *unused)
{
    (void)unused;
    return PyLong_FromUnsignedLongLong(s->chold ? s->close_ud : 0);
}

static int Stream_set_close_ud(Stream *s, PyObject *v, void *unused)
{
    (void)unused;
    if (no_delete(v) < 0)
        return -1;
    unsigned long long ud = PyLong_AsUnsignedLongLong(v);
    if (ud == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (ud != s->close_ud)
        s->creset = 0; /* (another close's) */
    s->close_ud = ud;
    s->chold = ud != 0;
    return 0;
}

/* close_reset: a SocketTransport's _close_reset, the user_data of its TCP
 * close in flight that ul_close_reset may still make reset, or None: it is
 * always the close's own (close_ud), so a bit says it (decision 1002) */
static PyObject *Stream_get_close_reset(Stream *s, void *unused)
{
    (void)unused;
    if (!s->creset)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(s->close_ud);
}

static int Stream_set_close_reset(Stream *s, PyObject *v, void *unused)
{
    (void)unused;
    if (no_delete(v) < 0)
        return -1;
    if (v == Py_None) {
        s->creset = 0;
        return 0;
    }
    unsigned long long ud = PyLong_AsUnsignedLongLong(v);
    if (ud == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (ud != s->close_ud) {
        if (s->chold) {
            PyErr_SetString(PyExc_ValueError, "close_reset is the held close's user_data");
            return -1;
        }
        s->close_ud = ud;
    }
    s->creset = 1;
    return 0;
}

/* buffer: the write queue, always a list for Python (the transport's
 * Python paths append to it): made when asked for and there is none, or
 * made of the single bytes queued (stream_queue_list) */
static PyObject *Stream_get_buffer(Stream *s, void *unused)
{
    (void)unused;
    return Py_XNewRef(stream_queue_list(s));
}

static int Stream_set_buffer(Stream *s, PyObject *v, void *unused)
{
    (void)unused;
    if (v == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete this attribute");
        return -1;
    }
    Py_XSETREF(s->buffer, Py_NewRef(v));
    s->hold = 0; /* Python's queue: nothing of it is held (decision 646) */
    return 0;
}

/* idle: what close() asks of the queue (decision 790), in one read where it
 * read buffer, sending, feed_rest and held (and buffer's getter made an
 * empty list to answer): 0 while bytes are queued (the list's truth, as
 * `not c.buffer` read it) or a send is in flight; 1 when neither; 2 when
 * neither and no record is held here (held) or fed in part (feed_rest) */
static PyObject *Stream_get_idle(Stream *s, void *unused)
{
    (void)unused;
    PyObject *q = s->buffer;
    int queued = 0;
    if (q != NULL) {
        if (PyBytes_CheckExact(q))
            queued = 1; /* a single chunk: the getter's [q] */
        else if (PyList_CheckExact(q))
            queued = PyList_GET_SIZE(q) > 0;
        else if ((queued = PyObject_IsTrue(q)) < 0)
            return NULL;
    }
    if (queued || s->sending)
        return PyLong_FromLong(0);
    return PyLong_FromLong(s->feed_rest || (s->held != NULL && s->held->n > 0) ? 1 : 2);
}

/* held: the records waiting behind _ready, as (res, more, data) tuples
 * made for the asking (a list; None when there are none) */
static PyObject *Stream_get_held(Stream *s, void *unused)
{
    (void)unused;
    HeldQ *q = s->held;
    if (q == NULL || q->n == 0)
        Py_RETURN_NONE;
    PyObject *l = PyList_New(q->n);
    for (Py_ssize_t i = 0; l != NULL && i < q->n; i++) {
        const HeldRec *a = &q->r[i];
        PyObject *res = a->res != NULL ? Py_NewRef(a->res) : PyLong_FromSsize_t(a->nres);
        PyObject *t = res ? PyTuple_Pack(3, res, a->more ? Py_True : Py_False, a->data) : NULL;
        Py_XDECREF(res);
        if (t == NULL)
            Py_CLEAR(l);
        else
            PyList_SET_ITEM(l, i, t);
    }
    return l;
}

/* peer: what keep_peer kept, as a new (host, port) tuple (the socket
 * module's: inet_ntop's text and an int), or None */
static PyObject *Stream_get_peer(Stream *s, void *unused)
{
    (void)unused;
    if (!s->peer)
        Py_RETURN_NONE;
    struct in_addr a = {.s_addr = s->peer_addr};
    char text[INET_ADDRSTRLEN];
    if (!inet_ntop(AF_INET, &a, text, sizeof text))
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(si)", text, (int)s->peer_port);
}

#define BOOL_ATTR(name, field) \
    {name, (getter)Stream_get_bool, (setter)Stream_set_bool, NULL, (void *)offsetof(Stream, field)}

static PyGetSetDef Stream_getset[] = {
    {"buffer", (getter)Stream_get_buffer, (setter)Stream_set_buffer, NULL, NULL},
    {"peer", (getter)Stream_get_peer, NULL, NULL, NULL},
    {"held", (getter)Stream_get_held, NULL, NULL, NULL},
    {"idle", (getter)Stream_get_idle, NULL, NULL, NULL},
    BOOL_ATTR("rfast", rfast),       /* the receive fast path may run */
    BOOL_ATTR("wfast", wfast),       /* the write/flush/sent fast paths may run */
    BOOL_ATTR("dirty", dirty),       /* on the loop's dirty list */
    BOOL_ATTR("buffered", buffered), /* a BufferedProtocol */
#define BIT_ATTR(name, field) \
    {name, (getter)Stream_get_##field, (setter)Stream_set_##field, NULL, NULL}
    BIT_ATTR("wpaused", wpaused),     /* the protocol's writing is paused */
    BIT_ATTR("direct", direct),       /* write() sends at once when idle */
    BIT_ATTR("feed_rest", feed_rest), /* set by _feed_buffer too (decision 634) */
    /* a SocketTransport's close state, its properties' (decision 1002) */
    BIT_ATTR("fd_closing", fdclosing),
    BIT_ATTR("read_done", read_done),
    BIT_ATTR("conn_lost", conn_lost),
    BIT_ATTR("close_reset", close_reset),
    {"close_ud", (getter)Stream_get_close_ud, (setter)Stream_set_close_ud,
     "the transport's held close of fd, released by lost() (0: none; decision 873)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef Stream_members[] = {
    {"buffer_size", T_PYSSIZET, offsetof(Stream, buffer_size), 0, NULL},
    {"sending", T_PYSSIZET, offsetof(Stream, sending), 0, NULL},
    {"high", T_PYSSIZET, offsetof(Stream, high), 0, NULL},
    {"low", T_PYSSIZET, offsetof(Stream, low), 0, NULL},
    {"sends", T_UINT, offsetof(Stream, sends), 0, NULL},
    {"directs", T_UINT, offsetof(Stream, directs), 0, NULL},
    {"nows", T_UINT, offsetof(Stream, nows), 0, NULL},
    {"inline_sends", T_UINT, offsetof(Stream, inline_sends), 0, NULL},
    {"feeds", T_UINT, offsetof(Stream, feeds), 0, NULL},
    {"recv_ud", T_ULONGLONG, offsetof(Stream, recv_ud), 0, NULL},
    {"pms", T_ULONGLONG, offsetof(Stream, pms), READONLY,
     "the direct reads' kept multishot poll (0: none; decision 765)"},
    {"rsize", T_INT, offsetof(Stream, rsize), 0, NULL},
    {"rgrow", T_UBYTE, offsetof(Stream, rgrow), 0, NULL},
    {"fd", T_INT, offsetof(Stream, fd), READONLY, NULL},
    /* the transport's _context (decision 985) */
    {"ctx", T_OBJECT, offsetof(Stream, ctx), READONLY, NULL},
    /* bytes of held writes in the queue (decision 646) */
    {"hold", T_PYSSIZET, offsetof(Stream, hold), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

#define STREAM_START_READING 9 /* Stream_methods' start_reading (checked at import) */
static PyMethodDef Stream_methods[] = {
    {"write", (PyCFunction)Stream_write, METH_O, "the transport's write(data)"},
    {"_drain", (PyCFunction)Stream_drain, METH_NOARGS, "hand the held records over"},
    {"writelines", (PyCFunction)Stream_writelines, METH_O, "the transport's writelines (3.12+)"},
    {"_flush", (PyCFunction)Stream_flush, METH_NOARGS, "the turn's writes leave"},
    {"unhold", (PyCFunction)Stream_unhold, METH_NOARGS, "held writes leave now (646)"},
    {"sent", (PyCFunction)(void (*)(void))Stream_sent, METH_FASTCALL, "a send's completion"},
    {"set_protocol", (PyCFunction)(void (*)(void))Stream_set_protocol, METH_FASTCALL, NULL},
    {"_fatal_error", (PyCFunction)(void (*)(void))Stream_fatal_error, METH_FASTCALL, NULL},
    {"register", (PyCFunction)Stream_register, METH_NOARGS, "the loop's transport for its fd"},
    {"start_reading", (PyCFunction)Stream_start_reading, METH_NOARGS,
     "an accepted transport's first _start_reading (755)"},
    {"keep_peer", (PyCFunction)Stream_keep_peer, METH_O, "keep an IPv4 peername here"},
    {"unregister", (PyCFunction)Stream_unregister, METH_NOARGS, "no longer"},
    {"release", (PyCFunction)Stream_release, METH_NOARGS,
     "connection_lost has run: stop holding the transport, if nothing else holds the Stream"},
    {"unlink", (PyCFunction)Stream_unlink, METH_NOARGS, "the transport is going"},
    {"lost", (PyCFunction)Stream_lost, METH_NOARGS,
     "connection_lost has run: set_protocol(None, False), then release()"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject StreamType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringloop._sched.Stream",
    .tp_basicsize = sizeof(Stream),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The hot half of a stream transport (see uringloop/_core/stream.c).",
    .tp_call = (ternaryfunc)Stream_call,
    .tp_traverse = (traverseproc)Stream_traverse,
    .tp_clear = (inquiry)Stream_clear,
    .tp_dealloc = (destructor)Stream_dealloc,
    .tp_methods = Stream_methods,
    .tp_members = Stream_members,
    .tp_getset = Stream_getset,
    .tp_new = Stream_new,
};

/* The AttributeError a member descriptor raises for an unset slot */
static void slot_unset(PyObject *t, const char *name)
{
    PyErr_Format(PyExc_AttributeError, "'%.200s' object has no attribute '%s'",
                 Py_TYPE(t)->tp_name, name);
}

/* The stock Server's _attach and _detach in C (decisions 861-863): for the
 * exact asyncio.base_events.Server whose class's _attach/_detach are the
 * functions (and code) server_setup was given at import, with no instance
 * attribute over them. 3.10-3.12: _active_count read and written as the
 * Python code does; 3.13+: the exact weakref.WeakSet _clients with its
 * class's add/discard/__len__ stock (none on the instance), no pending
 * removals and a set for data: WeakSet.add's data.add(ref(transport,
 * _remove)), discard's data.discard(ref(transport)), len(data) -
 * len(_pending_removals). The instance attributes are read from the
 * instance's dict, which is what Python's attribute read finds while the
 * class has no attribute of those names: checked with the class's
 * functions once per version of the class (its tp_version_tag, which any
 * change to the class or a base renews, as the eval loop's caches check).
 * Anything else (a subclass, a patch on the class or the instance, a
 * missing or non-int _active_count, _sockets None where _attach asserts,
 * another _clients, pending removals) calls the method as before:
 * base_events.py and _weakrefset.py are the rule. */
static struct {
    PyTypeObject *server, *weakset; /* NULL until server_setup; weakset: 3.13+ */
    PyObject *attach, *detach, *attach_code, *detach_code;
    PyObject *add, *discard, *len, *add_code, *discard_code, *len_code;
    unsigned int server_ver, weakset_ver; /* the class versions checked */
} srv;
static PyObject *s_sockets, *s_active_count, *s_wakeup, *s_clients, *s_pending_removals, *s_data,
    *s_remove, *s_add, *s_discard, *s_dunder_len;

#if PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030E0000
/* exported by 3.13 (pycore_object.h), as PyObject_VectorcallMethod uses it */
PyAPI_FUNC(int) _PyObject_GetMethod(PyObject *obj, PyObject *name, PyObject **method);
#endif

/* obj.<name> as PyObject_VectorcallMethod finds it: 1 and *m the function
 * found on the type (no instance attribute over it), 0 and *m the attribute
 * itself, -1 with the error set */
static int srv_method(PyObject *obj, PyObject *name, PyObject **m)
{
#if PY_VERSION_HEX < 0x030E0000
    int r = _PyObject_GetMethod(obj, name, m);
    return *m == NULL ? -1 : r;
#else
    if ((*m = PyObject_GetAttr(obj, name)) == NULL)
        return -1;
    if (PyMethod_Check(*m) && PyMethod_GET_SELF(*m) == obj) {
        Py_SETREF(*m, Py_NewRef(PyMethod_GET_FUNCTION(*m)));
        return 1;
    }
    return 0;
#endif
}

/* the version to keep for tp once checked (0: none, checked again): from
 * 3.12 a change to the class or a base sets its version to 0 (not a
 * version); before 3.12 the valid-version flag is checked too, as those
 * versions mark a changed class by clearing it (3.13 no longer sets it) */
static inline unsigned int srv_version(PyTypeObject *tp)
{
#if PY_VERSION_HEX < 0x030C0000
    if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
#endif
    return tp->tp_version_tag;
}

/* tp's version is the one checked */
static inline int srv_version_ok(PyTypeObject *tp, unsigned int ver)
{
    return ver != 0 && srv_version(tp) == ver;
}

/* the class attribute name is fn with its code at setup */
static int srv_class_fn(PyTypeObject *tp, PyObject *name, PyObject *fn, PyObject *code)
{
    return _PyType_Lookup(tp, name) == fn && PyFunction_GET_CODE(fn) == code;
}

/* The exact stock Server class: its _attach/_detach the stock functions, no
 * class attribute _sockets or _active_count/_clients, generic attribute
 * access (the names' lookups once per class version; the functions' code
 * every time, as assigning __code__ does not change the class) */
static int srv_server_ok(PyTypeObject *tp)
{
    if (tp != srv.server || PyFunction_GET_CODE(srv.attach) != srv.attach_code ||
        PyFunction_GET_CODE(srv.detach) != srv.detach_code)
        return 0;
    if (srv_version_ok(tp, srv.server_ver))
        return 1;
    if (tp->tp_getattro != PyObject_GenericGetAttr || tp->tp_setattro != PyObject_GenericSetAttr ||
        !srv_class_fn(tp, s_attach, srv.attach, srv.attach_code) ||
        !srv_class_fn(tp, s_detach, srv.detach, srv.detach_code) ||
        _PyType_Lookup(tp, s_sockets) != NULL ||
        _PyType_Lookup(tp, srv.weakset != NULL ? s_clients : s_active_count) != NULL)
        return 0;
    srv.server_ver = srv_version(tp);
    return 1;
}

/* The same for the exact stock WeakSet: add, discard and __len__ stock, no
 * class attribute _pending_removals, data or _remove */
static int srv_weakset_ok(PyTypeObject *tp)
{
    if (tp != srv.weakset || PyFunction_GET_CODE(srv.add) != srv.add_code ||
        PyFunction_GET_CODE(srv.discard) != srv.discard_code ||
        PyFunction_GET_CODE(srv.len) != srv.len_code)
        return 0;
    if (srv_version_ok(tp, srv.weakset_ver))
        return 1;
    if (tp->tp_getattro != PyObject_GenericGetAttr ||
        !srv_class_fn(tp, s_add, srv.add, srv.add_code) ||
        !srv_class_fn(tp, s_discard, srv.discard, srv.discard_code) ||
        !srv_class_fn(tp, s_dunder_len, srv.len, srv.len_code) ||
        _PyType_Lookup(tp, s_pending_removals) != NULL || _PyType_Lookup(tp, s_data) != NULL ||
        _PyType_Lookup(tp, s_remove) != NULL)
        return 0;
    srv.weakset_ver = srv_version(tp);
    return 1;
}

/* obj's instance dict (made if it is not yet: what it holds is the same),
 * or NULL with no error set */
static PyObject *srv_dict(PyObject *obj)
{
    PyObject *d = PyObject_GenericGetDict(obj, NULL);
    if (d == NULL)
        PyErr_Clear();
    else if (!PyDict_CheckExact(d))
        Py_CLEAR(d);
    return d;
}

/* d[name] (a new reference), or NULL with no error set */
static PyObject *srv_get(PyObject *d, PyObject *name)
{
    PyObject *v = PyDict_GetItemWithError(d, name);
    if (v == NULL)
        PyErr_Clear();
    return Py_XNewRef(v);
}

/* name is not in d: 1, else (or an error, cleared) 0 */
static int srv_absent(PyObject *d, PyObject *name)
{
    if (PyDict_GetItemWithError(d, name) != NULL)
        return 0;
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* if self._sockets is None: self._wakeup() (d: the Server's dict) */
static int srv_maybe_wakeup(PyObject *server, PyObject *d)
{
    PyObject *v = PyDict_GetItemWithError(d, s_sockets);
    if (v == NULL) { /* (not in the dict: Python's lookup, and its error) */
        if (PyErr_Occurred() || (v = PyObject_GetAttr(server, s_sockets)) == NULL)
            return -1;
        Py_DECREF(v); /* (still referenced by whatever answered it, or not used) */
    }
    if (v != Py_None)
        return 0;
    PyObject *argv[1] = {server};
    v = PyObject_VectorcallMethod(s_wakeup, argv, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_XDECREF(v);
    return v == NULL ? -1 : 0;
}

/* The WeakSet clients (exact and stock, name not on the instance, nothing
 * pending, data a set): 1 with new references in *data and *pending (and
 * *remove when remove is not NULL), 0 (take the Python call; no error set) */
static int srv_weakset(PyObject *c, PyObject *name, PyObject **data, PyObject **pending,
                       PyObject **remove)
{
    if (!srv_weakset_ok(Py_TYPE(c)))
        return 0;
    PyObject *d = srv_dict(c);
    if (d == NULL)
        return 0;
    int ok = 0;
    *data = *pending = NULL;
    if (srv_absent(d, name) && (*pending = srv_get(d, s_pending_removals)) != NULL &&
        PyList_CheckExact(*pending) && PyList_GET_SIZE(*pending) == 0 &&
        (*data = srv_get(d, s_data)) != NULL && PySet_CheckExact(*data))
        ok = remove == NULL || (*remove = srv_get(d, s_remove)) != NULL;
    Py_DECREF(d);
    if (!ok) {
        Py_XDECREF(*data);
        Py_XDECREF(*pending);
    }
    return ok;
}

/* ref(t) as the key WeakSet.discard looks up: the first plain weakref in
 * t's list of weakrefs (the one WeakSet.add made, or a basic ref) is equal
 * to ref(t) and hashes as it does (both compare and hash their referent,
 * t), and is found by its identity; a new ref(t) when there is none */
static PyObject *srv_ref_key(PyObject *t)
{
#ifndef Py_GIL_DISABLED
    Py_ssize_t off = Py_TYPE(t)->tp_weaklistoffset;
    if (off != 0 && !PyType_Check(t)) {
        PyWeakReference *r = *(PyWeakReference **)((char *)t + off);
        while (r != NULL && !PyWeakref_CheckRefExact((PyObject *)r))
            r = r->wr_next;
        if (r != NULL && r->wr_object == t)
            return Py_NewRef((PyObject *)r);
    }
#endif
    return PyWeakref_NewRef(t, NULL);
}

/* _attach's body (d: the stock Server's dict): 1 done, 0 take the Python
 * call (nothing done, no error set), -1 */
static int srv_attach_body(PyObject *d, PyObject *t)
{
    /* assert self._sockets is not None (Python raises it, or not with -O) */
    PyObject *v = PyDict_GetItemWithError(d, s_sockets);
    if (v == NULL || v == Py_None) {
        PyErr_Clear();
        return 0;
    }
    int r;
    if (srv.weakset == NULL) { /* self._active_count += 1 */
        if ((v = srv_get(d, s_active_count)) == NULL)
            return 0;
        if (!PyLong_CheckExact(v)) {
            Py_DECREF(v);
            return 0;
        }
        Py_SETREF(v, PyNumber_InPlaceAdd(v, sr_one));
        r = v == NULL ? -1 : PyDict_SetItem(d, s_active_count, v);
        Py_XDECREF(v);
        return r < 0 ? -1 : 1;
    }
    /* self._clients.add(transport): WeakSet.add with nothing pending */
    PyObject *c = srv_get(d, s_clients), *data, *pending, *remove, *wr;
    if (c == NULL)
        return 0;
    r = srv_weakset(c, s_add, &data, &pending, &remove);
    Py_DECREF(c);
    if (r <= 0)
        return r;
    wr = PyWeakref_NewRef(t, remove);
    r = wr == NULL || PySet_Add(data, wr) < 0 ? -1 : 1;
    Py_XDECREF(wr);
    Py_DECREF(remove);
    Py_DECREF(data);
    Py_DECREF(pending);
    return r;
}

/* _detach's body, as srv_attach_body */
static int srv_detach_body(PyObject *server, PyObject *d, PyObject *t)
{
    int zero, r;
    if (srv.weakset == NULL) {
        /* assert self._active_count > 0; self._active_count -= 1 */
        PyObject *v = srv_get(d, s_active_count);
        if (v == NULL)
            return 0;
        if (!PyLong_CheckExact(v) || PyObject_RichCompareBool(v, sr_zero, Py_GT) != 1) {
            Py_DECREF(v);
            return 0;
        }
        Py_SETREF(v, PyNumber_InPlaceSubtract(v, sr_one));
        r = v == NULL ? -1 : PyDict_SetItem(d, s_active_count, v);
        zero = r < 0 ? -1 : PyObject_RichCompareBool(v, sr_zero, Py_EQ);
        Py_XDECREF(v);
    } else {
        /* self._clients.discard(transport): WeakSet.discard with nothing
         * pending; then len(self._clients) (the same list and set, which a
         * weakref callback run meanwhile changes in place) */
        PyObject *c = srv_get(d, s_clients), *data, *pending, *wr;
        if (c == NULL)
            return 0;
        r = srv_weakset(c, s_discard, &data, &pending, NULL);
        Py_DECREF(c);
        if (r <= 0)
            return r;
        wr = srv_ref_key(t);
        zero = wr == NULL || PySet_Discard(data, wr) < 0
                   ? -1
                   : PySet_GET_SIZE(data) - PyList_GET_SIZE(pending) == 0;
        Py_XDECREF(wr);
        Py_DECREF(data);
        Py_DECREF(pending);
    }
    /* if ... == 0 and self._sockets is None: self._wakeup() */
    if (zero > 0)
        zero = srv_maybe_wakeup(server, d);
    return zero < 0 ? -1 : 1;
}

/* server._attach(transport) (3.13+; server._attach() before), or
 * server._detach(...): in C for the stock Server (above), else the call */
static int server_attach_detach(PyObject *server, PyObject *t, int detach)
{
    PyObject *name = detach ? s_detach : s_attach;
    if (srv_server_ok(Py_TYPE(server))) {
        PyObject *d = srv_dict(server);
        if (d != NULL) {
            int r = srv_absent(d, name);
            if (r)
                r = detach ? srv_detach_body(server, d, t) : srv_attach_body(d, t);
            Py_DECREF(d);
            if (r != 0)
                return r < 0 ? -1 : 0;
        }
    }
    PyObject *m;
    int unbound = srv_method(server, name, &m);
    if (unbound < 0)
        return -1;
    PyObject *argv[3] = {NULL, server, t};
    size_t n = acc.tracks ? 2 : 1;
    PyObject *v = unbound
                      ? PyObject_Vectorcall(m, argv + 1, n | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL)
                      : PyObject_Vectorcall(m, argv + 2, (n - 1) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                            NULL);
    Py_DECREF(m);
    Py_XDECREF(v);
    return v == NULL ? -1 : 0;
}

/* server_setup(Server, _attach, _detach, WeakSet, add, discard, __len__)
 * (the last four None before 3.13): the stock functions, read at import */
static PyObject *server_setup(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    int tracks = nargs == 7 && args[3] != Py_None;
    if (nargs != 7 || !PyType_Check(args[0]) || !PyFunction_Check(args[1]) ||
        !PyFunction_Check(args[2]) ||
        (tracks && (!PyType_Check(args[3]) || !PyFunction_Check(args[4]) ||
                    !PyFunction_Check(args[5]) || !PyFunction_Check(args[6])))) {
        PyErr_SetString(PyExc_TypeError,
                        "server_setup(Server, attach, detach, WeakSet, add, discard, len)");
        return NULL;
    }
    Py_XSETREF(srv.server, (PyTypeObject *)Py_NewRef(args[0]));
    Py_XSETREF(srv.attach, Py_NewRef(args[1]));
    Py_XSETREF(srv.detach, Py_NewRef(args[2]));
    Py_XSETREF(srv.attach_code, Py_NewRef(PyFunction_GET_CODE(args[1])));
    Py_XSETREF(srv.detach_code, Py_NewRef(PyFunction_GET_CODE(args[2])));
    Py_CLEAR(srv.weakset);
    srv.server_ver = srv.weakset_ver = 0;
    if (tracks) {
        Py_XSETREF(srv.add, Py_NewRef(args[4]));
        Py_XSETREF(srv.discard, Py_NewRef(args[5]));
        Py_XSETREF(srv.len, Py_NewRef(args[6]));
        Py_XSETREF(srv.add_code, Py_NewRef(PyFunction_GET_CODE(args[4])));
        Py_XSETREF(srv.discard_code, Py_NewRef(PyFunction_GET_CODE(args[5])));
        Py_XSETREF(srv.len_code, Py_NewRef(PyFunction_GET_CODE(args[6])));
        srv.weakset = (PyTypeObject *)Py_NewRef(args[3]);
    }
    Py_RETURN_NONE;
}

/* _call_connection_lost's finally for the C copy below (decision 834), its
 * steps in order: s (the socket object, exactly a socket.socket) closed
 * unless it is closed already (s._closed and s.fileno() < 0); _sockobj,
 * _protocol, _loop None; the server's _detach (with the transport on
 * 3.13+), _server None; a pending _empty_waiter's ConnectionError; the
 * Stream's lost(). 0, or -1 with the exception set where Python raises it
 * (the steps after it not taken) */
static int lost_finally(PyObject *t, PyObject *s)
{
    PyObject *v = PyObject_GetAttr(s, s_sock_closed);
    if (v == NULL)
        return -1;
    int close = PyObject_Not(v);
    Py_DECREF(v);
    if (close == 0) {
        if ((v = PyObject_CallMethodNoArgs(s, s_fileno)) == NULL)
            return -1;
        close = PyObject_RichCompareBool(v, sr_zero, Py_GE);
        Py_DECREF(v);
    }
    if (close < 0)
        return -1;
    if (close) {
        if ((v = PyObject_CallMethodNoArgs(s, s_close)) == NULL)
            return -1;
        Py_DECREF(v);
    }
    /* the socket's close(2), held since close() (decision 873) */
    PyObject *c = ASLOT(t, A_CORE);
    if (c != NULL && Py_IS_TYPE(c, &StreamType) && ((Stream *)c)->chold &&
        stream_close_release((Stream *)c, 1) < 0)
        return -1;
    aset(t, A_SOCKOBJ, Py_NewRef(Py_None));
    aset(t, A_PROTOCOL, Py_NewRef(Py_None));
    aset(t, A_LOOP, Py_NewRef(Py_None));
    /* _forget, written out */
    PyObject *server = ASLOT(t, A_SERVER);
    if (server == NULL) {
        slot_unset(t, "_server");
        return -1;
    }
    if (server != Py_None) {
        Py_INCREF(server);
        int r = server_attach_detach(server, t, 1);
        Py_DECREF(server);
        if (r < 0)
            return -1;
        aset(t, A_SERVER, Py_NewRef(Py_None));
    }
    if ((v = PyObject_GetAttr(t, s_empty_waiter)) == NULL)
        return -1;
    if (v != Py_None) {
        PyObject *d = PyObject_CallMethodNoArgs(v, S.s_done);
        int done = d == NULL ? -1 : PyObject_IsTrue(d);
        Py_XDECREF(d);
        if (done == 0) {
            PyObject *e = PyObject_CallOneArg(PyExc_ConnectionError, m_closed_by_peer);
            d = e == NULL ? NULL : PyObject_CallMethodOneArg(v, s_set_exception, e);
            Py_XDECREF(e);
            done = d == NULL ? -1 : 0;
            Py_XDECREF(d);
        }
        if (done < 0) {
            Py_DECREF(v);
            return -1;
        }
    }
    Py_DECREF(v);
    /* self._core.lost(): the reference Python's attribute read holds is
     * held here too (release() counts the references to the Stream) */
    PyObject *core = ASLOT(t, A_CORE);
    if (core == NULL) {
        slot_unset(t, "_core");
        return -1;
    }
    Py_INCREF(core);
    v = Py_IS_TYPE(core, &StreamType) ? Stream_lost((Stream *)core, NULL)
                                      : PyObject_CallMethodNoArgs(core, s_lost);
    Py_DECREF(core);
    if (v == NULL)
        return -1;
    Py_DECREF(v);
    return 0;
}

/* _call_connection_lost(exc) of an exact SocketTransport, stream.py's
 * steps in C with no frame (decision 834): `if s is None: return`; the
 * socket extra kept; `if self._protocol_connected:
 * self._protocol.connection_lost(exc)`; then the finally (lost_finally),
 * run as Python runs it while an exception goes through: that exception
 * is the one being handled meanwhile (sys.exception(), and the __context__
 * of one the finally raises, which then replaces it). Taken only where the
 * socket object is a socket.socket (a _Kind's object is made in Python
 * first, a subclass's close may be anything) and the slots it reads are
 * set: 0 (nothing done) for the Python method otherwise. 1: done; -1: an
 * exception set. */
static int transport_lost_fast(PyObject *t, PyObject *exc)
{
    PyObject *s = ASLOT(t, A_SOCKOBJ);
    if (acc.socket_type == NULL || s == NULL || ASLOT(t, A_TSOCK) == NULL)
        return 0;
    if (s == Py_None)
        return 1;
    if (!Py_IS_TYPE(s, (PyTypeObject *)acc.socket_type))
        return 0;
    Py_INCREF(t);
    Py_INCREF(s);
    if (ASLOT(t, A_TSOCK) == Py_None)
        aset(t, A_TSOCK, Py_NewRef(s)); /* the extra socket after the close (600) */
    /* try: */
    PyObject *v = PyObject_GetAttr(t, s_protocol_connected);
    int ok = v == NULL ? -1 : PyObject_IsTrue(v);
    Py_XDECREF(v);
    if (ok > 0) {
        PyObject *proto = ASLOT(t, A_PROTOCOL);
        if (proto == NULL) {
            slot_unset(t, "_protocol");
            ok = -1;
        } else {
            Py_INCREF(proto);
            PyObject *argv[2] = {proto, exc};
            v = PyObject_VectorcallMethod(s_connection_lost, argv,
                                          2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            Py_DECREF(proto);
            ok = v == NULL ? -1 : 0;
            Py_XDECREF(v);
        }
    }
    /* finally: */
    PyObject *prev = ok < 0 ? take_exception() : NULL;
    int rc;
    if (prev == NULL) {
        rc = lost_finally(t, s);
    } else {
#if PY_VERSION_HEX >= 0x030B0000
        PyObject *handled = PyErr_GetHandledException();
        PyErr_SetHandledException(prev);
        rc = lost_finally(t, s);
        PyErr_SetHandledException(handled);
        Py_XDECREF(handled);
#else
        PyObject *ht, *hv, *htb;
        PyErr_GetExcInfo(&ht, &hv, &htb);
        PyErr_SetExcInfo(Py_NewRef((PyObject *)Py_TYPE(prev)), Py_NewRef(prev),
                         PyException_GetTraceback(prev));
        rc = lost_finally(t, s);
        PyErr_SetExcInfo(ht, hv, htb);
#endif
        if (rc == 0) {
            give_exception(prev); /* the try's exception goes on */
            rc = -1;
        } else {
            Py_DECREF(prev); /* replaced (its __context__ now) */
        }
    }
    Py_DECREF(s);
    Py_DECREF(t);
    return rc < 0 ? -1 : 1;
}

/* A method of the transport that is its Stream's (write, writelines), or
 * that reads one of its slots (is_closing, decision 306): a
 * class attribute the interpreter calls as m(transport, arg) with no bound
 * method made (Py_TPFLAGS_METHOD_DESCRIPTOR, as for a function), which
 * finds the transport's Stream in its _core slot, at a fixed offset. Each
 * transport kept the Stream's bound write as its own attribute before (72
 * bytes an idle connection). getattr() still gives a bound method. */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyTypeObject *owner; /* the class whose instances have the _core slot */
    Py_ssize_t offset;   /* where that slot is */
    PyCFunction fn;      /* Stream_write or Stream_writelines (METH_O); NULL: the
                          * slot's own value, no argument (is_closing) */
    PyObject *name;
    PyObject *slot;      /* the member descriptor (its error when the slot is empty) */
    /* __del__ (decision 754): the _sockobj slot's offset and the Python
     * method that does the rest; slow is NULL for the other methods */
    Py_ssize_t sock_offset;
    PyObject *slow;
    char close; /* close() (decision 820): stream_close_fast, else slow */
    char lost;  /* _call_connection_lost (decision 834): transport_lost_fast, else slow */
} CoreMethod;

/* __del__(transport): a transport whose socket is gone (_sockobj None, as
 * _call_connection_lost leaves it) unlinks its Stream, if it has one, here;
 * any other (an unclosed transport: its ResourceWarning and close; a _core
 * that is not a Stream; _sockobj never set) calls the class's Python method
 * (decision 754) */
static PyObject *CoreMethod_del(CoreMethod *m, PyObject *self)
{
    if (*(PyObject **)((char *)self + m->sock_offset) == Py_None) {
        PyObject *core = *(PyObject **)((char *)self + m->offset);
        if (core == NULL) /* _begin failed before making it: nothing to unlink */
            Py_RETURN_NONE;
        if (Py_IS_TYPE(core, &StreamType))
            return Stream_unlink((Stream *)core, NULL);
    }
    return PyObject_Vectorcall(m->slow, &self, 1, NULL);
}

static PyObject *CoreMethod_vectorcall(CoreMethod *m, PyObject *const *args, size_t nargsf,
                                       PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (m->close) {
        /* close(): an exact SocketTransport's common cases in C (decisions
         * 812, 820), anything else (a subclass, a patched close, another
         * state, the wrong arguments) stream.py's close */
        if (nargs == 1 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) &&
            Py_TYPE(args[0]) == acc.cls) {
            PyObject *core = *(PyObject **)((char *)args[0] + m->offset);
            if (core != NULL && Py_IS_TYPE(core, &StreamType)) {
                int rc = stream_close_fast((Stream *)core, args[0]);
                if (rc < 0)
                    return NULL;
                if (rc > 0)
                    Py_RETURN_NONE;
            }
        }
        return PyObject_Vectorcall(m->slow, args, nargsf, kwnames);
    }
    if (m->lost) {
        /* _call_connection_lost(exc): an exact SocketTransport's in C
         * (decision 834), anything else (a subclass, other arguments, a
         * socket object that is not a socket.socket) stream.py's */
        if (nargs == 2 && (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) &&
            Py_TYPE(args[0]) == acc.cls) {
            int rc = transport_lost_fast(args[0], args[1]);
            if (rc < 0)
                return NULL;
            if (rc > 0)
                Py_RETURN_NONE;
        }
        return PyObject_Vectorcall(m->slow, args, nargsf, kwnames);
    }
    if (m->fn == NULL && m->slow == NULL && nargs == 1 &&
        (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0) && PyObject_TypeCheck(args[0], m->owner)) {
        /* is_closing(): return self._closing, read from its slot (decision 306) */
        PyObject *v = *(PyObject **)((char *)args[0] + m->offset);
        if (v == NULL) /* never set: the descriptor's own AttributeError */
            return Py_TYPE(m->slot)->tp_descr_get(m->slot, args[0], (PyObject *)m->owner);
        return Py_NewRef(v);
    }
    if (m->fn == NULL && (nargs != 1 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0))) {
        PyErr_Format(PyExc_TypeError, "%U() takes no arguments (%zd given)", m->name,
                     nargs - 1);
        return NULL;
    }
    if (m->fn != NULL && (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0))) {
        PyErr_Format(PyExc_TypeError, "%U() takes exactly one argument (%zd given)", m->name,
                     nargs - 1);
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], m->owner)) {
        PyErr_Format(PyExc_TypeError, "%U() needs a %s, not %.200s", m->name, m->owner->tp_name,
                     Py_TYPE(args[0])->tp_name);
        return NULL;
    }
    if (m->slow != NULL)
        return CoreMethod_del(m, args[0]);
    PyObject *core = *(PyObject **)((char *)args[0] + m->offset);
    if (core == NULL || !Py_IS_TYPE(core, &StreamType)) {
        PyErr_SetString(PyExc_RuntimeError, "the transport has no C core");
        return NULL;
    }
    Py_INCREF(core);
    PyObject *r = m->fn(core, args[1]);
    Py_DECREF(core);
    return r;
}

static PyObject *CoreMethod_get(PyObject *m, PyObject *obj, PyObject *type)
{
    (void)type;
    if (obj == NULL || obj == Py_None)
        return Py_NewRef(m);
    return PyMethod_New(m, obj);
}

static int CoreMethod_traverse(CoreMethod *m, visitproc visit, void *arg)
{
    Py_VISIT(m->owner);
    Py_VISIT(m->slot);
    Py_VISIT(m->slow);
    return 0;
}

static void CoreMethod_dealloc(CoreMethod *m)
{
    PyObject_GC_UnTrack(m);
    Py_CLEAR(m->owner);
    Py_CLEAR(m->name);
    Py_CLEAR(m->slot);
    Py_CLEAR(m->slow);
    Py_TYPE(m)->tp_free((PyObject *)m);
}

static PyObject *CoreMethod_repr(CoreMethod *m)
{
    return PyUnicode_FromFormat("<core method %U of %s>", m->name, m->owner->tp_name);
}

/* What a function answers of itself (decision 835): close and
 * _call_connection_lost answer __name__, __qualname__, __module__ and
 * __doc__ as the Python function they stand for (the fallback, the rule),
 * and __signature__ as inspect.signature() of it: asyncio's
 * Handle.__repr__ and its exception and slow-callback reports
 * (format_helpers._format_callback_source: a bound method's __qualname__,
 * asked of its __func__; no source location, as for a bound method of a
 * function, since there is no __wrapped__) read as they did, and
 * inspect.signature() gives the Python one. fallback is that function. The
 * others (no Python function behind them) give their name, the class's
 * qualified name dotted with it, the class's module, the type's doc string,
 * fallback None and no __signature__. */
static PyObject *CoreMethod_about(CoreMethod *m, void *what)
{
    const char *name = (const char *)what;
    if ((m->close || m->lost) && strcmp(name, "fallback") == 0)
        return Py_NewRef(m->slow);
    if ((m->close || m->lost) && strcmp(name, "__signature__") == 0) {
        PyObject *inspect = PyImport_ImportModule("inspect");
        if (inspect == NULL)
            return NULL;
        PyObject *sig = PyObject_CallMethod(inspect, "signature", "O", m->slow);
        Py_DECREF(inspect);
        return sig;
    }
    if (m->close || m->lost)
        return PyObject_GetAttrString(m->slow, name);
    if (strcmp(name, "fallback") == 0)
        Py_RETURN_NONE;
    if (strcmp(name, "__name__") == 0)
        return Py_NewRef(m->name);
    if (strcmp(name, "__qualname__") == 0) {
        PyObject *q = PyObject_GetAttrString((PyObject *)m->owner, "__qualname__");
        if (q == NULL)
            return NULL;
        PyObject *r = PyUnicode_FromFormat("%U.%U", q, m->name);
        Py_DECREF(q);
        return r;
    }
    if (strcmp(name, "__module__") == 0)
        return PyObject_GetAttrString((PyObject *)m->owner, "__module__");
    if (strcmp(name, "__doc__") == 0)
        return PyUnicode_FromString(Py_TYPE(m)->tp_doc);
    PyErr_SetString(PyExc_AttributeError, name);
    return NULL;
}

static PyGetSetDef CoreMethod_getset[] = {
    {"__name__", (getter)CoreMethod_about, NULL, NULL, "__name__"},
    {"__qualname__", (getter)CoreMethod_about, NULL, NULL, "__qualname__"},
    {"__module__", (getter)CoreMethod_about, NULL, NULL, "__module__"},
    {"__doc__", (getter)CoreMethod_about, NULL, NULL, "__doc__"},
    {"__signature__", (getter)CoreMethod_about, NULL, NULL, "__signature__"},
    {"fallback", (getter)CoreMethod_about, NULL, NULL, "fallback"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject CoreMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringloop._sched.CoreMethod",
    .tp_basicsize = sizeof(CoreMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL |
                Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A transport method that is its C core's (see uringloop/_core/stream.c).",
    .tp_vectorcall_offset = offsetof(CoreMethod, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_descr_get = CoreMethod_get,
    .tp_traverse = (traverseproc)CoreMethod_traverse,
    .tp_dealloc = (destructor)CoreMethod_dealloc,
    .tp_repr = (reprfunc)CoreMethod_repr,
    .tp_getset = CoreMethod_getset,
};

/* core_method(slot, name): the transport class's method name ("write" or
 * "writelines") over the Stream in slot (the class's _core member); or
 * "is_closing", which returns the value in slot (the class's _closing);
 * core_method(slot, "__del__", sock_slot, slow): see CoreMethod_del;
 * core_method(slot, "close", slow): stream_close_fast, else slow (820);
 * core_method(slot, "_call_connection_lost", slow): transport_lost_fast, else
 * slow (834) */
static PyObject *core_method(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if ((nargs < 2 || nargs > 4) || !Py_IS_TYPE(args[0], &PyMemberDescr_Type) ||
        !PyUnicode_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "core_method(member descriptor, name[, member "
                                         "descriptor], [function])");
        return NULL;
    }
    PyMemberDescrObject *md = (PyMemberDescrObject *)args[0];
    if (md->d_member->type != Py_T_OBJECT_EX) {
        PyErr_SetString(PyExc_TypeError, "core_method: not an object slot");
        return NULL;
    }
    PyCFunction fn = NULL;
    Py_ssize_t sock_offset = 0;
    int del = PyUnicode_CompareWithASCIIString(args[1], "__del__") == 0;
    int close = PyUnicode_CompareWithASCIIString(args[1], "close") == 0;
    int lost = PyUnicode_CompareWithASCIIString(args[1], "_call_connection_lost") == 0;
    if (del != (nargs == 4)) {
        PyErr_SetString(PyExc_TypeError, "core_method: __del__ takes a slot and a function");
        return NULL;
    }
    if ((close || lost) != (nargs == 3) || ((close || lost) && !PyCallable_Check(args[2]))) {
        PyErr_SetString(PyExc_TypeError,
                        "core_method: close and _call_connection_lost take a function");
        return NULL;
    }
    if (del) {
        if (!Py_IS_TYPE(args[2], &PyMemberDescr_Type) || !PyCallable_Check(args[3]) ||
            ((PyMemberDescrObject *)args[2])->d_common.d_type != md->d_common.d_type ||
            ((PyMemberDescrObject *)args[2])->d_member->type != Py_T_OBJECT_EX) {
            PyErr_SetString(PyExc_TypeError,
                            "core_method: __del__ takes an object slot of the same class "
                            "and a function");
            return NULL;
        }
        sock_offset = ((PyMemberDescrObject *)args[2])->d_member->offset;
    }
    else if (close || lost)
        fn = NULL;
    else if (PyUnicode_CompareWithASCIIString(args[1], "write") == 0)
        fn = (PyCFunction)Stream_write;
    else if (PyUnicode_CompareWithASCIIString(args[1], "writelines") == 0)
        fn = (PyCFunction)Stream_writelines;
    else if (PyUnicode_CompareWithASCIIString(args[1], "is_closing") == 0)
        fn = NULL;
    else {
        PyErr_SetString(PyExc_ValueError,
                        "core_method: write, writelines, is_closing, close, "
                        "_call_connection_lost or __del__");
        return NULL;
    }
    CoreMethod *m = PyObject_GC_New(CoreMethod, &CoreMethodType);
    if (m == NULL)
        return NULL;
    m->vectorcall = (vectorcallfunc)CoreMethod_vectorcall;
    m->owner = (PyTypeObject *)Py_NewRef((PyObject *)md->d_common.d_type);
    m->offset = md->d_member->offset;
    m->fn = fn;
    m->name = Py_NewRef(args[1]);
    m->slot = Py_NewRef(args[0]);
    m->sock_offset = sock_offset;
    m->slow = del ? Py_NewRef(args[3]) : (close || lost) ? Py_NewRef(args[2]) : NULL;
    m->close = (char)close;
    m->lost = (char)lost;
    PyObject_GC_Track(m);
    return (PyObject *)m;
}

/* An accepted TCP connection's transport (IPv4 or IPv6), the Acceptor's
 * (decisions 597, 811), made from its fd and the listener's _Kind with no
 * socket object and no Python frame: the stock extra info and TCP_NODELAY
 * come from stream_accepted, which asks the fd itself, and the socket object
 * is made only when something asks for it (decision 258). Otherwise the
 * stock order: SocketTransport.__init__'s _begin, _made and _started
 * written out, with what a fresh transport already has left out (decisions
 * 619, 753). The slots are written at their offsets (the member descriptors
 * accepted_setup was given, checked once), and the calls go through the
 * lookups Python would make (the loop's _engine, the engine's backend,
 * server._attach, loop.call_soon, protocol.connection_made, the class's
 * _start_reading), so a subclass or a patched method is still called.
 * stream.py's _begin and _made are the rule: keep this the same. */

/* accepted_setup(cls, slots, high, low, in_core, share, BufferedProtocol,
 * _start_reading, tracks): slots the member descriptors of the transport's 15
 * attributes in the enum's order, each an object slot of cls or a base */
static PyObject *accepted_setup(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 9 || !PyType_Check(args[0]) || !PyTuple_CheckExact(args[1]) ||
        PyTuple_GET_SIZE(args[1]) != A_N || !PyCallable_Check(args[5]) ||
        !PyType_Check(args[6])) {
        PyErr_SetString(PyExc_TypeError, "accepted_setup(cls, slots, high, low, in_core, share, "
                                         "buffered_type, start_reading, tracks)");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    Py_ssize_t off[A_N];
    for (int i = 0; i < A_N; i++) {
        PyObject *d = PyTuple_GET_ITEM(args[1], i);
        if (!Py_IS_TYPE(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != Py_T_OBJECT_EX ||
            !PyType_IsSubtype(cls, ((PyMemberDescrObject *)d)->d_common.d_type)) {
            PyErr_Format(PyExc_TypeError, "accepted_setup: slot %d is not an object slot of %s",
                         i, cls->tp_name);
            return NULL;
        }
        off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    int tracks = PyObject_IsTrue(args[8]);
    if (tracks < 0)
        return NULL;
    Py_XSETREF(acc.cls, (PyTypeObject *)Py_NewRef(cls));
    memcpy(acc.off, off, sizeof off);
    Py_XSETREF(acc.high, Py_NewRef(args[2]));
    Py_XSETREF(acc.low, Py_NewRef(args[3]));
    Py_XSETREF(acc.in_core, Py_NewRef(args[4]));
    Py_XSETREF(acc.share, Py_NewRef(args[5]));
    Py_XSETREF(acc.buffered_type, Py_NewRef(args[6]));
    Py_XSETREF(acc.start_reading, Py_NewRef(args[7]));
    acc.tracks = tracks;
    Py_XSETREF(acc.object_class, Py_XNewRef(_PyType_Lookup(&PyBaseObject_Type, s_dunder_class)));
    Py_RETURN_NONE;
}

/* How often each shortcut of decisions 1009-1010 was taken, for the tests
 * (shortcut_counts()): a connection of the conn-* rows takes call_soon 3
 * times, start_reading once, close_fd once (and cancel once when it closes
 * while its receive is alive) */
static struct {
    unsigned long long call_soon, start_reading, close_fd, cancel, isinstance;
} shortcut_n;

static PyObject *shortcut_counts(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    return Py_BuildValue("{sKsKsKsKsK}", "call_soon", shortcut_n.call_soon, "start_reading",
                         shortcut_n.start_reading, "close_fd", shortcut_n.close_fd, "cancel",
                         shortcut_n.cancel, "isinstance", shortcut_n.isinstance);
}

/* loop.call_soon(fn[, arg][, context=ctx]), looked up on the loop as Python
 * does; when that finds Core's own call_soon (the loop's class keeps it and
 * looks attributes up the generic way, no instance attribute of the name:
 * Core_setattro's soon_patched) and it would make its handle itself
 * (makes_handles), its soon() with no method lookup, no keyword parsed
 * (decision 1009): the same handle, appended as there. A class with a
 * __getattribute__ (or __getattr__) of its own is asked, as stock's
 * transports ask it (decision 1021). ctx NULL: no context argument (the
 * handle copies the current one). The handle, a new reference, or NULL. */
static PyObject *loop_call_soon(PyObject *loop, PyObject *fn, PyObject *arg, PyObject *ctx)
{
    if (PyObject_TypeCheck(loop, &CoreType) && !((Core *)loop)->soon_patched &&
        Py_TYPE(loop)->tp_getattro == PyObject_GenericGetAttr &&
        _PyType_Lookup(Py_TYPE(loop), S.s_call_soon) == S.own_call_soon &&
        makes_handles((Core *)loop)) {
        PyObject *argt = arg != NULL ? PyTuple_Pack(1, arg) : Py_NewRef(S.empty_tuple);
        if (argt == NULL)
            return NULL;
        PyObject *h = soon((Core *)loop, fn, argt, ctx);
        Py_DECREF(argt);
        shortcut_n.call_soon++;
        return h;
    }
    PyObject *argv[4] = {loop, fn, arg, ctx};
    Py_ssize_t n = arg != NULL ? 3 : 2;
    if (ctx != NULL && arg == NULL)
        argv[2] = ctx;
    return PyObject_VectorcallMethod(s_call_soon, argv, n | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                     ctx != NULL ? kw_context : NULL);
}

/* isinstance(protocol, BufferedProtocol), as PyObject_IsInstance answers it
 * for a class whose metaclass is type: a subclass is one; anything else makes
 * isinstance ask the instance's __class__, which a class whose attribute
 * look-up is the generic one and whose __class__ is object's own descriptor
 * (a data descriptor: no instance attribute hides it) answers with the type
 * itself, so: not one, with no look-up (decision 1010). Anything else asks
 * PyObject_IsInstance. */
static int is_buffered(PyObject *protocol)
{
    PyTypeObject *tp = Py_TYPE(protocol);
    if (acc.object_class != NULL && PyType_CheckExact(acc.buffered_type)) {
        if (PyType_IsSubtype(tp, (PyTypeObject *)acc.buffered_type))
            return 1;
        if (tp->tp_getattro == PyObject_GenericGetAttr &&
            _PyType_Lookup(tp, s_dunder_class) == acc.object_class) {
            shortcut_n.isinstance++;
            return 0;
        }
    }
    return PyObject_IsInstance(protocol, acc.buffered_type);
}

/* loop.call_soon(fn[, arg]) for accepted_make; fn a new reference (or NULL,
 * an error), dropped */
static int acc_call_soon(PyObject *loop, PyObject *fn, PyObject *arg)
{
    if (fn == NULL)
        return -1;
    PyObject *h = loop_call_soon(loop, fn, arg, NULL);
    Py_DECREF(fn);
    Py_XDECREF(h);
    return h == NULL ? -1 : 0;
}

static PyObject *accepted_make(PyObject *loop, int lfd, PyObject *kind, PyObject *protocol,
                               PyObject *server, PyObject *nodelay, PyObject *ctx);

/* accepted_transport(loop, fd, kind, protocol, server, nodelay): see above */
static PyObject *accepted_transport(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (acc.cls == NULL || nargs != 6 || !PyObject_TypeCheck(args[0], &CoreType)) {
        PyErr_SetString(PyExc_TypeError,
                        "accepted_transport(loop, fd, kind, protocol, server, nodelay)");
        return NULL;
    }
    long lfd = PyLong_AsLong(args[1]);
    if (lfd == -1 && PyErr_Occurred())
        return NULL;
    if (lfd < INT_MIN || lfd > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "accepted_transport(): fd out of range");
        return NULL;
    }
    return accepted_make(args[0], (int)lfd, args[2], args[3], args[4], args[5], NULL);
}

/* accepted_transport's body (the Acceptor's record in C calls it too).
 * ctx: the transport's context, a new reference stolen, or NULL for a copy
 * of the current one (accepted_transport's); accept_record hands over the
 * connection's own copy, entered now and left to no one else (decision
 * 879). */
static PyObject *accepted_make(PyObject *loop, int lfd, PyObject *kind, PyObject *protocol,
                               PyObject *server, PyObject *nodelay, PyObject *ctx)
{
    /* self = cls.__new__(cls) */
    PyObject *self = acc.cls->tp_new(acc.cls, S.empty_tuple, NULL);
    if (self == NULL) {
        Py_XDECREF(ctx);
        return NULL;
    }
    PyObject *tmp, *sockname, *peer;
    aset(self, A_SOCKOBJ, Py_NewRef(Py_None)); /* (a failure below leaves nothing to close) */
    /* _begin(loop, fd, None), written out */
    aset(self, A_LOOP, Py_NewRef(loop));
    aset(self, A_PPAUSED, Py_NewRef(Py_False));
    aset(self, A_HIGH, Py_NewRef(acc.high));
    aset(self, A_LOW, Py_NewRef(acc.low));
    aset(self, A_EXTRA, Py_NewRef(Py_None));
    aset(self, A_TSOCK, Py_NewRef(Py_None));
    if (ctx == NULL && (ctx = PyContext_CopyCurrent()) == NULL)
        goto fail;
    /* (the transport's _context is its Stream's: decision 985) */
    PyObject *core = stream_make(&StreamType, self, loop, (int)lfd, ctx, 1);
    Py_DECREF(ctx);
    if (core == NULL)
        goto fail;
    aset(self, A_CORE, core);
    Stream *c = (Stream *)core;
    PyObject *engine = PyObject_GetAttr(loop, s_engine);
    if (engine == NULL)
        goto fail;
    aset(self, A_ENGINE, engine);
    int buffered = is_buffered(protocol);
    if (buffered < 0)
        goto fail;
    tmp = PyObject_GetAttr(engine, s_backend);
    if (tmp == NULL)
        goto fail;
    int direct = PyObject_RichCompareBool(tmp, s_epoll, Py_EQ);
    Py_DECREF(tmp);
    if (direct < 0 || stream_accepted(c, nodelay, protocol, buffered, direct, &sockname, &peer) < 0)
        goto fail;
    aset(self, A_SOCKNAME, sockname);
    if (peer == Py_True) {
        Py_DECREF(peer);
        peer = Py_NewRef(acc.in_core);
    } else if (PyTuple_CheckExact(peer) && PyTuple_GET_SIZE(peer) > 0) {
        PyObject *host = PyTuple_GET_ITEM(peer, 0);
        PyObject *shared = PyObject_CallOneArg(acc.share, host);
        if (shared == NULL) {
            Py_DECREF(peer);
            goto fail;
        }
        if (shared != host) { /* (host, *peername[1:]) */
            Py_ssize_t n = PyTuple_GET_SIZE(peer);
            tmp = PyTuple_New(n);
            if (tmp == NULL) {
                Py_DECREF(shared);
                Py_DECREF(peer);
                goto fail;
            }
            PyTuple_SET_ITEM(tmp, 0, shared);
            for (Py_ssize_t i = 1; i < n; i++)
                PyTuple_SET_ITEM(tmp, i, Py_NewRef(PyTuple_GET_ITEM(peer, i)));
            Py_SETREF(peer, tmp);
        } else {
            Py_DECREF(shared);
        }
    }
    aset(self, A_PEERNAME, peer);
    /* _made (its set_protocol in stream_accepted above) */
    aset(self, A_SERVER, Py_NewRef(server));
    aset(self, A_CLOSING, Py_NewRef(Py_False));
    aset(self, A_PAUSED, Py_NewRef(Py_False));
    aset(self, A_PROTOCOL, Py_NewRef(protocol));
    if (server != Py_None && server_attach_detach(server, self, 0) < 0)
        goto fail;
    if (stream_register(c) < 0)
        goto fail;
    /* _started; the first _start_reading the Stream's (decision 755) unless
     * the class's _start_reading is not stream.py's */
    if (acc_call_soon(loop, PyObject_GetAttr(protocol, s_connection_made), self) < 0)
        goto fail;
    if (acc_call_soon(loop,
                      _PyType_Lookup(acc.cls, s_start_reading) == acc.start_reading
                          /* core.start_reading: what its method descriptor
                           * makes (Stream has no instance dict and no
                           * subclass), with no lookup (decision 1010) */
                          ? (shortcut_n.start_reading++,
                             PyCFunction_NewEx(&Stream_methods[STREAM_START_READING], core, NULL))
                          : PyObject_GetAttr(self, s_start_reading),
                      NULL) < 0)
        goto fail;
    aset(self, A_SOCKOBJ, Py_NewRef(kind)); /* the transport's from here: it closes the fd */
    return self;
fail:
    Py_DECREF(self);
    return NULL;
}

/* ------------------------------------------------ the Acceptor's records */

/* AcceptorCore: the C base of stream.py's Acceptor (decision 867). Its
 * per-turn state (turn, made, waiting, stopped, ud) and what the record's
 * plain case reads (loop, protocol_factory, sslcontext, server, kind, plain,
 * nodelay) are C fields, which the Python methods read and write as the
 * attributes they were; _ctx and _bound are the context copied at
 * __init__ and the bound _on_accept made there (what the partial of
 * ctx.run held). Calling the Acceptor is ctx.run(_bound, res, more, data):
 * it is the accept's completion callback. accept_record takes the plain
 * case of a record in C (stream_deliver); anything else is that call. */
typedef struct {
    PyObject_HEAD
    PyObject *loop, *protocol_factory, *sslcontext, *server, *kind, *plain, *nodelay;
    PyObject *waiting, *stopped, *ud, *ctx, *bound;
    long long turn;
    Py_ssize_t made;
} AcceptorCore;

static struct {
    PyTypeObject *cls;   /* stream.py's Acceptor; NULL until acceptor_setup */
    PyObject *on_accept; /* its _on_accept function */
    PyTypeObject *loop_cls; /* uringloop.Loop */
    PyObject *globals;   /* stream.py's globals: _ACCEPT_BUDGET, read per record */
    PyObject *s_budget, *s_is_closing, *s_ensure, *s_creation_failed;
} aco;

static int AcceptorCore_traverse(AcceptorCore *a, visitproc visit, void *arg)
{
    Py_VISIT(a->loop);
    Py_VISIT(a->protocol_factory);
    Py_VISIT(a->sslcontext);
    Py_VISIT(a->server);
    Py_VISIT(a->kind);
    Py_VISIT(a->plain);
    Py_VISIT(a->nodelay);
    Py_VISIT(a->waiting);
    Py_VISIT(a->stopped);
    Py_VISIT(a->ud);
    Py_VISIT(a->ctx);
    Py_VISIT(a->bound);
    return 0;
}

static int AcceptorCore_clear(AcceptorCore *a)
{
    Py_CLEAR(a->loop);
    Py_CLEAR(a->protocol_factory);
    Py_CLEAR(a->sslcontext);
    Py_CLEAR(a->server);
    Py_CLEAR(a->kind);
    Py_CLEAR(a->plain);
    Py_CLEAR(a->nodelay);
    Py_CLEAR(a->waiting);
    Py_CLEAR(a->stopped);
    Py_CLEAR(a->ud);
    Py_CLEAR(a->ctx);
    Py_CLEAR(a->bound);
    return 0;
}

static void AcceptorCore_dealloc(AcceptorCore *a)
{
    PyObject_GC_UnTrack(a);
    AcceptorCore_clear(a);
    Py_TYPE(a)->tp_free((PyObject *)a);
}

/* self(res, more, data): ctx.run(self._on_accept, res, more, data), with
 * the bound method and the context made at __init__ */
static PyObject *AcceptorCore_call(AcceptorCore *a, PyObject *args, PyObject *kw)
{
    if (a->ctx == NULL || a->bound == NULL) {
        PyErr_SetString(PyExc_AttributeError, "the Acceptor has no _ctx or _bound");
        return NULL;
    }
    PyObject *ctx = Py_NewRef(a->ctx), *fn = Py_NewRef(a->bound), *r = NULL;
    if (PyContext_Enter(ctx) == 0) {
        r = PyObject_Call(fn, args, kw);
        if (PyContext_Exit(ctx) < 0)
            Py_CLEAR(r);
    }
    Py_DECREF(fn);
    Py_DECREF(ctx);
    return r;
}

/* _on_accept's except clauses, for the plain case in C: the fd closed
 * (the transport was not made), then SystemExit and KeyboardInterrupt go
 * on, anything else to _creation_failed(exc, protocol), each with exc as
 * the exception being handled (sys.exc_info(), the __context__ of one
 * raised meanwhile), as Python's except clause has it. 0 or -1. */
static int accept_failed(AcceptorCore *a, int fd, PyObject *protocol)
{
    PyObject *exc = take_exception();
    if (exc == NULL) {
        PyErr_SetString(PyExc_SystemError, "accept_failed with no exception");
        return -1;
    }
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *handled = PyErr_GetHandledException();
    PyErr_SetHandledException(exc);
#else
    PyObject *ht, *hv, *htb;
    PyErr_GetExcInfo(&ht, &hv, &htb);
    PyErr_SetExcInfo(Py_NewRef((PyObject *)Py_TYPE(exc)), Py_NewRef(exc),
                     PyException_GetTraceback(exc));
#endif
    int rc = 0;
    if (close(fd) < 0) {
        PyErr_SetFromErrno(PyExc_OSError); /* (os.close's error; exc its __context__) */
        rc = -1;
    } else if (PyErr_GivenExceptionMatches(exc, PyExc_SystemExit) ||
               PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt)) {
        rc = 1;
    } else {
        PyObject *argv[3] = {(PyObject *)a, exc, protocol != NULL ? protocol : Py_None};
        PyObject *r = PyObject_VectorcallMethod(aco.s_creation_failed, argv,
                                                3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        rc = r == NULL ? -1 : 0;
        Py_XDECREF(r);
    }
#if PY_VERSION_HEX >= 0x030B0000
    PyErr_SetHandledException(handled);
    Py_XDECREF(handled);
#else
    PyErr_SetExcInfo(ht, hv, htb);
#endif
    if (rc == 1) {
        give_exception(exc); /* raise */
        return -1;
    }
    Py_DECREF(exc);
    return rc;
}

/* fd in loop._transports.data, or an open stream transport registered for
 * it (_on_accept's test before _ensure_fd_no_transport): 1, 0 or -1 */
static int accept_fd_taken(Core *loop, int fd)
{
    PyObject *tr = loop->transports;
    if (tr == NULL) {
        PyErr_SetString(PyExc_AttributeError, "'Loop' object has no attribute '_transports'");
        return -1;
    }
    PyObject *data = PyObject_GetAttr(tr, s_data);
    if (data == NULL)
        return -1;
    int in = 0;
    if (!PyDict_CheckExact(data) || PyDict_GET_SIZE(data) > 0) {
        PyObject *key = PyLong_FromLong(fd);
        in = key == NULL ? -1 : PySequence_Contains(data, key);
        Py_XDECREF(key);
    }
    Py_DECREF(data);
    if (in != 0)
        return in;
    if (fd >= 0 && fd < fd_streams_cap && fd_streams[fd] != NULL &&
        (PyObject *)fd_streams[fd]->loop == (PyObject *)loop && fd_streams[fd]->transport != NULL) {
        PyObject *t = Py_NewRef(fd_streams[fd]->transport);
        PyObject *v = PyObject_CallMethodNoArgs(t, aco.s_is_closing);
        Py_DECREF(t);
        if (v == NULL)
            return -1;
        int closing = PyObject_IsTrue(v);
        Py_DECREF(v);
        return closing < 0 ? -1 : !closing;
    }
    return 0;
}

/* An accept record of an exact Acceptor whose _bound is stream.py's
 * _on_accept: the plain case (a connection made now, more records to
 * come) in C, the same steps in the same order (_on_accept's first
 * branch and _connection's first case, decision 753): the turn's budget,
 * protocol_factory() in a copy of the context (879), the fd check,
 * accepted_make. 1 taken,
 * -1 taken with an exception, 0 for the call (everything else: stopped,
 * waiting or over the budget, the last record, an error, TLS, debug, a
 * listener that is not plain, a Loop subclass, a patched _on_accept or
 * _ACCEPT_BUDGET that is not an int): nothing is changed before that
 * answer. */
static int accept_record(PyObject *owner, int32_t res, int more)
{
    AcceptorCore *a = (AcceptorCore *)owner;
    if (res < 0 || !more || a->bound == NULL || !PyMethod_Check(a->bound) ||
        PyMethod_GET_FUNCTION(a->bound) != aco.on_accept || PyMethod_GET_SELF(a->bound) != owner ||
        a->stopped != Py_False || a->loop == NULL || !Py_IS_TYPE(a->loop, aco.loop_cls) ||
        a->waiting != Py_None || a->plain != Py_True || a->sslcontext != Py_None ||
        a->protocol_factory == NULL || a->kind == NULL || a->server == NULL ||
        a->nodelay == NULL || a->ctx == NULL)
        return 0;
    Core *loop = (Core *)a->loop;
    if (loop->debug != Py_False)
        return 0;
    PyObject *budget = PyDict_GetItemWithError(aco.globals, aco.s_budget);
    if (budget == NULL || !PyLong_CheckExact(budget)) {
        PyErr_Clear();
        return 0;
    }
    long long cap = PyLong_AsLongLong(budget);
    if (cap == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    long long turn = (long long)loop->turns;
    Py_ssize_t made = turn != a->turn ? 0 : a->made;
    if (made >= cap)
        return 0;
    /* the connection's own copy of the Acceptor's context, as stock's accept
     * task copies its reader's (decision 879): what the factory sets is
     * its connection's only; the transport keeps this copy (accepted_make) */
    PyObject *ctx = PyContext_Copy(a->ctx);
    if (ctx == NULL || PyContext_Enter(ctx) < 0) {
        /* (no memory for the copy): the record is taken, its fd closed, as
         * _on_accept's failures close theirs */
        Py_XDECREF(ctx);
        close(res);
        return -1;
    }
    Py_INCREF(a);
    Py_INCREF(loop);
    a->turn = turn;
    a->made = made + 1;
    PyObject *protocol = NULL, *transport = NULL;
    PyObject *factory = Py_NewRef(a->protocol_factory);
    protocol = PyObject_CallNoArgs(factory);
    Py_DECREF(factory);
    int rc = 0;
    if (protocol == NULL) {
        rc = -1;
    } else {
        int taken = accept_fd_taken(loop, res);
        if (taken > 0) {
            PyObject *key = PyLong_FromLong(res);
            PyObject *v = key ? PyObject_CallMethodOneArg((PyObject *)loop, aco.s_ensure, key) : NULL;
            Py_XDECREF(key);
            taken = v == NULL ? -1 : 0;
            Py_XDECREF(v);
        }
        if (taken < 0) {
            rc = -1;
        } else if (a->kind == NULL || a->server == NULL || a->nodelay == NULL) {
            /* (the factory deleted them: Python's AttributeError) */
            PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                         Py_TYPE(a)->tp_name,
                         a->kind == NULL ? "kind" : a->server == NULL ? "server" : "nodelay");
            rc = -1;
        } else {
            PyObject *kind = Py_NewRef(a->kind), *server = Py_NewRef(a->server),
                     *nodelay = Py_NewRef(a->nodelay);
            transport = accepted_make((PyObject *)loop, res, kind, protocol, server, nodelay,
                                      Py_NewRef(ctx));
            Py_DECREF(kind);
            Py_DECREF(server);
            Py_DECREF(nodelay);
            rc = transport == NULL ? -1 : 0;
        }
    }
    if (rc < 0)
        rc = accept_failed(a, res, protocol);
    Py_XDECREF(transport);
    Py_XDECREF(protocol);
    if (PyContext_Exit(ctx) < 0)
        rc = -1;
    Py_DECREF(ctx);
    Py_DECREF(loop);
    Py_DECREF(a);
    return rc < 0 ? -1 : 1;
}

/* acceptor_setup(Acceptor, Acceptor._on_accept, Loop, stream.py's globals) */
static PyObject *acceptor_setup(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 4 || !PyType_Check(args[0]) ||
        !PyType_IsSubtype((PyTypeObject *)args[0], &AcceptorCoreType) ||
        !PyFunction_Check(args[1]) || !PyType_Check(args[2]) ||
        !PyType_IsSubtype((PyTypeObject *)args[2], &CoreType) || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "acceptor_setup(cls, on_accept, loop_cls, globals)");
        return NULL;
    }
#define ACO_INTERN(v, s) \
    if (aco.v == NULL && (aco.v = PyUnicode_InternFromString(s)) == NULL) \
        return NULL;
    ACO_INTERN(s_budget, "_ACCEPT_BUDGET");
    ACO_INTERN(s_is_closing, "is_closing");
    ACO_INTERN(s_ensure, "_ensure_fd_no_transport");
    ACO_INTERN(s_creation_failed, "_creation_failed");
#undef ACO_INTERN
    Py_XSETREF(aco.cls, (PyTypeObject *)Py_NewRef(args[0]));
    aco_cls = aco.cls;
    Py_XSETREF(aco.on_accept, Py_NewRef(args[1]));
    Py_XSETREF(aco.loop_cls, (PyTypeObject *)Py_NewRef(args[2]));
    Py_XSETREF(aco.globals, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

#define ACO_MEMBER(name, field) \
    {name, Py_T_OBJECT_EX, offsetof(AcceptorCore, field), 0, NULL}
static PyMemberDef AcceptorCore_members[] = {
    ACO_MEMBER("loop", loop),
    ACO_MEMBER("protocol_factory", protocol_factory),
    ACO_MEMBER("sslcontext", sslcontext),
    ACO_MEMBER("server", server),
    ACO_MEMBER("kind", kind),
    ACO_MEMBER("plain", plain),
    ACO_MEMBER("nodelay", nodelay),
    ACO_MEMBER("waiting", waiting),
    ACO_MEMBER("stopped", stopped),
    ACO_MEMBER("ud", ud),
    ACO_MEMBER("_ctx", ctx),
    ACO_MEMBER("_bound", bound),
    {"turn", T_LONGLONG, offsetof(AcceptorCore, turn), 0, NULL},
    {"made", T_PYSSIZET, offsetof(AcceptorCore, made), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};
#undef ACO_MEMBER

static PyTypeObject AcceptorCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringloop._sched.AcceptorCore",
    .tp_basicsize = sizeof(AcceptorCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "the Acceptor's per-turn state and the fields its accept records read in C",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)AcceptorCore_dealloc,
    .tp_traverse = (traverseproc)AcceptorCore_traverse,
    .tp_clear = (inquiry)AcceptorCore_clear,
    .tp_call = (ternaryfunc)AcceptorCore_call,
    .tp_members = AcceptorCore_members,
};

/* close_setup(close, _Kind, _ignore, _INET, _on_recv, socket.socket): what
 * stream_close_fast, stream_closing_final and the C _call_connection_lost
 * need */
static PyObject *close_setup(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 6 || !PyType_Check(args[1]) || !PyTuple_CheckExact(args[3]) ||
        !PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError,
                        "close_setup(close, kind_type, ignore, inet, on_recv, socket_type)");
        return NULL;
    }
    Py_XSETREF(acc.close, Py_NewRef(args[0]));
    Py_XSETREF(acc.kind_type, Py_NewRef(args[1]));
    Py_XSETREF(acc.ignore, Py_NewRef(args[2]));
    Py_XSETREF(acc.inet, Py_NewRef(args[3]));
    Py_XSETREF(acc.on_recv, Py_NewRef(args[4]));
    Py_XSETREF(acc.socket_type, Py_NewRef(args[5]));
    Py_RETURN_NONE;
}

/* t.<name> is falsy (1), truthy (0), or -1 */
static int attr_false(PyObject *t, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(t, name);
    if (v == NULL)
        return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r < 0 ? -1 : !r;
}

/* t.<name> is None (1), not (0), or -1 */
static int attr_none(PyObject *t, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(t, name);
    if (v == NULL)
        return -1;
    Py_DECREF(v);
    return v == Py_None;
}

/* The transport's close() for an exact SocketTransport whose class keeps
 * stream.py's close: the case close() writes out for an accepted connection
 * (decision 708) in C, with no Python frame, at its EOF (stream_eof,
 * decision 812) and as the class's close (the core method, decision 820).
 * close() there: not closing; nothing held back (c.hold); no send in
 * flight; nothing fed in part or held (c.idle 2 once the queue is out); no
 * deferred resume (_resume_h); the socket a _Kind (its object never made),
 * not _fd_closing, nothing _unread, no _held records, the engine open
 * (engine._e); bytes queued (decision 820) only as bytes or bytearrays, at
 * most CLOSE_IOV chunks, with the protocol not paused; a receive alive only
 * when engine.cancel is the loop's table's (no Python code may change the
 * queue before its send). Those are all reads
 * with no side effect, made first here; then close()'s steps in its order
 * (a read that raises leaves it to close(), which raises it after the steps
 * it takes before that read): _closing; the receive cancelled
 * (engine.cancel(recv_ud), _stop_reading's); the fast paths off (_sync);
 * the queue sent at once, as close()'s _send_now(pause=False) (one
 * non-blocking send; an error is _fatal_error's with the queue as it was,
 * and close() ends there; what the kernel leaves stays queued, for the
 * turn's flush, and _on_sent closes when it has gone); then, nothing left,
 * _conn_lost += 1, _fd_closing, loop.call_soon(_call_connection_lost,
 * None, context=), _sockobj the kind's closed socket,
 * engine.close_fd(fd, _ignore, inet), _close_reset (engine.cancel and
 * engine.close_fd, when they are the loop's table's bound methods, as that
 * table's steps with no call: decision 1010). 1: closed here (or
 * closing behind the rest of the queue); 0: anything else, for the
 * transport's close(); -1: an error (raised where close() would have
 * raised it). */
#define CLOSE_IOV 16

static int stream_close_fast(Stream *s, PyObject *t)
{
    if (acc.close == NULL || Py_TYPE(t) != acc.cls || s->transport != t ||
        _PyType_Lookup(acc.cls, s_close) != acc.close || ASLOT(t, A_CLOSING) != Py_False ||
        s->hold != 0 || s->sending != 0 || s->feed_rest ||
        (s->held != NULL && s->held->n > 0))
        return 0;
    PyObject *q = s->buffer;
    Py_ssize_t n = 0; /* chunks queued */
    if (q != NULL) {
        if (PyBytes_CheckExact(q))
            n = 1;
        else if (PyList_CheckExact(q))
            n = PyList_GET_SIZE(q);
        else
            return 0; /* (not a list: close() decides) */
    }
    if (n > 0) {
        /* close() sends them at once, unless the protocol is paused (its
         * resume may write more, decision 533) */
        if (n > CLOSE_IOV || s->wpaused || ASLOT(t, A_PPAUSED) != Py_False)
            return 0;
        for (Py_ssize_t i = 0; q != NULL && PyList_CheckExact(q) && i < n; i++) {
            PyObject *b = PyList_GET_ITEM(q, i);
            if (!PyBytes_CheckExact(b) && !PyByteArray_CheckExact(b))
                return 0;
        }
    }
    PyObject *kind = ASLOT(t, A_SOCKOBJ), *engine = ASLOT(t, A_ENGINE);
    PyObject *loop = ASLOT(t, A_LOOP), *ctx = s->ctx;
    if (kind == NULL || !Py_IS_TYPE(kind, (PyTypeObject *)acc.kind_type) || engine == NULL ||
        loop == NULL || ctx == NULL)
        return 0;
    int ok;
    if (s->fdclosing) /* (_fd_closing: the property's, decision 1002) */
        return 0;
    if ((ok = attr_none(t, s_resume_h)) <= 0 ||
        (ok = attr_false(t, s_unread)) <= 0 || (ok = attr_none(t, s_held)) <= 0 ||
        (ok = attr_none(engine, s_e)) != 0) {
        /* (a read that raised: close() meets it again, after its own steps) */
        if (ok < 0)
            PyErr_Clear();
        return 0;
    }
    PyObject *cancel = NULL;
    if (s->recv_ud != 0) {
        /* close()'s engine.cancel(ud), only when it is the loop's table's
         * own (Engine binds it so, unless a subclass overrides it): no
         * Python code runs between these reads and the send */
        if ((cancel = PyObject_GetAttr(engine, S.s_cancel)) == NULL) {
            PyErr_Clear();
            return 0;
        }
        if (!PyCFunction_Check(cancel) ||
            PyCFunction_GET_FUNCTION(cancel) != (PyCFunction)Table_cancel ||
            PyCFunction_GET_SELF(cancel) != (PyObject *)s->loop->table) {
            Py_DECREF(cancel);
            return 0;
        }
    }
    /* close()'s steps */
    Py_INCREF(kind);
    Py_INCREF(engine);
    Py_INCREF(loop);
    Py_INCREF(ctx);
    Py_INCREF(s);
    int rc = -1;
    PyObject *v, *w;
    aset(t, A_CLOSING, Py_NewRef(Py_True));
    if (cancel != NULL) { /* _stop_reading: the engine is open (engine._e) */
        Table *tb = s->loop->table; /* (cancel is its bound Table_cancel) */
        if (tb->engine != NULL) {
            /* Table_cancel(ud)'s steps, the ud a C value (decision 1010) */
            if (tb->cancel(tb->engine, s->recv_ud) == -EEXIST) {
                Py_XDECREF(foreign_thread_error());
                goto out;
            }
            shortcut_n.cancel++;
        } else {
            if ((v = PyLong_FromUnsignedLongLong(s->recv_ud)) == NULL)
                goto out;
            w = PyObject_CallOneArg(cancel, v);
            Py_DECREF(v);
            if (w == NULL)
                goto out;
            Py_DECREF(w);
        }
    }
    s->rfast = s->wfast = 0; /* _sync: closing */
    if (n > 0) {
        /* _send_now(pause=False): what the kernel takes leaves now */
        q = stream_queue_list(s);
        if (q == NULL)
            goto out;
        Py_INCREF(q);
        struct iovec iov[CLOSE_IOV];
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *b = PyList_GET_ITEM(q, i);
            if (PyBytes_CheckExact(b)) {
                iov[i].iov_base = PyBytes_AS_STRING(b);
                iov[i].iov_len = (size_t)PyBytes_GET_SIZE(b);
            } else {
                iov[i].iov_base = PyByteArray_AS_STRING(b);
                iov[i].iov_len = (size_t)PyByteArray_GET_SIZE(b);
            }
        }
        Py_ssize_t k = stream_send_once(s, iov, n);
        if (k < 0) {
            /* _send_now's error: _fatal_error with the queue as it was, and
             * close() ends */
            Py_DECREF(q);
            PyObject *exc = take_exception();
            PyObject *args[2] = {exc, m_write_failed};
            w = stream_call(s, s_fatal_error, args, 2, 0);
            Py_DECREF(exc);
            if (w != NULL) {
                Py_DECREF(w);
                rc = 1;
            }
            goto out;
        }
        /* drop what left; the rest, as bytes (the first cut), stays queued */
        Py_ssize_t left = k, i = 0;
        while (i < n && left >= (Py_ssize_t)iov[i].iov_len)
            left -= (Py_ssize_t)iov[i++].iov_len;
        for (Py_ssize_t j = i; j < n; j++) {
            PyObject *b = PyList_GET_ITEM(q, j);
            Py_ssize_t cut = j == i ? left : 0;
            if (cut == 0 && PyBytes_CheckExact(b))
                continue;
            PyObject *rest = PyBytes_FromStringAndSize((char *)iov[j].iov_base + cut,
                                                       (Py_ssize_t)iov[j].iov_len - cut);
            if (rest == NULL) {
                Py_DECREF(q);
                goto out;
            }
            PyList_SetItem(q, j, rest); /* steals rest, drops b */
        }
        if (i < n) {
            /* the rest leaves at the turn's flush (the Stream is on the
             * dirty list since its write), and _on_sent closes */
            int cut = i > 0 ? PyList_SetSlice(q, 0, i, NULL) : 0;
            Py_DECREF(q);
            if (cut == 0)
                rc = 1;
            goto out;
        }
        Py_DECREF(q);
        Py_CLEAR(s->buffer); /* (close()'s `c.buffer = []`) */
    }
    /* _conn_lost += 1, _fd_closing: the Stream's (decision 1002) */
    if (s->conn_lost < UINT32_MAX)
        s->conn_lost++;
    s->fdclosing = 1;
    if ((v = PyObject_GetAttr(t, s_call_connection_lost)) == NULL)
        goto out;
    w = loop_call_soon(loop, v, Py_None, ctx);
    Py_DECREF(v);
    if (w == NULL)
        goto out;
    Py_DECREF(w);
    if ((v = PyObject_GetAttr(kind, s_closed)) == NULL)
        goto out;
    aset(t, A_SOCKOBJ, v);
    if ((v = PyObject_GetAttr(kind, s_family)) == NULL)
        goto out;
    int inet = PySequence_Contains(acc.inet, v);
    Py_DECREF(v);
    if (inet < 0 || (v = PyObject_GetAttr(engine, s_close_fd)) == NULL)
        goto out;
    /* held until _call_connection_lost (decision 873) */
    Table *tb = s->loop->table;
    if (PyCFunction_Check(v) &&
        PyCFunction_GET_FUNCTION(v) == (PyCFunction)(void (*)(void))Table_close_fd &&
        PyCFunction_GET_SELF(v) == (PyObject *)tb && tb->engine != NULL &&
        PyCallable_Check(acc.ignore)) {
        /* engine.close_fd is the loop's table's (Engine binds it so):
         * Table_close_fd's steps, nothing to parse, the user_data kept as
         * the C value it is (decision 1010) */
        Py_DECREF(v);
        uint64_t cud = table_take(tb, acc.ignore, NULL, 0);
        if (cud == 0)
            goto out;
        int r = tb->close_fd(tb->engine, cud, s->fd, (inet ? 1 : 0) | 2);
        if (r < 0) {
            Py_XDECREF(table_refused(tb, cud, r));
            goto out;
        }
        s->close_ud = cud;
        s->chold = 1;
        /* _close_reset = the ud (never 0) where inet: the Stream's bit (1002) */
        s->creset = inet != 0;
        shortcut_n.close_fd++;
        rc = 1;
        goto out;
    }
    PyObject *fdo = PyLong_FromLong(s->fd);
    if (fdo == NULL) {
        Py_DECREF(v);
        goto out;
    }
    PyObject *cargv[4] = {fdo, acc.ignore, inet ? Py_True : Py_False, Py_True};
    w = PyObject_Vectorcall(v, cargv, 4, NULL);
    Py_DECREF(v);
    Py_DECREF(fdo);
    if (w == NULL)
        goto out;
    if (PyLong_CheckExact(w)) { /* the close's user_data, for the release */
        unsigned long long ud = PyLong_AsUnsignedLongLong(w);
        if (ud == (unsigned long long)-1 && PyErr_Occurred()) {
            Py_DECREF(w);
            goto out;
        }
        s->close_ud = ud;
        s->chold = ud != 0;
        /* _close_reset = ud where inet (decision 1002: the Stream's bit) */
        s->creset = inet && ud != 0;
    }
    Py_DECREF(w);
    rc = 1;
out:
    Py_XDECREF(cancel);
    Py_DECREF(s);
    Py_DECREF(kind);
    Py_DECREF(engine);
    Py_DECREF(loop);
    Py_DECREF(ctx);
    return rc;
}

/* stream_for_fd(loop, fd): the stream transport of loop registered for fd
 * (alive: see fd_streams), or None */
static PyObject *stream_for_fd(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "stream_for_fd(loop, fd)");
        return NULL;
    }
    long fd = PyLong_AsLong(args[1]);
    if (fd == -1 && PyErr_Occurred())
        return NULL;
    if (fd >= 0 && fd < fd_streams_cap && fd_streams[fd] != NULL &&
        (PyObject *)fd_streams[fd]->loop == args[0] && fd_streams[fd]->transport != NULL)
        return Py_NewRef(fd_streams[fd]->transport);
    Py_RETURN_NONE;
}

/* ignore(res, more, data): an op's records no one needs (a close_fd's, a
 * shutdown's), dropped with no Python frame (decision 622) */
static PyObject *ignore_records(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    (void)args;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "ignore(res, more, data)");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef stream_functions[] = {
    {"ignore", (PyCFunction)(void (*)(void))ignore_records, METH_FASTCALL,
     "ignore(res, more, data): a completion callback that does nothing"},
    {"stream_for_fd", (PyCFunction)(void (*)(void))stream_for_fd, METH_FASTCALL,
     "stream_for_fd(loop, fd): the stream transport registered for fd, or None"},
    {"stream_reader_stock", (PyCFunction)(void (*)(void))stream_reader_stock, METH_FASTCALL,
     "stream_reader_stock(...): asyncio's stock stream objects (decision 636), or None"},
    {"acceptor_setup", (PyCFunction)(void (*)(void))acceptor_setup, METH_FASTCALL,
     "acceptor_setup(cls, on_accept, loop_cls, globals): the Acceptor's records in C"},
    {"core_method", (PyCFunction)(void (*)(void))core_method, METH_FASTCALL,
     "core_method(slot, name): a transport method that is its Stream's"},
    {"accepted_setup", (PyCFunction)(void (*)(void))accepted_setup, METH_FASTCALL,
     "accepted_setup(...): what accepted_transport needs of stream.py (decision 811)"},
    {"close_setup", (PyCFunction)(void (*)(void))close_setup, METH_FASTCALL,
     "close_setup(close, kind_type, ignore, inet, on_recv, socket_type): for the C close "
     "(decisions 812, 820) and connection_lost (833, 834)"},
    {"server_setup", (PyCFunction)(void (*)(void))server_setup, METH_FASTCALL,
     "server_setup(Server, attach, detach, WeakSet, add, discard, len): the stock Server's "
     "_attach/_detach in C (decision 861)"},
    {"shortcut_counts", (PyCFunction)shortcut_counts, METH_NOARGS,
     "shortcut_counts(): how often each C shortcut of decisions 1009-1010 was taken"},
    {"accepted_transport", (PyCFunction)(void (*)(void))accepted_transport, METH_FASTCALL,
     "accepted_transport(loop, fd, kind, protocol, server, nodelay): an accepted "
     "connection's SocketTransport (decision 811)"},
    {NULL, NULL, 0, NULL},
};

/* An empty list with its storage kept, to be the next flush's fresh dirty
 * list: a list made and freed per turn cost about 250 instructions a turn
 * (decision 262). One for the process; a flush that finds it taken (another
 * loop's flush, entered while Python code ran) makes a new one. */
static PyObject *spare_dirty;

/* The loop's _flush_dirty in C: every transport written to since the last
 * flush hands its queue to the engine (a Stream in C, others by _flush()); an
 * exception is that transport's fatal write error. 0 or -1. */
static int stream_flush_dirty(Core *self)
{
    PyObject *dirty = self->dirty;
    PyObject *fresh = spare_dirty;
    spare_dirty = NULL;
    if (fresh == NULL && (fresh = PyList_New(0)) == NULL)
        return -1;
    self->dirty = fresh; /* the old list is ours now */
    int rc = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dirty); i++) {
        PyObject *item = Py_NewRef(PyList_GET_ITEM(dirty, i));
        PyObject *r = Py_IS_TYPE(item, &StreamType) ? Stream_flush((Stream *)item, NULL)
                                                     : PyObject_CallMethodNoArgs(item, s_flush);
        if (r == NULL) {
            if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
                PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
                Py_DECREF(item);
                rc = -1;
                break;
            }
            PyObject *exc = take_exception();
            r = PyObject_CallMethodObjArgs(item, s_fatal_error, exc, m_write_failed, NULL);
            Py_DECREF(exc);
            if (r == NULL) {
                Py_DECREF(item);
                rc = -1;
                break;
            }
        }
        Py_DECREF(r);
        Py_DECREF(item);
    }
    if (Py_REFCNT(dirty) == 1 && PyList_CheckExact(dirty) && spare_dirty == NULL) {
        stream_dirty_clear(dirty); /* ours alone: nothing else can reach it */
        if (spare_dirty == NULL) {
            spare_dirty = dirty; /* our one reference moves there */
            return rc;
        }
    }
    Py_DECREF(dirty);
    return rc;
}

static int stream_init_module(PyObject *m)
{
#define STREAM_INTERN(var, text) \
    if (!(var = PyUnicode_InternFromString(text))) return -1
    STREAM_INTERN(s_on_recv, "_on_recv");
    STREAM_INTERN(s_write_slow, "_write_slow");
    STREAM_INTERN(s_writelines_slow, "_writelines_slow");
    STREAM_INTERN(s_flush_slow, "_flush_slow");
    STREAM_INTERN(s_on_sent, "_on_sent");
    STREAM_INTERN(s_after_sent, "_after_sent");
    STREAM_INTERN(s_feed_buffer, "_feed_buffer");
    STREAM_INTERN(s_fatal_error, "_fatal_error");
    STREAM_INTERN(s_maybe_pause, "_maybe_pause_protocol");
    STREAM_INTERN(s_maybe_resume, "_maybe_resume_protocol");
    STREAM_INTERN(s_resume_behind, "_resume_behind");
    STREAM_INTERN(s_send_now, "_send_now");
    STREAM_INTERN(s_flush, "_flush");
    STREAM_INTERN(s_send_now_tail, "_send_now_tail");
    STREAM_INTERN(s_call_soon, "call_soon");
    STREAM_INTERN(s_drain, "_drain");
    STREAM_INTERN(s_start_reading, "_start_reading");
    STREAM_INTERN(s_eof_text, "eof");
    STREAM_INTERN(s_eof_received, "eof_received");
    STREAM_INTERN(s_eof_done, "_eof_done");
    STREAM_INTERN(s_close, "close");
    STREAM_INTERN(s_closing, "_closing");
    STREAM_INTERN(s_protocol, "_protocol");
    STREAM_INTERN(s_buffer_updated, "buffer_updated");
    STREAM_INTERN(s_get_buffer, "get_buffer");
    STREAM_INTERN(s_data_received, "data_received");
    STREAM_INTERN(s_stream_reader, "_stream_reader");
    STREAM_INTERN(s_feed_data, "feed_data");
    STREAM_INTERN(s_wakeup_waiter, "_wakeup_waiter");
    STREAM_INTERN(s_stream_reader_wr, "_stream_reader_wr");
    STREAM_INTERN(s_eof, "_eof");
    STREAM_INTERN(s_rbuffer, "_buffer");
    STREAM_INTERN(s_waiter, "_waiter");
    STREAM_INTERN(s_transport, "_transport");
    STREAM_INTERN(s_paused, "_paused");
    STREAM_INTERN(s_limit, "_limit");
    STREAM_INTERN(s_pause_reading, "pause_reading");
    STREAM_INTERN(s_cancelled, "cancelled");
    STREAM_INTERN(s_set_result, "set_result");
    STREAM_INTERN(s_engine, "_engine");
    STREAM_INTERN(s_backend, "backend");
    STREAM_INTERN(s_epoll, "epoll");
    STREAM_INTERN(s_attach, "_attach");
    STREAM_INTERN(s_connection_made, "connection_made");
    STREAM_INTERN(s_start_reading_c, "start_reading");
    STREAM_INTERN(s_dunder_class, "__class__");
    if (strcmp(Stream_methods[STREAM_START_READING].ml_name, "start_reading") != 0) {
        PyErr_SetString(PyExc_SystemError, "Stream_methods: STREAM_START_READING moved");
        return -1;
    }
    STREAM_INTERN(s_resume_h, "_resume_h");
    STREAM_INTERN(s_unread, "_unread");
    STREAM_INTERN(s_held, "_held");
    STREAM_INTERN(s_e, "_e");
    STREAM_INTERN(s_call_connection_lost, "_call_connection_lost");
    STREAM_INTERN(s_closed, "closed");
    STREAM_INTERN(s_family, "family");
    STREAM_INTERN(s_close_fd, "close_fd");
    STREAM_INTERN(s_connection_lost, "connection_lost");
    STREAM_INTERN(s_protocol_connected, "_protocol_connected");
    STREAM_INTERN(s_empty_waiter, "_empty_waiter");
    STREAM_INTERN(s_sock_closed, "_closed");
    STREAM_INTERN(s_fileno, "fileno");
    STREAM_INTERN(s_detach, "_detach");
    STREAM_INTERN(s_set_exception, "set_exception");
    STREAM_INTERN(s_lost, "lost");
    STREAM_INTERN(s_sockets, "_sockets");
    STREAM_INTERN(s_active_count, "_active_count");
    STREAM_INTERN(s_wakeup, "_wakeup");
    STREAM_INTERN(s_clients, "_clients");
    STREAM_INTERN(s_pending_removals, "_pending_removals");
    STREAM_INTERN(s_data, "data");
    STREAM_INTERN(s_remove, "_remove");
    STREAM_INTERN(s_add, "add");
    STREAM_INTERN(s_discard, "discard");
    STREAM_INTERN(s_dunder_len, "__len__");
    STREAM_INTERN(m_closed_by_peer, "Connection is closed by peer");
    if (!(sr_one = PyLong_FromLong(1)))
        return -1;
    if (!(sr_two = PyLong_FromLong(2)))
        return -1;
    if (!(sr_zero = PyLong_FromLong(0)))
        return -1;
    STREAM_INTERN(m_data_failed, "Fatal error: protocol.data_received() call failed.");
    STREAM_INTERN(m_get_buffer_failed, "Fatal error: protocol.get_buffer() call failed.");
    STREAM_INTERN(m_updated_failed, "Fatal error: protocol.buffer_updated() call failed.");
    STREAM_INTERN(m_write_failed, "Fatal write error on socket transport");
#undef STREAM_INTERN
    PyObject *context = PyUnicode_InternFromString("context");
    if (context == NULL || !(kw_context = PyTuple_Pack(1, context))) {
        Py_XDECREF(context);
        return -1;
    }
    Py_DECREF(context);
    if (PyType_Ready(&StreamType) < 0 || PyType_Ready(&CoreMethodType) < 0 ||
        PyModule_AddFunctions(m, stream_functions) < 0)
        return -1;
    if (PyType_Ready(&AcceptorCoreType) < 0 ||
        PyModule_AddObject(m, "AcceptorCore", Py_NewRef((PyObject *)&AcceptorCoreType)) < 0)
        return -1;
    if (PyModule_AddObject(m, "Stream", Py_NewRef((PyObject *)&StreamType)) < 0) {
        Py_DECREF((PyObject *)&StreamType);
        return -1;
    }
    return 0;
}
