/* Borrowing Python buffers, shared by the compiled modules (_intmlp.c, _rans.c). */
#ifndef NIC_BUFFERS_H
#define NIC_BUFFERS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* A C-contiguous buffer of `items` items of `item_size` bytes (any whole number of items
 * when `items` is negative); ValueError naming `what` otherwise. */
static int take_buffer(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t items, Py_ssize_t item_size,
                       const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0)) < 0) return -1;
    if (items >= 0 ? view->len != items * item_size : view->len % item_size != 0) {
        if (items >= 0)
            PyErr_Format(PyExc_ValueError, "%s: expected %zd %zd-byte items, got %zd bytes", what, items, item_size,
                         view->len);
        else
            PyErr_Format(PyExc_ValueError, "%s: not a whole number of %zd-byte items", what, item_size);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Takes n buffers (objects, writable flags, item counts, item sizes, names); on failure
 * releases those already taken and returns -1. */
static int take_buffers(int n, PyObject **objs, Py_buffer *views, const int *writable, const Py_ssize_t *items,
                        const Py_ssize_t *item_size, const char **what) {
    for (int k = 0; k < n; k++) {
        if (take_buffer(objs[k], &views[k], writable[k], items[k], item_size[k], what[k]) < 0) {
            while (k-- > 0) PyBuffer_Release(&views[k]);
            return -1;
        }
    }
    return 0;
}

static void release_buffers(int n, Py_buffer *views) {
    while (n-- > 0) PyBuffer_Release(&views[n]);
}

/* The common end of a call: release its buffers, then raise ValueError(bad) when a check
   failed, MemoryError when an allocation did, else return None. */
static PyObject *finish_call(int n, Py_buffer *views, const char *bad, int no_memory) {
    release_buffers(n, views);
    if (bad) {
        PyErr_SetString(PyExc_ValueError, bad);
        return NULL;
    }
    if (no_memory) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

#endif
