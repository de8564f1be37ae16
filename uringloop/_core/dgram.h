/* The datagram transport's hot half (dgram.c), part of uringloop._sched. */
#ifndef UL_DGRAM_H
#define UL_DGRAM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* adds the Dgram type to the module; -1 with an exception set */
int ul_dgram_init(PyObject *module);

#endif
