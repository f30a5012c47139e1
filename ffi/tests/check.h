/* Tiny assertion helpers shared by the C tests. */
#ifndef SECRETD_TEST_CHECK_H
#define SECRETD_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int checks_run = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    checks_run++;                                                              \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define CHECK_RESULT(expr, expected)                                           \
  do {                                                                         \
    secretd_result got_ = (expr);                                              \
    checks_run++;                                                              \
    if (got_ != (expected)) {                                                  \
      char msg_[256];                                                          \
      secretd_last_error_message(msg_, sizeof msg_);                           \
      fprintf(stderr, "%s:%d: %s returned %d, expected %d (%s)\n", __FILE__,   \
              __LINE__, #expr, (int)got_, (int)(expected), msg_);              \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#endif
