/* Built-in models and the layer-list parser used by configs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"

ct_module *ct_nn_mlp(int64_t in, int64_t classes, ct_rng *rng) {
    ct_module *m = ct_nn_sequential();
    ct_seq_add(m, NULL, ct_nn_flatten());
    ct_seq_add(m, NULL, ct_nn_linear(in, 256, true, rng));
    ct_seq_add(m, NULL, ct_nn_relu());
    ct_seq_add(m, NULL, ct_nn_linear(256, 128, true, rng));
    ct_seq_add(m, NULL, ct_nn_relu());
    ct_seq_add(m, NULL, ct_nn_linear(128, classes, true, rng));
    return m;
}

ct_module *ct_nn_cnn(int64_t in_ch, int64_t hw, int64_t classes, float dropout, ct_rng *rng) {
    ct_module *bb = ct_nn_sequential();
    int64_t ch = in_ch;
    for (int64_t out = 32; out <= 64; out *= 2) {
        ct_seq_add(bb, NULL, ct_nn_conv2d(ch, out, 3, 1, 1, true, rng));
        ct_seq_add(bb, NULL, ct_nn_batchnorm2d(out));
        ct_seq_add(bb, NULL, ct_nn_relu());
        ct_seq_add(bb, NULL, ct_nn_maxpool2d(2, 2));
        ch = out;
        hw /= 2;
    }
    ct_seq_add(bb, NULL, ct_nn_flatten());
    ct_module *head = ct_nn_sequential();
    ct_seq_add(head, NULL, ct_nn_linear(ch * hw * hw, 128, true, rng));
    ct_seq_add(head, NULL, ct_nn_relu());
    ct_seq_add(head, NULL, ct_nn_dropout(dropout, ct_rng_next(rng)));
    ct_seq_add(head, NULL, ct_nn_linear(128, classes, true, rng));
    ct_module *m = ct_nn_sequential();
    ct_seq_add(m, "backbone", bb);
    ct_seq_add(m, "head", head);
    return m;
}

/* ---- layer lists ------------------------------------------------------------------------- */

/* Parses up to `max` integer arguments after the layer name ("conv:32:3:1:1"). Returns
 * the count, or -1 if an argument is not an integer >= 0. */
static int int_args(char *s, long *v, int max) {
    int n = 0;
    for (char *save = NULL, *a = strtok_r(s, ":", &save); a; a = strtok_r(NULL, ":", &save)) {
        char *end;
        if (n == max) return -1;
        v[n] = strtol(a, &end, 10);
        if (*end || end == a || v[n] < 0) return -1;
        n++;
    }
    return n;
}

static int64_t prod(int nd, const int64_t *s) {
    int64_t p = 1;
    for (int i = 0; i < nd; i++) p *= s[i];
    return p;
}

ct_status ct_nn_from_spec(const char *spec, int ndim, const int64_t *in_shape, float dropout,
                          ct_rng *rng, ct_module **out) {
    char *buf = ct_strdup(spec);
    int nd = ndim;
    int64_t sh[CT_MAX_DIMS];
    memcpy(sh, in_shape, (size_t)ndim * sizeof *sh);
    ct_module *m = ct_nn_sequential();
    ct_status st = CT_OK;
    int item = 0;
    for (char *save = NULL, *it = strtok_r(buf, ", ", &save); it && st == CT_OK;
         it = strtok_r(NULL, ", ", &save), item++) {
        char *colon = strchr(it, ':');
        char *args = colon ? colon + 1 : (char *)"";
        if (colon) *colon = 0;
        long v[4];
        int na = *args ? int_args(args, v, 4) : 0;
        ct_module *layer = NULL;
        const char *want = NULL;
        if (na < 0) {
            want = "non-negative integer arguments";
        } else if (!strcmp(it, "flatten") && na == 0) {
            layer = ct_nn_flatten();
            sh[0] = prod(nd, sh), nd = 1;
        } else if (!strcmp(it, "linear") && (na == 1 || na == 2)) {
            if (nd != 1) want = "a flat input (add 'flatten' first)";
            else {
                layer = ct_nn_linear(sh[0], v[0], na == 1 || v[1], rng);
                sh[0] = v[0];
            }
        } else if (!strcmp(it, "conv") && na >= 2) {
            long stride = na > 2 ? v[2] : 1, pad = na > 3 ? v[3] : 0;
            if (nd != 3) want = "an image input [C, H, W]";
            else if (stride < 1) want = "stride >= 1";
            else {
                layer = ct_nn_conv2d(sh[0], v[0], (int)v[1], (int)stride, (int)pad, true, rng);
                sh[0] = v[0];
                sh[1] = (sh[1] + 2 * pad - v[1]) / stride + 1;
                sh[2] = (sh[2] + 2 * pad - v[1]) / stride + 1;
            }
        } else if (!strcmp(it, "bn") && na == 0) {
            layer = nd == 3 ? ct_nn_batchnorm2d(sh[0]) : nd == 1 ? ct_nn_batchnorm1d(sh[0]) : NULL;
            if (!layer) want = "a [C] or [C, H, W] input";
        } else if ((!strcmp(it, "maxpool") || !strcmp(it, "avgpool")) && (na == 1 || na == 2)) {
            long stride = na > 1 ? v[1] : v[0];
            if (nd != 3) want = "an image input [C, H, W]";
            else if (v[0] < 1 || stride < 1) want = "kernel and stride >= 1";
            else {
                layer = it[0] == 'm' ? ct_nn_maxpool2d((int)v[0], (int)stride)
                                     : ct_nn_avgpool2d((int)v[0], (int)stride);
                sh[1] = (sh[1] - v[0]) / stride + 1;
                sh[2] = (sh[2] - v[0]) / stride + 1;
            }
        } else if (!strcmp(it, "relu") && na == 0) {
            layer = ct_nn_relu();
        } else if (!strcmp(it, "gelu") && na == 0) {
            layer = ct_nn_gelu();
        } else if (!strcmp(it, "tanh") && na == 0) {
            layer = ct_nn_tanh();
        } else if (!strcmp(it, "dropout") && na <= 1) {
            /* dropout:P with P in percent keeps the list integer-only; bare uses model.dropout */
            layer = ct_nn_dropout(na ? (float)v[0] / 100 : dropout, ct_rng_next(rng));
        } else {
            want = "one of flatten, linear:OUT[:BIAS], conv:OUT:K[:STRIDE[:PAD]], bn, relu, gelu, "
                   "tanh, maxpool:K[:S], avgpool:K[:S], dropout[:PERCENT]";
        }
        if (!layer) {
            st = ct_error(CT_ERR_CONFIG, "model.layers item %d '%s%s%s': expected %s", item + 1, it,
                          colon ? ":" : "", colon ? args : "", want);
        } else {
            ct_seq_add(m, NULL, layer);
        }
        for (int d = 0; d < nd && st == CT_OK; d++)
            if (sh[d] < 1)
                st = ct_error(CT_ERR_CONFIG, "model.layers item %d '%s': the output is empty", item + 1, it);
    }
    free(buf);
    if (st == CT_OK && m->nchildren == 0) st = ct_error(CT_ERR_CONFIG, "model.layers is empty");
    if (st != CT_OK) {
        ct_module_free(m);
        m = NULL;
    }
    *out = m;
    return st;
}
