#include "util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <dirent.h>
#include <ftw.h>
#include <stdarg.h>
#include <sys/stat.h>

ct_tensor *ct_test_rand(int ndim, const int64_t *shape, float lo, float hi, uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    return ct_rand_uniform(ndim, shape, lo, hi, &r);
}

/* L = sum(y * R) in double, so the finite differences are not swamped by rounding. */
static double project(const ct_tensor *y, const ct_tensor *r) {
    double s = 0;
    for (int64_t i = 0; i < y->numel; i++) s += (double)y->data[i] * r->data[i];
    return s;
}

static double eval_f(ct_test_fn f, ct_tensor **in, void *ctx, const ct_tensor *r) {
    double s = 0;
    CT_NO_GRAD CT_SCOPE { s = project(f(in, ctx), r); }
    return s;
}

double ct_test_gradcheck(const char *name, ct_test_fn f, int n, ct_tensor **in, void *ctx,
                         double eps, double atol, double rtol) {
    double worst = 0;
    CT_SCOPE {
        ct_tensor *y = f(in, ctx);
        ck_assert_msg(y->requires_grad, "%s: output does not require grad", name);
        ct_tensor *r = ct_test_rand(y->ndim, y->shape, -1, 1, 1234);
        for (int k = 0; k < n; k++)
            if (in[k]->requires_grad) ct_clear_grad(in[k]);
        ct_tensor *g = ct_empty_like(y);
        for (int64_t i = 0; i < y->numel; i++) g->data[i] = r->data[i];
        ct_backward_ex(y, g, false);
        for (int k = 0; k < n; k++) {
            ct_tensor *x = in[k];
            if (!x->requires_grad) continue;
            ck_assert_msg(x->grad != NULL, "%s: input %d got no gradient", name, k);
            for (int64_t j = 0; j < x->numel; j++) {
                float orig = x->data[j];
                float xp = (float)(orig + eps), xm = (float)(orig - eps);
                x->data[j] = xp;
                double lp = eval_f(f, in, ctx, r);
                x->data[j] = xm;
                double lm = eval_f(f, in, ctx, r);
                x->data[j] = orig;
                double num = (lp - lm) / ((double)xp - xm); /* the step float really took */
                double ana = x->grad->data[j];
                double err = fabs(ana - num) / (atol + rtol * fabs(num));
                if (err > worst) worst = err;
                if (err > 1)
                    fprintf(stderr, "%s: input %d elem %lld: analytic %.6g numeric %.6g\n", name,
                            k, (long long)j, ana, num);
            }
        }
    }
    return worst;
}

void ct_test_assert_counters_back(ct_stats before) {
    ct_stats after = ct_stats_get();
    ck_assert_int_eq(after.live_tensors, before.live_tensors);
    ck_assert_int_eq(after.live_bytes, before.live_bytes);
    ck_assert_int_eq(after.graph_nodes, before.graph_nodes);
    ck_assert_int_eq(after.saved_tensors, before.saved_tensors);
}

static const char *expected_msg;

static void msg_hook(const char *msg) {
    if (!strstr(msg, expected_msg)) {
        fprintf(stderr, "abort message \"%s\" lacks \"%s\"\n", msg, expected_msg);
        _exit(3);
    }
    abort();
}

void ct_test_expect_abort(const char *text) {
    expected_msg = text;
    ct_set_abort_hook(msg_hook);
}

int ct_test_run(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    ct_scope_shutdown();
    ct_alloc_trim();
    return failed == 0 ? 0 : 1;
}

/* ---- scratch directories and files -------------------------------------------------------- */

static char basedir[64];
char ct_test_tmpdir[128];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static int make_writable(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)ftw;
    if (flag == FTW_D || flag == FTW_DNR) chmod(p, sb->st_mode | 0700);
    return 0;
}

static void rm_tree(const char *dir) {
    nftw(dir, make_writable, 16, FTW_PHYS);
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

void ct_test_dir_setup(void) {
    strcpy(basedir, "/tmp/ct_test.XXXXXX");
    if (!mkdtemp(basedir)) ct_fatal("tests: mkdtemp failed");
}

void ct_test_dir_teardown(void) { rm_tree(basedir); }

void ct_test_make_tmpdir(void) {
    snprintf(ct_test_tmpdir, sizeof ct_test_tmpdir, "%s/t.XXXXXX", basedir);
    ck_assert_ptr_nonnull(mkdtemp(ct_test_tmpdir));
}

void ct_test_remove_tmpdir(void) { rm_tree(ct_test_tmpdir); }

const char *ct_test_path(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, 512, "%s/%s", ct_test_tmpdir, name);
    return b;
}

void ct_test_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

char *ct_test_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)len + 1);
    ck_assert_uint_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
    buf[len] = '\0';
    fclose(f);
    if (n) *n = (size_t)len;
    return buf;
}

int ct_test_count_files(void) {
    DIR *d = opendir(ct_test_tmpdir);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

void ct_test_expect_error(ct_status st, ct_status want, ...) {
    ck_assert_msg(st == want, "status %d, expected %d (message: %s)", st, want, ct_last_error());
    if (getenv("CT_TEST_SHOW_ERRORS")) fprintf(stderr, "expected error: %s\n", ct_last_error());
    va_list ap;
    va_start(ap, want);
    for (const char *s; (s = va_arg(ap, const char *));)
        ck_assert_msg(strstr(ct_last_error(), s), "message \"%s\" lacks \"%s\"", ct_last_error(),
                      s);
    va_end(ap);
}

void ct_test_make_fixtures(char *dir, const char *name, const char *cmd) {
    snprintf(dir, 64, "/tmp/%s_XXXXXX", name);
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char full[1024];
    size_t k = 0;
    for (const char *p = cmd; *p && k + 64 < sizeof full; p++) {
        if (p[0] == '{' && p[1] == '}') {
            k += (size_t)snprintf(full + k, sizeof full - k, "%s", dir);
            p++;
        } else {
            full[k++] = *p;
        }
    }
    full[k] = '\0';
    if (system(full) != 0) {
        fprintf(stderr, "%s: %s failed (run from the repository root)\n", name, full);
        exit(1);
    }
}

void ct_test_remove_fixtures(const char *dir) {
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

bool ct_test_small(void) {
    const char *v = getenv("CT_TEST_SMALL");
    return v && *v && strcmp(v, "0") != 0;
}
