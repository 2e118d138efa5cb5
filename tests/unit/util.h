/* Shared test helpers: finite-difference gradient checks and counter snapshots. */
#ifndef CT_TEST_UTIL_H
#define CT_TEST_UTIL_H

#include <check.h>
#include <math.h>
#include <signal.h>

#include "ctrain.h"

/* The function under test: builds an output from inputs[0..n) with ops. */
typedef ct_tensor *(*ct_test_fn)(ct_tensor **inputs, void *ctx);

/* Checks the analytic gradient of every input with requires_grad against central
 * differences of L = sum(f(inputs) * R), R a fixed random projection. Each element's
 * error is |analytic - numeric| / (atol + rtol * |numeric|); returns the worst (so a
 * value <= 1 passes) and prints the worst element when it fails. */
double ct_test_gradcheck(const char *name, ct_test_fn f, int n, ct_tensor **inputs, void *ctx,
                         double eps, double atol, double rtol);

/* A tensor of the given shape with values uniform in [lo, hi), from seed. */
ct_tensor *ct_test_rand(int ndim, const int64_t *shape, float lo, float hi, uint64_t seed);

/* Asserts the live-tensor, live-byte, graph-node and saved-tensor counters are back to before. */
void ct_test_assert_counters_back(ct_stats before);

/* For an abort test (tcase_add_test_raise_signal SIGABRT): the abort hook then checks that
 * the message contains text, and exits with status 3 (a failure) if it does not. */
void ct_test_expect_abort(const char *text);

/* CT_TEST_SMALL=1 (scripts/valgrind.sh sets it): suites whose full size is too slow under
 * memcheck (tens of millions of parameters initialised) build fewer or smaller models; the
 * same code paths still run. */
bool ct_test_small(void);

/* Runs a suite and returns a process exit status (Check prints the summary line). */
int ct_test_run(Suite *s);

/* Scratch files. Each TCase gets a base directory, made and removed by the parent process
 * (ct_test_dir_setup/teardown as an unchecked fixture), so it is cleaned up even when a test
 * fails; each test works in its own fresh subdirectory ct_test_tmpdir of it. */
extern char ct_test_tmpdir[128];
void ct_test_dir_setup(void);
void ct_test_dir_teardown(void);
void ct_test_make_tmpdir(void);
void ct_test_remove_tmpdir(void);
/* ct_test_tmpdir/name in a static ring of 8 buffers, so a test can hold several at once. */
const char *ct_test_path(const char *name);
void ct_test_write_file(const char *path, const void *data, size_t n);
/* The whole file, NUL-terminated (free it); *n (may be NULL) gets its size. */
char *ct_test_read_file(const char *path, size_t *n);
/* Fixtures made by a script, once per process: mkdtemp("/tmp/<name>_XXXXXX") into dir (64
 * bytes), then runs cmd with every "{}" replaced by dir; exits the suite if it fails. */
void ct_test_make_fixtures(char *dir, const char *name, const char *cmd);
/* rm -rf dir (a fixture directory). */
void ct_test_remove_fixtures(const char *dir);
/* Entries in ct_test_tmpdir other than . and .. */
int ct_test_count_files(void);
/* Asserts st == want and that ct_last_error() contains every string of the NULL-terminated
 * list (CT_TEST_SHOW_ERRORS=1 prints each message, to review them). */
void ct_test_expect_error(ct_status st, ct_status want, ...);

/* Asserts |a - b| <= tol * max(1, |b|). */
#define ck_assert_close(a, b, tol)                                                        \
    do {                                                                                  \
        double ct__a = (a), ct__b = (b);                                                  \
        double ct__s = fabs(ct__b) > 1 ? fabs(ct__b) : 1;                                 \
        ck_assert_msg(fabs(ct__a - ct__b) <= (tol) * ct__s, "%s = %g, expected %g (tol %g)", \
                      #a, ct__a, ct__b, (double)(tol));                                   \
    } while (0)

#endif
