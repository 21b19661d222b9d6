/* Peak resident memory of a program that links libsegicl and runs one engine as firmware would:
 * open it, start a session, take a task's default shots, segment FRAMES 320×256 gray frames.
 * Prints one line of key=value pairs: the peak RSS (VmHWM) before anything is opened (this
 * program and the library), after the engine opened, and after the frames; RSS now; the engine
 * file's size. Exits 1 (with the library's message) when a call fails.
 *
 *   firmware_rss ENGINE TASK THREADS FRAMES
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "segicl.h"

/* The "Vm..." field `name` of /proc/self/status, in KiB (-1 if absent). */
static long status_kib(const char *name) {
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  long kib = -1;
  size_t n = strlen(name);
  while (f && fgets(line, sizeof line, f)) {
    if (strncmp(line, name, n) == 0 && line[n] == ':') {
      kib = strtol(line + n + 1, NULL, 10);
      break;
    }
  }
  if (f) fclose(f);
  return kib;
}

static int check(SegiclStatus status, const char *what) {
  if (status != SEGICL_OK) {
    fprintf(stderr, "firmware_rss: %s: %s\n", what, segicl_last_error());
    return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: firmware_rss ENGINE TASK THREADS FRAMES\n");
    return 2;
  }
  const char *path = argv[1], *task = argv[2];
  int threads = atoi(argv[3]), frames = atoi(argv[4]);
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "firmware_rss: cannot stat %s\n", path);
    return 1;
  }
  enum { W = 320, H = 256 };
  static uint8_t pixels[W * H], mask[W * H];
  long before = status_kib("VmHWM");

  SegiclOptions opts = segicl_options_default();
  opts.backend = SEGICL_BACKEND_CPU;
  opts.threads = (uint32_t)threads;
  SegiclEngine *engine = NULL;
  SegiclSession *session = NULL;
  if (check(segicl_engine_open(path, &opts, &engine), "open")) return 1;
  long opened = status_kib("VmHWM");
  if (check(segicl_session_new(engine, &session), "session")) return 1;
  if (check(segicl_use_default_shots(session, task), "default shots")) return 1;
  for (int f = 0; f < frames; f++) {
    /* A bright disc on a gradient, moving a little from frame to frame. */
    for (int y = 0; y < H; y++) {
      for (int x = 0; x < W; x++) {
        int dx = x - 160 - f % 7, dy = y - 128;
        pixels[y * W + x] = (uint8_t)(dx * dx + dy * dy < 50 * 50 ? 220 : (x + y) / 4);
      }
    }
    SegiclImage frame = {pixels, sizeof pixels, W, H, W, SEGICL_PIXEL_GRAY8};
    SegiclMask out = {mask, sizeof mask, W, H, W};
    if (check(segicl_segment(session, &frame, &out), "segment")) return 1;
  }
  printf("engine_bytes=%lld baseline_kib=%ld opened_kib=%ld peak_kib=%ld rss_kib=%ld\n", (long long)st.st_size,
         before, opened, status_kib("VmHWM"), status_kib("VmRSS"));
  segicl_session_free(session);
  segicl_engine_free(engine);
  return 0;
}
