/* The scheduler's handles: asyncio.Handle and asyncio.TimerHandle, made cheap.
 *
 * Every callback the loop schedules is a handle, allocated by call_soon and
 * freed right after it ran, thousands of times per turn in a busy program.
 * The stock classes are Python classes with __slots__: generic allocation,
 * generic deallocation (subtype_dealloc walks the class hierarchy) and a
 * generic GC traversal (subtype_traverse walks the member descriptors) on
 * every one, and each allocation counts toward the next young-generation
 * collection, which then traverses every handle still queued.
 *
 * So the native scheduler makes its handles of two types derived, at import,
 * from the interpreter's own events.Handle and events.TimerHandle. They add
 * no slot and no Python-visible behaviour (every method, __repr__, __eq__,
 * __hash__ and ordering are the stock classes' own, inherited; isinstance()
 * holds), only C housekeeping:
 *
 *  - a free list per type: a dead handle keeps its memory (slots cleared,
 *    untracked) for the next call_soon, which neither mallocs nor counts an
 *    allocation toward the next collection;
 *  - tp_dealloc and tp_traverse that touch the known slots directly.
 *
 * sched.c adds a C cancel() (the stock method's steps, with the stock method
 * as the fallback). The types cannot be subclassed (no Py_TPFLAGS_BASETYPE):
 * nothing else has to share their deallocator.
 */
#include "handles.h"

#include <string.h>

PyTypeObject *ul_handle_type, *ul_timer_type;

static ul_handle_offsets OFF;

#define SLOT(o, off) (*(PyObject **)((char *)(o) + (off)))
#define FREE_MAX 1024 /* per type: a turn of a thousand callbacks reuses them all */

typedef struct {
    PyObject *items[FREE_MAX];
    int n;
} free_list;

static free_list free_handles, free_timers;

static inline int is_timer(PyObject *h)
{
    return Py_IS_TYPE(h, ul_timer_type);
}

static int handle_traverse(PyObject *h, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(h)); /* a heap type's instance keeps its type alive */
    Py_VISIT(SLOT(h, OFF.callback));
    Py_VISIT(SLOT(h, OFF.args));
    Py_VISIT(SLOT(h, OFF.cancelled));
    Py_VISIT(SLOT(h, OFF.loop));
    Py_VISIT(SLOT(h, OFF.tb));
    Py_VISIT(SLOT(h, OFF.repr));
    Py_VISIT(SLOT(h, OFF.context));
    if (is_timer(h)) {
        Py_VISIT(SLOT(h, OFF.when));
        Py_VISIT(SLOT(h, OFF.scheduled));
    }
    return 0;
}

static int handle_clear(PyObject *h)
{
    Py_CLEAR(SLOT(h, OFF.callback));
    Py_CLEAR(SLOT(h, OFF.args));
    Py_CLEAR(SLOT(h, OFF.cancelled));
    Py_CLEAR(SLOT(h, OFF.loop));
    Py_CLEAR(SLOT(h, OFF.tb));
    Py_CLEAR(SLOT(h, OFF.repr));
    Py_CLEAR(SLOT(h, OFF.context));
    if (is_timer(h)) {
        Py_CLEAR(SLOT(h, OFF.when));
        Py_CLEAR(SLOT(h, OFF.scheduled));
    }
    return 0;
}

static void handle_dealloc(PyObject *h)
{
    PyTypeObject *tp = Py_TYPE(h);
    PyObject_GC_UnTrack(h);
    Py_TRASHCAN_BEGIN(h, handle_dealloc)
    /* 3.12+: the stock classes' __weakref__ is managed, before the object
     * (a negative offset); the list must be cleared either way, or a weak
     * reference would outlive the handle and see the next one made in its
     * memory (decision 410) */
    if (tp->tp_weaklistoffset != 0 && SLOT(h, tp->tp_weaklistoffset) != NULL)
        PyObject_ClearWeakRefs(h);
    handle_clear(h);
    free_list *fl = tp == ul_timer_type ? &free_timers : &free_handles;
    if (fl->n < FREE_MAX)
        fl->items[fl->n++] = h; /* cleared and untracked: memory only */
    else
        tp->tp_free(h);
    Py_DECREF(tp);
    Py_TRASHCAN_END
}

PyObject *ul_handle_alloc(PyTypeObject *tp, int track)
{
    free_list *fl = tp == ul_timer_type ? &free_timers : &free_handles;
    PyObject *h;
    if (fl->n == 0) {
        h = PyType_GenericAlloc(tp, 0); /* zeroed, tracked */
        if (h != NULL && !track)
            PyObject_GC_UnTrack(h);
        return h;
    }
    h = fl->items[--fl->n];
    PyObject_Init(h, tp); /* type (a new reference to it) and refcount 1 */
    if (track)
        PyObject_GC_Track(h);
    return h;
}

static PyObject *make_type(const char *name, PyTypeObject *base, PyMethodDef *methods)
{
    PyType_Slot slots[] = {
        {Py_tp_dealloc, (void *)handle_dealloc},
        {Py_tp_traverse, (void *)handle_traverse},
        {Py_tp_clear, (void *)handle_clear},
        {Py_tp_methods, methods},
        {0, NULL},
    };
    if (methods == NULL)
        slots[3].slot = 0;
    PyType_Spec spec = {
        .name = name,
        .basicsize = (int)base->tp_basicsize, /* no slot of its own */
        .itemsize = 0,
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    PyObject *bases = PyTuple_Pack(1, (PyObject *)base);
    if (bases == NULL)
        return NULL;
    PyObject *tp = PyType_FromSpecWithBases(&spec, bases);
    Py_DECREF(bases);
    /* Error messages name a type by tp_name (3.10-3.12: a Python class's is
     * its bare name) or by __module__.__qualname__ (3.13): both say what the
     * stock class's say. The types are never freed, so a static string may
     * stand in tp_name. (uringloop._sched.Handle/TimerHandle are the types.) */
    if (tp != NULL)
        ((PyTypeObject *)tp)->tp_name = strrchr(name, '.') + 1;
    PyObject *mod = tp ? PyUnicode_FromString("asyncio.events") : NULL;
    if (mod == NULL || PyObject_SetAttrString(tp, "__module__", mod) < 0) {
        Py_XDECREF(mod);
        Py_XDECREF(tp);
        return NULL;
    }
    Py_DECREF(mod);
    return tp;
}

int ul_handles_setup(PyTypeObject *handle_base, PyTypeObject *timer_base,
                     const ul_handle_offsets *off, PyMethodDef *handle_methods,
                     PyMethodDef *timer_methods)
{
    if (ul_handle_type != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the handle types are made once");
        return -1;
    }
    if (handle_base->tp_itemsize != 0 || timer_base->tp_itemsize != 0 ||
        (handle_base->tp_flags & Py_TPFLAGS_HAVE_GC) == 0) {
        PyErr_SetString(PyExc_TypeError, "setup: Handle classes of an unexpected shape");
        return -1;
    }
    OFF = *off;
    /* "Handle" and "TimerHandle": what the stock __repr__ prints (the class's
     * __name__) and what error messages say (tp_name) */
    PyObject *h = make_type("uringloop._sched.Handle", handle_base, handle_methods);
    if (h == NULL)
        return -1;
    PyObject *t = make_type("uringloop._sched.TimerHandle", timer_base, timer_methods);
    if (t == NULL) {
        Py_DECREF(h);
        return -1;
    }
    ul_handle_type = (PyTypeObject *)h;
    ul_timer_type = (PyTypeObject *)t;
    return 0;
}
