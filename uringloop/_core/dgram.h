/* The datagram transport's hot half (dgram.c), part of uringloop._sched. */
#ifndef UL_DGRAM_H
#define UL_DGRAM_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

/* Sender addresses as the socket module makes them, cached per peer: the
 * engine table keeps one cache (the records of every datagram endpoint come
 * through it), so a peer that sends again gets the same tuple back. */
typedef struct ul_addr_cache ul_addr_cache;

/* raw sockaddr (len bytes) -> address (new reference); IPv4/IPv6 made here,
 * other families by decode(raw bytes); None when len is too short for a
 * family. *cache is allocated on first use. */
PyObject *ul_addr_obj(ul_addr_cache **cache, const uint8_t *raw, uint32_t len,
                      PyObject *decode);
/* raw IPv4 or IPv6 sockaddr (len bytes) -> address, uncached (new reference);
 * only for those two families */
PyObject *ul_addr_new(const uint8_t *raw, uint32_t len);
int ul_addr_cache_traverse(ul_addr_cache *cache, visitproc visit, void *arg);
void ul_addr_cache_free(ul_addr_cache **cache);

/* A datagram record straight to its owner, without the (payload, address)
 * tuple and the callback's arguments: ul_dgram_takes(owner, timers) is 1
 * when owner is a Dgram that would hand the record to datagram_received
 * now (0 when not, -1 with an exception set); ul_dgram_deliver then does (0, or -1 with
 * the exception the owner's call raised); addr was made from the rawlen-byte
 * sockaddr raw (ul_addr_obj), which sendto may then use for it. */
int ul_dgram_takes(PyObject *owner, Py_ssize_t timers, Py_ssize_t before, unsigned int seq);
/* timers: how many of the loop's _ready are due timers collected before the
 * batch (decision 414): they do not hold a datagram back. before: len(_ready)
 * at the batch's poll (-1: no batch), seq the batch's number: an endpoint's
 * first record of a batch waits only for what was there (decision 454).
 * ul_dgram_timers, _before and _seq say the same to a Dgram called with a
 * record the generic way (set only around that call). */
extern Py_ssize_t ul_dgram_timers, ul_dgram_before;
extern unsigned int ul_dgram_seq;
/* 1 when owner is a Dgram that had no record of batch seq yet (it has now), else 0 */
int ul_dgram_first(PyObject *owner, unsigned int seq);
int ul_dgram_deliver(PyObject *owner, PyObject *payload, PyObject *addr, const uint8_t *raw,
                     uint32_t rawlen);

/* _sched.sendto_method(cls, slot): the datagram transport class's sendto, a
 * C method over the Dgram its instances keep in slot (decision 315) */
PyObject *ul_dgram_sendto_method(PyObject *mod, PyObject *const *args, Py_ssize_t nargs);

/* adds the Dgram type to the module; -1 with an exception set */
int ul_dgram_init(PyObject *module);

#endif
