/* The command line's JSON output (src/cli/event.c): keys in the order added, numbers as
 * their printf format rounds them, non-finite numbers as null, strings escaped (and bytes
 * that are not UTF-8 replaced, not dropped), and records read back by key. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "util.h"

/* What ct_json_emit writes for o. */
static char *emitted(json_t *o) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    ck_assert_ptr_nonnull(f);
    ct_json_emit(o, f);
    fclose(f);
    return buf;
}

START_TEST(event_line_keeps_order_and_rounding) {
    json_t *o = ct_json_record("eval");
    ct_json_int(o, "epoch", 3);
    ct_json_real(o, "loss", 0.123456789, "%.6f");
    ct_json_real(o, "accuracy", 0.8, "%.6f");
    ct_json_int(o, "samples", 10000);
    ct_json_real(o, "lr", 1.23456789e-7, "%.6g");
    char *s = emitted(o);
    ck_assert_str_eq(s, "{\"event\":\"eval\",\"epoch\":3,\"loss\":0.123457,\"accuracy\":0.8,"
                        "\"samples\":10000,\"lr\":1.23457e-7}\n");
    free(s);
}
END_TEST

START_TEST(non_finite_numbers_are_null) {
    json_t *o = ct_json_record(NULL); /* a metrics record has no "event" */
    ct_json_real(o, "train_loss", NAN, "%.6f");
    ct_json_real(o, "eval_loss", INFINITY, "%.6f");
    ct_json_real(o, "lr", -INFINITY, "%.6g");
    char *s = emitted(o);
    ck_assert_str_eq(s, "{\"train_loss\":null,\"eval_loss\":null,\"lr\":null}\n");
    free(s);
}
END_TEST

START_TEST(strings_are_escaped) {
    json_t *o = ct_json_record("sweep_job");
    ct_json_str(o, "checkpoint", "runs/a \"b\"\\c\n.safetensors");
    ct_json_str(o, "error", "bad \xff byte");
    char *s = emitted(o);
    ck_assert_str_eq(s, "{\"event\":\"sweep_job\",\"checkpoint\":\"runs/a \\\"b\\\"\\\\c\\n"
                        ".safetensors\",\"error\":\"bad \xef\xbf\xbd byte\"}\n");
    free(s);
}
END_TEST

START_TEST(records_read_back_by_key) {
    int64_t v = -1;
    ck_assert(ct_json_int_field("{\"step\":9,\"epoch\":4,\"loss\":0.5}\n", "epoch", &v));
    ck_assert_int_eq(v, 4);
    /* any key order, spacing or extra keys */
    ck_assert(ct_json_int_field("{ \"loss\": 0.5, \"epoch\" : 12 }", "epoch", &v));
    ck_assert_int_eq(v, 12);
    v = -1;
    ck_assert(!ct_json_int_field("{\"epoch\":1.5}", "epoch", &v)); /* not an integer */
    ck_assert(!ct_json_int_field("{\"epoch\":null}", "epoch", &v));
    ck_assert(!ct_json_int_field("{\"step\":3}", "epoch", &v));
    ck_assert(!ct_json_int_field("{\"epoch\":3", "epoch", &v)); /* a torn last line */
    ck_assert(!ct_json_int_field("[1,2]", "epoch", &v));
    ck_assert(!ct_json_int_field("", "epoch", &v));
    ck_assert_int_eq(v, -1);
}
END_TEST

int main(void) {
    Suite *s = suite_create("cli_event");
    TCase *tc = tcase_create("json");
    tcase_add_test(tc, event_line_keeps_order_and_rounding);
    tcase_add_test(tc, non_finite_numbers_are_null);
    tcase_add_test(tc, strings_are_escaped);
    tcase_add_test(tc, records_read_back_by_key);
    suite_add_tcase(s, tc);
    return ct_test_run(s);
}
