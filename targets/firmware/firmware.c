/* firmware.c: the smallest complete use of libsegicl from C, the example to copy.
 *
 *   firmware ENGINE TASK [N]                     shots: the engine's default shots for TASK
 *   firmware ENGINE --shots W H IMG MASK... [N]  shots: raw gray8 files (1 to 3 IMG MASK pairs)
 *
 * Segments a stream of N (default 30) synthetic 320×256 gray8 frames (a dark disc drifting over
 * speckle-like noise) and prints each frame's latency and the p50 at the end.
 * SEGICL_REFINER=FILE in the environment sets a refiner file: each mask is then refined from a
 * box around it (options.refiner_path; the box rule, margin and gate keep their defaults).
 * Build: cc firmware.c $(pkg-config --cflags --libs segicl) -o firmware
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <segicl.h>

#define FW 320
#define FH 256

/* Reports a failed call with the library's message and exits. */
static void check(SegiclStatus st, const char *what) {
  if (st != SEGICL_OK) {
    fprintf(stderr, "%s failed (status %d): %s\n", what, (int)st, segicl_last_error());
    exit(1);
  }
}

static uint8_t *read_raw(const char *path, size_t len) {
  FILE *f = fopen(path, "rb");
  uint8_t *buf = malloc(len);
  if (!f || !buf || fread(buf, 1, len, f) != len) {
    fprintf(stderr, "cannot read %zu bytes from %s\n", len, path);
    exit(1);
  }
  fclose(f);
  return buf;
}

/* Frame i of the stream, B-mode-like: tissue (~65) with multiplicative speckle from a tiny LCG,
 * and a dark lesion (~13, fainter speckle) drifting left to right. */
static void synth_frame(uint8_t *px, int i) {
  uint32_t lcg = 12345u + 7919u * (uint32_t)i;
  int cx = 100 + (i * 4) % 120, cy = 110 + (i * 3) % 30, r = 32;
  for (int y = 0; y < FH; y++) {
    for (int x = 0; x < FW; x++) {
      lcg = lcg * 1664525u + 1013904223u;
      float speckle = ((float)(lcg >> 24) - 127.5f) / 400.0f; /* about -0.32..0.32 */
      int dx = x - cx, dy = y - cy;
      int inside = dx * dx + dy * dy <= r * r;
      float depth = 1.0f - 0.2f * (float)y / FH;
      float v = (inside ? 13.0f * (1.0f + 0.4f * speckle) : 65.0f * (1.0f + speckle)) * depth;
      px[y * FW + x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v + 0.5f);
    }
  }
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr,
            "usage: %s ENGINE TASK [N]\n       %s ENGINE --shots W H IMG MASK [IMG MASK]... [N]\n"
            "environment: SEGICL_REFINER=FILE refines each mask with that refiner\n",
            argv[0], argv[0]);
    return 2;
  }
  if (segicl_abi_version() != SEGICL_ABI_VERSION) {
    fprintf(stderr, "libsegicl ABI %u, built against %d\n", segicl_abi_version(), SEGICL_ABI_VERSION);
    return 1;
  }

  SegiclOptions opts = segicl_options_default();
  opts.backend = SEGICL_BACKEND_CPU;
  /* Optional refinement: the library opens the refiner with the engine and reads the path only
   * during segicl_engine_open. */
  const char *refiner = getenv("SEGICL_REFINER");
  if (refiner && refiner[0] != '\0') opts.refiner_path = refiner;
  SegiclEngine *engine = NULL;
  check(segicl_engine_open(argv[1], &opts, &engine), "segicl_engine_open");
  SegiclSession *session = NULL;
  check(segicl_session_new(engine, &session), "segicl_session_new");

  int n = 30;
  if (strcmp(argv[2], "--shots") == 0) {
    if (argc < 7) {
      fprintf(stderr, "--shots needs W H and at least one IMG MASK pair\n");
      return 2;
    }
    uint32_t w = (uint32_t)atoi(argv[3]), h = (uint32_t)atoi(argv[4]);
    int pairs = (argc - 5) / 2;
    if (pairs > 3) pairs = 3;
    for (int k = 0; k < pairs; k++) {
      uint8_t *img = read_raw(argv[5 + 2 * k], (size_t)w * h);
      uint8_t *msk = read_raw(argv[6 + 2 * k], (size_t)w * h);
      SegiclImage image = {img, (size_t)w * h, w, h, w, SEGICL_PIXEL_GRAY8};
      SegiclImage mask = {msk, (size_t)w * h, w, h, w, SEGICL_PIXEL_GRAY8};
      check(segicl_set_shot(session, (uint32_t)k, &image, &mask), "segicl_set_shot");
      free(img); /* the session keeps what it needs */
      free(msk);
    }
    if (5 + 2 * pairs < argc) n = atoi(argv[5 + 2 * pairs]);
  } else {
    check(segicl_use_default_shots(session, argv[2]), "segicl_use_default_shots");
    if (argc > 3) n = atoi(argv[3]);
  }
  if (n < 1) n = 1;

  uint8_t *frame = malloc(FW * FH), *mask = malloc(FW * FH);
  double *ms = malloc(sizeof(double) * (size_t)n);
  for (int i = 0; i < n; i++) {
    synth_frame(frame, i);
    SegiclImage img = {frame, (size_t)FW * FH, FW, FH, FW, SEGICL_PIXEL_GRAY8};
    SegiclMask out = {mask, (size_t)FW * FH, FW, FH, FW};
    double t0 = now_ms();
    check(segicl_segment(session, &img, &out), "segicl_segment");
    ms[i] = now_ms() - t0;
    long fg = 0;
    for (int k = 0; k < FW * FH; k++) fg += mask[k] != 0;
    printf("frame %3d: %7.2f ms, %5.1f%% foreground\n", i, ms[i], 100.0 * fg / (FW * FH));
  }
  qsort(ms, (size_t)n, sizeof(double), cmp_double);
  printf("segicl %s: %d frames of %dx%d, p50 %.2f ms%s\n", segicl_version(), n, FW, FH, ms[n / 2],
         opts.refiner_path ? " (refined)" : "");

  free(ms);
  free(mask);
  free(frame);
  segicl_session_free(session);
  segicl_engine_free(engine);
  return 0;
}
