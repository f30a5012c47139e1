/* A secret GSM withdrew answers SECRETD_RESULT_REVOKED, not UNAVAILABLE: an operator's act,
 * not an outage. Out-parameters stay untouched; the detail names the secret.
 * Usage: test_revoked SOCKET NAME  (NAME revoked in the daemon already) */
#include <string.h>

#include "secretd.h"
#include "check.h"

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: test_revoked SOCKET NAME\n");
    return 2;
  }
  secretd_client *client = NULL;
  CHECK_RESULT(secretd_client_connect(argv[1], &client), SECRETD_RESULT_OK);
  secretd_secret *secret = (secretd_secret *)0x1;
  CHECK_RESULT(secretd_get(client, argv[2], &secret), SECRETD_RESULT_REVOKED);
  CHECK(secret == (secretd_secret *)0x1);
  char detail[512];
  CHECK(secretd_last_error_message(detail, sizeof detail) > 0);
  CHECK(strstr(detail, argv[2]) != NULL);
  CHECK(strstr(detail, "revoked") != NULL);
  char words[256];
  CHECK(secretd_error_message(SECRETD_RESULT_REVOKED, words, sizeof words) > 0);
  CHECK(strstr(words, "revoked") != NULL);
  secretd_client_free(client);
  printf("ok %d checks\n", checks_run);
  return 0;
}
