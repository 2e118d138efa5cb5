/* Optimizers, groups, lazy state, fused segments, schedules and checkpoint state.
 * Update rules are checked against PyTorch 1.13 (values below) and against an independent
 * double-precision implementation of the same formulas. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

/* Produced by scripts/ref_optim.py (PyTorch 1.13, float32, single-tensor path):
 *   p0[i] = ((i % 5) - 2) * 0.375;  g_t[i] = (((7*i + 3*t) % 11) - 5) / 8   (i < 6, t < 5)
 *   for t in range(5): p.grad = g_t; opt.step(); print(p)
 * with opt = SGD([p], lr=0.1) | SGD(lr=0.1, momentum=0.9)
 *          | SGD(lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
 *          | SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
 *          | Adam([p], lr=0.01) | Adam(lr=0.01, weight_decay=0.1)
 *          | AdamW([p], lr=0.01, weight_decay=0.1) | AdamW([p])  (defaults)
 * and the schedulers' lr per epoch (base 0.1): StepLR(step_size=3, gamma=0.5),
 * CosineAnnealingLR(T_max=10, eta_min=0.01), LinearLR(start_factor=1/4, total_iters=3). */
static const float ref_sgd_plain[5][6] = {
    {-0.6875f, -0.400000006f, 0.0250000004f, 0.3125f, 0.737500012f, -0.712499976f},
    {-0.662500024f, -0.462500006f, 0.0125000002f, 0.349999994f, 0.6875f, -0.712499976f},
    {-0.675000012f, -0.425000012f, -0.0375000015f, 0.349999994f, 0.737500012f, -0.75f},
    {-0.725000024f, -0.425000012f, 0.0124999993f, 0.3125f, 0.75f, -0.6875f},
    {-0.675000012f, -0.462500006f, 0.0249999985f, 0.375f, 0.725000024f, -0.662500024f},
};
static const float ref_sgd_mom[5][6] = {
    {-0.6875f, -0.400000006f, 0.0250000004f, 0.3125f, 0.737500012f, -0.712499976f},
    {-0.606249988f, -0.485000014f, 0.0350000001f, 0.293749988f, 0.676249981f, -0.678749979f},
    {-0.545624971f, -0.523999989f, -0.00600000331f, 0.276874989f, 0.671124995f, -0.685874999f},
    {-0.541062474f, -0.559099972f, 0.00709999492f, 0.224187493f, 0.679012477f, -0.629787505f},
    {-0.486956239f, -0.628189981f, 0.0313899927f, 0.23926875f, 0.661111236f, -0.554308772f},
};
static const float ref_sgd_mom_wd_damp[5][6] = {
    {-0.680000007f, -0.39625001f, 0.0250000004f, 0.308750004f, 0.730000019f, -0.704999983f},
    {-0.601100028f, -0.444643766f, 0.0411249995f, 0.266331255f, 0.683350027f, -0.660974979f},
    {-0.533334553f, -0.467224926f, 0.0304318741f, 0.226822719f, 0.662948251f, -0.636797607f},
    {-0.494678944f, -0.485211849f, 0.0456559025f, 0.171380922f, 0.647521913f, -0.580603957f},
    {-0.432415485f, -0.517724037f, 0.0653792471f, 0.151876405f, 0.61790061f, -0.514626682f},
};
static const float ref_sgd_nesterov_wd[5][6] = {
    {-0.629824996f, -0.4217875f, 0.0474999994f, 0.25553751f, 0.724825025f, -0.67732501f},
    {-0.529895842f, -0.559682369f, 0.0439097472f, 0.27537325f, 0.617715359f, -0.645055592f},
    {-0.485769629f, -0.555603921f, -0.0431121588f, 0.259182185f, 0.660795331f, -0.686647117f},
    {-0.529359996f, -0.585131407f, 0.0186895616f, 0.173115611f, 0.677617729f, -0.570855379f},
    {-0.428022742f, -0.682344437f, 0.0529867969f, 0.248060048f, 0.633315146f, -0.474926203f},
};
static const float ref_adam[5][6] = {
    {-0.74000001f, -0.38499999f, 0.00999999978f, 0.36500001f, 0.74000001f, -0.74000001f},
    {-0.731014252f, -0.39439708f, 0.0126633691f, 0.363085032f, 0.73115623f, -0.733299434f},
    {-0.725352585f, -0.397631705f, 0.00809005089f, 0.36160475f, 0.730700195f, -0.734158099f},
    {-0.725039542f, -0.40028131f, 0.00909168366f, 0.357865334f, 0.73132956f, -0.730180025f},
    {-0.722037733f, -0.404684275f, 0.0108127389f, 0.358664244f, 0.730060875f, -0.72537142f},
};
static const float ref_adam_wd[5][6] = {
    {-0.74000001f, -0.38499999f, 0.00999999978f, 0.36500001f, 0.74000001f, -0.74000001f},
    {-0.730792761f, -0.394278228f, 0.0126325069f, 0.362420917f, 0.730768859f, -0.732180238f},
    {-0.724121034f, -0.396714807f, 0.0080456445f, 0.360118508f, 0.728603601f, -0.730668545f},
    {-0.722155929f, -0.398400247f, 0.00902563706f, 0.35565716f, 0.727241576f, -0.725328743f},
    {-0.717793763f, -0.401928753f, 0.0107220579f, 0.355669111f, 0.724013805f, -0.719221592f},
};
static const float ref_adamw_wd[5][6] = {
    {-0.739250004f, -0.384624988f, 0.00999999978f, 0.364625007f, 0.739250004f, -0.739250004f},
    {-0.72952503f, -0.393637419f, 0.0126533695f, 0.362345397f, 0.729667008f, -0.731810212f},
    {-0.723133862f, -0.396478415f, 0.00806739833f, 0.360502779f, 0.728481293f, -0.731937051f},
    {-0.722097695f, -0.39873156f, 0.00906096399f, 0.356402874f, 0.72838217f, -0.727227032f},
    {-0.718373775f, -0.4027358f, 0.0107729584f, 0.356845379f, 0.726385117f, -0.721691191f},
};
static const float ref_adamw_default[5][6] = {
    {-0.748992503f, -0.375996232f, 0.000999999931f, 0.373996258f, 0.748992503f, -0.748992503f},
    {-0.748086393f, -0.376932174f, 0.00126632687f, 0.373800993f, 0.748100638f, -0.748314917f},
    {-0.747512698f, -0.377251863f, 0.000808982353f, 0.37364921f, 0.748047531f, -0.748393297f},
    {-0.747473896f, -0.377513051f, 0.00090913754f, 0.373271525f, 0.748102963f, -0.747987986f},
    {-0.747166216f, -0.377949566f, 0.00108123408f, 0.3733477f, 0.747968614f, -0.747499645f},
};
static const double ref_steplr[8] = {0.10000000000000001, 0.10000000000000001, 0.10000000000000001, 0.050000000000000003, 0.050000000000000003, 0.050000000000000003, 0.025000000000000001, 0.025000000000000001};
static const double ref_cosine[11] = {0.10000000000000001, 0.097797543233281922, 0.091405764746872634, 0.08145033635316129, 0.068905764746872641, 0.055000000000000007, 0.041094235253127373, 0.028549663646838717, 0.01859423525312737, 0.012202456766718092, 0.01};
static const double ref_warmup[6] = {0.025000000000000001, 0.050000000000000003, 0.075000000000000011, 0.10000000000000001, 0.10000000000000001, 0.10000000000000001};

#define NREF 6
#define TREF 5

/* ---- helpers ----------------------------------------------------------------------- */

/* A trainable leaf owned by the caller (ct_release it). */
static ct_tensor *param(int64_t n, const float *v) {
    ct_tensor *p = ct_own(ct_from_data(CT_SHAPE(n), v));
    ct_set_requires_grad(p, true);
    return p;
}

/* Sets p's gradient to v: through a real backward the first time (so .grad is created
 * the way training creates it), in place afterwards. */
static void put_grad(ct_tensor *p, const float *v) {
    if (p->grad) {
        memcpy(p->grad->data, v, (size_t)p->numel * sizeof(float));
        return;
    }
    CT_SCOPE {
        ct_tensor *y = ct_mul_scalar(p, 1.0f);
        ct_backward_ex(y, ct_from_data(p->ndim, p->shape, v), false);
    }
}

static void ref_p0(float *p) {
    for (int i = 0; i < NREF; i++) p[i] = (float)(((i % 5) - 2) * 0.375);
}
static void ref_grad(int t, float *g) {
    for (int i = 0; i < NREF; i++) g[i] = (float)((((7 * i + 3 * t) % 11) - 5) / 8.0);
}

static const char *one_name[] = {"w"};

/* ---- reference values -------------------------------------------------------------- */

typedef struct {
    const char *name;
    ct_optim_config cfg;
    const float (*ref)[NREF];
} ref_case;

static ref_case ref_cases(int i) {
    ct_optim_config damp = ct_sgd_config(0.1, 0.9, 0.1, false);
    damp.dampening = 0.5;
    ref_case c[] = {
        {"sgd_plain", ct_sgd_config(0.1, 0, 0, false), ref_sgd_plain},
        {"sgd_mom", ct_sgd_config(0.1, 0.9, 0, false), ref_sgd_mom},
        {"sgd_mom_wd_damp", damp, ref_sgd_mom_wd_damp},
        {"sgd_nesterov_wd", ct_sgd_config(0.1, 0.9, 0.01, true), ref_sgd_nesterov_wd},
        {"adam", ct_adam_config(0.01, 0), ref_adam},
        {"adam_wd", ct_adam_config(0.01, 0.1), ref_adam_wd},
        {"adamw_wd", ct_adamw_config(0.01, 0.1), ref_adamw_wd},
        {"adamw_default", ct_adamw_config(1e-3, 1e-2), ref_adamw_default},
    };
    return c[i];
}
#define NCASES 8

START_TEST(torch_reference) {
    ref_case c = ref_cases(_i);
    CT_SCOPE {
        float v[NREF], g[NREF];
        ref_p0(v);
        ct_tensor *p = param(NREF, v);
        ct_optim *o = ct_optim_new(c.cfg);
        ct_optim_add_group(o, 1, one_name, &p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        for (int t = 0; t < TREF; t++) {
            ref_grad(t, g);
            put_grad(p, g);
            ct_optim_step(o);
            for (int i = 0; i < NREF; i++)
                ck_assert_msg(fabsf(p->data[i] - c.ref[t][i]) <= 2e-7f * fmaxf(1, fabsf(c.ref[t][i])),
                              "%s step %d elem %d: %.9g, torch %.9g", c.name, t + 1, i,
                              p->data[i], c.ref[t][i]);
        }
        ck_assert_int_eq(ct_optim_param_steps(o, "w"), TREF);
        ct_optim_free(o);
        ct_release(p);
    }
}
END_TEST

/* The same formulas, written out plainly in double precision. */
typedef struct {
    double p, g, m, v;
} dref;

static void dref_step(const ct_optim_config *c, double lr, double wd, int64_t step, dref *e, int n) {
    for (int i = 0; i < n; i++) {
        dref *x = &e[i];
        double g = x->g;
        if (c->kind == CT_OPTIM_SGD) {
            if (wd != 0) g += wd * x->p;
            if (c->momentum != 0) {
                x->m = step == 1 ? g : c->momentum * x->m + (1 - c->dampening) * g;
                g = c->nesterov ? g + c->momentum * x->m : x->m;
            }
            x->p -= lr * g;
        } else {
            if (c->kind == CT_OPTIM_ADAM) g += wd * x->p;
            else x->p *= 1 - lr * wd;
            x->m = c->beta1 * x->m + (1 - c->beta1) * g;
            x->v = c->beta2 * x->v + (1 - c->beta2) * g * g;
            double bc1 = 1 - pow(c->beta1, (double)step), bc2 = 1 - pow(c->beta2, (double)step);
            x->p -= lr / bc1 * x->m / (sqrt(x->v) / sqrt(bc2) + c->eps);
        }
    }
}

START_TEST(double_reference) {
    ref_case c = ref_cases(_i);
    enum { N = 37, T = 25 };
    CT_SCOPE {
        ct_rng r;
        ct_rng_seed(&r, 42 + (uint64_t)_i);
        float v[N], g[N];
        dref d[N];
        for (int i = 0; i < N; i++) {
            v[i] = ct_rng_uniform(&r) * 2 - 1;
            d[i] = (dref){.p = v[i]};
        }
        ct_tensor *p = param(N, v);
        ct_optim *o = ct_optim_new(c.cfg);
        ct_optim_add_group(o, 1, one_name, &p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        for (int t = 0; t < T; t++) {
            for (int i = 0; i < N; i++) d[i].g = g[i] = ct_rng_uniform(&r) * 2 - 1;
            put_grad(p, g);
            ct_optim_step(o);
            dref_step(&c.cfg, c.cfg.lr, c.cfg.weight_decay, t + 1, d, N);
        }
        for (int i = 0; i < N; i++)
            ck_assert_msg(fabs(p->data[i] - d[i].p) <= 2e-5 * fmax(1, fabs(d[i].p)),
                          "%s elem %d: %.9g, double reference %.9g", c.name, i, p->data[i], d[i].p);
        ct_optim_free(o);
        ct_release(p);
    }
}
END_TEST

/* Runs `steps` updates of cfg on the reference sequence; writes the final params. */
static void run_ref(ct_optim_config cfg, int steps, float *out) {
    CT_SCOPE {
        float v[NREF], g[NREF];
        ref_p0(v);
        ct_tensor *p = param(NREF, v);
        ct_optim *o = ct_optim_new(cfg);
        ct_optim_add_group(o, 1, one_name, &p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        for (int t = 0; t < steps; t++) {
            ref_grad(t, g);
            put_grad(p, g);
            ct_optim_step(o);
        }
        memcpy(out, p->data, sizeof v);
        ct_optim_free(o);
        ct_release(p);
    }
}

START_TEST(adamw_vs_adam) {
    float a[NREF], w[NREF], p0[NREF], g[NREF];
    /* Without weight decay they are the same algorithm, bit for bit. */
    run_ref(ct_adam_config(0.01, 0), 4, a);
    run_ref(ct_adamw_config(0.01, 0), 4, w);
    ck_assert_mem_eq(a, w, sizeof a);
    /* With it, one step from zero moments moves p by lr * u / (|u| + eps') with u = g + wd*p
     * for Adam (L2 enters the moments) but by lr * sign(g) after shrinking p by
     * (1 - lr * wd) for AdamW (decoupled). */
    const double lr = 0.01, wd = 0.5;
    run_ref(ct_adam_config(lr, wd), 1, a);
    run_ref(ct_adamw_config(lr, wd), 1, w);
    ref_p0(p0);
    ref_grad(0, g);
    int differ = 0;
    for (int i = 0; i < NREF; i++) {
        double u = g[i] + wd * p0[i];
        double ea = p0[i] - lr * (u == 0 ? 0 : u / fabs(u));
        double ew = p0[i] * (1 - lr * wd) - lr * (g[i] == 0 ? 0 : g[i] / fabs(g[i]));
        ck_assert_msg(fabs(a[i] - ea) < 1e-6, "adam elem %d: %g vs %g", i, a[i], ea);
        ck_assert_msg(fabs(w[i] - ew) < 1e-6, "adamw elem %d: %g vs %g", i, w[i], ew);
        differ += fabs(a[i] - w[i]) > 1e-4;
    }
    ck_assert_int_ge(differ, 3);
}
END_TEST

START_TEST(nesterov_and_weight_decay_change_the_update) {
    float plain[NREF], nest[NREF], wdec[NREF];
    run_ref(ct_sgd_config(0.1, 0.9, 0, false), 3, plain);
    run_ref(ct_sgd_config(0.1, 0.9, 0, true), 3, nest);
    run_ref(ct_sgd_config(0.1, 0.9, 0.1, false), 3, wdec);
    /* Nesterov's first step is lr * (1 + momentum) * g: the look-ahead. */
    float p0[NREF], g[NREF], one[NREF];
    run_ref(ct_sgd_config(0.1, 0.9, 0, true), 1, one);
    ref_p0(p0);
    ref_grad(0, g);
    for (int i = 0; i < NREF; i++) ck_assert_float_eq_tol(one[i], p0[i] - 0.1f * 1.9f * g[i], 1e-6);
    ck_assert(memcmp(plain, nest, sizeof plain) != 0);
    ck_assert(memcmp(plain, wdec, sizeof plain) != 0);
}
END_TEST

/* ---- lazy state ------------------------------------------------------------------- */

START_TEST(null_grad_is_skipped) {
    CT_SCOPE {
        float a[4] = {1, 2, 3, 4}, b[3] = {5, 6, 7}, ga[4] = {1, 1, 1, 1};
        ct_tensor *pa = param(4, a), *pb = param(3, b);
        ct_optim *o = ct_optim_new(ct_adam_config(0.1, 0.1));
        ct_optim_add_group(o, 2, (const char *[]){"a", "b"}, (ct_tensor *[]){pa, pb},
                           CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ck_assert_int_eq(ct_optim_state_params(o), 0);
        ck_assert_uint_eq(ct_optim_state_bytes(o), 0);
        put_grad(pa, ga);
        ct_optim_step(o);
        ct_optim_step(o);
        ck_assert_ptr_null(pb->grad);
        ck_assert_mem_eq(pb->data, b, sizeof b); /* weight decay did not touch it either */
        ck_assert(pa->data[0] != a[0]);
        ck_assert_int_eq(ct_optim_state_params(o), 1);
        ck_assert_uint_eq(ct_optim_state_bytes(o), 2 * 4 * sizeof(float));
        ck_assert_int_eq(ct_optim_param_steps(o, "a"), 2);
        ck_assert_int_eq(ct_optim_param_steps(o, "b"), -1);
        /* b's first gradient creates its state lazily; its step count starts at 1. */
        put_grad(pb, (float[]){1, 1, 1});
        ct_optim_step(o);
        ck_assert_int_eq(ct_optim_state_params(o), 2);
        ck_assert_uint_eq(ct_optim_state_bytes(o), 2 * 7 * sizeof(float));
        ck_assert_int_eq(ct_optim_param_steps(o, "a"), 3);
        ck_assert_int_eq(ct_optim_param_steps(o, "b"), 1);
        ct_optim_free(o);
        ct_release(pa);
        ct_release(pb);
    }
}
END_TEST

START_TEST(frozen_params_never_get_state) {
    CT_SCOPE {
        /* A linear layer with a frozen weight: backward gives the bias a gradient only. */
        ct_tensor *w = ct_own(ct_from_data(CT_SHAPE(2, 3), (float[]){1, 2, 3, 4, 5, 6}));
        ct_tensor *b = param(2, (float[]){0.5f, -0.5f});
        ct_tensor *x = ct_test_rand(CT_SHAPE(4, 3), -1, 1, 9);
        ct_optim *o = ct_optim_new(ct_sgd_config(0.1, 0.9, 0.01, false));
        ct_optim_add_group(o, 2, (const char *[]){"0.weight", "0.bias"}, (ct_tensor *[]){w, b},
                           CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        for (int t = 0; t < 3; t++) {
            CT_SCOPE {
                ct_tensor *y = ct_linear(x, w, b);
                ct_backward_ex(y, ct_ones(y->ndim, y->shape), false);
            }
            ct_optim_step(o);
            ct_optim_zero_grad(o);
        }
        ck_assert_ptr_null(w->grad);
        ck_assert_int_eq(ct_optim_state_params(o), 1);
        ck_assert_int_eq(ct_optim_param_steps(o, "0.weight"), -1);
        ck_assert_float_eq(w->data[0], 1);
        /* Even a frozen param that holds a gradient buffer is left alone. */
        float buf[6] = {1, 1, 1, 1, 1, 1};
        ct_set_grad_storage(w, buf);
        for (int i = 0; i < 6; i++) buf[i] = 1;
        ct_optim_step(o);
        ck_assert_int_eq(ct_optim_state_params(o), 1);
        ck_assert_float_eq(w->data[5], 6);
        ct_optim_free(o);
        ct_release(w);
        ct_release(b);
    }
}
END_TEST

/* ---- groups ------------------------------------------------------------------------ */

START_TEST(two_groups_different_lr) {
    CT_SCOPE {
        float v[3] = {1, 2, 3}, g[3] = {0.5f, -1, 2};
        ct_tensor *a = param(3, v), *b = param(3, v);
        ct_optim *o = ct_optim_new(ct_sgd_config(0.1, 0, 0, false));
        ck_assert_int_eq(ct_optim_add_group(o, 1, (const char *[]){"a"}, &a, CT_OPTIM_DEFAULT,
                                            CT_OPTIM_DEFAULT), 0);
        ck_assert_int_eq(ct_optim_add_group(o, 1, (const char *[]){"b"}, &b, 0.01, 0.5), 1);
        ck_assert_int_eq(ct_optim_ngroups(o), 2);
        ck_assert(ct_optim_lr(o, 0) == 0.1 && ct_optim_lr(o, 1) == 0.01);
        ck_assert(ct_optim_weight_decay(o, 0) == 0 && ct_optim_weight_decay(o, 1) == 0.5);
        put_grad(a, g);
        put_grad(b, g);
        ct_optim_step(o);
        for (int i = 0; i < 3; i++) {
            ck_assert_float_eq(a->data[i], v[i] + -0.1f * g[i]);
            ck_assert_float_eq(b->data[i], v[i] + -0.01f * (g[i] + 0.5f * v[i]));
        }
        ck_assert_int_eq(ct_optim_last_segments(o), 2);
        ct_optim_free(o);
        ct_release(a);
        ct_release(b);
    }
}
END_TEST

START_TEST(add_group_mid_run) {
    /* Staged unfreezing: "head" trains alone for 3 steps, then "body" joins with a lower
     * lr. head must continue exactly as if nothing happened, and body must behave as a
     * fresh Adam (its own step count, from 1). */
    CT_SCOPE {
        float hv[5] = {1, -2, 3, -4, 5}, bv[4] = {0.5f, 0.25f, -0.5f, 2};
        ct_tensor *head = param(5, hv), *body = param(4, bv);
        ct_tensor *head2 = param(5, hv), *body2 = param(4, bv);
        ct_set_requires_grad(body, false);
        ct_optim *o = ct_optim_new(ct_adam_config(0.01, 0));
        ct_optim *oh = ct_optim_new(ct_adam_config(0.01, 0));
        ct_optim *ob = ct_optim_new(ct_adam_config(0.001, 0));
        ct_optim_add_group(o, 1, (const char *[]){"head"}, &head, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(oh, 1, (const char *[]){"head"}, &head2, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(ob, 1, (const char *[]){"body"}, &body2, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_rng r;
        ct_rng_seed(&r, 5);
        for (int t = 0; t < 6; t++) {
            if (t == 3) {
                ct_set_requires_grad(body, true);
                ck_assert_int_eq(ct_optim_add_group(o, 1, (const char *[]){"body"}, &body, 0.001,
                                                    CT_OPTIM_DEFAULT), 1);
            }
            float gh[5], gb[4];
            for (int i = 0; i < 5; i++) gh[i] = ct_rng_normal(&r);
            for (int i = 0; i < 4; i++) gb[i] = ct_rng_normal(&r);
            put_grad(head, gh);
            put_grad(head2, gh);
            ct_optim_step(oh);
            if (t >= 3) {
                put_grad(body, gb);
                put_grad(body2, gb);
                ct_optim_step(ob);
            }
            ct_optim_step(o);
        }
        ck_assert_mem_eq(head->data, head2->data, sizeof hv);
        ck_assert_mem_eq(body->data, body2->data, sizeof bv);
        ck_assert_int_eq(ct_optim_param_steps(o, "head"), 6);
        ck_assert_int_eq(ct_optim_param_steps(o, "body"), 3);
        ck_assert_int_eq(ct_optim_state_params(o), 2);
        ct_optim_free(o);
        ct_optim_free(oh);
        ct_optim_free(ob);
        ct_release(head);
        ct_release(body);
        ct_release(head2);
        ct_release(body2);
    }
}
END_TEST

START_TEST(zero_grad_keeps_external_storage) {
    CT_SCOPE {
        float bucket[7];
        ct_tensor *a = param(3, (float[]){1, 2, 3}), *b = param(4, (float[]){4, 5, 6, 7});
        ct_set_grad_storage(a, bucket);
        ct_set_grad_storage(b, bucket + 3);
        for (int i = 0; i < 7; i++) bucket[i] = (float)i + 1;
        ct_tensor *c = param(2, (float[]){1, 1});
        put_grad(c, (float[]){3, 4});
        ct_tensor *cg = c->grad;
        ct_optim *o = ct_optim_new(ct_sgd_config(0.1, 0, 0, false));
        ct_optim_add_group(o, 3, (const char *[]){"a", "b", "c"}, (ct_tensor *[]){a, b, c},
                           CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_zero_grad(o);
        for (int i = 0; i < 7; i++) ck_assert_float_eq(bucket[i], 0);
        ck_assert_ptr_eq(a->grad->data, bucket);
        ck_assert_ptr_eq(b->grad->data, bucket + 3);
        ck_assert_ptr_eq(c->grad, cg); /* zeroed in place, not dropped */
        ck_assert_float_eq(c->grad->data[0], 0);
        ck_assert_float_eq(c->grad->data[1], 0);
        /* Backward accumulates into the bucket again. */
        CT_SCOPE {
            ct_tensor *y = ct_mul_scalar(b, 2);
            ct_backward_ex(y, ct_ones(CT_SHAPE(4)), false);
        }
        ck_assert_float_eq(bucket[3], 2);
        ck_assert_float_eq(bucket[6], 2);
        ct_optim_free(o);
        ct_release(a);
        ct_release(b);
        ct_release(c);
    }
}
END_TEST

/* ---- schedules --------------------------------------------------------------------- */

START_TEST(schedules) {
    ct_schedule none = {.kind = CT_SCHED_NONE};
    ck_assert(ct_schedule_lr(&none, 0.1, 1000, 7) == 0.1);

    ct_schedule st = {.kind = CT_SCHED_STEP, .step_size = 3, .gamma = 0.5};
    for (int e = 0; e < 8; e++) ck_assert_double_eq_tol(ct_schedule_lr(&st, 0.1, 999, e), ref_steplr[e], 1e-15);

    ct_schedule cs = {.kind = CT_SCHED_COSINE, .total = 10, .min_lr = 0.01};
    for (int e = 0; e <= 10; e++) ck_assert_double_eq_tol(ct_schedule_lr(&cs, 0.1, 999, e), ref_cosine[e], 1e-15);
    ck_assert(ct_schedule_lr(&cs, 0.1, 0, 0) == 0.1);                      /* start: base */
    ck_assert_double_eq_tol(ct_schedule_lr(&cs, 0.1, 0, 5), 0.055, 1e-15); /* midpoint */
    ck_assert_double_eq_tol(ct_schedule_lr(&cs, 0.1, 0, 10), 0.01, 1e-15); /* end: min */
    ck_assert_double_eq_tol(ct_schedule_lr(&cs, 0.1, 0, 25), 0.01, 1e-15); /* held after */
    /* Per-step cosine follows the step, not the epoch. */
    cs.per_step = true;
    ck_assert_double_eq_tol(ct_schedule_lr(&cs, 0.1, 5, 0), 0.055, 1e-15);

    ct_schedule wu = {.kind = CT_SCHED_NONE, .warmup_steps = 4};
    for (int s = 0; s < 6; s++) ck_assert_double_eq_tol(ct_schedule_lr(&wu, 0.1, s, 0), ref_warmup[s], 1e-15);

    /* Warmup multiplies the schedule's lr: step 1 of 4, cosine at epoch 5 -> 0.055 * 2/4;
     * step decay at epoch 3 with warmup step 0 -> 0.05 / 4. */
    ct_schedule cw = {.kind = CT_SCHED_COSINE, .total = 10, .min_lr = 0.01, .warmup_steps = 4};
    ck_assert_double_eq_tol(ct_schedule_lr(&cw, 0.1, 1, 5), 0.055 * 0.5, 1e-15);
    ck_assert_double_eq_tol(ct_schedule_lr(&cw, 0.1, 4, 5), 0.055, 1e-15);
    ct_schedule sw = {.kind = CT_SCHED_STEP, .step_size = 3, .gamma = 0.5, .warmup_steps = 4};
    ck_assert_double_eq_tol(ct_schedule_lr(&sw, 0.1, 0, 3), 0.0125, 1e-15);

    /* Each group scales its own base lr. */
    CT_SCOPE {
        ct_tensor *a = param(1, (float[]){0}), *b = param(1, (float[]){0});
        ct_optim *o = ct_optim_new(ct_adam_config(1e-3, 0));
        ct_optim_add_group(o, 1, (const char *[]){"a"}, &a, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(o, 1, (const char *[]){"b"}, &b, 1e-4, CT_OPTIM_DEFAULT);
        ct_schedule half = {.kind = CT_SCHED_STEP, .step_size = 1, .gamma = 0.5};
        ct_optim_apply_schedule(o, &half, 0, 2);
        ck_assert_double_eq_tol(ct_optim_lr(o, 0), 2.5e-4, 1e-18);
        ck_assert_double_eq_tol(ct_optim_lr(o, 1), 2.5e-5, 1e-18);
        ck_assert(ct_optim_base_lr(o, 0) == 1e-3 && ct_optim_base_lr(o, 1) == 1e-4);
        ct_optim_free(o);
        ct_release(a);
        ct_release(b);
    }
}
END_TEST

/* ---- segments ---------------------------------------------------------------------- */

static const int64_t seg_sizes[] = {5, 12, 1, 33};
static const char *seg_names[] = {"0.weight", "0.bias", "1.weight", "1.bias"};
#define NSEG 4
#define SEG_TOTAL (5 + 12 + 1 + 33)

/* A model whose parameters either share one slab (grads in a matching slab) or are
 * separate tensors with their own grads. */
typedef struct {
    ct_tensor *p[NSEG];
    float *pslab, *gslab;
} model;

static void model_init(model *m, bool packed, uint64_t seed) {
    ct_rng r;
    ct_rng_seed(&r, seed);
    float v[SEG_TOTAL];
    for (int i = 0; i < SEG_TOTAL; i++) v[i] = ct_rng_normal(&r);
    m->pslab = m->gslab = NULL;
    if (packed) {
        m->pslab = malloc(sizeof v);
        m->gslab = malloc(sizeof v);
        memcpy(m->pslab, v, sizeof v);
    }
    int64_t off = 0;
    for (int k = 0; k < NSEG; k++) {
        if (packed) {
            m->p[k] = ct_own(ct_tensor_wrap(CT_SHAPE(seg_sizes[k]), m->pslab + off));
            ct_set_requires_grad(m->p[k], true);
            ct_set_grad_storage(m->p[k], m->gslab + off);
        } else {
            m->p[k] = param(seg_sizes[k], v + off);
        }
        off += seg_sizes[k];
    }
}

static void model_grads(model *m, ct_rng *r) {
    for (int k = 0; k < NSEG; k++) {
        float g[SEG_TOTAL];
        for (int64_t i = 0; i < seg_sizes[k]; i++) g[i] = ct_rng_normal(r);
        put_grad(m->p[k], g);
    }
}

static void model_free(model *m) {
    for (int k = 0; k < NSEG; k++) ct_release(m->p[k]);
    free(m->pslab);
    free(m->gslab);
}

static ct_optim_config seg_cfg(int i) {
    ct_optim_config c[] = {ct_adam_config(0.01, 0.1), ct_adamw_config(0.01, 0.1),
                           ct_sgd_config(0.05, 0.9, 0.01, true)};
    return c[i];
}

START_TEST(segments_fuse_packed_params) {
    CT_SCOPE {
        model a, b;
        model_init(&a, true, 3);
        model_init(&b, false, 3);
        ct_optim *oa = ct_optim_new(seg_cfg(_i)), *ob = ct_optim_new(seg_cfg(_i));
        ct_optim_add_group(oa, NSEG, seg_names, a.p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(ob, NSEG, seg_names, b.p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_rng ra, rb;
        ct_rng_seed(&ra, 11);
        ct_rng_seed(&rb, 11);
        for (int t = 0; t < 5; t++) {
            model_grads(&a, &ra);
            model_grads(&b, &rb);
            ct_optim_step(oa);
            ct_optim_step(ob);
            ck_assert_int_eq(ct_optim_last_segments(oa), 1);
            ck_assert_int_eq(ct_optim_last_segments(ob), NSEG);
        }
        for (int k = 0; k < NSEG; k++)
            ck_assert_mem_eq(a.p[k]->data, b.p[k]->data, (size_t)seg_sizes[k] * sizeof(float));
        /* A hole (a param without a gradient) splits the run in two. */
        ct_clear_grad(b.p[1]);
        ct_optim_step(ob);
        ck_assert_int_eq(ct_optim_last_segments(ob), NSEG - 1);
        ct_optim_free(oa);
        ct_optim_free(ob);
        model_free(&a);
        model_free(&b);
    }
}
END_TEST

START_TEST(segments_split_by_group_and_step) {
    CT_SCOPE {
        model a;
        model_init(&a, true, 4);
        ct_optim *o = ct_optim_new(ct_adam_config(0.01, 0));
        ct_optim_add_group(o, 2, seg_names, a.p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(o, 2, seg_names + 2, a.p + 2, 0.001, CT_OPTIM_DEFAULT);
        ct_rng r;
        ct_rng_seed(&r, 1);
        model_grads(&a, &r);
        ct_optim_step(o);
        ck_assert_int_eq(ct_optim_last_segments(o), 2); /* one per group */
        /* Param 3 misses a step: its step count falls behind param 2's, so they can no
         * longer share bias corrections. */
        float *g3 = a.p[3]->grad->data;
        ct_tensor *g = a.p[3]->grad;
        a.p[3]->grad = NULL;
        ct_optim_step(o);
        ck_assert_int_eq(ct_optim_last_segments(o), 2);
        a.p[3]->grad = g;
        ck_assert_ptr_eq(g->data, g3);
        ct_optim_step(o);
        ck_assert_int_eq(ct_optim_param_steps(o, "1.weight"), 3);
        ck_assert_int_eq(ct_optim_param_steps(o, "1.bias"), 2);
        ck_assert_int_eq(ct_optim_last_segments(o), 3);
        ct_optim_free(o);
        model_free(&a);
    }
}
END_TEST

/* ---- checkpoint state -------------------------------------------------------------- */

typedef struct {
    char name[64];
    float *data;
    int64_t numel;
    double value;
} saved;

typedef struct {
    saved e[64];
    int n;
} store;

static ct_status save_tensor(void *ctx, const char *name, const float *data, int64_t numel) {
    store *s = ctx;
    saved *e = &s->e[s->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->data = malloc((size_t)numel * sizeof(float));
    memcpy(e->data, data, (size_t)numel * sizeof(float));
    e->numel = numel;
    return CT_OK;
}

static ct_status save_scalar(void *ctx, const char *name, double value) {
    store *s = ctx;
    saved *e = &s->e[s->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->data = NULL;
    e->value = value;
    return CT_OK;
}

static void store_free(store *s) {
    for (int i = 0; i < s->n; i++) free(s->e[i].data);
    s->n = 0;
}

static const saved *store_find(const store *s, const char *name) {
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->e[i].name, name) == 0) return &s->e[i];
    return NULL;
}

/* Loads everything in reverse order (as a file may list it) and finishes. */
static ct_status store_load(ct_optim *o, const store *s, int skip) {
    ct_optim_load_begin(o);
    for (int i = s->n - 1; i >= 0; i--) {
        if (i == skip) continue;
        const saved *e = &s->e[i];
        ct_status st = e->data ? ct_optim_load_tensor(o, e->name, e->data, e->numel)
                               : ct_optim_load_scalar(o, e->name, e->value);
        if (st != CT_OK) return st;
    }
    return ct_optim_load_end(o);
}

START_TEST(state_save_restore_is_exact) {
    CT_SCOPE {
        ct_optim_config cfg = seg_cfg(_i);
        model a, b;
        model_init(&a, true, 8);
        model_init(&b, true, 99); /* other values: the checkpoint overwrites them */
        ct_optim *oa = ct_optim_new(cfg), *ob = ct_optim_new(cfg);
        ct_optim_add_group(oa, 3, seg_names, a.p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(oa, 1, seg_names + 3, a.p + 3, 0.003, CT_OPTIM_DEFAULT);
        ct_optim_add_group(ob, 3, seg_names, b.p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(ob, 1, seg_names + 3, b.p + 3, 0.003, CT_OPTIM_DEFAULT);
        ct_rng r;
        ct_rng_seed(&r, 21);
        for (int t = 0; t < 3; t++) {
            model_grads(&a, &r);
            if (t == 0) { /* "1.weight" starts one step late */
                ct_tensor *g = a.p[2]->grad;
                a.p[2]->grad = NULL;
                ct_optim_step(oa);
                a.p[2]->grad = g;
            } else {
                ct_optim_step(oa);
            }
        }
        ct_optim_set_lr(oa, 1, 0.0025);

        store s = {.n = 0};
        ck_assert_int_eq(ct_optim_state_foreach(oa, save_tensor, save_scalar, &s), CT_OK);
        int nmom = cfg.kind == CT_OPTIM_SGD ? 1 : 2;
        ck_assert_int_eq(s.n, NSEG * (nmom + 1) + 2);
        const char *m0 = cfg.kind == CT_OPTIM_SGD ? "optim.0.bias.momentum_buffer" : "optim.0.bias.exp_avg";
        const saved *e = store_find(&s, m0);
        ck_assert_ptr_nonnull(e);
        ck_assert_int_eq(e->numel, 12);
        ck_assert(store_find(&s, "optim.0.weight.step")->value == 3);
        ck_assert(store_find(&s, "optim.1.weight.step")->value == 2);
        ck_assert(store_find(&s, "optim.group.1.lr")->value == 0.0025);

        /* The parameters travel separately (the module's state). */
        memcpy(b.pslab, a.pslab, SEG_TOTAL * sizeof(float));
        ck_assert_int_eq(store_load(ob, &s, -1), CT_OK);
        ck_assert_int_eq(ct_optim_state_params(ob), NSEG);
        ck_assert_int_eq(ct_optim_param_steps(ob, "1.weight"), 2);
        ck_assert(ct_optim_lr(ob, 1) == 0.0025);

        ct_rng rb = r;
        for (int t = 0; t < 4; t++) {
            model_grads(&a, &r);
            model_grads(&b, &rb);
            ct_optim_step(oa);
            ct_optim_step(ob);
        }
        ck_assert_mem_eq(a.pslab, b.pslab, SEG_TOTAL * sizeof(float));
        /* Restored state is laid out in registration order again, so the runs are the
         * uninterrupted ones: [0.weight 0.bias] [1.weight (a step behind)] [1.bias]. */
        ck_assert_int_eq(ct_optim_last_segments(oa), 3);
        ck_assert_int_eq(ct_optim_last_segments(ob), 3);

        /* Missing pieces are reported and leave no half state behind. */
        ck_assert_int_eq(store_load(ob, &s, 0), CT_ERR_FORMAT);
        ck_assert_ptr_nonnull(strstr(ct_last_error(), "0.weight"));
        ck_assert_int_eq(ct_optim_state_params(ob), 0);

        store_free(&s);
        ct_optim_free(oa);
        ct_optim_free(ob);
        model_free(&a);
        model_free(&b);
    }
}
END_TEST

START_TEST(state_load_errors) {
    CT_SCOPE {
        ct_tensor *p = param(3, (float[]){1, 2, 3});
        ct_optim *o = ct_optim_new(ct_adam_config(1e-3, 0));
        ct_optim_add_group(o, 1, one_name, &p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        float d[4] = {0};
        ct_optim_load_begin(o);
        ck_assert_int_eq(ct_optim_load_tensor(o, "optim.v.exp_avg", d, 3), CT_ERR_SHAPE);
        ck_assert_ptr_nonnull(strstr(ct_last_error(), "'v'"));
        ck_assert_int_eq(ct_optim_load_tensor(o, "optim.w.exp_avg", d, 4), CT_ERR_SHAPE);
        ck_assert_int_eq(ct_optim_load_tensor(o, "optim.w.momentum_buffer", d, 3), CT_ERR_SHAPE);
        ck_assert_int_eq(ct_optim_load_tensor(o, "model.w.exp_avg", d, 3), CT_ERR_FORMAT);
        ck_assert_int_eq(ct_optim_load_scalar(o, "optim.w.step", 2.5), CT_ERR_FORMAT);
        ck_assert_int_eq(ct_optim_load_scalar(o, "optim.w.step", 0), CT_ERR_FORMAT);
        ck_assert_int_eq(ct_optim_load_scalar(o, "optim.group.3.lr", 0.1), CT_ERR_SHAPE);
        ck_assert_int_eq(ct_optim_load_scalar(o, "optim.w.lr", 0.1), CT_ERR_SHAPE);
        ck_assert_int_eq(ct_optim_load_tensor(o, "optim.w.exp_avg", d, 3), CT_OK);
        ck_assert_int_eq(ct_optim_load_tensor(o, "optim.w.exp_avg_sq", d, 3), CT_OK);
        ck_assert_int_eq(ct_optim_load_end(o), CT_ERR_FORMAT); /* no step */
        ck_assert_ptr_nonnull(strstr(ct_last_error(), "optim.w.step"));
        ct_optim_free(o);
        ct_release(p);
    }
}
END_TEST

/* ---- end to end -------------------------------------------------------------------- */

static ct_status first_ptr(void *ctx, const char *name, const float *data, int64_t numel) {
    (void)name, (void)numel;
    const float **p = ctx;
    if (!*p) *p = data;
    return CT_OK;
}

/* The address of the optimizer's first state tensor (NULL if it has none). */
static const float *state_ptr(const ct_optim *o) {
    const float *p = NULL;
    ct_optim_state_foreach(o, first_ptr, NULL, &p);
    return p;
}

/* Fits y = 3x + 1 with a linear layer; loss = mean((out - y)^2), whose gradient
 * 2 (out - y) / N is fed to backward by hand. The lr follows a cosine schedule to 0. */
START_TEST(fit_line) {
    ct_optim_config cfgs[] = {ct_sgd_config(0.1, 0.9, 0, false), ct_adam_config(0.05, 0),
                              ct_adamw_config(0.05, 1e-4)};
    enum { N = 16, STEPS = 400 };
    CT_SCOPE {
        float xs[N], ys[N];
        for (int i = 0; i < N; i++) {
            xs[i] = -1 + 2.0f * (float)i / (N - 1);
            ys[i] = 3 * xs[i] + 1;
        }
        ct_tensor *x = ct_own(ct_from_data(CT_SHAPE(N, 1), xs));
        ct_tensor *w = param(1, (float[]){0}), *b = param(1, (float[]){0});
        ct_tensor *w2 = ct_own(ct_view_raw(w, CT_SHAPE(1, 1)));
        ct_optim *o = ct_optim_new(cfgs[_i]);
        ct_optim_add_group(o, 2, (const char *[]){"0.weight", "0.bias"}, (ct_tensor *[]){w, b},
                           CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_schedule cos = {.kind = CT_SCHED_COSINE, .per_step = true, .total = STEPS, .warmup_steps = 10};
        int64_t mallocs = 0;
        const float *slab = NULL;
        double loss = 0, first_loss = 0;
        for (int t = 0; t < STEPS; t++) {
            if (t == 5) {
                mallocs = ct_stats_get().mallocs;
                slab = state_ptr(o);
            }
            loss = 0;
            CT_SCOPE {
                /* w2 is a view of w's storage, but autograd sees it as its own leaf, so
                 * its gradient is copied back into w's. */
                ct_set_requires_grad(w2, true);
                ct_tensor *out = ct_linear(x, w2, b);
                ct_tensor *g = ct_empty_like(out);
                for (int i = 0; i < N; i++) {
                    double d = out->data[i] - ys[i];
                    loss += d * d / N;
                    g->data[i] = (float)(2 * d / N);
                }
                ct_backward_ex(out, g, false);
                float gw = w2->grad->data[0];
                ct_clear_grad(w2);
                put_grad(w, &gw);
            }
            if (t == 0) first_loss = loss;
            ct_optim_apply_schedule(o, &cos, t, 0);
            ct_optim_step(o);
            ct_optim_zero_grad(o);
        }
        /* From step 5 on, a whole training step (forward, backward, update) reuses
         * cached blocks: no system allocation. */
        ck_assert_int_eq(ct_stats_get().mallocs, mallocs);
        ck_assert_ptr_eq(state_ptr(o), slab); /* and the state slab was never reallocated */
        ck_assert_msg(fabsf(w->data[0] - 3) < 1e-3 && fabsf(b->data[0] - 1) < 1e-3,
                      "cfg %d: w %g b %g", _i, w->data[0], b->data[0]);
        ck_assert(loss < 1e-5 * first_loss);
        ct_optim_free(o);
        ct_release(x);
        ct_release(w);
        ct_release(w2);
        ct_release(b);
    }
}
END_TEST

/* ---- misuse ------------------------------------------------------------------------ */

START_TEST(nesterov_without_momentum_aborts) { ct_optim_new(ct_sgd_config(0.1, 0, 0, true)); }
END_TEST

START_TEST(param_in_two_groups_aborts) {
    CT_SCOPE {
        ct_tensor *p = ct_zeros(CT_SHAPE(2));
        ct_optim *o = ct_optim_new(ct_adam_config(1e-3, 0));
        ct_optim_add_group(o, 1, (const char *[]){"a"}, &p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
        ct_optim_add_group(o, 1, (const char *[]){"b"}, &p, CT_OPTIM_DEFAULT, CT_OPTIM_DEFAULT);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("optim");
    TCase *tu = tcase_create("update");
    tcase_add_loop_test(tu, torch_reference, 0, NCASES);
    tcase_add_loop_test(tu, double_reference, 0, NCASES);
    tcase_add_test(tu, adamw_vs_adam);
    tcase_add_test(tu, nesterov_and_weight_decay_change_the_update);
    suite_add_tcase(s, tu);
    TCase *ts = tcase_create("state");
    tcase_add_test(ts, null_grad_is_skipped);
    tcase_add_test(ts, frozen_params_never_get_state);
    tcase_add_test(ts, two_groups_different_lr);
    tcase_add_test(ts, add_group_mid_run);
    tcase_add_test(ts, zero_grad_keeps_external_storage);
    tcase_add_loop_test(ts, segments_fuse_packed_params, 0, 3);
    tcase_add_test(ts, segments_split_by_group_and_step);
    tcase_add_loop_test(ts, state_save_restore_is_exact, 0, 3);
    tcase_add_test(ts, state_load_errors);
    suite_add_tcase(s, ts);
    TCase *tsch = tcase_create("schedule");
    tcase_add_test(tsch, schedules);
    suite_add_tcase(s, tsch);
    TCase *te = tcase_create("end_to_end");
    tcase_add_loop_test(te, fit_line, 0, 3);
    suite_add_tcase(s, te);
    TCase *tx = tcase_create("errors");
    tcase_add_test_raise_signal(tx, nesterov_without_momentum_aborts, SIGABRT);
    tcase_add_test_raise_signal(tx, param_in_two_groups_aborts, SIGABRT);
    suite_add_tcase(s, tx);
    return ct_test_run(s);
}
