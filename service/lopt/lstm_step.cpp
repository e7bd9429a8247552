/* The coordinatewise LSTM step as one fused CPU loop: the torch operator `step` (built and loaded by
   service/lopt/native.py through torch.utils.cpp_extension; parallel through at::parallel_for, so
   torch.set_num_threads governs it). The same math as step_autograd in service/lopt/lstm.py, which the
   tests hold it to.

   Compiled once per architecture and CPU type with -DHID (hidden size), -DNL (layers), -DNIN (input
   features), -DLOG_SIGN (1: the paper's log/sign preprocessing) and -DL2O_NS (the operator's namespace).

   Coordinates are processed VL at a time, one coordinate per vector lane: each tile's state is
   transposed into a feature-major scratch (one vector per state float), every gate, activation and
   cell update is a lane-wise vector operation, and the new state is transposed back. Nothing crosses
   lanes, and the last partial tile runs through the same code on zero padding, so a coordinate's
   result does not depend on which coordinates share the call, where it sits, or how many threads run.

   The gate products accumulate straight into registers: for each block of JB hidden units the
   4*JB gate pre-activations are summed over the inputs, then turned into the new (h, c) of those
   units at once, so gates never touch memory. tanh is a rational function and log a polynomial, in
   plain vector arithmetic (no libm), so every lane computes the same operations; the results agree
   with torch's to float32 tolerance, not bit for bit. */

#include <algorithm>
#include <cmath>

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif

/* Hidden units per register block: 4 * JB gate accumulators stay in registers with the input vector
   and a weight beside them. AVX-512 has 32 vector registers, AVX2 and SSE 16. */
#ifndef JB
#if VL == 16
#define JB_MAX 5
#else
#define JB_MAX 2
#endif
#if JB_MAX >= 5 && HID % 5 == 0
#define JB 5
#elif JB_MAX >= 4 && HID % 4 == 0
#define JB 4
#elif JB_MAX >= 3 && HID % 3 == 0
#define JB 3
#elif HID % 2 == 0
#define JB 2
#else
#define JB 1
#endif
#endif

#define NF (NL * 2 * HID)          /* state floats per coordinate: (layer, h|c, unit) */
#define NBLK (HID / JB)
/* The unit of work parallel_for shares out, whatever the vector width: small enough that a step of a
   thousand coordinates is shared by two threads. A multiple of every VL. */
#define UNIT_COORDS 256
#define CHUNK_TILES (UNIT_COORDS / VL)
#define PREFETCH_TILES 4           /* how far ahead the input state is fetched */
#define STREAM_BYTES (32 << 20)    /* outputs at least this large are streamed past the cache */

typedef float vf __attribute__((vector_size(VL * 4), aligned(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(VL * 4)));

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };

static inline vf splat(float x) { return vf{} + x; }
static inline vf sel(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* A few operations have one-instruction forms on AVX-512; elsewhere plain vector arithmetic does.
   Either way every lane runs the same instructions. min/max keep a NaN in x. */
#if VL == 16
#include <immintrin.h>
static inline vf v_max(float lo, vf x) { return (vf)_mm512_max_ps(_mm512_set1_ps(lo), (__m512)x); }
static inline vf v_min(float hi, vf x) { return (vf)_mm512_min_ps(_mm512_set1_ps(hi), (__m512)x); }
/* 1/d: a 14-bit estimate and one Newton step (about 1 ulp), far cheaper than a divide. */
static inline vf v_rcp(vf d) {
    vf r = (vf)_mm512_rcp14_ps((__m512)d);
    return r + r * (1.0f - d * r);
}
#else
static inline vf v_max(float lo, vf x) { return sel(x < lo, splat(lo), x); }
static inline vf v_min(float hi, vf x) { return sel(x > hi, splat(hi), x); }
#if VL == 8
#include <immintrin.h>
/* A 12-bit estimate and one Newton step (about 2 ulp): a divide costs several times as much on AVX2. */
static inline vf v_rcp(vf d) {
    vf r = (vf)_mm256_rcp_ps((__m256)d);
    return r + r * (1.0f - d * r);
}
#else
static inline vf v_rcp(vf d) { return 1.0f / d; }
#endif
#endif

/* tanh as x P(x^2) / Q(x^2) on [-c, c] (the rational approximation Eigen and XLA use for float32):
   within 3e-7 of tanh, no exp, one reciprocal. At this clamp c the result never leaves [-1, 1]
   (checked for every float, on the AVX-512 and AVX2 builds), so no gate leaves its range. */
static inline vf v_tanh(vf x) {
    x = v_min(7.90531110763549805f, v_max(-7.90531110763549805f, x));
    vf z = x * x;
    vf p = -2.76076847742355e-16f * z + 2.00018790482477e-13f;
    p = p * z + -8.60467152213735e-11f;
    p = p * z + 5.12229709037114e-08f;
    p = p * z + 1.48572235717979e-05f;
    p = p * z + 6.37261928875436e-04f;
    p = p * z + 4.89352455891786e-03f;
    vf q = 1.19825839466702e-06f * z + 1.18534705686654e-04f;
    q = q * z + 2.26843463243900e-03f;
    q = q * z + 4.89352518554385e-03f;
    return p * x * v_rcp(q);
}

/* sigmoid(2y) = (1 + tanh(y)) / 2; the packed weights of the sigmoid gates are pre-halved (exactly). */
static inline vf v_sigmoid_of_half(vf y) { return 0.5f * v_tanh(y) + 0.5f; }

/* ln x for x > 0 (denormals included); +inf stays +inf. */
static inline vf v_log(vf x) {
    vi den = x < 1.17549435e-38f;
    x = sel(den, x * 8388608.0f, x);
    vi ix = (vi)x;
    vi e = ((ix >> 23) & 0xff) - 126 - (den & 23);
    vf m = (vf)((ix & 0x007fffff) | 0x3f000000);          /* x = m * 2^e, m in [0.5, 1) */
    vi lt = m < 0.707106781186547524f;
    e = e + lt;
    m = sel(lt, m + m, m) - 1.0f;
    vf fe = __builtin_convertvector(e, vf);
    vf z = m * m;
    vf y = ((((((((7.0376836292e-2f * m - 1.1514610310e-1f) * m + 1.1676998740e-1f) * m - 1.2420140846e-1f) * m
                + 1.4249322787e-1f) * m - 1.6668057665e-1f) * m + 2.0000714765e-1f) * m - 2.4999993993e-1f) * m
           + 3.3333331174e-1f) * m * z;
    y = y + -2.12194440e-4f * fe;
    y = y - 0.5f * z;
    vf r = m + y + 0.693359375f * fe;
    return sel(x == __builtin_inff(), x, r);
}

typedef struct {
    int64_t n;
    const float *grads;
    const void *state_in;
    void *state_out;
    float *updates;
    int dtype;
    const float *weights;          /* packed by native.py: per layer, per unit block: bias, then one row per input */
    const float *head;             /* HID weights, then the bias */
    float threshold, exp_p, p, scale;
    int stream;                    /* write the new state around the cache (large, out-of-place steps) */
} job_t;

typedef uint32_t vu __attribute__((vector_size(VL * 4), aligned(VL * 4)));
typedef uint16_t vh __attribute__((vector_size(VL * 2), aligned(VL * 2)));
typedef _Float16 vhf __attribute__((vector_size(VL * 2), aligned(VL * 2)));

/* Transposes VL vectors in registers: log2(VL) rounds, each swapping the off-diagonal d x d blocks of
   every 2d x 2d block with one two-source permute per vector. */
#define LO(d, c) (((c) & (d)) ? VL + (c) - (d) : (c))
#define HI(d, c) (((c) & (d)) ? VL + (c) : (c) + (d))
#if VL == 16
#define MASK(F, d) ((vi){F(d, 0), F(d, 1), F(d, 2), F(d, 3), F(d, 4), F(d, 5), F(d, 6), F(d, 7), \
                         F(d, 8), F(d, 9), F(d, 10), F(d, 11), F(d, 12), F(d, 13), F(d, 14), F(d, 15)})
#elif VL == 8
#define MASK(F, d) ((vi){F(d, 0), F(d, 1), F(d, 2), F(d, 3), F(d, 4), F(d, 5), F(d, 6), F(d, 7)})
#else
#define MASK(F, d) ((vi){F(d, 0), F(d, 1), F(d, 2), F(d, 3)})
#endif

static inline void swap_blocks(vf *rows, int d, vi lo, vi hi) {
#pragma GCC unroll 16
    for (int i = 0; i < VL; i++) {
        if (i & d) continue;
        vf a = rows[i], b = rows[i + d];
        rows[i] = __builtin_shuffle(a, b, lo);
        rows[i + d] = __builtin_shuffle(a, b, hi);
    }
}

static inline void transpose(vf *rows) {
#if VL == 16
    swap_blocks(rows, 8, MASK(LO, 8), MASK(HI, 8));
#endif
#if VL >= 8
    swap_blocks(rows, 4, MASK(LO, 4), MASK(HI, 4));
#endif
    swap_blocks(rows, 2, MASK(LO, 2), MASK(HI, 2));
    swap_blocks(rows, 1, MASK(LO, 1), MASK(HI, 1));
}

static inline vf load_vec(const void *src, int dtype, int64_t index) {
    vf v;
    if (dtype == DT_F32) {
        memcpy(&v, (const float *)src + index, sizeof v);
    } else if (dtype == DT_BF16) {
        vh h;
        memcpy(&h, (const uint16_t *)src + index, sizeof h);
        v = (vf)(__builtin_convertvector(h, vu) << 16);
    } else {
#if VL == 16   /* one instruction, where the generic conversion goes a lane at a time */
        v = (vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const _Float16 *)src + index)));
#else
        vhf h;
        memcpy(&h, (const _Float16 *)src + index, sizeof h);
        v = __builtin_convertvector(h, vf);
#endif
    }
    return v;
}

/* bf16 rounds to nearest even and NaN becomes the canonical quiet NaN, the same bits as torch. */
static inline void store_vec(void *dst, int dtype, int64_t index, vf v) {
    if (dtype == DT_F32) {
        memcpy((float *)dst + index, &v, sizeof v);
    } else if (dtype == DT_BF16) {
        vu u = (vu)v;
        vi nan = (vi)(u & 0x7fffffffu) > 0x7f800000;
        u = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
        u = (vu)(((vi)u & ~nan) | (nan & 0x7fc0));
        vh h = __builtin_convertvector(u, vh);
        memcpy((uint16_t *)dst + index, &h, sizeof h);
    } else {
#if VL == 16
        __m256i h = _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_storeu_si256((__m256i *)((_Float16 *)dst + index), h);
#else
        vhf h = __builtin_convertvector(v, vhf);
        memcpy((_Float16 *)dst + index, &h, sizeof h);
#endif
    }
}

/* A store that bypasses the cache: a step's output state is far larger than the cache when it
   matters, and reading each line before overwriting it would cost as much as reading the input. */
static inline void stream_vec(void *dst, int dtype, int64_t index, vf v) {
#if VL == 16
    if (dtype == DT_F32) {
        _mm512_stream_ps((float *)dst + index, (__m512)v);
        return;
    }
    if (dtype == DT_F16) {
        _mm256_stream_si256((__m256i *)((_Float16 *)dst + index),
                            _mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        return;
    }
    uint16_t h[VL] __attribute__((aligned(32)));
    store_vec(h, dtype, 0, v);
    _mm256_stream_si256((__m256i *)((uint16_t *)dst + index), *(__m256i *)h);
#elif VL == 8
    if (dtype == DT_F32) {
        _mm256_stream_ps((float *)dst + index, (__m256)v);
        return;
    }
    uint16_t h[VL] __attribute__((aligned(16)));
    store_vec(h, dtype, 0, v);
    _mm_stream_si128((__m128i *)((uint16_t *)dst + index), *(__m128i *)h);
#else
    store_vec(dst, dtype, index, v);
#endif
}

static inline float load_one(const void *src, int dtype, int64_t index) {
    if (dtype == DT_F32) return ((const float *)src)[index];
    if (dtype == DT_BF16) {
        uint32_t u = (uint32_t)((const uint16_t *)src)[index] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    return (float)((const _Float16 *)src)[index];
}

static inline void store_one(void *dst, int dtype, int64_t index, float f) {
    vf v = splat(f);
    if (dtype == DT_F32) {
        ((float *)dst)[index] = f;
    } else if (dtype == DT_BF16) {
        uint16_t out[VL];
        store_vec(out, dtype, 0, v);
        ((uint16_t *)dst)[index] = out[0];
    } else {
        ((_Float16 *)dst)[index] = (_Float16)f;
    }
}

/* A full tile moves VL x VL blocks through registers; the tail (and a partial tile) goes one float at
   a time. Both only move bits, so which path a coordinate takes never changes its result. */
static void load_state(const job_t *jb, int64_t base, int count, vf *S) {
    int f0 = 0;
    if (count == VL) {
        for (; f0 + VL <= NF; f0 += VL) {
            vf rows[VL];
            for (int r = 0; r < VL; r++) rows[r] = load_vec(jb->state_in, jb->dtype, (base + r) * NF + f0);
            transpose(rows);
            for (int f = 0; f < VL; f++) S[f0 + f] = rows[f];
        }
    }
    float *s = (float *)S;
    for (int r = 0; r < VL; r++)
        for (int f = f0; f < NF; f++)
            s[f * VL + r] = r < count ? load_one(jb->state_in, jb->dtype, (base + r) * NF + f) : 0.0f;
}

static void store_state(const job_t *jb, int64_t base, int count, const vf *O) {
    int blocks = count == VL ? NF / VL : 0;
    vf t[NF >= VL ? NF / VL * VL : 1];
    for (int q = 0; q < blocks; q++) {
        for (int f = 0; f < VL; f++) t[q * VL + f] = O[q * VL + f];
        transpose(t + q * VL);
    }
    /* Row by row, each coordinate's state front to back, so that streamed stores fill whole cache
       lines before moving on (half-filled lines would be written to memory piecemeal). */
    for (int r = 0; r < VL && blocks; r++)
        for (int q = 0; q < blocks; q++) {
            if (jb->stream)
                stream_vec(jb->state_out, jb->dtype, (base + r) * NF + q * VL, t[q * VL + r]);
            else
                store_vec(jb->state_out, jb->dtype, (base + r) * NF + q * VL, t[q * VL + r]);
        }
    const float *s = (const float *)O;
    for (int r = 0; r < count; r++)
        for (int f = blocks * VL; f < NF; f++)
            store_one(jb->state_out, jb->dtype, (base + r) * NF + f, s[f * VL + r]);
}

/* Appendix A: (log|g| / p, sign g) when |g| >= e^-p, else (-1, e^p g). */
static inline void preprocess(const job_t *jb, vf g, vf *x) {
#if LOG_SIGN
    vf mag = (vf)((vi)g & 0x7fffffff);
    vi big = mag >= jb->threshold;
    vf safe = sel(big, mag, splat(1.0f));
    vf sign = sel(g > 0.0f, splat(1.0f), splat(-1.0f));
    x[0] = sel(big, v_log(safe) / jb->p, splat(-1.0f));
    x[1] = sel(big, sign, g * jb->exp_p);
#else
    (void)jb;
    x[0] = g;
#endif
}

static void step_tile(const job_t *jb, int64_t base, int count) {
    vf S[NF], O[NF], x[NIN];
    vf g = splat(0.0f);
    if (count == VL)
        memcpy(&g, jb->grads + base, sizeof g);
    else
        for (int r = 0; r < count; r++) g[r] = jb->grads[base + r];
    preprocess(jb, g, x);
    if (base + (PREFETCH_TILES + 1) * VL <= jb->n) {
        int size = jb->dtype == DT_F32 ? 4 : 2;
        const char *ahead = (const char *)jb->state_in + (base + PREFETCH_TILES * VL) * NF * size;
        for (int off = 0; off < VL * NF * size; off += 64) __builtin_prefetch(ahead + off, 0, 3);
    }
    load_state(jb, base, count, S);

    const float *w = jb->weights;
    const vf *in = x;
    int n_in = NIN;
    for (int l = 0; l < NL; l++) {
        const vf *h_old = S + l * 2 * HID, *c_old = h_old + HID;
        vf *h_new = O + l * 2 * HID, *c_new = h_new + HID;
        for (int b = 0; b < NBLK; b++) {
            vf acc[4 * JB];
#pragma GCC unroll 32
            for (int q = 0; q < 4 * JB; q++) acc[q] = splat(w[q]);
            w += 4 * JB;
            for (int k = 0; k < n_in; k++, w += 4 * JB) {
                vf v = in[k];
#pragma GCC unroll 32
                for (int q = 0; q < 4 * JB; q++) acc[q] += w[q] * v;
            }
            for (int k = 0; k < HID; k++, w += 4 * JB) {
                vf v = h_old[k];
#pragma GCC unroll 32
                for (int q = 0; q < 4 * JB; q++) acc[q] += w[q] * v;
            }
#pragma GCC unroll 8
            for (int r = 0; r < JB; r++) {
                int j = b * JB + r;
                vf i = v_sigmoid_of_half(acc[r]), f = v_sigmoid_of_half(acc[JB + r]);
                vf gg = v_tanh(acc[2 * JB + r]), o = v_sigmoid_of_half(acc[3 * JB + r]);
                vf c = f * c_old[j] + i * gg;
                c_new[j] = c;
                h_new[j] = o * v_tanh(c);
            }
        }
        in = h_new;
        n_in = HID;
    }

    vf u = splat(0.0f);
    for (int k = 0; k < HID; k++) u += jb->head[k] * in[k];
    u = (u + jb->head[HID]) * jb->scale;

    store_state(jb, base, count, O);
    if (count == VL)
        memcpy(jb->updates + base, &u, sizeof u);
    else
        for (int r = 0; r < count; r++) jb->updates[base + r] = u[r];
}

/* step(grads, hc, packed, head, p, scale, out_state, out_updates): grads float32 (N,); hc and out_state
   (N, NL, 2, HID) contiguous, of one dtype (float32, bfloat16 or float16), possibly the same tensor
   (each tile is read before it is written); packed and head are the weights as native.py packs them. */
static void step(const at::Tensor &grads, const at::Tensor &hc, const at::Tensor &packed, const at::Tensor &head,
                 double p, double scale, const at::Tensor &out_state, const at::Tensor &out_updates) {
    TORCH_CHECK(grads.scalar_type() == at::kFloat && grads.is_contiguous(), "grads must be contiguous float32");
    TORCH_CHECK(hc.is_contiguous() && out_state.is_contiguous() && hc.scalar_type() == out_state.scalar_type(),
                "hc and out_state must be contiguous and of one dtype");
    int64_t n = grads.numel();
    TORCH_CHECK(hc.numel() == n * NF && out_state.numel() == n * NF && out_updates.numel() == n,
                "hc, out_state and out_updates must match grads");
    int dtype = hc.scalar_type() == at::kFloat ? DT_F32 : hc.scalar_type() == at::kBFloat16 ? DT_BF16 : DT_F16;
    TORCH_CHECK(dtype != DT_F16 || hc.scalar_type() == at::kHalf, "the state must be float32, bfloat16 or float16");
    int size = dtype == DT_F32 ? 4 : 2;
    const void *in = hc.data_ptr();
    void *out = out_state.data_ptr();
    int stream = out != in && n * NF * size >= STREAM_BYTES && NF % VL == 0 && (uintptr_t)out % (VL * size) == 0;
    job_t jb = {n, grads.data_ptr<float>(), in, out, out_updates.data_ptr<float>(), dtype,
                packed.data_ptr<float>(), head.data_ptr<float>(), (float)std::exp(-p), (float)std::exp(p),
                (float)p, (float)scale, stream};
    int64_t tiles = (n + VL - 1) / VL;
    int64_t units = (tiles + CHUNK_TILES - 1) / CHUNK_TILES;
    at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin * CHUNK_TILES; t < std::min(end * CHUNK_TILES, tiles); t++) {
            int64_t base = t * VL;
            step_tile(&jb, base, n - base < VL ? (int)(n - base) : VL);
        }
#if VL >= 8
        _mm_sfence();   /* streamed stores are weakly ordered: finish them before the threads join */
#endif
    });
}

static int64_t lanes() { return VL; }
static int64_t unit_block() { return JB; }

/* Two levels, so that L2O_NS is expanded before TORCH_LIBRARY pastes it into its names. */
#define L2O_LIBRARY(ns) TORCH_LIBRARY(ns, m)
#define L2O_LIBRARY_IMPL(ns) TORCH_LIBRARY_IMPL(ns, CPU, m)

L2O_LIBRARY(L2O_NS) {
    m.def("step(Tensor grads, Tensor hc, Tensor packed, Tensor head, float p, float scale, "
          "Tensor(a!) out_state, Tensor(b!) out_updates) -> ()");
    m.def("lanes() -> int", &lanes);
    m.def("unit_block() -> int", &unit_block);
}

L2O_LIBRARY_IMPL(L2O_NS) { m.impl("step", &step); }
