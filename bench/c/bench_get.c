/* c-ffi-get: times secretd_get + secretd_secret_free through libsecretd.so.
 * Usage: bench_get SOCKET NAME N WARMUP; prints one latency in nanoseconds per line. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "secretd.h"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int get_once(const secretd_client *client, const char *name) {
  secretd_secret *s = NULL;
  secretd_result r = secretd_get(client, name, &s);
  secretd_secret_free(s);
  return r == SECRETD_RESULT_OK;
}

int main(int argc, char **argv) {
  if (argc != 5) return 2;
  long n = strtol(argv[3], NULL, 10), warmup = strtol(argv[4], NULL, 10);
  secretd_client *client = NULL;
  if (secretd_client_connect(argv[1], &client) != SECRETD_RESULT_OK) return 1;
  for (long i = 0; i < warmup; i++) {
    if (!get_once(client, argv[2])) return 1;
  }
  uint64_t *samples = malloc(sizeof *samples * (size_t)n);
  if (samples == NULL) return 1;
  for (long i = 0; i < n; i++) {
    uint64_t t = now_ns();
    if (!get_once(client, argv[2])) return 1;
    samples[i] = now_ns() - t;
  }
  for (long i = 0; i < n; i++) printf("%llu\n", (unsigned long long)samples[i]);
  free(samples);
  secretd_client_free(client);
  return 0;
}
