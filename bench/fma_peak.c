/* Measures this core's f32 multiply-add peak: 16 independent chains of vector FMAs (512-bit with
 * AVX-512, else 256-bit with AVX2+FMA) on one thread, best of 7 runs of 0.1 s. Prints GFLOP/s.
 * Built by bench/compare-onnxruntime.sh with `cc -O2 -march=native`; the figure is the
 * denominator of its "% of peak" column.
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define ADD _mm512_add_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define ADD _mm256_add_ps
static float SUM(__m256 v) {
  float f[8];
  _mm256_storeu_ps(f, v);
  return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
#else
#error "needs AVX-512F or AVX2 with FMA"
#endif

enum { CHAINS = 16 };

/* Sixteen named accumulators, so that the compiler keeps every chain in a register. */
#define EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define DECLARE(i) vec c##i = SET1((float)i);
#define STEP(i) c##i = FMA(c##i, a, b);
#define FOLD(i) total = ADD(total, c##i);

int main(void) {
  const vec a = SET1(0.999999f), b = SET1(1e-7f);
  double best = 0.0;
  float sink = 0.0f;
  for (int run = 0; run < 7; run++) {
    EACH(DECLARE)
    long iters = 0;
    double start = now(), elapsed;
    do {
      for (int i = 0; i < 1000; i++) {
        EACH(STEP)
      }
      iters += 1000;
      elapsed = now() - start;
    } while (elapsed < 0.1);
    double gflops = 2.0 * LANES * CHAINS * (double)iters / elapsed / 1e9;
    if (gflops > best) best = gflops;
    vec total = SET1(0.0f);
    EACH(FOLD)
    sink += SUM(total);
  }
  printf("%.1f\n", best);
  return sink == 12345.0f; /* keeps the chains live */
}
