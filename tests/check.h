/* check.h — the assertions of poc's C test programs. Each test program ends with
 * `return check_summary("name");`, which prints "N passed, N failed" and returns the
 * exit status ctest reads. A failed check prints where and why, and the test goes on so
 * one run shows every failure. */
#ifndef POC_CHECK_H
#define POC_CHECK_H

#include <math.h>
#include <stdio.h>

static int check_passed_, check_failed_;

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (cond) check_passed_++;                                              \
    else {                                                                  \
      check_failed_++;                                                      \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                       \
  } while (0)

#define CHECK_MSG(cond, ...)                                                \
  do {                                                                      \
    if (cond) check_passed_++;                                              \
    else {                                                                  \
      check_failed_++;                                                      \
      fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                         \
      fputc('\n', stderr);                                                  \
    }                                                                       \
  } while (0)

/* |a - b| <= tol * max(1, |a|, |b|): absolute near zero, relative elsewhere. */
#define CHECK_NEAR(a, b, tol)                                               \
  do {                                                                      \
    double a_ = (double)(a), b_ = (double)(b), s_ = fabs(a_) > fabs(b_) ? fabs(a_) : fabs(b_); \
    if (s_ < 1) s_ = 1;                                                     \
    if (fabs(a_ - b_) <= (tol) * s_ && a_ == a_ && b_ == b_) check_passed_++; \
    else {                                                                  \
      check_failed_++;                                                      \
      fprintf(stderr, "%s:%d: check failed: %s = %.17g vs %s = %.17g (tol %g)\n", \
              __FILE__, __LINE__, #a, a_, #b, b_, (double)(tol));           \
    }                                                                       \
  } while (0)

static inline int check_summary(const char *suite) {
  printf("%s: %d passed, %d failed\n", suite, check_passed_, check_failed_);
  return check_failed_ ? 1 : 0;
}

#endif
