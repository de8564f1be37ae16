/* The datagram transport's hot half (uringloop/transports/datagram.py).
 *
 * One Dgram object per transport does two things without a Python frame of
 * ours, and hands everything else to the transport's Python methods, which
 * remain the definition of the behaviour (the stock selector transport's):
 *
 *  - receive: it is the owner of the transport's pool receive in the engine
 *    table. The table calls it with (res, more, (payload, address)) for every
 *    record; while the transport is plainly reading (`recv_fast`, kept by
 *    the transport: pool receive, not paused, not closing, nothing held) and
 *    the loop's ready queue is empty (a datagram must not overtake callbacks
 *    already due, as the stock reader handle would not; for the endpoint's
 *    first record of a batch, empty at the poll: decision 454), it calls
 *    protocol.datagram_received(payload, address) in the transport's context.
 *    Any other record goes to `slow` (the Python _on_recv, in the context).
 *    What the protocol raises goes to transport._protocol_raised (reported
 *    as the stock loop reports a raising reader handle; reading goes on).
 *
 *  - send: `sendto(data, addr=None)`, the transport class's sendto (a C
 *    method over the transport's _dg slot, decision 315). With nothing
 *    queued and the fd open (`send_fast`), bytes-like data and an address
 *    it can convert (the connected peer, or a numeric IPv4/IPv6 tuple: the
 *    socket module's own inet_pton path) it makes the syscall the stock
 *    transport makes (send or sendto, once, non-blocking). A failed syscall
 *    goes to transport._sendto_failed(data, addr, exc) (the stock except
 *    branches: EAGAIN queues, an OSError goes to error_received); anything
 *    else, including keyword arguments, to transport._sendto_py (the Python
 *    sendto, the stock one).
 *
 * The last address converted is kept (by identity), and a datagram handed
 * to datagram_received leaves its sender's tuple and sockaddr there as if
 * converted (decision 317): a server answering the address it was given
 * converts nothing.
 */

#include "dgram.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <structmember.h>

#ifndef Py_T_INT
#define Py_T_INT T_INT
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

#if PY_VERSION_HEX < 0x030C0000
static PyObject *PyErr_GetRaisedException(void)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    if (type == NULL)
        return NULL;
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL)
        PyException_SetTraceback(exc, tb);
    Py_DECREF(type);
    Py_XDECREF(tb);
    return exc;
}

static void PyErr_SetRaisedException(PyObject *exc)
{
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
}
#endif

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *transport;
    PyObject *protocol;
    PyObject *context;
    PyObject *ready;       /* the loop's _ready deque */
    PyObject *slow;        /* slow(res, more, data): every record recv_fast does not take */
    PyObject *sock;        /* the socket object (for the audit event) */
    PyObject *buffer;      /* the transport's send queue (a deque, never replaced) */
    PyObject *address;     /* the transport's _address: None, or the one allowed */
    PyObject *last_addr;   /* the address last_sa was made from */
    int fd, family, connected;
    int recv_fast, send_fast;
    unsigned int seq; /* the last batch a record came in (decision 454) */
    socklen_t last_len;
    struct sockaddr_in6 last_sa; /* big enough for AF_INET too */
} Dgram;

static PyObject *s_datagram_received, *s_protocol_raised, *s_sendto_py, *s_sendto_failed,
    *s_hold_rest;
static PyTypeObject *deque_type; /* collections.deque: its length is Py_SIZE */
static PyTypeObject DgramType;

static PyObject *Dgram_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames);

/* Dgram(transport, protocol, context, ready, slow, sock, buffer, address,
 *       fd, family, connected) */
static PyObject *Dgram_new(PyTypeObject *tp, PyObject *args, PyObject *kwds)
{
    (void)kwds;
    PyObject *transport, *protocol, *context, *ready, *slow, *sock, *buffer, *address;
    int fd, family, connected;
    if (!PyArg_ParseTuple(args, "OOO!OOOOOiip:Dgram", &transport, &protocol, &PyContext_Type,
                          &context, &ready, &slow, &sock, &buffer, &address, &fd, &family,
                          &connected))
        return NULL;
    Dgram *d = (Dgram *)tp->tp_alloc(tp, 0);
    if (d == NULL)
        return NULL;
    d->vectorcall = Dgram_vectorcall;
    d->transport = Py_NewRef(transport);
    d->protocol = Py_NewRef(protocol);
    d->context = Py_NewRef(context);
    d->ready = Py_NewRef(ready);
    d->slow = Py_NewRef(slow);
    d->sock = Py_NewRef(sock);
    d->buffer = Py_NewRef(buffer);
    d->address = Py_NewRef(address);
    d->fd = fd;
    d->family = family;
    d->connected = connected;
    return (PyObject *)d;
}

static int Dgram_traverse(Dgram *d, visitproc visit, void *arg)
{
    Py_VISIT(d->transport);
    Py_VISIT(d->protocol);
    Py_VISIT(d->context);
    Py_VISIT(d->ready);
    Py_VISIT(d->slow);
    Py_VISIT(d->sock);
    Py_VISIT(d->buffer);
    Py_VISIT(d->address);
    Py_VISIT(d->last_addr);
    return 0;
}

static int Dgram_clear(Dgram *d)
{
    d->recv_fast = d->send_fast = 0;
    Py_CLEAR(d->transport);
    Py_CLEAR(d->protocol);
    Py_CLEAR(d->context);
    Py_CLEAR(d->ready);
    Py_CLEAR(d->slow);
    Py_CLEAR(d->sock);
    Py_CLEAR(d->buffer);
    Py_CLEAR(d->address);
    Py_CLEAR(d->last_addr);
    return 0;
}

static void Dgram_dealloc(Dgram *d)
{
    PyObject_GC_UnTrack(d);
    Dgram_clear(d);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

/* ---- receive */

static int is_fatal(void)
{
    return PyErr_ExceptionMatches(PyExc_SystemExit) ||
           PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}


/* datagram_received(payload, addr) in the transport's context; what the
 * protocol raises is reported as the stock reader handle reports it. */
static PyObject *deliver(Dgram *d, PyObject *payload, PyObject *addr)
{
    PyObject *stack[4] = {NULL, d->protocol, payload, addr};
    PyObject *ctx = Py_NewRef(d->context), *proto = Py_NewRef(d->protocol);
    if (PyContext_Enter(ctx) < 0) {
        Py_DECREF(ctx);
        Py_DECREF(proto);
        return NULL;
    }
    PyObject *r = PyObject_VectorcallMethod(s_datagram_received, stack + 1,
                                            3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    Py_DECREF(proto);
    int fatal = r == NULL && is_fatal();
    PyObject *exc = r == NULL ? PyErr_GetRaisedException() : NULL;
    Py_XDECREF(r);
    if (PyContext_Exit(ctx) < 0) {
        Py_XDECREF(exc);
        Py_DECREF(ctx);
        return NULL;
    }
    Py_DECREF(ctx);
    if (exc == NULL)
        Py_RETURN_NONE;
    if (fatal) { /* SystemExit, KeyboardInterrupt: up, as from a handle */
        /* the stock loop stops here: the turn's later records are held for
         * the next turn, not handed over behind the exception (decision 408) */
        d->recv_fast = 0;
        r = PyObject_CallMethodNoArgs(d->transport, s_hold_rest);
        if (r == NULL)
            PyErr_WriteUnraisable(d->transport);
        Py_XDECREF(r);
        PyErr_SetRaisedException(exc);
        return NULL;
    }
    /* reported as the stock reader handle reports it; reading goes on */
    r = PyObject_CallMethodOneArg(d->transport, s_protocol_raised, exc);
    Py_DECREF(exc);
    return r;
}

/* len(o), without the call for an exact deque (the loop's _ready, the
 * send queue) */
static Py_ssize_t length(PyObject *o)
{
    return Py_IS_TYPE(o, deque_type) ? Py_SIZE(o) : PyObject_Size(o);
}

/* set by the native turn around a record's generic call (dgram.h) */
Py_ssize_t ul_dgram_timers, ul_dgram_before = -1;
unsigned int ul_dgram_seq;

/* 1 when batch seq brings d's first record (noted now), else 0 */
static inline int first_of_batch(Dgram *d, unsigned int seq)
{
    if (d->seq == seq)
        return 0;
    d->seq = seq;
    return 1;
}

int ul_dgram_first(PyObject *owner, unsigned int seq)
{
    return Py_IS_TYPE(owner, &DgramType) && first_of_batch((Dgram *)owner, seq);
}

/* the plain reading state, with nothing due in the loop's _ready before it
 * (but the timers collected before the batch: decision 414): 1 yes, 0 no,
 * -1 error. The endpoint's first record of a batch waits only for what was
 * in _ready at the poll: the stock reader callbacks of one poll are queued
 * together, ahead of what any of them schedules; its later ones for what
 * that record's callback scheduled too, as stock reads a datagram a turn
 * (decision 454). */
static int takes_fast(Dgram *d, Py_ssize_t timers, Py_ssize_t before, unsigned int seq)
{
    if (!d->recv_fast || d->ready == NULL)
        return 0;
    if (before >= 0 && first_of_batch(d, seq))
        return before == 0;
    Py_ssize_t waiting = length(d->ready);
    return waiting < 0 ? -1 : waiting - timers <= 0;
}

int ul_dgram_takes(PyObject *owner, Py_ssize_t timers, Py_ssize_t before, unsigned int seq)
{
    if (!Py_IS_TYPE(owner, &DgramType))
        return 0;
    return takes_fast((Dgram *)owner, timers, before, seq);
}

int ul_dgram_deliver(PyObject *owner, PyObject *payload, PyObject *addr, const uint8_t *raw,
                     uint32_t rawlen)
{
    Dgram *d = (Dgram *)owner;
    /* The answer to a datagram is usually sent to the address it came with:
     * this very tuple, converted back to this very sockaddr. Kept now as
     * sendto's last conversion (decision 317), a server answering many
     * peers in turn converts none of their addresses. */
    if (addr != d->last_addr && !d->connected && PyTuple_CheckExact(addr)) {
        uint32_t len = d->family == AF_INET ? sizeof(struct sockaddr_in)
                       : d->family == AF_INET6 ? sizeof(struct sockaddr_in6) : 0;
        sa_family_t fam;
        if (len != 0 && rawlen >= len && (memcpy(&fam, raw, sizeof fam), fam == d->family)) {
            memset(&d->last_sa, 0, sizeof d->last_sa);
            memcpy(&d->last_sa, raw, len);
            d->last_len = len;
            Py_XSETREF(d->last_addr, Py_NewRef(addr));
        }
    }
    PyObject *r = deliver(d, payload, addr);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

static PyObject *Dgram_vectorcall(PyObject *op, PyObject *const *args, size_t nargsf,
                                  PyObject *kwnames)
{
    Dgram *d = (Dgram *)op;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs == 3 && kwnames == NULL && args[1] == Py_True && PyLong_CheckExact(args[0]) &&
        PyTuple_CheckExact(args[2]) && PyTuple_GET_SIZE(args[2]) == 2) {
        int overflow;
        long res = PyLong_AsLongAndOverflow(args[0], &overflow);
        int fast = takes_fast(d, ul_dgram_timers, ul_dgram_before, ul_dgram_seq);
        if (fast < 0)
            return NULL;
        if (fast && res >= 0 && !overflow)
            return deliver(d, PyTuple_GET_ITEM(args[2], 0), PyTuple_GET_ITEM(args[2], 1));
    }
    if (d->slow == NULL)
        Py_RETURN_NONE; /* cleared by the GC */
    return PyObject_Vectorcall(d->slow, args, nargsf, kwnames);
}

/* ---- send */

/* addr (a numeric IPv4/IPv6 tuple, as the socket module takes it) into
 * d->last_sa; 0 when this is not the simple case (the socket module then
 * decides, errors included). */
static int convert(Dgram *d, PyObject *addr)
{
    if (!PyTuple_CheckExact(addr))
        return 0;
    Py_ssize_t n = PyTuple_GET_SIZE(addr);
    if (n < 2 || (d->family == AF_INET ? n != 2 : n > 4))
        return 0;
    PyObject *host = PyTuple_GET_ITEM(addr, 0);
    if (!PyUnicode_CheckExact(host) || !PyUnicode_IS_ASCII(host))
        return 0;
    const char *name = PyUnicode_AsUTF8(host);
    if (name == NULL || strlen(name) != (size_t)PyUnicode_GET_LENGTH(host)) {
        PyErr_Clear();
        return 0;
    }
    unsigned long v[3] = {0, 0, 0};
    static const unsigned long max[3] = {0xffff, 0xfffff, 0xffffffff};
    for (Py_ssize_t i = 1; i < n; i++) {
        PyObject *o = PyTuple_GET_ITEM(addr, i);
        if (!PyLong_CheckExact(o))
            return 0;
        v[i - 1] = PyLong_AsUnsignedLong(o);
        if (PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        if (v[i - 1] > max[i - 1])
            return 0;
    }
    /* made aside: last_sa stays last_addr's until this one is whole (a
     * name inet_pton refuses, sent by the socket module, must not leave
     * last_addr naming a cleared sockaddr: decision 407) */
    struct sockaddr_in6 sa;
    socklen_t len;
    memset(&sa, 0, sizeof sa);
    if (d->family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&sa;
        if (inet_pton(AF_INET, name, &sin->sin_addr) != 1)
            return 0;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)v[0]);
        len = sizeof *sin;
    } else {
        if (inet_pton(AF_INET6, name, &sa.sin6_addr) != 1)
            return 0;
        sa.sin6_family = AF_INET6;
        sa.sin6_port = htons((uint16_t)v[0]);
        sa.sin6_flowinfo = htonl((uint32_t)v[1]);
        sa.sin6_scope_id = (uint32_t)v[2];
        len = sizeof sa;
    }
    d->last_sa = sa;
    d->last_len = len;
    Py_XSETREF(d->last_addr, Py_NewRef(addr));
    return 1;
}

static PyObject *Dgram_sendto(Dgram *d, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    if (!d->send_fast || kwnames != NULL || nargs < 1 || nargs > 2 || d->transport == NULL)
        goto slow;
    PyObject *data = args[0], *addr = nargs == 2 ? args[1] : Py_None;
    if (!(PyBytes_Check(data) || PyByteArray_Check(data) || PyMemoryView_Check(data)))
        goto slow;
    Py_ssize_t queued = length(d->buffer);
    if (queued != 0) {
        if (queued < 0)
            return NULL;
        goto slow;
    }
    int to_peer;
    if (d->address != Py_None) {
        if (addr != Py_None && addr != d->address)
            goto slow; /* equal or not: the Python path says */
        to_peer = d->connected;
        addr = d->address;
    } else {
        to_peer = d->connected;
    }
    /* the destination, copied: an audit hook or a buffer export (Python
     * code) may send elsewhere before the syscall, which replaces last_sa
     * (decision 407) */
    struct sockaddr_in6 to;
    socklen_t tolen = 0;
    if (!to_peer) {
        if (d->family != AF_INET && d->family != AF_INET6)
            goto slow;
        if (addr != d->last_addr && !convert(d, addr))
            goto slow;
        to = d->last_sa;
        tolen = d->last_len;
        if (PySys_Audit("socket.sendto", "OO", d->sock, addr) < 0)
            return NULL;
    }
    Py_buffer view;
    if (PyBytes_CheckExact(data)) { /* the common case: no buffer export */
        view.buf = PyBytes_AS_STRING(data);
        view.len = PyBytes_GET_SIZE(data);
        view.obj = NULL;
    } else if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        goto slow;
    }
    if (view.len == 0 || !d->send_fast) {
        /* (!send_fast: an audit hook or the buffer export, Python code,
         * closed the transport, and on epoll the engine closed the fd at
         * once: the Python path sends as stock, decision 407) */
        if (view.obj != NULL)
            PyBuffer_Release(&view);
        goto slow;
    }
    ssize_t n;
    for (;;) {
        if (to_peer)
            n = send(d->fd, view.buf, (size_t)view.len, 0);
        else
            n = sendto(d->fd, view.buf, (size_t)view.len, 0, (struct sockaddr *)&to, tolen);
        if (n >= 0 || errno != EINTR)
            break;
        if (PyErr_CheckSignals() < 0) { /* as the socket module: a handler may raise */
            if (view.obj != NULL)
                PyBuffer_Release(&view);
            return NULL;
        }
        if (!d->send_fast) { /* a handler closed the transport: as above */
            if (view.obj != NULL)
                PyBuffer_Release(&view);
            goto slow;
        }
    }
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    if (n >= 0)
        Py_RETURN_NONE;
    PyErr_SetFromErrno(PyExc_OSError);
    PyObject *exc = PyErr_GetRaisedException();
    PyObject *r = PyObject_CallMethodObjArgs(d->transport, s_sendto_failed, data,
                                             nargs == 2 ? args[1] : Py_None, exc, NULL);
    Py_DECREF(exc);
    return r;
slow:
    if (d->transport == NULL)
        Py_RETURN_NONE;
    {
        PyObject *stack[4] = {NULL, d->transport, nargs > 0 ? args[0] : NULL,
                              nargs > 1 ? args[1] : NULL};
        Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
        if (nargs + nkw > 2) {
            /* more than fits the stack: the general call */
            PyObject *fn = PyObject_GetAttr(d->transport, s_sendto_py);
            if (fn == NULL)
                return NULL;
            PyObject *r = PyObject_Vectorcall(fn, args, (size_t)nargs, kwnames);
            Py_DECREF(fn);
            return r;
        }
        for (Py_ssize_t i = 0; i < nkw; i++)
            stack[2 + nargs + i] = args[nargs + i];
        return PyObject_VectorcallMethod(s_sendto_py, stack + 1,
                                         (size_t)(1 + nargs) | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                         kwnames);
    }
}

/* ---- the transport class's sendto (decision 315)
 *
 * A method descriptor of the transport class, made by sendto_method(cls,
 * slot): `transport.sendto(...)` is then an ordinary C method call (the
 * interpreter specialises it: no bound method, no Python frame), which finds
 * the transport's Dgram in its _dg slot, at a fixed offset. A bound Dgram
 * method kept on each instance instead shadowed the class's method, and the
 * attribute lookup and call that made cost more than the C they led to. */

static Py_ssize_t dg_offset = -1; /* the _dg slot of the transport class */

static PyObject *transport_sendto(PyObject *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    PyObject *d = *(PyObject **)((char *)self + dg_offset);
    if (d == NULL || !Py_IS_TYPE(d, &DgramType)) {
        PyErr_SetString(PyExc_RuntimeError, "the transport has no C core");
        return NULL;
    }
    Py_INCREF(d);
    PyObject *r = Dgram_sendto((Dgram *)d, args, nargs, kwnames);
    Py_DECREF(d);
    return r;
}

static PyMethodDef transport_sendto_def = {
    "sendto", (PyCFunction)(void (*)(void))transport_sendto, METH_FASTCALL | METH_KEYWORDS,
    "sendto($self, /, data, addr=None)\n--\n\n"
    "Send data to addr (the connected peer by default), as the stock transport does.",
};

/* sendto_method(cls, slot): the sendto of the transport class cls, whose
 * instances keep their Dgram in slot (cls._dg, a member descriptor) */
PyObject *ul_dgram_sendto_method(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 2 || !PyType_Check(args[0]) || !Py_IS_TYPE(args[1], &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)args[1])->d_member->type != Py_T_OBJECT_EX ||
        ((PyMemberDescrObject *)args[1])->d_common.d_type != (PyTypeObject *)args[0]) {
        PyErr_SetString(PyExc_TypeError, "sendto_method(cls, cls's own object slot)");
        return NULL;
    }
    Py_ssize_t off = ((PyMemberDescrObject *)args[1])->d_member->offset;
    if (dg_offset >= 0 && dg_offset != off) {
        PyErr_SetString(PyExc_ValueError, "sendto_method: one transport class only");
        return NULL;
    }
    dg_offset = off;
    return PyDescr_NewMethod((PyTypeObject *)args[0], &transport_sendto_def);
}

static PyMemberDef Dgram_members[] = {
    {"recv_fast", Py_T_INT, offsetof(Dgram, recv_fast), 0,
     "records go straight to datagram_received"},
    {"send_fast", Py_T_INT, offsetof(Dgram, send_fast), 0, "sendto may go straight to the fd"},
    {"protocol", Py_T_OBJECT_EX, offsetof(Dgram, protocol), 0, "the protocol"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject DgramType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "uringloop._sched.Dgram",
    .tp_basicsize = sizeof(Dgram),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "a datagram transport's hot half (see uringloop/_core/dgram.c)",
    .tp_new = Dgram_new,
    .tp_dealloc = (destructor)Dgram_dealloc,
    .tp_traverse = (traverseproc)Dgram_traverse,
    .tp_clear = (inquiry)Dgram_clear,
    .tp_vectorcall_offset = offsetof(Dgram, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_members = Dgram_members,
};

/* ---- sender addresses */

/* Two ways per set (decision 316): a direct-mapped table of 64 made two
 * peers that hash to one slot (a ping-pong's two ends, 1 chance in 64 per
 * pair of ports) evict each other on every datagram, rebuilding both
 * tuples and making each answer convert its address again. */
#define ADDR_SETS 64 /* a server's working set of peers */
#define ADDR_WAYS 2

struct ul_addr_entry {
    PyObject *addr;
    uint32_t len;
    uint8_t raw[sizeof(struct sockaddr_in6)];
};

struct ul_addr_cache {
    struct ul_addr_entry e[ADDR_SETS][ADDR_WAYS];
    struct ul_addr_entry *last; /* the entry the last lookup gave (decision 361) */
};

/* The key is a sockaddr_in's or sockaddr_in6's bytes: whole 32-bit words,
 * hashed and compared a word at a time, each size with its own unrolled
 * code (the byte-wise FNV-1a and memcmp they replace cost as much as the
 * rest of a cache hit). */
static inline __attribute__((always_inline)) uint32_t hash_words(const uint8_t *raw,
                                                                 uint32_t len)
{
    uint32_t h = 2166136261u;
    for (uint32_t i = 0; i < len; i += 4) {
        uint32_t w;
        memcpy(&w, raw + i, sizeof w);
        h = (h ^ w) * 0x9E3779B1u;
    }
    h ^= h >> 16; /* murmur3's finaliser: every input bit reaches the low bits */
    h *= 0x85EBCA6Bu;
    return h ^ (h >> 13);
}

static inline __attribute__((always_inline)) int same_words(const uint8_t *a,
                                                            const uint8_t *b, uint32_t len)
{
    uint32_t diff = 0;
    for (uint32_t i = 0; i < len; i += 4) {
        uint32_t x, y;
        memcpy(&x, a + i, sizeof x);
        memcpy(&y, b + i, sizeof y);
        diff |= x ^ y;
    }
    return diff == 0;
}

static uint32_t addr_hash(const uint8_t *raw, uint32_t len)
{
    return len == sizeof(struct sockaddr_in) ? hash_words(raw, sizeof(struct sockaddr_in))
                                             : hash_words(raw, sizeof(struct sockaddr_in6));
}

/* entry e holds the len-byte sockaddr raw */
static int addr_is(const struct ul_addr_entry *e, const uint8_t *raw, uint32_t len)
{
    if (e->addr == NULL || e->len != len)
        return 0;
    return len == sizeof(struct sockaddr_in) ? same_words(e->raw, raw, sizeof(struct sockaddr_in))
                                             : same_words(e->raw, raw, sizeof(struct sockaddr_in6));
}

/* "a.b.c.d", what inet_ntop writes, without its cost */
static PyObject *ipv4_str(const uint8_t *a)
{
    char buf[16], *p = buf;
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = '.';
    }
    return PyUnicode_DecodeASCII(buf, p - buf - 1, NULL);
}

static PyObject *build_addr(const uint8_t *raw, uint32_t len, PyObject *decode, uint32_t *keylen)
{
    sa_family_t fam;
    memcpy(&fam, raw, sizeof fam);
    PyObject *host;
    if (fam == AF_INET && len >= sizeof(struct sockaddr_in)) {
        struct sockaddr_in sin;
        memcpy(&sin, raw, sizeof sin);
        *keylen = sizeof sin;
        if (!(host = ipv4_str((const uint8_t *)&sin.sin_addr)))
            return NULL;
        PyObject *port = PyLong_FromLong(ntohs(sin.sin_port));
        PyObject *a = port ? PyTuple_Pack(2, host, port) : NULL;
        Py_DECREF(host);
        Py_XDECREF(port);
        return a;
    }
    if (fam == AF_INET6 && len >= sizeof(struct sockaddr_in6)) {
        struct sockaddr_in6 sin6;
        char text[INET6_ADDRSTRLEN];
        memcpy(&sin6, raw, sizeof sin6);
        *keylen = sizeof sin6;
        if (!inet_ntop(AF_INET6, &sin6.sin6_addr, text, sizeof text))
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_BuildValue("(siII)", text, (int)ntohs(sin6.sin6_port),
                             (unsigned int)ntohl(sin6.sin6_flowinfo),
                             (unsigned int)sin6.sin6_scope_id);
    }
    *keylen = 0; /* not cached */
    PyObject *b = PyBytes_FromStringAndSize((const char *)raw, len);
    PyObject *a = b ? PyObject_CallOneArg(decode, b) : NULL;
    Py_XDECREF(b);
    return a;
}

PyObject *ul_addr_new(const uint8_t *raw, uint32_t len)
{
    uint32_t key;
    return build_addr(raw, len, NULL, &key);
}

PyObject *ul_addr_obj(ul_addr_cache **cache, const uint8_t *raw, uint32_t len,
                      PyObject *decode)
{
    if (len < sizeof(sa_family_t))
        Py_RETURN_NONE;
    sa_family_t fam;
    memcpy(&fam, raw, sizeof fam);
    uint32_t key = fam == AF_INET ? sizeof(struct sockaddr_in)
                   : fam == AF_INET6 ? sizeof(struct sockaddr_in6) : 0;
    if (key == 0 || len < key)
        return build_addr(raw, len, decode, &key);
    ul_addr_cache *c = *cache;
    if (c == NULL && !(c = *cache = PyMem_Calloc(1, sizeof *c)))
        return PyErr_NoMemory();
    /* the peer of the last datagram, first: a burst comes from one sender */
    if (c->last != NULL && addr_is(c->last, raw, key))
        return Py_NewRef(c->last->addr);
    struct ul_addr_entry *set = c->e[addr_hash(raw, key) % ADDR_SETS];
    for (int w = 0; w < ADDR_WAYS; w++)
        if (addr_is(&set[w], raw, key)) {
            c->last = &set[w];
            return Py_NewRef(set[w].addr);
        }
    PyObject *a = build_addr(raw, len, decode, &key);
    if (a != NULL && key != 0) {
        /* the newest first, the oldest out */
        PyObject *old = set[ADDR_WAYS - 1].addr;
        memmove(&set[1], &set[0], (ADDR_WAYS - 1) * sizeof set[0]);
        set[0].addr = Py_NewRef(a);
        memcpy(set[0].raw, raw, key);
        set[0].len = key;
        c->last = &set[0];
        Py_XDECREF(old);
    }
    return a;
}

int ul_addr_cache_traverse(ul_addr_cache *c, visitproc visit, void *arg)
{
    if (c != NULL)
        for (int i = 0; i < ADDR_SETS; i++)
            for (int w = 0; w < ADDR_WAYS; w++)
                Py_VISIT(c->e[i][w].addr);
    return 0;
}

void ul_addr_cache_free(ul_addr_cache **cache)
{
    ul_addr_cache *c = *cache;
    *cache = NULL;
    if (c == NULL)
        return;
    for (int i = 0; i < ADDR_SETS; i++)
        for (int w = 0; w < ADDR_WAYS; w++)
            Py_XDECREF(c->e[i][w].addr);
    PyMem_Free(c);
}

int ul_dgram_init(PyObject *module)
{
    if (!(s_datagram_received = PyUnicode_InternFromString("datagram_received")) ||
        !(s_protocol_raised = PyUnicode_InternFromString("_protocol_raised")) ||
        !(s_sendto_py = PyUnicode_InternFromString("_sendto_py")) ||
        !(s_sendto_failed = PyUnicode_InternFromString("_sendto_failed")) ||
        !(s_hold_rest = PyUnicode_InternFromString("_hold_rest")))
        return -1;
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL)
        return -1;
    deque_type = (PyTypeObject *)PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque_type == NULL)
        return -1;
    if (!PyType_Check(deque_type)) {
        PyErr_SetString(PyExc_TypeError, "collections.deque is not a type");
        return -1;
    }
    if (PyType_Ready(&DgramType) < 0)
        return -1;
    if (PyModule_AddObject(module, "Dgram", Py_NewRef((PyObject *)&DgramType)) < 0) {
        Py_DECREF((PyObject *)&DgramType);
        return -1;
    }
    return 0;
}
