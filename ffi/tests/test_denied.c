/* Run as a uid the policy does not allow: the read is refused, the connection survives.
 * Usage: test_denied SOCKET NAME */
#include "secretd.h"
#include "check.h"

int main(int argc, char **argv) {
  if (argc != 3) return 2;
  secretd_client *client = NULL;
  CHECK_RESULT(secretd_client_connect(argv[1], &client), SECRETD_RESULT_OK);
  secretd_secret *secret = NULL;
  CHECK_RESULT(secretd_get(client, argv[2], &secret), SECRETD_RESULT_PERMISSION_DENIED);
  CHECK(secret == NULL);
  CHECK_RESULT(secretd_get(client, argv[2], &secret), SECRETD_RESULT_PERMISSION_DENIED);
  secretd_client_free(client);
  printf("test_denied: %d checks passed\n", checks_run);
  return 0;
}
