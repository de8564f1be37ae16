/* uringloop._sched: the scheduler half of the loop in C.
 *
 * Core is a base class of uringloop.Loop, placed before asyncio.BaseEventLoop
 * in its MRO. It takes over the scheduler's hot paths (call_soon, _call_soon,
 * call_at, call_later, time, _run_once, create_task; call_soon is bound once
 * per loop, see CachedMethod) while keeping everything the rest of asyncio
 * sees exactly the stock loop's:
 *
 *  - the handles ARE asyncio.events.Handle / TimerHandle instances. They are
 *    allocated here and their __slots__ filled through the offsets of the
 *    classes' own member descriptors, which is what their __init__ would do
 *    with the loop out of debug mode (no source traceback);
 *  - _ready stays a collections.deque and _scheduled a list kept in heapq's
 *    order by heapq's own sift algorithms (so equal deadlines come out in the
 *    stock order); both are ordinary attributes stored in this struct, so
 *    BaseEventLoop's Python code (close, the debug turn) works on them;
 *  - a turn is BaseEventLoop._run_once step for step; a callback runs as
 *    Handle._run runs it (context.run(callback, *args)) and one that raises is
 *    reported by uringloop.loop's copy of Handle._run's except clause.
 *
 * Anything unusual takes the stock Python code instead: debug mode (source
 * tracebacks, slow-callback timing, thread checks), a closed loop (the stock
 * error), unexpected keyword arguments, a task factory, a replaced
 * _ready/_scheduled of another type, handles that are not exact
 * Handle/TimerHandle or whose slots were deleted, a context that is not a
 * contextvars.Context.
 *
 * The I/O step calls the engine's ul_run_turn directly (its address comes from
 * cffi, Engine.native()) and delivers the completion records here too
 * (Table: the engine's slots, its hot submissions and deliver(), also what
 * Engine.dispatch uses).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "engine.h" /* ul_record, UL_F_* */
#include "handles.h" /* our Handle/TimerHandle types */
#include "dgram.h"  /* the datagram transport's hot half */
#include "sslcore.h" /* the SSL protocol's steady state */

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

typedef int (*ul_run_fn)(void *engine, int64_t timeout_ns);
#define FASTKW (METH_FASTCALL | METH_KEYWORDS)

/* set once by setup(); the interpreter has one asyncio */
static struct {
    PyTypeObject *handle_type, *timer_type, *deque_type;
    PyObject *deque_append, *deque_popleft, *heapify, *heappop;
    PyObject *base_call_soon, *base_internal_call_soon, *base_call_at;
    PyObject *base_call_later, *base_run_once, *base_create_task;
    PyObject *tasks, *tasks_dict; /* asyncio.tasks: create_task looks up tasks.Task */
    PyTypeObject *op_future_type; /* uringloop.sock._OpFuture */
    PyObject *report;    /* report(handle, exc): Handle._run's except clause */
    PyObject *run_debug; /* run_debug(loop, handle): the debug branch of a turn */
    Py_ssize_t off_callback, off_args, off_cancelled, off_loop, off_tb, off_repr;
    Py_ssize_t off_context, off_when, off_scheduled;
    double max_timeout, min_cancelled_fraction;
    Py_ssize_t min_scheduled;
    PyObject *s_time, *s_context, *s_cancelled, *s_scheduled, *s_when, *s_run;
    PyObject *s_popleft, *s_append, *s_call_at, *s_pop, *s_extend;
    PyObject *s_done, *s_set_result, *s_dispatching, *s_raise_error;
    PyObject *s_name, *s_task;
    PyObject *task_kwnames; /* ("loop", "name", "context"); 3.10: ("loop", "name") */
    PyObject *own_call_at; /* Core.call_at's descriptor */
    PyObject *own_call_soon, *s_call_soon; /* Core.call_soon's descriptor, its name */
    PyObject *context_kwnames; /* the last kwnames tuple seen to be ("context",) */
    /* handle.cancel(): the stock methods, and the loop methods they call */
    PyObject *stock_handle_cancel, *stock_timer_cancel;
    PyObject *base_get_debug, *base_timer_handle_cancelled, *base_create_future;
    PyObject *s_get_debug, *s_timer_handle_cancelled, *s_future, *loop_kwnames;
    PyObject *futures_dict; /* asyncio.futures: create_future looks up futures.Future */
    PyObject *s_cancel, *one;
    /* deque.append and deque.popleft's C functions (what their method
     * descriptors call), for an exact deque; NULL: call the descriptors */
    PyCFunction deque_append_c, deque_popleft_c;
    PyObject *stock_run; /* events.Handle._run */
    PyObject *own_time;  /* Core.time's descriptor */
    PyObject *own_get_debug; /* Core.get_debug's descriptor */
    PyObject *own_run_once, *s_run_once; /* Core._run_once's descriptor, its name */
    PyObject *own_internal_call_soon, *s_internal_call_soon; /* Core._call_soon's */
    PyObject *empty_tuple;
} S;

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))

static inline void slot_put(PyObject *o, Py_ssize_t off, PyObject *v)
{
    PyObject *old = SLOT(o, off);
    SLOT(o, off) = Py_NewRef(v);
    Py_XDECREF(old);
}

/* a TimerHandle whose slots may be read directly: ours or the stock class */
static inline int is_timer(PyObject *h)
{
    return Py_IS_TYPE(h, ul_timer_type) || Py_IS_TYPE(h, S.timer_type);
}

static inline int is_handle(PyObject *h)
{
    return Py_IS_TYPE(h, ul_handle_type) || is_timer(h) || Py_IS_TYPE(h, S.handle_type);
}

/* truth value; -1 with an exception set */
static inline int truthy(PyObject *o)
{
    if (o == Py_True)
        return 1;
    if (o == Py_False || o == Py_None)
        return 0;
    return PyObject_IsTrue(o);
}

typedef struct Table Table;

typedef struct {
    PyObject_HEAD
    PyObject *ready;      /* _ready */
    PyObject *scheduled;  /* _scheduled */
    PyObject *stopping;   /* _stopping */
    PyObject *debug;      /* _debug */
    PyObject *closed;     /* _closed */
    PyObject *tcc;        /* _timer_cancelled_count */
    PyObject *clock_res;  /* _clock_resolution */
    PyObject *task_factory; /* _task_factory */
    PyObject *engine_obj; /* the Engine, while attached */
    Table *table;         /* its slots and entry points; table->engine is NULL once closed */
    PyObject *report;     /* report(exc): a completion callback raised */
    PyObject *bound_call_soon; /* loop.call_soon, made once (see CachedMethod) */
    PyObject *dirty;      /* _dirty: transports with writes to flush before the wait */
    int in_batch;         /* the native turn is delivering records (stream.c) */
    Py_ssize_t batch_ready; /* ... and len(_ready) was this when it began */
    /* either turn (the Python one too, _sched_early) is delivering a batch
     * whose poll found batch_ready callbacks in _ready; batch_seq counts the
     * batches (a reader's first record of one: decision 454) */
    int batching;
    unsigned int batch_seq;
    /* 1 + how many of _ready the stock turn would run after the native
     * turn's last batch (what was there at the poll, the readers' handles
     * and the timers collected early: not what the batch's callbacks
     * scheduled), until the turn reads it; 0: no batch (decision 455) */
    Py_ssize_t batch_cut;
    /* timers due after the wait, moved to _ready before the batch's records
     * were delivered (decision 414), while it is delivered; else 0. A reader's
     * handle (a held record's drain, an add_reader callback) goes in at
     * io_pos, before them, as stock's _process_events queues it. */
    Py_ssize_t pre_timers, io_pos;
    int patched;          /* an instance attribute replaced a method handles call */
    int looping;          /* inside Loop.run_forever: _run_once runs turns until a stop */
    int depth;            /* _run_once calls in progress (a callback may call it) */
    unsigned int stock_debug_tag; /* type version tag seen with the stock get_debug */
    unsigned int turns;   /* turns run (_turns: the Acceptor's budget, decision 314;
                           * _run_once's loop runs signal handlers every 32) */
    unsigned int own_time_tag; /* type version tag seen with Core.time */
    int time_patched;     /* an instance attribute named time was set */
    int run_once_patched; /* an instance attribute named _run_once was set */
    int soon_patched;     /* an instance attribute named call_soon was set (1009) */
    unsigned int run_once_tag; /* type version tag seen with Core._run_once */
    /* {"loop": self} and {"loop": self, "name": None[, "context": None]}:
     * the keyword arguments of futures.Future/tasks.Task, made once (a call
     * with keyword names would build this dict on every call) */
    PyObject *future_kw, *task_kw;
    /* what the sock_* hot steps read (sock.c): _transports, _sock_state,
     * _sock_owner, _sock_sending */
    PyObject *transports, *sock_state, *sock_owner, *sock_sending;
} Core;

static int io_place(Core *self, PyObject *h);

/* ------------------------------------------------------------ helpers */

static PyObject *field(Core *self, PyObject *v, const char *name)
{
    if (v == NULL)
        PyErr_Format(PyExc_AttributeError, "'%.100s' object has no attribute '%s'",
                     Py_TYPE(self)->tp_name, name);
    return v;
}

/* fn(self, *args, **kw): the stock Python method */
static PyObject *delegate(PyObject *fn, Core *self, PyObject *const *args,
                          Py_ssize_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject *small[8], **stack = small, *res;

    if (total + 1 > 8) {
        stack = PyMem_Malloc((size_t)(total + 1) * sizeof(PyObject *));
        if (stack == NULL)
            return PyErr_NoMemory();
    }
    stack[0] = (PyObject *)self;
    for (Py_ssize_t i = 0; i < total; i++)
        stack[i + 1] = args[i];
    res = PyObject_Vectorcall(fn, stack, nargs + 1, kwnames);
    if (stack != small)
        PyMem_Free(stack);
    return res;
}

/* keyword arguments: none, or exactly context=. 0 ok, -1 anything else. */
static int parse_context(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                         PyObject **ctx)
{
    *ctx = NULL;
    if (kwnames == NULL || PyTuple_GET_SIZE(kwnames) == 0)
        return 0;
    if (PyTuple_GET_SIZE(kwnames) != 1)
        return -1;
    if (kwnames != S.context_kwnames) {
        /* callers pass the same kwnames tuple every time (a code object's
         * constant, _asyncio's own): remember the last one that matched */
        PyObject *k = PyTuple_GET_ITEM(kwnames, 0);
        if (k != S.s_context && !(PyUnicode_Check(k) && PyUnicode_Compare(k, S.s_context) == 0))
            return -1;
        Py_XSETREF(S.context_kwnames, Py_NewRef(kwnames));
    }
    *ctx = args[nargs];
    return 0;
}

/* the stock fast path applies: open loop, not in debug mode, stock containers */
static int plain(Core *self)
{
    return self->closed == Py_False && self->debug == Py_False && self->ready != NULL &&
           Py_IS_TYPE(self->ready, S.deque_type) && self->scheduled != NULL &&
           PyList_CheckExact(self->scheduled);
}

/* fn, what a class finds for get_debug, is the stock method's: ours, or
 * BaseEventLoop's (a subclass may name it) */
static inline int stock_get_debug(PyObject *fn)
{
    return fn != NULL && (fn == S.own_get_debug || fn == S.base_get_debug);
}

/* makes_handles' class test, when the version tag has not cached it */
__attribute__((noinline)) static int makes_handles_class(Core *self, PyTypeObject *tp)
{
    if (!stock_get_debug(_PyType_Lookup(tp, S.s_get_debug)))
        return 0;
    /* stock call_soon makes its handle through self._call_soon: a subclass
     * that overrides it gets the stock methods, which call it (decision 412) */
    if (_PyType_Lookup(tp, S.s_internal_call_soon) != S.own_internal_call_soon)
        return 0;
    if (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        self->stock_debug_tag = tp->tp_version_tag;
    return 1;
}

/* plain(), and a handle made now would ask a stock get_debug() (Handle.__init__
 * calls loop.get_debug(): a subclass's or an instance attribute's answer
 * would decide its source traceback, so those take the stock method) */
static inline int makes_handles(Core *self)
{
    if (!plain(self) || self->patched)
        return 0;
    /* the answer holds until the class (or a base) changes, which changes
     * its version tag */
    PyTypeObject *tp = Py_TYPE(self);
    if ((tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && tp->tp_version_tag != 0 &&
        tp->tp_version_tag == self->stock_debug_tag)
        return 1;
    return makes_handles_class(self, tp);
}

static PyObject *tuple_of(PyObject *const *items, Py_ssize_t n)
{
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(items[i]));
    return t;
}

/* events.Handle(callback, args, loop, context) with the loop out of debug
 * mode: what __init__ stores, stored straight into the slots of one of our
 * handle types (handles.c). */
static PyObject *make_handle(PyTypeObject *tp, PyObject *callback, PyObject *args,
                             PyObject *loop, PyObject *ctx)
{
    /* a call_soon handle starts untracked (see "lazy tracking" below) */
    PyObject *h = ul_handle_alloc(tp, tp != ul_handle_type);
    if (h == NULL)
        return NULL;
    if (ctx == NULL || ctx == Py_None) {
        ctx = PyContext_CopyCurrent();
        if (ctx == NULL) {
            Py_DECREF(h);
            return NULL;
        }
    } else {
        Py_INCREF(ctx);
    }
    SLOT(h, S.off_context) = ctx;
    SLOT(h, S.off_loop) = Py_NewRef(loop);
    SLOT(h, S.off_callback) = Py_NewRef(callback);
    SLOT(h, S.off_args) = Py_NewRef(args);
    SLOT(h, S.off_cancelled) = Py_NewRef(Py_False);
    SLOT(h, S.off_repr) = Py_NewRef(Py_None);
    SLOT(h, S.off_tb) = Py_NewRef(Py_None);
    return h;
}

static int ready_append(Core *self, PyObject *h)
{
    PyObject *res;
    if (self->ready != NULL && Py_IS_TYPE(self->ready, S.deque_type)) {
        if (S.deque_append_c != NULL) {
            res = S.deque_append_c(self->ready, h);
        } else {
            PyObject *stack[2] = {self->ready, h};
            res = PyObject_Vectorcall(S.deque_append, stack, 2, NULL);
        }
    } else {
        PyObject *ready = field(self, self->ready, "_ready");
        if (ready == NULL)
            return -1;
        res = PyObject_CallMethodOneArg(ready, S.s_append, h);
    }
    if (res == NULL)
        return -1;
    Py_DECREF(res);
    return 0;
}

static inline __attribute__((always_inline)) PyObject *ready_popleft(Core *self)
{
    if (self->ready != NULL && Py_IS_TYPE(self->ready, S.deque_type)) {
        if (S.deque_popleft_c != NULL)
            return S.deque_popleft_c(self->ready, NULL);
        PyObject *stack[1] = {self->ready};
        return PyObject_Vectorcall(S.deque_popleft, stack, 1, NULL);
    }
    PyObject *ready = field(self, self->ready, "_ready");
    return ready ? PyObject_CallMethodNoArgs(ready, S.s_popleft) : NULL;
}

/* handle._cancelled as a truth value */
static int handle_cancelled(PyObject *h)
{
    if (is_handle(h)) {
        PyObject *c = SLOT(h, S.off_cancelled);
        if (c == Py_True)
            return 1;
        if (c == Py_False)
            return 0;
    }
    PyObject *c = PyObject_GetAttr(h, S.s_cancelled);
    if (c == NULL)
        return -1;
    int r = truthy(c);
    Py_DECREF(c);
    return r;
}

static int set_scheduled(PyObject *h, PyObject *v)
{
    if (is_timer(h)) {
        slot_put(h, S.off_scheduled, v);
        return 0;
    }
    return PyObject_SetAttr(h, S.s_scheduled, v);
}

/* new reference to handle._when */
static PyObject *timer_when(PyObject *h)
{
    if (is_timer(h) && SLOT(h, S.off_when) != NULL)
        return Py_NewRef(SLOT(h, S.off_when));
    return PyObject_GetAttr(h, S.s_when);
}

/* ---------------------------------------------------------- the heap
 * heapq's siftdown/siftup, step for step, so that timers with equal deadlines
 * leave the heap in the order the stock loop's heapq would give them. The
 * comparison is TimerHandle.__lt__ (when < when), done on the doubles when
 * both are exact TimerHandles with float deadlines. */

static int timer_lt(PyObject *a, PyObject *b)
{
    if (is_timer(a) && is_timer(b)) {
        PyObject *wa = SLOT(a, S.off_when), *wb = SLOT(b, S.off_when);
        if (wa != NULL && wb != NULL && PyFloat_CheckExact(wa) && PyFloat_CheckExact(wb))
            return PyFloat_AS_DOUBLE(wa) < PyFloat_AS_DOUBLE(wb);
    }
    Py_INCREF(a);
    Py_INCREF(b);
    int r = PyObject_RichCompareBool(a, b, Py_LT);
    Py_DECREF(a);
    Py_DECREF(b);
    return r;
}

static int size_changed(PyObject *heap, Py_ssize_t size)
{
    if (PyList_GET_SIZE(heap) == size)
        return 0;
    PyErr_SetString(PyExc_RuntimeError, "list changed size during iteration");
    return -1;
}

static int siftdown(PyObject *heap, Py_ssize_t startpos, Py_ssize_t pos)
{
    Py_ssize_t size = PyList_GET_SIZE(heap);
    while (pos > startpos) {
        Py_ssize_t parentpos = (pos - 1) >> 1;
        int cmp = timer_lt(PyList_GET_ITEM(heap, pos), PyList_GET_ITEM(heap, parentpos));
        if (cmp < 0 || size_changed(heap, size) < 0)
            return -1;
        if (cmp == 0)
            break;
        PyObject *parent = PyList_GET_ITEM(heap, parentpos);
        PyList_SET_ITEM(heap, parentpos, PyList_GET_ITEM(heap, pos));
        PyList_SET_ITEM(heap, pos, parent);
        pos = parentpos;
    }
    return 0;
}

static int siftup(PyObject *heap, Py_ssize_t pos)
{
    Py_ssize_t endpos = PyList_GET_SIZE(heap), startpos = pos, limit = endpos >> 1;
    while (pos < limit) {
        Py_ssize_t childpos = 2 * pos + 1;
        if (childpos + 1 < endpos) {
            int cmp = timer_lt(PyList_GET_ITEM(heap, childpos),
                               PyList_GET_ITEM(heap, childpos + 1));
            if (cmp < 0 || size_changed(heap, endpos) < 0)
                return -1;
            childpos += (unsigned)cmp ^ 1;
        }
        PyObject *child = PyList_GET_ITEM(heap, childpos);
        PyList_SET_ITEM(heap, childpos, PyList_GET_ITEM(heap, pos));
        PyList_SET_ITEM(heap, pos, child);
        pos = childpos;
    }
    return siftdown(heap, startpos, pos);
}

static int heappush(PyObject *heap, PyObject *item)
{
    if (PyList_Append(heap, item) < 0)
        return -1;
    return siftdown(heap, 0, PyList_GET_SIZE(heap) - 1);
}

/* new reference; the heap is not empty */
static PyObject *heappop(PyObject *heap)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    /* list.pop(): the list's reference to its last item becomes ours (the
     * allocation stays, as a list shrunk by one may keep it) */
    PyObject *last = PyList_GET_ITEM(heap, n - 1);
    Py_SET_SIZE(heap, n - 1);
    if (n == 1)
        return last;
    PyObject *top = PyList_GET_ITEM(heap, 0);
    PyList_SET_ITEM(heap, 0, last);
    if (siftup(heap, 0) < 0) {
        Py_DECREF(top);
        return NULL;
    }
    return top;
}

/* ------------------------------------------------------------ the clock */

/* time.monotonic() as a C double: integer nanoseconds, then / 1e9, as
 * time.monotonic() converts */
static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

static PyObject *Core_time(Core *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyFloat_FromDouble(mono());
}

/* self.time is our own time() (no subclass override, no instance attribute:
 * cached by the class's version tag like makes_handles): the clock may then
 * be read as a C double, with no float object (decision 292) */
static int own_time(Core *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->time_patched || !(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
    if (tp->tp_version_tag != 0 && tp->tp_version_tag == self->own_time_tag)
        return 1;
    if (_PyType_Lookup(tp, S.s_time) != S.own_time)
        return 0;
    self->own_time_tag = tp->tp_version_tag;
    return 1;
}

/* self.time(), through the attribute (a subclass or a patch may replace it) */
static PyObject *now(Core *self)
{
    if (own_time(self))
        return PyFloat_FromDouble(mono());
    PyObject *stack[1] = {(PyObject *)self};
    return PyObject_VectorcallMethod(S.s_time, stack, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* self->future_kw (task 0) or self->task_kw (task 1): the dict
 * dict(zip(kwnames, (self, None, None))) */
static int make_kw(Core *self, int task)
{
    PyObject *names = task ? S.task_kwnames : S.loop_kwnames;
    PyObject *d = PyDict_New();
    if (d == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        if (PyDict_SetItem(d, PyTuple_GET_ITEM(names, i), i ? Py_None : (PyObject *)self) < 0) {
            Py_DECREF(d);
            return -1;
        }
    }
    Py_XSETREF(*(task ? &self->task_kw : &self->future_kw), d);
    return 0;
}

/* The keyword arguments stock create_task takes, by name: name= and (3.11+)
 * context=. 0 ok, -1 anything else (the stock method then raises). */
static int parse_task_kw(PyObject *const *kw, PyObject *kwnames, PyObject **name,
                         PyObject **ctx)
{
    Py_ssize_t n = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (k == S.s_name || PyUnicode_Compare(k, S.s_name) == 0)
            *name = kw[i];
#if PY_VERSION_HEX >= 0x030B0000
        else if (k == S.s_context || PyUnicode_Compare(k, S.s_context) == 0)
            *ctx = kw[i];
#endif
        else
            return -1; /* keyword names are always str: no error can be pending */
    }
#if PY_VERSION_HEX < 0x030B0000
    (void)ctx; /* create_task has no context= before 3.11 */
#endif
    return 0;
}

/* create_task(coro, *, name=None, context=None): BaseEventLoop.create_task
 * without its two Python frames, when it would make a plain Task: no task
 * factory, not in debug mode. Anything else is the stock method. */
static PyObject *Core_create_task(Core *self, PyObject *const *args, Py_ssize_t nargsf,
                                  PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *name = Py_None, *ctx = Py_None;
    /* tasks.Task, looked up per call as the stock method does */
    PyObject *task_type = PyDict_GetItemWithError(S.tasks_dict, S.s_task);
    if (task_type == NULL && PyErr_Occurred())
        return NULL;
    /* a task factory (or none set), no tasks.Task: the stock method */
    if (nargs != 1 || self->closed != Py_False || self->debug != Py_False ||
        self->task_factory != Py_None || task_type == NULL ||
        parse_task_kw(args + 1, kwnames, &name, &ctx) < 0)
        return delegate(S.base_create_task, self, args, nargsf, kwnames);
    Py_INCREF(task_type);
    PyObject *task;
    /* a class (type_call hands its __init__ a copy or parses the dict) */
    int cached = name == Py_None && ctx == Py_None && PyType_Check(task_type);
    if (cached && self->task_kw == NULL && make_kw(self, 1) < 0) {
        Py_DECREF(task_type);
        return NULL;
    }
    if (cached) {
        PyObject *argt = PyTuple_Pack(1, args[0]);
        task = argt ? PyObject_Call(task_type, argt, self->task_kw) : NULL;
        Py_XDECREF(argt);
    } else {
        PyObject *stack[4] = {args[0], (PyObject *)self, name, ctx};
        task = PyObject_Vectorcall(task_type, stack, 1, S.task_kwnames);
    }
    Py_DECREF(task_type);
    if (task == NULL)
        return NULL;
    /* stock then drops its own frame from task._source_traceback (set when
     * get_debug() says so, which a subclass may override): this C method has
     * no frame, the traceback already ends at the caller */
    return task;
}

/* create_future(): BaseEventLoop.create_future (futures.Future(loop=self),
 * futures.Future looked up per call as there) without its Python frame. In
 * debug mode the stock method, so a future's source traceback is the stock one. */
static PyObject *Core_create_future(Core *self, PyObject *unused)
{
    (void)unused;
    PyObject *fut_type = PyDict_GetItemWithError(S.futures_dict, S.s_future);
    if (fut_type == NULL && PyErr_Occurred())
        return NULL;
    if (fut_type == NULL || self->debug != Py_False || !PyType_Check(fut_type))
        return PyObject_CallOneArg(S.base_create_future, (PyObject *)self);
    if (self->future_kw == NULL && make_kw(self, 0) < 0)
        return NULL;
    Py_INCREF(fut_type);
    PyObject *fut = PyObject_Call(fut_type, S.empty_tuple, self->future_kw);
    Py_DECREF(fut_type);
    return fut;
}

/* get_debug(): BaseEventLoop.get_debug (`return self._debug`) without its
 * Python frame. futures.Future.__init__ (the C one as the Python one) asks
 * the loop's get_debug() for every future and task: three a request of the
 * aiohttp server, each a Python call (decision 735). With _debug deleted,
 * the AttributeError of stock's `self._debug`. */
static PyObject *Core_get_debug(Core *self, PyObject *unused)
{
    (void)unused;
    return Py_XNewRef(field(self, self->debug, "_debug"));
}

/* ------------------------------------------------------------ scheduling */

/* a Handle for callback(*args), appended to _ready */
static PyObject *soon(Core *self, PyObject *callback, PyObject *args, PyObject *ctx)
{
    PyObject *h = make_handle(ul_handle_type, callback, args, (PyObject *)self, ctx);
    if (h != NULL && ready_append(self, h) < 0)
        Py_CLEAR(h);
    return h;
}

static PyObject *Core_call_soon(Core *self, PyObject *const *args, Py_ssize_t nargsf,
                                PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *ctx;
    if (nargs < 1 || parse_context(args, nargs, kwnames, &ctx) < 0 || !makes_handles(self))
        return delegate(S.base_call_soon, self, args, nargsf, kwnames);
    PyObject *argt = tuple_of(args + 1, nargs - 1);
    if (argt == NULL)
        return NULL;
    PyObject *h = soon(self, args[0], argt, ctx);
    Py_DECREF(argt);
    return h;
}

/* _call_soon(callback, args, context): call_soon_threadsafe's path */
static PyObject *Core_internal_call_soon(Core *self, PyObject *const *args,
                                         Py_ssize_t nargsf, PyObject *kwnames)
{
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL || !makes_handles(self))
        return delegate(S.base_internal_call_soon, self, args, nargsf, kwnames);
    return soon(self, args[0], args[1], args[2]);
}

static PyObject *schedule_at(Core *self, PyObject *when, PyObject *const *cbargs,
                             Py_ssize_t ncbargs, PyObject *ctx)
{
    PyObject *argt = tuple_of(cbargs + 1, ncbargs - 1);
    if (argt == NULL)
        return NULL;
    PyObject *h = make_handle(ul_timer_type, cbargs[0], argt, (PyObject *)self, ctx);
    Py_DECREF(argt);
    if (h == NULL)
        return NULL;
    SLOT(h, S.off_when) = Py_NewRef(when);
    SLOT(h, S.off_scheduled) = Py_NewRef(Py_False);
    PyObject *heap = Py_NewRef(self->scheduled);
    int r = heappush(heap, h);
    Py_DECREF(heap);
    if (r < 0) {
        Py_DECREF(h);
        return NULL;
    }
    slot_put(h, S.off_scheduled, Py_True);
    return h;
}

static PyObject *Core_call_at(Core *self, PyObject *const *args, Py_ssize_t nargsf,
                              PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *ctx;
    if (nargs < 2 || args[0] == Py_None || parse_context(args, nargs, kwnames, &ctx) < 0 ||
        !makes_handles(self))
        return delegate(S.base_call_at, self, args, nargsf, kwnames);
    return schedule_at(self, args[0], args + 1, nargs - 1, ctx);
}

static PyObject *Core_call_later(Core *self, PyObject *const *args, Py_ssize_t nargsf,
                                 PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *ctx;
    /* stock: self.call_at(self.time() + delay, ...); a subclass that replaces
     * call_at gets the stock method, which calls it */
    if (nargs < 2 || args[0] == Py_None || parse_context(args, nargs, kwnames, &ctx) < 0 ||
        !makes_handles(self) || _PyType_Lookup(Py_TYPE(self), S.s_call_at) != S.own_call_at)
        return delegate(S.base_call_later, self, args, nargsf, kwnames);
    PyObject *when;
    if (own_time(self) && PyFloat_CheckExact(args[0])) {
        /* time() + delay on doubles: the float the stock sum makes */
        when = PyFloat_FromDouble(mono() + PyFloat_AS_DOUBLE(args[0]));
    } else {
        PyObject *t = now(self);
        if (t == NULL)
            return NULL;
        when = PyNumber_Add(t, args[0]);
        Py_DECREF(t);
    }
    if (when == NULL)
        return NULL;
    PyObject *res;
    if (makes_handles(self)) /* a replaced time() is Python code: it may do anything */
        res = schedule_at(self, when, args + 1, nargs - 1, ctx);
    else
        res = delegate(S.base_call_later, self, args, nargsf, kwnames);
    Py_DECREF(when);
    return res;
}

/* the exception being raised, taken out (new reference, normalized) */
static PyObject *take_exception(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL && exc != NULL)
        PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return exc;
#endif
}

/* raise exc again (steals the reference) */
static void give_exception(PyObject *exc)
{
    if (exc == NULL)
        return;
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(exc)), exc, PyException_GetTraceback(exc));
#endif
}

/* ------------------------------------------------------ the slot table
 *
 * Table owns the engine's slots: user_data is slot | gen << 32, and slot i
 * holds the op's owner (its callback: cb(res, more, data)) and every Python
 * object the kernel may read or write (keep) until the op's final record.
 * It lives in C so that a C caller (this module's turn, a transport core)
 * can submit and free slots without Python lists, and it calls the engine's
 * submission functions directly through the addresses cffi gives
 * (Engine.native()): no cffi wrapper, so the GIL is never released for a
 * submission (a cffi call offers the GIL to every other thread each time).
 *
 * Rules kept here:
 *  - arguments are checked before a slot is taken: a bad int never leaks a
 *    slot nor pins a buffer;
 *  - a slot comes back only when C said the op was not accepted; -EBUSY means
 *    C still has an op in that slot, so it is never handed out again;
 *  - deliver() never abandons a batch: a record whose data cannot be built
 *    (MemoryError) still reaches its owner as -ENOMEM, every final record
 *    frees its slot, and the first internal error is reported afterwards;
 *  - wake() reads the engine pointer and writes the eventfd under the GIL;
 *    detach() clears the pointer (under the GIL) before ul_free runs, so a
 *    wake racing close never touches freed memory or a reused fd number.
 */
typedef int (*ul_nop_fn)(void *, uint64_t);
typedef int (*ul_recv_fn)(void *, uint64_t, int, int, uint32_t);
typedef int (*ul_recv_into_fn)(void *, uint64_t, int, char *, uint32_t, int);
typedef int (*ul_poll_fn)(void *, uint64_t, int, uint32_t, int);
typedef int (*ul_send_fn)(void *, uint64_t, int, const char *, uint32_t, int);
typedef int (*ul_sendv_fn)(void *, uint64_t, int, const void *, uint32_t, int);
typedef int (*ul_accept_fn)(void *, uint64_t, int, int);
typedef int (*ul_shutdown_fn)(void *, uint64_t, int, int);
typedef int (*ul_close_fd_fn)(void *, uint64_t, int, int);
typedef int (*ul_cancel_fn)(void *, uint64_t);
typedef int (*ul_cancel_fd_fn)(void *, int);
typedef void (*ul_wake_fn)(void *);
typedef int (*ul_ready_fn)(void *);
typedef int (*ul_op_known_fn)(void *, uint64_t);
typedef int (*ul_recv_busy_fn)(void *, int);
typedef int (*ul_close_release_fn)(void *, uint64_t, int);

#define SLOT_USED 1
#define SLOT_COALESCE 2 /* buffer records of one turn are joined into one chunk */
#define SLOT_LEAKED 4   /* C still owns an op there (-EBUSY): never reused */
#define SLOT_VIEW 8     /* buffer records come as a pool memoryview, released after the call */
#define SLOT_SENT 16    /* a Stream's own send: its records go to stream_sent_record (stream.c) */
#define SLOT_DIRECT 32  /* a Stream's receive into its protocol's buffer, or a Protocol's poll between
                          * direct reads (decision 373): stream_direct_record */
#define SLOT_KEPT 64    /* with SLOT_DIRECT: a Protocol's kept multishot poll (decision 765) */
#define SLOT_CHUNK 1024
#define GEN_MASK ((1u << 30) - 1)
#define MAX_IOV 1024

typedef struct {
    PyObject *owner, *keep;
    uint32_t gen;
    uint16_t flags;
    uint16_t last; /* table_deliver: the batch index of the slot's last record (coalesce) */
} Slot;

struct Table {
    PyObject_HEAD
    void *engine; /* ul_engine *; NULL once detached (engine closing) */
    ul_run_fn run;
    ul_nop_fn nop;
    ul_recv_fn recv;
    ul_send_fn send;
    ul_sendv_fn sendv;
    ul_accept_fn accept;
    ul_shutdown_fn shutdown;
    ul_close_fd_fn close_fd;
    ul_cancel_fn cancel;
    ul_cancel_fd_fn cancel_fd;
    ul_wake_fn wake;
    ul_ready_fn ready;
    ul_recv_into_fn recv_into;
    ul_poll_fn poll;
    ul_op_known_fn op_known;
    ul_recv_busy_fn recv_busy;
    ul_close_release_fn close_release; /* a held close's release (decision 873) */
    Slot *slots;
    uint32_t nslots, used;
    uint32_t *free; /* stack of free slots, lowest on top */
    uint32_t nfree;
    const ul_record *records;
    Py_ssize_t record_cap;
    const char *pool;
    Py_ssize_t pool_size, buf_size;
    PyObject *addr_of; /* addr_of(slot): the peer address of a UL_F_ADDR record */
    int dispatching;
    /* the datagram pool (UL_F_MSG records), once set_dgram_pool() was called */
    const char *dpool;
    Py_ssize_t dsize;
    uint32_t dfirst, dcount;
    PyObject *decode;    /* decode(raw sockaddr) -> address, for what C does not build */
    ul_addr_cache *addrs; /* sender addresses, one object per peer (dgram.c) */
    ul_recv_fn read_pool; /* ul_read_pool, once set_read_pool() was called */
    Py_ssize_t pre_timers; /* the Core's pre_timers while it delivers a batch (dgram.c) */
    /* the Core's batch_ready while it delivers a batch, else -1; its
     * batch_seq (dgram.c: a datagram endpoint's first record of the batch,
     * decision 454) */
    Py_ssize_t batch_before;
    unsigned int batch_seq;
    /* a Protocol's direct reads wait on one multishot poll kept while they
     * go on (UL_POLL_MULTI; the io_uring backend; decision 765) */
    char poll_multi;
};

static PyTypeObject TableType;

static int table_grow(Table *t)
{
    uint32_t n = t->nslots + SLOT_CHUNK;
    if (n > (1u << 24)) {
        PyErr_SetString(PyExc_RuntimeError, "too many operations in flight");
        return -1;
    }
    Slot *s = PyMem_Realloc(t->slots, n * sizeof *s);
    if (s == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->slots = s;
    uint32_t *f = PyMem_Realloc(t->free, n * sizeof *f);
    if (f == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->free = f;
    memset(s + t->nslots, 0, SLOT_CHUNK * sizeof *s);
    for (uint32_t i = n; i-- > t->nslots;)
        t->free[t->nfree++] = i;
    t->nslots = n;
    return 0;
}

/* Takes a slot for owner and keep (new references). 0 with an exception set
 * when the engine is closed or memory is short. */
static uint64_t table_take(Table *t, PyObject *owner, PyObject *keep, uint32_t flags)
{
    if (t->engine == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine is closed");
        return 0;
    }
    if (t->nfree == 0 && table_grow(t) < 0)
        return 0;
    uint32_t i = t->free[--t->nfree];
    Slot *s = &t->slots[i];
    s->gen = ((s->gen + 1) & GEN_MASK) ? ((s->gen + 1) & GEN_MASK) : 1;
    s->flags = (uint16_t)(SLOT_USED | flags);
    s->owner = Py_NewRef(owner);
    s->keep = Py_XNewRef(keep);
    t->used++;
    return (uint64_t)i | ((uint64_t)s->gen << 32);
}

/* The slot's op is over: drop its objects (which may run arbitrary code, so
 * after the table is consistent again). */
static void table_put(Table *t, uint32_t i)
{
    Slot *s = &t->slots[i];
    PyObject *owner = s->owner, *keep = s->keep;
    s->owner = s->keep = NULL;
    s->flags = 0;
    t->used--;
    t->free[t->nfree++] = i;
    Py_XDECREF(owner);
    Py_XDECREF(keep);
}

/* -EEXIST from a submission: another thread is inside ul_run (the engine
 * refuses rather than race it) */
static PyObject *foreign_thread_error(void)
{
    PyErr_SetString(PyExc_RuntimeError,
                    "engine operation from another thread while the loop runs in its own "
                    "(use loop.call_soon_threadsafe or asyncio.run_coroutine_threadsafe)");
    return NULL;
}

/* A submission C did not accept (rc < 0): the slot comes back, except on
 * -EBUSY, which says C still owns an op in that slot. Raises OSError
 * (RuntimeError for a foreign thread's submission). */
static PyObject *table_refused(Table *t, uint64_t ud, int rc)
{
    uint32_t i = (uint32_t)ud;
    if (rc == -EBUSY) {
        Slot *s = &t->slots[i];
        PyObject *owner = s->owner, *keep = s->keep;
        s->owner = s->keep = NULL;
        s->flags = SLOT_USED | SLOT_LEAKED;
        Py_XDECREF(owner);
        Py_XDECREF(keep);
    } else {
        table_put(t, i);
    }
    if (rc == -EEXIST)
        return foreign_thread_error();
    errno = -rc;
    return PyErr_SetFromErrno(PyExc_OSError);
}

static PyObject *submitted(Table *t, uint64_t ud, int rc)
{
    if (rc < 0)
        return table_refused(t, ud, rc);
    return PyLong_FromUnsignedLongLong(ud);
}

/* ---- argument checks (all before a slot is taken) */

/* positional-or-keyword arguments: out[i] = the i-th of names, or NULL */
static int parse_args(const char *fn, PyObject *const *args, Py_ssize_t nargs,
                      PyObject *kwnames, const char *const *names, int nreq, int nmax,
                      PyObject **out)
{
    for (int i = 0; i < nmax; i++)
        out[i] = i < nargs ? args[i] : NULL;
    if (nargs > nmax) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %d arguments (%zd given)", fn, nmax,
                     nargs);
        return -1;
    }
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int found = 0;
        for (int i = 0; i < nmax; i++) {
            if (PyUnicode_CompareWithASCIIString(key, names[i]) == 0) {
                if (out[i] != NULL) {
                    PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                                 fn, names[i]);
                    return -1;
                }
                out[i] = args[nargs + k];
                found = 1;
                break;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fn, key);
            return -1;
        }
    }
    for (int i = 0; i < nreq; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fn, names[i]);
            return -1;
        }
    }
    return 0;
}

/* The arguments of a FASTKW method: those given when the call passes every
 * one positionally (how the transports and engine.py's methods call: no copy,
 * no scan), else parse_args's into buf. NULL with the exception set. The
 * checks of each argument's type and range follow, as before (decision 720). */
static inline PyObject *const *take_args(const char *fn, PyObject *const *args,
                                         Py_ssize_t nargs, PyObject *kwnames,
                                         const char *const *names, int nreq, int nmax,
                                         PyObject **buf)
{
    if (kwnames == NULL && nargs == nmax)
        return args;
    return parse_args(fn, args, nargs, kwnames, names, nreq, nmax, buf) < 0 ? NULL : buf;
}

static int get_fd(PyObject *o, int *out)
{
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "file descriptor must be an int, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || v < 0) {
        PyErr_Format(PyExc_ValueError, "invalid file descriptor %R", o);
        return -1;
    }
    if (overflow > 0 || v > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "file descriptor %R out of range", o);
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* an int in [lo, hi]; what names it in the error */
static int get_int(PyObject *o, long long lo, long long hi, const char *what, long long *out)
{
    if (o == NULL)
        return 0; /* keeps the default in *out */
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %.100s", what,
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < lo || v > hi) {
        PyErr_Format(PyExc_ValueError, "%s %R out of range", what, o);
        return -1;
    }
    *out = v;
    return 0;
}

static int as_int(PyObject *o, int *out)
{
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "int out of range");
        return -1;
    }
    *out = (int)v;
    return 0;
}

static inline int get_bool(PyObject *o, int dflt)
{
    if (o == Py_True)
        return 1;
    if (o == Py_False)
        return 0;
    return o == NULL ? dflt : PyObject_IsTrue(o);
}

static int check_cb(PyObject *cb)
{
    if (PyCallable_Check(cb))
        return 0;
    PyErr_SetString(PyExc_TypeError, "callback must be callable");
    return -1;
}

/* Data the kernel will read: *keep holds it (bytes as is, anything else as a
 * memoryview, which pins the exporter: a bytearray cannot be resized). */
static int read_buffer(PyObject *data, PyObject **keep, const char **ptr, Py_ssize_t *len)
{
    if (PyBytes_CheckExact(data)) {
        *keep = Py_NewRef(data);
        *ptr = PyBytes_AS_STRING(data);
        *len = PyBytes_GET_SIZE(data);
    } else {
        if (PyUnicode_Check(data) || !PyObject_CheckBuffer(data)) {
            PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not %.100s",
                         Py_TYPE(data)->tp_name);
            return -1;
        }
        PyObject *mv = PyMemoryView_FromObject(data);
        if (mv == NULL)
            return -1;
        Py_buffer *view = PyMemoryView_GET_BUFFER(mv);
        if (!PyBuffer_IsContiguous(view, 'C')) {
            Py_DECREF(mv);
            PyErr_SetString(PyExc_ValueError, "buffer must be contiguous");
            return -1;
        }
        *keep = mv;
        *ptr = view->buf;
        *len = view->len;
    }
    if ((uint64_t)*len > UINT32_MAX) {
        Py_CLEAR(*keep);
        PyErr_SetString(PyExc_ValueError, "more than 4 GiB in one operation");
        return -1;
    }
    return 0;
}

#define TABLE_OPEN(t)                                                   \
    if ((t)->engine == NULL) {                                          \
        PyErr_SetString(PyExc_RuntimeError, "engine is closed");        \
        return NULL;                                                    \
    }

/* ---- submissions */

static PyObject *Table_nop(Table *t, PyObject *cb)
{
    TABLE_OPEN(t);
    if (check_cb(cb) < 0)
        return NULL;
    uint64_t ud = table_take(t, cb, NULL, 0);
    return ud ? submitted(t, ud, t->nop(t->engine, ud)) : NULL;
}

/* recv and read_pool: the same arguments, the same records (stream: fd is a
 * SOCK_STREAM socket, UL_RECV_STREAM; read_pool ignores it) */
static PyObject *pool_read(Table *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kw,
                           const char *name, ul_recv_fn fn, int nmax)
{
    static const char *const names[] = {"fd",       "cb",   "multishot", "nbytes",
                                         "coalesce", "view", "stream"};
    PyObject *buf[7], *const *a;
    int fd;
    long long nbytes = 0;
    TABLE_OPEN(t);
    if (fn == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s: not set up", name);
        return NULL;
    }
    if (!(a = take_args(name, args, nargs, kw, names, 2, nmax, buf)) || get_fd(a[0], &fd) < 0 ||
        check_cb(a[1]) < 0)
        return NULL;
    if (get_int(a[3], -(1LL << 62), UINT32_MAX, "nbytes", &nbytes) < 0)
        return NULL;
    if (nbytes < 0) {
        PyErr_Format(PyExc_ValueError, "negative buffersize in %s", name);
        return NULL;
    }
    int multishot = get_bool(a[2], 1), coalesce = get_bool(a[4], 0), view = get_bool(a[5], 0),
        stream = nmax > 6 ? get_bool(a[6], 0) : 0; /* (recv's alone: decision 745) */
    if (multishot < 0 || coalesce < 0 || view < 0 || stream < 0)
        return NULL;
    uint64_t ud = table_take(t, a[1], NULL,
                             (coalesce ? SLOT_COALESCE : 0) | (view ? SLOT_VIEW : 0));
    if (!ud)
        return NULL;
    return submitted(t, ud, fn(t->engine, ud, fd, multishot | (stream ? UL_RECV_STREAM : 0),
                               (uint32_t)nbytes));
}

static PyObject *Table_recv(Table *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    return pool_read(t, args, nargs, kw, "recv", t->recv, 7);
}

static PyObject *Table_read_pool(Table *t, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kw)
{
    return pool_read(t, args, nargs, kw, "read_pool", t->read_pool, 6);
}

/* set_read_pool(address of ul_read_pool) */
static PyObject *Table_set_read_pool(Table *t, PyObject *arg)
{
    unsigned long long f = PyLong_AsUnsignedLongLong(arg);
    if (f == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (f == 0) {
        PyErr_SetString(PyExc_ValueError, "set_read_pool: a null function address");
        return NULL;
    }
    t->read_pool = (ul_recv_fn)(uintptr_t)f;
    Py_RETURN_NONE;
}

static PyObject *Table_send(Table *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"fd", "data", "cb", "flags"};
    PyObject *buf[4], *const *a, *keep;
    int fd;
    long long flags = 0;
    const char *ptr;
    Py_ssize_t len;
    TABLE_OPEN(t);
    if (!(a = take_args("send", args, nargs, kw, names, 3, 4, buf)) || get_fd(a[0], &fd) < 0 ||
        get_int(a[3], INT32_MIN, INT32_MAX, "flags", &flags) < 0 || check_cb(a[2]) < 0 ||
        read_buffer(a[1], &keep, &ptr, &len) < 0)
        return NULL;
    uint64_t ud = table_take(t, a[2], keep, 0);
    Py_DECREF(keep);
    if (!ud)
        return NULL;
    return submitted(t, ud, t->send(t->engine, ud, fd, ptr, (uint32_t)len, (int)flags));
}

static PyObject *Table_sendv(Table *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"fd", "buffers", "cb", "flags"};
    PyObject *buf[4], *const *a;
    int fd;
    long long flags = 0;
    TABLE_OPEN(t);
    if (!(a = take_args("sendv", args, nargs, kw, names, 3, 4, buf)) || get_fd(a[0], &fd) < 0 ||
        get_int(a[3], INT32_MIN, INT32_MAX, "flags", &flags) < 0 || check_cb(a[2]) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(a[1], "buffers must be a sequence of bytes-like objects");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    struct iovec small[8], *iov = small;
    PyObject *keep = PyTuple_New(n);
    if (keep == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    if (n > 8 && !(iov = PyMem_Malloc((size_t)n * sizeof *iov))) {
        Py_DECREF(seq);
        Py_DECREF(keep);
        return PyErr_NoMemory();
    }
    uint64_t total = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *k, *item;
        const char *p;
        Py_ssize_t len;
        /* a list (PySequence_Fast's own) may change under a buffer's
         * __buffer__ (3.12+): its items are read by index, held while read
         * (decision 418) */
        if (PySequence_Fast_GET_SIZE(seq) != n) {
            PyErr_SetString(PyExc_RuntimeError, "sendv(): the buffers changed size during iteration");
            goto done;
        }
        item = Py_NewRef(PySequence_Fast_GET_ITEM(seq, i));
        int rc = read_buffer(item, &k, &p, &len);
        Py_DECREF(item);
        if (rc < 0)
            goto done;
        PyTuple_SET_ITEM(keep, i, k);
        iov[i].iov_base = (void *)p;
        iov[i].iov_len = (size_t)len;
        total += (uint64_t)len;
    }
    if (total > INT32_MAX || (uint64_t)n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "more than 2 GiB in one sendv");
        goto done;
    }
    uint64_t ud = table_take(t, a[2], keep, 0);
    if (ud)
        result = submitted(t, ud, t->sendv(t->engine, ud, fd, iov, (uint32_t)n, (int)flags));
done:
    if (iov != small)
        PyMem_Free(iov);
    Py_DECREF(keep);
    Py_DECREF(seq);
    return result;
}

static PyObject *Table_accept(Table *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"fd", "cb", "multishot"};
    PyObject *buf[3], *const *a;
    int fd;
    TABLE_OPEN(t);
    if (!(a = take_args("accept", args, nargs, kw, names, 2, 3, buf)) || get_fd(a[0], &fd) < 0 ||
        check_cb(a[1]) < 0)
        return NULL;
    int multishot = get_bool(a[2], 1);
    if (multishot < 0)
        return NULL;
    uint64_t ud = table_take(t, a[1], NULL, 0);
    return ud ? submitted(t, ud, t->accept(t->engine, ud, fd, multishot)) : NULL;
}

static PyObject *Table_shutdown(Table *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"fd", "how", "cb"};
    PyObject *buf[3], *const *a;
    int fd;
    long long how = -1;
    TABLE_OPEN(t);
    if (!(a = take_args("shutdown", args, nargs, kw, names, 3, 3, buf)) || get_fd(a[0], &fd) < 0)
        return NULL;
    if (!PyLong_Check(a[1]) || get_int(a[1], SHUT_RD, SHUT_RDWR, "shutdown mode", &how) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "invalid shutdown mode %R", a[1]);
        return NULL;
    }
    if (check_cb(a[2]) < 0)
        return NULL;
    uint64_t ud = table_take(t, a[2], NULL, 0);
    return ud ? submitted(t, ud, t->shutdown(t->engine, ud, fd, (int)how)) : NULL;
}

static PyObject *Table_close_fd(Table *t, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    static const char *const names[] = {"fd", "cb", "reset_if_data", "hold"};
    PyObject *buf[4], *const *a;
    int fd;
    TABLE_OPEN(t);
    if (!(a = take_args("close_fd", args, nargs, kw, names, 2, 4, buf)) ||
        get_fd(a[0], &fd) < 0 ||
        check_cb(a[1]) < 0)
        return NULL;
    int reset = get_bool(a[2], 0), hold = get_bool(a[3], 0);
    if (reset < 0 || hold < 0)
        return NULL;
    /* engine.h's flags: UL_CLOSE_RESET_IF_DATA 1, UL_CLOSE_HOLD 2 (873) */
    int flags = (reset ? 1 : 0) | (hold ? 2 : 0);
    uint64_t ud = table_take(t, a[1], NULL, 0);
    return ud ? submitted(t, ud, t->close_fd(t->engine, ud, fd, flags)) : NULL;
}

static PyObject *Table_cancel(Table *t, PyObject *arg)
{
    TABLE_OPEN(t);
    unsigned long long ud = PyLong_AsUnsignedLongLong(arg);
    if (ud == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError) || !PyLong_Check(arg))
            return NULL;
        PyErr_Clear(); /* no op has that user_data */
        Py_RETURN_FALSE;
    }
    int rc = t->cancel(t->engine, ud);
    if (rc == -EEXIST)
        return foreign_thread_error();
    return PyBool_FromLong(rc == 0);
}

static PyObject *Table_cancel_fd(Table *t, PyObject *arg)
{
    int fd;
    TABLE_OPEN(t);
    if (get_fd(arg, &fd) < 0)
        return NULL;
    int rc = t->cancel_fd(t->engine, fd);
    if (rc < 0)
        return foreign_thread_error();
    return PyLong_FromLong(rc);
}

/* Thread-safe: the engine pointer is read and used under the GIL, which
 * detach() (before ul_free) also holds. */
static PyObject *Table_wake(Table *t, PyObject *unused)
{
    (void)unused;
    if (t->engine != NULL)
        t->wake(t->engine);
    Py_RETURN_NONE;
}

/* run_nowait() -> ul_run(engine, 0): a turn that cannot block keeps the GIL
 * (as the native turn does); Engine.wait(0) uses it */
static PyObject *Table_run_nowait(Table *t, PyObject *unused)
{
    (void)unused;
    TABLE_OPEN(t);
    return PyLong_FromLong(t->run(t->engine, 0));
}

/* submit(cb, keep, fn, engine, *args) -> ud: the cold submissions that
 * engine.py makes through cffi. The slot is taken and fn(engine, ud, *args)
 * called with no Python code between them, nor between the call and its
 * result: a KeyboardInterrupt (a signal handler runs only between bytecodes)
 * cannot land after the slot was taken and before C has the op, which left the
 * slot taken and its buffers pinned for good (decision 428). fn is a cffi
 * function: an exception out of it comes from converting its arguments (C
 * never saw the op) or, after the call, its result (memory exhausted): the
 * slot comes back unless C says it holds an op with that user_data. */
static PyObject *Table_submit(Table *t, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *v[16];
    if (nargs < 4 || nargs - 2 > (Py_ssize_t)(sizeof v / sizeof v[0])) {
        PyErr_SetString(PyExc_TypeError, "submit(cb, keep, fn, engine, *args)");
        return NULL;
    }
    TABLE_OPEN(t);
    if (check_cb(args[0]) < 0)
        return NULL;
    uint64_t ud = table_take(t, args[0], args[1], 0);
    if (!ud)
        return NULL;
    uint32_t i = (uint32_t)ud;
    PyObject *u = PyLong_FromUnsignedLongLong(ud), *r = NULL;
    int rc = 0;
    if (u != NULL) {
        v[0] = args[3];
        v[1] = u;
        for (Py_ssize_t k = 4; k < nargs; k++)
            v[k - 2] = args[k];
        r = PyObject_Vectorcall(args[2], v, (size_t)(nargs - 2), NULL);
        Py_DECREF(u);
    }
    if (r != NULL) {
        int bad = !PyLong_Check(r) || as_int(r, &rc) < 0;
        Py_DECREF(r);
        if (!bad)
            return submitted(t, ud, rc);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "submit(): fn must return an int");
    }
    /* still this submission's slot (a detached table let go of every slot) */
    if (t->engine != NULL && (t->slots[i].flags & SLOT_USED) &&
        t->slots[i].gen == (uint32_t)(ud >> 32) && !t->op_known(t->engine, ud)) {
        PyObject *exc = take_exception();
        table_put(t, i); /* may run code (the objects' finalizers): the error kept aside */
        give_exception(exc);
    }
    return NULL;
}

static PyObject *Table_detach(Table *t, PyObject *unused)
{
    (void)unused;
    t->engine = NULL;
    t->records = NULL;
    t->pool = NULL;
    Py_RETURN_NONE;
}

/* after the engine is freed: every slot lets go of its objects */
static PyObject *Table_release_all(Table *t, PyObject *unused)
{
    (void)unused;
    for (uint32_t i = 0; i < t->nslots; i++) {
        if (t->slots[i].flags & SLOT_USED)
            table_put(t, i);
    }
    Py_RETURN_NONE;
}

/* ---- records */

static PyObject *msg_data(Table *t, const ul_record *r);
static int stream_deliver(PyObject *owner, int32_t res, int more, PyObject *data); /* stream.c */
/* a piece of received bytes: one pool buffer's record, or a whole bytes */
typedef struct {
    const char *p;
    Py_ssize_t n;
} Piece;
static int stream_gathers(PyObject *owner, int coalesced); /* stream.c */
static int stream_deliver_pieces(PyObject *owner, const Piece *pc, int cnt, Py_ssize_t total);
static void table_put_final(Table *t, uint32_t slot); /* stream.c */

/* One spare bytes object of a received record's size (decision 730). A
 * 1 KiB record's bytes is past obmalloc's 512 and glibc's tcache (1,032):
 * every request's bytes was a malloc and a free in the arena's bins
 * (about 420 instructions of a 3,500 protocol echo at c=1). A bytes whose
 * last reference is ours when we let go of it (the record's data after its
 * callback, a Stream's written bytes after its send) is kept instead, and
 * the next record of a size between half its and its own is copied into
 * it: no one else can see it (refcount 1, an exact bytes, which has no
 * weakrefs and no GC links), and it is handed out as a fresh one would be
 * (refcount 1, size set, NUL after the data, hash not computed). Under the
 * GIL only; one slot for the process (a sub-interpreter with a GIL of its
 * own would need one each: these builds share one). */
#define SPARE_MIN 513     /* smaller ones are obmalloc's, as cheap */
#define SPARE_MAX 65536
#if PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define SPARE_BYTES 1     /* ob_shash is there to reset; one GIL guards the slot */
#else
#define SPARE_BYTES 0
#endif
static PyObject *spare_bytes;
static Py_ssize_t spare_cap;

/* bytes of src[0:n], the spare's memory when it fits */
static PyObject *bytes_of(const char *src, Py_ssize_t n)
{
    PyObject *b = spare_bytes;
    if (SPARE_BYTES && b != NULL && n <= spare_cap && n > spare_cap / 2) {
        spare_bytes = NULL;
        Py_SET_SIZE(b, n);
#if SPARE_BYTES
        _Py_COMP_DIAG_PUSH
        _Py_COMP_DIAG_IGNORE_DEPR_DECLS
        ((PyBytesObject *)b)->ob_shash = -1;
        _Py_COMP_DIAG_POP
#endif
        memcpy(PyBytes_AS_STRING(b), src, (size_t)n);
        PyBytes_AS_STRING(b)[n] = '\0';
        return b;
    }
    return PyBytes_FromStringAndSize(src, n);
}

/* Py_DECREF(b), or b kept as the spare: our reference is its last */
static inline void bytes_drop(PyObject *b)
{
    if (SPARE_BYTES && Py_REFCNT(b) == 1 && spare_bytes == NULL && PyBytes_CheckExact(b) &&
        PyBytes_GET_SIZE(b) >= SPARE_MIN && PyBytes_GET_SIZE(b) <= SPARE_MAX) {
        spare_bytes = b;
        spare_cap = PyBytes_GET_SIZE(b);
        return;
    }
    Py_DECREF(b);
}

/* the data a record carries: pool bytes, a peer address, the errno of a
 * short send (UL_F_SHORT), or None */
static PyObject *record_data(Table *t, const ul_record *r, uint32_t slot)
{
    if (r->flags & UL_F_MSG)
        return msg_data(t, r);
    if (r->flags & UL_F_BUFFER) {
        Py_ssize_t start = (Py_ssize_t)r->bid * t->buf_size;
        if (r->res < 0 || r->res > t->buf_size || start + r->res > t->pool_size)
            return PyErr_Format(PyExc_SystemError, "record names bytes outside the pool "
                                "(bid %d, %d bytes)", (int)r->bid, (int)r->res);
        if (t->slots[slot].flags & SLOT_VIEW) /* see table_deliver */
            return PyMemoryView_FromMemory((char *)t->pool + start, r->res, PyBUF_READ);
        return bytes_of(t->pool + start, r->res);
    }
    if (r->flags & UL_F_SHORT)
        return PyLong_FromLong(-(long)r->bid);
    if (r->flags & UL_F_ADDR) {
        PyObject *num = PyLong_FromUnsignedLong(slot);
        PyObject *addr = num ? PyObject_CallOneArg(t->addr_of, num) : NULL;
        Py_XDECREF(num);
        return addr;
    }
    return Py_NewRef(Py_None);
}

/* A UL_F_MSG record's payload and sender address (new references), from its
 * datagram-pool buffer, and the raw sockaddr the address was made from (in
 * the buffer: valid until the next run); -1 with an exception set. */
static int msg_parts(Table *t, const ul_record *r, PyObject **payload, PyObject **addr,
                     const uint8_t **raw, uint32_t *rawlen)
{
    if (t->dpool == NULL || r->bid < t->dfirst || r->bid >= t->dfirst + t->dcount ||
        r->res < 0 || r->res > t->dsize - UL_DGRAM_HDR) {
        PyErr_Format(PyExc_SystemError, "record names a datagram outside the pool "
                     "(bid %d, %d bytes)", (int)r->bid, (int)r->res);
        return -1;
    }
    const uint8_t *b = (const uint8_t *)t->dpool + (Py_ssize_t)(r->bid - t->dfirst) * t->dsize;
    uint32_t namelen;
    memcpy(&namelen, b, sizeof namelen);
    if (namelen > UL_DGRAM_NAME)
        namelen = UL_DGRAM_NAME;
    *payload = PyBytes_FromStringAndSize((const char *)b + UL_DGRAM_HDR, r->res);
    if (*payload == NULL)
        return -1;
    *raw = b + 16;
    *rawlen = namelen;
    *addr = ul_addr_obj(&t->addrs, b + 16, namelen, t->decode);
    if (*addr == NULL) {
        Py_CLEAR(*payload);
        return -1;
    }
    return 0;
}

/* A UL_F_MSG record: (payload, address). */
static PyObject *msg_data(Table *t, const ul_record *r)
{
    PyObject *payload, *addr;
    const uint8_t *raw;
    uint32_t rawlen;
    if (msg_parts(t, r, &payload, &addr, &raw, &rawlen) < 0)
        return NULL;
    PyObject *out = PyTuple_New(2);
    if (out == NULL) {
        Py_DECREF(payload);
        Py_DECREF(addr);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, payload);
    PyTuple_SET_ITEM(out, 1, addr);
    return out;
}

static int in_pool(Table *t, const ul_record *r)
{
    Py_ssize_t start = (Py_ssize_t)r->bid * t->buf_size;
    return r->res >= 0 && r->res <= t->buf_size && start + r->res <= t->pool_size;
}

/* A joined chunk stops at 112 KiB (decisions 220, 271): glibc serves
 * allocations from 128 KiB up (the mmap threshold) with fresh pages, a page
 * fault each 4 KiB, so one turn's several hundred KiB joined into one bytes
 * cost 5-7x the CPU per MiB of smaller chunks (the protocol's buffer is fed
 * the same bytes either way). 112 KiB and the bytes header stay below it, and
 * a 100 KiB message is one chunk. What is left of the run comes as the next
 * chunk. */
#define COALESCE_MAX (112 * 1024)

/* Coalescing: the buffer records of slot i's op that follow record k in this
 * batch, up to its final record or COALESCE_MAX bytes, become one chunk.
 * Marks them in skip; returns the joined bytes (the total in *res, *final
 * when the op ended). The op's records end at `end` (its last one in the
 * batch, from table_deliver's pass, decision 264): a scan of the rest of
 * the batch cost about 5 instructions per record behind it, per record. */
static PyObject *coalesce(Table *t, int k, int end, uint8_t *skip, int32_t *res, int *final)
{
    const ul_record *rk = &t->records[k];
    Py_ssize_t total = 0;
    int last = k;
    for (int j = k; j <= end; j++) {
        const ul_record *r = &t->records[j];
        if (r->user_data != rk->user_data || (j > k && skip[j]))
            continue;
        if (!(r->flags & UL_F_BUFFER) || !in_pool(t, r))
            break; /* EOF, an error, or a bad record: it comes on its own, later */
        if (j > k && total + r->res > COALESCE_MAX)
            break; /* the rest comes as the next chunk */
        total += r->res;
        last = j;
        if (!(r->flags & UL_F_MORE))
            break;
    }
    PyObject *b = PyBytes_FromStringAndSize(NULL, total);
    if (b == NULL)
        return NULL;
    char *p = PyBytes_AS_STRING(b);
    for (int j = k; j <= last; j++) {
        const ul_record *r = &t->records[j];
        if (r->user_data != rk->user_data || (j > k && skip[j]))
            continue;
        memcpy(p, t->pool + (Py_ssize_t)r->bid * t->buf_size, (size_t)r->res);
        p += r->res;
        skip[j] = 1;
        *final = !(r->flags & UL_F_MORE);
    }
    *res = (int32_t)total;
    return b;
}

/* one record to its owner: cb(res, more, data). The future of a sock_* op
 * takes (res, data) as its result straight from here while it is pending. */
static int call_back(PyObject *cb, int32_t res_v, int more, PyObject *data)
{
    PyObject *res = PyLong_FromLong(res_v), *out = NULL;
    if (res == NULL)
        return -1;
    if (S.op_future_type != NULL && Py_IS_TYPE(cb, S.op_future_type)) {
        PyObject *done = PyObject_CallMethodNoArgs(cb, S.s_done);
        if (done == Py_False) {
            Py_DECREF(done);
            PyObject *pair = PyTuple_Pack(2, res, data);
            out = pair ? PyObject_CallMethodOneArg(cb, S.s_set_result, pair) : NULL;
            Py_XDECREF(pair);
            Py_DECREF(res);
            Py_XDECREF(out);
            return out ? 0 : -1;
        }
        if (done == NULL) {
            Py_DECREF(res);
            return -1;
        }
        Py_DECREF(done);
    }
    PyObject *args[3] = {res, more ? Py_True : Py_False, data};
    out = PyObject_Vectorcall(cb, args, 3, NULL);
    Py_DECREF(res);
    Py_XDECREF(out);
    return out ? 0 : -1;
}

static int stream_sent_record(PyObject *owner, int32_t res, int more, PyObject *data);
static int stream_direct_record(PyObject *owner, int32_t res, int more, uint64_t ud, int kept);

static void keep_first(PyObject **first)
{
    PyObject *exc = take_exception();
    if (*first == NULL)
        *first = exc;
    else
        Py_XDECREF(exc);
}

/* The batch index of each slot's last record from record i on, in the
 * slot's `last` (table_deliver's `lasts`: when every index fits), made once
 * a batch, at its first coalesced or gathered record. */
static void batch_lasts(Table *t, int i, int n)
{
    for (int j = i; j < n; j++) {
        uint32_t sj = (uint32_t)t->records[j].user_data;
        if (sj < t->nslots)
            t->slots[sj].last = (uint16_t)j;
    }
}

/* The batch's skip marks (records already delivered with an earlier one of
 * their op), made at the first coalesced or gathered record whose op has
 * more records later in the batch. 0, or -1 with MemoryError set. */
static int batch_skip(uint8_t **skip, int n)
{
    if (*skip != NULL)
        return 0;
    if (!(*skip = PyMem_Calloc((size_t)n, 1))) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* at most this many records are gathered into one feed (1 MiB of 16 KiB buffers) */
#define GATHER_MAX 64

/* Deliver n records. Nothing stops the batch: a callback that raises, a
 * record whose bytes cannot be made (its owner gets -ENOMEM, or -EIO for a
 * corrupt record), a record for no live slot (skipped). The first exception
 * is returned in *first (new reference). -1 only for n beyond the array. */
static int table_deliver(Table *t, int n, PyObject **first)
{
    *first = NULL;
    if (t->dispatching) { /* a callback's dispatch(): its records are being delivered (417) */
        PyErr_SetString(PyExc_RuntimeError,
                        "deliver() from a completion callback: the records are being delivered");
        return -1;
    }
    if (t->records == NULL || n > t->record_cap) {
        PyErr_Format(PyExc_SystemError, "%d records for an array of %zd", n, t->record_cap);
        return -1;
    }
    uint8_t *skip = NULL;
    /* the batch index of each slot's last record lives in the slot's `last`
     * (when every index fits: else coalesce scans to the batch's end) */
    int lasts = n <= UINT16_MAX + 1, lasts_made = 0;
    Py_INCREF(t);
    t->dispatching = 1;
    for (int i = 0; i < n; i++) {
        if (t->records == NULL)
            break; /* a callback fork()ed: in the child the rest is the parent's (417) */
        const ul_record *r = &t->records[i];
        if (skip != NULL && skip[i])
            continue;
        uint32_t slot = (uint32_t)r->user_data;
        if (slot >= t->nslots || !(t->slots[slot].flags & SLOT_USED) ||
            (t->slots[slot].flags & SLOT_LEAKED) ||
            t->slots[slot].gen != (uint32_t)(r->user_data >> 32)) {
            PyErr_Format(PyExc_SystemError, "record for slot %u, which has no such op "
                         "(user_data %llx)", slot, (unsigned long long)r->user_data);
            keep_first(first);
            continue;
        }
        int final = !(r->flags & UL_F_MORE);
        int32_t res = r->res;
        PyObject *data = NULL;
        if ((r->flags & UL_F_MSG) && !final && res >= 0) {
            /* a datagram for a transport that plainly reads: straight to
             * datagram_received (dgram.c); anything else the generic way */
            PyObject *owner = t->slots[slot].owner, *payload, *addr;
            const uint8_t *raw;
            uint32_t rawlen;
            int takes = ul_dgram_takes(owner, t->pre_timers, t->batch_before, t->batch_seq);
            if (takes > 0 && msg_parts(t, r, &payload, &addr, &raw, &rawlen) == 0) {
                Py_INCREF(owner);
                if (ul_dgram_deliver(owner, payload, addr, raw, rawlen) < 0)
                    keep_first(first);
                Py_DECREF(owner);
                Py_DECREF(payload);
                Py_DECREF(addr);
                continue; /* not final: the slot stays */
            }
            if (takes != 0)
                PyErr_Clear(); /* the generic way meets the same error and reports it */
        }
        int gather = (t->slots[slot].flags & (SLOT_VIEW | SLOT_COALESCE)) &&
                     (r->flags & UL_F_BUFFER) && !final && r->res > 0 && in_pool(t, r) &&
                     stream_gathers(t->slots[slot].owner,
                                    !(t->slots[slot].flags & SLOT_VIEW));
        int gend = n - 1;
        if (gather) {
            if (lasts && !lasts_made) {
                batch_lasts(t, i, n);
                lasts_made = 1;
            }
            if (lasts)
                gend = t->slots[slot].last;
            /* marks only for an op with records later in the batch (713) */
            if (gend > i && batch_skip(&skip, n) < 0) {
                PyErr_Clear(); /* no marks: record by record, as a view each */
                gather = 0;
            }
        }
        if (gather) {
            /* a BufferedProtocol's receive on its fast path: the op's pool
             * records of the batch fill get_buffer()'s buffers in one go
             * (decision 335), a StreamReaderProtocol's go into its reader's
             * buffer (decision 636); its final record comes on its own */
            Piece pc[GATHER_MAX];
            int cnt = 0, end = gend;
            Py_ssize_t total = 0;
            for (int j = i; j <= end && cnt < GATHER_MAX; j++) {
                const ul_record *rj = &t->records[j];
                if (rj->user_data != r->user_data || (j > i && skip[j]))
                    continue;
                if ((rj->flags & (UL_F_BUFFER | UL_F_MORE)) != (UL_F_BUFFER | UL_F_MORE) ||
                    rj->res <= 0 || !in_pool(t, rj))
                    break;
                pc[cnt].p = t->pool + (Py_ssize_t)rj->bid * t->buf_size;
                pc[cnt++].n = rj->res;
                total += rj->res;
                if (j > i)
                    skip[j] = 1; /* (record i is behind the batch's walk already) */
            }
            PyObject *cb = Py_NewRef(t->slots[slot].owner);
            if (stream_deliver_pieces(cb, pc, cnt, total) < 0)
                keep_first(first);
            Py_DECREF(cb);
            continue; /* not final: the slot stays */
        }
        if ((t->slots[slot].flags & SLOT_COALESCE) && (r->flags & UL_F_BUFFER) && !final &&
            in_pool(t, r)) {
            if (lasts && !lasts_made) {
                batch_lasts(t, i, n);
                lasts_made = 1;
            }
            int end = lasts ? t->slots[slot].last : n - 1;
            if (end == i) {
                /* the op's only record in the rest of the batch (the usual
                 * request: one record a connection a turn): its bytes alone,
                 * no marks and no scan (what coalesce() makes of it) */
                data = bytes_of(t->pool + (Py_ssize_t)r->bid * t->buf_size, res);
            } else if (batch_skip(&skip, n) == 0) {
                data = coalesce(t, i, end, skip, &res, &final);
            }
        } else {
            data = record_data(t, r, slot);
        }
        if (data == NULL) {
            /* the owner still hears of its op: an error instead of the data */
            res = PyErr_ExceptionMatches(PyExc_MemoryError) ? -ENOMEM : -EIO;
            keep_first(first);
            data = Py_NewRef(Py_None);
        }
        PyObject *cb = Py_NewRef(t->slots[slot].owner);
        uint16_t sf = t->slots[slot].flags;
        int took = (sf & SLOT_SENT)     ? stream_sent_record(cb, res, !final, data) /* a Stream's own send */
                   : (sf & SLOT_DIRECT) ? stream_direct_record(cb, res, !final, r->user_data, sf & SLOT_KEPT) /* into its protocol's buffer */
                                        : stream_deliver(cb, res, !final, data); /* a Stream's record: C to C */
        if (took == 0) {
            ul_dgram_timers = t->pre_timers;
            ul_dgram_before = t->batch_before;
            ul_dgram_seq = t->batch_seq;
            took = call_back(cb, res, !final, data);
            ul_dgram_timers = 0;
            ul_dgram_before = -1;
        }
        if (took < 0)
            keep_first(first);
        Py_DECREF(cb);
        if (PyMemoryView_Check(data)) {
            /* SLOT_VIEW: the callback had the pool buffer itself; the view
             * dies with the call (the buffer is recycled at the next run). A
             * callback that still exports it broke the rule: reported. */
            PyObject *rel = PyObject_CallMethod(data, "release", NULL);
            if (rel == NULL)
                keep_first(first);
            Py_XDECREF(rel);
        }
        bytes_drop(data); /* (kept as the next record's when ours was the last) */
        if (final && t->records != NULL) /* (a fork()ed child's table let go of all) */
            table_put_final(t, slot); /* the slot lets go of its objects only now */
    }
    t->dispatching = 0;
    PyMem_Free(skip);
    Py_DECREF(t);
    return 0;
}

/* deliver(n): Engine.dispatch's body; the first exception a callback raised, or None */
static PyObject *Table_deliver(Table *t, PyObject *arg)
{
    int n;
    if (as_int(arg, &n) < 0)
        return NULL;
    PyObject *first = NULL;
    if (n > 0 && table_deliver(t, n, &first) < 0)
        return NULL;
    return first ? first : Py_NewRef(Py_None);
}

/* Table(native, addr_of): native = (ul_engine *, records, record_cap, pool,
 * pool_size, buf_size, ul_run_turn, ul_nop, ul_recv, ul_send, ul_sendv, ul_accept,
 * ul_shutdown, ul_close_fd, ul_cancel, ul_cancel_fd, ul_wake, ul_ready, ul_recv_into,
 * ul_poll, ul_op_known, ul_recv_busy, ul_close_release),
 * addresses as ints */
static int Table_init(Table *t, PyObject *args, PyObject *kwds)
{
    PyObject *native, *addr_of;
    unsigned long long e, rec, pool, f[17];
    Py_ssize_t cap, pool_size, buf_size;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        PyErr_SetString(PyExc_TypeError, "Table() takes no keyword arguments");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!O:Table", &PyTuple_Type, &native, &addr_of) ||
        !PyArg_ParseTuple(native, "KKnKnnKKKKKKKKKKKKKKKKK:native", &e, &rec, &cap, &pool,
                          &pool_size, &buf_size, &f[0], &f[1], &f[2], &f[3], &f[4], &f[5], &f[6],
                          &f[7], &f[8], &f[9], &f[10], &f[11], &f[12], &f[13], &f[14], &f[15],
                          &f[16]))
        return -1;
    t->batch_before = -1; /* no batch yet (decision 454) */
    for (int i = 0; i < 17; i++) {
        if (f[i] == 0) {
            PyErr_SetString(PyExc_ValueError, "Table: a null function address");
            return -1;
        }
    }
    if (e == 0 || rec == 0 || cap <= 0 || buf_size < 0 || pool_size < 0) {
        PyErr_SetString(PyExc_ValueError, "Table: an engine that is not open");
        return -1;
    }
    t->engine = (void *)(uintptr_t)e;
    t->records = (const ul_record *)(uintptr_t)rec;
    t->record_cap = cap;
    t->pool = (const char *)(uintptr_t)pool;
    t->pool_size = pool_size;
    t->buf_size = buf_size;
    t->run = (ul_run_fn)(uintptr_t)f[0];
    t->nop = (ul_nop_fn)(uintptr_t)f[1];
    t->recv = (ul_recv_fn)(uintptr_t)f[2];
    t->send = (ul_send_fn)(uintptr_t)f[3];
    t->sendv = (ul_sendv_fn)(uintptr_t)f[4];
    t->accept = (ul_accept_fn)(uintptr_t)f[5];
    t->shutdown = (ul_shutdown_fn)(uintptr_t)f[6];
    t->close_fd = (ul_close_fd_fn)(uintptr_t)f[7];
    t->cancel = (ul_cancel_fn)(uintptr_t)f[8];
    t->cancel_fd = (ul_cancel_fd_fn)(uintptr_t)f[9];
    t->wake = (ul_wake_fn)(uintptr_t)f[10];
    t->ready = (ul_ready_fn)(uintptr_t)f[11];
    t->recv_into = (ul_recv_into_fn)(uintptr_t)f[12];
    t->poll = (ul_poll_fn)(uintptr_t)f[13];
    t->op_known = (ul_op_known_fn)(uintptr_t)f[14];
    t->recv_busy = (ul_recv_busy_fn)(uintptr_t)f[15];
    t->close_release = (ul_close_release_fn)(uintptr_t)f[16];
    Py_XSETREF(t->addr_of, Py_NewRef(addr_of));
    return 0;
}

/* set_dgram_pool(address, buf_size, count, first_bid, decode) */
static PyObject *Table_set_dgram_pool(Table *t, PyObject *args)
{
    unsigned long long addr;
    Py_ssize_t size;
    unsigned int count, first;
    PyObject *decode;
    if (!PyArg_ParseTuple(args, "KnIIO:set_dgram_pool", &addr, &size, &count, &first, &decode))
        return NULL;
    if (addr == 0 || size <= UL_DGRAM_HDR || !PyCallable_Check(decode)) {
        PyErr_SetString(PyExc_ValueError, "set_dgram_pool: no pool");
        return NULL;
    }
    t->dpool = (const char *)(uintptr_t)addr;
    t->dsize = size;
    t->dcount = count;
    t->dfirst = first;
    Py_XSETREF(t->decode, Py_NewRef(decode));
    Py_RETURN_NONE;
}

static int Table_traverse(Table *t, visitproc visit, void *arg)
{
    Py_VISIT(t->addr_of);
    Py_VISIT(t->decode);
    int rc = ul_addr_cache_traverse(t->addrs, visit, arg);
    if (rc)
        return rc;
    for (uint32_t i = 0; i < t->nslots; i++) {
        Py_VISIT(t->slots[i].owner);
        Py_VISIT(t->slots[i].keep);
    }
    return 0;
}

static int Table_clear(Table *t)
{
    Py_CLEAR(t->addr_of);
    Py_CLEAR(t->decode);
    ul_addr_cache_free(&t->addrs);
    for (uint32_t i = 0; i < t->nslots; i++) {
        Py_CLEAR(t->slots[i].owner);
        Py_CLEAR(t->slots[i].keep);
    }
    return 0;
}

static void Table_dealloc(Table *t)
{
    PyObject_GC_UnTrack(t);
    Table_clear(t);
    PyMem_Free(t->slots);
    PyMem_Free(t->free);
    Py_TYPE(t)->tp_free((PyObject *)t);
}

static PyObject *Table_get_in_flight(Table *t, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLong(t->used);
}

static PyObject *Table_get_dispatching(Table *t, void *c)
{
    (void)c;
    return PyBool_FromLong(t->dispatching);
}

static PyObject *Table_get_attached(Table *t, void *c)
{
    (void)c;
    return PyBool_FromLong(t->engine != NULL);
}

static PyObject *Table_get_poll_multi(Table *t, void *c)
{
    (void)c;
    return PyBool_FromLong(t->poll_multi);
}

static int Table_set_poll_multi(Table *t, PyObject *v, void *c)
{
    (void)c;
    int on = v == NULL ? 0 : PyObject_IsTrue(v);
    if (on < 0)
        return -1;
    t->poll_multi = (char)on;
    return 0;
}

static PyGetSetDef Table_getset[] = {
    {"poll_multi", (getter)Table_get_poll_multi, (setter)Table_set_poll_multi,
     "a Protocol's direct reads wait on one multishot poll (decision 765)", NULL},
    {"in_flight", (getter)Table_get_in_flight, NULL, "slots taken (ops not yet final)", NULL},
    {"dispatching", (getter)Table_get_dispatching, NULL, "records are being delivered", NULL},
    {"attached", (getter)Table_get_attached, NULL, "the engine is open", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Table_methods[] = {
    {"nop", (PyCFunction)Table_nop, METH_O, "nop(cb) -> user_data"},
    {"recv", (PyCFunction)(void (*)(void))Table_recv, FASTKW,
     "recv(fd, cb, multishot=True, nbytes=0, coalesce=False) -> user_data"},
    {"send", (PyCFunction)(void (*)(void))Table_send, FASTKW,
     "send(fd, data, cb, flags=0) -> user_data"},
    {"sendv", (PyCFunction)(void (*)(void))Table_sendv, FASTKW,
     "sendv(fd, buffers, cb, flags=0) -> user_data"},
    {"accept", (PyCFunction)(void (*)(void))Table_accept, FASTKW,
     "accept(fd, cb, multishot=True) -> user_data"},
    {"shutdown", (PyCFunction)(void (*)(void))Table_shutdown, FASTKW,
     "shutdown(fd, how, cb) -> user_data"},
    {"close_fd", (PyCFunction)(void (*)(void))Table_close_fd, FASTKW,
     "close_fd(fd, cb, reset_if_data=False, hold=False) -> user_data"},
    {"cancel", (PyCFunction)Table_cancel, METH_O, "cancel(ud) -> bool"},
    {"cancel_fd", (PyCFunction)Table_cancel_fd, METH_O, "cancel_fd(fd) -> int"},
    {"wake", (PyCFunction)Table_wake, METH_NOARGS, "wake(): thread-safe"},
    {"run_nowait", (PyCFunction)Table_run_nowait, METH_NOARGS,
     "run_nowait() -> ul_run(engine, 0), the GIL kept"},
    {"submit", (PyCFunction)(void (*)(void))Table_submit, METH_FASTCALL,
     "submit(cb, keep, fn, engine, *args) -> ud: a slot, then fn(engine, ud, *args) (a cffi "
     "function returning 0 or -errno), with no Python code between them"},
    {"read_pool", (PyCFunction)(void (*)(void))Table_read_pool, FASTKW,
     "read_pool(fd, cb, multishot=True, nbytes=0, coalesce=False, view=False) -> user_data: "
     "recv's records, read(2) for pipes, FIFOs, ttys and character devices"},
    {"set_read_pool", (PyCFunction)Table_set_read_pool, METH_O,
     "set_read_pool(address): the engine's ul_read_pool"},
    {"set_dgram_pool", (PyCFunction)Table_set_dgram_pool, METH_VARARGS,
     "set_dgram_pool(address, buf_size, count, first_bid, decode): where UL_F_MSG "
     "records point"},
    {"deliver", (PyCFunction)Table_deliver, METH_O,
     "deliver(n): the first exception a callback raised, or None"},
    {"detach", (PyCFunction)Table_detach, METH_NOARGS, "the engine is about to be freed"},
    {"release_all", (PyCFunction)Table_release_all, METH_NOARGS,
     "every slot drops its objects (the engine is freed)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringloop._sched.Table",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An engine's op slots and its hot submissions, in C.",
    .tp_traverse = (traverseproc)Table_traverse,
    .tp_clear = (inquiry)Table_clear,
    .tp_dealloc = (destructor)Table_dealloc,
    .tp_methods = Table_methods,
    .tp_getset = Table_getset,
    .tp_init = (initproc)Table_init,
    .tp_new = PyType_GenericNew,
};

#include "stream.c" /* the stream transports' hot half (Stream) */

/* ---------------------------------------------------------------- a turn */

/* ------------------------------------------------------ lazy tracking
 * A call_soon handle is made untracked by the GC: nearly all of them are
 * referenced by the ready queue alone and die right after they ran, and a
 * young-generation collection would otherwise traverse every one still
 * queued (the largest cost of a turn of many callbacks). That is safe: the
 * GC treats an untracked object as a root, so what a queued handle refers to
 * is never freed early. It only must not hide a cycle for ever, so a handle
 * of ours becomes tracked as soon as something else may keep it:
 *  - the native turn ran it (or skipped it, cancelled) and it is still
 *    referenced elsewhere;
 *  - cancel() or _run() was called on it from Python (the Python turn, code
 *    that kept it);
 *  - the loop is closed while it is queued (Loop.close calls
 *    _sched_track_ready before BaseEventLoop.close clears _ready).
 * Timer handles are tracked from the start: they are kept (to cancel them)
 * and wait in the heap. */
static inline void track(PyObject *h)
{
    if (Py_IS_TYPE(h, ul_handle_type) && !PyObject_GC_IsTracked(h))
        PyObject_GC_Track(h);
}

/* the native turn is done with h (a new reference, dropped here) */
static inline void release(PyObject *h)
{
    if (Py_REFCNT(h) > 1)
        track(h);
    Py_DECREF(h);
}

/* Handle._run for one handle; 0, or -1 when an exception must propagate */
static inline __attribute__((always_inline)) int run_handle(Core *self, PyObject *h)
{
    int c = handle_cancelled(h);
    if (c != 0)
        return c < 0 ? -1 : 0;
    if (field(self, self->debug, "_debug") == NULL) /* deleted by a callback */
        return -1;
    int debug = truthy(self->debug);
    if (debug != 0) {
        if (debug < 0)
            return -1;
        PyObject *r = PyObject_CallFunctionObjArgs(S.run_debug, (PyObject *)self, h, NULL);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    int exact = is_handle(h);
    PyObject *ctx = exact ? SLOT(h, S.off_context) : NULL;
    PyObject *cb = exact ? SLOT(h, S.off_callback) : NULL;
    PyObject *args = exact ? SLOT(h, S.off_args) : NULL;
    if (ctx == NULL || cb == NULL || args == NULL || !PyContext_CheckExact(ctx) ||
        !PyTuple_CheckExact(args)) {
        PyObject *r = PyObject_CallMethodNoArgs(h, S.s_run);
        Py_XDECREF(r);
        return r ? 0 : -1;
    }
    /* self._context.run(self._callback, *self._args) */
    Py_INCREF(ctx);
    Py_INCREF(cb);
    Py_INCREF(args);
    PyObject *res = NULL;
    if (PyContext_Enter(ctx) == 0) {
        res = PyObject_Vectorcall(cb, &PyTuple_GET_ITEM(args, 0), PyTuple_GET_SIZE(args), NULL);
        if (PyContext_Exit(ctx) < 0)
            Py_CLEAR(res);
    }
    Py_DECREF(ctx);
    Py_DECREF(cb);
    Py_DECREF(args);
    if (res != NULL) {
        Py_DECREF(res);
        return 0;
    }
    if (PyErr_ExceptionMatches(PyExc_SystemExit) || PyErr_ExceptionMatches(PyExc_KeyboardInterrupt))
        return -1;
    PyObject *exc = take_exception();
    PyObject *r = PyObject_CallFunctionObjArgs(S.report, h, exc, NULL);
    Py_DECREF(exc);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* exc (stolen) came from a completion callback: a SystemExit or
 * KeyboardInterrupt is raised, anything else goes to the loop's exception
 * handler (as _Turn.select does on the Python path) */
static int report_or_raise(Core *self, PyObject *exc)
{
    if (PyErr_GivenExceptionMatches(exc, PyExc_SystemExit) ||
        PyErr_GivenExceptionMatches(exc, PyExc_KeyboardInterrupt)) {
        give_exception(exc);
        return -1;
    }
    PyObject *r = PyObject_CallOneArg(self->report, exc);
    Py_DECREF(exc);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

static int io_step_table(Core *self, Table *t, int64_t ns);
static int collect_early(Core *self);

/* on: a batch of records is about to be delivered, the poll having found
 * batch_ready callbacks in _ready; off: it was (decision 454) */
static void batch_begin(Core *self, Table *t, int on)
{
    self->batching = on;
    if (on) {
        self->batch_seq++;
        self->io_pos = self->batch_ready; /* readers' handles go here (io_place) */
    }
    if (t != NULL) {
        t->batch_before = on ? self->batch_ready : -1;
        t->batch_seq = self->batch_seq;
    }
}

/* A wait for a timer is rounded up to the whole millisecond, as the stock
 * loop's selector rounds it (EpollSelector.select: math.ceil(timeout * 1e3) *
 * 1e-3): the stock contract is only that a timer never runs before its time.
 * A nanosecond-precise io_uring wait woke once per timer of a dense batch
 * (about 33 kernel waits per 1,000 timers spread over 1 ms, against 8 on
 * epoll, whose epoll_wait takes milliseconds); rounded, every timer due within
 * the millisecond runs after one wait. */
static int64_t wait_ns(double timeout)
{
    return (int64_t)ceil(timeout * 1e3) * 1000000;
}

/* the I/O step (engine attached): timeout < 0 waits without limit. 1 when
 * it collected the due timers before its records (decision 414), 0, or -1
 * with an exception set. */
static int io_step(Core *self, double timeout)
{
    int64_t ns = timeout < 0 ? -1 : timeout > 0 ? wait_ns(timeout) : 0;
    Table *t = self->table; /* held: a callback may detach the loop */
    if (t->dispatching) {
        /* a nested turn from a completion callback (data_received calling
         * _run_once, a nest_asyncio-style run_until_complete): a run now would
         * overwrite the records being delivered and recycle their buffers
         * (the rest of the batch lost). Refused as Engine.wait refuses it on
         * the Python turn (decision 410). */
        PyErr_SetString(PyExc_RuntimeError, "run() from a completion callback");
        return -1;
    }
    Py_INCREF(t);
    self->batch_cut = 0; /* set by a batch, read by the turn's run step */
    int rc = io_step_table(self, t, ns);
    Py_DECREF(t);
    return rc;
}

static int io_step_table(Core *self, Table *t, int64_t ns)
{
    for (;;) {
        int n;
        /* A run that cannot block keeps the GIL. So does a run that may
         * wait while the engine already shows a completion (ul_ready: the
         * CQ holds one, the kernel flags deferred work): a no-wait run takes
         * it without releasing the GIL; only if it finds nothing after all
         * does the waiting run follow, the GIL released (decision 290). */
        int probe = ns != 0 && t->ready(t->engine);
        n = ns == 0 || probe ? t->run(t->engine, 0) : 0;
        if (ns != 0 && n == 0) {
            /* a signal caught since Python code last ran (during a C
             * callback, or this turn's own C code) has its handler run
             * before the wait, as stock's select() runs it (its Python
             * frames check): else it would wait for the next I/O */
            if (PyErr_CheckSignals() < 0)
                return -1;
            Py_BEGIN_ALLOW_THREADS
            n = t->run(t->engine, ns);
            Py_END_ALLOW_THREADS
            /* ul_run_turn: a wakeup with no record ends the turn, and a
             * signal that came with it, ending no wait with EINTR, has its
             * handler run now, not at the next I/O (decision 632) */
            if (n == 0 && PyErr_CheckSignals() < 0)
                return -1;
        }
        if (n == -EINTR) {
            /* signal handlers run now (and may raise); a blocking wait goes on */
            if (PyErr_CheckSignals() < 0)
                return -1;
            if (ns < 0 && t->engine != NULL)
                continue;
            return 0;
        }
        if (n == 0)
            return 0;
        if (n < 0) { /* the engine failed: Engine.wait's error, raised */
            PyObject *num = PyLong_FromLong(n);
            PyObject *r = num ? PyObject_CallMethodOneArg(self->engine_obj, S.s_raise_error, num)
                              : NULL;
            Py_XDECREF(num);
            Py_XDECREF(r);
            return r ? 0 : -1;
        }
        PyObject *first;
        /* what is in _ready now would run before these records' callbacks
         * in the stock loop; what their callbacks add would run after them
         * (stream.c's receive fast path needs to know which is which) */
        PyObject *ready = self->ready;
        self->batch_ready = ready != NULL && Py_IS_TYPE(ready, S.deque_type) ? Py_SIZE(ready) : -1;
        self->in_batch = self->batch_ready >= 0;
        batch_begin(self, t, self->in_batch);
        PyObject *failed = NULL;
        int early = self->in_batch && self->scheduled != NULL &&
                    PyList_CheckExact(self->scheduled) && PyList_GET_SIZE(self->scheduled) > 0 &&
                    plain(self);
        if (early && collect_early(self) < 0)
            failed = take_exception(); /* raised once the records are delivered */
        int rc = table_deliver(t, n, &first);
        self->in_batch = 0;
        if (self->batching)
            self->batch_cut = 1 + self->io_pos + self->pre_timers;
        batch_begin(self, t, 0);
        if (self->pre_timers != 0) {
            self->pre_timers = 0;
            t->pre_timers = 0;
        }
        if (rc < 0) {
            Py_XDECREF(failed);
            return -1;
        }
        if (failed != NULL) {
            if (first != NULL && report_or_raise(self, first) < 0) {
                Py_DECREF(failed);
                return -1;
            }
            give_exception(failed);
            return -1;
        }
        if (first != NULL && report_or_raise(self, first) < 0)
            return -1;
        return early;
    }
}

/* deadline - now as a double (generic arithmetic when not both floats) */
static int seconds_until(PyObject *when, PyObject *t, double *out)
{
    if (PyFloat_CheckExact(when) && PyFloat_CheckExact(t)) {
        *out = PyFloat_AS_DOUBLE(when) - PyFloat_AS_DOUBLE(t);
        return 0;
    }
    PyObject *d = PyNumber_Subtract(when, t);
    if (d == NULL)
        return -1;
    *out = PyFloat_AsDouble(d);
    Py_DECREF(d);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* heappop(self._scheduled), the timer marked as no longer scheduled (new
 * reference). The heap is held meanwhile: a __lt__ may replace the attribute.
 * Python code run since the caller saw a timer at the head (a _cancelled's
 * __bool__, a deadline's __ge__) may have emptied or replaced the heap: then
 * heapq.heappop's errors, as the stock turn raises them (decision 410). */
static PyObject *pop_timer(Core *self)
{
    PyObject *heap = field(self, self->scheduled, "_scheduled");
    if (heap == NULL)
        return NULL;
    Py_INCREF(heap);
    PyObject *h = PyList_CheckExact(heap) && PyList_GET_SIZE(heap) > 0
                      ? heappop(heap)
                      : PyObject_CallOneArg(S.heappop, heap); /* heapq's own answer */
    Py_DECREF(heap);
    if (h != NULL && set_scheduled(h, Py_False) < 0)
        Py_CLEAR(h);
    return h;
}

static int purge_cancelled(Core *self)
{
    PyObject *heap = self->scheduled;
    Py_ssize_t count = PyList_GET_SIZE(heap);
    Py_ssize_t tcc = PyLong_AsSsize_t(self->tcc);
    if (tcc == -1 && PyErr_Occurred())
        return -1;
    if (count > S.min_scheduled && (double)tcc / (double)count > S.min_cancelled_fraction) {
        /* too many cancelled timers: rebuild the heap without them */
        PyObject *fresh = PyList_New(0);
        if (fresh == NULL)
            return -1;
        Py_INCREF(heap);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(heap); i++) {
            PyObject *h = Py_NewRef(PyList_GET_ITEM(heap, i));
            int c = handle_cancelled(h);
            int r = c < 0 ? -1 : c ? set_scheduled(h, Py_False) : PyList_Append(fresh, h);
            Py_DECREF(h);
            if (r < 0) {
                Py_DECREF(heap);
                Py_DECREF(fresh);
                return -1;
            }
        }
        Py_DECREF(heap);
        PyObject *r = PyObject_CallOneArg(S.heapify, fresh);
        if (r == NULL) {
            Py_DECREF(fresh);
            return -1;
        }
        Py_DECREF(r);
        Py_XSETREF(self->scheduled, fresh);
        Py_XSETREF(self->tcc, PyLong_FromLong(0));
        return 0;
    }
    /* drop cancelled timers from the head */
    while (PyList_GET_SIZE(self->scheduled) > 0) {
        PyObject *first = Py_NewRef(PyList_GET_ITEM(self->scheduled, 0));
        int c = handle_cancelled(first);
        Py_DECREF(first);
        if (c <= 0)
            return c;
        /* self._timer_cancelled_count -= 1 (that __bool__ may have replaced it) */
        PyObject *left = field(self, self->tcc, "_timer_cancelled_count");
        PyObject *n = left ? PyNumber_InPlaceSubtract(left, S.one) : NULL;
        if (n == NULL)
            return -1;
        Py_XSETREF(self->tcc, n);
        PyObject *h = pop_timer(self);
        if (h == NULL)
            return -1;
        Py_DECREF(h);
        if (!plain(self))
            return 0;
    }
    return 0;
}

/* the due timers move to _ready */
static int collect_due(Core *self)
{
    if (PyList_GET_SIZE(self->scheduled) == 0)
        return 0;
    /* end_time = self.time() + self._clock_resolution: a C double when both
     * are floats we know (end stays NULL until a comparison needs it) */
    PyObject *end = NULL;
    double end_d = 0.0;
    if (self->clock_res != NULL && PyFloat_CheckExact(self->clock_res) && own_time(self)) {
        end_d = mono() + PyFloat_AS_DOUBLE(self->clock_res);
    } else {
        PyObject *t = now(self);
        if (t == NULL)
            return -1;
        if (field(self, self->clock_res, "_clock_resolution") == NULL) {
            Py_DECREF(t);
            return -1;
        }
        end = PyNumber_Add(t, self->clock_res);
        Py_DECREF(t);
        if (end == NULL)
            return -1;
        if (PyFloat_CheckExact(end)) {
            end_d = PyFloat_AS_DOUBLE(end);
            Py_CLEAR(end);
        }
    }
    int rc = 0;
    /* any turn, debug mode or not (a completion callback may have entered it):
     * only the heap's type matters here (decision 411) */
    while (self->scheduled != NULL && PyList_CheckExact(self->scheduled) &&
           PyList_GET_SIZE(self->scheduled) > 0) {
        PyObject *h = PyList_GET_ITEM(self->scheduled, 0);
        PyObject *w = is_timer(h) ? SLOT(h, S.off_when) : NULL;
        int later;
        if (w != NULL && PyFloat_CheckExact(w) && end == NULL) {
            later = PyFloat_AS_DOUBLE(w) >= end_d;
        } else {
            if (end == NULL && (end = PyFloat_FromDouble(end_d)) == NULL) {
                rc = -1;
                break;
            }
            Py_INCREF(h);
            PyObject *when = timer_when(h);
            Py_DECREF(h);
            later = when ? PyObject_RichCompareBool(when, end, Py_GE) : -1;
            Py_XDECREF(when);
        }
        if (later != 0) {
            rc = later < 0 ? -1 : 0;
            break;
        }
        h = pop_timer(self);
        if (h == NULL || ready_append(self, h) < 0) {
            Py_XDECREF(h);
            rc = -1;
            break;
        }
        Py_DECREF(h);
    }
    Py_XDECREF(end);
    return rc;
}

/* Records are about to be delivered (the native I/O step): the due timers
 * move to _ready first (decision 414). The stock turn queues each ready
 * reader's callback, then the due timers, then runs them: what a reader
 * callback schedules runs after the timers. Records delivered at once here
 * run their callbacks now, so the timers must be in _ready before those
 * callbacks schedule anything; the hold rules (ready_empty, the datagram's,
 * Python's _sched_ahead) leave these timers out, and a reader's handle
 * queued meanwhile goes before them (io_place). The turn collects no more
 * after the records: stock reads the clock for its timers before it runs
 * any reader callback. 0, or -1 with an exception set. */
static int collect_early(Core *self)
{
    PyObject *ready = self->ready;
    Py_ssize_t before = self->batch_ready;
    if (collect_due(self) < 0)
        return -1;
    if (self->ready == ready && ready != NULL && Py_IS_TYPE(ready, S.deque_type) &&
        Py_SIZE(ready) > before && self->in_batch) {
        self->pre_timers = Py_SIZE(ready) - before;
        self->io_pos = before;
        self->table->pre_timers = self->pre_timers;
    }
    return 0;
}

/* h (a reader's handle: a held record's drain, an add_reader callback) was
 * just appended to _ready while timers collected before the batch are
 * there: it moves in front of them, behind the readers' handles queued
 * before it, where stock's _process_events puts it (decision 414). */
static int io_place(Core *self, PyObject *h)
{
    PyObject *ready = self->ready;
    if (!self->batching || h == NULL || ready == NULL || !Py_IS_TYPE(ready, S.deque_type) ||
        Py_SIZE(ready) <= self->io_pos)
        return 0;
    if (Py_SIZE(ready) == self->io_pos + 1) { /* in place already: nothing behind it */
        self->io_pos++;
        return 0;
    }
    Py_INCREF(ready);
    PyObject *last = PyObject_CallMethodNoArgs(ready, S.s_pop);
    PyObject *r = NULL;
    if (last == h) {
        r = PyObject_CallMethod(ready, "insert", "nO", self->io_pos, h);
        if (r != NULL)
            self->io_pos++;
    } else if (last != NULL) {
        r = PyObject_CallMethodOneArg(ready, S.s_append, last); /* not ours: left */
    }
    Py_XDECREF(last);
    Py_DECREF(ready);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* _sched_io_place(handle, reader): io_place for Python's held records
 * (reader false: only when _ready held callbacks before the poll, as the
 * record then waits behind them; a record held behind what this batch's
 * callbacks scheduled waits for them, as stock's next turn reads it) and
 * add_reader callbacks (reader true) */
static PyObject *Core_sched_io_place(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_sched_io_place(handle, reader)");
        return NULL;
    }
    if (self->batching && (args[1] == Py_True || self->batch_ready > 0) &&
        io_place(self, args[0]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _sched_early(on): the Python (debug) turn's records are about to be
 * delivered (on: the due timers move to _ready first, collect_early) or
 * were (off: the state ends). The stock _run_once that follows collects
 * what is due after them, as it would anyway (decision 414). */
/* The Python (debug) turn's batch was delivered, a stop() pending: stock's
 * _run_once runs all of _ready next. What the batch's callbacks scheduled
 * (beyond the callbacks _ready held at the poll, the readers' handles and
 * the timers collected early) goes into a handle placed after those, which
 * puts it back at the front of _ready: it runs on the next run, first, as
 * run_cut leaves it in the native turn (decision 455). 0, or -1 with an
 * exception set. */
static int requeue_later(Core *self)
{
    PyObject *ready = self->ready;
    if (ready == NULL || !Py_IS_TYPE(ready, S.deque_type))
        return 0;
    Py_ssize_t cut = self->io_pos + self->pre_timers, n = Py_SIZE(ready) - cut;
    if (n <= 0 || cut < 0)
        return 0;
    int stop = self->stopping == NULL ? 0 : truthy(self->stopping);
    if (stop <= 0)
        return stop;
    /* popped from the right: the list is in reverse order, as extendleft wants */
    PyObject *later = PyList_New(n);
    if (later == NULL)
        return -1;
    Py_INCREF(ready);
    int rc = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = PyObject_CallMethodNoArgs(ready, S.s_pop);
        if (h == NULL) {
            PyObject *taken = PyList_GetSlice(later, 0, i);
            if (taken != NULL && PyList_Reverse(taken) == 0) {
                PyObject *r = PyObject_CallMethodOneArg(ready, S.s_extend, taken);
                Py_XDECREF(r);
            }
            Py_XDECREF(taken);
            Py_DECREF(later);
            Py_DECREF(ready);
            return -1;
        }
        PyList_SET_ITEM(later, i, h);
    }
    PyObject *front = PyObject_GetAttrString(ready, "extendleft");
    PyObject *args = front ? PyTuple_Pack(1, later) : NULL;
    PyObject *h = args ? soon(self, front, args, NULL) : NULL;
    if (h == NULL) { /* (they go back) */
        PyObject *exc = take_exception();
        if (PyList_Reverse(later) == 0) {
            PyObject *r = PyObject_CallMethodOneArg(ready, S.s_extend, later);
            Py_XDECREF(r);
        }
        give_exception(exc);
        rc = -1;
    }
    Py_XDECREF(h);
    Py_XDECREF(args);
    Py_XDECREF(front);
    Py_DECREF(later);
    Py_DECREF(ready);
    return rc;
}

static PyObject *Core_sched_early(Core *self, PyObject *on)
{
    if (self->in_batch) /* (the native turn's batch: its own) */
        Py_RETURN_NONE;
    if (on != Py_True && self->batching && requeue_later(self) < 0) {
        self->pre_timers = 0;
        if (self->table != NULL)
            self->table->pre_timers = 0;
        batch_begin(self, self->table, 0);
        return NULL;
    }
    self->pre_timers = 0;
    if (self->table != NULL)
        self->table->pre_timers = 0;
    PyObject *ready = self->ready;
    if (on != Py_True || ready == NULL || !Py_IS_TYPE(ready, S.deque_type)) {
        batch_begin(self, self->table, 0);
        Py_RETURN_NONE;
    }
    /* the reader rules of the native turn's batch (decision 454) */
    self->batch_ready = Py_SIZE(ready);
    batch_begin(self, self->table, 1);
    if (self->scheduled == NULL || !PyList_CheckExact(self->scheduled) ||
        PyList_GET_SIZE(self->scheduled) == 0 || self->table == NULL)
        Py_RETURN_NONE;
    self->in_batch = 1; /* for collect_early only (the readers see `batching`) */
    int rc = collect_early(self);
    self->in_batch = 0;
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _sched_ahead([owner]): callbacks in _ready that a record arriving now must
 * wait for, as stock's reader callback would: bool(_ready), leaving out the
 * timers collected before the batch (decision 414). With a datagram
 * transport's Dgram, its first record of a batch waits only for what _ready
 * held at the poll: the stock reader callbacks of one poll run before what
 * any of them schedules (decision 454); so does a stream transport's Stream
 * with the record it is delivering, its first of the batch (decision 824). */
static PyObject *Core_sched_ahead(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "_sched_ahead([dgram])");
        return NULL;
    }
    if (nargs == 1 && self->batching && ul_dgram_first(args[0], self->batch_seq))
        return PyBool_FromLong(self->batch_ready > 0);
    if (nargs == 1 && Py_IS_TYPE(args[0], &StreamType) && ((Stream *)args[0])->loop == self &&
        stream_first((Stream *)args[0])) /* (decision 824) */
        return PyBool_FromLong(self->batch_ready > 0);
    PyObject *ready = field(self, self->ready, "_ready");
    if (ready == NULL)
        return NULL;
    Py_ssize_t n = Py_IS_TYPE(ready, S.deque_type) ? Py_SIZE(ready) : PyObject_Size(ready);
    if (n < 0)
        return NULL;
    return PyBool_FromLong(n - self->pre_timers > 0);
}

/* the native turn can run: plain(), every attribute it reads is there, and
 * the engine is attached (it is from Loop.__init__ until close) */
static int turn_ready(Core *self)
{
    return plain(self) && self->tcc != NULL && self->clock_res != NULL &&
           self->stopping != NULL && self->table != NULL && self->table->engine != NULL;
}

/* run_handle kept out of line for the rare paths (run_n): its copy inlined
 * in the turn's run step stays the only hot one */
__attribute__((noinline)) static int run_handle_cold(Core *self, PyObject *h)
{
    return run_handle(self, h);
}

/* n handles off _ready, run: 0, or -1 with the exception set */
static int run_n(Core *self, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *h = ready_popleft(self);
        if (h == NULL)
            return -1;
        int r = run_handle_cold(self, h);
        release(h);
        if (r < 0)
            return -1;
    }
    return 0;
}

/* The turn's run step after a batch whose callbacks scheduled what is in
 * _ready beyond cut: the stock turn's ntodo is the callbacks _ready held at
 * the poll, the readers' handles and the timers collected early; what its
 * readers schedule is queued behind them. Ours ran those readers' callbacks
 * in the I/O step: with a stop() pending, the turn runs only stock's ntodo
 * (decision 455). */
__attribute__((noinline)) static PyObject *run_cut(Core *self, Py_ssize_t ntodo,
                                                   Py_ssize_t cut)
{
    int stop = truthy(self->stopping);
    if (stop < 0)
        return NULL;
    return run_n(self, stop ? cut : ntodo) < 0 ? NULL : Py_NewRef(Py_None);
}

/* one turn: BaseEventLoop._run_once, step for step */
static PyObject *run_turn(Core *self)
{
    self->turns++;
    if (!turn_ready(self))
        return PyObject_CallOneArg(S.base_run_once, (PyObject *)self);

    /* no timer: nothing to purge (stock tests the count first, then the head) */
    if (PyList_GET_SIZE(self->scheduled) > 0) {
        if (purge_cancelled(self) < 0)
            return NULL;
        if (!turn_ready(self)) /* a foreign timer's __lt__ or _cancelled ran Python code */
            return PyObject_CallOneArg(S.base_run_once, (PyObject *)self);
    }

    /* transports written to since the last wait: their sends go out in the
     * same kernel entry that waits (loop._flush_dirty; it may schedule
     * callbacks, so it runs before the timeout is chosen) */
    if (self->dirty != NULL && PyList_CheckExact(self->dirty) && PyList_GET_SIZE(self->dirty) > 0) {
        if (stream_flush_dirty(self) < 0) /* Loop._flush_dirty, in stream.c */
            return NULL;
        if (!turn_ready(self))
            return PyObject_CallOneArg(S.base_run_once, (PyObject *)self);
    }

    /* timeout: 0 with work ready or a stop pending, else until the first timer */
    double timeout = -1.0;
    Py_ssize_t nready = Py_SIZE(self->ready); /* an exact deque (plain()): its length */
    if (nready < 0)
        return NULL;
    int stopping = truthy(self->stopping);
    if (stopping < 0)
        return NULL;
    if (nready > 0 || stopping) {
        timeout = 0.0;
    } else if (PyList_GET_SIZE(self->scheduled) > 0) {
        PyObject *first = Py_NewRef(PyList_GET_ITEM(self->scheduled, 0));
        PyObject *when = timer_when(first);
        Py_DECREF(first);
        int r;
        if (when != NULL && PyFloat_CheckExact(when) && own_time(self)) {
            timeout = PyFloat_AS_DOUBLE(when) - mono(); /* no float object for now */
            r = 0;
        } else {
            PyObject *t = when ? now(self) : NULL;
            r = t ? seconds_until(when, t, &timeout) : -1;
            Py_XDECREF(t);
        }
        Py_XDECREF(when);
        if (r < 0)
            return NULL;
        if (timeout > S.max_timeout)
            timeout = S.max_timeout;
        else if (!(timeout >= 0))
            timeout = 0.0;
    }

    int collected = 0;
    if (self->table == NULL || self->table->engine == NULL) {
        /* the deadline's arithmetic or a replaced time() ran Python code that
         * closed the loop (a _run_once outside run_forever): the stock turn's
         * step, self._selector.select(timeout), as it is now (decision 410) */
        PyObject *sel = PyObject_GetAttrString((PyObject *)self, "_selector");
        PyObject *arg = timeout < 0 ? Py_NewRef(Py_None) : PyFloat_FromDouble(timeout);
        PyObject *r = sel && arg ? PyObject_CallMethod(sel, "select", "O", arg) : NULL;
        Py_XDECREF(arg);
        Py_XDECREF(sel);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    } else if ((collected = io_step(self, timeout)) < 0) {
        return NULL;
    }

    /* unless collected before the records were delivered (decision 414) */
    if (!collected && self->scheduled != NULL && PyList_CheckExact(self->scheduled) &&
        collect_due(self) < 0)
        return NULL;

    /* run what is ready now; what these callbacks schedule waits a turn */
    PyObject *ready = field(self, self->ready, "_ready");
    Py_ssize_t ntodo = ready == NULL ? -1 : Py_IS_TYPE(ready, S.deque_type) ? Py_SIZE(ready)
                                                                        : PyObject_Size(ready);
    if (ntodo < 0)
        return NULL;
    if (self->batch_cut > 0) {
        Py_ssize_t cut = self->batch_cut - 1;
        self->batch_cut = 0;
        if (cut < ntodo && self->stopping != Py_False) /* (a stop() pending: run_cut) */
            return run_cut(self, ntodo, cut);
    }
    for (Py_ssize_t i = 0; i < ntodo; i++) {
        PyObject *h = ready_popleft(self);
        if (h == NULL)
            return NULL;
        int r = run_handle(self, h);
        release(h);
        if (r < 0)
            return NULL;
    }
    Py_RETURN_NONE;
}

/* _run_once(). BaseEventLoop.run_forever is `while True: self._run_once();
 * if self._stopping: break`; inside Loop.run_forever (looping) the outermost
 * _run_once runs that loop itself and returns when _stopping is set, so the
 * Python loop ends after one iteration: a turn costs no Python bytecode. The
 * eval loop would run signal handlers between iterations; this one runs them
 * every 32 turns (and a turn that waits runs them when the wait is cut short;
 * any Python callback runs them too).
 * Anywhere else (a test calling _run_once, a callback calling it, a subclass
 * with its own run_forever) it is exactly one turn. */
/* self._run_once is this method: no subclass override, no instance attribute
 * (a wrapper that counts or times turns, a mock.patch). Otherwise the Python
 * loop must call that one for every turn, as stock does (decision 412). */
__attribute__((noinline)) static int own_run_once_class(Core *self, PyTypeObject *tp)
{
    if (_PyType_Lookup(tp, S.s_run_once) != S.own_run_once)
        return 0;
    if (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)
        self->run_once_tag = tp->tp_version_tag;
    return 1;
}

static inline int own_run_once(Core *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (self->run_once_patched)
        return 0;
    /* cached by the class's version tag, as own_time() */
    if ((tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) && tp->tp_version_tag != 0 &&
        tp->tp_version_tag == self->run_once_tag)
        return 1;
    return own_run_once_class(self, tp);
}

static PyObject *Core_run_once(Core *self, PyObject *unused)
{
    (void)unused;
    if (!self->looping || self->depth > 0 || !own_run_once(self)) {
        self->depth++;
        PyObject *r = run_turn(self);
        self->depth--;
        return r;
    }
    self->depth++;
    PyObject *r;
    for (;;) {
        r = run_turn(self);
        if (r == NULL || !self->looping || !own_run_once(self))
            break;
        Py_DECREF(r);
        int stop = self->stopping == NULL ? 1 : truthy(self->stopping);
        if (stop != 0) { /* a deleted _stopping: the Python loop raises the stock error */
            r = stop < 0 ? NULL : Py_NewRef(Py_None);
            break;
        }
        if ((self->turns & 31) == 0 && PyErr_CheckSignals() < 0) {
            r = NULL;
            break;
        }
    }
    self->depth--;
    return r;
}

/* _sched_looping(flag): Loop.run_forever says whether it is running */
static PyObject *Core_sched_looping(Core *self, PyObject *flag)
{
    int v = PyObject_IsTrue(flag);
    if (v < 0)
        return NULL;
    self->looping = v;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------- engine hookup */

/* _sched_attach(engine.native(), report): the turn runs this engine itself;
 * native = (Engine, Table) */
static PyObject *Core_sched_attach(Core *self, PyObject *args)
{
    PyObject *eng, *report;
    Table *table;
    if (!PyArg_ParseTuple(args, "(OO!)O:_sched_attach", &eng, &TableType, &table, &report))
        return NULL;
    if (table->engine == NULL) {
        PyErr_SetString(PyExc_ValueError, "_sched_attach: an engine that is not open");
        return NULL;
    }
    Py_XSETREF(self->engine_obj, Py_NewRef(eng));
    Py_XSETREF(self->table, (Table *)Py_NewRef(table));
    Py_XSETREF(self->report, Py_NewRef(report));
    Py_RETURN_NONE;
}

/* before the engine is freed: the turn goes back to self._selector */
static PyObject *Core_sched_detach(Core *self, PyObject *unused)
{
    (void)unused;
    Py_CLEAR(self->engine_obj);
    Py_CLEAR(self->table);
    Py_CLEAR(self->report);
    Py_RETURN_NONE;
}

/* call_soon_threadsafe's wakeup, from any thread. The engine pointer is read
 * and the eventfd written under the GIL: Engine.close detaches the table
 * (under the GIL) before ul_free, so a wake racing loop.close() never touches
 * freed memory nor writes into an fd number the engine no longer owns. */
static PyObject *Core_write_to_self(Core *self, PyObject *unused)
{
    (void)unused;
    Table *t = self->table;
    if (t != NULL && t->engine != NULL)
        t->wake(t->engine);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------ the type */

/* Lazy tracking (above) leaves the queued call_soon handles out of the GC,
 * so their references to the loop counted as outside ones and a loop dropped
 * without close() while callbacks were queued was never collected (stock
 * collects it, warning "unclosed event loop"). So the loop's traversal goes on
 * through a queued untracked handle of ours, visiting what it holds, when that
 * is exactly as if the loop held those objects itself: the deque is held by the
 * loop alone (refcount 1) and the handle by the deque alone (refcount 1).
 * Anything else (a handle or the deque kept elsewhere) is not seen through,
 * which only keeps objects alive, as before. No allocation: the deque's own
 * tp_traverse walks it. */
typedef struct {
    visitproc visit;
    void *arg;
} through_arg;

static int visit_queued(PyObject *h, void *p)
{
    through_arg *t = p;
    if (Py_IS_TYPE(h, ul_handle_type) && Py_REFCNT(h) == 1 && !PyObject_GC_IsTracked(h))
        return Py_TYPE(h)->tp_traverse(h, t->visit, t->arg);
    return 0;
}

static int Core_traverse(Core *self, visitproc visit, void *arg)
{
    Py_VISIT(self->ready);
    if (self->ready != NULL && Py_IS_TYPE(self->ready, S.deque_type) &&
        Py_REFCNT(self->ready) == 1) {
        through_arg t = {visit, arg};
        int r = S.deque_type->tp_traverse(self->ready, visit_queued, &t);
        if (r)
            return r;
    }
    Py_VISIT(self->scheduled);
    Py_VISIT(self->stopping);
    Py_VISIT(self->debug);
    Py_VISIT(self->closed);
    Py_VISIT(self->tcc);
    Py_VISIT(self->clock_res);
    Py_VISIT(self->task_factory);
    Py_VISIT(self->engine_obj);
    Py_VISIT(self->table);
    Py_VISIT(self->report);
    Py_VISIT(self->bound_call_soon);
    Py_VISIT(self->dirty);
    Py_VISIT(self->future_kw);
    Py_VISIT(self->task_kw);
    Py_VISIT(self->transports);
    Py_VISIT(self->sock_state);
    Py_VISIT(self->sock_owner);
    Py_VISIT(self->sock_sending);
    return 0;
}

static int Core_clear(Core *self)
{
    Py_CLEAR(self->ready);
    Py_CLEAR(self->scheduled);
    Py_CLEAR(self->stopping);
    Py_CLEAR(self->debug);
    Py_CLEAR(self->closed);
    Py_CLEAR(self->tcc);
    Py_CLEAR(self->clock_res);
    Py_CLEAR(self->task_factory);
    Py_CLEAR(self->engine_obj);
    Py_CLEAR(self->table);
    Py_CLEAR(self->report);
    Py_CLEAR(self->bound_call_soon);
    Py_CLEAR(self->dirty);
    Py_CLEAR(self->future_kw);
    Py_CLEAR(self->task_kw);
    Py_CLEAR(self->transports);
    Py_CLEAR(self->sock_state);
    Py_CLEAR(self->sock_owner);
    Py_CLEAR(self->sock_sending);
    return 0;
}

static void Core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    Core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* An instance attribute that replaces a loop method our handles' cancel()
 * would otherwise call as the stock one (loop.get_debug = ..., a mock.patch)
 * turns that shortcut off for this loop, for good; so does one that replaces
 * a method the stock call_soon/call_later call (_call_soon, call_at: the
 * stock methods then run, and call it; decision 412). */
static int is_name(PyObject *name, PyObject *interned)
{
    return name == interned || (PyUnicode_Check(name) && PyUnicode_Compare(name, interned) == 0);
}

static int Core_setattro(PyObject *self, PyObject *name, PyObject *v)
{
    if (is_name(name, S.s_get_debug) || is_name(name, S.s_timer_handle_cancelled) ||
        is_name(name, S.s_internal_call_soon) || is_name(name, S.s_call_at))
        ((Core *)self)->patched = 1;
    if (is_name(name, S.s_time))
        ((Core *)self)->time_patched = 1;
    if (is_name(name, S.s_run_once))
        ((Core *)self)->run_once_patched = 1;
    if (is_name(name, S.s_call_soon))
        ((Core *)self)->soon_patched = 1;
    return PyObject_GenericSetAttr(self, name, v);
}

static PyMemberDef Core_members[] = {
    {"_ready", Py_T_OBJECT_EX, offsetof(Core, ready), 0, NULL},
    {"_scheduled", Py_T_OBJECT_EX, offsetof(Core, scheduled), 0, NULL},
    {"_stopping", Py_T_OBJECT_EX, offsetof(Core, stopping), 0, NULL},
    {"_debug", Py_T_OBJECT_EX, offsetof(Core, debug), 0, NULL},
    {"_closed", Py_T_OBJECT_EX, offsetof(Core, closed), 0, NULL},
    {"_timer_cancelled_count", Py_T_OBJECT_EX, offsetof(Core, tcc), 0, NULL},
    {"_clock_resolution", Py_T_OBJECT_EX, offsetof(Core, clock_res), 0, NULL},
    {"_task_factory", Py_T_OBJECT_EX, offsetof(Core, task_factory), 0, NULL},
    {"_dirty", Py_T_OBJECT_EX, offsetof(Core, dirty), 0, NULL},
    {"_turns", T_UINT, offsetof(Core, turns), READONLY, NULL},
    {"_transports", Py_T_OBJECT_EX, offsetof(Core, transports), 0, NULL},
    {"_sock_state", Py_T_OBJECT_EX, offsetof(Core, sock_state), 0, NULL},
    {"_sock_owner", Py_T_OBJECT_EX, offsetof(Core, sock_owner), 0, NULL},
    {"_sock_sending", Py_T_OBJECT_EX, offsetof(Core, sock_sending), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *Core_sched_track_ready(Core *self, PyObject *unused);

static PyMethodDef Core_methods[] = {
    {"call_soon", (PyCFunction)(void (*)(void))Core_call_soon, FASTKW, NULL},
    {"_call_soon", (PyCFunction)(void (*)(void))Core_internal_call_soon, FASTKW, NULL},
    {"call_at", (PyCFunction)(void (*)(void))Core_call_at, FASTKW, NULL},
    {"call_later", (PyCFunction)(void (*)(void))Core_call_later, FASTKW, NULL},
    {"create_task", (PyCFunction)(void (*)(void))Core_create_task, FASTKW, NULL},
    {"create_future", (PyCFunction)Core_create_future, METH_NOARGS,
     "Create a Future object attached to the loop."},
    {"time", (PyCFunction)Core_time, METH_NOARGS,
     "Return the time according to the event loop's clock (time.monotonic())."},
    {"get_debug", (PyCFunction)Core_get_debug, METH_NOARGS, NULL},
    {"_run_once", (PyCFunction)Core_run_once, METH_NOARGS, NULL},
    {"_sched_attach", (PyCFunction)Core_sched_attach, METH_VARARGS, NULL},
    {"_sched_detach", (PyCFunction)Core_sched_detach, METH_NOARGS, NULL},
    {"_sched_track_ready", (PyCFunction)Core_sched_track_ready, METH_NOARGS, NULL},
    {"_sched_looping", (PyCFunction)Core_sched_looping, METH_O, NULL},
    {"_sched_io_place", (PyCFunction)(void (*)(void))Core_sched_io_place, METH_FASTCALL, NULL},
    {"_sched_ahead", (PyCFunction)(void (*)(void))Core_sched_ahead, METH_FASTCALL, NULL},
    {"_sched_early", (PyCFunction)Core_sched_early, METH_O, NULL},
    {"_write_to_self", (PyCFunction)Core_write_to_self, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* object.__new__ (the stock loops' own), not PyType_GenericNew: CPython 3.11
 * gives an instance of a class with a managed __dict__ its inline values only
 * there; without them the first attribute set materializes a dict, and a
 * `loop.method()` in Python code specializes to LOAD_METHOD_WITH_DICT, not
 * the stock loop's LOAD_METHOD_WITH_VALUES: aiohttp's create_future, time,
 * create_task on every request probed the instance dict (decision 736). The
 * arguments are __init__'s: object.__new__ is handed none, as it wants from
 * a class whose __new__ is not its own. */
static PyObject *Core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    return PyBaseObject_Type.tp_new(type, S.empty_tuple, NULL);
}

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringloop._sched.Core",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The scheduler's hot paths in C (a base of uringloop.Loop).",
    .tp_traverse = (traverseproc)Core_traverse,
    .tp_clear = (inquiry)Core_clear,
    .tp_dealloc = (destructor)Core_dealloc,
    .tp_members = Core_members,
    .tp_methods = Core_methods,
    .tp_setattro = Core_setattro,
    .tp_new = Core_new,
};

/* ------------------------------------------------------ handle.cancel()
 * Our handles' cancel() (handles.c makes the types) does the stock methods'
 * steps in C when everything they call is stock:
 *
 *   Handle.cancel:       if not self._cancelled:
 *                            self._cancelled = True
 *                            if self._loop.get_debug(): self._repr = repr(self)
 *                            self._callback = None; self._args = None
 *   TimerHandle.cancel:  if not self._cancelled:
 *                            self._loop._timer_handle_cancelled(self)
 *                        super().cancel()
 *   BaseEventLoop._timer_handle_cancelled:
 *                        if handle._scheduled: self._timer_cancelled_count += 1
 *
 * that is: the stock class's cancel is still the stock function, the loop is
 * one of ours, out of debug mode, with the stock get_debug and
 * _timer_handle_cancelled (no subclass override, no instance attribute), the
 * slots hold the bools the stock code stores. Anything else calls the stock
 * class's cancel as it is now. */

static int stock_loop_method(PyObject *loop, PyObject *name, PyObject *fn)
{
    return _PyType_Lookup(Py_TYPE(loop), name) == fn;
}

static PyObject *handle_cancel(PyObject *h, int timer)
{
    PyTypeObject *base = timer ? S.timer_type : S.handle_type;
    PyObject *stock = timer ? S.stock_timer_cancel : S.stock_handle_cancel;
    PyObject *meth = _PyType_Lookup(base, S.s_cancel); /* borrowed */
    PyObject *loop = SLOT(h, S.off_loop);
    PyObject *cancelled = SLOT(h, S.off_cancelled);
    PyObject *scheduled = timer ? SLOT(h, S.off_scheduled) : Py_False;
    Core *core = loop != NULL && PyObject_TypeCheck(loop, &CoreType) ? (Core *)loop : NULL;
    int fast = meth == stock && core != NULL && core->debug == Py_False && !core->patched &&
               (cancelled == Py_True || cancelled == Py_False) &&
               (scheduled == Py_True || scheduled == Py_False) &&
               stock_get_debug(_PyType_Lookup(Py_TYPE(loop), S.s_get_debug)) &&
               (!timer || (stock_loop_method(loop, S.s_timer_handle_cancelled,
                                             S.base_timer_handle_cancelled) &&
                           core->tcc != NULL));
    if (!fast) {
        if (meth == NULL) {
            PyErr_SetString(PyExc_AttributeError, "cancel");
            return NULL;
        }
        /* the attribute as Python would fetch it from the stock class */
        descrgetfunc get = Py_TYPE(meth)->tp_descr_get;
        if (get == NULL)
            return PyObject_CallNoArgs(meth);
        PyObject *bound = get(meth, h, (PyObject *)Py_TYPE(h));
        if (bound == NULL)
            return NULL;
        PyObject *r = PyObject_CallNoArgs(bound);
        Py_DECREF(bound);
        return r;
    }
    if (cancelled == Py_True)
        Py_RETURN_NONE;
    if (scheduled == Py_True) {
        PyObject *n = PyNumber_Add(core->tcc, S.one);
        if (n == NULL)
            return NULL;
        Py_XSETREF(core->tcc, n);
    }
    slot_put(h, S.off_cancelled, Py_True);
    /* dropping the callback may run its finalizer: hold the handle meanwhile */
    Py_INCREF(h);
    slot_put(h, S.off_callback, Py_None);
    slot_put(h, S.off_args, Py_None);
    Py_DECREF(h);
    Py_RETURN_NONE;
}

static PyObject *Handle_cancel(PyObject *h, PyObject *unused)
{
    (void)unused;
    track(h); /* kept by its caller */
    return handle_cancel(h, 0);
}

/* _run() called from Python (the debug turn, a test): the stock method */
static PyObject *Handle_run(PyObject *h, PyObject *unused)
{
    (void)unused;
    track(h);
    return PyObject_CallOneArg(S.stock_run, h);
}

/* before BaseEventLoop.close clears _ready: every queued handle of ours
 * becomes tracked, so one kept elsewhere cannot hide a cycle for ever */
static PyObject *Core_sched_track_ready(Core *self, PyObject *unused)
{
    (void)unused;
    if (self->ready == NULL)
        Py_RETURN_NONE;
    PyObject *it = PyObject_GetIter(self->ready);
    if (it == NULL)
        return NULL;
    PyObject *h;
    while ((h = PyIter_Next(it)) != NULL) {
        track(h);
        Py_DECREF(h);
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *TimerHandle_cancel(PyObject *h, PyObject *unused)
{
    (void)unused;
    return handle_cancel(h, 1);
}

static PyMethodDef Handle_methods[] = {
    {"cancel", (PyCFunction)Handle_cancel, METH_NOARGS, NULL},
    {"_run", (PyCFunction)Handle_run, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef TimerHandle_methods[] = {
    {"cancel", (PyCFunction)TimerHandle_cancel, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

/* ------------------------------------------------------- CachedMethod
 * _asyncio looks up loop.call_soon on every Task step and every future
 * callback: a bound method allocated (and tracked by the GC) each time. This
 * descriptor hands out one bound method per loop instead. It is a non-data
 * descriptor like the method descriptor it wraps, so an instance attribute
 * (loop.call_soon = ..., mock.patch.object) still wins, and on the class it
 * gives the plain method descriptor. */

typedef struct {
    PyObject_HEAD
    PyObject *method; /* the method_descriptor of Core.call_soon */
} CachedMethod;

static PyObject *CachedMethod_get(CachedMethod *d, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None || !PyObject_TypeCheck(obj, &CoreType))
        return Py_TYPE(d->method)->tp_descr_get(d->method, obj, type);
    Core *core = (Core *)obj;
    if (core->bound_call_soon == NULL) {
        core->bound_call_soon = Py_TYPE(d->method)->tp_descr_get(d->method, obj, type);
        if (core->bound_call_soon == NULL)
            return NULL;
    }
    return Py_NewRef(core->bound_call_soon);
}

static void CachedMethod_dealloc(CachedMethod *d)
{
    Py_XDECREF(d->method);
    Py_TYPE(d)->tp_free((PyObject *)d);
}

static PyTypeObject CachedMethodType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "uringloop._sched.CachedMethod",
    .tp_basicsize = sizeof(CachedMethod),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A method descriptor that makes its bound method once per loop.",
    .tp_dealloc = (destructor)CachedMethod_dealloc,
    .tp_descr_get = (descrgetfunc)CachedMethod_get,
};

/* replace Core.call_soon's method descriptor by a CachedMethod wrapping it */
static int cache_call_soon(void)
{
    PyObject *name = PyUnicode_InternFromString("call_soon");
    PyObject *method = name ? PyDict_GetItemWithError(CoreType.tp_dict, name) : NULL;
    if (method == NULL) {
        Py_XDECREF(name);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError, "no Core.call_soon");
        return -1;
    }
    CachedMethod *d = PyObject_New(CachedMethod, &CachedMethodType);
    if (d == NULL) {
        Py_DECREF(name);
        return -1;
    }
    d->method = Py_NewRef(method);
    int r = PyDict_SetItem(CoreType.tp_dict, name, (PyObject *)d);
    Py_DECREF(d);
    Py_DECREF(name);
    PyType_Modified(&CoreType);
    return r;
}

/* ------------------------------------------------------------ setup() */

static int slot_offset(PyTypeObject *tp, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyObject_GetAttrString((PyObject *)tp, name);
    if (d == NULL)
        return -1;
    int ok = Py_IS_TYPE(d, &PyMemberDescr_Type) &&
             ((PyMemberDescrObject *)d)->d_member->type == Py_T_OBJECT_EX;
    if (ok)
        *out = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    if (!ok)
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", tp->tp_name, name);
    return ok ? 0 : -1;
}

static PyObject *setup(PyObject *mod, PyObject *args)
{
    PyObject *handle, *timer, *deque, *base, *op_future, *report, *run_debug, *heapify, *tasks;
    double max_timeout, fraction;
    Py_ssize_t min_scheduled;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!OOOdndO!:setup", &PyType_Type, &handle, &PyType_Type,
                          &timer, &PyType_Type, &deque, &PyType_Type, &base, &PyType_Type,
                          &op_future, &report, &run_debug, &heapify, &max_timeout,
                          &min_scheduled, &fraction, &PyModule_Type, &tasks))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)timer, (PyTypeObject *)handle)) {
        PyErr_SetString(PyExc_TypeError, "setup: TimerHandle must derive from Handle");
        return NULL;
    }
    S.handle_type = (PyTypeObject *)Py_NewRef(handle);
    S.timer_type = (PyTypeObject *)Py_NewRef(timer);
    S.deque_type = (PyTypeObject *)Py_NewRef(deque);
    S.op_future_type = (PyTypeObject *)Py_NewRef(op_future);
    S.report = Py_NewRef(report);
    S.run_debug = Py_NewRef(run_debug);
    S.heapify = Py_NewRef(heapify);
    S.tasks = Py_NewRef(tasks);
    S.tasks_dict = Py_NewRef(PyModule_GetDict(tasks));
    S.max_timeout = max_timeout;
    S.min_scheduled = min_scheduled;
    S.min_cancelled_fraction = fraction;
    if (slot_offset(S.handle_type, "_callback", &S.off_callback) < 0 ||
        slot_offset(S.handle_type, "_args", &S.off_args) < 0 ||
        slot_offset(S.handle_type, "_cancelled", &S.off_cancelled) < 0 ||
        slot_offset(S.handle_type, "_loop", &S.off_loop) < 0 ||
        slot_offset(S.handle_type, "_source_traceback", &S.off_tb) < 0 ||
        slot_offset(S.handle_type, "_repr", &S.off_repr) < 0 ||
        slot_offset(S.handle_type, "_context", &S.off_context) < 0 ||
        slot_offset(S.timer_type, "_when", &S.off_when) < 0 ||
        slot_offset(S.timer_type, "_scheduled", &S.off_scheduled) < 0)
        return NULL;
    if (!(S.deque_append = PyObject_GetAttrString(deque, "append")) ||
        !(S.deque_popleft = PyObject_GetAttrString(deque, "popleft")) ||
        !(S.base_call_soon = PyObject_GetAttrString(base, "call_soon")) ||
        !(S.base_internal_call_soon = PyObject_GetAttrString(base, "_call_soon")) ||
        !(S.base_call_at = PyObject_GetAttrString(base, "call_at")) ||
        !(S.base_call_later = PyObject_GetAttrString(base, "call_later")) ||
        !(S.base_run_once = PyObject_GetAttrString(base, "_run_once")) ||
        !(S.base_create_task = PyObject_GetAttrString(base, "create_task")) ||
        !(S.base_create_future = PyObject_GetAttrString(base, "create_future")) ||
        !(S.base_get_debug = PyObject_GetAttrString(base, "get_debug")) ||
        !(S.base_timer_handle_cancelled = PyObject_GetAttrString(base, "_timer_handle_cancelled")) ||
        !(S.stock_handle_cancel = PyObject_GetAttrString(handle, "cancel")) ||
        !(S.stock_timer_cancel = PyObject_GetAttrString(timer, "cancel")) ||
        !(S.stock_run = PyObject_GetAttrString(handle, "_run")))
        return NULL;
    for (PyMethodDef *m = S.deque_type->tp_methods; m != NULL && m->ml_name != NULL; m++) {
        if (strcmp(m->ml_name, "append") == 0 && m->ml_flags == METH_O)
            S.deque_append_c = m->ml_meth;
        else if (strcmp(m->ml_name, "popleft") == 0 && m->ml_flags == METH_NOARGS)
            S.deque_popleft_c = m->ml_meth;
    }
    PyObject *futures = PyImport_ImportModule("asyncio.futures");
    if (futures == NULL)
        return NULL;
    S.futures_dict = Py_NewRef(PyModule_GetDict(futures));
    Py_DECREF(futures);
    PyObject *heapq = PyImport_ImportModule("heapq");
    if (heapq == NULL)
        return NULL;
    S.heappop = PyObject_GetAttrString(heapq, "heappop");
    Py_DECREF(heapq);
    if (S.heappop == NULL)
        return NULL;
    ul_handle_offsets off = {
        .callback = S.off_callback, .args = S.off_args, .cancelled = S.off_cancelled,
        .loop = S.off_loop, .tb = S.off_tb, .repr = S.off_repr, .context = S.off_context,
        .when = S.off_when, .scheduled = S.off_scheduled,
    };
    if (ul_handles_setup(S.handle_type, S.timer_type, &off, Handle_methods,
                         TimerHandle_methods) < 0 ||
        PyModule_AddObject(mod, "Handle", Py_NewRef((PyObject *)ul_handle_type)) < 0 ||
        PyModule_AddObject(mod, "TimerHandle", Py_NewRef((PyObject *)ul_timer_type)) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* owner_is(owners, fd, sock): owners.get(fd) is a weak reference to sock.
 * sock.py asks it for every sock_* op that goes to the engine (is this the
 * socket last seen on that fd number?); in Python the check cost about 1,000
 * instructions (a method call and a weakref call), here about a tenth. */
static PyObject *owner_is(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    (void)mod;
    if (nargs != 3 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "owner_is(dict, fd, sock)");
        return NULL;
    }
    PyObject *ref = PyDict_GetItemWithError(args[0], args[1]); /* borrowed */
    if (!ref) {
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_FALSE;
    }
    if (!PyWeakref_CheckRef(ref))
        Py_RETURN_FALSE;
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj;
    if (PyWeakref_GetRef(ref, &obj) < 0)
        return NULL;
    int same = obj == args[2];
    Py_XDECREF(obj);
#else
    int same = PyWeakref_GET_OBJECT(ref) == args[2];
#endif
    return PyBool_FromLong(same);
}

#include "sock.c" /* the sock_* hot steps */

static PyMethodDef module_methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(Handle, TimerHandle, deque, BaseEventLoop, OpFuture, report, run_debug, heapify, "
     "max_timeout, min_scheduled, min_cancelled_fraction, asyncio.tasks)"},
    {"owner_is", (PyCFunction)(void (*)(void))owner_is, METH_FASTCALL,
     "owner_is(owners, fd, sock): owners.get(fd) is a weakref to sock"},
    {"sendto_method", (PyCFunction)(void (*)(void))ul_dgram_sendto_method, METH_FASTCALL,
     "sendto_method(cls, slot): the datagram transport class's sendto (dgram.c)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "uringloop._sched",
    "The scheduler's hot paths in C; see uringloop/_core/sched.c.", -1, module_methods,
    NULL, NULL, NULL, NULL,
};

#define INTERN(var, text) \
    if (!(S.var = PyUnicode_InternFromString(text))) return NULL

PyMODINIT_FUNC PyInit__sched(void)
{
    INTERN(s_time, "time");
    INTERN(s_context, "context");
    INTERN(s_cancelled, "_cancelled");
    INTERN(s_scheduled, "_scheduled");
    INTERN(s_when, "_when");
    INTERN(s_run, "_run");
    INTERN(s_popleft, "popleft");
    INTERN(s_append, "append");
    INTERN(s_pop, "pop");
    INTERN(s_extend, "extend");
    INTERN(s_call_at, "call_at");
    INTERN(s_done, "done");
    INTERN(s_set_result, "set_result");
    INTERN(s_dispatching, "_dispatching");
    INTERN(s_raise_error, "_raise_run_error");
    INTERN(s_name, "name");
    INTERN(s_task, "Task");
    INTERN(s_get_debug, "get_debug");
    INTERN(s_timer_handle_cancelled, "_timer_handle_cancelled");
    INTERN(s_future, "Future");
    INTERN(s_cancel, "cancel");
    if (!(S.one = PyLong_FromLong(1)) || !(S.empty_tuple = PyTuple_New(0)))
        return NULL;
    PyObject *s_loop = PyUnicode_InternFromString("loop");
    if (s_loop == NULL)
        return NULL;
#if PY_VERSION_HEX >= 0x030B0000
    S.task_kwnames = PyTuple_Pack(3, s_loop, S.s_name, S.s_context);
#else
    S.task_kwnames = PyTuple_Pack(2, s_loop, S.s_name);
#endif
    S.loop_kwnames = PyTuple_Pack(1, s_loop);
    Py_DECREF(s_loop);
    if (S.task_kwnames == NULL || S.loop_kwnames == NULL)
        return NULL;
    if (PyType_Ready(&CoreType) < 0 || PyType_Ready(&CachedMethodType) < 0 ||
        PyType_Ready(&TableType) < 0 ||
        cache_call_soon() < 0)
        return NULL;
    S.own_time = PyDict_GetItemWithError(CoreType.tp_dict, S.s_time);
    if (S.own_time == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_SystemError, "no Core.time");
    Py_INCREF(S.own_time);
    S.own_get_debug = PyDict_GetItemWithError(CoreType.tp_dict, S.s_get_debug);
    if (S.own_get_debug == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_SystemError, "no Core.get_debug");
    Py_INCREF(S.own_get_debug);
    S.own_call_at = PyDict_GetItemWithError(CoreType.tp_dict, S.s_call_at);
    if (S.own_call_at == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_SystemError, "no Core.call_at");
    Py_INCREF(S.own_call_at);
    INTERN(s_call_soon, "call_soon");
    S.own_call_soon = PyDict_GetItemWithError(CoreType.tp_dict, S.s_call_soon);
    if (S.own_call_soon == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_SystemError, "no Core.call_soon");
    Py_INCREF(S.own_call_soon);
    INTERN(s_run_once, "_run_once");
    INTERN(s_internal_call_soon, "_call_soon");
    S.own_internal_call_soon = PyDict_GetItemWithError(CoreType.tp_dict, S.s_internal_call_soon);
    if (S.own_internal_call_soon == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_SystemError, "no Core._call_soon");
    Py_INCREF(S.own_internal_call_soon);
    S.own_run_once = PyDict_GetItemWithError(CoreType.tp_dict, S.s_run_once);
    if (S.own_run_once == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_SystemError, "no Core._run_once");
    Py_INCREF(S.own_run_once);
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObject(m, "Table", Py_NewRef((PyObject *)&TableType)) < 0) {
        Py_DECREF((PyObject *)&TableType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddObject(m, "Core", Py_NewRef((PyObject *)&CoreType)) < 0) {
        Py_DECREF((PyObject *)&CoreType);
        Py_DECREF(m);
        return NULL;
    }
    if (stream_init_module(m) < 0 || sock_init_module(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    if (ul_dgram_init(m) < 0 || ul_ssl_init(m) < 0 ||
        PyModule_AddIntConstant(m, "COALESCE_MAX", COALESCE_MAX) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
