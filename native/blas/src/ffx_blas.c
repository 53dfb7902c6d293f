// ffx-blas: CBLAS sgemm over JavaScript Float32Arrays, in place (no copies), for the matrix
// products of ffx's wasm backend (src/backend/blas.ts). The BLAS library is opened at load time
// with dlopen, so building needs only a C compiler and Node's headers: $FFX_BLAS_LIB if set (an
// error if it does not load), else the first of libopenblas.so.0, libopenblas.so,
// libcblas.so.3, libblas.so.3, libmkl_rt.so that loads and has cblas_sgemm.
//
// Row-major throughout: C[M,N] = alpha op(A)[M,K] op(B)[K,N] + beta C.
//
// Threads. OpenBLAS gives different bits with one thread than with several (another driver
// splits the sum), and a pipeline stage on one thread must compute what a local run on two
// does. So the library always runs single-threaded, and this module splits C itself into fixed
// blocks of BLOCK rows (or columns, when C is wider than tall): the blocks are a function of the
// shape alone, never of the thread count, each is one single-threaded cblas_sgemm, and a pool of
// our own threads (which sleep between calls, unlike OpenBLAS's, which spin and slow down the
// wasm code that follows) shares them out. The bits are the same for any number of threads.
#define NAPI_VERSION 8
#include <node_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

enum { RowMajor = 101, NoTrans = 111, Trans = 112 };
typedef void (*sgemm_fn)(int order, int ta, int tb, int m, int n, int k, float alpha,
                         const float *a, int lda, const float *b, int ldb, float beta, float *c,
                         int ldc);
typedef void (*set_threads_fn)(int);
typedef char *(*get_str_fn)(void);

static sgemm_fn p_sgemm;
static get_str_fn p_get_config, p_get_corename;
static char lib_path[512];
static char load_error[2048];

static void note_error(size_t *off, const char *fmt, const char *a, const char *b) {
  if (*off >= sizeof load_error) return;
  *off += snprintf(load_error + *off, sizeof load_error - *off, fmt, *off ? "; " : "", a, b);
}

static int load_blas(void) {
  // Before the library starts: no thread pool of its own (it would spin after every call).
  setenv("OPENBLAS_NUM_THREADS", "1", 0);
  setenv("MKL_NUM_THREADS", "1", 0);
  const char *env = getenv("FFX_BLAS_LIB");
  const char *candidates[] = {"libopenblas.so.0", "libopenblas.so", "libcblas.so.3",
                              "libblas.so.3",     "libmkl_rt.so",   "libopenblas.dylib",
                              "libcblas.dylib"};
  const int explicit_lib = env != NULL && *env != 0;
  const int n = explicit_lib ? 1 : (int)(sizeof candidates / sizeof *candidates);
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    const char *name = explicit_lib ? env : candidates[i];
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      note_error(&off, "%s%s%s", dlerror(), "");
      continue;
    }
    sgemm_fn f = (sgemm_fn)dlsym(h, "cblas_sgemm");
    if (!f) {
      note_error(&off, "%s%s%s", name, ": no cblas_sgemm");
      dlclose(h);
      continue;
    }
    p_sgemm = f;
    set_threads_fn set_threads = (set_threads_fn)dlsym(h, "openblas_set_num_threads");
    if (!set_threads) set_threads = (set_threads_fn)dlsym(h, "MKL_Set_Num_Threads");
    if (set_threads) set_threads(1);
    p_get_config = (get_str_fn)dlsym(h, "openblas_get_config");
    p_get_corename = (get_str_fn)dlsym(h, "openblas_get_corename");
    snprintf(lib_path, sizeof lib_path, "%s", name);
    return 1;
  }
  return 0;
}

// ---- Fixed blocks on a pool of our own threads ---------------------------------------------

#define BLOCK 256
#define MAX_THREADS 64

typedef struct {
  int ta, tb, M, N, K, lda, ldb, ldc, along_m;
  float alpha, beta;
  const float *A, *B;
  float *C;
  // An epilogue, done on each block while it is in cache: C += bias (one per column) before
  // the product's sum is added (beta 1, as an Add after it would round), then relu.
  const float *bias;
  int relu;
} gemm_t;

// An optimizer update over n floats (see js_adam, js_sgd).
typedef struct {
  float *p, *m, *v;
  const float *g;
  int n;
  float s[10];
} update_t;

typedef struct {
  void (*run)(int block);
  int nblocks;
  gemm_t gemm;
  update_t update;
} job_t;

static job_t job;
static int threads = 1;  // this (calling) thread included
static int pool_size = 0;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv_work = PTHREAD_COND_INITIALIZER, cv_done = PTHREAD_COND_INITIALIZER;
static unsigned long generation = 0;
static int helpers_wanted = 0, helpers_busy = 0;
static int next_block;  // taken with __atomic_fetch_add
/** The generation each helper was started at: it takes part in jobs after it. */
static unsigned long started_at[MAX_THREADS];

static void gemm_block(int b) {
  const gemm_t *j = &job.gemm;
  const int s0 = b * BLOCK;
  // The block: rows r0..r0+rows, columns c0..c0+cols of C.
  const int r0 = j->along_m ? s0 : 0, c0 = j->along_m ? 0 : s0;
  const int rows = j->along_m ? (j->M - s0 < BLOCK ? j->M - s0 : BLOCK) : j->M;
  const int cols = j->along_m ? j->N : (j->N - s0 < BLOCK ? j->N - s0 : BLOCK);
  float *c = j->C + (size_t)r0 * j->ldc + c0;
  float beta = j->beta;
  if (j->bias) {
    for (int r = 0; r < rows; r++) memcpy(c + (size_t)r * j->ldc, j->bias + c0, cols * sizeof(float));
    beta = 1;
  }
  const float *a = j->A + (j->ta == NoTrans ? (size_t)r0 * j->lda : (size_t)r0);
  const float *bm = j->B + (j->tb == NoTrans ? (size_t)c0 : (size_t)c0 * j->ldb);
  p_sgemm(RowMajor, j->ta, j->tb, rows, cols, j->K, j->alpha, a, j->lda, bm, j->ldb, beta, c,
          j->ldc);
  if (j->relu) {
    for (int r = 0; r < rows; r++) {
      float *row = c + (size_t)r * j->ldc;
      for (int i = 0; i < cols; i++) row[i] = row[i] < 0 ? 0.0f : row[i];
    }
  }
}

static void drain(void) {
  int b;
  while ((b = __atomic_fetch_add(&next_block, 1, __ATOMIC_RELAXED)) < job.nblocks) job.run(b);
}

static void *helper(void *arg) {
  const long id = (long)arg;
  pthread_mutex_lock(&mu);
  unsigned long seen = started_at[id];
  for (;;) {
    while (generation == seen || id >= helpers_wanted) {
      seen = generation;  // a job this helper sits out, or none yet
      pthread_cond_wait(&cv_work, &mu);
    }
    seen = generation;
    pthread_mutex_unlock(&mu);
    drain();
    pthread_mutex_lock(&mu);
    if (--helpers_busy == 0) pthread_cond_signal(&cv_done);
  }
  return NULL;
}

/** Runs job's blocks on this thread and up to threads - 1 of the pool; returns when all are done. */
static void run_job(void) {
  __atomic_store_n(&next_block, 0, __ATOMIC_RELAXED);
  int helpers = threads - 1;
  if (helpers > job.nblocks - 1) helpers = job.nblocks - 1;
  if (helpers > 0) {
    pthread_mutex_lock(&mu);
    helpers_wanted = helpers;
    helpers_busy = helpers;
    generation++;
    pthread_cond_broadcast(&cv_work);
    pthread_mutex_unlock(&mu);
  }
  drain();
  if (helpers > 0) {
    pthread_mutex_lock(&mu);
    while (helpers_busy > 0) pthread_cond_wait(&cv_done, &mu);
    pthread_mutex_unlock(&mu);
  }
}

static void blocked_sgemm(int ta, int tb, int M, int N, int K, float alpha, const float *A,
                          int lda, const float *B, int ldb, float beta, float *C, int ldc,
                          const float *bias, int relu) {
  const int along_m = M >= N;
  const int len = along_m ? M : N;
  job.gemm = (gemm_t){ta, tb, M, N, K, lda, ldb, ldc, along_m, alpha, beta, A, B, C, bias, relu};
  job.run = gemm_block;
  job.nblocks = (len + BLOCK - 1) / BLOCK;
  run_job();
}

// ---- Optimizer updates ---------------------------------------------------------------------
// The fused updates of src/core/kernels/optimizer.wat, element by element in the same float32
// operations and order (no contraction into fused multiply-adds: -ffp-contract=off; sqrt, add,
// multiply and divide are correctly rounded in every vector width), so they give the wasm
// kernel's bits; vectorized (-fno-math-errno lets sqrtf be an instruction, -fno-trapping-math
// lets the flush be a blend of both sides: neither changes a result), on the pool's threads,
// in chunks, since each element is its own.

#define UPDATE_CHUNK 16384

/** |x| < tiny ? 0 : x (NaN compares false and passes). */
static inline float flush(float x, float tiny) { return fabsf(x) < tiny ? 0.0f : x; }

static void adam_block(int b) {
  const update_t *u = &job.update;
  const float b1 = u->s[0], b1c = u->s[1], b2 = u->s[2], b2c = u->s[3], step = u->s[4],
              eps = u->s[5], l2 = u->s[6], shrink = u->s[7], tiny_g = u->s[8], tiny_s = u->s[9];
  const int start = b * UPDATE_CHUNK;
  const int n = ((b + 1) * UPDATE_CHUNK < u->n ? (b + 1) * UPDATE_CHUNK : u->n) - start;
  // Distinct arrays (the caller's tensors): restrict lets the loop be vectorized.
  float *restrict p = u->p + start, *restrict m = u->m + start, *restrict v = u->v + start;
  const float *restrict g = u->g + start;
  for (int i = 0; i < n; i++) {
    const float pi = p[i];
    const float gi = flush(g[i] + l2 * pi, tiny_g);
    const float mi = flush(b1 * m[i] + b1c * gi, tiny_s);
    const float vi = flush(b2 * v[i] + b2c * (gi * gi), tiny_s);
    m[i] = mi;
    v[i] = vi;
    p[i] = pi * shrink - (step * mi) / (sqrtf(vi) + eps);
  }
}

static void sgd_block(int b) {
  const update_t *u = &job.update;
  const float mu = u->s[0], lr = u->s[1], l2 = u->s[2], tiny_g = u->s[3], tiny_s = u->s[4];
  const int start = b * UPDATE_CHUNK;
  const int n = ((b + 1) * UPDATE_CHUNK < u->n ? (b + 1) * UPDATE_CHUNK : u->n) - start;
  float *restrict p = u->p + start, *restrict m = u->m + start;
  const float *restrict g = u->g + start;
  for (int i = 0; i < n; i++) {
    const float pi = p[i];
    const float mi = flush(mu * m[i] + flush(g[i] + l2 * pi, tiny_g), tiny_s);
    m[i] = mi;
    p[i] = pi - lr * mi;
  }
}

// ---- JavaScript bindings -------------------------------------------------------------------

#define CHECK(call)                                                       \
  do {                                                                    \
    if ((call) != napi_ok) {                                              \
      napi_throw_error(env, NULL, "ffx-blas: N-API failure: " #call);     \
      return NULL;                                                        \
    }                                                                     \
  } while (0)

static int get_bool(napi_env env, napi_value v, int *trans) {
  bool b;
  if (napi_get_value_bool(env, v, &b) != napi_ok) return 0;
  *trans = b ? Trans : NoTrans;
  return 1;
}

// A non-negative integer below 2^31.
static int get_int(napi_env env, napi_value v, int64_t *out) {
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return 0;
  if (!(d >= 0 && d <= 2147483647.0) || d != (double)(int64_t)d) return 0;
  *out = (int64_t)d;
  return 1;
}

// A Float32Array's data and length in elements (a view over a SharedArrayBuffer is fine).
static int get_f32(napi_env env, napi_value v, float **data, size_t *len) {
  bool is_ta;
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta) return 0;
  napi_typedarray_type type;
  void *p;
  if (napi_get_typedarray_info(env, v, &type, len, &p, NULL, NULL) != napi_ok) return 0;
  if (type != napi_float32_array) return 0;
  *data = (float *)p;
  return 1;
}

// Elements a row-major rows x cols matrix with leading dimension ld spans.
static int64_t extent(int64_t rows, int64_t cols, int64_t ld) {
  return rows == 0 || cols == 0 ? 0 : (rows - 1) * ld + cols;
}

// sgemm(transA, transB, M, N, K, alpha, A, offA, lda, B, offB, ldb, beta, C, offC, ldc
//       [, bias, offBias, relu]): offsets and leading dimensions in elements; every matrix is
// checked to lie inside its array. With a bias (N floats) C = op(A) op(B) + bias, then relu.
static napi_value js_sgemm(napi_env env, napi_callback_info info) {
  size_t argc = 19;
  napi_value a[19];
  CHECK(napi_get_cb_info(env, info, &argc, a, NULL, NULL));
  int ta, tb;
  int64_t M, N, K, offA, lda, offB, ldb, offC, ldc;
  double alpha, beta;
  float *A, *B, *C;
  size_t lenA, lenB, lenC;
  if (argc != 16 && argc != 19) {
    napi_throw_type_error(env, NULL, "sgemm: expects 16 or 19 arguments");
    return NULL;
  }
  float *bias = NULL;
  int relu = 0;
  if (argc == 19) {
    size_t lenBias;
    int64_t offBias;
    napi_valuetype t;
    bool r;
    CHECK(napi_typeof(env, a[16], &t));
    if (t != napi_null && !get_f32(env, a[16], &bias, &lenBias)) {
      napi_throw_type_error(env, NULL, "sgemm: bias must be a Float32Array or null");
      return NULL;
    }
    if (!get_int(env, a[17], &offBias) || napi_get_value_bool(env, a[18], &r) != napi_ok) {
      napi_throw_type_error(env, NULL, "sgemm: offBias must be an integer, relu a boolean");
      return NULL;
    }
    if (bias) {
      int64_t n;
      if (!get_int(env, a[3], &n) || offBias + n > (int64_t)lenBias) {
        napi_throw_range_error(env, NULL, "sgemm: the bias runs past the end of its array");
        return NULL;
      }
      bias += offBias;
    }
    relu = r;
  }
  if (!get_bool(env, a[0], &ta) || !get_bool(env, a[1], &tb)) {
    napi_throw_type_error(env, NULL, "sgemm: transA and transB must be booleans");
    return NULL;
  }
  if (!get_int(env, a[2], &M) || !get_int(env, a[3], &N) || !get_int(env, a[4], &K) ||
      !get_int(env, a[7], &offA) || !get_int(env, a[8], &lda) || !get_int(env, a[10], &offB) ||
      !get_int(env, a[11], &ldb) || !get_int(env, a[14], &offC) ||
      !get_int(env, a[15], &ldc)) {
    napi_throw_type_error(
        env, NULL, "sgemm: sizes, offsets and leading dimensions must be integers 0..2^31-1");
    return NULL;
  }
  if (napi_get_value_double(env, a[5], &alpha) != napi_ok ||
      napi_get_value_double(env, a[12], &beta) != napi_ok) {
    napi_throw_type_error(env, NULL, "sgemm: alpha and beta must be numbers");
    return NULL;
  }
  if (!get_f32(env, a[6], &A, &lenA) || !get_f32(env, a[9], &B, &lenB) ||
      !get_f32(env, a[13], &C, &lenC)) {
    napi_throw_type_error(env, NULL, "sgemm: A, B and C must be Float32Arrays");
    return NULL;
  }
  // Stored (row-major): A is M x K, or K x M with transA; B is K x N, or N x K with transB.
  const int64_t aRows = ta == NoTrans ? M : K, aCols = ta == NoTrans ? K : M;
  const int64_t bRows = tb == NoTrans ? K : N, bCols = tb == NoTrans ? N : K;
  if (lda < (aCols > 1 ? aCols : 1) || ldb < (bCols > 1 ? bCols : 1) || ldc < (N > 1 ? N : 1)) {
    napi_throw_range_error(env, NULL, "sgemm: a leading dimension is shorter than its row");
    return NULL;
  }
  if (offA + extent(aRows, aCols, lda) > (int64_t)lenA ||
      offB + extent(bRows, bCols, ldb) > (int64_t)lenB ||
      offC + extent(M, N, ldc) > (int64_t)lenC) {
    napi_throw_range_error(env, NULL, "sgemm: a matrix runs past the end of its array");
    return NULL;
  }
  if (M == 0 || N == 0) return NULL;
  blocked_sgemm(ta, tb, (int)M, (int)N, (int)K, (float)alpha, A + offA, (int)lda, B + offB,
                (int)ldb, (float)beta, C + offC, (int)ldc, bias, relu);
  return NULL;
}

// adam(heap, p, g, m, v, n, b1, b1c, b2, b2c, step, eps, l2, shrink, tinyGrad, tinySlot) and
// sgd(heap, p, g, m, n, mu, lr, l2, tinyGrad, tinySlot): p, g, m, v are offsets (in floats) of
// n-float arrays in `heap`, updated in place as optimizer.wat does.
static napi_value update(napi_env env, napi_callback_info info, int adam) {
  const size_t want = adam ? 16 : 10, arrays = adam ? 4 : 3;
  size_t argc = 16;
  napi_value a[16];
  CHECK(napi_get_cb_info(env, info, &argc, a, NULL, NULL));
  float *heap;
  size_t len;
  int64_t off[4] = {0, 0, 0, 0}, n;
  if (argc != want || !get_f32(env, a[0], &heap, &len)) {
    napi_throw_type_error(env, NULL, adam ? "adam: expects a Float32Array and 15 numbers"
                                          : "sgd: expects a Float32Array and 9 numbers");
    return NULL;
  }
  for (size_t i = 0; i < arrays; i++) {
    if (!get_int(env, a[1 + i], &off[i])) {
      napi_throw_type_error(env, NULL, "update: offsets must be integers 0..2^31-1");
      return NULL;
    }
  }
  if (!get_int(env, a[1 + arrays], &n)) {
    napi_throw_type_error(env, NULL, "update: n must be an integer 0..2^31-1");
    return NULL;
  }
  for (size_t i = 0; i < arrays; i++) {
    if (off[i] + n > (int64_t)len) {
      napi_throw_range_error(env, NULL, "update: an array runs past the end of the heap");
      return NULL;
    }
  }
  update_t u = {heap + off[0], heap + off[2], adam ? heap + off[3] : NULL, heap + off[1], (int)n,
                {0}};
  for (size_t i = 0; i < want - 2 - arrays; i++) {
    double d;
    if (napi_get_value_double(env, a[2 + arrays + i], &d) != napi_ok) {
      napi_throw_type_error(env, NULL, "update: the scalars must be numbers");
      return NULL;
    }
    u.s[i] = (float)d;
  }
  if (n == 0) return NULL;
  job.update = u;
  job.run = adam ? adam_block : sgd_block;
  job.nblocks = (int)((n + UPDATE_CHUNK - 1) / UPDATE_CHUNK);
  run_job();
  return NULL;
}

static napi_value js_adam(napi_env env, napi_callback_info info) { return update(env, info, 1); }
static napi_value js_sgd(napi_env env, napi_callback_info info) { return update(env, info, 0); }

// setThreads(n): the threads a product runs on (this one and n - 1 of the pool), 1..64.
static napi_value js_set_threads(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value a[1];
  int64_t n;
  CHECK(napi_get_cb_info(env, info, &argc, a, NULL, NULL));
  if (argc < 1 || !get_int(env, a[0], &n) || n < 1 || n > MAX_THREADS) {
    napi_throw_range_error(env, NULL, "setThreads: expects an integer 1..64");
    return NULL;
  }
  while (pool_size < n - 1) {
    pthread_t t;
    started_at[pool_size] = generation;  // no job runs while the pool grows
    if (pthread_create(&t, NULL, helper, (void *)(long)pool_size) != 0) {
      napi_throw_error(env, NULL, "setThreads: cannot start a thread");
      return NULL;
    }
    pthread_detach(t);
    pool_size++;
  }
  threads = (int)n;
  return NULL;
}

static napi_value js_threads(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value r;
  CHECK(napi_create_int32(env, threads, &r));
  return r;
}

static napi_value str(napi_env env, const char *s) {
  napi_value r;
  if (s) napi_create_string_utf8(env, s, NAPI_AUTO_LENGTH, &r);
  else napi_get_null(env, &r);
  return r;
}

// ffx_conv.c: the conv layer's loops.
napi_status ffx_conv_define(napi_env env, napi_value exports);

static napi_value init(napi_env env, napi_value exports) {
  if (!load_blas()) {
    char msg[2200];
    snprintf(msg, sizeof msg, "no CBLAS library could be loaded (%s)", load_error);
    napi_throw_error(env, "FFX_BLAS_NO_LIBRARY", msg);
    return NULL;
  }
  napi_property_descriptor props[] = {
      {"sgemm", NULL, js_sgemm, NULL, NULL, NULL, napi_enumerable, NULL},
      {"adam", NULL, js_adam, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sgd", NULL, js_sgd, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setThreads", NULL, js_set_threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"threads", NULL, js_threads, NULL, NULL, NULL, napi_enumerable, NULL},
      {"library", NULL, NULL, NULL, NULL, str(env, lib_path), napi_enumerable, NULL},
      {"config", NULL, NULL, NULL, NULL, str(env, p_get_config ? p_get_config() : NULL),
       napi_enumerable, NULL},
      {"corename", NULL, NULL, NULL, NULL, str(env, p_get_corename ? p_get_corename() : NULL),
       napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof props / sizeof *props, props));
  CHECK(ffx_conv_define(env, exports));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
