/* A consumer of the packaged libsecretd, built in the container with
 * `cc reader.c $(pkg-config --cflags --libs secretd)`.
 *
 *   reader NAME              prints the value of NAME once
 *   reader NAME STOP_FILE    reads NAME on one client until STOP_FILE exists (and at least
 *                            once after), then prints "ok=N failed=M"; each failure goes to
 *                            stderr with the library's message. Exit 0 only if none failed. */
#include <secretd.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int read_once(const secretd_client *client, const char *name, int print) {
    secretd_secret *secret = NULL;
    secretd_result r = secretd_get(client, name, &secret);
    if (r != SECRETD_RESULT_OK) {
        char msg[512];
        secretd_last_error_message(msg, sizeof msg);
        fprintf(stderr, "get %s: result %u: %s\n", name, (unsigned)r, msg);
        return 0;
    }
    if (print) {
        fwrite(secretd_secret_data(secret), 1, secretd_secret_len(secret), stdout);
        putchar('\n');
    }
    secretd_secret_free(secret);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: reader NAME [STOP_FILE]\n");
        return 2;
    }
    secretd_client *client = NULL;
    secretd_result r = secretd_client_connect(NULL, &client);
    if (r != SECRETD_RESULT_OK) {
        char msg[512];
        secretd_last_error_message(msg, sizeof msg);
        fprintf(stderr, "connect: result %u: %s\n", (unsigned)r, msg);
        return 1;
    }
    if (argc == 2) {
        int ok = read_once(client, argv[1], 1);
        secretd_client_free(client);
        return ok ? 0 : 1;
    }
    unsigned long ok = 0, failed = 0;
    for (;;) {
        int stop = access(argv[2], F_OK) == 0;
        if (read_once(client, argv[1], 0)) ok++; else failed++;
        if (stop) break;
    }
    secretd_client_free(client);
    printf("ok=%lu failed=%lu\n", ok, failed);
    return failed == 0 ? 0 : 1;
}
