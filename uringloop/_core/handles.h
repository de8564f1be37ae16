/* The scheduler's own handle types (handles.c), shared with sched.c. */
#ifndef UL_HANDLES_H
#define UL_HANDLES_H

#include <Python.h>

/* where asyncio.events.Handle / TimerHandle keep their __slots__ */
typedef struct {
    Py_ssize_t callback, args, cancelled, loop, tb, repr, context; /* Handle */
    Py_ssize_t when, scheduled;                                    /* TimerHandle */
} ul_handle_offsets;

/* the types: subclasses of the stock Handle and TimerHandle (NULL before setup) */
extern PyTypeObject *ul_handle_type, *ul_timer_type;

/* Make the two types, derived from the stock classes, with these extra
 * methods (NULL-terminated arrays, may be NULL). 0, or -1 with an exception. */
int ul_handles_setup(PyTypeObject *handle_base, PyTypeObject *timer_base,
                     const ul_handle_offsets *off, PyMethodDef *handle_methods,
                     PyMethodDef *timer_methods);

/* A new instance of ul_handle_type or ul_timer_type: every slot NULL, tracked
 * by the GC if track (see sched.c, "lazy tracking"). The caller fills the
 * slots before any Python code can see it. */
PyObject *ul_handle_alloc(PyTypeObject *tp, int track);

#endif
