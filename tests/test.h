/*
 * test.h - the minimal harness of the C tests: CHECK macros that count
 * failures and keep going, helpers for paths given by scripts/run-tests.
 * A test program exits 0 (pass), 1 (fail) or 77 (skip).
 */
#ifndef DSV4_TEST_H
#define DSV4_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures;
static int test_checks;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        test_checks++;                                                               \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            test_failures++;                                                         \
        }                                                                            \
    } while (0)

#define CHECKF(cond, ...)                                                            \
    do {                                                                             \
        test_checks++;                                                               \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
            test_failures++;                                                         \
        }                                                                            \
    } while (0)

#define CHECK_INT(a, b)                                                                      \
    CHECKF((long long)(a) == (long long)(b), "%s = %lld, expected %lld", #a, (long long)(a), \
           (long long)(b))

#define CHECK_STR(a, b) CHECKF(strcmp((a), (b)) == 0, "%s = \"%s\", expected \"%s\"", #a, (a), (b))

/* Ends main(): prints a summary, returns the exit status. */
#define TEST_DONE()                                                            \
    do {                                                                       \
        fprintf(stderr, "%d checks, %d failed\n", test_checks, test_failures); \
        return test_failures ? 1 : 0;                                          \
    } while (0)

/* Directory of the read-only shared data (../shared/data), from the runner. */
static inline const char *test_shared_data(void)
{
    const char *d = getenv("DSV4_SHARED_DATA");
    return d ? d : "../shared/data";
}

/* Per-test scratch directory created by the runner (removed after the test). */
static inline const char *test_tmpdir(void)
{
    const char *d = getenv("DSV4_TMP");
    return d ? d : "/tmp";
}

#endif
