/* core's checked allocator: results are usable and aligned, and running out of memory goes
 * through the abort hook with the size instead of handing the caller NULL. */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Under ASan a huge request must fail as it does in libc, not as an ASan report. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

START_TEST(allocations_are_usable) {
    char *p = ct_malloc(0); /* a fresh pointer even for 0 bytes */
    ck_assert_ptr_nonnull(p);
    free(p);
    int *z = ct_calloc(100, sizeof *z);
    for (int i = 0; i < 100; i++) ck_assert_int_eq(z[i], 0);
    z = ct_realloc(z, 1000 * sizeof *z);
    ck_assert_int_eq(z[99], 0); /* realloc keeps the contents */
    free(z);
    char *s = ct_strdup("layer.0.weight");
    ck_assert_str_eq(s, "layer.0.weight");
    free(s);
    float *a = ct_aligned_malloc(64, 100); /* not a multiple of the alignment */
    ck_assert_uint_eq((uintptr_t)a % 64, 0);
    free(a);
}
END_TEST

START_TEST(malloc_failure_aborts) {
    ct_test_expect_abort("out of memory allocating");
    void *p = ct_malloc(SIZE_MAX / 2);
    free(p);
}
END_TEST

START_TEST(calloc_overflow_aborts) {
    ct_test_expect_abort("out of memory allocating");
    void *p = ct_calloc(SIZE_MAX / 2, 4);
    free(p);
}
END_TEST

/* The block stays allocated when the abort ends the test; held in a global it is still
 * reachable then, not a definite leak under memcheck (make check-valgrind). */
static void *volatile held;

START_TEST(realloc_failure_aborts) {
    ct_test_expect_abort("out of memory allocating");
    held = ct_malloc(16);
    held = ct_realloc(held, SIZE_MAX / 2);
    free(held);
}
END_TEST

int main(void) {
    Suite *s = suite_create("core_mem");
    TCase *tc = tcase_create("mem");
    tcase_add_test(tc, allocations_are_usable);
    tcase_add_test_raise_signal(tc, malloc_failure_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, calloc_overflow_aborts, SIGABRT);
    tcase_add_test_raise_signal(tc, realloc_failure_aborts, SIGABRT);
    suite_add_tcase(s, tc);
    return ct_test_run(s);
}
