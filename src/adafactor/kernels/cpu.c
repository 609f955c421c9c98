/* A parameter group's Adafactor step on the CPU: the three phases of phases.py over every
 * tensor of the group at once, walking the tables of plan.py (the Field and Tile indices and
 * the HP and FLAG indices are prepended by cpu.py from the Python definitions).
 *
 *   adafactor_sums           phase 1: per tile, Σ X² and the sums of (G/√numel)² over the
 *                            tile's columns and rows; then, per tensor, their totals in a
 *                            fixed order: row, col, param_sq, total, old_row_mean.
 *   adafactor_update_sums    phase 2: per tensor, R_t, C_t (in place of the sums) and
 *                            mean_r(R_t); per tile, Σ U_t²; per tensor, sum_sq_u, nonfinite.
 *   adafactor_apply          phase 3: per tensor, α_t, clipping, weight decay and whether
 *                            the step is taken; per tile, the update of X, momentum and a
 *                            full V̂; per tensor, the commit of R_t, C_t and the counters.
 *
 * Only the passes over tiles run in parallel (OpenMP), and only when the caller asks for more
 * than one thread: waking threads costs more than a small group's whole step.
 *
 * Between the phases the caller may complete the sums across processes. Every row of a tile
 * is first converted to float32 in a small buffer, so the math loops read one dtype and
 * vectorize; X's sum of squares is accumulated in double, which holds any float32 square.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_COLS 4096 /* the largest tile width (Geometry.cols) and flat segment */

/* --- 16-bit floats ----------------------------------------------------------------------- */

static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint32_t float_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch */
    uint32_t u = float_bits(f);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    /* a select, not a branch, so that the loops around it vectorize; NaN stays quiet NaN */
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
}

#ifdef __FLT16_MANT_DIG__ /* the compiler's half floats: hardware conversions (F16C, FP16) */
static inline float f16_to_float(uint16_t h) {
    _Float16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}

static inline uint16_t float_to_f16(float f) { /* round to nearest even */
    _Float16 x = (_Float16)f;
    uint16_t h;
    memcpy(&h, &x, 2);
    return h;
}
#else
static inline float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalize */
            int e = -1;
            do { man <<= 1; e++; } while (!(man & 0x400));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t float_to_f16(float f) { /* round to nearest even */
    uint32_t u = float_bits(f), sign = (u >> 16) & 0x8000;
    uint32_t au = u & 0x7fffffffu;
    if (au > 0x7f800000u) return (uint16_t)(sign | 0x7e00);           /* NaN */
    if (au >= 0x477ff000u) return (uint16_t)(sign | 0x7c00);          /* overflow: Inf */
    if (au < 0x38800000u) {                                            /* subnormal or 0 */
        if (au < 0x33000000u) return (uint16_t)sign;                   /* below half the least */
        uint32_t man = (au & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(au >> 23);                             /* 14 .. 24 */
        uint32_t half = man >> shift, rest = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t v = au - 0x38000000u; /* rebias the exponent by 112 */
    uint32_t half = v >> 13, rest = v & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;
    return (uint16_t)(sign | half);
}
#endif

/* Load n elements of dtype `code` at p (every `stride` elements) as float32 into out. The
 * contiguous loops are separate, so that they vectorize. Code 3, float64, is only ever read
 * (a gradient), rounded to nearest as the eager step's .to(float32) does. */
static void load_row(const void *p, int code, int64_t stride, int64_t n, float *restrict out) {
    if (code == 3) {
        const double *s = (const double *)p;
        for (int64_t j = 0; j < n; j++) out[j] = (float)s[j * stride];
    } else if (code == 0) {
        const float *s = (const float *)p;
        if (stride == 1) memcpy(out, s, (size_t)n * 4);
        else for (int64_t j = 0; j < n; j++) out[j] = s[j * stride];
    } else {
        const uint16_t *s = (const uint16_t *)p;
        if (code == 1 && stride == 1) for (int64_t j = 0; j < n; j++) out[j] = bf16_to_float(s[j]);
        else if (code == 1) for (int64_t j = 0; j < n; j++) out[j] = bf16_to_float(s[j * stride]);
        else if (stride == 1) for (int64_t j = 0; j < n; j++) out[j] = f16_to_float(s[j]);
        else for (int64_t j = 0; j < n; j++) out[j] = f16_to_float(s[j * stride]);
    }
}

/* Store n float32 values as dtype `code` at p (every `stride` elements). */
static void store_row(void *p, int code, int64_t stride, int64_t n, const float *restrict in) {
    if (code == 0) {
        float *d = (float *)p;
        if (stride == 1) memcpy(d, in, (size_t)n * 4);
        else for (int64_t j = 0; j < n; j++) d[j * stride] = in[j];
    } else {
        uint16_t *d = (uint16_t *)p;
        if (code == 1 && stride == 1) for (int64_t j = 0; j < n; j++) d[j] = float_to_bf16(in[j]);
        else if (code == 1) for (int64_t j = 0; j < n; j++) d[j * stride] = float_to_bf16(in[j]);
        else if (stride == 1) for (int64_t j = 0; j < n; j++) d[j] = float_to_f16(in[j]);
        else for (int64_t j = 0; j < n; j++) d[j * stride] = float_to_f16(in[j]);
    }
}

/* n elements at p as float32: the memory itself where it is float32 and contiguous (read or
 * written in place), else a conversion into buf. */
static inline float *as_f32(void *p, int code, int64_t stride, int64_t n, float *buf) {
    if (code == 0 && stride == 1) return (float *)p;
    load_row(p, code, stride, n, buf);
    return buf;
}

/* Write back what as_f32 gave, where it was a conversion. */
static inline void put_f32(void *p, int code, int64_t stride, int64_t n, const float *v) {
    if (!(code == 0 && stride == 1)) store_row(p, code, stride, n, v);
}

static inline int64_t elem_size(int code) { return code == 3 ? 8 : code == 0 ? 4 : 2; }

/* Round n float32 values to dtype `code` and back, as a state of that dtype keeps them. */
static void round_as(int code, int64_t n, float *x) {
    if (code == 1) for (int64_t j = 0; j < n; j++) x[j] = bf16_to_float(float_to_bf16(x[j]));
    else if (code == 2) for (int64_t j = 0; j < n; j++) x[j] = f16_to_float(float_to_f16(x[j]));
}

/* --- Writing a 16-bit parameter (equations.stochastic_round, compensated_write) ----------- */

/* equations.mix32: a 32-bit integer hash (lowbias32). */
static inline uint32_t mix32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x21f0aaadu;
    x ^= x >> 15;
    x *= 0x735a2d97u;
    x ^= x >> 15;
    return x;
}

/* equations.rounding_noise, the part of one tensor and step: seed, stream (the parameter)
 * and t; then the 16 random bits of the element at flat position `index`. */
static inline uint32_t noise_stream(uint32_t seed, uint32_t stream, uint32_t t) {
    return mix32(mix32(mix32(t) ^ stream) ^ seed);
}

static inline uint32_t noise_at(uint32_t per_step, uint64_t index) {
    return mix32(mix32((uint32_t)index ^ per_step) ^ (uint32_t)(index >> 32)) & 0xffffu;
}

/* Stochastic rounding of float32 f to bfloat16: the noise added to the 16 bits it drops. */
static inline uint16_t stochastic_bf16(float f, uint32_t noise) {
    return (uint16_t)((float_bits(f) + noise) >> 16);
}

/* To float16: the noise's top 13 bits added to the 13 bits it drops; below its normal range
 * (2^-14) a random rounding of |f|·2^24 to a whole number; never an overflow that rounding to
 * nearest would not make. */
static inline uint16_t stochastic_f16(float f, uint32_t noise) {
    float out;
    if (fabsf(f) < 0x1p-14f) {
        out = copysignf(floorf(fabsf(f) * 16777216.0f + (float)noise / 65536.0f) * 0x1p-24f, f);
    } else {
        uint32_t u = (float_bits(f) + (noise >> 3)) & ~0x1fffu;
        memcpy(&out, &u, 4);
    }
    uint16_t h = float_to_f16(out), nearest = float_to_f16(f);
    if ((h & 0x7fffu) == 0x7c00u && (nearest & 0x7fffu) < 0x7c00u) return nearest;
    return h;
}

/* Compensated: x written to nearest, and what that dropped to the residual r (exact in
 * float32), both of dtype `code`. The contiguous loops are separate, so that they vectorize. */
static void write_compensated(int code, uint16_t *x, uint16_t *r, int64_t stride, int64_t n,
                              const float *v) {
    if (code == 1 && stride == 1) {
        for (int64_t j = 0; j < n; j++) {
            uint16_t w = float_to_bf16(v[j]);
            x[j] = w;
            r[j] = float_to_bf16(v[j] - bf16_to_float(w));
        }
    } else if (code == 1) {
        for (int64_t j = 0; j < n; j++) {
            uint16_t w = float_to_bf16(v[j]);
            x[j * stride] = w;
            r[j * stride] = float_to_bf16(v[j] - bf16_to_float(w));
        }
    } else {
        for (int64_t j = 0; j < n; j++) {
            uint16_t w = float_to_f16(v[j]);
            x[j * stride] = w;
            r[j * stride] = float_to_f16(v[j] - f16_to_float(w));
        }
    }
}

/* Stochastic: element j's bits from its flat position first + j·stride. */
static void write_stochastic(int code, uint16_t *x, int64_t stride, int64_t n, const float *v,
                             uint32_t per_step, uint64_t first) {
    if (code == 1 && stride == 1) {
        for (int64_t j = 0; j < n; j++)
            x[j] = stochastic_bf16(v[j], noise_at(per_step, first + (uint64_t)j));
    } else if (code == 1) {
        for (int64_t j = 0; j < n; j++)
            x[j * stride] = stochastic_bf16(v[j], noise_at(per_step, first + (uint64_t)(j * stride)));
    } else {
        for (int64_t j = 0; j < n; j++)
            x[j * stride] = stochastic_f16(v[j], noise_at(per_step, first + (uint64_t)(j * stride)));
    }
}

/* --- The tables ---------------------------------------------------------------------------- */

typedef struct {
    const int64_t *t; /* this tensor's descriptor row */
} Tensor;

#define D(x, f) ((x).t[f])
#define PTR(x, f) ((void *)(intptr_t)(x).t[f])

typedef struct { /* a slice of a factored tensor: where its elements and statistics are */
    int64_t base, row_stride, col_stride; /* in X, G and momentum */
    int64_t row_base, row_stride_r;       /* in R-shaped buffers */
    int64_t col_base, col_stride_c;       /* in C-shaped buffers */
} Slice;

static Slice slice_of(Tensor x, int64_t s) {
    int64_t n = D(x, F_N), bb = D(x, F_B), m = D(x, F_M), cc = D(x, F_C);
    int64_t a = s / (bb * cc), b = (s / cc) % bb, c = s % cc;
    Slice sl;
    sl.base = a * n * bb * m * cc + b * m * cc + c;
    sl.row_stride = bb * m * cc;
    sl.col_stride = cc;
    sl.row_base = a * n * bb * cc + b * cc + c;
    sl.row_stride_r = bb * cc;
    sl.col_base = a * bb * m * cc + b * m * cc + c;
    sl.col_stride_c = cc;
    return sl;
}

static inline const char *at(const void *p, int64_t index, int code) {
    return (const char *)p + index * elem_size(code);
}

/* The schedules at t = step + 1 (schedules.py), in float32 as the eager step computes them
 * (for β2 near 1, 1 − β2^t loses digits there: the same ones here). */
typedef struct { float t, beta2_t, rho_t, bias_correction; } Schedule;

static Schedule schedule(Tensor x, const double *hp, const int64_t *flags) {
    Schedule s;
    s.t = *(const float *)PTR(x, F_STEP) + 1.0f;
    float td = s.t - (float)hp[HP_DECAY_OFFSET];
    if (td < 1.0f) td = 1.0f;
    if (flags[FLAG_BETA2]) {
        float b2 = (float)hp[HP_BETA2];
        s.beta2_t = b2 * (1.0f - powf(b2, td - 1.0f)) / (1.0f - powf(b2, td));
    } else {
        s.beta2_t = 1.0f - powf(td, -(float)hp[HP_DECAY_RATE]);
    }
    if (flags[FLAG_BETA2_CAP] && s.beta2_t > (float)hp[HP_BETA2_CAP]) s.beta2_t = (float)hp[HP_BETA2_CAP];
    if (flags[FLAG_RELATIVE_STEP]) {
        s.rho_t = 1.0f / sqrtf(s.t);
        if (s.rho_t > (float)hp[HP_LR]) s.rho_t = (float)hp[HP_LR];
        if (flags[FLAG_WARMUP_INIT] && s.rho_t > 1e-6f * s.t) s.rho_t = 1e-6f * s.t;
    } else {
        s.rho_t = (float)hp[HP_LR];
    }
    s.bias_correction = flags[FLAG_GRADIENT_MOMENTUM] ? 1.0f / (1.0f - powf((float)hp[HP_BETA1], s.t)) : 1.0f;
    return s;
}

/* torch.lerp's formula: start + w·(end − start), or end − (end − start)·(1 − w) for w ≥ ½. */
static inline float lerp(float start, float end, float w) {
    return w < 0.5f ? start + w * (end - start) : end - (end - start) * (1.0f - w);
}

/* --- Phase 1: the sums ------------------------------------------------------------------- */

static void sums_tile(const int64_t *tile, const int64_t *desc, float *sums, float *scratch,
                      double *tile_sums) {
    Tensor x = {desc + tile[T_TENSOR] * N_FIELDS};
    int pcode = (int)D(x, F_PARAM_DTYPE), gcode = (int)D(x, F_GRAD_DTYPE);
    float xs[MAX_COLS], gs[MAX_COLS], colacc[MAX_COLS];
    double xsq = 0.0, old_rows = 0.0;
    int64_t row0 = tile[T_ROW0], nrows = tile[T_ROWS];
    if (!D(x, F_FACTORED)) {
        for (int64_t at0 = row0; at0 < row0 + nrows; at0 += MAX_COLS) {
            int64_t k = row0 + nrows - at0 < MAX_COLS ? row0 + nrows - at0 : MAX_COLS;
            const float *xv = as_f32((void *)at(PTR(x, F_PARAM), at0, pcode), pcode, 1, k, xs);
            double acc = 0.0;
#pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < k; j++) acc += (double)xv[j] * xv[j];
            xsq += acc;
        }
        tile_sums[0] = xsq;
        return;
    }
    Slice sl = slice_of(x, tile[T_SLICE]);
    int64_t col0 = tile[T_COL0], ncols = tile[T_COLS], n = D(x, F_N), m = D(x, F_M);
    int64_t row_tiles = D(x, F_ROW_TILES), col_tiles = D(x, F_COL_TILES);
    float scale = (float)(1.0 / sqrt((double)(D(x, F_WHOLE_NUMEL) > 0 ? D(x, F_WHOLE_NUMEL) : 1)));
    const float *old_row = (const float *)PTR(x, F_STAT_A);
    /* A tile's row sums go straight to R's place when it spans all columns, else to its
     * partials; likewise its column sums. */
    float *row_part = scratch + D(x, F_ROW_PARTS) + (tile[T_SLICE] * col_tiles + tile[T_COL_TILE]) * n;
    memset(colacc, 0, (size_t)ncols * 4);
    for (int64_t i = row0; i < row0 + nrows; i++) {
        int64_t e = sl.base + i * sl.row_stride + col0 * sl.col_stride;
        const float *xv = as_f32((void *)at(PTR(x, F_PARAM), e, pcode), pcode, sl.col_stride, ncols, xs);
        const float *gv = as_f32((void *)at(PTR(x, F_GRAD), e, gcode), gcode, sl.col_stride, ncols, gs);
        float rs = 0.0f;
        double acc = 0.0;
#pragma omp simd reduction(+ : rs, acc)
        for (int64_t j = 0; j < ncols; j++) {
            float g = gv[j] * scale, g2 = g * g;
            rs += g2;
            colacc[j] += g2;
            acc += (double)xv[j] * xv[j];
        }
        if (col_tiles == 1) sums[D(x, F_ROW) + sl.row_base + i * sl.row_stride_r] = rs;
        else row_part[i] = rs;
        xsq += acc;
        if (tile[T_COL_TILE] == 0) old_rows += old_row[sl.row_base + i * sl.row_stride_r] / (double)D(x, F_WHOLE_N);
    }
    if (row_tiles == 1) {
        for (int64_t j = 0; j < ncols; j++) sums[D(x, F_COL) + sl.col_base + (col0 + j) * sl.col_stride_c] = colacc[j];
    } else {
        float *col_part = scratch + D(x, F_COL_PARTS) + (tile[T_SLICE] * row_tiles + tile[T_ROW_TILE]) * m;
        memcpy(col_part + col0, colacc, (size_t)ncols * 4);
    }
    tile_sums[0] = xsq;
    tile_sums[1] = old_rows;
}

/* out[i·stride] = Σ_p part[p·count + i] over the `parts` tiles' partial sums, in tile order
   (so that a step is deterministic whatever the thread count). */
static void add_parts(const float *part, int64_t parts, int64_t count, float *out, int64_t stride) {
    for (int64_t i = 0; i < count; i++) {
        float acc = 0.0f;
        for (int64_t p = 0; p < parts; p++) acc += part[p * count + i];
        out[i * stride] = acc;
    }
}

/* The row, col, param_sq, total and old_row_mean of one tensor from its tiles' partials,
 * each added up in a fixed order. */
static void sums_tensor(Tensor x, const int64_t *tiles, float *sums, const float *scratch,
                        const double *tile_sums) {
    int64_t first = D(x, F_FIRST_TILE), count = D(x, F_TILES), groups = D(x, F_RMS_GROUPS);
    double *xsq = calloc((size_t)groups, sizeof(double));
    for (int64_t k = 0; k < count; k++) {
        const int64_t *tile = tiles + (first + k) * N_TILE_FIELDS;
        xsq[D(x, F_PER_SLICE) ? tile[T_SLICE] : 0] += tile_sums[(first + k) * 4];
    }
    float *param_sq = sums + D(x, F_PARAM_SQ);
    for (int64_t g = 0; g < groups; g++) {
        param_sq[g] = (float)(xsq[g] * 18446744073709551616.0);         /* Σ (X·2^32)² */
        param_sq[groups + g] = (float)(xsq[g] / 18446744073709551616.0); /* Σ (X·2^−32)² */
    }
    free(xsq);
    if (!D(x, F_FACTORED)) return;
    int64_t slices = D(x, F_SLICES), n = D(x, F_N), m = D(x, F_M);
    int64_t row_tiles = D(x, F_ROW_TILES), col_tiles = D(x, F_COL_TILES);
    float *row = sums + D(x, F_ROW), *col = sums + D(x, F_COL);
    double *old = calloc((size_t)slices, sizeof(double));
    for (int64_t k = 0; k < count; k++) {
        const int64_t *tile = tiles + (first + k) * N_TILE_FIELDS;
        if (tile[T_COL_TILE] == 0) old[tile[T_SLICE]] += tile_sums[(first + k) * 4 + 1];
    }
    for (int64_t s = 0; s < slices; s++) {
        Slice sl = slice_of(x, s);
        if (col_tiles > 1)
            add_parts(scratch + D(x, F_ROW_PARTS) + s * col_tiles * n, col_tiles, n,
                      row + sl.row_base, sl.row_stride_r);
        if (row_tiles > 1)
            add_parts(scratch + D(x, F_COL_PARTS) + s * row_tiles * m, row_tiles, m,
                      col + sl.col_base, sl.col_stride_c);
        double total = 0.0;
        for (int64_t i = 0; i < n; i++) total += row[sl.row_base + i * sl.row_stride_r];
        sums[D(x, F_TOTAL) + s] = (float)total;
        sums[D(x, F_OLD_ROW_MEAN) + s] = (float)old[s];
    }
    free(old);
}

int adafactor_sums(const int64_t *desc, int64_t ntensors, const int64_t *tiles, int64_t ntiles,
                   float *sums, float *scratch, double *tile_sums, int nthreads) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1)
    for (int64_t k = 0; k < ntiles; k++)
        sums_tile(tiles + k * N_TILE_FIELDS, desc, sums, scratch, tile_sums + k * 4);
    for (int64_t i = 0; i < ntensors; i++) {
        Tensor x = {desc + i * N_FIELDS};
        sums_tensor(x, tiles, sums, scratch, tile_sums);
    }
    return 0;
}

/* --- Phase 2: the statistics and Σ U_t² ---------------------------------------------------- */

/* Below this a bound on Σ U_t² proves it finite, with room for rounding and for the sum of the
 * partial sums of up to 2^27 processes. */
#define BOUND_LIMIT 1.2676506002282294e30 /* 2^100 */

/* R_t, C_t and mean_r(R_t) of one tensor, in place of its sums (phases.factored_statistics);
 * returns their count of non-finite values. *skip is set where the pass for Σ U_t² may be
 * left out: nothing reads Σ U_t² but whether it is finite (no clipping, no diagnostics:
 * HP_SUM_SQ_U), D_t = G_t (no Adam-style momentum), and a bound proves it finite, as the
 * eager step's `finite` then is. U_ij² = G_ij²·(R̄/R_i)·(1/C_j): Σ U² is at most the rows'
 * Σ_i Σ_j G_ij²·(R̄/R_i) over the least C_j, and at most the columns' Σ_j Σ_i G_ij²/C_j over
 * the least R_i/R̄ (NaN or inf where neither is finite: no proof). The same bound as the
 * Triton kernels' (triton_sums.statistics and update_sums_tiles). */
static double statistics_tensor(Tensor x, float *sums, const double *hp, const int64_t *flags,
                                int *skip) {
    *skip = 0;
    if (!D(x, F_FACTORED)) return 0.0;
    Schedule s = schedule(x, hp, flags);
    float w = 1.0f - s.beta2_t, eps1 = (float)hp[HP_EPS1];
    double numel = (double)D(x, F_WHOLE_NUMEL), wn = (double)D(x, F_WHOLE_N), wm = (double)D(x, F_WHOLE_M);
    int64_t slices = D(x, F_SLICES), n = D(x, F_N), m = D(x, F_M);
    int64_t bc = D(x, F_B) * D(x, F_C);
    const float *old_row = (const float *)PTR(x, F_STAT_A), *old_col = (const float *)PTR(x, F_STAT_B);
    float *row = sums + D(x, F_ROW), *col = sums + D(x, F_COL);
    float row_scale = (float)(numel / wm), col_scale = (float)(numel / wn), total_scale = (float)(numel / (wn * wm));
    float *total = sums + D(x, F_TOTAL);
    const float *old_mean = sums + D(x, F_OLD_ROW_MEAN);
    for (int64_t k = 0; k < slices; k++) total[k] = lerp(old_mean[k], total_scale * total[k] + eps1, w);
    double nonfinite = 0.0, by_rows = 0.0, by_cols = 0.0, low_ratio = INFINITY, low_col = INFINITY;
    for (int64_t k = 0; k < slices * n; k++) {
        float sum_sq = row[k];
        row[k] = lerp(old_row[k], row_scale * sum_sq + eps1, w);
        nonfinite += !isfinite(row[k]);
        float ratio = row[k] / total[(k / (n * bc)) * bc + k % bc]; /* R_i over its slice's R̄ */
        by_rows += (double)sum_sq * numel / ratio;
        if (ratio < low_ratio) low_ratio = ratio;
    }
    for (int64_t k = 0; k < slices * m; k++) {
        float sum_sq = col[k];
        col[k] = lerp(old_col[k], col_scale * sum_sq + eps1, w);
        nonfinite += !isfinite(col[k]);
        by_cols += (double)sum_sq * numel / col[k];
        if (col[k] < low_col) low_col = col[k];
    }
    double rows_bound = by_rows / low_col, cols_bound = by_cols / low_ratio;
    double bound = rows_bound < cols_bound ? rows_bound : cols_bound;
    *skip = hp[HP_SUM_SQ_U] == 0.0 && !flags[FLAG_GRADIENT_MOMENTUM] && bound < BOUND_LIMIT;
    return nonfinite;
}

/* The per-row factors (R_t/mean_r R_t)^−½ and per-column factors C_t^−½ of a slice. */
static inline float row_factor(Tensor x, const float *sums, Slice sl, int64_t s, int64_t i) {
    return 1.0f / sqrtf(sums[D(x, F_ROW) + sl.row_base + i * sl.row_stride_r] / sums[D(x, F_TOTAL) + s]);
}

static void col_factors(Tensor x, const float *sums, Slice sl, int64_t col0, int64_t ncols, float *out) {
    const float *col = sums + D(x, F_COL);
    for (int64_t j = 0; j < ncols; j++) out[j] = 1.0f / sqrtf(col[sl.col_base + (col0 + j) * sl.col_stride_c]);
}

/* What a pass reads of one run of elements and what it works out: D_t (G or m̂_t), U_t.
 * One per thread, allocated by the caller of the parallel loop (not thread-local storage,
 * which in a shared library costs a call per access). */
typedef struct {
    float g[MAX_COLS], d[MAX_COLS], u[MAX_COLS], m[MAX_COLS], v[MAX_COLS], cf[MAX_COLS];
} Buffers;

static inline Buffers *own_buffers(Buffers *all) {
#ifdef _OPENMP
    return all + omp_get_thread_num();
#else
    return all;
#endif
}

/* G of k elements at element e, and D_t: G itself, or for Adam-style momentum m̂_t (with m_t,
 * as the state stores it, in b->m). Returns D_t; *g is set to G. */
static const float *direction(Tensor x, Buffers *b, int64_t e, int64_t stride, int64_t k,
                              const double *hp, const int64_t *flags, Schedule s,
                              const float **g) {
    int gcode = (int)D(x, F_GRAD_DTYPE);
    *g = as_f32((void *)at(PTR(x, F_GRAD), e, gcode), gcode, stride, k, b->g);
    if (!flags[FLAG_GRADIENT_MOMENTUM]) return *g;
    int mcode = (int)D(x, F_MOMENTUM_DTYPE);
    float w = 1.0f - (float)hp[HP_BETA1], bc = s.bias_correction;
    const float *gv = *g;
    load_row(at(PTR(x, F_MOMENTUM), e, mcode), mcode, stride, k, b->m);
    for (int64_t j = 0; j < k; j++) b->m[j] = lerp(b->m[j], gv[j], w);
    round_as(mcode, k, b->m); /* the step uses the momentum as the state stores it */
    for (int64_t j = 0; j < k; j++) b->d[j] = b->m[j] * bc;
    return b->d;
}

/* V̂_t of k elements of a full tensor into out, from V̂_{t−1} and G. */
static void full_moment(Tensor x, const float *restrict g, int64_t e, int64_t k, float w,
                        float eps1, float *out) {
    const float *v_old = (const float *)PTR(x, F_STAT_A) + e;
    for (int64_t j = 0; j < k; j++) out[j] = lerp(v_old[j], g[j] * g[j] + eps1, w);
}

static void update_sums_tile(const int64_t *tile, const int64_t *desc, const float *sums,
                             double *tile_sums, const double *hp, const int64_t *flags,
                             const int *skip, Buffers *bp) {
    Tensor x = {desc + tile[T_TENSOR] * N_FIELDS};
    if (skip[tile[T_TENSOR]]) { /* Σ U_t² proven finite and read no further: not formed */
        tile_sums[2] = tile_sums[3] = 0.0;
        return;
    }
    Schedule s = schedule(x, hp, flags);
    Buffers *b = bp;
    double su = 0.0, nonfinite = 0.0;
    int64_t row0 = tile[T_ROW0], nrows = tile[T_ROWS];
    if (!D(x, F_FACTORED)) {
        float w = 1.0f - s.beta2_t, eps1 = (float)hp[HP_EPS1];
        for (int64_t e = row0; e < row0 + nrows; e += MAX_COLS) {
            int64_t k = row0 + nrows - e < MAX_COLS ? row0 + nrows - e : MAX_COLS;
            const float *g, *d = direction(x, b, e, 1, k, hp, flags, s, &g);
            full_moment(x, g, e, k, w, eps1, b->v);
            float acc = 0.0f, bad = 0.0f;
#pragma omp simd reduction(+ : acc, bad)
            for (int64_t j = 0; j < k; j++) {
                bad += (b->v[j] - b->v[j]) != 0.0f; /* NaN or infinite */
                float u = d[j] / sqrtf(b->v[j]);
                acc += u * u;
            }
            su += acc;
            nonfinite += bad;
        }
    } else {
        Slice sl = slice_of(x, tile[T_SLICE]);
        int64_t col0 = tile[T_COL0], ncols = tile[T_COLS];
        col_factors(x, sums, sl, col0, ncols, b->cf);
        for (int64_t i = row0; i < row0 + nrows; i++) {
            int64_t e = sl.base + i * sl.row_stride + col0 * sl.col_stride;
            const float *g, *d = direction(x, b, e, sl.col_stride, ncols, hp, flags, s, &g);
            float rf = row_factor(x, sums, sl, tile[T_SLICE], i), acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t j = 0; j < ncols; j++) {
                float u = d[j] * rf * b->cf[j];
                acc += u * u;
            }
            su += acc;
        }
    }
    tile_sums[2] = su;
    tile_sums[3] = nonfinite;
}

int adafactor_update_sums(const int64_t *desc, int64_t ntensors, const int64_t *tiles,
                          int64_t ntiles, float *sums, double *tile_sums, const double *hp,
                          const int64_t *flags, int nthreads) {
    Buffers *buffers = malloc((size_t)nthreads * sizeof(Buffers));
    double *nonfinite = calloc((size_t)(ntensors > 0 ? ntensors : 1), sizeof(double));
    int *skip = calloc((size_t)(ntensors > 0 ? ntensors : 1), sizeof(int));
    if (!buffers || !nonfinite || !skip) {
        free(buffers);
        free(nonfinite);
        free(skip);
        return -1;
    }
    for (int64_t i = 0; i < ntensors; i++) {
        Tensor x = {desc + i * N_FIELDS};
        nonfinite[i] = statistics_tensor(x, sums, hp, flags, skip + i);
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1)
    for (int64_t k = 0; k < ntiles; k++)
        update_sums_tile(tiles + k * N_TILE_FIELDS, desc, sums, tile_sums + k * 4, hp, flags,
                         skip, own_buffers(buffers));
    for (int64_t i = 0; i < ntensors; i++) {
        Tensor x = {desc + i * N_FIELDS};
        int64_t first = D(x, F_FIRST_TILE), count = D(x, F_TILES), groups = D(x, F_RMS_GROUPS);
        double *su = calloc((size_t)groups, sizeof(double));
        for (int64_t k = first; k < first + count; k++) {
            su[D(x, F_PER_SLICE) ? tiles[k * N_TILE_FIELDS + T_SLICE] : 0] += tile_sums[k * 4 + 2];
            nonfinite[i] += tile_sums[k * 4 + 3];
        }
        for (int64_t g = 0; g < groups; g++) sums[D(x, F_SUM_SQ_U) + g] = (float)su[g];
        sums[D(x, F_NONFINITE)] = (float)nonfinite[i];
        free(su);
    }
    free(skip);
    free(nonfinite);
    free(buffers);
    return 0;
}

/* --- Phase 3: the update ------------------------------------------------------------------ */

/* α_t, RMS(U_t) and whether the step is taken, into the sums; step_scale and decay per RMS
 * group into out (phases.apply_update). */
static void apply_scalars(Tensor x, float *sums, const double *hp, const int64_t *flags,
                          double *out) {
    Schedule s = schedule(x, hp, flags);
    int64_t groups = D(x, F_RMS_GROUPS);
    double count = D(x, F_PER_SLICE) ? (double)(D(x, F_WHOLE_N) * D(x, F_WHOLE_M)) : (double)D(x, F_WHOLE_NUMEL);
    if (count < 1.0) count = 1.0;
    const float *param_sq = sums + D(x, F_PARAM_SQ), *su = sums + D(x, F_SUM_SQ_U);
    int finite = sums[D(x, F_NONFINITE)] == 0.0f && isfinite(hp[HP_LR]); /* equations.lr_is_finite */
    for (int64_t g = 0; g < groups; g++) finite = finite && isfinite(su[g]) && isfinite(param_sq[groups + g]);
    sums[D(x, F_FINITE)] = (float)finite;
    for (int64_t g = 0; g < groups; g++) {
        float rho = s.rho_t, alpha = rho;
        if (flags[FLAG_SCALE_PARAMETER]) {
            float up = sqrtf(param_sq[g] / (float)count), down = sqrtf(param_sq[groups + g] / (float)count);
            float rms_x = isfinite(up) ? up / 4294967296.0f : down * 4294967296.0f;
            alpha = rho * fmaxf(rms_x, (float)hp[HP_EPS2]);
        }
        float update_rms = sqrtf(su[g] / (float)count);
        float divisor = 1.0f;
        if (flags[FLAG_CLIP]) divisor = fmaxf(update_rms / (float)hp[HP_CLIP_THRESHOLD], 1.0f);
        float scale = flags[FLAG_DECAY_SCALE] == 0 ? rho : flags[FLAG_DECAY_SCALE] == 1 ? alpha
                      : flags[FLAG_DECAY_SCALE] == 2 ? (float)hp[HP_LR] : 1.0f;
        sums[D(x, F_ALPHA) + g] = alpha;
        sums[D(x, F_UPDATE_RMS) + g] = update_rms;
        out[2 * g] = alpha / divisor;
        out[2 * g + 1] = (float)hp[HP_WEIGHT_DECAY] * scale;
    }
}

/* X_t = X − (step + decay·X) for k elements at e, with the momentum and a full V̂ stored. */
static void apply_run(Tensor x, Buffers *b, int64_t e, int64_t stride, int64_t k, float rf,
                      const float *cf, float step_scale, float decay, const double *hp,
                      const int64_t *flags, Schedule s, uint32_t per_step) {
    int pcode = (int)D(x, F_PARAM_DTYPE), mcode = (int)D(x, F_MOMENTUM_DTYPE);
    const float *g, *d = direction(x, b, e, stride, k, hp, flags, s, &g);
    void *mp = (char *)PTR(x, F_MOMENTUM) + e * elem_size(mcode);
    if (flags[FLAG_GRADIENT_MOMENTUM]) store_row(mp, mcode, stride, k, b->m);
    float *u = b->u;
    if (cf) {
        for (int64_t j = 0; j < k; j++) u[j] = d[j] * rf * cf[j] * step_scale;
    } else { /* a full V̂, float32 and flat: written in place */
        float *v = (float *)PTR(x, F_STAT_A) + e;
        full_moment(x, g, e, k, 1.0f - s.beta2_t, (float)hp[HP_EPS1], v);
        for (int64_t j = 0; j < k; j++) u[j] = d[j] / sqrtf(v[j]) * step_scale;
    }
    if (flags[FLAG_STEP_MOMENTUM]) {
        float w = 1.0f - (float)hp[HP_BETA1];
        float *m = as_f32(mp, mcode, stride, k, b->m);
        for (int64_t j = 0; j < k; j++) m[j] = lerp(m[j], u[j], w);
        put_f32(mp, mcode, stride, k, m);
        memcpy(u, m, (size_t)k * 4);
        round_as(mcode, k, u); /* the step is the momentum as stored */
    }
    float sign = flags[FLAG_MAXIMIZE] ? -1.0f : 1.0f;
    void *xp = (char *)PTR(x, F_PARAM) + e * elem_size(pcode);
    float *xv = as_f32(xp, pcode, stride, k, b->v); /* v is free for X here */
    uint16_t *rp = D(x, F_RESIDUAL) ? (uint16_t *)PTR(x, F_RESIDUAL) + e : NULL;
    if (rp) { /* compensated: X is the parameter and what rounding it dropped (m is free) */
        load_row(rp, pcode, stride, k, b->m);
        for (int64_t j = 0; j < k; j++) xv[j] += b->m[j];
    }
    for (int64_t j = 0; j < k; j++) xv[j] = xv[j] - (sign * u[j] + xv[j] * decay);
    uint16_t *xh = (uint16_t *)xp;
    if (rp)
        write_compensated(pcode, xh, rp, stride, k, xv);
    else if (pcode != 0 && flags[FLAG_STOCHASTIC_ROUNDING])
        write_stochastic(pcode, xh, stride, k, xv, per_step, (uint64_t)e);
    else
        put_f32(xp, pcode, stride, k, xv);
}

static void apply_tile(const int64_t *tile, const int64_t *desc, const float *sums,
                       const double *scalars, const double *hp, const int64_t *flags,
                       uint64_t seed, Buffers *b) {
    Tensor x = {desc + tile[T_TENSOR] * N_FIELDS};
    if (sums[D(x, F_FINITE)] == 0.0f) return; /* skipped: nothing changes */
    Schedule s = schedule(x, hp, flags);
    int64_t row0 = tile[T_ROW0], nrows = tile[T_ROWS];
    const double *own = scalars + 2 * (D(x, F_PER_SLICE) ? tile[T_SLICE] : 0);
    float step_scale = (float)own[0], decay = (float)own[1];
    uint32_t per_step = noise_stream((uint32_t)seed, (uint32_t)D(x, F_STREAM), (uint32_t)s.t);
    if (!D(x, F_FACTORED)) {
        for (int64_t e = row0; e < row0 + nrows; e += MAX_COLS) {
            int64_t k = row0 + nrows - e < MAX_COLS ? row0 + nrows - e : MAX_COLS;
            apply_run(x, b, e, 1, k, 0.0f, NULL, step_scale, decay, hp, flags, s, per_step);
        }
        return;
    }
    Slice sl = slice_of(x, tile[T_SLICE]);
    int64_t col0 = tile[T_COL0], ncols = tile[T_COLS];
    col_factors(x, sums, sl, col0, ncols, b->cf);
    for (int64_t i = row0; i < row0 + nrows; i++) {
        int64_t e = sl.base + i * sl.row_stride + col0 * sl.col_stride;
        apply_run(x, b, e, sl.col_stride, ncols, row_factor(x, sums, sl, tile[T_SLICE], i), b->cf,
                  step_scale, decay, hp, flags, s, per_step);
    }
}

/* Commit R_t and C_t where the step was taken, and count it. */
static void commit_tensor(Tensor x, const float *sums) {
    int finite = sums[D(x, F_FINITE)] != 0.0f;
    if (D(x, F_FACTORED) && finite) {
        int64_t slices = D(x, F_SLICES);
        memcpy(PTR(x, F_STAT_A), sums + D(x, F_ROW), (size_t)(slices * D(x, F_N)) * 4);
        memcpy(PTR(x, F_STAT_B), sums + D(x, F_COL), (size_t)(slices * D(x, F_M)) * 4);
    }
    *(float *)PTR(x, F_STEP) += (float)finite;
    *(int64_t *)PTR(x, F_SKIPS) += !finite;
}

int adafactor_apply(const int64_t *desc, int64_t ntensors, const int64_t *tiles, int64_t ntiles,
                    float *sums, double *scalars, const int64_t *scalar_offsets,
                    const double *hp, const int64_t *flags, const int64_t *seed_at, int nthreads) {
    uint64_t seed = (uint64_t)*seed_at;
    Buffers *buffers = malloc((size_t)nthreads * sizeof(Buffers));
    if (!buffers) return -1; /* before anything changes */
    for (int64_t i = 0; i < ntensors; i++) {
        Tensor x = {desc + i * N_FIELDS};
        apply_scalars(x, sums, hp, flags, scalars + scalar_offsets[i]);
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1)
    for (int64_t k = 0; k < ntiles; k++) {
        const int64_t *tile = tiles + k * N_TILE_FIELDS;
        apply_tile(tile, desc, sums, scalars + scalar_offsets[tile[T_TENSOR]], hp, flags, seed,
                   own_buffers(buffers));
    }
    free(buffers);
    for (int64_t i = 0; i < ntensors; i++) {
        Tensor x = {desc + i * N_FIELDS};
        commit_tensor(x, sums);
    }
    return 0;
}
