/* A socket any local user can serve from their own directory is refused: the C API trusts
 * root, the caller or the daemon's uid, never the socket file's owner.
 * Usage: test_impostor SOCKET  (served by uid 65534, run as root) */
#include <string.h>

#include "secretd.h"
#include "check.h"

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_impostor SOCKET\n");
    return 2;
  }
  secretd_client *client = (secretd_client *)0x1;
  CHECK_RESULT(secretd_client_connect(argv[1], &client), SECRETD_RESULT_UNTRUSTED_SERVER);
  CHECK(client == (secretd_client *)0x1);
  char detail[512];
  CHECK(secretd_last_error_message(detail, sizeof detail) > 0);
  CHECK(strstr(detail, argv[1]) != NULL);
  CHECK(strstr(detail, "served by uid 65534") != NULL);
  printf("ok %d checks\n", checks_run);
  return 0;
}
