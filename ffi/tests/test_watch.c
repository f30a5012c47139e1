/* Watch and the client-side cache: an event arrives on the library's thread when the daemon
 * serves a new value, and the cached client then reads the new value.
 * Usage: test_watch SOCKET NAME OLD_VALUE NEW_VALUE
 * Prints "ready" once subscribed, waits for a line on stdin (the test changes the secret),
 * then prints "changed VERSION". */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "secretd.h"
#include "check.h"

struct state {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int changes;
  int others;
  char version[64];
  char name[160];
};

static void on_event(const secretd_change_event *ev, void *user_data) {
  struct state *st = user_data;
  pthread_mutex_lock(&st->lock);
  if (ev->kind == SECRETD_EVENT_KIND_CHANGED) {
    st->changes++;
    snprintf(st->version, sizeof st->version, "%s", ev->version);
    snprintf(st->name, sizeof st->name, "%s", ev->name);
  } else {
    st->others++;
  }
  pthread_cond_broadcast(&st->cond);
  pthread_mutex_unlock(&st->lock);
}

static int value_is(const secretd_client *client, const char *name, const char *want) {
  secretd_secret *s = NULL;
  CHECK_RESULT(secretd_get(client, name, &s), SECRETD_RESULT_OK);
  int same = secretd_secret_len(s) == strlen(want) &&
             memcmp(secretd_secret_data(s), want, strlen(want)) == 0;
  secretd_secret_free(s);
  return same;
}

int main(int argc, char **argv) {
  if (argc != 5) return 2;
  const char *socket = argv[1], *name = argv[2], *old_value = argv[3], *new_value = argv[4];
  secretd_client *client = NULL;
  CHECK_RESULT(secretd_client_connect_cached(socket, &client), SECRETD_RESULT_OK);
  CHECK(value_is(client, name, old_value));
  CHECK(value_is(client, name, old_value)); /* from the cache */

  struct state st = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
  secretd_watch_handle *watch = NULL;

  /* Refusals come back from secretd_watch itself; out stays untouched. */
  const char *unknown[] = {"no_such_secret"};
  CHECK_RESULT(secretd_watch(client, unknown, 1, on_event, &st, &watch),
               SECRETD_RESULT_NOT_FOUND);
  CHECK(watch == NULL);
  const char *bad[] = {"bad name"};
  CHECK_RESULT(secretd_watch(client, bad, 1, on_event, &st, &watch),
               SECRETD_RESULT_INVALID_ARGUMENT);
  CHECK_RESULT(secretd_watch(client, NULL, 1, on_event, &st, &watch),
               SECRETD_RESULT_NULL_PARAMETER);
  CHECK_RESULT(secretd_watch(client, unknown, 1, NULL, &st, &watch),
               SECRETD_RESULT_NULL_PARAMETER);
  CHECK(watch == NULL);

  const char *names[] = {name};
  CHECK_RESULT(secretd_watch(client, names, 1, on_event, &st, &watch), SECRETD_RESULT_OK);
  CHECK(watch != NULL);
  printf("ready\n");
  fflush(stdout);
  char line[16];
  CHECK(fgets(line, sizeof line, stdin) != NULL);

  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 10;
  pthread_mutex_lock(&st.lock);
  while (st.changes == 0) {
    if (pthread_cond_timedwait(&st.cond, &st.lock, &deadline) != 0) break;
  }
  int changes = st.changes;
  pthread_mutex_unlock(&st.lock);
  CHECK(changes >= 1);
  CHECK(strcmp(st.name, name) == 0);

  /* The cache dropped the old value (possibly a moment after the event reached us). */
  int fresh = 0;
  for (int i = 0; i < 1000 && !fresh; i++) {
    fresh = value_is(client, name, new_value);
    if (!fresh) nanosleep(&(struct timespec){0, 1000000}, NULL);
  }
  CHECK(fresh);

  secretd_watch_stop(watch);
  secretd_watch_stop(NULL);
  secretd_client_free(client);
  printf("changed %s\n", st.version);
  printf("test_watch: %d checks passed\n", checks_run);
  return 0;
}
