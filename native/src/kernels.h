/* kernels.h — internal: what a kernel set is, prepared activations, and byte readers.
 *
 * Not part of the public API (edgeq.h). Kernels receive arguments already validated by the public
 * entry points in src/quant_types.c: known type, non-NULL pointers, data long enough, rows in range.
 * Each ISA file (ref/gemv.c, scalar/gemv.c, x86/avx2.c, x86/avx512.c, arm/neon.c, and
 * arm/neon_packed.c for neon-dotprod; x86/avx2.c also avx2-lut8) defines one `const eq_kernel_set eq_kernels_<isa>`;
 * src/kernel_sets.c lists them once and picks one.
 *
 * Specialized bodies: a SIMD gemm switches on (bits, group) to an always-inline body compiled once
 * per pair with both constant (loops unrolled), the default case the same body with run-time values.
 * With EQ_KERNELS_GENERIC defined (the Makefile's sanitizer and fuzz builds) only the default case is
 * compiled: the same code under ASan/UBSan in seconds per file instead of minutes (avx512_prefill.c
 * took 240 s under clang's sanitizers with all 18 bodies); the optimized builds keep every case.
 */
#ifndef EDGEQ_KERNELS_H
#define EDGEQ_KERNELS_H

#include <stdint.h>
#include <string.h>

#include "edgeq.h"

/* EQ_UNROLL(n): `#pragma GCC unroll n` in the optimized builds; nothing in EQ_KERNELS_GENERIC builds,
 * where unrolling buys nothing and clang's sanitizers spent 60-100 s on avx2_prefill.c's unrolled
 * loops alone (4 s without them). */
#define EQ_PRAGMA(text) _Pragma(#text)
#ifdef EQ_KERNELS_GENERIC
#define EQ_UNROLL(n)
#else
#define EQ_UNROLL(n) EQ_PRAGMA(GCC unroll n)
#endif

/* Software prefetch of the weight stream in the decode kernels: a gemm about to read a block of
 * `bytes` asks for the block EQ_PREFETCH_AHEAD bytes further on, one request per 64-byte line.
 * The hardware prefetchers stop at every 4 KB page of a stream (they work on physical addresses),
 * and a decode gemm reads each weight once from memory: on Zen 3 (Qwen2.5-0.5B, avx2) the 8-bit
 * file decoded 1.25-1.43x as fast with these requests, bit-plane files 1.10-1.28x; distances from
 * 512 to 8192 bytes measured the same (benchmarks/README.md "Software prefetch in the decode
 * kernels"). A prefetch never faults, so asking past the end of the data is harmless; the address
 * is computed as an integer so that no pointer past its object is formed. */
enum { EQ_PREFETCH_AHEAD = 2048, EQ_CACHE_LINE = 64 };

static inline void eq_prefetch_ahead(const uint8_t *block, size_t bytes)
{
    const uintptr_t first = (uintptr_t)block + EQ_PREFETCH_AHEAD;
    for (size_t offset = 0; offset < bytes; offset += EQ_CACHE_LINE)
        __builtin_prefetch((const void *)(first + offset), 0, 3);
}

/* ---- what a kernel set is --------------------------------------------------------------------
 *
 * A kernel set (one per ISA: ref/, scalar/, x86/avx2.c, ...) is one struct: for every type family,
 * how it multiplies that family (prepare the input once, then gemm over a batch of vectors) and
 * dequantizes it, plus the fp16, int8 and int4 attention helpers. A set may leave a family (or a helper) empty:
 * the next available set in the list (src/kernel_sets.c) fills the gap, the reference last, so a new
 * family needs only the reference to run everywhere. Generic code never sees a set's buffer layout:
 * it asks the family's prepared_bytes for the size and hands the bytes from prepare to gemm. */

enum {
    EQ_PREPARED_ALIGN = 64,   /* every vector's prepared bytes start 64-byte aligned */
    EQ_LARGEST_GROUP = 128    /* prepared inputs cover cols rounded up to this, zeros past cols */
};

/* A batch of input vectors as one family's gemm reads them. */
typedef struct eq_input {
    size_t n, cols;                 /* n vectors of cols activations */
    const float *x;                 /* (n, cols) row-major, the caller's */
    const uint8_t *prepared;        /* (n, stride) what the family's prepare derived; NULL if none */
    size_t stride;                  /* bytes per vector of prepared, a multiple of EQ_PREPARED_ALIGN */
} eq_input;

/* out (row_count, cols) = rows [row_begin, row_begin + row_count) of W (rows, cols) */
typedef void (*eq_dequantize_rows_fn)(const eq_qtype_traits *type, const uint8_t *data,
                                      size_t rows, size_t cols, size_t row_begin, size_t row_count,
                                      float *out);

/* Bytes of prepared data for one vector of cols activations (before rounding to the alignment). */
typedef size_t (*eq_prepared_bytes_fn)(size_t cols);

/* out (prepared_bytes(cols),) = what gemm needs of one input vector x (cols,) */
typedef void (*eq_prepare_fn)(const float *x, size_t cols, uint8_t *out);

/* y[v * y_stride + r] = (W in->x[v])[r] for every vector v < in->n and row r < rows */
typedef void (*eq_gemm_fn)(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                           size_t cols, const eq_input *in, float *y, size_t y_stride);

/* Attention over an fp16 KV cache, over n_rows cache rows of n fp16 values, row r at a + r stride
 * (x + r stride): the scores out[r] = Σ_i a[r stride + i] b[i], and the weighted sum of the values
 * y[i] += Σ_r w[r] x[r stride + i], added row after row (each element's sum in the order r = 0, 1,
 * ..., as n_rows calls with one row each would: one call per head and token, not one per cached
 * position, so the call, the row's bookkeeping and, in the sum, the loads and stores of y are paid
 * once instead of once per position). */
typedef void (*eq_dot_f16_fn)(const uint16_t *a, size_t stride, size_t n_rows, const float *b, size_t n,
                              float *out);
typedef void (*eq_axpy_f16_fn)(float *y, const float *w, const uint16_t *x, size_t stride, size_t n_rows,
                               size_t n);
/* e^x for the softmax and silu: y[i] = e^x[i] for i < n (y may be x), the same bits in every set,
 * the steps of eq_exp_ref, each a separate float operation (no fused multiply-add):
 *   x above EQ_EXP_HIGH: +inf; below EQ_EXP_LOW: 0 (e^x < 1.7e-38, under float's normal range); NaN: x;
 *   else t = x log2(e) + 1.5 2^23 (rounds x log2(e) to an integer k, ties to even), k = t - 1.5 2^23,
 *   r = (x - k LN2_HIGH) - k LN2_LOW (Cody and Waite: LN2_HIGH has few bits, so k LN2_HIGH is exact),
 *   p = ((((c5 r + c4) r + c3) r + c2) r + c1) r + c0 (Cephes' expf coefficients, |r| <= ln(2) / 2),
 *   y = (((p (r r)) + r) + 1) 2^k, 2^k built from k's bits (k in [-126, 127]: a normal float).
 * Within 1 ulp of e^x (native/tests/check_attention.c measures it: 0.97 at most). */
#define EQ_EXP_HIGH 88.0f
#define EQ_EXP_LOW (-87.0f)
#define EQ_EXP_LOG2E 1.44269504088896341f
#define EQ_EXP_ROUNDER 12582912.0f            /* 1.5 2^23; its bits 0x4b400000 */
#define EQ_EXP_LN2_HIGH 0.693359375f
#define EQ_EXP_LN2_LOW (-2.12194440e-4f)
#define EQ_EXP_C5 1.9875691500e-4f
#define EQ_EXP_C4 1.3981999507e-3f
#define EQ_EXP_C3 8.3334519073e-3f
#define EQ_EXP_C2 4.1665795894e-2f
#define EQ_EXP_C1 1.6666665459e-1f
#define EQ_EXP_C0 5.0000001201e-1f
typedef void (*eq_exp_fn)(const float *x, float *y, size_t n);

/* The cache's writer: out[i] = eq_fp32_to_fp16(x[i]) for i < n, bit for bit (round to nearest even,
 * overflow to inf, subnormals kept, NaN quiet with its top payload bits). */
typedef void (*eq_to_f16_fn)(const float *x, size_t n, uint16_t *out);

/* Attention over an int8 KV cache (EQ_KV_Q8): a row of n values (one head of one token) is n int8
 * levels q in blocks of EQ_KV_Q8_BLOCK values (the last block may be shorter), block b with one fp16
 * scale d[b]: value i = d[i / EQ_KV_Q8_BLOCK] q[i]. eq_kv_q8_quantize (ref/gemv.c, the one writer)
 * sets d = fp16(max |x| / 127) and q = round(x / d) in [-127, 127]. The dot is Σ_b d[b] Σ_{i in b}
 * q[i] b[i] and the axpy y[i] += (w d[b]) q[i]; sets differ from ref only in the order of the float
 * sums (bound in native/tests/check_attention.c). The block is 32 (measured against one scale per
 * head in benchmarks/README.md "KV cache"); -DEQ_KV_Q8_BLOCK=n builds another for such measurements. */
#ifndef EQ_KV_Q8_BLOCK
#define EQ_KV_Q8_BLOCK 32
#endif
typedef float (*eq_dot_q8_fn)(const int8_t *a, const uint16_t *scales, const float *b, size_t n);
typedef void (*eq_axpy_q8_fn)(float *y, float w, const int8_t *x, const uint16_t *scales, size_t n);

/* Scales per row of n values: ceil(n / EQ_KV_Q8_BLOCK). */
static inline size_t eq_kv_q8_blocks(size_t n)
{
    return (n + EQ_KV_Q8_BLOCK - 1) / EQ_KV_Q8_BLOCK;
}

/* Attention over an int4 value cache (the values of EQ_KV_K8V4; its keys are the int8 cache above):
 * a row of n values is cut into blocks of EQ_KV_Q4_BLOCK values (the last may be shorter), block b
 * with one fp16 scale d[b], which may be negative: value i = d[i / EQ_KV_Q4_BLOCK] q[i], levels q in
 * [-8, 7] stored as q + 8, two per byte: value i in byte i / 2, the low nibble for even i, the high
 * for odd i ((n + 1) / 2 bytes; an odd n leaves the last high nibble 0). eq_kv_q4_quantize
 * (ref/gemv.c, the one writer) sets d = fp16(m / -8), m the block's value of largest magnitude, and
 * q = round(x / d) clamped to [-8, 7]: m itself is level -8, the 16 levels span [-|m|, 7/8 |m|] in
 * steps of |m| / 8 (d = max |x| / 7 on [-7, 7] wastes a level and steps |m| / 7: the RMS error is
 * measured in benchmarks/README.md "KV cache"). The axpy is y[i] += (w d[b]) q[i], as axpy_q8; sets
 * differ from ref only in fused or separate rounding (bound in native/tests/check_attention.c). */
#ifndef EQ_KV_Q4_BLOCK
#define EQ_KV_Q4_BLOCK 32
#endif
typedef void (*eq_axpy_q4_fn)(float *y, float w, const uint8_t *x, const uint16_t *scales, size_t n);

/* Scales per row of n values: ceil(n / EQ_KV_Q4_BLOCK). */
static inline size_t eq_kv_q4_blocks(size_t n)
{
    return (n + EQ_KV_Q4_BLOCK - 1) / EQ_KV_Q4_BLOCK;
}

/* One way of multiplying a family: what it derives once per input vector (its own layout, read
 * only by its own gemm) and the product. gemm NULL: the set does not have this path, and the next
 * set that does fills it in (path, detail, prepared_bytes, prepare, gemm always come together). */
typedef struct eq_path_kernels {
    const char *path;                        /* "lut", "multiply-add", "float", "reference" */
    const char *detail;                      /* one line for `edgeq info` */
    eq_prepared_bytes_fn prepared_bytes;     /* NULL: gemm reads in->x only */
    eq_prepare_fn prepare;                   /* non-NULL exactly when prepared_bytes is */
    eq_gemm_fn gemm;
} eq_path_kernels;

/* How one set runs one family: a batch of fewer than prefill_from vectors (decode) goes through
 * `decode`, a larger one (prefill) through `prefill` (weights read once, expanded and reused for
 * every vector). prefill.gemm NULL: decode serves every batch size. */
typedef struct eq_family_kernels {
    eq_path_kernels decode;
    eq_path_kernels prefill;
    size_t prefill_from;                     /* with prefill: the smallest batch it takes (>= 2) */
    eq_dequantize_rows_fn dequantize_rows;   /* NULL: the next set's */
} eq_family_kernels;

typedef struct eq_kernel_set {
    const char *isa;                         /* the EDGEQ_ISA value: "avx2", "scalar", "ref", ... */
    int (*is_available)(void);               /* nonzero if this CPU runs the set */
    eq_family_kernels family[EQ_QFAMILY_COUNT];
    eq_dot_f16_fn dot_f16;                   /* NULL: the next set's */
    eq_axpy_f16_fn axpy_f16;
    eq_to_f16_fn to_f16;                     /* NULL: the next set's */
    eq_exp_fn exp;                           /* NULL: the next set's */
    eq_dot_q8_fn dot_q8;                     /* NULL: the next set's */
    eq_axpy_q8_fn axpy_q8;
    eq_axpy_q4_fn axpy_q4;                   /* NULL: the next set's */
} eq_kernel_set;

/* The sets, each defined in its own ISA file; src/kernel_sets.c lists them once, best first. */
extern const eq_kernel_set eq_kernels_avx512;   /* x86/avx512.c */
extern const eq_kernel_set eq_kernels_avx2;     /* x86/avx2.c */
extern const eq_kernel_set eq_kernels_avx2_lut8;   /* x86/avx2.c: int8 LUT tables at 2-3 bits, opt-in */
extern const eq_kernel_set eq_kernels_neon_dotprod;   /* arm/neon_packed.c */
extern const eq_kernel_set eq_kernels_neon;     /* arm/neon.c */
extern const eq_kernel_set eq_kernels_scalar;   /* scalar/gemv.c */
extern const eq_kernel_set eq_kernels_ref;      /* ref/gemv.c */

/* A set with every gap filled from the available sets after it: what evaluation uses. */
typedef struct eq_kernels {
    const char *isa;
    eq_family_kernels family[EQ_QFAMILY_COUNT];         /* decode.gemm and dequantize_rows always set */
    const char *decode_isa[EQ_QFAMILY_COUNT];           /* which set runs each family's paths */
    const char *prefill_isa[EQ_QFAMILY_COUNT];          /* (NULL: no prefill path) */
    eq_dot_f16_fn dot_f16;
    eq_axpy_f16_fn axpy_f16;
    eq_to_f16_fn to_f16;
    eq_exp_fn exp;
    eq_dot_q8_fn dot_q8;
    eq_axpy_q8_fn axpy_q8;
    eq_axpy_q4_fn axpy_q4;
} eq_kernels;

/* The path a batch of n vectors of `family` takes under k. */
static inline const eq_path_kernels *eq_path_for(const eq_kernels *k, int family, size_t n)
{
    const eq_family_kernels *fk = &k->family[family];
    return fk->prefill.gemm != NULL && n >= fk->prefill_from ? &fk->prefill : &fk->decode;
}

/* The active kernels (EDGEQ_ISA, else the first available set; NULL when EDGEQ_ISA names no set
 * this CPU runs), and the named ones (NULL: unknown or unavailable). */
const eq_kernels *eq_active_kernels(void);
const eq_kernels *eq_kernels_named(const char *isa);

/* ---- prepared activations ------------------------------------------------------------------- */

/* Input vectors with, per family whose products read them, the bytes that family's prepare made:
 * every matrix multiplied by the same input (q/k/v, gate/up) and every thread shares one copy. */
typedef struct eq_acts {
    size_t n, cols;                           /* bound: n vectors of cols floats */
    const float *x;                           /* (n, cols) row-major, the caller's */
    unsigned families;                        /* bit f: products of family f read this input */
    uint8_t *prepared[EQ_QFAMILY_COUNT];      /* (capacity,) bytes per family that prepares */
    size_t capacity[EQ_QFAMILY_COUNT];
} eq_acts;

/* Room for n vectors of up to cols activations for the given families under every available set
 * (the active set can change between evaluations); EQ_ERR_NO_MEMORY / EQ_ERR_SIZE_OVERFLOW. */
int eq_acts_reserve(eq_acts *acts, size_t n, size_t cols, unsigned families);
void eq_acts_free(eq_acts *acts);
void eq_acts_bind(eq_acts *acts, const float *x, size_t n, size_t cols);   /* after reserve */
/* Prepare vectors [first, first + count) for the families in `families` that acts has room for
 * (threads split n): a step prepares only for the products that read its output next, not for
 * every family the input serves elsewhere in the model. */
void eq_acts_prepare(const eq_kernels *kernels, eq_acts *acts, unsigned families, size_t first, size_t count);
/* y (acts->n, rows) with row stride y_stride = W acts->x[v], through the family's gemm */
void eq_gemm_prepared(const eq_kernels *kernels, const eq_qtype_traits *type, const uint8_t *data,
                      size_t rows, size_t cols, const eq_acts *acts, float *y, size_t y_stride);

/* ---- per-ISA functions, same names with the ISA's suffix ------------------------------------ */

/* ref/: the specification (double accumulation, bit by bit) */
void eq_dequantize_rows_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows,
                            size_t cols, size_t row_begin, size_t row_count, float *out);
void eq_gemv_ref(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                 const float *x, float *y);
void eq_dot_f16_ref(const uint16_t *a, size_t stride, size_t n_rows, const float *b, size_t n, float *out);
void eq_axpy_f16_ref(float *y, const float *w, const uint16_t *x, size_t stride, size_t n_rows, size_t n);
void eq_to_f16_ref(const float *x, size_t n, uint16_t *out);
void eq_exp_ref(const float *x, float *y, size_t n);
void eq_kv_q8_quantize(const float *x, size_t n, int8_t *q, uint16_t *scales);
float eq_dot_q8_ref(const int8_t *a, const uint16_t *scales, const float *b, size_t n);
void eq_axpy_q8_ref(float *y, float w, const int8_t *x, const uint16_t *scales, size_t n);
void eq_kv_q4_quantize(const float *x, size_t n, uint8_t *q, uint16_t *scales);
void eq_axpy_q4_ref(float *y, float w, const uint8_t *x, const uint16_t *scales, size_t n);

/* Uniform packed family, int8 multiply-add (activations int8 per block of 32, layout in
 * packed_acts.h): one file per set, the set's struct in its main file names them; the x86 sets'
 * prefill gemms multiply several vectors per load of levels, bit-identical to their decode gemms.
 * scalar/packed.c (portable C), x86/avx2_packed.c (vpmaddubsw), x86/avx512_packed.c (VNNI vpdpbusd,
 * within the avx512 set whose availability includes VNNI; eq_packed_avx512_available checks just
 * what it needs). */
size_t eq_packed_prepared_bytes_scalar(size_t cols);
void eq_packed_prepare_scalar(const float *x, size_t cols, uint8_t *out);
void eq_packed_gemm_scalar(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride);
size_t eq_packed_prepared_bytes_avx2(size_t cols);
void eq_packed_prepare_avx2(const float *x, size_t cols, uint8_t *out);
void eq_packed_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                         const eq_input *in, float *y, size_t y_stride);
void eq_packed_prefill_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                 const eq_input *in, float *y, size_t y_stride);
int eq_packed_avx512_available(void);
size_t eq_packed_prepared_bytes_avx512(size_t cols);
void eq_packed_prepare_avx512(const float *x, size_t cols, uint8_t *out);
void eq_packed_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride);
void eq_packed_prefill_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                   const eq_input *in, float *y, size_t y_stride);
/* arm/neon_packed.c: the neon set's ARMv8.0 path (smull/smlal + sadalp); the same file's sdot path
 * is the whole of the neon-dotprod set, which shares this prepare */
size_t eq_packed_prepared_bytes_neon(size_t cols);
void eq_packed_prepare_neon(const float *x, size_t cols, uint8_t *out);
void eq_packed_gemm_neon(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                         const eq_input *in, float *y, size_t y_stride);

/* Codebook family (c4g*: 4-bit indices into a tile's 16 int8 levels, blocks as p4's), the same int8
 * multiply-add with one table lookup per index, sharing the packed family's prepare (packed_acts.h):
 * scalar/codebook.c, x86/avx2_codebook.c (pshufb + vpmaddubsw), x86/avx512_codebook.c (vpshufb +
 * vpdpbusd), arm/neon_codebook.c (tbl + smull/smlal for neon, sdot for neon-dotprod). */
void eq_codebook_gemm_scalar(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                             const eq_input *in, float *y, size_t y_stride);
void eq_codebook_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride);
void eq_codebook_prefill_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                   const eq_input *in, float *y, size_t y_stride);
void eq_codebook_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                             const eq_input *in, float *y, size_t y_stride);
void eq_codebook_prefill_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                     const eq_input *in, float *y, size_t y_stride);
void eq_codebook_gemm_neon(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                           const eq_input *in, float *y, size_t y_stride);
void eq_codebook_gemm_neon_dotprod(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                                   const eq_input *in, float *y, size_t y_stride);

/* *out = bytes of a (rows >= 1, cols >= 1) tensor of `type`, or EQ_ERR_SIZE_OVERFLOW (or
 * EQ_ERR_UNKNOWN_QTYPE: a family without a size rule). eq_padded_tail_nbytes: in the layout of
 * files without the "compact-tail" feature, a partial last group padded to G columns. */
int eq_tensor_nbytes(const eq_qtype_traits *type, size_t rows, size_t cols, size_t *out);
int eq_padded_tail_nbytes(const eq_qtype_traits *type, size_t rows, size_t cols, size_t *out);

/* out (eq_tensor_nbytes) = the bit-plane tensor `padded` (eq_padded_tail_nbytes) with its partial
 * last group cut to eq_last_group_cols columns; only for cols % G != 0. */
void eq_compact_tail(const eq_qtype_traits *type, const uint8_t *padded, size_t rows, size_t cols,
                     uint8_t *out);

/* x86/avx2_prefill.c: the multiply-add (prefill) path for uniform bit-plane types (int16
 * activations per block of 32, layout in x86/q16_acts.h); the prepare serves x86/avx512_prefill.c too */
size_t eq_prefill_prepared_bytes_avx2(size_t cols);
void eq_prefill_prepare_avx2(const float *x, size_t cols, uint8_t *out);
void eq_prefill_gemm_avx2(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                          const eq_input *in, float *y, size_t y_stride);

/* x86/avx512_prefill.c: the same path with vpdpwssd (prepare: eq_prefill_prepare_avx2), called only
 * by the avx512 set (its check covers AVX-512 F/BW/VL/VNNI, FMA, F16C) */
void eq_prefill_gemm_avx512(const eq_qtype_traits *type, const uint8_t *data, size_t rows, size_t cols,
                            const eq_input *in, float *y, size_t y_stride);

/* ---- layout helpers shared by the kernels ---------------------------------------------------- */

/* z in w = scale * (q - z) of a symmetric uniform type: (2^b - 1) / 2 (levels ±0.5, ±1.5, ...), or
 * 2^(b - 1) for the z types (llama.cpp's _0 grids); exact in float. Asymmetric and codebook types
 * have none (0). Every kernel computes a symmetric group as scale * (Σ q x - z Σ x). */
static inline float eq_zero_point(const eq_qtype_traits *type)
{
    if (!type->symmetric || type->family == EQ_QFAMILY_CODEBOOK)
        return 0.0f;
    return type->integer_zero ? (float)(1u << (type->bits - 1)) : (float)((1u << type->bits) - 1u) / 2.0f;
}

/* A bit-plane tensor of K = cols columns is ceil(K / G) groups per tile: every group but the last
 * holds G columns, the last one K - (n_groups - 1) G weights stored in eq_last_group_cols columns
 * (a multiple of EQ_GROUP_STEP). Group g of a tile starts g * eq_block_bytes(type) into the tile. */

/* Bytes of one (tile, group) block of `width` stored columns: scales, mins, planes. */
static inline size_t eq_group_block_bytes(const eq_qtype_traits *type, size_t width)
{
    size_t scale_bytes = 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
    return scale_bytes + (size_t)type->bits * 2u * width;
}

/* Bytes of a whole (tile, group) block: scales, mins, planes of G columns. */
static inline size_t eq_block_bytes(const eq_qtype_traits *type)
{
    return eq_group_block_bytes(type, (size_t)type->group);
}

/* Stored columns of the last group of a row of cols >= 1 weights: G, or a partial group's
 * columns rounded up to EQ_GROUP_STEP. */
static inline size_t eq_last_group_cols(const eq_qtype_traits *type, size_t cols)
{
    size_t last = (cols - 1) % (size_t)type->group + 1;
    return (last + EQ_GROUP_STEP - 1) / EQ_GROUP_STEP * EQ_GROUP_STEP;
}

/* Bytes of one tile (16 rows) of a (rows, cols >= 1) tensor; the caller has checked that the whole
 * tensor's size does not overflow (eq_qtype_nbytes), so neither does this. */
static inline size_t eq_tile_bytes(const eq_qtype_traits *type, size_t cols)
{
    size_t n_groups = (cols - 1) / (size_t)type->group + 1;
    return (n_groups - 1) * eq_block_bytes(type) + eq_group_block_bytes(type, eq_last_group_cols(type, cols));
}

/* Uniform packed family (edgeq.h): bytes of a block's scales and mins, of a block of c columns
 * (c a multiple of 32), the columns group g stores, and one 16-row tile (the blocks of every group). */
static inline size_t eq_packed_header_bytes(const eq_qtype_traits *type)
{
    return 2u * EQ_TILE_ROWS * (type->symmetric ? 1u : 2u);
}

/* Bytes of the levels of 32 columns (16 rows): b bits each, a byte each at 8 bits (edgeq.h). */
static inline size_t eq_packed_run_bytes(int bits)
{
    return 64u * (size_t)(bits <= 6 ? bits : 8);
}

static inline size_t eq_packed_block_bytes(const eq_qtype_traits *type, size_t block_cols)
{
    /* 16 rows x block_cols levels of b bits (v2: 4-bit indices per pair, 2 bits per weight) */
    return eq_packed_header_bytes(type) + eq_packed_run_bytes(type->bits) / 32u * block_cols;
}

static inline size_t eq_packed_group_cols(const eq_qtype_traits *type, size_t cols, size_t g)
{
    size_t stored = (cols + EQ_GROUP_STEP - 1) / EQ_GROUP_STEP * EQ_GROUP_STEP;
    size_t left = stored - g * (size_t)type->group;
    return left < (size_t)type->group ? left : (size_t)type->group;
}

/* Codebook family: weights per index, the dimension of an entry (c4: 1, v2: 2; edgeq.h). */
static inline size_t eq_codebook_span(const eq_qtype_traits *type)
{
    return type->bits == 2 ? 2u : 1u;
}
/* A codebook gemm's specialized bodies ("Specialized bodies" above): BODY(group, span) with both
 * constant for the table's types (the switch value: groups are multiples of 32, so span 2 sets bit
 * 0), with run-time values for any other type and in EQ_KERNELS_GENERIC builds. */
#ifndef EQ_KERNELS_GENERIC
#define EQ_CODEBOOK_CASES(BODY)                                                                   \
    case 32: BODY(32, 1); break;                                                                  \
    case 64: BODY(64, 1); break;                                                                  \
    case 128: BODY(128, 1); break;                                                                \
    case 64 + 1: BODY(64, 2); break;                                                              \
    case 128 + 1: BODY(128, 2); break;
#else
#define EQ_CODEBOOK_CASES(BODY)
#endif
#define EQ_CODEBOOK_DISPATCH(type, BODY)                                                          \
    do {                                                                                          \
        const int span_ = (int)eq_codebook_span(type);                                            \
        switch ((type)->group + span_ - 1) {                                                      \
        EQ_CODEBOOK_CASES(BODY)                                                                   \
        default:                                                                                  \
            if (span_ == 2)                                                                       \
                BODY((size_t)(type)->group, 2);                                                   \
            else                                                                                  \
                BODY((size_t)(type)->group, 1);                                                   \
        }                                                                                         \
    } while (0)

/* Bytes before a tile's first block: the codebook family's 16 entries (int8 levels or centroid
 * pairs, c0 of all 16 then c1), else none. */
static inline size_t eq_tile_header_bytes(const eq_qtype_traits *type)
{
    return type->family == EQ_QFAMILY_CODEBOOK ? EQ_CODEBOOK_SIZE * eq_codebook_span(type) : 0u;
}

/* (the codebook family's tiles too: its levels, then blocks laid out as p4g{G}{a|s}'s) */
static inline size_t eq_packed_tile_bytes(const eq_qtype_traits *type, size_t cols)
{
    size_t n_groups = (cols + (size_t)type->group - 1) / (size_t)type->group;
    return eq_tile_header_bytes(type) + (n_groups - 1) * eq_packed_block_bytes(type, (size_t)type->group) +
           eq_packed_block_bytes(type, eq_packed_group_cols(type, cols, n_groups - 1));
}

/* Packed levels below 8 bits (edgeq.h): a 32-column run holds a plane of 4-bit fields (b >= 4), of
 * 2-bit fields (b = 2, 3, 6), of 1-bit fields (b odd), in that order, lowest bits of the level first;
 * a plane of w-bit fields is 64 w bytes. */
static inline bool eq_packed_has_plane(int bits, unsigned width)
{
    return width == 4 ? bits >= 4 : width == 2 ? (bits == 2 || bits == 3 || bits == 6) : (bits & 1) != 0;
}

/* Level q[r, col] of a packed block's levels (col < the block's columns): at 8 bits a byte, quads
 * [col / 4][16 rows][4 columns]; else the fields of col's 32-column run. The w-bit plane is 64-byte
 * chunks [16 rows][4 bytes] of 32 / w columns each: byte (r, i) of a chunk holds its columns i,
 * i + 4, i + 8, ..., the f-th at bits w f. */
static inline unsigned eq_packed_level(const uint8_t *levels, int bits, size_t r, size_t col)
{
    if (bits > 6)
        return levels[(col / 4) * 64 + r * 4 + col % 4];
    const uint8_t *plane = levels + (col / 32) * eq_packed_run_bytes(bits);
    const size_t c = col % 32;
    unsigned level = 0, at = 0;
    for (unsigned width = 4; width > 0; width /= 2) {
        if (!eq_packed_has_plane(bits, width))
            continue;
        const size_t span = 32u / width;
        const uint8_t byte = plane[(c / span) * 64 + r * 4 + c % 4];
        level |= ((byte >> (width * ((c % span) / 4))) & ((1u << width) - 1u)) << at;
        plane += 64u * width;
        at += width;
    }
    return level;
}

/* Level of weight (r, col) of a codebook block (col < the block's columns) from its tile's codebook
 * (eq_tile_header_bytes of int8 at the tile's start): c4, codebook[index of col]; v2 (edgeq.h), the
 * pair (col, col + 4) for col % 8 < 4 shares one index, col % 16 < 8 in a byte's low nibble, and
 * takes c0 (codebook[index]) at col, c1 (codebook[16 + index]) at col + 4. */
static inline int eq_codebook_level(const eq_qtype_traits *type, const int8_t *codebook,
                                    const uint8_t *indices, size_t r, size_t col)
{
    if (eq_codebook_span(type) == 1)
        return codebook[eq_packed_level(indices, 4, r, col)];
    const uint8_t byte = indices[(col / 16) * 64 + r * 4 + col % 4];
    const unsigned index = col % 16 < 8 ? byte & 15u : byte >> 4;
    return codebook[(col % 8 < 4 ? 0u : EQ_CODEBOOK_SIZE) + index];
}

/* Little-endian readers: the file format is little-endian and mmapped data may be unaligned. */
static inline uint16_t eq_read_u16le(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline float eq_read_f16le(const uint8_t *p)
{
    return eq_fp16_to_fp32(eq_read_u16le(p));
}

static inline float eq_read_f32le(const uint8_t *p)
{
    uint32_t bits = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
                    ((uint32_t)p[3] << 24);
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

#endif /* EDGEQ_KERNELS_H */
