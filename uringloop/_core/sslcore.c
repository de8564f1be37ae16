/* The SSL protocol's steady state in C (decisions 394, 395).
 *
 * uringloop/transports/tls.py's SSLProtocol is the stdlib's
 * asyncio.sslproto.SSLProtocol with two C mixin bases from here put first in
 * its bases (and its app transport's): they carry no fields, so the instance
 * is the stock one (its __dict__ holds every attribute the stock methods
 * use), and what they define only takes the place of the stock method of the
 * same name:
 *
 *  - SSLProtocolCore.get_buffer / buffer_updated: the raw transport's
 *    receive. In the WRAPPED state buffer_updated runs the stock _do_read's
 *    steps here: the read while bytes are pending (decision 393's loop; the
 *    app's data_received, or its get_buffer/buffer_updated with the re-read
 *    call_soon when its buffer fills), then _process_outgoing, then the
 *    flow-control checks. Every other state goes to the stock methods
 *    (_do_handshake, _do_flush, _do_shutdown).
 *  - SSLTransportCore.write: the app transport's write. In the WRAPPED
 *    state, with nothing in the backlog and the raw transport not paused:
 *    SSLObject.write, one outgoing.read(), one raw write, the flow-control
 *    check. Otherwise the stock _write_appdata.
 *
 * Each rare branch calls the stock Python method: a write-side or read-side
 * flow-control transition (_control_app_writing, _control_ssl_reading, only
 * called when the fast test says its state changes), a backlog (_do_write),
 * close_notify (_call_eof_received, _start_shutdown), a partial SSL write.
 * Exceptions are caught where the stock code catches them: SSLAgainErrors
 * around the SSLObject calls, Exception in _do_read/_write_appdata ->
 * _fatal_error(ex, 'Fatal error on SSL protocol'); a BaseException that is
 * not an Exception goes up, as it does there.
 *
 * Attributes are read with PyObject_GetAttr (so an instance or a subclass
 * is seen as Python code would see it). The SSLObject's inner _ssl object
 * is called directly only when type(sslobj) is ssl.SSLObject, whose read,
 * write and pending are plain forwards to it; a subclass set as
 * SSLContext.sslobject_class gets its own read and write called, and its
 * inner object's pending() (the stock protocol never calls pending(),
 * decision 402).
 *
 * Python 3.11+ (tls.py is not used on 3.10): on 3.10 this compiles to an
 * init that adds nothing.
 */

#include "sslcore.h"

#include <stddef.h>
#include <structmember.h>

#if PY_VERSION_HEX >= 0x030B0000

/* set once by ssl_setup() (tls.py, at import) */
static struct {
    PyObject *wrapped, *do_handshake_st, *flushing, *shutdown; /* SSLProtocolState members */
    PyObject *again;         /* sslproto.SSLAgainErrors (a tuple) */
    PyObject *sslobject;     /* ssl.SSLObject */
    PyObject *stock_get_buffer; /* sslproto.SSLProtocol.get_buffer */
    PyObject *msg;           /* 'Fatal error on SSL protocol' */
    PyObject *empty;         /* b'' */
    PyObject *read_cap;      /* READ_CAP, an int */
} C;

/* The most a plain SSLObject's inner read is asked for a call (decision
 * 550): one TLS record's plaintext (2^14). The stock protocol asks for
 * max_size (256 KiB), so every read mallocs 256 KiB and shrinks it: under
 * glibc's default thresholds an mmap, an mremap and an munmap a read. A
 * record never holds more, so the reads and the bytes handed over are the
 * same; a smaller block never reaches the mmap threshold, and its free
 * never triggers a heap trim (glibc checks only for 64 KiB and more). */
#define READ_CAP 16384

static PyObject *s_state, *s_incoming, *s_outgoing, *s_sslobj, *s_pending, *s_read, *s_write,
    *s_app_reading_paused, *s_app_is_buffer, *s_app_protocol, *s_data_received,
    *s_app_get_buffer, *s_app_buffer_updated, *s_write_backlog, *s_do_write,
    *s_ssl_writing_paused, *s_transport, *s_control_app_writing, *s_control_ssl_reading,
    *s_write_buffer_size, *s_out_high, *s_out_low, *s_app_writing_paused, *s_in_high,
    *s_in_low, *s_ssl_reading_paused, *s_fatal_error, *s_call_eof_received,
    *s_start_shutdown, *s_loop, *s_call_soon, *s_do_read, *s_max_size, *s_ssl_buffer,
    *s_ssl_buffer_view, *s_do_handshake, *s_do_flush, *s_do_shutdown, *s_ssl_protocol,
    *s_write_appdata, *s_process_outgoing, *s_join, *s_append;

/* The protocol's hot attributes live here, not in its __dict__: each is a
 * member (T_OBJECT_EX) of SSLProtocolCore, so the stock Python methods
 * read and assign them as before (self._state = ...), and the C paths read
 * them without a lookup. */
typedef struct {
    PyObject_HEAD
    PyObject *state, *incoming, *outgoing, *sslobj, *app_protocol, *transport, *write_backlog,
        *loop, *app_reading_paused, *app_is_buffer, *app_get_buffer, *app_buffer_updated,
        *ssl_writing_paused, *app_writing_paused, *ssl_reading_paused, *write_buffer_size,
        *out_high, *out_low, *in_high, *in_low, *ssl_buffer, *ssl_buffer_view;
    /* not attributes: the object whose read/write are called for sslobj
     * (ssl_target), the sslobj it was found for, and the object whose
     * pending() tells whether bytes are left (pend_target) */
    PyObject *target, *target_for, *pend;
} Proto;

#define NFIELDS 22 /* state .. ssl_buffer_view */
_Static_assert(offsetof(Proto, target) == offsetof(Proto, state) + NFIELDS * sizeof(PyObject *),
               "Proto: the fields from state to target_for are contiguous");

_Static_assert(offsetof(Proto, pend) == offsetof(Proto, state) + (NFIELDS + 2) * sizeof(PyObject *),
               "Proto: pend follows target_for");

static PyTypeObject ProtoCoreType;

#define PROTO(o) ((Proto *)(o))

/* ---- helpers */

/* the exception being raised, taken out (3.11 has no PyErr_GetRaisedException) */
static PyObject *take_exc(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
#endif
}

static void restore_exc(PyObject *v)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(v);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(v)), v, PyException_GetTraceback(v));
#endif
}

/* truth of self.<name>: 1, 0, or -1 with an exception */
static int attr_true(PyObject *o, PyObject *name)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = v == Py_True ? 1 : v == Py_False ? 0 : PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* o.method() / o.method(arg) */
static inline PyObject *call0(PyObject *o, PyObject *name)
{
    return PyObject_VectorcallMethod(name, &o, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline PyObject *call1(PyObject *o, PyObject *name, PyObject *arg)
{
    PyObject *args[2] = {o, arg};
    return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline PyObject *call2(PyObject *o, PyObject *name, PyObject *a, PyObject *b)
{
    PyObject *args[3] = {o, a, b};
    return PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* o.method() for its effect only: 0, or -1 with an exception */
static int run0(PyObject *o, PyObject *name)
{
    PyObject *r = call0(o, name);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* the object whose read/write/pending to call: the SSLObject's inner _ssl
 * object when it is a plain ssl.SSLObject (whose methods only forward),
 * else the SSLObject itself. New reference. */
static PyObject *ssl_target(PyObject *sslobj)
{
    if ((PyObject *)Py_TYPE(sslobj) == C.sslobject)
        return PyObject_GetAttr(sslobj, s_sslobj);
    return Py_NewRef(sslobj);
}

/* the object whose pending() decides whether to read: the inner _ssl
 * object of any SSLObject (a sslobject_class's own pending() is not
 * called: the stock protocol never calls it, decision 402), else sslobj.
 * New reference. */
static PyObject *pend_target(PyObject *sslobj)
{
    int is = PyObject_IsInstance(sslobj, C.sslobject);
    if (is < 0)
        return NULL;
    if (is) {
        PyObject *inner = PyObject_GetAttr(sslobj, s_sslobj);
        if (inner != NULL)
            return inner;
        if (!PyErr_ExceptionMatches(PyExc_AttributeError))
            return NULL;
        PyErr_Clear();
    }
    return Py_NewRef(sslobj);
}

/* an exact int's value into *out: 1; 0 when v is not an exact int or does
 * not fit (the caller takes the Python path); -1 never */
static int exact_ssize(PyObject *v, Py_ssize_t *out)
{
    if (!PyLong_CheckExact(v))
        return 0;
    Py_ssize_t n = PyLong_AsSsize_t(v);
    if (n == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    *out = n;
    return 1;
}

/* self.<name> as an exact int: 1 (value in *out), 0 (not one), -1 (error) */
static int attr_ssize(PyObject *o, PyObject *name, Py_ssize_t *out)
{
    PyObject *v = PyObject_GetAttr(o, name);
    if (v == NULL)
        return -1;
    int r = exact_ssize(v, out);
    Py_DECREF(v);
    return r;
}

/* bytes still to decrypt: incoming.pending or target.pending() (truth);
 * 1, 0 or -1 */
static int bytes_left(PyObject *incoming, PyObject *target)
{
    int r = attr_true(incoming, s_pending);
    if (r != 0)
        return r;
    PyObject *v = call0(target, s_pending);
    if (v == NULL)
        return -1;
    r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* the exception being raised is one of SSLAgainErrors: clear it, 1; else 0 */
static int clear_again(void)
{
    if (PyErr_ExceptionMatches(C.again)) {
        PyErr_Clear();
        return 1;
    }
    return 0;
}

/* self._fatal_error(ex, 'Fatal error on SSL protocol') when the exception
 * being raised is an Exception (0, or -1 if that call raised); any other
 * exception stays set (-1) */
static int catch_fatal(PyObject *self)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *exc = take_exc();
    /* called while exc is being handled, as in the stock except clause
     * (sys.exc_info() in an exception handler, __context__) */
    PyObject *prev = PyErr_GetHandledException();
    PyErr_SetHandledException(exc);
    PyObject *r = call2(self, s_fatal_error, exc, C.msg);
    PyErr_SetHandledException(prev);
    Py_XDECREF(prev);
    Py_DECREF(exc);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* ---- fields */

/* a field's value (borrowed), or NULL with the AttributeError Python code
 * would get for an attribute never set */
static PyObject *fld(PyObject *self, PyObject *v, PyObject *name)
{
    if (v == NULL)
        PyErr_Format(PyExc_AttributeError, "'%.200s' object has no attribute '%U'",
                     Py_TYPE(self)->tp_name, name);
    return v;
}

#define F(self, f, name) fld((self), PROTO(self)->f, (name))

/* truth of a field: 1, 0 or -1 */
static int ftrue(PyObject *self, PyObject *v, PyObject *name)
{
    if (v == Py_True)
        return 1;
    if (v == Py_False)
        return 0;
    if (fld(self, v, name) == NULL)
        return -1;
    return PyObject_IsTrue(v);
}

#define T(self, f, name) ftrue((self), PROTO(self)->f, (name))

/* an exact int field's value: 1 (in *out), 0 (not an exact int), -1 */
static int fsize(PyObject *self, PyObject *v, PyObject *name, Py_ssize_t *out)
{
    if (fld(self, v, name) == NULL)
        return -1;
    return exact_ssize(v, out);
}

/* the read/write/pending target for the protocol's sslobj (borrowed) */
static PyObject *proto_target(PyObject *self)
{
    Proto *p = PROTO(self);
    PyObject *sslobj = F(self, sslobj, s_sslobj);
    if (sslobj == NULL)
        return NULL;
    if (p->target_for != sslobj || p->target == NULL) {
        PyObject *t = ssl_target(sslobj);
        if (t == NULL)
            return NULL;
        PyObject *pt = pend_target(sslobj);
        if (pt == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        Py_XSETREF(p->target, t);
        Py_XSETREF(p->pend, pt);
        Py_XSETREF(p->target_for, Py_NewRef(sslobj));
    }
    return p->target;
}

/* ---- flow control: the stock methods, called only when their state changes */

/* _control_app_writing: size = outgoing.pending + _write_buffer_size */
static int control_app_writing(PyObject *self)
{
    Proto *p = PROTO(self);
    Py_ssize_t pend, wsize, high, low;
    PyObject *outgoing = F(self, outgoing, s_outgoing);
    if (outgoing == NULL)
        return -1;
    int r = attr_ssize(outgoing, s_pending, &pend);
    if (r > 0)
        r = fsize(self, p->write_buffer_size, s_write_buffer_size, &wsize);
    if (r > 0)
        r = fsize(self, p->out_high, s_out_high, &high);
    if (r > 0)
        r = fsize(self, p->out_low, s_out_low, &low);
    if (r < 0)
        return -1;
    if (r > 0) {
        int paused = T(self, app_writing_paused, s_app_writing_paused);
        if (paused < 0)
            return -1;
        Py_ssize_t size = pend + wsize;
        if (!((size >= high && !paused) || (size <= low && paused)))
            return 0;
    }
    return run0(self, s_control_app_writing);
}

/* _control_ssl_reading: size = incoming.pending */
static int control_ssl_reading(PyObject *self)
{
    Proto *p = PROTO(self);
    Py_ssize_t size, high, low;
    PyObject *incoming = F(self, incoming, s_incoming);
    if (incoming == NULL)
        return -1;
    int r = attr_ssize(incoming, s_pending, &size);
    if (r > 0)
        r = fsize(self, p->in_high, s_in_high, &high);
    if (r > 0)
        r = fsize(self, p->in_low, s_in_low, &low);
    if (r < 0)
        return -1;
    if (r > 0) {
        int paused = T(self, ssl_reading_paused, s_ssl_reading_paused);
        if (paused < 0)
            return -1;
        if (!((size >= high && !paused) || (size <= low && paused)))
            return 0;
    }
    return run0(self, s_control_ssl_reading);
}

/* _process_outgoing */
static int process_outgoing(PyObject *self)
{
    int paused = T(self, ssl_writing_paused, s_ssl_writing_paused);
    if (paused < 0)
        return -1;
    if (!paused) {
        PyObject *outgoing = Py_XNewRef(F(self, outgoing, s_outgoing));
        PyObject *data = outgoing == NULL ? NULL : call0(outgoing, s_read);
        Py_XDECREF(outgoing);
        if (data == NULL)
            return -1;
        Py_ssize_t n = PyObject_Size(data);
        if (n < 0) {
            Py_DECREF(data);
            return -1;
        }
        if (n > 0) {
            /* held across the raw write (a synchronous connection_lost
             * clears the field, decision 403) */
            PyObject *tr = Py_XNewRef(F(self, transport, s_transport));
            PyObject *r = tr == NULL ? NULL : call1(tr, s_write, data);
            Py_XDECREF(tr);
            if (r == NULL) {
                Py_DECREF(data);
                return -1;
            }
            Py_DECREF(r);
        }
        Py_DECREF(data);
    }
    return control_app_writing(self);
}

/* close_notify: _call_eof_received(), _start_shutdown() */
static int close_notify(PyObject *self)
{
    if (run0(self, s_call_eof_received) < 0)
        return -1;
    return run0(self, s_start_shutdown);
}

/* ---- reads */

/* _do_read__copied: 0 or -1 */
static int read_copied(PyObject *self, PyObject *incoming, PyObject *target, PyObject *pend)
{
    PyObject *max_size = PyObject_GetAttr(self, s_max_size);
    if (max_size == NULL)
        return -1;
    /* an exact int above READ_CAP asked of the inner _ssl object: capped
     * (anything else goes as it is, for the stock errors) */
    PyObject *len = max_size;
    Proto *p = PROTO(self);
    if (target != p->target_for && PyLong_CheckExact(max_size)) {
        long m = PyLong_AsLong(max_size);
        if (m == -1 && PyErr_Occurred())
            PyErr_Clear();
        else if (m > READ_CAP && m <= INT_MAX)
            len = C.read_cap;
    }
    PyObject *first = NULL, *list = NULL;
    int eof = 0, rc = -1;
    for (;;) {
        int left = bytes_left(incoming, pend);
        if (left < 0)
            goto done;
        if (!left)
            break;
        PyObject *chunk = call1(target, s_read, len);
        if (chunk == NULL) {
            if (clear_again())
                break;
            goto done;
        }
        int t = PyObject_IsTrue(chunk);
        if (t <= 0) {
            Py_DECREF(chunk);
            if (t < 0)
                goto done;
            eof = 1;
            break;
        }
        if (list != NULL) {
            int e = PyList_Append(list, chunk);
            Py_DECREF(chunk);
            if (e < 0)
                goto done;
        }
        else if (first == NULL) {
            first = chunk;
        }
        else {
            list = PyList_New(2);
            if (list == NULL) {
                Py_DECREF(chunk);
                goto done;
            }
            PyList_SET_ITEM(list, 0, first);
            PyList_SET_ITEM(list, 1, chunk);
            first = NULL;
        }
    }
    if (first != NULL || list != NULL) {
        PyObject *data = first;
        if (list != NULL) {
            data = call1(C.empty, s_join, list);
            if (data == NULL)
                goto done;
        }
        else {
            first = NULL;
        }
        /* held: a C data_received may replace the app (set_protocol) while
         * it runs, as a stock frame's reference would (decision 403) */
        PyObject *app = Py_XNewRef(F(self, app_protocol, s_app_protocol));
        PyObject *r = app == NULL ? NULL : call1(app, s_data_received, data);
        Py_XDECREF(app);
        Py_DECREF(data);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    if (eof && close_notify(self) < 0)
        goto done;
    rc = 0;
done:
    Py_XDECREF(first);
    Py_XDECREF(list);
    Py_DECREF(max_size);
    return rc;
}

/* _do_read__buffered: 0 or -1 */
static int read_buffered(PyObject *self, PyObject *incoming, PyObject *target, PyObject *pend)
{
    Py_ssize_t offset = 0, wants;
    int count_zero = 0, filled = 0, rc = -1;
    PyObject *hint = PyObject_GetAttr(incoming, s_pending);
    if (hint == NULL)
        return -1;
    PyObject *get_buffer = F(self, app_get_buffer, s_app_get_buffer);
    Py_XINCREF(get_buffer);
    PyObject *buf = get_buffer == NULL ? NULL : PyObject_CallOneArg(get_buffer, hint);
    Py_XDECREF(get_buffer);
    Py_DECREF(hint);
    if (buf == NULL)
        return -1;
    wants = PyObject_Size(buf);
    if (wants < 0)
        goto done;
    /* the stock method reads once whatever is pending; the read is left out
     * when nothing is (it would only raise SSLWantReadError), unless buf
     * is empty or the app's get_buffer took the protocol out of WRAPPED and
     * FLUSHING (a close() that shut the SSL object down: the read raises
     * what the stock one raises, decision 402) */
    PyObject *st = PROTO(self)->state;
    int left = wants == 0 || (st != C.wrapped && st != C.flushing) ? 1 : bytes_left(incoming, pend);
    if (left < 0)
        goto done;
    while (left) {
        /* the first read into buf, the next ones into memoryview(buf)
         * [offset:]: the stock buf[offset:] of a bytearray is a copy, the
         * bytes read into it are lost and the app is handed stale ones
         * (CPython gh-156275, decision 485); the views are gone before
         * buffer_updated, which may resize buf */
        PyObject *n = PyLong_FromSsize_t(wants - offset);
        if (n == NULL)
            goto done;
        PyObject *into;
        if (offset) {
            PyObject *view = PyMemoryView_FromObject(buf);
            into = view == NULL ? NULL : PySequence_GetSlice(view, offset, PY_SSIZE_T_MAX);
            Py_XDECREF(view);
        } else {
            into = Py_NewRef(buf);
        }
        PyObject *count = into == NULL ? NULL : call2(target, s_read, n, into);
        Py_DECREF(n);
        Py_XDECREF(into);
        if (count == NULL) {
            if (clear_again())
                break;
            goto done;
        }
        /* an int subclass counts as its value, as the stock comparisons
         * and sums take it (decision 403) */
        Py_ssize_t c = PyLong_Check(count) ? PyLong_AsSsize_t(count) : -1;
        if (c == -1 && (!PyLong_Check(count) || PyErr_Occurred())) {
            Py_DECREF(count);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "SSLObject.read() did not return an int");
            goto done;
        }
        Py_DECREF(count);
        if (c <= 0) {
            count_zero = c == 0;
            break;
        }
        offset += c;
        if (offset >= wants) {
            filled = 1;
            break;
        }
        left = bytes_left(incoming, pend);
        if (left < 0)
            goto done;
    }
    if (filled) {
        /* the app's buffer is full: read the rest next turn */
        PyObject *loop = Py_XNewRef(F(self, loop, s_loop));
        PyObject *meth = loop == NULL ? NULL : PyObject_GetAttr(self, s_do_read);
        PyObject *h = meth == NULL ? NULL : call1(loop, s_call_soon, meth);
        Py_XDECREF(meth);
        Py_XDECREF(loop);
        if (h == NULL)
            goto done;
        Py_DECREF(h);
    }
    if (offset > 0) {
        PyObject *updated = F(self, app_buffer_updated, s_app_buffer_updated);
        Py_XINCREF(updated);
        PyObject *off = updated == NULL ? NULL : PyLong_FromSsize_t(offset);
        PyObject *r = off == NULL ? NULL : PyObject_CallOneArg(updated, off);
        Py_XDECREF(updated);
        Py_XDECREF(off);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
    }
    if (count_zero && close_notify(self) < 0)
        goto done;
    rc = 0;
done:
    Py_DECREF(buf);
    return rc;
}

/* the stock _do_read less its state test (WRAPPED or FLUSHING); its
 * except Exception clause included. 0 or -1. */
static int do_read_wrapped(PyObject *self)
{
    Proto *p = PROTO(self);
    int paused = T(self, app_reading_paused, s_app_reading_paused);
    if (paused < 0)
        goto fail;
    if (!paused) {
        /* held across calls that may replace the fields */
        PyObject *incoming = Py_XNewRef(F(self, incoming, s_incoming));
        PyObject *target = incoming == NULL ? NULL : Py_XNewRef(proto_target(self));
        PyObject *pend = target == NULL ? NULL : Py_NewRef(p->pend);
        int is_buffer = target == NULL ? -1 : T(self, app_is_buffer, s_app_is_buffer);
        int e = is_buffer < 0 ? -1
                              : (is_buffer ? read_buffered : read_copied)(self, incoming, target, pend);
        Py_XDECREF(incoming);
        Py_XDECREF(target);
        Py_XDECREF(pend);
        if (e < 0)
            goto fail;
        int backlog = T(self, write_backlog, s_write_backlog);
        if (backlog < 0)
            goto fail;
        if (backlog ? run0(self, s_do_write) : process_outgoing(self))
            goto fail;
    }
    if (control_ssl_reading(self) < 0)
        goto fail;
    return 0;
fail:
    return catch_fatal(self);
}

/* ---- SSLProtocolCore */

/* get_buffer(n): the stock method's result without a frame when the buffer
 * is big enough (the stock method grows it) */
static PyObject *proto_get_buffer(PyObject *self, PyObject *n)
{
    Proto *p = PROTO(self);
    Py_ssize_t want, max;
    PyObject *max_size = PyObject_GetAttr(self, s_max_size);
    if (max_size == NULL)
        return NULL;
    int ok = exact_ssize(n, &want) && exact_ssize(max_size, &max) && p->ssl_buffer != NULL &&
             p->ssl_buffer_view != NULL && PyByteArray_CheckExact(p->ssl_buffer);
    Py_DECREF(max_size);
    if (ok) {
        if (want <= 0 || want > max)
            want = max;
        if (PyByteArray_GET_SIZE(p->ssl_buffer) >= want)
            return Py_NewRef(p->ssl_buffer_view);
    }
    PyObject *args[2] = {self, n};
    return PyObject_Vectorcall(C.stock_get_buffer, args, 2, NULL);
}

static PyObject *proto_buffer_updated(PyObject *self, PyObject *nbytes)
{
    Proto *p = PROTO(self);
    /* held: nbytes.__index__ may replace the field while the view is sliced
     * (decision 403) */
    PyObject *view = Py_XNewRef(F(self, ssl_buffer_view, s_ssl_buffer_view));
    if (view == NULL)
        return NULL;
    PyObject *slice = PySlice_New(Py_None, nbytes, Py_None);
    PyObject *part = slice == NULL ? NULL : PyObject_GetItem(view, slice);
    Py_XDECREF(slice);
    Py_DECREF(view);
    if (part == NULL)
        return NULL;
    PyObject *incoming = Py_XNewRef(F(self, incoming, s_incoming));
    PyObject *r = incoming == NULL ? NULL : call1(incoming, s_write, part);
    Py_XDECREF(incoming);
    Py_DECREF(part);
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    PyObject *state = F(self, state, s_state);
    if (state == NULL)
        return NULL;
    int rc = 0;
    if (state == C.wrapped)
        rc = do_read_wrapped(self);
    else if (state == C.do_handshake_st)
        rc = run0(self, s_do_handshake);
    else if (state == C.flushing)
        rc = run0(self, s_do_flush);
    else if (state == C.shutdown)
        rc = run0(self, s_do_shutdown);
    (void)p;
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _do_read(): the stock method (WRAPPED or FLUSHING), with the reads above */
static PyObject *proto_do_read(PyObject *self, PyObject *unused)
{
    (void)unused;
    PyObject *state = F(self, state, s_state);
    if (state == NULL)
        return NULL;
    if ((state == C.wrapped || state == C.flushing) && do_read_wrapped(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef proto_methods[] = {
    {"get_buffer", proto_get_buffer, METH_O, "the SSL protocol's get_buffer (stock behaviour)"},
    {"_do_read", proto_do_read, METH_NOARGS,
     "the SSL protocol's _do_read: reads while bytes are pending (decisions 393, 394)"},
    {"buffer_updated", proto_buffer_updated, METH_O,
     "the SSL protocol's buffer_updated; the WRAPPED state's read in C (decision 394)"},
    {NULL, NULL, 0, NULL},
};

#define M(name, field) {name, T_OBJECT_EX, offsetof(Proto, field), 0, NULL}
static PyMemberDef proto_members[] = {
    M("_state", state),
    M("_incoming", incoming),
    M("_outgoing", outgoing),
    M("_sslobj", sslobj),
    M("_app_protocol", app_protocol),
    M("_transport", transport),
    M("_write_backlog", write_backlog),
    M("_loop", loop),
    M("_app_reading_paused", app_reading_paused),
    M("_app_protocol_is_buffer", app_is_buffer),
    M("_app_protocol_get_buffer", app_get_buffer),
    M("_app_protocol_buffer_updated", app_buffer_updated),
    M("_ssl_writing_paused", ssl_writing_paused),
    M("_app_writing_paused", app_writing_paused),
    M("_ssl_reading_paused", ssl_reading_paused),
    M("_write_buffer_size", write_buffer_size),
    M("_outgoing_high_water", out_high),
    M("_outgoing_low_water", out_low),
    M("_incoming_high_water", in_high),
    M("_incoming_low_water", in_low),
    M("_ssl_buffer", ssl_buffer),
    M("_ssl_buffer_view", ssl_buffer_view),
    {NULL, 0, 0, 0, NULL},
};
#undef M

static int proto_traverse(PyObject *self, visitproc visit, void *arg)
{
    PyObject **f = &PROTO(self)->state;
    for (int i = 0; i < NFIELDS + 3; i++)
        Py_VISIT(f[i]);
    return 0;
}

static int proto_clear(PyObject *self)
{
    PyObject **f = &PROTO(self)->state;
    for (int i = 0; i < NFIELDS + 3; i++)
        Py_CLEAR(f[i]);
    return 0;
}

static void proto_dealloc(PyObject *self)
{
    PyObject_GC_UnTrack(self);
    proto_clear(self);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject ProtoCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "uringloop._sched.SSLProtocolCore",
    .tp_basicsize = sizeof(Proto),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "C base of uringloop.transports.tls.SSLProtocol (see _core/sslcore.c)",
    .tp_methods = proto_methods,
    .tp_members = proto_members,
    .tp_traverse = proto_traverse,
    .tp_clear = proto_clear,
    .tp_dealloc = proto_dealloc,
};

/* ---- SSLTransportCore */

/* the stock _write_appdata((data,)) */
static PyObject *write_slow(PyObject *proto, PyObject *data)
{
    PyObject *t = PyTuple_Pack(1, data);
    if (t == NULL)
        return NULL;
    PyObject *r = call1(proto, s_write_appdata, t);
    Py_DECREF(t);
    return r;
}

/* stock: data goes into the backlog (and its size) before the write */
static int backlog_add(PyObject *proto, PyObject *data, Py_ssize_t n)
{
    PyObject *backlog = F(proto, write_backlog, s_write_backlog);
    PyObject *r = backlog == NULL ? NULL : call1(backlog, s_append, data);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    PyObject *size = F(proto, write_buffer_size, s_write_buffer_size);
    if (size == NULL)
        return -1;
    PyObject *add = PyLong_FromSsize_t(n);
    PyObject *sum = add == NULL ? NULL : PyNumber_Add(size, add);
    Py_XDECREF(add);
    if (sum == NULL)
        return -1;
    int e = PyObject_SetAttr(proto, s_write_buffer_size, sum);
    Py_DECREF(sum);
    return e;
}

/* SSLObject.write() returned something other than an exact int (an
 * sslobject_class's write): the stock _do_write's steps with that object,
 * from the backlog that holds data (decision 403):
 *   if count < len(data): backlog[0] = data[count:]; size -= count
 *   else: del backlog[0]; size -= len(data)
 * then the rest of the loop (_do_write) or _process_outgoing. 0 or -1. */
static int write_count_odd(PyObject *proto, PyObject *data, Py_ssize_t n, PyObject *count)
{
    if (backlog_add(proto, data, n) < 0)
        return -1;
    PyObject *len = PyLong_FromSsize_t(n);
    int lt = len == NULL ? -1 : PyObject_RichCompareBool(count, len, Py_LT);
    Py_XDECREF(len);
    if (lt < 0)
        return -1;
    if (!lt) {
        /* all written: the backlog and its size as they were */
        PyObject *backlog = F(proto, write_backlog, s_write_backlog);
        if (backlog == NULL || PySequence_DelItem(backlog, 0) < 0)
            return -1;
        PyObject *size = F(proto, write_buffer_size, s_write_buffer_size);
        PyObject *add = size == NULL ? NULL : PyLong_FromSsize_t(n);
        PyObject *sub = add == NULL ? NULL : PyNumber_Subtract(size, add);
        Py_XDECREF(add);
        int e = sub == NULL ? -1 : PyObject_SetAttr(proto, s_write_buffer_size, sub);
        Py_XDECREF(sub);
        return e < 0 ? -1 : run0(proto, s_process_outgoing);
    }
    PyObject *slice = PySlice_New(count, Py_None, Py_None);
    PyObject *rest = slice == NULL ? NULL : PyObject_GetItem(data, slice);
    Py_XDECREF(slice);
    PyObject *backlog = rest == NULL ? NULL : F(proto, write_backlog, s_write_backlog);
    int e = backlog == NULL ? -1 : PySequence_SetItem(backlog, 0, rest);
    Py_XDECREF(rest);
    if (e < 0)
        return -1;
    PyObject *size = F(proto, write_buffer_size, s_write_buffer_size);
    PyObject *sub = size == NULL ? NULL : PyNumber_Subtract(size, count);
    e = sub == NULL ? -1 : PyObject_SetAttr(proto, s_write_buffer_size, sub);
    Py_XDECREF(sub);
    return e < 0 ? -1 : run0(proto, s_do_write);
}

/* the part of the write after the tests: 0 or -1 */
static int write_fast(PyObject *proto, PyObject *data)
{
    /* the size first: no C-API call while the write's exception is set
     * (decision 403) */
    Py_ssize_t n = PyObject_Size(data);
    if (n < 0)
        return -1;
    PyObject *target = Py_XNewRef(proto_target(proto));
    if (target == NULL)
        return -1;
    PyObject *count = call1(target, s_write, data);
    Py_DECREF(target);
    if (count == NULL) {
        /* stock: the data was in the backlog when the write raised */
        PyObject *exc = take_exc();
        if (backlog_add(proto, data, n) < 0) {
            Py_DECREF(exc);
            return -1;
        }
        restore_exc(exc);
        if (!clear_again())
            return -1;
        /* _do_write's except SSLAgainErrors: pass, then _process_outgoing */
        return run0(proto, s_process_outgoing);
    }
    Py_ssize_t c;
    if (!exact_ssize(count, &c)) {
        int e = write_count_odd(proto, data, n, count);
        Py_DECREF(count);
        return e;
    }
    if (c < n) {
        /* a partial write: the rest is the backlog's, and the stock loop
         * goes on with it (_do_write) */
        PyObject *rest = PySequence_GetSlice(data, c, PY_SSIZE_T_MAX);
        Py_DECREF(count);
        if (rest == NULL)
            return -1;
        int e = backlog_add(proto, rest, n - c);
        Py_DECREF(rest);
        if (e < 0)
            return -1;
        return run0(proto, s_do_write);
    }
    Py_DECREF(count);
    return process_outgoing(proto);
}

static PyObject *transport_write(PyObject *self, PyObject *data)
{
    if (!PyBytes_Check(data) && !PyByteArray_Check(data) && !PyMemoryView_Check(data)) {
        PyObject *name = PyType_GetName(Py_TYPE(data));
        if (name != NULL) {
            PyErr_Format(PyExc_TypeError, "data: expecting a bytes-like instance, got %U", name);
            Py_DECREF(name);
        }
        return NULL;
    }
    int t = PyObject_IsTrue(data);
    if (t <= 0)
        return t < 0 ? NULL : Py_NewRef(Py_None);
    PyObject *proto = PyObject_GetAttr(self, s_ssl_protocol);
    if (proto == NULL)
        return NULL;
    PyObject *r = NULL;
    if (!PyObject_TypeCheck(proto, &ProtoCoreType)) {
        r = write_slow(proto, data);
        goto done;
    }
    int backlog, wpaused;
    if ((backlog = T(proto, write_backlog, s_write_backlog)) < 0 ||
        (wpaused = T(proto, ssl_writing_paused, s_ssl_writing_paused)) < 0)
        goto done;
    if (PROTO(proto)->state != C.wrapped || backlog || wpaused) {
        r = write_slow(proto, data);
        goto done;
    }
    if (write_fast(proto, data) < 0 && catch_fatal(proto) < 0)
        goto done;
    r = Py_NewRef(Py_None);
done:
    Py_DECREF(proto);
    return r;
}

static PyMethodDef transport_methods[] = {
    {"write", transport_write, METH_O,
     "the SSL app transport's write; the WRAPPED state's in C (decision 395)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TransportCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "uringloop._sched.SSLTransportCore",
    .tp_basicsize = sizeof(PyObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "C mixin of uringloop.transports.tls's app transport (see _core/sslcore.c)",
    .tp_methods = transport_methods,
};

/* ssl_setup(states, again_errors, sslobject_type, stock_get_buffer): states
 * is (WRAPPED, DO_HANDSHAKE, FLUSHING, SHUTDOWN) */
static PyObject *ssl_setup(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 4 || !PyTuple_Check(args[0]) || PyTuple_GET_SIZE(args[0]) != 4 ||
        !PyTuple_Check(args[1]) || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "ssl_setup(states, again_errors, sslobject_type, stock_get_buffer)");
        return NULL;
    }
    Py_XSETREF(C.wrapped, Py_NewRef(PyTuple_GET_ITEM(args[0], 0)));
    Py_XSETREF(C.do_handshake_st, Py_NewRef(PyTuple_GET_ITEM(args[0], 1)));
    Py_XSETREF(C.flushing, Py_NewRef(PyTuple_GET_ITEM(args[0], 2)));
    Py_XSETREF(C.shutdown, Py_NewRef(PyTuple_GET_ITEM(args[0], 3)));
    Py_XSETREF(C.again, Py_NewRef(args[1]));
    Py_XSETREF(C.sslobject, Py_NewRef(args[2]));
    Py_XSETREF(C.stock_get_buffer, Py_NewRef(args[3]));
    Py_RETURN_NONE;
}

static PyMethodDef setup_def = {
    "ssl_setup", (PyCFunction)(void (*)(void))ssl_setup, METH_FASTCALL,
    "ssl_setup(states, again_errors, sslobject_type, stock_get_buffer): tls.py, at import"};

#define SSL_INTERN(var, text) \
    if (!(var = PyUnicode_InternFromString(text))) return -1

int ul_ssl_init(PyObject *module)
{
    SSL_INTERN(s_state, "_state");
    SSL_INTERN(s_incoming, "_incoming");
    SSL_INTERN(s_outgoing, "_outgoing");
    SSL_INTERN(s_sslobj, "_sslobj");
    SSL_INTERN(s_pending, "pending");
    SSL_INTERN(s_read, "read");
    SSL_INTERN(s_write, "write");
    SSL_INTERN(s_app_reading_paused, "_app_reading_paused");
    SSL_INTERN(s_app_is_buffer, "_app_protocol_is_buffer");
    SSL_INTERN(s_app_protocol, "_app_protocol");
    SSL_INTERN(s_data_received, "data_received");
    SSL_INTERN(s_app_get_buffer, "_app_protocol_get_buffer");
    SSL_INTERN(s_app_buffer_updated, "_app_protocol_buffer_updated");
    SSL_INTERN(s_write_backlog, "_write_backlog");
    SSL_INTERN(s_do_write, "_do_write");
    SSL_INTERN(s_ssl_writing_paused, "_ssl_writing_paused");
    SSL_INTERN(s_transport, "_transport");
    SSL_INTERN(s_control_app_writing, "_control_app_writing");
    SSL_INTERN(s_control_ssl_reading, "_control_ssl_reading");
    SSL_INTERN(s_write_buffer_size, "_write_buffer_size");
    SSL_INTERN(s_out_high, "_outgoing_high_water");
    SSL_INTERN(s_out_low, "_outgoing_low_water");
    SSL_INTERN(s_app_writing_paused, "_app_writing_paused");
    SSL_INTERN(s_in_high, "_incoming_high_water");
    SSL_INTERN(s_in_low, "_incoming_low_water");
    SSL_INTERN(s_ssl_reading_paused, "_ssl_reading_paused");
    SSL_INTERN(s_fatal_error, "_fatal_error");
    SSL_INTERN(s_call_eof_received, "_call_eof_received");
    SSL_INTERN(s_start_shutdown, "_start_shutdown");
    SSL_INTERN(s_loop, "_loop");
    SSL_INTERN(s_call_soon, "call_soon");
    SSL_INTERN(s_do_read, "_do_read");
    SSL_INTERN(s_max_size, "max_size");
    SSL_INTERN(s_ssl_buffer, "_ssl_buffer");
    SSL_INTERN(s_ssl_buffer_view, "_ssl_buffer_view");
    SSL_INTERN(s_do_handshake, "_do_handshake");
    SSL_INTERN(s_do_flush, "_do_flush");
    SSL_INTERN(s_do_shutdown, "_do_shutdown");
    SSL_INTERN(s_ssl_protocol, "_ssl_protocol");
    SSL_INTERN(s_write_appdata, "_write_appdata");
    SSL_INTERN(s_process_outgoing, "_process_outgoing");
    SSL_INTERN(s_join, "join");
    SSL_INTERN(s_append, "append");
    if (!(C.msg = PyUnicode_InternFromString("Fatal error on SSL protocol")) ||
        !(C.empty = PyBytes_FromStringAndSize(NULL, 0)) ||
        !(C.read_cap = PyLong_FromLong(READ_CAP)))
        return -1;
    /* as a class statement's type: object.__new__ */
    ProtoCoreType.tp_new = PyBaseObject_Type.tp_new;
    TransportCoreType.tp_new = PyBaseObject_Type.tp_new;
    if (PyType_Ready(&ProtoCoreType) < 0 || PyType_Ready(&TransportCoreType) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "SSLProtocolCore", (PyObject *)&ProtoCoreType) < 0 ||
        PyModule_AddObjectRef(module, "SSLTransportCore", (PyObject *)&TransportCoreType) < 0)
        return -1;
    PyObject *f = PyCFunction_NewEx(&setup_def, NULL, NULL);
    if (f == NULL)
        return -1;
    int e = PyModule_AddObjectRef(module, "ssl_setup", f);
    Py_DECREF(f);
    return e;
}

#else /* 3.10: tls.py is not used */

int ul_ssl_init(PyObject *module)
{
    (void)module;
    return 0;
}

#endif
