/* The sock_* hot steps in C (decisions 320-324); included by sched.c.
 *
 * uringloop/sock.py keeps the sock_* coroutines and every cold path (kept
 * results of cancelled ops, the fd-reuse claim, big and datagram receives,
 * sends in the engine, errors). Its two hottest steps are here, each a plain
 * function that either does the whole step or does nothing and says so
 * (returns None / -1), so sock.py then runs its Python path unchanged:
 *
 *  - recv_start(loop, sock, n_or_buffer): sock_recv/sock_recv_into of a
 *    stream socket with nothing unusual about it: the checks of _sock_fd, no
 *    kept state for fd, the socket is the one last seen on fd, 0 < n <= a
 *    pool buffer (any n > 0 for sock_recv on a socket that is not a datagram
 *    socket: a big receive, registered in _big_recvs as sock.py's path does,
 *    decision 355), no big receive in flight on fd (_big_recvs);
 *    then the _OpFuture and the one-shot pool receive, as _sock_op and
 *    Engine.recv would make them. Returns the future (the op submitted).
 *  - send_now(loop, sock, data): sock_sendall's first step when none of
 *    ours is queued on the socket: the checks of _sock_fd, then one send(2),
 *    as the stock loop's sock.send(data). Returns None when all of data went
 *    out, else the bytes that did (0 for EAGAIN); raises what sock.send
 *    raises.
 *    A big sock_recv on a socket in _wide_socks (its last big receive brought
 *    more than a pool buffer, less than its n; n at most READY_MAX) submits
 *    a one-shot POLLIN poll instead, its future's converter _ready_result
 *    and _big_recvs[fd] the _POLLING mark; sock.py receives into the result
 *    once it is readable (decision 675). A big sock_recv on a socket whose
 *    last big receive filled its n (_big_socks, not wide) makes decision
 *    351's inline recv(n) here and returns the bytes themselves (678).
 *  - recv_after(fd, data, k): a big sock_recv's rest, received in place
 *    after its first pool buffer's bytes (decision 337).
 *  - recv_now(fd, n): a big sock_recv on a socket whose receives come big,
 *    received into the result itself (decision 351).
 *
 * The first two read the socket object's fd (its type, its timeout) in place: the
 * layout of socketmodule's PySocketSockObject (fd first, then family, type,
 * proto, the error handler and the timeout in ns) is checked once at setup
 * against probe sockets, and without it both always say "not here".
 */

static struct {
    PyTypeObject *socket_type; /* socket.socket: the only type taken here */
    PyObject *big_recvs;       /* sock.py's _big_recvs */
    PyObject *big_socks;       /* sock.py's _big_socks */
    PyObject *recv_result;     /* sock.py's _recv_result: a fast receive's converter */
    PyObject *wide_socks;      /* sock.py's _wide_socks (a set of fds; decision 675) */
    PyObject *polling;         /* sock.py's _POLLING: _big_recvs' mark of a waiting poll */
    PyObject *ready_result;    /* sock.py's _ready_result: the converter that marks a poll */
    PyObject *s_data;          /* "data" (WeakValueDictionary.data) */
    Py_ssize_t off_fd, off_sock, off_convert, off_track, off_ud; /* _OpFuture's slots */
    Py_ssize_t off_timeout;    /* PySocketSockObject.sock_timeout */
    int layout;                /* the probes agreed: fd and timeout are read in place */
    unsigned long long recvs, sends, polls, nows; /* steps taken here (tests read them) */
} K;

static inline int sock_fd_of(PyObject *sock)
{
    return *(int *)((char *)sock + sizeof(PyObject));
}

static inline int sock_type_of(PyObject *sock)
{
    return *(int *)((char *)sock + sizeof(PyObject) + 2 * sizeof(int));
}

static inline int64_t sock_timeout_of(PyObject *sock)
{
    return *(int64_t *)((char *)sock + K.off_timeout);
}

/* What _sock_fd and the step's own checks ask, in C. 1: the fast step may
 * go on with fd; 0: the Python path (which raises where it must); -1 error. */
static int sock_usual(Core *self, PyObject *sock, int *fd)
{
    if (!K.layout || !Py_IS_TYPE(sock, K.socket_type) || self->debug != Py_False ||
        self->closed != Py_False || self->table == NULL || self->table->engine == NULL ||
        self->transports == NULL || self->sock_state == NULL || self->sock_owner == NULL ||
        self->sock_sending == NULL || !PyDict_CheckExact(self->sock_state) ||
        !PyDict_CheckExact(self->sock_owner) || !PyDict_CheckExact(self->sock_sending))
        return 0;
    *fd = sock_fd_of(sock);
    if (*fd < 0)
        return 0;
    /* a socket a transport owns: _ensure_fd_no_transport raises */
    if (*fd < fd_streams_cap && fd_streams[*fd] != NULL &&
        (PyObject *)fd_streams[*fd]->loop == (PyObject *)self &&
        fd_streams[*fd]->transport != NULL)
        return 0;
    PyObject *data = PyObject_GetAttr(self->transports, K.s_data);
    if (data == NULL)
        return -1;
    int r = 1;
    if (!PyDict_CheckExact(data)) {
        r = 0;
    } else if (PyDict_GET_SIZE(data)) {
        PyObject *key = PyLong_FromLong(*fd);
        int in = key ? PyDict_Contains(data, key) : -1;
        r = in < 0 ? -1 : !in;
        Py_XDECREF(key);
    }
    Py_DECREF(data);
    return r;
}

/* What the weak reference ref points at, for comparing only (no reference
 * is kept): NULL when it is gone. 0, or -1 with an exception set. */
static int weakref_peek(PyObject *ref, PyObject **obj)
{
#if PY_VERSION_HEX >= 0x030D0000
    if (PyWeakref_GetRef(ref, obj) < 0)
        return -1;
    Py_XDECREF(*obj);
#else
    *obj = PyWeakref_GET_OBJECT(ref);
    if (*obj == Py_None)
        *obj = NULL;
#endif
    return 0;
}

/* owners.get(fd) is a weak reference to sock (sched.c owner_is). When no
 * socket was seen on fd yet, or the one seen there is gone (collected),
 * sock is now the owner: what _sock_claim does then, given no kept state on
 * fd (the caller checked), with no old socket whose ops it would cancel. */
static int sock_owner_is(PyObject *owners, PyObject *key, PyObject *sock)
{
    PyObject *ref = PyDict_GetItemWithError(owners, key); /* borrowed */
    if (ref == NULL && PyErr_Occurred())
        return -1;
    if (ref != NULL) {
        if (!PyWeakref_CheckRef(ref))
            return 0;
        PyObject *obj;
        if (weakref_peek(ref, &obj) < 0)
            return -1;
        if (obj != NULL)
            return obj == sock;
    }
    if ((ref = PyWeakref_NewRef(sock, NULL)) == NULL)
        return -1;
    int r = PyDict_SetItem(owners, key, ref);
    Py_DECREF(ref);
    return r < 0 ? -1 : 1;
}

/* Is sock the socket _big_socks names for key (its last receive above a
 * pool buffer filled its n, decision 351)? 1 yes, 0 no, -1 error. */
static int sock_big_is(PyObject *key, PyObject *sock)
{
    PyObject *ref = PyDict_GetItemWithError(K.big_socks, key), *obj; /* borrowed */
    if (ref == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyWeakref_CheckRef(ref))
        return 0;
    return weakref_peek(ref, &obj) < 0 ? -1 : obj == sock;
}

/* sock.py's _READY_MAX: a wide receive of more waits in a pool buffer */
#define READY_MAX (1 << 20)

static PyObject *recv_now_fd(int fd, Py_ssize_t n);

/* What sock.py's _sock_big_done does after the inline try of a socket whose
 * _big_socks entry names it and which is not in _wide_socks: k bytes came
 * of n. 0, or -1 with an exception set. */
static int sock_big_done(PyObject *key, Py_ssize_t n, Py_ssize_t k, Py_ssize_t bufsize)
{
    if (k == n)
        return 0; /* filled again: the entry stays */
    if (k > bufsize && n <= READY_MAX)
        return PySet_Add(K.wide_socks, key);
    return PyDict_DelItem(K.big_socks, key);
}

/* recv_start(loop, sock, n or a writable buffer) -> the op's _OpFuture, the
 * received bytes (a big sock_recv's inline try found them), or None: take
 * sock.py's path */
static PyObject *sock_recv_start(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3 || !PyObject_TypeCheck(args[0], &CoreType)) {
        PyErr_SetString(PyExc_TypeError, "recv_start(loop, sock, n)");
        return NULL;
    }
    Core *self = (Core *)args[0];
    PyObject *sock = args[1], *arg = args[2];
    int fd;
    int r = sock_usual(self, sock, &fd);
    if (r <= 0)
        return r < 0 ? NULL : Py_NewRef(Py_None);
    Table *t = self->table;
    Py_ssize_t n;
    int big = 0;
    if (PyLong_CheckExact(arg)) {
        n = PyLong_AsSsize_t(arg);
        if (n == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            Py_RETURN_NONE;
        }
        /* sock_recv(n) above a pool buffer: a buffer's worth, then the rest
         * that is there (sock.py); a datagram comes whole, never this way */
        big = n > t->buf_size;
        if (big && sock_type_of(sock) == SOCK_DGRAM)
            Py_RETURN_NONE;
    } else {
        Py_buffer v;
        if (PyObject_GetBuffer(arg, &v, PyBUF_WRITABLE) < 0) {
            PyErr_Clear(); /* sock.py raises the stock TypeError */
            Py_RETURN_NONE;
        }
        n = v.len;
        PyBuffer_Release(&v);
    }
    if (n <= 0 || (n > t->buf_size && !big))
        Py_RETURN_NONE;
    PyObject *key = PyLong_FromLong(fd);
    if (key == NULL)
        return NULL;
    /* kept results (or a cancelled op still to end) on fd; a big receive in
     * flight on fd (it must see that a later receive was asked for); another
     * socket last seen on fd (the claim of decision 41); a big receive on a
     * socket whose last one filled its n (the inline try of decision 351):
     * sock.py */
    int poll = 0, now = 0;
    r = PyDict_Contains(self->sock_state, key);
    if (r == 0 && big && PyDict_GET_SIZE(K.big_socks)) {
        r = sock_big_is(key, sock);
        /* its last big receive came short of n but past a pool buffer: wait
         * for readiness here, receive into the result in sock.py; it filled
         * its n: the inline recv(n) of decision 351, here (678) */
        if (r > 0 && K.wide_socks != NULL) {
            int w = PySet_Contains(K.wide_socks, key);
            if (w < 0)
                r = -1;
            else if (w == 0)
                now = 1, r = 0;
            else if (n <= READY_MAX)
                poll = 1, r = 0;
            /* a receive asked before this one waits in the engine: a
             * recv(n) here (351) or a poll's (675) would take bytes before
             * it, so this one takes its turn as a pool receive (689) */
            if ((now | poll) && t->recv_busy(t->engine, fd))
                now = poll = 0;
        }
    }
    if (r == 0 && PyDict_GET_SIZE(K.big_recvs))
        r = PyDict_Contains(K.big_recvs, key);
    if (r == 0)
        r = sock_owner_is(self->sock_owner, key, sock);
    else if (r > 0)
        r = 0;
    if (r <= 0) {
        Py_DECREF(key);
        return r < 0 ? NULL : Py_NewRef(Py_None);
    }
    if (now) {
        /* what is there now, into the result (sock_recv returns it as it
         * is); only EAGAIN goes on to the pool receive, as in sock.py */
        PyObject *data = recv_now_fd(fd, n);
        if (data != Py_None) {
            if (data != NULL &&
                sock_big_done(key, n, PyBytes_GET_SIZE(data), t->buf_size) < 0)
                Py_CLEAR(data);
            Py_DECREF(key);
            if (data != NULL)
                K.nows++;
            return data;
        }
        Py_DECREF(data);
    }
    if (self->future_kw == NULL && make_kw(self, 0) < 0) {
        Py_DECREF(key);
        return NULL;
    }
    PyObject *fut = PyObject_Call((PyObject *)S.op_future_type, S.empty_tuple, self->future_kw);
    if (fut == NULL) {
        Py_DECREF(key);
        return NULL;
    }
    slot_put(fut, K.off_fd, key);
    slot_put(fut, K.off_sock, sock);
    /* a poll takes no byte: nothing is owed after a cancel (track False) */
    slot_put(fut, K.off_convert, poll ? K.ready_result : K.recv_result);
    slot_put(fut, K.off_track, poll ? Py_False : Py_True);
    slot_put(fut, K.off_ud, Py_None);
    if (poll) {
        if (PyDict_SetItem(K.big_recvs, key, K.polling) < 0) {
            Py_DECREF(key);
            Py_DECREF(fut);
            return NULL;
        }
        uint64_t pud = table_take(t, fut, NULL, 0);
        PyObject *pudo = pud ? submitted(t, pud, t->poll(t->engine, pud, fd, POLLIN, 0)) : NULL;
        if (pudo == NULL) {
            PyObject *exc = take_exception();
            if (PyDict_DelItem(K.big_recvs, key) < 0)
                PyErr_Clear();
            give_exception(exc);
            Py_DECREF(key);
            Py_DECREF(fut);
            return NULL;
        }
        Py_DECREF(key);
        slot_put(fut, K.off_ud, pudo);
        Py_DECREF(pudo);
        K.recvs++;
        K.polls++;
        return fut;
    }
    /* a big receive is noted in _big_recvs before it is submitted (the only
     * step that may fail); its user_data replaces the None after, which
     * cannot fail: the key is there */
    if (big && PyDict_SetItem(K.big_recvs, key, Py_None) < 0) {
        Py_DECREF(key);
        Py_DECREF(fut);
        return NULL;
    }
    uint64_t ud = table_take(t, fut, NULL, 0);
    PyObject *udo = ud ? submitted(t, ud, t->recv(t->engine, ud, fd, 0, big ? 0 : (uint32_t)n))
                       : NULL;
    if (udo == NULL) {
        if (big) {
            PyObject *exc = take_exception();
            if (PyDict_DelItem(K.big_recvs, key) < 0)
                PyErr_Clear();
            give_exception(exc);
        }
        Py_DECREF(key);
        Py_DECREF(fut);
        return NULL;
    }
    if (big)
        (void)PyDict_SetItem(K.big_recvs, key, udo);
    Py_DECREF(key);
    slot_put(fut, K.off_ud, udo);
    Py_DECREF(udo);
    K.recvs++;
    return fut;
}

/* send_now(loop, sock, data) -> None (all of data went out), the bytes that
 * did (an int, 0 for EAGAIN: the rest goes to the engine), or -1: nothing was
 * tried here, take sock.py's path */
static PyObject *sock_send_now(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3 || !PyObject_TypeCheck(args[0], &CoreType)) {
        PyErr_SetString(PyExc_TypeError, "send_now(loop, sock, data)");
        return NULL;
    }
    Core *self = (Core *)args[0];
    PyObject *sock = args[1];
    int fd;
    int r = sock_usual(self, sock, &fd);
    if (r <= 0)
        return r < 0 ? NULL : PyLong_FromLong(-1);
    /* a blocking socket or one with a timeout: sock.send's own waiting */
    if (sock_timeout_of(sock) != 0)
        return PyLong_FromLong(-1);
    /* sends of ours in the engine on this socket: the rest queues behind them */
    PyObject *q = PyDict_GetItemWithError(self->sock_sending, sock);
    if (q == NULL && PyErr_Occurred())
        return NULL;
    if (q != NULL && (r = PyObject_IsTrue(q)) != 0)
        return r < 0 ? NULL : PyLong_FromLong(-1);
    Py_buffer v;
    if (PyObject_GetBuffer(args[2], &v, PyBUF_SIMPLE) < 0) {
        PyErr_Clear(); /* sock.send raises the stock TypeError */
        return PyLong_FromLong(-1);
    }
    ssize_t sent;
    for (;;) {
        sent = send(fd, v.buf, (size_t)v.len, 0);
        if (sent >= 0)
            break;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            sent = 0;
            break;
        }
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            PyBuffer_Release(&v);
            return NULL;
        }
        if (PyErr_CheckSignals() < 0) { /* as sock.send: a handler may raise */
            PyBuffer_Release(&v);
            return NULL;
        }
    }
    Py_ssize_t len = v.len;
    PyBuffer_Release(&v);
    K.sends++;
    if (sent == len)
        Py_RETURN_NONE;
    return PyLong_FromSsize_t(sent);
}

/* recv_after(fd, data, k): data (bytes) followed by what the stream socket
 * fd holds now, up to k more bytes (one recv, MSG_DONTWAIT), as one new
 * bytes: the rest is received in place, not into a bytes of its own that is
 * then joined to data (decision 337). data itself when nothing more is
 * there (EAGAIN), at EOF (the next receive meets it again), or when k more
 * bytes cannot be allocated (decision 419); OSError for any other error.
 * The caller checks that fd is still its socket's. */
static PyObject *recv_after(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    int fd;
    Py_ssize_t k;
    if (nargs != 3 || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "recv_after(fd, data: bytes, k)");
        return NULL;
    }
    if (as_int(args[0], &fd) < 0)
        return NULL;
    if ((k = PyLong_AsSsize_t(args[2])) == -1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear(); /* a sock_recv(n) past ssize_t: as much as fits */
        k = PY_SSIZE_T_MAX;
    }
    if (k <= 0)
        return Py_NewRef(args[1]);
    Py_ssize_t n0 = PyBytes_GET_SIZE(args[1]);
    if (k > PY_SSIZE_T_MAX - n0)
        k = PY_SSIZE_T_MAX - n0;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n0 + k);
    if (out == NULL) {
        /* no room for n (sock_recv(2**40)): data's bytes are off the socket
         * already, so they are the result (decision 419); the stock loop's
         * recv(n) fails before it reads anything */
        if (!PyErr_ExceptionMatches(PyExc_MemoryError) &&
            !PyErr_ExceptionMatches(PyExc_OverflowError))
            return NULL;
        PyErr_Clear();
        return Py_NewRef(args[1]);
    }
    memcpy(PyBytes_AS_STRING(out), PyBytes_AS_STRING(args[1]), (size_t)n0);
    ssize_t got;
    do
        got = recv(fd, PyBytes_AS_STRING(out) + n0, (size_t)k, MSG_DONTWAIT);
    while (got < 0 && errno == EINTR);
    if (got <= 0) {
        Py_DECREF(out);
        if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return PyErr_SetFromErrno(PyExc_OSError);
        return Py_NewRef(args[1]);
    }
    if (got < k && _PyBytes_Resize(&out, n0 + got) < 0)
        return NULL;
    return out;
}

/* recv_now(fd, n): one recv(n) of the stream socket fd without waiting,
 * into a bytes of n made smaller to what came, as the socket module's
 * recv(n) does it: b"" at EOF, None when nothing is there (EAGAIN), OSError
 * for any other error (decision 351). */
static PyObject *recv_now(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    int fd;
    Py_ssize_t n;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "recv_now(fd, n)");
        return NULL;
    }
    if (as_int(args[0], &fd) < 0 || ((n = PyLong_AsSsize_t(args[1])) == -1 && PyErr_Occurred()))
        return NULL;
    return recv_now_fd(fd, n);
}

static PyObject *recv_now_fd(int fd, Py_ssize_t n)
{
    PyObject *out = PyBytes_FromStringAndSize(NULL, n > 0 ? n : 0);
    if (out == NULL)
        return NULL;
    ssize_t got;
    do
        got = recv(fd, PyBytes_AS_STRING(out), (size_t)PyBytes_GET_SIZE(out), MSG_DONTWAIT);
    while (got < 0 && errno == EINTR);
    if (got < 0) {
        Py_DECREF(out);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (got < PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, got) < 0)
        return NULL;
    return out;
}

/* sock_setup(socket.socket, _big_recvs, _big_socks, _recv_result, nonblocking, timed
 * [, _wide_socks, _POLLING, _ready_result]): nonblocking and timed are
 * connected sockets of socket.socket, one with timeout 0, one with 2.5 s, to
 * check the layout read in place; without the last three no poll starts here */
static PyObject *sock_setup(PyObject *mod, PyObject *args)
{
    (void)mod;
    PyObject *type, *big, *big_socks, *recv_result, *nb, *timed;
    PyObject *wide = NULL, *polling = NULL, *ready_result = NULL;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO|O!OO:sock_setup", &PyType_Type, &type, &PyDict_Type,
                          &big, &PyDict_Type, &big_socks, &recv_result, &nb, &timed, &PySet_Type,
                          &wide, &polling, &ready_result))
        return NULL;
    if (wide != NULL && (polling == NULL || ready_result == NULL)) {
        PyErr_SetString(PyExc_TypeError, "sock_setup: _wide_socks needs _POLLING and _ready_result");
        return NULL;
    }
    if (S.op_future_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "sock_setup: setup() first");
        return NULL;
    }
    if (slot_offset(S.op_future_type, "_fd", &K.off_fd) < 0 ||
        slot_offset(S.op_future_type, "_sock", &K.off_sock) < 0 ||
        slot_offset(S.op_future_type, "_convert", &K.off_convert) < 0 ||
        slot_offset(S.op_future_type, "_track", &K.off_track) < 0 ||
        slot_offset(S.op_future_type, "_ud", &K.off_ud) < 0)
        return NULL;
    if (K.s_data == NULL && (K.s_data = PyUnicode_InternFromString("data")) == NULL)
        return NULL;
    Py_XSETREF(K.socket_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(K.big_recvs, Py_NewRef(big));
    Py_XSETREF(K.big_socks, Py_NewRef(big_socks));
    Py_XSETREF(K.recv_result, Py_NewRef(recv_result));
    Py_XSETREF(K.wide_socks, Py_XNewRef(wide));
    Py_XSETREF(K.polling, Py_XNewRef(polling));
    Py_XSETREF(K.ready_result, Py_XNewRef(ready_result));
    K.layout = 0;
    /* family, the int after the fd: a member; the timeout comes after proto
     * and the error handler's pointer */
    Py_ssize_t off_fam = -1, off_type = -1, off_proto = -1;
    /* socket.socket's family is a property: the C members are _socket.socket's */
    PyObject *base = (PyObject *)((PyTypeObject *)type)->tp_base;
    const char *names[3] = {"family", "type", "proto"};
    Py_ssize_t *offs[3] = {&off_fam, &off_type, &off_proto};
    for (int i = 0; i < 3; i++) {
        PyObject *m = base ? PyObject_GetAttrString(base, names[i]) : NULL;
        if (m != NULL && Py_IS_TYPE(m, &PyMemberDescr_Type))
            *offs[i] = ((PyMemberDescrObject *)m)->d_member->offset;
        Py_XDECREF(m);
    }
    PyErr_Clear();
    if (off_fam != (Py_ssize_t)(sizeof(PyObject) + sizeof(int)) ||
        off_type != off_fam + (Py_ssize_t)sizeof(int) || off_proto < off_type ||
        !Py_IS_TYPE(nb, (PyTypeObject *)type) || !Py_IS_TYPE(timed, (PyTypeObject *)type))
        Py_RETURN_FALSE;
    Py_ssize_t ptr = (Py_ssize_t)sizeof(void *);
    K.off_timeout = (off_proto + (Py_ssize_t)sizeof(int) + ptr - 1) / ptr * ptr + ptr;
    if ((size_t)K.off_timeout + sizeof(int64_t) > (size_t)((PyTypeObject *)type)->tp_basicsize)
        Py_RETURN_FALSE;
    int ok = 1;
    PyObject *probes[2] = {nb, timed};
    for (int i = 0; i < 2 && ok; i++) {
        PyObject *no = PyObject_CallMethod(probes[i], "fileno", NULL);
        long want = no ? PyLong_AsLong(no) : -1;
        Py_XDECREF(no);
        if (want == -1 && PyErr_Occurred())
            return NULL;
        ok = want >= 0 && sock_fd_of(probes[i]) == want;
    }
    ok = ok && sock_timeout_of(nb) == 0 && sock_timeout_of(timed) == 2500000000LL &&
         sock_type_of(nb) == SOCK_STREAM;
    K.layout = ok;
    return PyBool_FromLong(ok);
}

/* counts() -> (receives started here, first sends made here, of the receives
 * the polls of decision 675, big receives that took their bytes inline (678)) */
static PyObject *sock_counts(PyObject *mod, PyObject *unused)
{
    (void)mod;
    (void)unused;
    return Py_BuildValue("(KKKK)", K.recvs, K.sends, K.polls, K.nows);
}

static PyMethodDef sock_functions[] = {
    {"recv_after", (PyCFunction)(void (*)(void))recv_after, METH_FASTCALL,
     "recv_after(fd, data, k): data and up to k more bytes the stream socket holds now"},
    {"recv_now", (PyCFunction)(void (*)(void))recv_now, METH_FASTCALL,
     "recv_now(fd, n): up to n bytes the stream socket holds now; b'' at EOF, None if none"},
    {"recv_start", (PyCFunction)(void (*)(void))sock_recv_start, METH_FASTCALL,
     "recv_start(loop, sock, n or buffer): a sock_recv's future, or None (sock.py's path)"},
    {"send_now", (PyCFunction)(void (*)(void))sock_send_now, METH_FASTCALL,
     "send_now(loop, sock, data): None (all sent), the bytes sent, or -1 (sock.py's path)"},
    {"sock_setup", sock_setup, METH_VARARGS,
     "sock_setup(socket.socket, _big_recvs, _big_socks, _recv_result, nonblocking, timed"
     "[, _wide_socks, _POLLING, _ready_result]) -> layout ok"},
    {"sock_counts", sock_counts, METH_NOARGS,
     "sock_counts() -> (receives started in C, first sends made in C, polls of those, inline "
     "big receives)"},
    {NULL, NULL, 0, NULL},
};

static int sock_init_module(PyObject *m)
{
    return PyModule_AddFunctions(m, sock_functions);
}
