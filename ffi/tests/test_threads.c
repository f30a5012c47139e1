/* Many threads sharing one client read at once.
 * Usage: test_threads SOCKET NAME EXPECTED_VALUE */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <string.h>

#include "secretd.h"
#include "check.h"

enum { THREADS = 8, READS = 500 };

struct job {
  const secretd_client *client;
  const char *name;
  const char *expected;
  int failures;
};

static void *reader(void *arg) {
  struct job *job = arg;
  for (int i = 0; i < READS; i++) {
    secretd_secret *s = NULL;
    if (secretd_get(job->client, job->name, &s) != SECRETD_RESULT_OK ||
        secretd_secret_len(s) != strlen(job->expected) ||
        memcmp(secretd_secret_data(s), job->expected, strlen(job->expected)) != 0) {
      job->failures++;
    }
    secretd_secret_free(s);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  secretd_client *client = NULL;
  CHECK_RESULT(secretd_client_connect(argv[1], &client), SECRETD_RESULT_OK);
  pthread_t threads[THREADS];
  struct job jobs[THREADS];
  for (int t = 0; t < THREADS; t++) {
    jobs[t] = (struct job){client, argv[2], argv[3], 0};
    CHECK(pthread_create(&threads[t], NULL, reader, &jobs[t]) == 0);
  }
  int failures = 0;
  for (int t = 0; t < THREADS; t++) {
    CHECK(pthread_join(threads[t], NULL) == 0);
    failures += jobs[t].failures;
  }
  CHECK(failures == 0);
  secretd_client_free(client);
  printf("test_threads: %d threads x %d reads, %d checks passed\n", THREADS, READS, checks_run);
  return 0;
}
