// The competitive (conv) layer's loops around its products, in C: src/core/conv-kernels.ts
// says what each computes, in the same order, with the same float64 sums; these are the same
// functions, compiled, for the backend whose products already run here (wasm+blas). Every array
// is checked to be long enough for the geometry before anything is read or written.
#define NAPI_VERSION 8
#include <node_api.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// The hot loops compiled for AVX-512 and AVX2 besides the baseline, chosen at load time. Only
// the vector width differs: every value is the same IEEE operation in the same order (no FMA
// contraction, no reassociation; a sum runs across channels, never along one), so each clone
// gives the baseline's bits. (Clones need glibc's ifunc: elsewhere the baseline alone.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__)
#define HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define HOT
#endif

#define ARGS(n)                                                                  \
  size_t argc = n;                                                               \
  napi_value a[n];                                                               \
  if (napi_get_cb_info(env, info, &argc, a, NULL, NULL) != napi_ok || argc != n) \
    return fail(env, "expects " #n " arguments");

static napi_value fail(napi_env env, const char *msg) {
  napi_throw_range_error(env, NULL, msg);
  return NULL;
}

// A typed array of `type` with at least `need` elements.
static void *arr(napi_env env, napi_value v, napi_typedarray_type type, int64_t need) {
  bool is_ta;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return NULL;
  napi_typedarray_type t;
  size_t len;
  void *p;
  if (napi_get_typedarray_info(env, v, &t, &len, &p, NULL, NULL) != napi_ok) return NULL;
  if (t != type || (int64_t)len < need) return NULL;
  return p;
}

// Integers 0..2^31-1 of args[from..from+n).
static int ints(napi_env env, napi_value *args, int n, int64_t *out) {
  for (int i = 0; i < n; i++) {
    double d;
    if (napi_get_value_double(env, args[i], &d) != napi_ok) return 0;
    if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int64_t)d) return 0;
    out[i] = (int64_t)d;
  }
  return 1;
}

// im2col(x, p, rows, h, w, c, kernel, stride, padding, groups, ho, wo)
static napi_value js_im2col(napi_env env, napi_callback_info info) {
  ARGS(12);
  int64_t g[10];
  if (!ints(env, a + 2, 10, g)) return fail(env, "im2col: bad geometry");
  const int64_t rows = g[0], h = g[1], w = g[2], c = g[3], kernel = g[4], stride = g[5],
                padding = g[6], groups = g[7], ho = g[8], wo = g[9];
  if (groups < 1 || c % groups != 0) return fail(env, "im2col: groups must divide channels");
  const int64_t cg = c / groups;
  const float *x = arr(env, a[0], napi_float32_array, rows * h * w * c);
  float *p = arr(env, a[1], napi_float32_array, rows * ho * wo * kernel * kernel * c);
  if (!x || !p) return fail(env, "im2col: an array is too short");
  // Ungrouped, a kernel row inside the image is one span of kernel * c values of x.
  const int64_t span = groups == 1 ? kernel * c : 0;
  int64_t at = 0;
  for (int64_t gi = 0; gi < groups; gi++) {
    const int64_t c0 = gi * cg;
    for (int64_t b = 0; b < rows; b++)
      for (int64_t oy = 0; oy < ho; oy++)
        for (int64_t ox = 0; ox < wo; ox++)
          for (int64_t ky = 0; ky < kernel; ky++) {
            const int64_t iy = oy * stride + ky - padding;
            const int64_t x0 = ox * stride - padding;
            if (span > 0 && iy >= 0 && iy < h && x0 >= 0 && x0 + kernel <= w) {
              const float *src = x + ((b * h + iy) * w + x0) * c;
              if (span >= 16) memcpy(p + at, src, span * sizeof(float));
              else for (int64_t k = 0; k < span; k++) p[at + k] = src[k];
              at += span;
              continue;
            }
            for (int64_t kx = 0; kx < kernel; kx++) {
              const int64_t ix = ox * stride + kx - padding;
              const int inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
              if (cg >= 16) {
                if (inside) memcpy(p + at, x + ((b * h + iy) * w + ix) * c + c0, cg * sizeof(float));
                else memset(p + at, 0, cg * sizeof(float));
              } else {
                // A few channels: a select per value, no call (and no branch on the border).
                const float *src = x + (inside ? ((b * h + iy) * w + ix) * c + c0 : 0);
                for (int64_t k = 0; k < cg; k++) p[at + k] = inside ? src[k] : 0.0f;
              }
              at += cg;
            }
          }
  }
  return NULL;
}

// No pooling and no groups: m and z have one layout, and each value's window is itself.
HOT static void relu_direct(const float *restrict z, const float *restrict bias, float *restrict m,
                            int32_t *restrict arg, int64_t n, int64_t out) {
  for (int64_t i = 0; i < n; i++)
    for (int64_t o = 0; o < out; o++) {
      const int64_t at = i * out + o;
      const float v = z[at] + bias[o];
      const int take = v > 0.0f;
      m[at] = take ? v : 0.0f;
      arg[at] = take ? (int32_t)at : -1;
    }
}

// reluPool(z, bias, m, arg, rows, ho, wo, pool, hp, wp, out, groups)
static napi_value js_relu_pool(napi_env env, napi_callback_info info) {
  ARGS(12);
  int64_t g[8];
  if (!ints(env, a + 4, 8, g)) return fail(env, "reluPool: bad geometry");
  const int64_t rows = g[0], ho = g[1], wo = g[2], pool = g[3], hp = g[4], wp = g[5], out = g[6],
                groups = g[7];
  if (groups < 1 || out % groups != 0 || hp * pool > ho || wp * pool > wo)
    return fail(env, "reluPool: bad geometry");
  const int64_t og = out / groups, n = rows * ho * wo, pooled = rows * hp * wp * out;
  const float *z = arr(env, a[0], napi_float32_array, n * out);
  const float *bias = arr(env, a[1], napi_float32_array, out);
  float *m = arr(env, a[2], napi_float32_array, pooled);
  int32_t *arg = arr(env, a[3], napi_int32_array, pooled);
  if (!z || !bias || !m || !arg) return fail(env, "reluPool: an array is too short");
  if (pool == 1 && groups == 1) {
    relu_direct(z, bias, m, arg, n, out);
    return NULL;
  }
  for (int64_t i = 0; i < pooled; i++) {
    m[i] = 0;
    arg[i] = -1;
  }
  for (int64_t gi = 0; gi < groups; gi++) {
    const int64_t o0 = gi * og;
    for (int64_t b = 0; b < rows; b++)
      for (int64_t py = 0; py < hp; py++)
        for (int64_t px = 0; px < wp; px++) {
          const int64_t at = ((b * hp + py) * wp + px) * out + o0;
          for (int64_t dy = 0; dy < pool; dy++)
            for (int64_t dx = 0; dx < pool; dx++) {
              const int64_t base = (gi * n + (b * ho + py * pool + dy) * wo + px * pool + dx) * og;
              // Selects, not branches: the comparisons are coin flips on real activations.
              float *restrict mm = m + at;
              int32_t *restrict aa = arg + at;
              const float *restrict zz = z + base;
              const float *restrict bb = bias + o0;
              for (int64_t j = 0; j < og; j++) {
                // The sum of two floats in double, rounded once: the float sum.
                const float v = zz[j] + bb[j];
                const float cur = mm[j];
                uint32_t vb, cb;
                memcpy(&vb, &v, 4);
                memcpy(&cb, &cur, 4);
                const uint32_t take = 0u - (uint32_t)(v > cur);
                const uint32_t mb = (vb & take) | (cb & ~take);
                memcpy(mm + j, &mb, 4);
                aa[j] = (int32_t)(((uint32_t)(base + j) & take) | ((uint32_t)aa[j] & ~take));
              }
            }
        }
  }
  return NULL;
}

HOT static void channel_moments(const float *restrict m, int64_t count, int64_t out,
                                double *restrict mean, double *restrict var) {
  for (int64_t o = 0; o < out; o++) mean[o] = var[o] = 0;
  for (int64_t i = 0; i < count; i++)
    for (int64_t o = 0; o < out; o++) mean[o] += m[i * out + o];
  for (int64_t o = 0; o < out; o++) mean[o] /= count;
  for (int64_t i = 0; i < count; i++)
    for (int64_t o = 0; o < out; o++) {
      const double d = m[i * out + o] - mean[o];
      var[o] += d * d;
    }
  for (int64_t o = 0; o < out; o++) var[o] /= count;
}

// moments(m, count, out, mean, variance): per channel over count rows, float64 sums.
static napi_value js_moments(napi_env env, napi_callback_info info) {
  ARGS(5);
  int64_t g[2];
  if (!ints(env, a + 1, 2, g) || g[1] < 1) return fail(env, "moments: bad geometry");
  const int64_t count = g[0], out = g[1];
  const float *m = arr(env, a[0], napi_float32_array, count * out);
  double *mean = arr(env, a[3], napi_float64_array, out);
  double *var = arr(env, a[4], napi_float64_array, out);
  if (!m || !mean || !var) return fail(env, "moments: an array is too short");
  channel_moments(m, count, out, mean, var);
  return NULL;
}

HOT static void channel_affine(const float *restrict m, int64_t count, int64_t out,
                               const double *restrict scale, const double *restrict shift,
                               float *restrict y) {
  for (int64_t i = 0; i < count; i++)
    for (int64_t o = 0; o < out; o++)
      y[i * out + o] = (float)(scale[o] * m[i * out + o] + shift[o]);
}

// affine(m, count, out, scale, shift, y): y = scale m + shift per channel.
static napi_value js_affine(napi_env env, napi_callback_info info) {
  ARGS(6);
  int64_t g[2];
  if (!ints(env, a + 1, 2, g)) return fail(env, "affine: bad geometry");
  const int64_t count = g[0], out = g[1];
  const float *m = arr(env, a[0], napi_float32_array, count * out);
  const double *scale = arr(env, a[3], napi_float64_array, out);
  const double *shift = arr(env, a[4], napi_float64_array, out);
  float *y = arr(env, a[5], napi_float32_array, count * out);
  if (!m || !scale || !shift || !y) return fail(env, "affine: an array is too short");
  channel_affine(m, count, out, scale, shift, y);
  return NULL;
}

// dL/dy = coef[o] y for image b: coef[o] = dG[b, class of o] * k.
static void set_coef(double *restrict coef, const double *restrict dg, int64_t b, int64_t out,
                     int64_t classes, int64_t group, double k) {
  for (int64_t o = 0; o < out; o++) coef[o] = dg[b * classes + o / group] * k;
}

// The backward pass's first sweep: per channel, the sums of dy and of dy (m - mean).
HOT static void backward_sums(const double *restrict dg, const float *restrict m,
                              const float *restrict y, const double *restrict mean, int64_t rows,
                              int64_t per, int64_t out, int64_t classes, int64_t group, double k,
                              double *restrict coef, double *restrict sdy, double *restrict sdx) {
  for (int64_t b = 0; b < rows; b++) {
    set_coef(coef, dg, b, out, classes, group, k);
    for (int64_t at = b * per * out; at < (b + 1) * per * out; at += out)
      for (int64_t o = 0; o < out; o++) {
        const double dy = coef[o] * y[at + o];
        sdy[o] += dy;
        sdx[o] += dy * (m[at + o] - mean[o]);
      }
  }
}

// Whether every live arg points at its own index (no pooling, no groups: reluPool's direct
// case), and the largest index.
HOT static int arg_scan(const int32_t *restrict arg, int64_t len, int32_t *last) {
  int32_t max = -1, moved = 0;
  for (int64_t i = 0; i < len; i++) {
    const int32_t v = arg[i];
    max = v > max ? v : max;
    moved |= (v != -1) & (v != (int32_t)i);
  }
  *last = max;
  return !moved;
}

// dm = ka dy - kb - kc (m - mean) per value: written to dz at arg (0 there where the ReLU is
// off), summed per channel into db. `direct`: arg is the identity (arg_scan), dz is written in
// one sweep; otherwise each live value goes where arg says (a dead one writes to a sink).
HOT static void backward_dz(const double *restrict dg, const float *restrict m,
                            const float *restrict y, const int32_t *restrict arg,
                            const double *restrict mean, const double *restrict ka,
                            const double *restrict kb, const double *restrict kc, int64_t rows,
                            int64_t per, int64_t out, int64_t classes, int64_t group, double k,
                            int direct, double *restrict coef, float *dz, double *restrict db) {
  float sink;
  for (int64_t b = 0; b < rows; b++) {
    set_coef(coef, dg, b, out, classes, group, k);
    for (int64_t at = b * per * out; at < (b + 1) * per * out; at += out)
      for (int64_t o = 0; o < out; o++) {
        const int32_t from = arg[at + o];
        const int live = from >= 0;
        const double dm = ka[o] * coef[o] * y[at + o] - kb[o] - kc[o] * (m[at + o] - mean[o]);
        db[o] += live ? dm : 0.0;
        if (direct) {
          dz[at + o] = live ? (float)dm : 0.0f;
        } else {
          // Selects, not branches (half the ReLUs are off, at random).
          float *dst = (float *)((uintptr_t)(dz + from) * live + (uintptr_t)&sink * (1 - live));
          *dst = (float)dm;
        }
      }
  }
}

// backward(dg, m, y, arg, mean, variance, gamma, eps, rows, count, out, classes, dz, dgamma,
//          dbeta, dbias): conv-kernels.ts's backward.
static napi_value js_backward(napi_env env, napi_callback_info info) {
  ARGS(16);
  int64_t g[4];
  double eps;
  if (!ints(env, a + 8, 4, g) || napi_get_value_double(env, a[7], &eps) != napi_ok)
    return fail(env, "backward: bad geometry");
  const int64_t rows = g[0], count = g[1], out = g[2], classes = g[3];
  if (rows < 1 || classes < 1 || out % classes != 0 || count % rows != 0)
    return fail(env, "backward: bad geometry");
  const int64_t per = count / rows, group = out / classes;
  const double *dg = arr(env, a[0], napi_float64_array, rows * classes);
  const float *m = arr(env, a[1], napi_float32_array, count * out);
  const float *y = arr(env, a[2], napi_float32_array, count * out);
  const int32_t *arg = arr(env, a[3], napi_int32_array, count * out);
  const double *mean = arr(env, a[4], napi_float64_array, out);
  const double *var = arr(env, a[5], napi_float64_array, out);
  const float *gamma = arr(env, a[6], napi_float32_array, out);
  bool is_ta;
  size_t dz_len = 0;
  float *dz = NULL;
  if (napi_is_typedarray(env, a[12], &is_ta) == napi_ok && is_ta) {
    napi_typedarray_type t;
    void *p;
    if (napi_get_typedarray_info(env, a[12], &t, &dz_len, &p, NULL, NULL) == napi_ok &&
        t == napi_float32_array)
      dz = p;
  }
  float *dgamma = arr(env, a[13], napi_float32_array, out);
  float *dbeta = arr(env, a[14], napi_float32_array, out);
  float *dbias = arr(env, a[15], napi_float32_array, out);
  if (!dg || !m || !y || !arg || !mean || !var || !gamma || !dz || !dgamma || !dbeta || !dbias)
    return fail(env, "backward: an array is too short");
  int32_t last;
  const int identity = arg_scan(arg, count * out, &last);
  const int direct = identity && count * out <= INT32_MAX && (size_t)(count * out) <= dz_len;
  if (last >= 0 && (size_t)last >= dz_len)
    return fail(env, "backward: an index in arg runs past dz");
  double *work = calloc(8 * out, sizeof(double));
  if (!work) return fail(env, "backward: out of memory");
  double *inv = work, *coef = work + out, *sdy = work + 2 * out, *sdx = work + 3 * out,
         *ka = work + 4 * out, *kb = work + 5 * out, *kc = work + 6 * out, *db = work + 7 * out;
  for (int64_t o = 0; o < out; o++) inv[o] = 1 / sqrt(var[o] + eps);
  const double k = 2.0 / (double)(per * group);
  backward_sums(dg, m, y, mean, rows, per, out, classes, group, k, coef, sdy, sdx);
  for (int64_t o = 0; o < out; o++) {
    sdx[o] *= inv[o];
    ka[o] = gamma[o] * inv[o];
    kb[o] = ka[o] * sdy[o] / count;
    kc[o] = ka[o] * inv[o] * sdx[o] / count;
  }
  backward_dz(dg, m, y, arg, mean, ka, kb, kc, rows, per, out, classes, group, k, direct, coef, dz,
              db);
  for (int64_t o = 0; o < out; o++) {
    dgamma[o] = (float)sdx[o];
    dbeta[o] = (float)sdy[o];
    dbias[o] = (float)db[o];
  }
  free(work);
  return NULL;
}

// Each image's sum of squares per channel over its positions, then per class over its group.
HOT static void goodness_rows(const float *restrict y, int64_t rows, int64_t per, int64_t out,
                              int64_t classes, double *restrict acc, double *restrict g) {
  const int64_t group = out / classes;
  const double n = (double)(per / out) * group;
  for (int64_t b = 0; b < rows; b++) {
    for (int64_t o = 0; o < out; o++) acc[o] = 0;
    for (int64_t i = b * per; i < (b + 1) * per; i += out)
      for (int64_t o = 0; o < out; o++) acc[o] += (double)y[i + o] * y[i + o];
    for (int64_t j = 0, o = 0; j < classes; j++) {
      double sum = 0;
      for (const int64_t end = o + group; o < end; o++) sum += acc[o];
      g[b * classes + j] = sum / n;
    }
  }
}

// goodness(y, rows, out, classes, g): each class's mean square over positions and its
// contiguous group of out / classes channels; g [rows, classes] float64.
static napi_value js_goodness(napi_env env, napi_callback_info info) {
  ARGS(5);
  int64_t d[3];
  if (!ints(env, a + 1, 3, d) || d[0] < 1 || d[2] < 1 || d[1] % d[2] != 0)
    return fail(env, "goodness: bad geometry");
  const int64_t rows = d[0], out = d[1], classes = d[2];
  size_t len;
  bool is_ta;
  napi_typedarray_type t;
  void *yp;
  if (napi_is_typedarray(env, a[0], &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, a[0], &t, &len, &yp, NULL, NULL) != napi_ok ||
      t != napi_float32_array || len % (size_t)(rows * out) != 0)
    return fail(env, "goodness: y must be rows x positions x out floats");
  const float *y = yp;
  const int64_t per = (int64_t)len / rows;
  double *g = arr(env, a[4], napi_float64_array, rows * classes);
  if (!g) return fail(env, "goodness: an array is too short");
  double *acc = malloc(out * sizeof(double));
  if (!acc) return fail(env, "goodness: out of memory");
  goodness_rows(y, rows, per, out, classes, acc, g);
  free(acc);
  return NULL;
}

// A layer's whole step with its product fused in, for a small patch per group (a first layer's
// kernel^2 x channels values; a grouped layer's kernel^2 x channels / groups): its product is a
// few multiply-adds a value, so writing the patches, Z, m, arg and dZ out and reading them back
// (the general path: a dozen sweeps of [B, ho, wo, out] floats, the patches many times that)
// costs several times the product. Here the work goes image by image: the image zero-padded, Z
// and m = maxpool(relu(Z + b)) are computed into buffers that stay in cache at each of the three
// sweeps (statistics, Y, gradient), and only Y is written out. The math is the general path's
// (reluPool, moments, affine, goodness and backward above: the pooled maximum the first of its
// window's largest values above 0, none where all are 0), in float, with sums in float along a
// row of positions and in float64 from row to row: the BatchNorm variance as E[m^2] - mean^2,
// the backward's per-channel sums from each image's, dW = P^T dZ row by row.
// Each group's channels go in blocks of LANES (the vectors below, zero past its last channel);
// every lane is the same IEEE operation in every clone, so the clones agree bit for bit.
#define LANES 8
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef double vd __attribute__((vector_size(8 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
// The vectors only pass between always-inlined functions: no call ever uses the ABI GCC warns of.
#pragma GCC diagnostic ignored "-Wpsabi"
#define INLINE static inline __attribute__((always_inline))

// acc[0..LANES) += v, in float64.
INLINE void add64(double *restrict acc, vf v) {
  vd a;
  memcpy(&a, acc, sizeof a);
  a += __builtin_convertvector(v, vd);
  memcpy(acc, &a, sizeof a);
}

typedef struct {
  int64_t rows, h, w, c, kernel, stride, padding, groups, ho, wo, pool, hp, wp, out, classes;
  int64_t kk;     // patch length (one group's)
  int64_t og;     // channels of a group
  int64_t gb;     // blocks of a group
  int64_t blocks; // all of them
  int64_t hx, wx; // the image padded
} Direct;

// Block j's first channel (of `out`), and how many of its lanes are channels.
INLINE int64_t block_channel(const Direct *d, int64_t j) {
  return (j / d->gb) * d->og + (j % d->gb) * LANES;
}
INLINE int64_t block_lanes(const Direct *d, int64_t j) {
  const int64_t left = d->og - (j % d->gb) * LANES;
  return left < LANES ? left : LANES;
}

// Float64 accumulators of a step, each of blocks * LANES lanes (DW: kk of them).
enum { IMG_Q, IMG_S, IMG_T, DB, DW };

// The work arrays of a step, 64-byte aligned, per-channel ones in lanes, zero past each group's
// channels: the kernel [blocks][kk]; the bias, BatchNorm's float coefficients and the backward's
// [blocks]; for one image: Z over the pooled region [ho wo][blocks] (m itself when unpooled), m
// and arg (the window element each m came from, -1 for none) [hp wp][blocks]; one pooled row's
// dZ at each conv position [pool][wp pool][blocks], and its Y [wp][blocks]; the float64 sums;
// each patch value's place in the padded image from its patch's corner, per group [groups][kk];
// the padded image.
typedef struct {
  vf *w, *bias, *mu, *scale, *beta, *kb, *kc, *coef, *z, *m, *dz, *yr;
  vi *arg;
  double *acc;
  int64_t *off, *bo; // bo: each block's first channel (block_channel)
  float *xp;
  void *all;
} Work;

static void work_free(Work *k) { free(k->all); }

INLINE double *acc_of(const Work *k, const Direct *d, int which) {
  return k->acc + which * d->blocks * LANES;
}

// Spreads per-channel values (out of them) into lanes.
static void to_lanes(const Direct *d, vf *to, const float *from) {
  float *t = (float *)to;
  for (int64_t j = 0; j < d->blocks; j++)
    for (int64_t l = 0, o = block_channel(d, j); l < block_lanes(d, j); l++) t[j * LANES + l] = from[o + l];
}

// Per-channel values out of lanes.
static void from_lanes(const Direct *d, const double *from, double *to) {
  for (int64_t j = 0; j < d->blocks; j++)
    for (int64_t l = 0, o = block_channel(d, j); l < block_lanes(d, j); l++) to[o + l] = from[j * LANES + l];
}

static int work_alloc(Work *k, const Direct *d, const float *w, const float *bias) {
  const int64_t nb = d->blocks, conv = d->hp * d->pool * d->wp * d->pool, per = d->hp * d->wp;
  const int64_t vectors = d->kk * nb + 7 * nb + (d->pool > 1 ? conv : 0) * nb + 2 * per * nb +
                          d->pool * d->wp * d->pool * nb + d->wp * nb;
  const size_t head = (sizeof(vf) * (size_t)vectors + 63) / 64 * 64;
  const size_t bytes = head + 8 * (size_t)((DW + d->kk) * nb * LANES) +
                       8 * (size_t)(d->groups * d->kk + nb) + sizeof(float) * (size_t)(d->hx * d->wx * d->c);
  char *all = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!all) return 0;
  memset(all, 0, bytes);
  k->all = all;
  vf *v = (vf *)all;
  k->w = v, v += d->kk * nb;
  vf **small[] = {&k->bias, &k->mu, &k->scale, &k->beta, &k->kb, &k->kc, &k->coef};
  for (size_t i = 0; i < sizeof small / sizeof *small; i++) *small[i] = v, v += nb;
  k->m = v, v += per * nb;
  k->z = d->pool > 1 ? v : k->m, v += (d->pool > 1 ? conv : 0) * nb;
  k->arg = (vi *)v, v += per * nb;
  k->dz = v, v += d->pool * d->wp * d->pool * nb;
  k->yr = v;
  k->acc = (double *)(all + head);
  k->off = (int64_t *)(k->acc + (DW + d->kk) * nb * LANES);
  k->bo = k->off + d->groups * d->kk;
  k->xp = (float *)(k->bo + nb);
  for (int64_t j = 0; j < nb; j++) k->bo[j] = block_channel(d, j);
  // The kernel [groups][kk][og] in lanes, block by block.
  float *wf = (float *)k->w;
  for (int64_t j = 0; j < nb; j++) {
    const int64_t g = j / d->gb, oc = (j % d->gb) * LANES;
    for (int64_t q = 0; q < d->kk; q++)
      for (int64_t l = 0; l < block_lanes(d, j); l++)
        wf[(j * d->kk + q) * LANES + l] = w[(g * d->kk + q) * d->og + oc + l];
  }
  to_lanes(d, k->bias, bias);
  const int64_t cg = d->c / d->groups;
  for (int64_t g = 0; g < d->groups; g++)
    for (int64_t ky = 0, q = 0; ky < d->kernel; ky++)
      for (int64_t kx = 0; kx < d->kernel; kx++)
        for (int64_t ci = 0; ci < cg; ci++)
          k->off[g * d->kk + q++] = (ky * d->wx + kx) * d->c + g * cg + ci;
  return 1;
}

// Image b zero-padded (into k->xp); relu(Z + b) over the pooled region (into k->z); and pooled,
// m and arg (with no pooling m is k->z, and arg is not used: the ReLU's sign is).
INLINE void image_m(const float *restrict x, const Direct *d, int64_t b, Work *k) {
  const int64_t nb = d->blocks, kk = d->kk, c = d->c, step = d->stride * c, pool = d->pool;
  const int64_t wz = d->wp * pool; // columns of Z the pooling reads
  memset(k->xp, 0, d->hx * d->wx * c * sizeof(float));
  for (int64_t iy = 0; iy < d->h; iy++)
    memcpy(k->xp + ((iy + d->padding) * d->wx + d->padding) * c, x + (b * d->h + iy) * d->w * c,
           d->w * c * sizeof(float));
  const vf zero = {0};
  // Four positions at a time: four independent sums in flight, each weight loaded once.
  for (int64_t oy = 0; oy < d->hp * pool; oy++) {
    const float *restrict row = k->xp + oy * d->stride * d->wx * c;
    vf *restrict z = k->z + oy * wz * nb;
    for (int64_t j = 0; j < nb; j++) {
      const vf *restrict wj = k->w + j * kk, bias = k->bias[j];
      const int64_t *restrict off = k->off + (j / d->gb) * kk;
      int64_t ox = 0;
      for (; ox + 4 <= wz; ox += 4) {
        const float *restrict pi = row + ox * step;
        vf a0 = zero, a1 = zero, a2 = zero, a3 = zero;
        for (int64_t q = 0; q < kk; q++) {
          const float *restrict pq = pi + off[q];
          a0 += pq[0] * wj[q];
          a1 += pq[step] * wj[q];
          a2 += pq[2 * step] * wj[q];
          a3 += pq[3 * step] * wj[q];
        }
        a0 += bias, a1 += bias, a2 += bias, a3 += bias;
        z[ox * nb + j] = (vf)((vi)a0 & (a0 > zero));
        z[(ox + 1) * nb + j] = (vf)((vi)a1 & (a1 > zero));
        z[(ox + 2) * nb + j] = (vf)((vi)a2 & (a2 > zero));
        z[(ox + 3) * nb + j] = (vf)((vi)a3 & (a3 > zero));
      }
      for (; ox < wz; ox++) {
        const float *restrict pi = row + ox * step;
        vf acc = zero;
        for (int64_t q = 0; q < kk; q++) acc += pi[off[q]] * wj[q];
        acc += bias;
        z[ox * nb + j] = (vf)((vi)acc & (acc > zero));
      }
    }
  }
  if (pool == 1) return;
  const vi none = zero > zero; // all 0: "not taken"
  for (int64_t py = 0; py < d->hp; py++)
    for (int64_t px = 0; px < d->wp; px++)
      for (int64_t j = 0; j < nb; j++) {
        vf cur = zero;
        vi arg = none - 1; // -1
        for (int32_t dy = 0, e = 0; dy < pool; dy++)
          for (int32_t dx = 0; dx < pool; dx++, e++) {
            const vf v = k->z[((py * pool + dy) * wz + px * pool + dx) * nb + j];
            const vi take = v > cur;
            cur = (vf)(((vi)v & take) | ((vi)cur & ~take));
            arg = ((int32_t)e & take) | (arg & ~take);
          }
        k->m[(py * d->wp + px) * nb + j] = cur;
        k->arg[(py * d->wp + px) * nb + j] = arg;
      }
}

// Sweep 1: each image's sums per channel of m - r and (m - r)^2 into img [2, rows, out], with r
// the first image's mean (a shift from the data itself, so that no sum cancels), into shift.
HOT static void direct_stats(const float *restrict x, const Direct *d, Work *k,
                             double *restrict img, double *restrict shift) {
  const int64_t nb = d->blocks, wp = d->wp, out = d->out, per = d->hp * wp;
  double *s1 = acc_of(k, d, IMG_S), *s2 = acc_of(k, d, IMG_Q);
  for (int64_t b = 0; b < d->rows; b++) {
    image_m(x, d, b, k);
    if (b == 0) {
      memset(s1, 0, nb * LANES * sizeof(double));
      for (int64_t i = 0; i < per; i++)
        for (int64_t j = 0; j < nb; j++) add64(s1 + j * LANES, k->m[i * nb + j]);
      float *r = (float *)k->mu;
      for (int64_t i = 0; i < nb * LANES; i++) r[i] = (float)(s1[i] / per);
      for (int64_t j = 0; j < nb; j++)
        for (int64_t l = 0, o = k->bo[j]; l < block_lanes(d, j); l++) shift[o + l] = r[j * LANES + l];
    }
    memset(s1, 0, nb * LANES * sizeof(double));
    memset(s2, 0, nb * LANES * sizeof(double));
    for (int64_t py = 0; py < d->hp; py++)
      for (int64_t j = 0; j < nb; j++) {
        const vf *restrict m = k->m + py * wp * nb + j, r = k->mu[j];
        vf s = {0}, q = {0};
        for (int64_t px = 0; px < wp; px++) {
          const vf v = m[px * nb] - r;
          s += v;
          q += v * v;
        }
        add64(s1 + j * LANES, s);
        add64(s2 + j * LANES, q);
      }
    from_lanes(d, s1, img + b * out);
    from_lanes(d, s2, img + (d->rows + b) * out);
  }
}

// One pooled row's Y, [wp][blocks] in k->yr, out to Y position by position. A block with lanes
// past its group's channels is stored whole all the same, those lanes landing on the channels
// after it, which are stored after it (positions in order, blocks in order): all but where they
// would land past Y's end.
INLINE void row_out(const Direct *d, const Work *k, int64_t b, int64_t py, float *restrict y) {
  const int64_t nb = d->blocks, out = d->out, wp = d->wp;
  const int64_t last = d->rows * d->hp * wp * out - LANES; // the last whole store's place
  for (int64_t px = 0; px < wp; px++) {
    const int64_t at = ((b * d->hp + py) * wp + px) * out;
    for (int64_t j = 0; j < nb; j++) {
      const int64_t o = k->bo[j];
      const vf v = k->yr[px * nb + j];
      if (at + o <= last)
        memcpy(y + at + o, &v, sizeof v);
      else
        for (int64_t l = 0; l < block_lanes(d, j); l++) y[at + o + l] = v[l];
    }
  }
}

// Evaluation's one sweep: Y = (m - mean) scale + beta written with the moments given, and each
// image's sums per channel of Y^2, Y and Y (m - mean) into sums [3, rows, out].
HOT static void direct_y(const float *restrict x, const Direct *d, Work *k, float *restrict y,
                         double *restrict sums) {
  const int64_t nb = d->blocks, out = d->out, wp = d->wp;
  double *q64 = acc_of(k, d, IMG_Q), *s64 = acc_of(k, d, IMG_S), *t64 = acc_of(k, d, IMG_T);
  const vf zero = {0};
  for (int64_t b = 0; b < d->rows; b++) {
    image_m(x, d, b, k);
    memset(q64, 0, 3 * nb * LANES * sizeof(double));
    for (int64_t py = 0; py < d->hp; py++) {
      // The row's Y block by block (the sums in registers) into a buffer in cache, then out.
      const vf *restrict mr = k->m + py * wp * nb;
      for (int64_t j = 0; j < nb; j++) {
        const vf mu = k->mu[j], sc = k->scale[j], be = k->beta[j];
        vf q = zero, s = zero, t = zero;
        for (int64_t px = 0; px < wp; px++) {
          const vf xh = mr[px * nb + j] - mu;
          const vf v = xh * sc + be;
          k->yr[px * nb + j] = v;
          q += v * v;
          s += v;
          t += v * xh;
        }
        add64(q64 + j * LANES, q);
        add64(s64 + j * LANES, s);
        add64(t64 + j * LANES, t);
      }
      row_out(d, k, b, py, y);
    }
    for (int64_t j = 0; j < nb; j++)
      for (int64_t l = 0, o = block_channel(d, j); l < block_lanes(d, j); l++) {
        sums[b * out + o + l] = q64[j * LANES + l];
        sums[(d->rows + b) * out + o + l] = s64[j * LANES + l];
        sums[(2 * d->rows + b) * out + o + l] = t64[j * LANES + l];
      }
  }
}

// Sweep 2: Y = (m - mean) scale + beta written out and dm = ka coef Y - kb - kc (m - mean)
// (backward_dz's) where m came from a live value, row of the pooling by row, summed into db; then
// into dZ at the conv position it came from, and dW = P^T dZ over those positions.
HOT static void direct_dw(const float *restrict x, const Direct *d, Work *k,
                          const double *restrict dg, const double *restrict ka64, double kscale,
                          float *restrict y) {
  const int64_t nb = d->blocks, out = d->out, wp = d->wp, kk = d->kk, pool = d->pool;
  const int64_t group = out / d->classes, step = d->stride * d->c, wz = wp * pool;
  double *db = acc_of(k, d, DB), *dw = acc_of(k, d, DW);
  const vf fzero = {0};
  float coef[out];
  for (int64_t b = 0; b < d->rows; b++) {
    for (int64_t o = 0; o < out; o++)
      coef[o] = (float)(ka64[o] * (dg[b * d->classes + o / group] * kscale));
    to_lanes(d, k->coef, coef);
    image_m(x, d, b, k);
    for (int64_t py = 0; py < d->hp; py++) {
      for (int64_t j = 0; j < nb; j++) {
        const vf mu = k->mu[j], sc = k->scale[j], be = k->beta[j], kb = k->kb[j], kc = k->kc[j];
        const vf cj = k->coef[j];
        vf dbs = fzero;
        for (int64_t px = 0; px < wp; px++) {
          const int64_t at = (py * wp + px) * nb + j;
          const vf mv = k->m[at];
          const vf xh = mv - mu;
          const vf v = xh * sc + be;
          const vf dm = cj * v - kb - kc * xh;
          k->yr[px * nb + j] = v;
          if (pool == 1) {
            const vf dz = (vf)((vi)dm & (mv > fzero));
            k->dz[px * nb + j] = dz;
            dbs += dz;
            continue;
          }
          const vi arg = k->arg[at];
          dbs += (vf)((vi)dm & (arg >= 0));
          for (int64_t dy = 0, e = 0; dy < pool; dy++)
            for (int64_t dx = 0; dx < pool; dx++, e++)
              k->dz[(dy * wz + px * pool + dx) * nb + j] = (vf)((vi)dm & (arg == (vi){0} + (int32_t)e));
        }
        add64(db + j * LANES, dbs);
      }
      row_out(d, k, b, py, y);
      for (int64_t dy = 0; dy < pool; dy++) {
        const float *restrict row = k->xp + (py * pool + dy) * d->stride * d->wx * d->c;
        const vf *restrict dzr = k->dz + dy * wz * nb;
        for (int64_t j = 0; j < nb; j++) {
          const int64_t *restrict off = k->off + (j / d->gb) * kk;
          for (int64_t q = 0; q < kk; q++) {
            const float *restrict xq = row + off[q];
            const vf *restrict dz = dzr + j;
            vf a0 = fzero, a1 = fzero, a2 = fzero, a3 = fzero;
            int64_t ox = 0;
            for (; ox + 4 <= wz; ox += 4) {
              a0 += xq[ox * step] * dz[ox * nb];
              a1 += xq[(ox + 1) * step] * dz[(ox + 1) * nb];
              a2 += xq[(ox + 2) * step] * dz[(ox + 2) * nb];
              a3 += xq[(ox + 3) * step] * dz[(ox + 3) * nb];
            }
            for (; ox < wz; ox++) a0 += xq[ox * step] * dz[ox * nb];
            add64(dw + (j * kk + q) * LANES, (a0 + a1) + (a2 + a3));
          }
        }
      }
    }
  }
}

// The geometry in args[0..15): rows, h, w, c, kernel, stride, padding, groups, ho, wo, pool, hp,
// wp, out, classes.
static int direct_geometry(napi_env env, napi_value *args, Direct *d) {
  int64_t g[15];
  if (!ints(env, args, 15, g)) return 0;
  *d = (Direct){g[0], g[1], g[2],  g[3],  g[4],  g[5], g[6], g[7], g[8], g[9],
                g[10], g[11], g[12], g[13], g[14], 0,    0,    0,    0,    0, 0};
  if (d->rows < 1 || d->h < 1 || d->w < 1 || d->c < 1 || d->kernel < 1 || d->stride < 1 ||
      d->groups < 1 || d->c % d->groups != 0 || d->out % d->groups != 0 || d->ho < 1 ||
      d->wo < 1 || d->pool < 1 || d->hp < 1 || d->wp < 1 || d->hp * d->pool > d->ho ||
      d->wp * d->pool > d->wo || d->classes < 1 || d->out < 1 || d->out % d->classes != 0 ||
      d->kernel > 64 || d->c > 4096 || d->out > 65536 || d->h > 65536 || d->w > 65536 ||
      d->pool > 64)
    return 0;
  d->kk = d->kernel * d->kernel * (d->c / d->groups);
  d->og = d->out / d->groups;
  d->gb = (d->og + LANES - 1) / LANES;
  d->blocks = d->groups * d->gb;
  d->hx = d->h + 2 * d->padding, d->wx = d->w + 2 * d->padding;
  // Every patch lies inside the padded image.
  return (d->ho - 1) * d->stride + d->kernel <= d->hx &&
         (d->wo - 1) * d->stride + d->kernel <= d->wx;
}

// BatchNorm's float coefficients in lanes from the batch's moments: mean, gamma / sqrt(var +
// eps), beta.
static int direct_affine(Work *k, const Direct *d, const float *gamma, const float *beta,
                         const double *mean, const double *var, double eps) {
  float *f = malloc(3 * d->out * sizeof(float));
  if (!f) return 0;
  for (int64_t o = 0; o < d->out; o++) {
    f[o] = (float)mean[o];
    f[d->out + o] = (float)(gamma[o] / sqrt(var[o] + eps));
    f[2 * d->out + o] = beta[o];
  }
  to_lanes(d, k->mu, f);
  to_lanes(d, k->scale, f + d->out);
  to_lanes(d, k->beta, f + 2 * d->out);
  free(f);
  return 1;
}

// The arguments both direct calls open with: x, w, bias, gamma, beta, eps, then the geometry.
typedef struct {
  Direct d;
  double eps;
  const float *x, *w, *bias, *gamma, *beta;
} DirectInputs;

static int direct_inputs(napi_env env, napi_value *a, DirectInputs *in) {
  Direct *d = &in->d;
  if (!direct_geometry(env, a + 6, d) || napi_get_value_double(env, a[5], &in->eps) != napi_ok)
    return 0;
  in->x = arr(env, a[0], napi_float32_array, d->rows * d->h * d->w * d->c);
  in->w = arr(env, a[1], napi_float32_array, d->groups * d->kk * d->og);
  in->bias = arr(env, a[2], napi_float32_array, d->out);
  in->gamma = arr(env, a[3], napi_float32_array, d->out);
  in->beta = arr(env, a[4], napi_float32_array, d->out);
  return 1;
}

// Each image's sums [3, rows, out] of Y^2, Y and Y (m - mean) from its sums of m - r and
// (m - r)^2 (img [2, rows, out], in place) and the float coefficients Y is computed with: with
// u = m - mean = (m - r) - (mean - r), Y = u scale + beta.
static void sums_of_y(const Direct *d, const Work *k, const double *restrict shift, double *sums) {
  const int64_t out = d->out, rows = d->rows;
  const double n = (double)(d->hp * d->wp);
  for (int64_t j = 0; j < d->blocks; j++)
    for (int64_t l = 0; l < block_lanes(d, j); l++) {
      const int64_t o = block_channel(d, j) + l;
      const double sc = k->scale[j][l], be = k->beta[j][l], delta = k->mu[j][l] - shift[o];
      for (int64_t b = 0; b < rows; b++) {
        double *q = sums + (b * out + o), *s = q + rows * out, *t = s + rows * out;
        const double s1 = *q, s2 = *s;
        const double su = s1 - n * delta, suu = s2 - 2 * delta * s1 + n * delta * delta;
        *q = sc * sc * suu + 2 * sc * be * su + n * be * be;
        *s = sc * su + n * be;
        *t = sc * suu + be * su;
      }
    }
}

// directForward(x, w, bias, gamma, beta, eps, rows, h, w, c, kernel, stride, padding, groups, ho,
//               wo, pool, hp, wp, out, classes, y, mean, variance, goodness, sums, given): the
// class goodness [rows, classes] and each image's sums [3, rows, out] (of Y^2, Y and Y (m -
// mean)) that directBackward takes. With `given` false (a training step), in one sweep, with
// the batch's moments (into mean and variance); Y is not written (directBackward writes it: y
// may be null). With `given` true (evaluation), Y written with the moments given.
static napi_value js_direct_forward(napi_env env, napi_callback_info info) {
  ARGS(27);
  bool given;
  if (napi_get_value_bool(env, a[26], &given) != napi_ok)
    return fail(env, "directForward: given must be a boolean");
  DirectInputs in;
  if (!direct_inputs(env, a, &in)) return fail(env, "directForward: bad geometry");
  const Direct d = in.d;
  const int64_t out = d.out, n = d.rows * d.hp * d.wp;
  float *y = given ? arr(env, a[21], napi_float32_array, n * out) : NULL;
  double *mean = arr(env, a[22], napi_float64_array, out);
  double *var = arr(env, a[23], napi_float64_array, out);
  double *g = arr(env, a[24], napi_float64_array, d.rows * d.classes);
  double *sums = arr(env, a[25], napi_float64_array, 3 * d.rows * out);
  if (!in.x || !in.w || !in.bias || !in.gamma || !in.beta || (given && !y) || !mean || !var || !g ||
      !sums)
    return fail(env, "directForward: an array is too short");
  double *shift = malloc(out * sizeof(double));
  Work k;
  if (!shift || !work_alloc(&k, &d, in.w, in.bias)) {
    free(shift);
    return fail(env, "directForward: out of memory");
  }
  if (!given) {
    direct_stats(in.x, &d, &k, sums, shift);
    for (int64_t o = 0; o < out; o++) {
      double s1 = 0, s2 = 0;
      for (int64_t b = 0; b < d.rows; b++)
        s1 += sums[b * out + o], s2 += sums[(d.rows + b) * out + o];
      const double u = s1 / n, v = s2 / n - u * u;
      mean[o] = shift[o] + u;
      var[o] = v > 0 ? v : 0;
    }
  }
  if (!direct_affine(&k, &d, in.gamma, in.beta, mean, var, in.eps)) {
    free(shift);
    work_free(&k);
    return fail(env, "directForward: out of memory");
  }
  if (given)
    direct_y(in.x, &d, &k, y, sums);
  else
    sums_of_y(&d, &k, shift, sums);
  const int64_t group = out / d.classes;
  const double per = (double)(d.hp * d.wp) * group;
  for (int64_t b = 0; b < d.rows; b++)
    for (int64_t j = 0, o = 0; j < d.classes; j++) {
      double sum = 0;
      for (const int64_t end = o + group; o < end; o++) sum += sums[b * out + o];
      g[b * d.classes + j] = sum / per;
    }
  free(shift);
  work_free(&k);
  return NULL;
}

// directBackward(x, w, bias, gamma, beta, eps, rows, h, w, c, kernel, stride, padding, groups,
//                ho, wo, pool, hp, wp, out, classes, mean, variance, dg, sums, dw, dgamma, dbeta,
//                dbias, y): the gradient from dL/dG (dg [rows, classes]) and directForward's
// moments and sums, dw in the kernel's layout [groups, kk, out / groups]; and Y, written in the
// same sweep.
static napi_value js_direct_backward(napi_env env, napi_callback_info info) {
  ARGS(30);
  DirectInputs in;
  if (!direct_inputs(env, a, &in)) return fail(env, "directBackward: bad geometry");
  const Direct d = in.d;
  const double eps = in.eps;
  const float *x = in.x, *w = in.w, *bias = in.bias, *gamma = in.gamma, *beta = in.beta;
  const int64_t out = d.out, n = d.rows * d.hp * d.wp;
  const double *mean = arr(env, a[21], napi_float64_array, out);
  const double *var = arr(env, a[22], napi_float64_array, out);
  const double *dg = arr(env, a[23], napi_float64_array, d.rows * d.classes);
  const double *sums = arr(env, a[24], napi_float64_array, 3 * d.rows * out);
  float *dw = arr(env, a[25], napi_float32_array, d.groups * d.kk * d.og);
  float *dgamma = arr(env, a[26], napi_float32_array, out);
  float *dbeta = arr(env, a[27], napi_float32_array, out);
  float *dbias = arr(env, a[28], napi_float32_array, out);
  float *y = arr(env, a[29], napi_float32_array, n * out);
  if (!x || !w || !bias || !gamma || !beta || !mean || !var || !dg || !sums || !dw || !dgamma ||
      !dbeta || !dbias || !y)
    return fail(env, "directBackward: an array is too short");
  Work k;
  double *work = calloc(4 * out, sizeof(double));
  float *kbc = malloc(2 * out * sizeof(float));
  if (!work || !kbc || !work_alloc(&k, &d, w, bias)) {
    free(work);
    free(kbc);
    return fail(env, "directBackward: out of memory");
  }
  if (!direct_affine(&k, &d, gamma, beta, mean, var, eps)) {
    free(work);
    free(kbc);
    work_free(&k);
    return fail(env, "directBackward: out of memory");
  }
  // The per-channel sums of dY and dY (m - mean), from each image's sums (backward_sums').
  const int64_t group = out / d.classes;
  const double ks = 2.0 / (double)(d.hp * d.wp * group);
  const double *sy = sums + d.rows * out, *sx = sums + 2 * d.rows * out;
  double *sdy = work, *sdx = work + out, *ka = work + 2 * out, *db = work + 3 * out;
  for (int64_t b = 0; b < d.rows; b++)
    for (int64_t o = 0; o < out; o++) {
      const double coef = dg[b * d.classes + o / group] * ks;
      sdy[o] += coef * sy[b * out + o];
      sdx[o] += coef * sx[b * out + o];
    }
  for (int64_t o = 0; o < out; o++) {
    const double inv = 1 / sqrt(var[o] + eps);
    sdx[o] *= inv;
    ka[o] = gamma[o] * inv;
    kbc[o] = (float)(ka[o] * sdy[o] / n);
    kbc[out + o] = (float)(ka[o] * inv * sdx[o] / n);
  }
  to_lanes(&d, k.kb, kbc);
  to_lanes(&d, k.kc, kbc + out);
  direct_dw(x, &d, &k, dg, ka, ks, y);
  const double *acc = acc_of(&k, &d, DW);
  for (int64_t j = 0; j < d.blocks; j++) {
    const int64_t g = j / d.gb, oc = (j % d.gb) * LANES;
    for (int64_t q = 0; q < d.kk; q++)
      for (int64_t l = 0; l < block_lanes(&d, j); l++)
        dw[(g * d.kk + q) * d.og + oc + l] = (float)acc[(j * d.kk + q) * LANES + l];
  }
  from_lanes(&d, acc_of(&k, &d, DB), db);
  for (int64_t o = 0; o < out; o++) {
    dgamma[o] = (float)sdx[o];
    dbeta[o] = (float)sdy[o];
    dbias[o] = (float)db[o];
  }
  free(work);
  free(kbc);
  work_free(&k);
  return NULL;
}

napi_status ffx_conv_define(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"im2col", NULL, js_im2col, NULL, NULL, NULL, napi_enumerable, NULL},
      {"reluPool", NULL, js_relu_pool, NULL, NULL, NULL, napi_enumerable, NULL},
      {"moments", NULL, js_moments, NULL, NULL, NULL, napi_enumerable, NULL},
      {"affine", NULL, js_affine, NULL, NULL, NULL, napi_enumerable, NULL},
      {"backward", NULL, js_backward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"goodness", NULL, js_goodness, NULL, NULL, NULL, napi_enumerable, NULL},
      {"directForward", NULL, js_direct_forward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"directBackward", NULL, js_direct_backward, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof *props, props);
}
