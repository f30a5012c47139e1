/* One client survives a daemon restart: read, wait for the harness to restart the daemon
 * (it writes a line to stdin), read again.
 * Usage: test_restart SOCKET NAME VALUE_BEFORE VALUE_AFTER */
#include <string.h>

#include "secretd.h"
#include "check.h"

static void expect_value(const secretd_client *client, const char *name, const char *value) {
  secretd_secret *s = NULL;
  CHECK_RESULT(secretd_get(client, name, &s), SECRETD_RESULT_OK);
  CHECK(secretd_secret_len(s) == strlen(value));
  CHECK(memcmp(secretd_secret_data(s), value, strlen(value)) == 0);
  secretd_secret_free(s);
}

int main(int argc, char **argv) {
  if (argc != 5) return 2;
  secretd_client *client = NULL;
  CHECK_RESULT(secretd_client_connect(argv[1], &client), SECRETD_RESULT_OK);
  expect_value(client, argv[2], argv[3]);
  printf("READY\n");
  fflush(stdout);
  char line[16];
  CHECK(fgets(line, sizeof line, stdin) != NULL);
  expect_value(client, argv[2], argv[4]);
  secretd_client_free(client);
  printf("test_restart: %d checks passed\n", checks_run);
  return 0;
}
