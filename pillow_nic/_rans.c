/* Compiled decoding of constriction's rANS stream (pillow_nic.entropy's contract).
 *
 * The encoder is constriction's AnsCoder (64-bit state, 32-bit words, 24-bit probabilities),
 * and constriction stays the reference decoder.  This decodes the same streams without a
 * Python call per group of symbols and with a bucketed search instead of a full binary
 * search per symbol: for a batch of symbols and a table index per symbol, it decodes them
 * grouped by table in ascending table order (each group in batch order), the order in which
 * pillow_nic.entropy.Encoder coded them.
 *
 * A table is its cumulative frequencies cdf[0..n] (cdf[0] = 0, cdf[n] = 2**24, strictly
 * increasing), as constriction quantises it (pillow_nic.entropy builds them), and a bucket
 * index: bucket[b] is the symbol whose interval holds quantile b << (24 - BUCKET_BITS).
 *
 * One decoding step, exactly constriction's: quantile = state mod 2**24; the symbol s with
 * cdf[s] <= quantile < cdf[s + 1]; state = (state >> 24) * (cdf[s + 1] - cdf[s]) + quantile -
 * cdf[s]; if state < 2**32 and words remain, state = state << 32 | the last unread word.
 */

#include "_buffers.h"
#include <stdint.h>

#define PRECISION 24
#define BUCKET_BITS 10
#define BUCKETS ((1 << BUCKET_BITS) + 1)

typedef struct {
    const uint32_t *cdf;
    const int64_t *start;
    const int32_t *size;
    const uint16_t *bucket;
    int64_t n_tables;
} Tables;

static inline int64_t decode_one(uint64_t *state, const uint32_t *words, int64_t *remaining, const Tables *t,
                                 int64_t table) {
    const uint32_t *cdf = t->cdf + t->start[table];
    const uint16_t *bucket = t->bucket + table * BUCKETS;
    uint32_t quantile = (uint32_t)(*state & ((1u << PRECISION) - 1));
    uint32_t b = quantile >> (PRECISION - BUCKET_BITS);
    int64_t lo = bucket[b], hi = bucket[b + 1];
    while (lo < hi) { /* the last symbol in [lo, hi] whose interval starts at or below the quantile */
        int64_t mid = (lo + hi + 1) >> 1;
        if (cdf[mid] <= quantile) lo = mid; else hi = mid - 1;
    }
    *state = (*state >> PRECISION) * (uint64_t)(cdf[lo + 1] - cdf[lo]) + (quantile - cdf[lo]);
    if (*state < ((uint64_t)1 << 32) && *remaining > 0) *state = (*state << 32) | words[--*remaining];
    return lo;
}

/* Checks every table (once, in prepare): the decoder then never reads outside its buffers,
 * whatever the compressed words are. */
static const char *check_tables(const Tables *t, Py_ssize_t cdf_len) {
    for (int64_t k = 0; k < t->n_tables; k++) {
        int64_t s = t->start[k], n = t->size[k];
        if (n < 1 || n > 65535 || s < 0 || s + n + 1 > cdf_len) return "a table lies outside the cdf buffer";
        if (t->cdf[s] != 0 || t->cdf[s + n] != (1u << PRECISION)) return "a table does not span 0..2**24";
        for (int64_t j = 0; j < n; j++)
            if (t->cdf[s + j + 1] <= t->cdf[s + j]) return "a table gives a symbol no probability";
        const uint16_t *bucket = t->bucket + k * BUCKETS;
        for (int b = 0; b < BUCKETS; b++)
            if (bucket[b] >= n || (b && bucket[b] < bucket[b - 1])) return "a bucket index is out of order";
    }
    return NULL;
}

typedef struct {
    Py_buffer views[4]; /* cdf, starts, sizes, buckets: held while the capsule lives */
    Tables t;
} Prepared;

static void release_prepared(PyObject *capsule) {
    Prepared *p = PyCapsule_GetPointer(capsule, "nic.rans.tables");
    if (!p) return;
    release_buffers(4, p->views);
    PyMem_Free(p);
}

PyDoc_STRVAR(prepare_doc,
"prepare(cdf, starts, sizes, buckets) -> tables\n\n"
"Check a table set once and hold it for decode: cdf uint32, the tables' cumulative\n"
"frequencies concatenated; starts int64 and sizes int32, each table's offset in cdf and\n"
"symbol count; buckets uint16 (tables, 1025).  ValueError if any table is inconsistent.");

static PyObject *prepare(PyObject *self, PyObject *args) {
    PyObject *objs[4];
    if (!PyArg_ParseTuple(args, "OOOO", &objs[0], &objs[1], &objs[2], &objs[3])) return NULL;
    static const int writable[4] = {0, 0, 0, 0};
    static const Py_ssize_t items[4] = {-1, -1, -1, -1}, item_size[4] = {4, 8, 4, 2};
    static const char *what[4] = {"cdf", "starts", "sizes", "buckets"};
    Prepared *p = PyMem_Calloc(1, sizeof(Prepared));
    if (!p) return PyErr_NoMemory();
    if (take_buffers(4, objs, p->views, writable, items, item_size, what) < 0) {
        PyMem_Free(p);
        return NULL;
    }
    p->t = (Tables){p->views[0].buf, p->views[1].buf, p->views[2].buf, p->views[3].buf, p->views[1].len / 8};
    const char *bad = NULL;
    if (p->t.n_tables < 1 || p->views[2].len / 4 != p->t.n_tables || p->views[3].len / 2 != p->t.n_tables * BUCKETS)
        bad = "starts, sizes and buckets must describe the same tables";
    else
        bad = check_tables(&p->t, p->views[0].len / 4);
    PyObject *capsule = bad ? NULL : PyCapsule_New(p, "nic.rans.tables", release_prepared);
    if (capsule) return capsule;
    if (bad) PyErr_SetString(PyExc_ValueError, bad);
    release_buffers(4, p->views);
    PyMem_Free(p);
    return NULL;
}

PyDoc_STRVAR(decode_doc,
"decode(words, cursor, tables, indices, out)\n\n"
"Decode len(out) symbols, symbol i under table indices[i] of the prepared `tables`, grouped\n"
"by table (ascending, each group in batch order), into out (int64).  words: uint32\n"
"compressed words, read from the end; cursor: uint64 [state, unread words], updated;\n"
"indices: int32.  Releases the GIL.  ValueError on an index outside the tables.");

static PyObject *decode(PyObject *self, PyObject *args) {
    PyObject *objs[4], *capsule;
    if (!PyArg_ParseTuple(args, "OOOOO", &objs[0], &objs[1], &capsule, &objs[2], &objs[3])) return NULL;
    Prepared *p = PyCapsule_GetPointer(capsule, "nic.rans.tables");
    if (!p) return NULL;
    const Tables *t = &p->t;
    static const int writable[4] = {0, 1, 0, 1};
    static const Py_ssize_t items[4] = {-1, 2, -1, -1}, item_size[4] = {4, 8, 4, 8};
    static const char *what[4] = {"words", "cursor", "indices", "out"};
    Py_buffer v[4];
    if (take_buffers(4, objs, v, writable, items, item_size, what) < 0) return NULL;
    Py_ssize_t n = v[3].len / 8;
    uint64_t *cursor = v[1].buf;
    const int32_t *index = v[2].buf;
    const char *bad = NULL;
    if (cursor[1] > (uint64_t)(v[0].len / 4)) bad = "cursor must be [state, unread words <= len(words)]";
    else if (v[2].len / 4 != n) bad = "indices and out differ in length";
    int64_t *count = bad ? NULL : PyMem_Calloc((size_t)t->n_tables + 1, sizeof(int64_t));
    int64_t *order = bad ? NULL : PyMem_Malloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    int no_memory = !bad && (!count || !order);
    for (Py_ssize_t i = 0; i < n && !bad && !no_memory; i++) {
        if (index[i] < 0 || index[i] >= t->n_tables) bad = "a table index is out of range";
        else count[index[i] + 1]++;
    }
    if (!bad && !no_memory) {
        for (int64_t k = 0; k < t->n_tables; k++) count[k + 1] += count[k]; /* group starts */
        for (Py_ssize_t i = 0; i < n; i++) order[count[index[i]]++] = i; /* stable counting sort */
        int64_t *out = v[3].buf;
        const uint32_t *words = v[0].buf;
        Py_BEGIN_ALLOW_THREADS
        uint64_t state = cursor[0];
        int64_t remaining = (int64_t)cursor[1];
        for (Py_ssize_t k = 0; k < n; k++) {
            int64_t i = order[k];
            out[i] = decode_one(&state, words, &remaining, t, index[i]);
        }
        cursor[0] = state;
        cursor[1] = (uint64_t)remaining;
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(count);
    PyMem_Free(order);
    return finish_call(4, v, bad, no_memory);
}

static PyMethodDef methods[] = {
    {"prepare", prepare, METH_VARARGS, prepare_doc},
    {"decode", decode, METH_VARARGS, decode_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rans",
                                    "Compiled decoding of constriction's rANS streams.", -1, methods};

PyMODINIT_FUNC PyInit__rans(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "BUCKET_BITS", BUCKET_BITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
