/* The sweep checkpoint list (src/cli/sweep_list.c, ct_sweep_expand_checkpoints): globs in
 * sorted order, a glob that matches nothing kept as written, @FILE lists, duplicates dropped
 * with the first occurrence keeping its place, and errors that name sweep.checkpoints
 * (fuzz_sweeplist fuzzes the same function). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/sweep.h"
#include "util.h"

/* spec with every "{}" replaced by the test's directory. */
static char *in_dir(const char *spec) {
    static char buf[2048];
    size_t len = 0;
    for (const char *p = spec; *p && len < sizeof buf - 200;) {
        if (!strncmp(p, "{}", 2)) {
            len += (size_t)snprintf(buf + len, sizeof buf - len, "%s", ct_test_tmpdir);
            p += 2;
        } else {
            buf[len++] = *p++;
        }
    }
    buf[len] = '\0';
    return buf;
}

/* Asserts the expansion of spec is the NULL-terminated list of names in the test's directory
 * ("" for the directory itself). */
static void expect_list(const char *spec, ...) {
    ct_strlist l = {0};
    ck_assert_msg(ct_sweep_expand_checkpoints(in_dir(spec), &l) == CT_OK, "%s", ct_last_error());
    va_list ap;
    va_start(ap, spec);
    int i = 0;
    for (const char *name; (name = va_arg(ap, const char *)); i++) {
        ck_assert_int_lt(i, l.n);
        ck_assert_str_eq(l.s[i], ct_test_path(name));
    }
    va_end(ap);
    ck_assert_int_eq(l.n, i);
    ct_strlist_free(&l);
}

static void touch(const char *name) { ct_test_write_file(ct_test_path(name), "", 0); }

START_TEST(sweeplist_order_and_duplicates) {
    ct_test_make_tmpdir();
    touch("b.st");
    touch("a.st");
    touch("c.st");
    /* a glob's matches sorted; the first occurrence keeps its place; an unmatched glob stays */
    expect_list("{}/c.st, {}/*.st ,{}/missing-*.st,,{}/c.st", "c.st", "a.st", "b.st",
                "missing-*.st", NULL);
    expect_list("{}/[ab].st,{}/a.st", "a.st", "b.st", NULL);
    ct_test_remove_tmpdir();
}
END_TEST

START_TEST(sweeplist_list_file) {
    ct_test_make_tmpdir();
    touch("a.st");
    touch("b.st");
    const char *list = in_dir("# comment\n\n  {}/b.st  \n{}/a.st\r\n{}/*.st\n");
    ct_test_write_file(ct_test_path("list.txt"), list, strlen(list));
    expect_list("@{}/list.txt,{}/a.st", "b.st", "a.st", NULL);
    ct_test_remove_tmpdir();
}
END_TEST

/* A list file that is a directory used to read as empty, and a FIFO blocked in fopen. */
START_TEST(sweeplist_errors) {
    ct_test_make_tmpdir();
    ct_strlist l = {0};
    ct_test_expect_error(ct_sweep_expand_checkpoints(" , ,", &l), CT_ERR_CONFIG,
                         "sweep.checkpoints is empty", NULL);
    ct_test_expect_error(ct_sweep_expand_checkpoints("a, @ ", &l), CT_ERR_CONFIG,
                         "sweep.checkpoints", "'@' without a list file name", NULL);
    ct_test_expect_error(ct_sweep_expand_checkpoints(in_dir("@{}"), &l), CT_ERR_IO,
                         "sweep.checkpoints", ct_test_tmpdir, "a directory", NULL);
    ck_assert_int_eq(mkfifo(ct_test_path("fifo"), 0600), 0);
    ct_test_expect_error(ct_sweep_expand_checkpoints(in_dir("@{}/fifo"), &l), CT_ERR_IO,
                         "sweep.checkpoints", "fifo", "a FIFO", NULL);
    ct_test_expect_error(ct_sweep_expand_checkpoints(in_dir("@{}/none.txt"), &l), CT_ERR_IO,
                         "sweep.checkpoints", "none.txt", "cannot open", NULL);
    ck_assert_int_eq(l.n, 0);
    ct_test_remove_tmpdir();
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli_sweeplist");
    TCase *tc = tcase_create("expand");
    tcase_add_test(tc, sweeplist_order_and_duplicates);
    tcase_add_test(tc, sweeplist_list_file);
    tcase_add_test(tc, sweeplist_errors);
    tcase_add_unchecked_fixture(tc, ct_test_dir_setup, ct_test_dir_teardown);
    suite_add_tcase(s, tc);
    return ct_test_run(s);
}
