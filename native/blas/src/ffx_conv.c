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

napi_status ffx_conv_define(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"im2col", NULL, js_im2col, NULL, NULL, NULL, napi_enumerable, NULL},
      {"reluPool", NULL, js_relu_pool, NULL, NULL, NULL, napi_enumerable, NULL},
      {"moments", NULL, js_moments, NULL, NULL, NULL, napi_enumerable, NULL},
      {"affine", NULL, js_affine, NULL, NULL, NULL, napi_enumerable, NULL},
      {"backward", NULL, js_backward, NULL, NULL, NULL, napi_enumerable, NULL},
      {"goodness", NULL, js_goodness, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof *props, props);
}
