/* Compiled evaluation of the lossless predictor's integer MLPs (pillow_nic.intnet's contract).
 *
 * A network is three layers, fan_in -> hidden -> hidden -> 2: z = x . w + b, then
 * floor(z / 2**shift) per output column (an arithmetic right shift), hidden layers clipped to
 * [0, cap].  Every value is an integer and every sum stays below 2**24 (checked when the
 * network is built), so int32 arithmetic gives exactly what ONNX Runtime's float32 graph and
 * the NumPy runtime give: the choice of implementation never changes a decoded bit.
 *
 * Weights arrive as int16 pairs packed in int32 words (w[o * pairs + p] holds the weights of
 * inputs 2p and 2p+1 of output o), the layout of the AVX-512 VNNI instruction vpdpwssd,
 * which multiplies and adds 32 int16 pairs into 16 int32 lanes, one row per lane.  CPUs
 * without it take a portable loop over the same words.
 */

#include "_buffers.h"
#include <stdint.h>
#include <string.h>

#define MAX_PAIRS 32 /* up to 64 inputs or hidden units */
#define LANES 32 /* rows per block: two vectors of 16, so every weight broadcast serves both */

typedef struct {
    int fan_in, hidden, cap;
    const int32_t *w[3], *b[3], *shift[3];
} Network;

static inline int16_t low_half(int32_t word) { return (int16_t)(word & 0xFFFF); }
static inline int16_t high_half(int32_t word) { return (int16_t)((uint32_t)word >> 16); }

/* Pack LANES rows of feature-major int16 columns into pair words, pair-major. */
static void pack_rows(const int16_t *columns, int n_features, int64_t n_rows, int64_t r0, int m,
                      int32_t *x) {
    int pairs = (n_features + 1) / 2;
    for (int p = 0; p < pairs; p++) {
        const int16_t *c0 = columns + (int64_t)(2 * p) * n_rows + r0;
        const int16_t *c1 = 2 * p + 1 < n_features ? columns + (int64_t)(2 * p + 1) * n_rows + r0 : NULL;
        for (int r = 0; r < LANES; r++) {
            int32_t v0 = r < m ? (int32_t)c0[r] : 0;
            int32_t v1 = (r < m && c1) ? (int32_t)c1[r] : 0;
            x[p * LANES + r] = (int32_t)(((uint32_t)v0 & 0xFFFF) | ((uint32_t)v1 << 16));
        }
    }
}

/* Portable layer over LANES rows: the same words, one row at a time. */
static void layer_portable(const int32_t *in, int pairs, const int32_t *w, const int32_t *b,
                           const int32_t *shift, int n_out, int cap, int32_t *out, int last) {
    for (int o = 0; o < n_out; o++) {
        for (int r = 0; r < LANES; r++) {
            int32_t z = b[o];
            for (int p = 0; p < pairs; p++) {
                int32_t xw = in[p * LANES + r], ww = w[o * pairs + p];
                z += (int32_t)low_half(xw) * low_half(ww) + (int32_t)high_half(xw) * high_half(ww);
            }
            z >>= shift[o];
            if (last) {
                out[o * LANES + r] = z;
                continue;
            }
            z = z < 0 ? 0 : z > cap ? cap : z;
            int32_t *dst = &out[(o >> 1) * LANES + r];
            *dst = (o & 1) ? (int32_t)(((uint32_t)*dst & 0xFFFF) | ((uint32_t)z << 16)) : z;
        }
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_VNNI_PATH 1
#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

VNNI static void layer_vnni(const int32_t *in, int pairs, const int32_t *w, const int32_t *b,
                            const int32_t *shift, int n_out, int cap, int32_t *out, int last) {
    const __m512i zero = _mm512_setzero_si512(), top = _mm512_set1_epi32(cap);
    const __m512i low = _mm512_set1_epi32(0xFFFF);
    for (int o0 = 0; o0 < n_out; o0 += 8) { /* 8 outputs x 2 vectors: 16 independent accumulators */
        __m512i acc[8][2];
        int count = n_out - o0 < 8 ? n_out - o0 : 8;
        for (int j = 0; j < count; j++) acc[j][0] = acc[j][1] = _mm512_set1_epi32(b[o0 + j]);
        for (int p = 0; p < pairs; p++) {
            __m512i x0 = _mm512_loadu_si512(in + p * LANES), x1 = _mm512_loadu_si512(in + p * LANES + 16);
            for (int j = 0; j < count; j++) {
                __m512i wv = _mm512_set1_epi32(w[(o0 + j) * pairs + p]);
                acc[j][0] = _mm512_dpwssd_epi32(acc[j][0], x0, wv);
                acc[j][1] = _mm512_dpwssd_epi32(acc[j][1], x1, wv);
            }
        }
        for (int j = 0; j < count; j++) {
            int o = o0 + j;
            for (int h = 0; h < 2; h++) {
                __m512i z = _mm512_sra_epi32(acc[j][h], _mm_cvtsi32_si128(shift[o]));
                if (last) {
                    _mm512_storeu_si512(out + o * LANES + 16 * h, z);
                    continue;
                }
                z = _mm512_min_epi32(_mm512_max_epi32(z, zero), top);
                int32_t *dst = out + (o >> 1) * LANES + 16 * h;
                if (o & 1)
                    _mm512_storeu_si512(dst, _mm512_or_si512(_mm512_loadu_si512(dst), _mm512_slli_epi32(z, 16)));
                else
                    _mm512_storeu_si512(dst, _mm512_and_si512(z, low));
            }
        }
    }
}

VNNI static void pack_rows_vnni(const int16_t *columns, int n_features, int64_t n_rows, int64_t r0, int m,
                                int32_t *x) {
    const __m512i low = _mm512_set1_epi32(0xFFFF);
    for (int h = 0; h < LANES / 16; h++) {
        int k = m - 16 * h < 0 ? 0 : m - 16 * h > 16 ? 16 : m - 16 * h;
        const __mmask16 valid = (__mmask16)((1u << k) - 1);
        for (int p = 0; p < (n_features + 1) / 2; p++) {
            const int16_t *c0 = columns + (int64_t)(2 * p) * n_rows + r0 + 16 * h;
            __m512i v0 = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(valid, c0));
            __m512i v1 = 2 * p + 1 < n_features ? _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(valid, c0 + n_rows))
                                                : _mm512_setzero_si512();
            _mm512_storeu_si512(x + p * LANES + 16 * h,
                                _mm512_or_si512(_mm512_and_si512(v0, low), _mm512_slli_epi32(v1, 16)));
        }
    }
}

static int cpu_has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
}
#else
#define HAVE_VNNI_PATH 0
static int cpu_has_vnni(void) { return 0; }
#endif

typedef void (*LayerFn)(const int32_t *, int, const int32_t *, const int32_t *, const int32_t *,
                        int, int, int32_t *, int);
typedef void (*PackFn)(const int16_t *, int, int64_t, int64_t, int, int32_t *);
typedef struct {
    PackFn pack;
    LayerFn layer;
} Path;

static const Path portable_path = {pack_rows, layer_portable};

static Path best_path(void) {
#if HAVE_VNNI_PATH
    static int vnni = -1;
    if (vnni < 0) vnni = cpu_has_vnni();
    if (vnni) return (Path){pack_rows_vnni, layer_vnni};
#endif
    return portable_path;
}

/* out: (2, n_rows) int32, the network's two output columns. */
static void run_network(const Network *net, const int16_t *columns, int64_t n_rows, int32_t *out,
                        Path path) {
    LayerFn layer = path.layer;
    int32_t x[MAX_PAIRS * LANES], a0[MAX_PAIRS * LANES], a1[MAX_PAIRS * LANES], y[2 * LANES];
    int pairs_in = (net->fan_in + 1) / 2, pairs_hidden = net->hidden / 2;
    for (int64_t r0 = 0; r0 < n_rows; r0 += LANES) {
        int m = n_rows - r0 < LANES ? (int)(n_rows - r0) : LANES;
        path.pack(columns, net->fan_in, n_rows, r0, m, x);
        layer(x, pairs_in, net->w[0], net->b[0], net->shift[0], net->hidden, net->cap, a0, 0);
        layer(a0, pairs_hidden, net->w[1], net->b[1], net->shift[1], net->hidden, net->cap, a1, 0);
        layer(a1, pairs_hidden, net->w[2], net->b[2], net->shift[2], 2, net->cap, y, 1);
        memcpy(out + r0, y, (size_t)m * sizeof(int32_t));
        memcpy(out + n_rows + r0, y + LANES, (size_t)m * sizeof(int32_t));
    }
}

PyDoc_STRVAR(predict_doc,
"predict(columns, fan_in, rows, hidden, cap, layers, out, portable=False)\n\n"
"Run one network on `rows` feature vectors given feature-major (fan_in, rows) int16;\n"
"`layers` is (w0, b0, s0, w1, b1, s1, w2, b2, s2) int32 buffers (weights as int16\n"
"pairs); writes the two outputs, (2, rows) int32, into `out`.  `portable` skips the\n"
"vectorised path (for tests: both must agree).  Releases the GIL.");

static PyObject *predict(PyObject *self, PyObject *args) {
    PyObject *columns_obj, *layers_obj, *out_obj;
    int fan_in, hidden, cap;
    Py_ssize_t rows;
    int portable = 0;
    if (!PyArg_ParseTuple(args, "OiniiOO|p", &columns_obj, &fan_in, &rows, &hidden, &cap, &layers_obj, &out_obj,
                          &portable))
        return NULL;
    if (fan_in < 1 || fan_in > 2 * MAX_PAIRS || hidden < 2 || hidden > 2 * MAX_PAIRS || hidden % 2 ||
        rows < 0 || cap < 0 || cap > 32767) {
        PyErr_SetString(PyExc_ValueError, "network or batch shape outside the kernel's limits");
        return NULL;
    }
    if (!PyTuple_Check(layers_obj) || PyTuple_GET_SIZE(layers_obj) != 9) {
        PyErr_SetString(PyExc_ValueError, "layers must be a tuple of 9 buffers");
        return NULL;
    }
    int pairs_in = (fan_in + 1) / 2, pairs_hidden = hidden / 2;
    /* w0, b0, s0, w1, b1, s1, w2, b2, s2, then the columns and the output */
    PyObject *objs[11];
    for (int k = 0; k < 9; k++) objs[k] = PyTuple_GET_ITEM(layers_obj, k);
    objs[9] = columns_obj;
    objs[10] = out_obj;
    static const int writable[11] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static const Py_ssize_t item_size[11] = {4, 4, 4, 4, 4, 4, 4, 4, 4, 2, 4};
    static const char *what[11] = {"layer", "layer", "layer", "layer", "layer", "layer", "layer", "layer", "layer",
                                   "columns", "out"};
    const Py_ssize_t items[11] = {(Py_ssize_t)hidden * pairs_in, hidden, hidden,
                                  (Py_ssize_t)hidden * pairs_hidden, hidden, hidden,
                                  (Py_ssize_t)2 * pairs_hidden, 2, 2, (Py_ssize_t)fan_in * rows, 2 * rows};
    Py_buffer v[11];
    if (take_buffers(11, objs, v, writable, items, item_size, what) < 0) return NULL;
    Network net = {fan_in, hidden, cap, {0}, {0}, {0}};
    int bad_shift = 0;
    for (int l = 0; l < 3; l++) {
        net.w[l] = v[3 * l].buf;
        net.b[l] = v[3 * l + 1].buf;
        net.shift[l] = v[3 * l + 2].buf;
        for (int o = 0; o < (l < 2 ? hidden : 2); o++) bad_shift |= net.shift[l][o] < 0 || net.shift[l][o] > 30;
    }
    if (!bad_shift) {
        Py_BEGIN_ALLOW_THREADS
        run_network(&net, v[9].buf, rows, v[10].buf, portable ? portable_path : best_path());
        Py_END_ALLOW_THREADS
    }
    return finish_call(11, v, bad_shift ? "shifts must lie in 0..30" : NULL, 0);
}

/* Causal neighbourhoods of one target lattice (pillow_nic.interlace's contract).
 *
 * A lattice is (row0, col0, row_step, col_step, rows, cols) over the plane; a neighbour is
 * (lattice, dr, dc, out_row): the lattice sample at (i + dr, j + dc) for target (i, j), the
 * indices clamped into the lattice.  The base is the floor of the mean of the four
 * neighbours named by `nearest`; each neighbour minus the base goes to row out_row of the
 * feature-major int16 columns.  The same integers as the NumPy gathering, without its
 * padded copies. */
#define MAX_LATTICES 4
#define MAX_NEIGHBOURS 32

static inline int64_t clamp64(int64_t v, int64_t hi) { return v < 0 ? 0 : v > hi ? hi : v; }
static inline int32_t floor_quarter(int32_t s) { return s >= 0 ? s >> 2 : -((-s + 3) >> 2); }

/* row[j] = lattice row sample at column j + dc (clamped), j < cols; the unclamped middle is a
 * plain strided copy the compiler vectorises (stride 2 at level 0, most of the work). */
static void load_row(const int32_t *row, const int32_t *L, int64_t dc, int64_t cols, int32_t *out) {
    const int32_t *r = row + L[1];
    int64_t step = L[3], last = L[5] - 1;
    int64_t a = -dc < 0 ? 0 : -dc > cols ? cols : -dc;
    int64_t z = last - dc + 1 < a ? a : last - dc + 1 > cols ? cols : last - dc + 1;
    for (int64_t j = 0; j < a; j++) out[j] = r[clamp64(j + dc, last) * step];
    if (step == 2) {
        const int32_t *m = r + 2 * dc;
        for (int64_t j = a; j < z; j++) out[j] = m[2 * j];
    } else {
        for (int64_t j = a; j < z; j++) out[j] = r[(j + dc) * step];
    }
    for (int64_t j = z; j < cols; j++) out[j] = r[clamp64(j + dc, last) * step];
}

static void gather_rows(const int32_t *plane, int64_t width, const int32_t (*lat)[6], const int32_t (*nb)[4],
                        int n_nb, const int32_t *nearest, int64_t rows, int64_t cols, int16_t *columns,
                        int64_t n_total, int64_t start, int32_t *base, int32_t *values) {
    for (int64_t i = 0; i < rows; i++) {
        for (int k = 0; k < n_nb; k++) {
            const int32_t *L = lat[nb[k][0]];
            load_row(plane + (L[0] + clamp64(i + nb[k][1], L[4] - 1) * L[2]) * width, L, nb[k][2], cols,
                     values + k * cols);
        }
        int32_t *b = base + start + i * cols;
        const int32_t *v0 = values + nearest[0] * cols, *v1 = values + nearest[1] * cols;
        const int32_t *v2 = values + nearest[2] * cols, *v3 = values + nearest[3] * cols;
        for (int64_t j = 0; j < cols; j++) b[j] = floor_quarter(v0[j] + v1[j] + v2[j] + v3[j]);
        for (int k = 0; k < n_nb; k++) {
            const int32_t *v = values + k * cols;
            int16_t *dst = columns + (int64_t)nb[k][3] * n_total + start + i * cols;
            for (int64_t j = 0; j < cols; j++) dst[j] = (int16_t)(v[j] - b[j]);
        }
    }
}

PyDoc_STRVAR(gather_doc,
"gather(plane, height, width, lattices, neighbours, nearest, rows, cols, columns, n_features, n_total, start, base)\n\n"
"Write the features of a rows x cols target lattice into columns (n_features, n_total) int16 at\n"
"column `start`, and its bases into base (n_total,) int32.  `plane` is (height, width) int32;\n"
"`lattices` (L, 6), `neighbours` (K, 4) and `nearest` (4,) are int32 (see above).  Every index\n"
"is validated: a lattice that leaves the plane, a neighbour naming no lattice or row, or a\n"
"batch that leaves the outputs is a ValueError.  Plane values must lie in -32768..32767.");

static PyObject *gather(PyObject *self, PyObject *args) {
    PyObject *objs[6];
    Py_ssize_t height, width, rows, cols, n_total, start;
    int n_features;
    if (!PyArg_ParseTuple(args, "OnnOOOnnOinnO", &objs[0], &height, &width, &objs[1], &objs[2], &objs[3], &rows,
                          &cols, &objs[4], &n_features, &n_total, &start, &objs[5]))
        return NULL;
    if (height < 1 || width < 1 || rows < 0 || cols < 0 || n_features < 1 || start < 0 || n_total < 0 ||
        start + rows * cols > n_total) {
        PyErr_SetString(PyExc_ValueError, "gather: shapes out of range");
        return NULL;
    }
    /* plane, lattices (6 int32 each), neighbours (4 int32 each), nearest, columns, base */
    static const int writable[6] = {0, 0, 0, 0, 1, 1};
    static const Py_ssize_t item_size[6] = {4, 24, 16, 4, 2, 4};
    static const char *what[6] = {"plane", "lattices", "neighbours", "nearest", "columns", "base"};
    const Py_ssize_t items[6] = {height * width, -1, -1, 4, (Py_ssize_t)n_features * n_total, n_total};
    Py_buffer v[6];
    if (take_buffers(6, objs, v, writable, items, item_size, what) < 0) return NULL;
    int n_lat = (int)(v[1].len / 24), n_nb = (int)(v[2].len / 16);
    const int32_t (*L)[6] = v[1].buf;
    const int32_t (*N)[4] = v[2].buf;
    const int32_t *nearest = v[3].buf;
    const char *bad = NULL;
    if (n_lat < 1 || n_lat > MAX_LATTICES || n_nb < 1 || n_nb > MAX_NEIGHBOURS)
        bad = "gather: 1-4 lattices of 6 and 1-32 neighbours of 4 int32";
    for (int l = 0; !bad && l < n_lat; l++)
        if (L[l][0] < 0 || L[l][1] < 0 || L[l][2] < 1 || L[l][3] < 1 || L[l][4] < 1 || L[l][5] < 1 ||
            L[l][0] + (int64_t)(L[l][4] - 1) * L[l][2] >= height || L[l][1] + (int64_t)(L[l][5] - 1) * L[l][3] >= width)
            bad = "gather: a lattice leaves the plane";
    for (int k = 0; !bad && k < n_nb; k++)
        if (N[k][0] < 0 || N[k][0] >= n_lat || N[k][3] < 0 || N[k][3] >= n_features)
            bad = "gather: a neighbour names no lattice or feature row";
    for (int k = 0; !bad && k < 4; k++)
        if (nearest[k] < 0 || nearest[k] >= n_nb) bad = "gather: nearest names no neighbour";
    int32_t *values = bad ? NULL : PyMem_Malloc(sizeof(int32_t) * (size_t)(n_nb * (cols ? cols : 1)));
    int no_memory = !bad && !values;
    if (values) {
        Py_BEGIN_ALLOW_THREADS
        gather_rows(v[0].buf, width, L, N, n_nb, nearest, rows, cols, v[4].buf, n_total, start, v[5].buf, values);
        Py_END_ALLOW_THREADS
        PyMem_Free(values);
    }
    return finish_call(6, v, bad, no_memory);
}

static PyObject *instruction_set(PyObject *self, PyObject *unused) {
    return PyUnicode_FromString(best_path().layer == layer_portable ? "portable" : "avx512-vnni");
}

static PyMethodDef methods[] = {
    {"predict", predict, METH_VARARGS, predict_doc},
    {"gather", gather, METH_VARARGS, gather_doc},
    {"instruction_set", instruction_set, METH_NOARGS, "The path this CPU takes: 'avx512-vnni' or 'portable'."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_intmlp",
                                    "Compiled integer-exact MLPs for the lossless predictor.", -1, methods};

PyMODINIT_FUNC PyInit__intmlp(void) { return PyModule_Create(&module); }
