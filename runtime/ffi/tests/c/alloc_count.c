/* Counts the heap allocations libsegicl makes per frame, as firmware linking it sees them: this
 * program defines malloc and its relatives (forwarding to glibc's __libc_* entry points), so the
 * library's allocations resolve to them. Opens ENGINE (once without and once with the ROI pass),
 * sets three shots from DIR (written by tests/c_abi.rs), segments two frames to warm up, then
 * counts the allocations of FRAMES more frames. Prints "allocations per frame: N ..." and exits 0
 * when every counted frame made none.
 *
 *   alloc_count DIR ENGINE
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "segicl.h"

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static int armed = 0;
static size_t counted = 0;

void *malloc(size_t n) {
  counted += armed;
  return __libc_malloc(n);
}
void *calloc(size_t k, size_t n) {
  counted += armed;
  return __libc_calloc(k, n);
}
void *realloc(void *p, size_t n) {
  counted += armed;
  return __libc_realloc(p, n);
}
void *memalign(size_t align, size_t n) {
  counted += armed;
  return __libc_memalign(align, n);
}
void *aligned_alloc(size_t align, size_t n) { return memalign(align, n); }
int posix_memalign(void **out, size_t align, size_t n) {
  void *p = memalign(align, n);
  if (!p) return 12; /* ENOMEM */
  *out = p;
  return 0;
}
void free(void *p) { __libc_free(p); }

enum { FRAMES = 6 };

static uint8_t *read_file(const char *dir, const char *name, size_t len) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "rb");
  uint8_t *buf = malloc(len);
  if (!f || !buf || fread(buf, 1, len, f) != len) {
    fprintf(stderr, "cannot read %zu bytes from %s\n", len, path);
    exit(2);
  }
  fclose(f);
  return buf;
}

/* Counts the allocations of FRAMES frames (after two to warm up) of an engine opened with `roi`
 * on; prints them and returns how many frames allocated (or failed). */
static int count_frames(const char *dir, const char *engine, uint32_t roi, uint32_t w, uint32_t h) {
  size_t n = (size_t)w * h;
  SegiclOptions opts = segicl_options_default();
  opts.roi = roi;
  SegiclEngine *e = NULL;
  SegiclSession *s = NULL;
  if (segicl_engine_open(engine, &opts, &e) != SEGICL_OK || segicl_session_new(e, &s) != SEGICL_OK) {
    fprintf(stderr, "cannot open %s: %s\n", engine, segicl_last_error());
    return 1;
  }
  char name[64];
  for (uint32_t i = 0; i < 3; i++) {
    snprintf(name, sizeof name, "shot%u.gray", i);
    uint8_t *img = read_file(dir, name, n);
    snprintf(name, sizeof name, "shot%u.mask", i);
    uint8_t *mask = read_file(dir, name, n);
    SegiclImage image = {img, n, w, h, w, SEGICL_PIXEL_GRAY8}, shot_mask = {mask, n, w, h, w, SEGICL_PIXEL_GRAY8};
    if (segicl_set_shot(s, i, &image, &shot_mask) != SEGICL_OK) {
      fprintf(stderr, "set_shot %u: %s\n", i, segicl_last_error());
      return 1;
    }
    free(img);
    free(mask);
  }
  uint8_t *frames[2] = {read_file(dir, "frame0.gray", n), read_file(dir, "frame1.gray", n)};
  uint8_t *out = malloc(n);
  SegiclMask m = {out, n, w, h, w};
  int bad = 0;
  printf("allocations per frame%s:", roi ? " with the ROI pass" : "");
  for (int i = 0; i < 2 + FRAMES; i++) {
    SegiclImage frame = {frames[i % 2], n, w, h, w, SEGICL_PIXEL_GRAY8};
    size_t before = counted;
    armed = i >= 2;
    SegiclStatus status = segicl_segment(s, &frame, &m);
    armed = 0;
    bad += status != SEGICL_OK;
    if (i >= 2) {
      printf(" %zu", counted - before);
      bad += counted != before;
    }
  }
  printf("\n");
  free(out);
  free(frames[0]);
  free(frames[1]);
  segicl_session_free(s);
  segicl_engine_free(e);
  return bad;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s DIR ENGINE\n", argv[0]);
    return 2;
  }
  const char *dir = argv[1];
  uint32_t w, h;
  {
    char path[4096];
    snprintf(path, sizeof path, "%s/meta.txt", dir);
    FILE *f = fopen(path, "r");
    if (!f || fscanf(f, "%u %u", &w, &h) != 2) {
      fprintf(stderr, "cannot read W H from %s\n", path);
      return 2;
    }
    fclose(f);
  }
  int bad = count_frames(dir, argv[2], 0, w, h) + count_frames(dir, argv[2], 1, w, h);
  return bad != 0;
}
