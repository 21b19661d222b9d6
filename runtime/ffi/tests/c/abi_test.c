/* abi_test.c: exercises the C ABI of libsegicl (segicl.h) from C, as firmware would.
 *
 * Usage: abi_test DIR ENGINE REFINER
 *   DIR holds meta.txt ("W H"), shot{0,1,2}.gray/.mask and frame{0..3}.gray (gray8, W×H), as
 *   written by runtime/ffi/tests/c_abi.rs; REFINER is its stand-in refiner file (the refined
 *   mask is the box it is prompted with). The masks of the frames are written to DIR/c_*.raw for
 *   c_abi.rs to compare with the Rust API's. Exits 0 only if every check passed.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segicl.h"

#define N_SHOTS 3
#define N_FRAMES 4
#define N_THREADS 4

static int passed, failed;
static const char *engine_path, *refiner_path;
static uint32_t W, H;
static uint8_t *shot_img[N_SHOTS], *shot_mask[N_SHOTS], *frames[N_FRAMES];
static uint8_t *ref_masks[N_FRAMES]; /* packed W×H masks of the single session */

#define CHECK(cond, ...)                         \
  do {                                           \
    if (cond) {                                  \
      passed++;                                  \
    } else {                                     \
      failed++;                                  \
      fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);              \
      fputc('\n', stderr);                       \
    }                                            \
  } while (0)

/* A call that must fail with `want` and leave a non-empty message. */
#define EXPECT_ERR(call, want, what)                                                        \
  do {                                                                                      \
    SegiclStatus st_ = (call);                                                              \
    const char *msg_ = segicl_last_error();                                                 \
    CHECK(st_ == (want) && msg_ != NULL && msg_[0] != '\0', "%s: status %d (want %d), error \"%s\"", \
          (what), (int)st_, (int)(want), msg_ ? msg_ : "(null)");                           \
  } while (0)

/* A call that must succeed and leave "" as the last error. */
#define EXPECT_OK(call, what)                                                             \
  do {                                                                                    \
    SegiclStatus st_ = (call);                                                            \
    const char *msg_ = segicl_last_error();                                               \
    CHECK(st_ == SEGICL_OK && msg_ != NULL && msg_[0] == '\0', "%s: status %d, error \"%s\"", \
          (what), (int)st_, msg_ ? msg_ : "(null)");                                      \
  } while (0)

static uint8_t *read_file(const char *dir, const char *name, size_t want) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    exit(2);
  }
  uint8_t *buf = malloc(want);
  if (!buf || fread(buf, 1, want, f) != want) {
    fprintf(stderr, "cannot read %zu bytes from %s\n", want, path);
    exit(2);
  }
  fclose(f);
  return buf;
}

static void write_file(const char *dir, const char *name, const uint8_t *data, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(2);
  }
}

static SegiclImage gray(const uint8_t *data) {
  SegiclImage img = {data, (size_t)W * H, W, H, W, SEGICL_PIXEL_GRAY8};
  return img;
}

/* Sets shots 0..n_shots-1 and segments every frame into `out[i]` (packed W×H, caller-allocated),
 * through a mask of stride W+3. Returns the number of failed calls. */
static int run_shots(const SegiclEngine *e, uint32_t n_shots, uint8_t **out) {
  int bad = 0;
  SegiclSession *s = NULL;
  if (segicl_session_new(e, &s) != SEGICL_OK) return 1;
  for (uint32_t i = 0; i < n_shots; i++) {
    SegiclImage img = gray(shot_img[i]), mask = gray(shot_mask[i]);
    if (segicl_set_shot(s, i, &img, &mask) != SEGICL_OK) bad++;
  }
  uint32_t stride = W + 3;
  uint8_t *buf = malloc((size_t)stride * H);
  for (int i = 0; i < N_FRAMES; i++) {
    SegiclImage frame = gray(frames[i]);
    SegiclMask m = {buf, (size_t)stride * H, W, H, stride};
    memset(buf, 0x5a, (size_t)stride * H);
    if (segicl_segment(s, &frame, &m) != SEGICL_OK) {
      bad++;
      continue;
    }
    for (uint32_t y = 0; y < H; y++) {
      memcpy(out[i] + (size_t)y * W, buf + (size_t)y * stride, W);
      /* the padding between rows is the caller's: it must be left alone */
      for (uint32_t x = W; x < stride; x++)
        if (buf[(size_t)y * stride + x] != 0x5a) bad++;
    }
  }
  free(buf);
  segicl_session_free(s);
  return bad;
}

/* run_shots with all N_SHOTS shots. */
static int run_session(const SegiclEngine *e, uint8_t **out) { return run_shots(e, N_SHOTS, out); }

/* Writes masks[0..N_FRAMES-1] to DIR/PREFIX{i}.raw and frees them. */
static void write_masks(const char *dir, const char *prefix, uint8_t **masks) {
  char name[64];
  for (int i = 0; i < N_FRAMES; i++) {
    snprintf(name, sizeof name, "%s%d.raw", prefix, i);
    write_file(dir, name, masks[i], (size_t)W * H);
    free(masks[i]);
  }
}

/* A box of mask pixels: first and last column and row, inclusive. */
typedef struct {
  uint32_t x0, y0, x1, y1;
} Box;

/* The box of every foreground pixel of a packed W×H mask; 0 if it has none. */
static int fg_box(const uint8_t *m, Box *b) {
  int any = 0;
  for (uint32_t y = 0; y < H; y++)
    for (uint32_t x = 0; x < W; x++) {
      if (!m[(size_t)y * W + x]) continue;
      if (!any) *b = (Box){x, y, x, y};
      any = 1;
      if (x < b->x0) b->x0 = x;
      if (x > b->x1) b->x1 = x;
      if (y < b->y0) b->y0 = y;
      if (y > b->y1) b->y1 = y;
    }
  return any;
}

/* Foreground pixels of a packed W×H mask inside box `b`. */
static size_t fg_in(const uint8_t *m, Box b) {
  size_t fg = 0;
  for (uint32_t y = b.y0; y <= b.y1; y++)
    for (uint32_t x = b.x0; x <= b.x1; x++) fg += m[(size_t)y * W + x] != 0;
  return fg;
}

static uint32_t gap(uint32_t a, uint32_t b) { return a > b ? a - b : b - a; }

struct worker {
  const SegiclEngine *engine;
  uint8_t *masks[N_FRAMES];
  int bad;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  w->bad = run_session(w->engine, w->masks);
  return NULL;
}

static int log_calls;
static void count_log(int level, const char *msg, void *user) {
  (void)level;
  (void)msg;
  int *n = user;
  (*n)++;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s DIR ENGINE REFINER\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  engine_path = argv[2];
  refiner_path = argv[3];
  {
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f || fscanf(f, "%u %u", &W, &H) != 2 || W == 0 || H == 0) {
      fprintf(stderr, "cannot read W H from %s\n", path);
      return 2;
    }
    fclose(f);
  }
  size_t n = (size_t)W * H;
  char name[64];
  for (int i = 0; i < N_SHOTS; i++) {
    snprintf(name, sizeof name, "shot%d.gray", i);
    shot_img[i] = read_file(dir, name, n);
    snprintf(name, sizeof name, "shot%d.mask", i);
    shot_mask[i] = read_file(dir, name, n);
  }
  for (int i = 0; i < N_FRAMES; i++) {
    snprintf(name, sizeof name, "frame%d.gray", i);
    frames[i] = read_file(dir, name, n);
    ref_masks[i] = calloc(n, 1);
  }

  /* --- versions --- */
  CHECK(segicl_abi_version() == SEGICL_ABI_VERSION, "abi version %u", segicl_abi_version());
  CHECK(segicl_version() != NULL && segicl_version()[0] != '\0', "empty version");

  /* --- log callback: the library logs at info when an engine opens --- */
  segicl_set_log_callback(count_log, &log_calls);
  SegiclEngine *e = NULL;
  EXPECT_OK(segicl_engine_open(engine_path, NULL, &e), "engine_open");
  CHECK(e != NULL, "engine_open wrote no engine");
  CHECK(log_calls >= 1, "log callback called %d times", log_calls);
  segicl_set_log_callback(NULL, NULL);
  if (!e) {
    printf("c abi: %d passed, %d failed\n", passed, failed);
    return 1;
  }

  /* --- happy path: one session, 3 shots, 4 frames --- */
  CHECK(run_session(e, ref_masks) == 0, "single session failed");
  for (int i = 0; i < N_FRAMES; i++) {
    size_t fg = 0, binary = 1;
    for (size_t k = 0; k < n; k++) {
      fg += ref_masks[i][k] == 255;
      if (ref_masks[i][k] != 0 && ref_masks[i][k] != 255) binary = 0;
    }
    CHECK(binary, "mask %d is not 0/255", i);
    CHECK(fg > 0 && fg < n, "mask %d has %zu foreground pixels of %zu", i, fg, n);
    snprintf(name, sizeof name, "c_mask%d.raw", i);
    write_file(dir, name, ref_masks[i], n);
  }

  /* --- ROI mode: two passes per frame; the Rust side compares the masks with its own --- */
  {
    SegiclOptions o = segicl_options_default();
    o.roi = 1;
    SegiclEngine *roi_engine = NULL;
    EXPECT_OK(segicl_engine_open(engine_path, &o, &roi_engine), "open(roi 1)");
    uint8_t *roi_masks[N_FRAMES];
    for (int i = 0; i < N_FRAMES; i++) roi_masks[i] = calloc(n, 1);
    CHECK(roi_engine && run_session(roi_engine, roi_masks) == 0, "ROI session failed");
    segicl_engine_free(roi_engine);

    /* a caller built against version 1 of the header: a 20-byte struct (on the heap, so that
     * valgrind sees any read past it) without the refinement fields, which take their defaults */
    typedef struct {
      uint32_t struct_size;
      SegiclBackend backend;
      uint32_t threads;
      float threshold;
      uint32_t roi;
    } SegiclOptionsV1;
    SegiclOptionsV1 *v1 = malloc(sizeof *v1);
    *v1 = (SegiclOptionsV1){sizeof *v1, SEGICL_BACKEND_AUTO, 1, 0.0f, 1};
    CHECK(sizeof *v1 == 20, "version 1 options are %zu bytes", sizeof *v1);
    SegiclEngine *v1_engine = NULL;
    EXPECT_OK(segicl_engine_open(engine_path, (const SegiclOptions *)v1, &v1_engine), "open(version 1 options)");
    free(v1);
    uint8_t *v1_masks[N_FRAMES];
    for (int i = 0; i < N_FRAMES; i++) v1_masks[i] = calloc(n, 1);
    CHECK(v1_engine && run_session(v1_engine, v1_masks) == 0, "version 1 session failed");
    int same = 1;
    for (int i = 0; i < N_FRAMES; i++) same &= memcmp(v1_masks[i], roi_masks[i], n) == 0;
    CHECK(same, "version 1 options (roi 1) give other masks than roi 1");
    segicl_engine_free(v1_engine);
    for (int i = 0; i < N_FRAMES; i++) free(v1_masks[i]);
    write_masks(dir, "c_roi_mask", roi_masks);
  }

  /* --- refinement: the stand-in refiner's mask is the box it is prompted with --- */
  {
    SegiclOptions o = segicl_options_default();
    CHECK(o.refiner_path == NULL && o.refine_box_rule == SEGICL_BOX_LARGEST_BLOB && o.refine_margin < 0.0f &&
              o.refine_gate == 1,
          "refinement defaults: path %p, rule %u, margin %g, gate %u", (const void *)o.refiner_path,
          o.refine_box_rule, (double)o.refine_margin, o.refine_gate);
    o.refiner_path = refiner_path;
    SegiclEngine *re = NULL;
    EXPECT_OK(segicl_engine_open(engine_path, &o, &re), "open(refiner)");
    /* no gate, every blob's box, no margin: every mask is refined into one box */
    SegiclOptions o1 = o;
    o1.refine_gate = 0;
    o1.refine_box_rule = SEGICL_BOX_ALL_BLOBS;
    o1.refine_margin = 0.0f;
    SegiclEngine *re1 = NULL;
    EXPECT_OK(segicl_engine_open(engine_path, &o1, &re1), "open(refiner, all blobs, no margin, no gate)");

    /* one shot, no gate: every mask is refined with the box of all of pass 1's foreground: a
     * filled rectangle over it (the unrefined mask) */
    uint8_t *plain[N_FRAMES], *refined[N_FRAMES];
    for (int i = 0; i < N_FRAMES; i++) {
      plain[i] = calloc(n, 1);
      refined[i] = calloc(n, 1);
    }
    CHECK(run_shots(e, 1, plain) == 0, "unrefined one-shot session failed");
    CHECK(re1 && run_shots(re1, 1, refined) == 0, "refined one-shot session failed");
    segicl_engine_free(re1);
    /* the refiner's 64×64 logits are upsampled bilinearly to the frame: its box edges land
     * within one input pixel (plus rounding) of pass 1's, and its corners may be rounded */
    uint32_t tol = (W > H ? W : H) / 64 + 1;
    int rectangles = 0;
    for (int i = 0; i < N_FRAMES; i++) {
      Box blob, r;
      int has_blob = fg_box(plain[i], &blob), has_fg = fg_box(refined[i], &r);
      CHECK(has_blob == has_fg, "frame %d: pass 1 %s, refined %s", i, has_blob ? "has a blob" : "is empty",
            has_fg ? "is not empty" : "is empty");
      if (!has_blob || !has_fg) continue;
      size_t area = (size_t)(r.x1 - r.x0 + 1) * (r.y1 - r.y0 + 1), fg = fg_in(refined[i], r);
      Box row = {r.x0, (r.y0 + r.y1) / 2, r.x1, (r.y0 + r.y1) / 2};
      Box column = {(r.x0 + r.x1) / 2, r.y0, (r.x0 + r.x1) / 2, r.y1};
      int filled = fg * 100 >= area * 98 && fg_in(refined[i], row) == r.x1 - r.x0 + 1 &&
                   fg_in(refined[i], column) == r.y1 - r.y0 + 1;
      CHECK(filled, "frame %d: refined mask fills %zu of its %zu-pixel box", i, fg, area);
      CHECK(gap(r.x0, blob.x0) <= tol && gap(r.x1, blob.x1) <= tol && gap(r.y0, blob.y0) <= tol &&
                gap(r.y1, blob.y1) <= tol,
            "frame %d: refined box %u,%u..%u,%u is not pass 1's foreground's %u,%u..%u,%u", i, r.x0, r.y0, r.x1,
            r.y1, blob.x0, blob.y0, blob.x1, blob.y1);
      CHECK(memcmp(plain[i], refined[i], n) != 0, "frame %d: refinement changed nothing", i);
      rectangles += filled;
    }
    CHECK(rectangles > 0, "no frame was refined into a rectangle");
    for (int i = 0; i < N_FRAMES; i++) free(plain[i]);
    write_masks(dir, "c_refined1_mask", refined);

    /* three shots with the gate on (the Rust side compares the masks with its own) */
    for (int i = 0; i < N_FRAMES; i++) refined[i] = calloc(n, 1);
    CHECK(re && run_session(re, refined) == 0, "refined session failed");
    write_masks(dir, "c_refined_mask", refined);
    segicl_engine_free(re);

    /* the other fields: every blob's box, a margin, no gate */
    o.refine_box_rule = SEGICL_BOX_ALL_BLOBS;
    o.refine_margin = 0.1f;
    o.refine_gate = 0;
    re = NULL;
    EXPECT_OK(segicl_engine_open(engine_path, &o, &re), "open(refiner, all blobs, margin 0.1, no gate)");
    for (int i = 0; i < N_FRAMES; i++) refined[i] = calloc(n, 1);
    CHECK(re && run_session(re, refined) == 0, "refined session (all blobs, margin 0.1, no gate) failed");
    for (int i = 0; i < N_FRAMES; i++) {
      Box whole, r;
      if (!fg_box(ref_masks[i], &whole)) continue;
      CHECK(fg_box(refined[i], &r) && r.x0 <= whole.x0 && r.y0 <= whole.y0 && r.x1 >= whole.x1 && r.y1 >= whole.y1,
            "frame %d: the all-blobs box with a margin does not cover pass 1's foreground", i);
    }
    write_masks(dir, "c_refined_opts_mask", refined);
    segicl_engine_free(re);
  }

  /* --- threads: a session each on the shared engine, same answers --- */
  {
    struct worker workers[N_THREADS];
    pthread_t tids[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
      workers[t].engine = e;
      workers[t].bad = 0;
      for (int i = 0; i < N_FRAMES; i++) workers[t].masks[i] = calloc(n, 1);
      CHECK(pthread_create(&tids[t], NULL, worker_main, &workers[t]) == 0, "pthread_create %d", t);
    }
    for (int t = 0; t < N_THREADS; t++) {
      pthread_join(tids[t], NULL);
      CHECK(workers[t].bad == 0, "thread %d: %d failed calls", t, workers[t].bad);
      int same = 1;
      for (int i = 0; i < N_FRAMES; i++) {
        if (memcmp(workers[t].masks[i], ref_masks[i], n) != 0) same = 0;
        free(workers[t].masks[i]);
      }
      CHECK(same, "thread %d: masks differ from the single session's", t);
    }
  }

  /* --- bad arguments of engine_open --- */
  {
    SegiclEngine *bad = NULL;
    char path[4096];
    EXPECT_ERR(segicl_engine_open(NULL, NULL, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(NULL path)");
    EXPECT_ERR(segicl_engine_open(engine_path, NULL, NULL), SEGICL_ERR_INVALID_ARGUMENT, "open(NULL out)");
    snprintf(path, sizeof path, "%s/does-not-exist.plan", dir);
    EXPECT_ERR(segicl_engine_open(path, NULL, &bad), SEGICL_ERR_IO, "open(missing file)");
    snprintf(path, sizeof path, "%s/junk.plan", dir);
    {
      uint8_t junk[256];
      for (int i = 0; i < 256; i++) junk[i] = (uint8_t)(i * 37 + 11);
      write_file(dir, "junk.plan", junk, sizeof junk);
    }
    EXPECT_ERR(segicl_engine_open(path, NULL, &bad), SEGICL_ERR_CORRUPT_ENGINE, "open(junk file)");

    /* refiner files that cannot be refiners: the message names the file */
    SegiclOptions r = segicl_options_default();
    snprintf(path, sizeof path, "%s/no-such-refiner.plan", dir);
    r.refiner_path = path;
    EXPECT_ERR(segicl_engine_open(engine_path, &r, &bad), SEGICL_ERR_IO, "open(missing refiner)");
    CHECK(strstr(segicl_last_error(), path) != NULL, "missing refiner: \"%s\" does not name it", segicl_last_error());
    r.refiner_path = engine_path;
    EXPECT_ERR(segicl_engine_open(engine_path, &r, &bad), SEGICL_ERR_CORRUPT_ENGINE, "open(engine as refiner)");
    /* engine_path is not UTF-8 (c_abi.rs makes it so): the message shows it with U+FFFD */
    CHECK(strstr(segicl_last_error(), "engine-") != NULL && strstr(segicl_last_error(), "not a refiner") != NULL,
          "engine as refiner: \"%s\" does not name it", segicl_last_error());
    snprintf(path, sizeof path, "%s/junk.plan", dir);
    r.refiner_path = path;
    EXPECT_ERR(segicl_engine_open(engine_path, &r, &bad), SEGICL_ERR_CORRUPT_ENGINE, "open(junk refiner)");
    CHECK(strstr(segicl_last_error(), path) != NULL, "junk refiner: \"%s\" does not name it", segicl_last_error());
    r.refiner_path = refiner_path;
    r.refine_box_rule = 7;
    EXPECT_ERR(segicl_engine_open(engine_path, &r, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(refine_box_rule 7)");
    r.refine_box_rule = SEGICL_BOX_LARGEST_BLOB;
    r.refine_margin = 1.5f;
    EXPECT_ERR(segicl_engine_open(engine_path, &r, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(refine_margin 1.5)");
    r.refine_margin = -1.0f;
    r.refine_gate = 2;
    EXPECT_ERR(segicl_engine_open(engine_path, &r, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(refine_gate 2)");
    r.refine_gate = 1;
    r.backend = SEGICL_BACKEND_CUDA;
    EXPECT_ERR(segicl_engine_open(engine_path, &r, &bad), SEGICL_ERR_BACKEND, "open(cuda, refiner)");

    SegiclOptions o = segicl_options_default();
    CHECK(o.struct_size == sizeof(SegiclOptions), "options_default struct_size %u", o.struct_size);
    o.struct_size = 4;
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(struct_size 4)");
    CHECK(strstr(segicl_last_error(), "struct_size") != NULL, "struct_size 4: \"%s\"", segicl_last_error());
    o.struct_size = 16; /* shorter than version 1 */
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(struct_size 16)");
    o.struct_size = 24; /* between version 1 and this version */
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(struct_size 24)");
    o.struct_size = sizeof(SegiclOptions) + 8; /* a newer header's */
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(struct_size + 8)");
    o = segicl_options_default();
    *(uint32_t *)&o.backend = 99; /* what a caller with a newer header might pass */
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(backend 99)");
    o = segicl_options_default();
    o.roi = 2;
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(roi 2)");
    o = segicl_options_default();
    o.backend = SEGICL_BACKEND_TENSORRT;
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_BACKEND, "open(tensorrt)");
    o = segicl_options_default();
    o.backend = SEGICL_BACKEND_CUDA;
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_BACKEND, "open(cuda)");
    o = segicl_options_default();
    o.threads = UINT32_MAX;
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(threads UINT32_MAX)");
    o.threads = 100000;
    EXPECT_ERR(segicl_engine_open(engine_path, &o, &bad), SEGICL_ERR_INVALID_ARGUMENT, "open(threads 100000)");
    EXPECT_ERR(segicl_engine_open(dir, NULL, &bad), SEGICL_ERR_IO, "open(a directory)");
    CHECK(bad == NULL, "a failed open wrote *out");
  }

  /* --- bad arguments of sessions --- */
  {
    SegiclSession *s = NULL;
    EXPECT_ERR(segicl_session_new(NULL, &s), SEGICL_ERR_INVALID_ARGUMENT, "session_new(NULL engine)");
    EXPECT_ERR(segicl_session_new(e, NULL), SEGICL_ERR_INVALID_ARGUMENT, "session_new(NULL out)");
    EXPECT_OK(segicl_session_new(e, &s), "session_new");

    uint32_t stride = W + 3;
    size_t cap = (size_t)stride * H + 64; /* canary tail past what any mask below may cover */
    uint8_t *buf = malloc(cap);
    SegiclImage frame = gray(frames[0]);
    SegiclMask m = {buf, (size_t)stride * (H - 1) + W, W, H, stride};
    EXPECT_ERR(segicl_segment(s, &frame, &m), SEGICL_ERR_NO_SHOTS, "segment before any shot");

    SegiclImage img = gray(shot_img[0]), mask = gray(shot_mask[0]);
    EXPECT_ERR(segicl_set_shot(s, 3, &img, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(slot 3)");
    EXPECT_ERR(segicl_set_shot(NULL, 0, &img, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(NULL session)");
    EXPECT_ERR(segicl_set_shot(s, 0, NULL, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(NULL image)");
    EXPECT_ERR(segicl_set_shot(s, 0, &img, NULL), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(NULL mask)");
    SegiclImage nodata = img;
    nodata.data = NULL;
    EXPECT_ERR(segicl_set_shot(s, 0, &nodata, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(NULL data)");
    SegiclImage fmt = img;
    *(uint32_t *)&fmt.format = 42;
    EXPECT_ERR(segicl_set_shot(s, 0, &fmt, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(format 42)");
    SegiclImage narrow = img;
    narrow.stride_bytes = W - 1;
    EXPECT_ERR(segicl_set_shot(s, 0, &narrow, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(stride < row)");
    uint8_t *empty = calloc(n, 1);
    SegiclImage empty_mask = gray(empty);
    EXPECT_ERR(segicl_set_shot(s, 0, &img, &empty_mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(empty mask)");
    free(empty);
    SegiclImage small_mask = mask;
    small_mask.width = W / 2;
    small_mask.height = H / 2;
    EXPECT_ERR(segicl_set_shot(s, 0, &img, &small_mask), SEGICL_ERR_INVALID_ARGUMENT,
               "set_shot(mask of another size)");
    EXPECT_ERR(segicl_use_default_shots(s, "no-such-task"), SEGICL_ERR_INVALID_ARGUMENT,
               "use_default_shots(unknown task)");
    EXPECT_ERR(segicl_use_default_shots(s, NULL), SEGICL_ERR_INVALID_ARGUMENT, "use_default_shots(NULL)");
    EXPECT_ERR(segicl_use_default_shots(NULL, "fundus-disc"), SEGICL_ERR_INVALID_ARGUMENT,
               "use_default_shots(NULL session)");
    EXPECT_OK(segicl_use_default_shots(s, "fundus-disc"), "use_default_shots(fundus-disc)");

    /* segment: bad arguments, now that the session has shots */
    EXPECT_ERR(segicl_segment(NULL, &frame, &m), SEGICL_ERR_INVALID_ARGUMENT, "segment(NULL session)");
    EXPECT_ERR(segicl_segment(s, NULL, &m), SEGICL_ERR_INVALID_ARGUMENT, "segment(NULL frame)");
    EXPECT_ERR(segicl_segment(s, &frame, NULL), SEGICL_ERR_INVALID_ARGUMENT, "segment(NULL out)");
    SegiclMask nullmask = {NULL, cap, W, H, stride};
    EXPECT_ERR(segicl_segment(s, &frame, &nullmask), SEGICL_ERR_INVALID_ARGUMENT, "segment(NULL out data)");
    SegiclImage nullframe = frame;
    nullframe.data = NULL;
    EXPECT_ERR(segicl_segment(s, &nullframe, &m), SEGICL_ERR_INVALID_ARGUMENT, "segment(NULL frame data)");
    SegiclImage badfmt = frame;
    *(uint32_t *)&badfmt.format = 42;
    EXPECT_ERR(segicl_segment(s, &badfmt, &m), SEGICL_ERR_INVALID_ARGUMENT, "segment(format 42)");
    SegiclImage badstride = frame;
    badstride.stride_bytes = W - 1;
    EXPECT_ERR(segicl_segment(s, &badstride, &m), SEGICL_ERR_INVALID_ARGUMENT, "segment(stride < row)");
    SegiclMask mstride = {buf, cap, W, H, W - 1};
    EXPECT_ERR(segicl_segment(s, &frame, &mstride), SEGICL_ERR_INVALID_ARGUMENT, "segment(out stride < width)");

    /* a mask smaller than the frame: refused, and nothing written past the caller's buffer */
    memset(buf, 0xa5, cap);
    SegiclMask narrow_out = {buf, cap, W - 1, H, W - 1};
    EXPECT_ERR(segicl_segment(s, &frame, &narrow_out), SEGICL_ERR_INVALID_ARGUMENT, "segment(out width - 1)");
    SegiclMask short_out = {buf, cap, W, H - 1, W};
    EXPECT_ERR(segicl_segment(s, &frame, &short_out), SEGICL_ERR_INVALID_ARGUMENT, "segment(out height - 1)");
    /* buffers shorter than their geometry: refused, never read or written past data_len */
    SegiclMask undersized = {buf, (size_t)stride * (H - 1) + W - 1, W, H, stride};
    EXPECT_ERR(segicl_segment(s, &frame, &undersized), SEGICL_ERR_INVALID_ARGUMENT, "segment(out data_len - 1)");
    CHECK(strstr(segicl_last_error(), "data_len") != NULL, "undersized out: \"%s\"", segicl_last_error());
    SegiclMask half = {buf, (size_t)stride * H / 2, W, H, stride};
    EXPECT_ERR(segicl_segment(s, &frame, &half), SEGICL_ERR_INVALID_ARGUMENT, "segment(out of half its size)");
    SegiclImage short_frame = frame;
    short_frame.data_len = (size_t)W * H - 1;
    EXPECT_ERR(segicl_segment(s, &short_frame, &m), SEGICL_ERR_INVALID_ARGUMENT, "segment(frame data_len - 1)");
    SegiclImage short_shot = img;
    short_shot.data_len = 0;
    EXPECT_ERR(segicl_set_shot(s, 0, &short_shot, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(data_len 0)");
    /* a geometry whose extent no buffer can have */
    SegiclImage huge = frame;
    huge.width = UINT32_MAX;
    huge.height = UINT32_MAX;
    huge.stride_bytes = UINT32_MAX;
    huge.format = SEGICL_PIXEL_RGBA8;
    huge.data_len = SIZE_MAX;
    EXPECT_ERR(segicl_set_shot(s, 0, &huge, &mask), SEGICL_ERR_INVALID_ARGUMENT, "set_shot(4G x 4G rgba)");
    SegiclMask huge_out = {buf, cap, W, H, UINT32_MAX};
    EXPECT_ERR(segicl_segment(s, &frame, &huge_out), SEGICL_ERR_INVALID_ARGUMENT, "segment(out stride 4G)");
    {
      size_t touched = 0;
      for (size_t k = 0; k < cap; k++) touched += buf[k] != 0xa5;
      CHECK(touched == 0, "a refused segment wrote %zu bytes", touched);
    }

    /* and a good call on the same session clears the last error */
    memset(buf, 0xa5, cap);
    EXPECT_OK(segicl_segment(s, &frame, &m), "segment with default shots");
    {
      size_t over = 0;
      for (size_t k = (size_t)stride * (H - 1) + W; k < cap; k++) over += buf[k] != 0xa5;
      CHECK(over == 0, "segment wrote %zu bytes past the mask", over);
    }
    EXPECT_OK(segicl_clear_shot(s, 2), "clear_shot(2)");
    EXPECT_ERR(segicl_clear_shot(s, 3), SEGICL_ERR_INVALID_ARGUMENT, "clear_shot(3)");
    free(buf);
    segicl_session_free(s);
  }

  /* --- NULL frees are no-ops --- */
  segicl_engine_free(NULL);
  segicl_session_free(NULL);
  passed++;

  segicl_engine_free(e);
  for (int i = 0; i < N_SHOTS; i++) {
    free(shot_img[i]);
    free(shot_mask[i]);
  }
  for (int i = 0; i < N_FRAMES; i++) {
    free(frames[i]);
    free(ref_masks[i]);
  }
  printf("c abi: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
