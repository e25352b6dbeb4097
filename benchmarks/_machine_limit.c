/* The machine's limit for the table part of one sparse step: what each optimizer must read and
 * write, moved by plain C on one thread. Compiled and run by embedding_step.py.
 *
 * Usage: _machine_limit {sgd,rowwise_adagrad,lazy_adam} V STEPS; prints one JSON line.
 *
 * A V x 64 float32 table (and the optimizer's per-row state) is allocated and touched; each step
 * draws 4096 uniform ids and
 *   sgd:             copies the 4096 rows out, then adds an update into each row;
 *   rowwise_adagrad: the same, and reads and writes one accumulator float per row;
 *   lazy_adam:       the same, and reads and writes both moments (2 x 64 floats) per row.
 * The arithmetic is the optimizer's, so the loops are as vectorisable as the kernels'. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define DIM 64
#define BATCH 4096

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int compare(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static uint64_t state = 88172645463325252ull;
static uint64_t next(void) {
  state ^= state << 13, state ^= state >> 7, state ^= state << 17;
  return state;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  const char *opt = argv[1];
  const int64_t rows = atoll(argv[2]);
  const int steps = atoi(argv[3]);
  const int adagrad = !strcmp(opt, "rowwise_adagrad"), adam = !strcmp(opt, "lazy_adam");
  float *table = malloc(sizeof(float) * rows * DIM);
  float *acc = adagrad ? malloc(sizeof(float) * rows) : NULL;
  float *moments = adam ? malloc(sizeof(float) * rows * DIM * 2) : NULL;
  /* Written, not memset to zero: a compiler may turn malloc + memset(0) into calloc, whose
   * pages are mapped only on first write, inside the timed steps. */
  /* Distinct values, so that no page equals another (a host may merge equal pages). */
  for (int64_t i = 0; i < rows * DIM; i++) table[i] = 1e-2f + 1e-9f * (float)(i % 1000003);
  for (int64_t i = 0; acc && i < rows; i++) acc[i] = 1e-2f + 1e-9f * (float)(i % 1000003);
  for (int64_t i = 0; moments && i < rows * DIM * 2; i++) {
    moments[i] = 1e-2f + 1e-9f * (float)(i % 1000003);
  }
  static float out[BATCH][DIM], grad[BATCH][DIM];
  static int32_t ids[BATCH];
  for (int i = 0; i < BATCH; i++)
    for (int d = 0; d < DIM; d++) grad[i][d] = 1e-3f * (float)((i + d) % 7);
  double *times = malloc(sizeof(double) * (steps + 3));
  for (int s = 0; s < steps + 3; s++) {
    for (int i = 0; i < BATCH; i++) ids[i] = (int32_t)(next() % (uint64_t)rows);
    double start = now();
    for (int i = 0; i < BATCH; i++) memcpy(out[i], table + (int64_t)ids[i] * DIM, sizeof(out[i]));
    for (int i = 0; i < BATCH; i++) {
      float *restrict w = table + (int64_t)ids[i] * DIM;
      const float *restrict g = grad[i];
      if (adagrad) {
        float sum = 0;
        for (int d = 0; d < DIM; d++) sum += g[d] * g[d];
        float a = acc[ids[i]] += sum / DIM;
        float scale = -0.05f / (sqrtf(a) + 1e-8f);
        for (int d = 0; d < DIM; d++) w[d] += scale * g[d];
      } else if (adam) {
        float *restrict mv = moments + (int64_t)ids[i] * DIM * 2;
        for (int d = 0; d < DIM; d++) {
          float m = 0.9f * mv[2 * d] + 0.1f * g[d];
          float v = 0.999f * mv[2 * d + 1] + 0.001f * g[d] * g[d];
          mv[2 * d] = m, mv[2 * d + 1] = v;
          w[d] += -1e-3f * (m / (sqrtf(v) + 1e-8f));
        }
      } else {
        for (int d = 0; d < DIM; d++) w[d] -= 0.1f * g[d];
      }
    }
    times[s] = now() - start;
  }
  qsort(times + 3, steps, sizeof(double), compare);
  double checksum = out[0][0] + table[0] + (acc ? acc[0] : 0) + (moments ? moments[0] : 0);
  int64_t state_bytes = (acc ? rows * 4 : 0) + (moments ? rows * DIM * 8 : 0);
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  printf("{\"ms\": %.5f, \"table_and_state\": %lld, \"peak_rss\": %lld, \"baseline_rss\": 0, "
         "\"checksum\": %g}\n",
         1e3 * times[3 + steps / 2], (long long)(rows * DIM * 4 + state_bytes),
         (long long)usage.ru_maxrss * 1024, checksum);
  return 0;
}
