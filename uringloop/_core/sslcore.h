/* The SSL protocol's steady state (sslcore.c), part of uringloop._sched. */
#ifndef UL_SSLCORE_H
#define UL_SSLCORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* adds SSLProtocolCore, SSLTransportCore and ssl_setup() to the module;
 * -1 with an exception set */
int ul_ssl_init(PyObject *module);

#endif
