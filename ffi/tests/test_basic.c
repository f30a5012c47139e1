/* Every function of the C API against a real daemon, including its error and NULL paths.
 * Usage: test_basic SOCKET NAME EXPECTED_VALUE STUCK_SOCKET IMPOSTOR_SOCKET
 * STUCK_SOCKET accepts connections and never answers (the timeout path); IMPOSTOR_SOCKET sits
 * in a directory every user can write (the untrusted-server path). */
#include <string.h>

#include "secretd.h"
#include "check.h"

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: test_basic SOCKET NAME EXPECTED_VALUE STUCK_SOCKET IMPOSTOR_SOCKET\n");
    return 2;
  }
  const char *socket = argv[1], *name = argv[2], *expected = argv[3], *stuck = argv[4],
             *impostor = argv[5];

  CHECK(secretd_version() != NULL && strlen(secretd_version()) > 0);

  /* Connect: NULL out, unreachable socket (out untouched, detail names the path). */
  secretd_client *client = (secretd_client *)0x1;
  CHECK_RESULT(secretd_client_connect(socket, NULL), SECRETD_RESULT_NULL_PARAMETER);
  CHECK_RESULT(secretd_client_connect("/nonexistent/secretd.sock", &client),
               SECRETD_RESULT_CONNECT_FAILED);
  CHECK(client == (secretd_client *)0x1);
  char detail[256];
  size_t detail_len = secretd_last_error_message(detail, sizeof detail);
  CHECK(detail_len > 0 && strstr(detail, "/nonexistent/secretd.sock") != NULL);
  CHECK(strstr(detail, "secretd is not running at /nonexistent/secretd.sock (no socket)") != NULL);

  /* A daemon that never answers: a timeout, told as one, out untouched. */
  CHECK_RESULT(secretd_client_connect(stuck, &client), SECRETD_RESULT_TIMEOUT);
  CHECK(client == (secretd_client *)0x1);
  secretd_last_error_message(detail, sizeof detail);
  CHECK(strstr(detail, "timed out after 5s waiting for secretd at ") != NULL);
  /* A socket anyone could have planted: refused before a byte is sent, out untouched. */
  CHECK_RESULT(secretd_client_connect(impostor, &client), SECRETD_RESULT_UNTRUSTED_SERVER);
  CHECK(client == (secretd_client *)0x1);
  secretd_last_error_message(detail, sizeof detail);
  CHECK(strstr(detail, "writable by others") != NULL);
  CHECK(secretd_error_message(SECRETD_RESULT_TIMEOUT, detail, sizeof detail) > 0);
  CHECK(strstr(detail, "timed out") != NULL);
  CHECK(secretd_error_message(SECRETD_RESULT_UNTRUSTED_SERVER, detail, sizeof detail) > 0);
  CHECK(strstr(detail, "cannot be secretd") != NULL);

  client = NULL;
  CHECK_RESULT(secretd_client_connect(socket, &client), SECRETD_RESULT_OK);
  CHECK(client != NULL);

  /* Get. */
  secretd_secret *secret = NULL;
  CHECK_RESULT(secretd_get(client, name, &secret), SECRETD_RESULT_OK);
  CHECK(secret != NULL);
  CHECK(secretd_secret_len(secret) == strlen(expected));
  CHECK(memcmp(secretd_secret_data(secret), expected, strlen(expected)) == 0);
  CHECK(strcmp(secretd_secret_version(secret), "1") == 0);
  CHECK(strcmp(secretd_secret_source(secret), "file") == 0);
  secretd_secret_free(secret);

  /* Errors leave out untouched and the connection usable. */
  secretd_secret *untouched = (secretd_secret *)0x1;
  CHECK_RESULT(secretd_get(client, "trading_not_there", &untouched), SECRETD_RESULT_NOT_FOUND);
  CHECK(untouched == (secretd_secret *)0x1);
  CHECK_RESULT(secretd_get(client, "bad name", &untouched), SECRETD_RESULT_INVALID_ARGUMENT);
  CHECK_RESULT(secretd_get(client, "\xff\xfe", &untouched), SECRETD_RESULT_INVALID_ARGUMENT);
  CHECK_RESULT(secretd_get(client, NULL, &untouched), SECRETD_RESULT_NULL_PARAMETER);
  CHECK_RESULT(secretd_get(NULL, name, &untouched), SECRETD_RESULT_NULL_PARAMETER);
  CHECK_RESULT(secretd_get(client, name, NULL), SECRETD_RESULT_NULL_PARAMETER);
  CHECK(untouched == (secretd_secret *)0x1);
  CHECK_RESULT(secretd_get(client, name, &secret), SECRETD_RESULT_OK);
  secretd_secret_free(secret);

  /* Accessors and frees on NULL. */
  CHECK(secretd_secret_data(NULL) == NULL);
  CHECK(secretd_secret_len(NULL) == 0);
  CHECK(secretd_secret_version(NULL) == NULL);
  CHECK(secretd_secret_source(NULL) == NULL);
  secretd_secret_free(NULL);
  secretd_client_free(NULL);

  /* Messages: full length returned, truncation NUL-terminated, NULL buffer with len 0. */
  char buf[8];
  size_t full = secretd_error_message(SECRETD_RESULT_NOT_FOUND, NULL, 0);
  CHECK(full > sizeof buf);
  CHECK(secretd_error_message(SECRETD_RESULT_NOT_FOUND, buf, sizeof buf) == full);
  CHECK(strlen(buf) == sizeof buf - 1);
  char big[256];
  CHECK(secretd_error_message(SECRETD_RESULT_OK, big, sizeof big) == strlen("success"));
  CHECK(strcmp(big, "success") == 0);
  CHECK(secretd_error_message(SECRETD_RESULT_PANIC, big, sizeof big) > 0);
  /* Any integer is a valid argument: a code this header does not name is described as such. */
  CHECK(secretd_error_message((secretd_result)999, big, sizeof big) > 0);
  CHECK(strstr(big, "unknown") != NULL);

  secretd_client_free(client);
  printf("test_basic: %d checks passed\n", checks_run);
  return 0;
}
