/*
 * index._scan: inner products of float32 queries with float32 or IEEE half-float rows.
 *
 * The exact search streams every row of a namespace once per search, so its speed is the
 * speed of reading memory, provided the arithmetic keeps up. FAISS's float16 scan (the
 * QT_fp16 scalar quantizer) does not: it folds each row into a single accumulator, so one
 * row's 32 fused multiply-adds (512-d, 16 lanes) wait on each other, and a core spends about
 * as long on a half-float row as on reading a float32 one. Here each row is summed into four
 * accumulators, so four multiply-adds are in flight at once and the scan runs at the rate
 * memory delivers half the bytes.
 *
 * top_k(rows, queries, top_scores, top_rows) writes the k best rows of each query, best
 * first: rows is a C-contiguous (n, d) buffer of float32 ('f') or float16 ('e'), queries a
 * C-contiguous (q, d) float32 buffer, top_scores and top_rows writable (q, k) float32 and
 * int64 buffers. inner_products(rows, queries, out) writes every score, out[j, i] =
 * <rows[i], queries[j]>, into a (q, n) float32 buffer (the tests check the arithmetic with
 * it). Both release the GIL while they run, so the search pool's threads scan segments side
 * by side.
 *
 * Code paths, chosen once at import from what the CPU reports: AVX-512 (F, BW, VL with
 * F16C and FMA), AVX2 (with F16C and FMA), or portable C; kernel() names the one in use and
 * set_kernel() switches (for the tests, which run every path this CPU can).
 * Sums are accumulated in float32 in a different order than FAISS's or BLAS's, so scores
 * can differ from theirs in the last bits of a float, never in ranking beyond such ties.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SCAN_X86 1
#include <immintrin.h>
#endif

/* Half-float rows converted to float32 at a time when several queries share them. */
#define WIDEN_ROWS 64

/* out[j * ldo + i] = <rows[i], queries[j]>: ldo lets a block of rows write into a wider out. */
typedef void (*f32_kernel)(const float *rows, Py_ssize_t n, Py_ssize_t d, const float *queries,
                           Py_ssize_t nq, float *out, Py_ssize_t ldo);
typedef void (*f16_kernel)(const uint16_t *rows, Py_ssize_t n, Py_ssize_t d,
                           const float *query, float *out);
typedef void (*widen_kernel)(const uint16_t *src, float *dst, Py_ssize_t count);

/* -- portable C --------------------------------------------------------------------------- */

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    uint32_t bits;
    if (exponent == 0x1fu) { /* inf or NaN */
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent != 0) { /* normal */
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa == 0) { /* signed zero */
        bits = sign;
    } else { /* subnormal: shift the mantissa up until it is normal */
        exponent = 113u;
        while ((mantissa & 0x400u) == 0) {
            mantissa <<= 1;
            exponent--;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13);
    }
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

static void widen_portable(const uint16_t *src, float *dst, Py_ssize_t count) {
    for (Py_ssize_t i = 0; i < count; i++) dst[i] = half_to_float(src[i]);
}

static void f32_portable(const float *rows, Py_ssize_t n, Py_ssize_t d, const float *queries,
                         Py_ssize_t nq, float *out, Py_ssize_t ldo) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const float *row = rows + i * d;
        for (Py_ssize_t j = 0; j < nq; j++) {
            const float *query = queries + j * d;
            float sum = 0.0f;
            for (Py_ssize_t c = 0; c < d; c++) sum += row[c] * query[c];
            out[j * ldo + i] = sum;
        }
    }
}

static void f16_portable(const uint16_t *rows, Py_ssize_t n, Py_ssize_t d, const float *query,
                         float *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        const uint16_t *row = rows + i * d;
        float sum = 0.0f;
        for (Py_ssize_t c = 0; c < d; c++) sum += half_to_float(row[c]) * query[c];
        out[i] = sum;
    }
}

#ifdef SCAN_X86

/* Each row is read front to back, one row after the other (a single sequential stream),
 * into four accumulators, so that four multiply-adds are in flight at once, and the cache
 * lines 1 KiB ahead are requested before each row is read. Measured on one core here (1M
 * rows, float32): without the prefetch 40.6 ms at 128-d and 146 ms at 512-d, with it 32.1
 * and 139, OpenBLAS's sgemv 33.8 and 142; a 2, 4 or 8 KiB distance, or scoring four rows side
 * by side, did no better. */

#define PREFETCH_AHEAD 1024

static inline void prefetch_ahead(const void *row, Py_ssize_t bytes) {
    const char *p = (const char *)row + PREFETCH_AHEAD;
    for (Py_ssize_t b = 0; b < bytes; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

/* -- AVX2 + F16C + FMA: 8 lanes; the d % 8 tail in scalar code ----------------------------- */

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define H8(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

AVX2 static inline float sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The row's lanes at column c: float32 as they are, or half floats widened. Inlined where
 * `half` is a constant, so each caller gets a loop of its own without the test. */
#define INLINE_AVX2 __attribute__((target("avx2,fma,f16c"), always_inline)) static inline

INLINE_AVX2 __m256 lanes8(const void *row, Py_ssize_t c, int half) {
    return half ? H8((const uint16_t *)row + c) : _mm256_loadu_ps((const float *)row + c);
}

INLINE_AVX2 float dot_avx2(const void *r, const float *q, Py_ssize_t d, int half) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    Py_ssize_t c = 0;
    for (; c + 32 <= d; c += 32) {
        a0 = _mm256_fmadd_ps(lanes8(r, c, half), _mm256_loadu_ps(q + c), a0);
        a1 = _mm256_fmadd_ps(lanes8(r, c + 8, half), _mm256_loadu_ps(q + c + 8), a1);
        a2 = _mm256_fmadd_ps(lanes8(r, c + 16, half), _mm256_loadu_ps(q + c + 16), a2);
        a3 = _mm256_fmadd_ps(lanes8(r, c + 24, half), _mm256_loadu_ps(q + c + 24), a3);
    }
    for (; c + 8 <= d; c += 8)
        a0 = _mm256_fmadd_ps(lanes8(r, c, half), _mm256_loadu_ps(q + c), a0);
    float s = sum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; c < d; c++)
        s += (half ? _cvtsh_ss(((const uint16_t *)r)[c]) : ((const float *)r)[c]) * q[c];
    return s;
}

AVX2 static void f32_avx2(const float *rows, Py_ssize_t n, Py_ssize_t d, const float *queries,
                          Py_ssize_t nq, float *out, Py_ssize_t ldo) {
    for (Py_ssize_t i = 0; i < n; i++) {
        prefetch_ahead(rows + i * d, d * 4);
        for (Py_ssize_t j = 0; j < nq; j++)
            out[j * ldo + i] = dot_avx2(rows + i * d, queries + j * d, d, 0);
    }
}

AVX2 static void f16_avx2(const uint16_t *rows, Py_ssize_t n, Py_ssize_t d, const float *q,
                          float *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        prefetch_ahead(rows + i * d, d * 2);
        out[i] = dot_avx2(rows + i * d, q, d, 1);
    }
}

AVX2 static void widen_avx2(const uint16_t *src, float *dst, Py_ssize_t count) {
    Py_ssize_t i = 0;
    for (; i + 8 <= count; i += 8) _mm256_storeu_ps(dst + i, H8(src + i));
    for (; i < count; i++) dst[i] = _cvtsh_ss(src[i]);
}

/* -- AVX-512 (F, BW, VL) + F16C + FMA: 16 lanes; the d % 16 tail by masked loads ---------- */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))
#define H16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))

AVX512 static inline __mmask16 tail_mask(Py_ssize_t count) {
    return (__mmask16)((1u << count) - 1u); /* count < 16 */
}

#define INLINE_AVX512                                                                     \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"), always_inline))      \
    static inline

INLINE_AVX512 __m512 lanes16(const void *row, Py_ssize_t c, int half) {
    return half ? H16((const uint16_t *)row + c) : _mm512_loadu_ps((const float *)row + c);
}

/* The first `count` (< 16) lanes at column c, zeros after. */
INLINE_AVX512 __m512 tail16(const void *row, Py_ssize_t c, Py_ssize_t count, int half) {
    __mmask16 m = tail_mask(count);
    return half ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + c))
                : _mm512_maskz_loadu_ps(m, (const float *)row + c);
}

INLINE_AVX512 float dot_avx512(const void *r, const float *q, Py_ssize_t d, int half) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    Py_ssize_t c = 0;
    for (; c + 64 <= d; c += 64) {
        a0 = _mm512_fmadd_ps(lanes16(r, c, half), _mm512_loadu_ps(q + c), a0);
        a1 = _mm512_fmadd_ps(lanes16(r, c + 16, half), _mm512_loadu_ps(q + c + 16), a1);
        a2 = _mm512_fmadd_ps(lanes16(r, c + 32, half), _mm512_loadu_ps(q + c + 32), a2);
        a3 = _mm512_fmadd_ps(lanes16(r, c + 48, half), _mm512_loadu_ps(q + c + 48), a3);
    }
    for (; c + 16 <= d; c += 16)
        a0 = _mm512_fmadd_ps(lanes16(r, c, half), _mm512_loadu_ps(q + c), a0);
    if (c < d) a1 = _mm512_fmadd_ps(tail16(r, c, d - c, half), tail16(q, c, d - c, 0), a1);
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

AVX512 static void f32_avx512(const float *rows, Py_ssize_t n, Py_ssize_t d,
                              const float *queries, Py_ssize_t nq, float *out, Py_ssize_t ldo) {
    for (Py_ssize_t i = 0; i < n; i++) {
        prefetch_ahead(rows + i * d, d * 4);
        for (Py_ssize_t j = 0; j < nq; j++)
            out[j * ldo + i] = dot_avx512(rows + i * d, queries + j * d, d, 0);
    }
}

AVX512 static void f16_avx512(const uint16_t *rows, Py_ssize_t n, Py_ssize_t d, const float *q,
                              float *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        prefetch_ahead(rows + i * d, d * 2);
        out[i] = dot_avx512(rows + i * d, q, d, 1);
    }
}

AVX512 static void widen_avx512(const uint16_t *src, float *dst, Py_ssize_t count) {
    Py_ssize_t i = 0;
    for (; i + 16 <= count; i += 16) _mm512_storeu_ps(dst + i, H16(src + i));
    if (i < count)
        _mm512_mask_storeu_ps(dst + i, tail_mask(count - i), tail16(src, i, count - i, 1));
}

#endif /* SCAN_X86 */

/* -- dispatch ----------------------------------------------------------------------------- */

static f32_kernel score_f32 = f32_portable;
static f16_kernel score_f16 = f16_portable;
static widen_kernel widen = widen_portable;
static const char *kernel_name = "portable";

/* Use the named code path; 0 if this CPU (or build) cannot run it. */
static int use_kernel(const char *name) {
    if (strcmp(name, "portable") == 0) {
        score_f32 = f32_portable;
        score_f16 = f16_portable;
        widen = widen_portable;
        kernel_name = "portable";
        return 1;
    }
#ifdef SCAN_X86
    __builtin_cpu_init();
    int f16c_fma = __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
    if (strcmp(name, "avx512") == 0 && f16c_fma && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl")) {
        score_f32 = f32_avx512;
        score_f16 = f16_avx512;
        widen = widen_avx512;
        kernel_name = "avx512";
        return 1;
    }
    if (strcmp(name, "avx2") == 0 && f16c_fma && __builtin_cpu_supports("avx2")) {
        score_f32 = f32_avx2;
        score_f16 = f16_avx2;
        widen = widen_avx2;
        kernel_name = "avx2";
        return 1;
    }
#endif
    return 0;
}

/* Several queries over half-float rows: widen a few rows at a time into float32 (they stay
 * in the first-level cache) and score every query against them, so that memory is read once
 * and each half float is converted once, not once per query. */
static int score_f16_batch(const uint16_t *rows, Py_ssize_t n, Py_ssize_t d,
                           const float *queries, Py_ssize_t nq, float *out, Py_ssize_t ldo) {
    float *wide = malloc((size_t)(WIDEN_ROWS * d) * sizeof(float));
    if (wide == NULL) return -1;
    for (Py_ssize_t i = 0; i < n; i += WIDEN_ROWS) {
        Py_ssize_t m = n - i < WIDEN_ROWS ? n - i : WIDEN_ROWS;
        widen(rows + i * d, wide, m * d);
        score_f32(wide, m, d, queries, nq, out + i, ldo);
    }
    free(wide);
    return 0;
}

/* Scores of the n rows for every query into out[j * ldo + i]; 0, or -1 if out of memory. */
static int score_rows(const void *rows, int half, Py_ssize_t n, Py_ssize_t d,
                      const float *queries, Py_ssize_t nq, float *out, Py_ssize_t ldo) {
    if (!half) {
        score_f32(rows, n, d, queries, nq, out, ldo);
        return 0;
    }
    if (nq == 1) {
        score_f16(rows, n, d, queries, out);
        return 0;
    }
    return score_f16_batch(rows, n, d, queries, nq, out, ldo);
}

/* -- top k -------------------------------------------------------------------------------- */

/* The k best rows of each query are kept in a min-heap whose root is the worst kept: the
 * lowest score, and of equal scores the later row. Rows arrive in order and only a strictly
 * higher score displaces the root, so of equal scores the earlier rows stay: the selection
 * FAISS's heaps make. Scores are computed a chunk of rows at a time into a buffer that stays
 * in cache, so the scan and the selection cost one pass over memory and nothing in Python. */

#define CHUNK_ROWS 4096

static inline int ranks_below(float score_a, int64_t row_a, float score_b, int64_t row_b) {
    return score_a < score_b || (score_a == score_b && row_a > row_b);
}

static inline void swap_entries(float *score, int64_t *row, Py_ssize_t a, Py_ssize_t b) {
    float s = score[a];
    int64_t r = row[a];
    score[a] = score[b];
    row[a] = row[b];
    score[b] = s;
    row[b] = r;
}

static void sift_down(float *score, int64_t *row, Py_ssize_t size, Py_ssize_t i) {
    for (;;) {
        Py_ssize_t left = 2 * i + 1, worst = i;
        if (left < size && ranks_below(score[left], row[left], score[worst], row[worst]))
            worst = left;
        if (left + 1 < size &&
            ranks_below(score[left + 1], row[left + 1], score[worst], row[worst]))
            worst = left + 1;
        if (worst == i) return;
        swap_entries(score, row, i, worst);
        i = worst;
    }
}

/* Best first: repeatedly move the root (the worst left) to the end of the shrinking heap. */
static void heap_to_sorted(float *score, int64_t *row, Py_ssize_t k) {
    for (Py_ssize_t size = k - 1; size > 0; size--) {
        swap_entries(score, row, 0, size);
        sift_down(score, row, size, 0);
    }
}

/* Offer m scores, of rows first_row.., to one query's heap of k. */
static void offer(float *score, int64_t *row, Py_ssize_t k, const float *scored, Py_ssize_t m,
                  Py_ssize_t first_row) {
    for (Py_ssize_t t = 0; t < m; t++) {
        if (scored[t] > score[0]) {
            score[0] = scored[t];
            row[0] = first_row + t;
            sift_down(score, row, k, 0);
        }
    }
}

static void empty_heaps(float *top_score, int64_t *top_row, Py_ssize_t count) {
    for (Py_ssize_t t = 0; t < count; t++) {
        top_score[t] = -INFINITY;
        top_row[t] = -1;
    }
}

static int select_top_k(const char *rows, int half, Py_ssize_t n, Py_ssize_t d,
                        const float *queries, Py_ssize_t nq, Py_ssize_t k, float *top_score,
                        int64_t *top_row) {
    empty_heaps(top_score, top_row, nq * k);
    float *chunk = malloc((size_t)(CHUNK_ROWS * nq) * sizeof(float));
    if (chunk == NULL) return -1;
    Py_ssize_t row_bytes = d * (half ? 2 : 4);
    for (Py_ssize_t start = 0; start < n; start += CHUNK_ROWS) {
        Py_ssize_t m = n - start < CHUNK_ROWS ? n - start : CHUNK_ROWS;
        if (score_rows(rows + start * row_bytes, half, m, d, queries, nq, chunk, CHUNK_ROWS)) {
            free(chunk);
            return -1;
        }
        for (Py_ssize_t j = 0; j < nq; j++)
            offer(top_score + j * k, top_row + j * k, k, chunk + j * CHUNK_ROWS, m, start);
    }
    free(chunk);
    for (Py_ssize_t j = 0; j < nq; j++) heap_to_sorted(top_score + j * k, top_row + j * k, k);
    return 0;
}

/* -- Python ------------------------------------------------------------------------------- */

static int get_matrix(PyObject *obj, Py_buffer *view, const char *name, int writable) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->ndim != 2) {
        PyErr_Format(PyExc_ValueError, "%s must be 2-dimensional, got %d dimensions", name,
                     view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* Buffers of `count` matrices, writable from `first_writable` on; on failure none is held. */
static int get_matrices(PyObject *const *objects, const char *const *names, int count,
                        int first_writable, Py_buffer *views) {
    for (int v = 0; v < count; v++) {
        if (get_matrix(objects[v], &views[v], names[v], v >= first_writable) < 0) {
            for (int u = 0; u < v; u++) PyBuffer_Release(&views[u]);
            return -1;
        }
    }
    return 0;
}

static void release_matrices(Py_buffer *views, int count) {
    for (int v = 0; v < count; v++) PyBuffer_Release(&views[v]);
}

/* Release the buffers and answer: ValueError(problem), MemoryError, or None. */
static PyObject *finish(Py_buffer *views, int count, const char *problem, int failed) {
    release_matrices(views, count);
    if (problem != NULL) {
        PyErr_SetString(PyExc_ValueError, problem);
        return NULL;
    }
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static int format_is(const Py_buffer *view, char code, Py_ssize_t itemsize) {
    const char *f = view->format;
    if (f != NULL && (f[0] == '<' || f[0] == '=' || f[0] == '@')) f++;
    return f != NULL && f[0] == code && f[1] == '\0' && view->itemsize == itemsize;
}

static PyObject *inner_products(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *objects[3];
    if (!PyArg_ParseTuple(args, "OOO:inner_products", &objects[0], &objects[1], &objects[2]))
        return NULL;
    static const char *const names[3] = {"rows", "queries", "out"};
    Py_buffer views[3];
    if (get_matrices(objects, names, 3, 2, views) < 0) return NULL;
    Py_buffer *rows = &views[0], *queries = &views[1], *out = &views[2];
    Py_ssize_t n = rows->shape[0], d = rows->shape[1], nq = queries->shape[0];
    int half = format_is(rows, 'e', 2);
    const char *problem = NULL;
    if (!half && !format_is(rows, 'f', 4))
        problem = "rows must be float32 or float16";
    else if (!format_is(queries, 'f', 4) || !format_is(out, 'f', 4))
        problem = "queries and out must be float32";
    else if (queries->shape[1] != d)
        problem = "queries and rows differ in dimension";
    else if (out->shape[0] != nq || out->shape[1] != n)
        problem = "out must have shape (len(queries), len(rows))";
    int failed = 0;
    if (problem == NULL && n > 0 && nq > 0) {
        Py_BEGIN_ALLOW_THREADS
        failed = score_rows(rows->buf, half, n, d, queries->buf, nq, out->buf, n);
        Py_END_ALLOW_THREADS
    }
    return finish(views, 3, problem, failed);
}

static PyObject *top_k(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *objects[4];
    if (!PyArg_ParseTuple(args, "OOOO:top_k", &objects[0], &objects[1], &objects[2],
                          &objects[3]))
        return NULL;
    static const char *const names[4] = {"rows", "queries", "top_scores", "top_rows"};
    Py_buffer views[4];
    if (get_matrices(objects, names, 4, 2, views) < 0) return NULL;
    Py_buffer *rows = &views[0], *queries = &views[1], *scores = &views[2], *found = &views[3];
    Py_ssize_t n = rows->shape[0], d = rows->shape[1], nq = queries->shape[0];
    Py_ssize_t k = scores->shape[1];
    int half = format_is(rows, 'e', 2);
    const char *problem = NULL;
    if (!half && !format_is(rows, 'f', 4))
        problem = "rows must be float32 or float16";
    else if (!format_is(queries, 'f', 4) || !format_is(scores, 'f', 4))
        problem = "queries and top_scores must be float32";
    else if (!format_is(found, 'l', 8) && !format_is(found, 'q', 8))
        problem = "top_rows must be int64";
    else if (queries->shape[1] != d)
        problem = "queries and rows differ in dimension";
    else if (scores->shape[0] != nq || found->shape[0] != nq || found->shape[1] != k)
        problem = "top_scores and top_rows must both have shape (len(queries), k)";
    int failed = 0;
    if (problem == NULL && nq > 0 && k > 0) {
        Py_BEGIN_ALLOW_THREADS
        failed = select_top_k(rows->buf, half, n, d, queries->buf, nq, k, scores->buf,
                              found->buf);
        Py_END_ALLOW_THREADS
    }
    return finish(views, 4, problem, failed);
}

static PyObject *top_k_of_scores(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *objects[3];
    if (!PyArg_ParseTuple(args, "OOO:top_k_of_scores", &objects[0], &objects[1], &objects[2]))
        return NULL;
    static const char *const names[3] = {"scores", "top_scores", "top_rows"};
    Py_buffer views[3];
    if (get_matrices(objects, names, 3, 1, views) < 0) return NULL;
    Py_buffer *all = &views[0], *scores = &views[1], *found = &views[2];
    Py_ssize_t nq = all->shape[0], n = all->shape[1], k = scores->shape[1];
    const char *problem = NULL;
    if (!format_is(all, 'f', 4) || !format_is(scores, 'f', 4))
        problem = "scores and top_scores must be float32";
    else if (!format_is(found, 'l', 8) && !format_is(found, 'q', 8))
        problem = "top_rows must be int64";
    else if (scores->shape[0] != nq || found->shape[0] != nq || found->shape[1] != k)
        problem = "top_scores and top_rows must both have shape (len(scores), k)";
    if (problem == NULL && nq > 0 && k > 0) {
        float *top_score = scores->buf;
        int64_t *top_row = found->buf;
        const float *scored = all->buf;
        Py_BEGIN_ALLOW_THREADS
        empty_heaps(top_score, top_row, nq * k);
        for (Py_ssize_t j = 0; j < nq; j++) {
            offer(top_score + j * k, top_row + j * k, k, scored + j * n, n, 0);
            heap_to_sorted(top_score + j * k, top_row + j * k, k);
        }
        Py_END_ALLOW_THREADS
    }
    return finish(views, 3, problem, 0);
}

static PyObject *kernel(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(unused)) {
    return PyUnicode_FromString(kernel_name);
}

/* For the tests, which check every path this CPU can run against numpy. */
static PyObject *set_kernel(PyObject *Py_UNUSED(self), PyObject *args) {
    const char *name;
    if (!PyArg_ParseTuple(args, "s:set_kernel", &name)) return NULL;
    if (!use_kernel(name)) {
        PyErr_Format(PyExc_ValueError, "this CPU cannot run the %s kernel", name);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"inner_products", inner_products, METH_VARARGS,
     "inner_products(rows, queries, out): out[j, i] = <rows[i], queries[j]>, in place."},
    {"top_k", top_k, METH_VARARGS,
     "top_k(rows, queries, top_scores, top_rows): the k = top_scores.shape[1] best rows of "
     "each query, best first, ties to the earlier row; -inf and -1 where rows run out."},
    {"top_k_of_scores", top_k_of_scores, METH_VARARGS,
     "top_k_of_scores(scores, top_scores, top_rows): the same selection over given (q, n) "
     "scores."},
    {"kernel", kernel, METH_NOARGS, "The code path in use: 'avx512', 'avx2' or 'portable'."},
    {"set_kernel", set_kernel, METH_VARARGS,
     "set_kernel(name): use that code path (tests); ValueError if this CPU cannot run it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "index._scan",
    .m_doc = "Inner products of float32 queries with float32 or float16 rows (index/_scan.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void) {
    if (!use_kernel("avx512")) use_kernel("avx2"); /* else stays portable */
    return PyModule_Create(&module);
}
