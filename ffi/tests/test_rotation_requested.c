/* A rotation GSM's schedule asks for reaches a C watcher as SECRETD_EVENT_KIND_ROTATION_REQUESTED,
 * with the secret's name and a time; nothing served changes.
 * Usage: test_rotation_requested SOCKET NAME
 * Prints "ready" once subscribed, then waits up to 60 s for the event (the test fires GSM's
 * schedule and publishes SECRET_ROTATE) and prints "rotation_requested NAME". */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "secretd.h"
#include "check.h"

struct state {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int requested;
  int changed;
  long long at_ms;
  char name[160];
};

static void on_event(const secretd_change_event *ev, void *user_data) {
  struct state *st = user_data;
  pthread_mutex_lock(&st->lock);
  if (ev->kind == SECRETD_EVENT_KIND_ROTATION_REQUESTED) {
    st->requested++;
    st->at_ms = (long long)ev->at_ms;
    snprintf(st->name, sizeof st->name, "%s", ev->name);
  } else if (ev->kind == SECRETD_EVENT_KIND_CHANGED) {
    st->changed++;
  }
  pthread_cond_broadcast(&st->cond);
  pthread_mutex_unlock(&st->lock);
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: test_rotation_requested SOCKET NAME\n");
    return 2;
  }
  const char *name = argv[2];
  secretd_client *client = NULL;
  CHECK_RESULT(secretd_client_connect(argv[1], &client), SECRETD_RESULT_OK);
  struct state st = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
  secretd_watch_handle *watch = NULL;
  const char *names[] = {name};
  CHECK_RESULT(secretd_watch(client, names, 1, on_event, &st, &watch), SECRETD_RESULT_OK);
  printf("ready\n");
  fflush(stdout);

  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += 60;
  pthread_mutex_lock(&st.lock);
  while (st.requested == 0) {
    if (pthread_cond_timedwait(&st.cond, &st.lock, &deadline) != 0) break;
  }
  int requested = st.requested, changed = st.changed;
  pthread_mutex_unlock(&st.lock);
  CHECK(requested == 1);
  CHECK(changed == 0);
  CHECK(strcmp(st.name, name) == 0);
  CHECK(st.at_ms > 0);

  secretd_watch_stop(watch);
  secretd_client_free(client);
  printf("rotation_requested %s\n", st.name);
  printf("test_rotation_requested: %d checks passed\n", checks_run);
  return 0;
}
