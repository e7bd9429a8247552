/* The coordinatewise LSTM step as one fused CPU loop (built and loaded by service/lopt/native.py).

   Compiled once per architecture with -DHID (hidden size), -DNL (layers), -DNIN (input features),
   -DJB (hidden units per register block) and -DLOG_SIGN (1: the paper's log/sign preprocessing).

   Coordinates are processed VL at a time, one coordinate per vector lane: each tile's state is
   transposed into a feature-major scratch (one vector per state float), every gate, activation and
   cell update is a lane-wise vector operation, and the new state is transposed back. Nothing crosses
   lanes, and the last partial tile runs through the same code on zero padding, so a coordinate's
   result does not depend on which coordinates share the call or where it sits (batch invariance).

   The gate products accumulate straight into registers: for each block of JB hidden units the
   4*JB gate pre-activations are summed over the inputs, then turned into the new (h, c) of those
   units at once, so gates never touch memory. tanh is a rational function and log a polynomial, in
   plain vector arithmetic (no libm), so every lane computes the same operations; the results agree
   with torch's to float32 tolerance, not bit for bit. A step's bits depend only on this source, the
   compiler and the CPU type it was built for. */

#include <pthread.h>
#include <time.h>
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
/* Coordinates a thread claims at a time, whatever the vector width: small enough that a step of a
   thousand coordinates is shared by two threads (a claim costs one atomic add), large enough that
   claims stay rare next to the work. A multiple of every VL. */
#define UNIT_COORDS 256
#define CHUNK_TILES (UNIT_COORDS / VL)
#define PREFETCH_TILES 4           /* how far ahead the input state is fetched */
#define STREAM_BYTES (32 << 20)    /* outputs at least this large are streamed past the cache */

typedef float vf __attribute__((vector_size(VL * 4), aligned(VL * 4)));
typedef int32_t vi __attribute__((vector_size(VL * 4), aligned(VL * 4)));

enum { DT_F32 = 0, DT_BF16 = 1, DT_F16 = 2 };

static inline vf splat(float x) { return (vf){0} + x; }
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
    int32_t *nonfinite;            /* set to 1 when a gradient is NaN or infinite */
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
    /* The gradients are checked here, where they are read anyway, not in a pass of their own: g - g
       is 0 for every finite g and NaN otherwise. */
    vi bad = (g - g) != 0.0f;
    int any = 0;
    for (int r = 0; r < VL; r++) any |= bad[r];
    if (any) __atomic_store_n(jb->nonfinite, 1, __ATOMIC_RELAXED);
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

/* A call's work: one or more segments (each a job_t over its own arrays, e.g. one session's
   coordinates), cut into units of up to CHUNK_TILES tiles that never cross a segment. Threads claim
   units from one counter, so many small segments share the threads as well as one large one does. */
typedef struct {
    int nseg;
    const job_t *jobs;
    const int64_t *first_unit;     /* nseg + 1 entries: segment s owns units [first_unit[s], first_unit[s+1]) */
    int64_t next_unit;             /* shared work counter */
} batch_t;

static void *worker(void *arg) {
    batch_t *bt = (batch_t *)arg;
    int64_t units = bt->first_unit[bt->nseg];
    int s = 0;
    for (;;) {
        int64_t u = __atomic_fetch_add(&bt->next_unit, 1, __ATOMIC_RELAXED);
        if (u >= units) break;
        while (bt->first_unit[s + 1] <= u) s++;    /* units are claimed in increasing order */
        const job_t *jb = &bt->jobs[s];
        int64_t tiles = (jb->n + VL - 1) / VL;
        int64_t t0 = (u - bt->first_unit[s]) * CHUNK_TILES;
        int64_t t1 = t0 + CHUNK_TILES < tiles ? t0 + CHUNK_TILES : tiles;
        for (int64_t t = t0; t < t1; t++) {
            int64_t base = t * VL;
            int count = jb->n - base < VL ? (int)(jb->n - base) : VL;
            step_tile(jb, base, count);
        }
    }
#if VL >= 8
    _mm_sfence();   /* streamed stores are weakly ordered: finish them before the join */
#endif
    return 0;
}

/* Helper threads kept between calls. A call publishes its batch, works on it itself, then closes it
   and waits only for the helpers that joined it: a helper that wakes late (an idle core can take
   milliseconds to wake in a virtual machine) finds the batch closed and goes back to sleep, and the
   call never waits for it. After a batch a helper spins for spin_ns before sleeping, so the steps of
   a training loop find it awake. One call uses the pool at a time; a concurrent call starts its own
   threads, as every call did before the pool. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    int size;                      /* helpers started */
    uint64_t generation;           /* bumped for each batch published */
    batch_t *current;              /* the batch helpers may join, or NULL once it is closed */
    int wanted, joined, running;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0};
static pthread_mutex_t pool_owner = PTHREAD_MUTEX_INITIALIZER;
static long long spin_ns = 0;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void *helper(void *arg) {
    (void)arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool.mu);
    for (;;) {
        while (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen) {
            if (__atomic_load_n(&spin_ns, __ATOMIC_RELAXED) > 0) {
                pthread_mutex_unlock(&pool.mu);
                long long start = now_ns();   /* spin_ns is read as it goes: setting 0 stops a spin at once */
                while (__atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE) == seen
                       && now_ns() - start < __atomic_load_n(&spin_ns, __ATOMIC_RELAXED)) {
#if defined(__x86_64__) || defined(__i386__)
                    __builtin_ia32_pause();
#endif
                }
                pthread_mutex_lock(&pool.mu);
                if (pool.generation != seen) break;
            }
            pthread_cond_wait(&pool.work, &pool.mu);
        }
        seen = pool.generation;
        batch_t *bt = pool.current;
        if (bt && pool.joined < pool.wanted) {
            pool.joined++;
            pool.running++;
            pthread_mutex_unlock(&pool.mu);
            worker(bt);
            pthread_mutex_lock(&pool.mu);
            if (--pool.running == 0) pthread_cond_signal(&pool.done);
        }
    }
    return 0;
}

/* A forked child has none of the parent's threads: it starts a pool of its own. */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool.mu, 0);
    pthread_cond_init(&pool.work, 0);
    pthread_cond_init(&pool.done, 0);
    pthread_mutex_init(&pool_owner, 0);
    pool.size = 0;
    pool.current = 0;
    pool.running = 0;
}

static void pool_init(void) { pthread_atfork(0, 0, pool_after_fork); }

static int run_pooled(batch_t *bt, int helpers) {
    pthread_once(&pool_once, pool_init);
    if (pthread_mutex_trylock(&pool_owner) != 0) return 0;
    pthread_mutex_lock(&pool.mu);
    while (pool.size < helpers && pool.size < 63) {
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&id, &attr, helper, 0);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;        /* fewer helpers: the caller does the rest */
        pool.size++;
    }
    pool.current = bt;
    pool.wanted = helpers;
    pool.joined = 0;
    __atomic_add_fetch(&pool.generation, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.work);
    pthread_mutex_unlock(&pool.mu);
    worker(bt);
    pthread_mutex_lock(&pool.mu);
    pool.current = 0;
    while (pool.running > 0) pthread_cond_wait(&pool.done, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&pool_owner);
    return 1;
}

/* How long helpers spin for the next batch before they sleep (0: sleep at once). */
void l2o_set_spin_us(long long us) { __atomic_store_n(&spin_ns, us > 0 ? us * 1000 : 0, __ATOMIC_RELAXED); }

int l2o_lanes(void) { return VL; }
int l2o_unit_block(void) { return JB; }
int l2o_unit_coords(void) { return CHUNK_TILES * VL; }

#define MAX_SEGMENTS 4096

/* One step over `nseg` segments of coordinates at once, on up to `threads` threads. Segment s has
   ns[s] coordinates and four arrays, ptrs[4s .. 4s+3]: grads, state_in, state_out, updates; state_in
   may be state_out (each tile is read before it is written). Every coordinate's result is what a
   call on its segment alone gives (see the top of this file). nonfinite[s] is set to 1 when a
   gradient of segment s is NaN or infinite, else 0 (its results are then meaningless). A thread that
   cannot be started only means fewer helpers: the calling thread takes whatever work is left, so the
   step always completes. Returns 0; -1 when nseg is out of range, -2 when out of memory (nothing
   computed). */
int l2o_step_many(int nseg, const int64_t *ns, void *const *ptrs, int dtype, const float *weights,
                  const float *head, float threshold, float exp_p, float p, float scale, int threads,
                  int32_t *nonfinite) {
    if (nseg < 1 || nseg > MAX_SEGMENTS) return -1;
    for (int s = 0; s < nseg; s++) nonfinite[s] = 0;
    job_t small_jobs[16];
    int64_t small_units[17];
    job_t *jobs = nseg <= 16 ? small_jobs : malloc(nseg * sizeof *jobs);
    int64_t *first_unit = nseg <= 16 ? small_units : malloc((nseg + 1) * sizeof *first_unit);
    if (!jobs || !first_unit) {
        if (jobs != small_jobs) free(jobs);
        if (first_unit != small_units) free(first_unit);
        return -2;
    }
    int size = dtype == DT_F32 ? 4 : 2;
    first_unit[0] = 0;
    for (int s = 0; s < nseg; s++) {
        int64_t n = ns[s];
        const void *in = ptrs[4 * s + 1];
        void *out = ptrs[4 * s + 2];
        int stream = out != in && n * NF * size >= STREAM_BYTES && NF % VL == 0
                     && (uintptr_t)out % (VL * size) == 0;
        job_t jb = {n, (const float *)ptrs[4 * s], in, out, (float *)ptrs[4 * s + 3], dtype, weights, head,
                    threshold, exp_p, p, scale, stream, &nonfinite[s]};
        jobs[s] = jb;
        int64_t tiles = (n + VL - 1) / VL;
        first_unit[s + 1] = first_unit[s] + (tiles + CHUNK_TILES - 1) / CHUNK_TILES;
    }
    batch_t bt = {nseg, jobs, first_unit, 0};
    int64_t units = first_unit[nseg];
    if (threads > units) threads = (int)units;
    if (threads > 64) threads = 64;
    if (threads > 1 && !run_pooled(&bt, threads - 1)) {
        /* Another call holds the pool: this one starts threads of its own. */
        pthread_t ids[64];
        int started = 0;
        for (int t = 1; t < threads; t++) {
            if (pthread_create(&ids[started], 0, worker, &bt) != 0) break;
            started++;
        }
        worker(&bt);
        for (int t = 0; t < started; t++) pthread_join(ids[t], 0);
    } else if (threads <= 1) {
        worker(&bt);
    }
    if (jobs != small_jobs) free(jobs);
    if (first_unit != small_units) free(first_unit);
    return 0;
}
