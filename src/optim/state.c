/* Checkpoint support: the optimizer's state as named float tensors and named scalars, and
 * restoring from them. The io layer decides how they are stored. */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define PREFIX "optim."
#define GROUP_PREFIX "optim.group."

/* Names are built in a buffer that grows with the longest parameter name. */
static char *name_buf(char **buf, size_t *cap, const char *pname, const char *suffix) {
    size_t need = strlen(PREFIX) + strlen(pname) + 1 + strlen(suffix) + 1;
    if (need > *cap) {
        ct_free(*buf, *cap);
        *cap = need;
        *buf = ct_alloc(need);
    }
    snprintf(*buf, *cap, PREFIX "%s.%s", pname, suffix);
    return *buf;
}

ct_status ct_optim_state_foreach(const ct_optim *o, ct_optim_tensor_fn tf,
                                 ct_optim_scalar_fn sf, void *ctx) {
    ct_status st = CT_OK;
    size_t cap = 64;
    char *buf = ct_alloc(cap);
    for (int i = 0; i < o->nparams && st == CT_OK; i++) {
        const ct__optim_param *e = &o->params[i];
        if (!e->has_state) continue;
        for (int k = 0; k < o->nmom && st == CT_OK && tf; k++)
            st = tf(ctx, name_buf(&buf, &cap, e->name, ct__optim_moment_name(o, k)),
                    o->slab + k * o->cap + e->off, e->p->numel);
        if (st == CT_OK && sf) st = sf(ctx, name_buf(&buf, &cap, e->name, "step"), (double)e->step);
    }
    for (int g = 0; g < o->ngroups && st == CT_OK && sf; g++) {
        char gname[64];
        snprintf(gname, sizeof gname, GROUP_PREFIX "%d.lr", g);
        st = sf(ctx, gname, o->groups[g].lr);
    }
    ct_free(buf, cap);
    return st;
}

void ct_optim_load_begin(ct_optim *o) { ct__optim_drop_state(o); }

/* Splits "optim.<param>.<suffix>" into the parameter's index and the suffix. */
static ct_status parse_name(const ct_optim *o, const char *name, int *idx, const char **suffix) {
    size_t plen = strlen(PREFIX);
    const char *dot = strrchr(name, '.');
    if (strncmp(name, PREFIX, plen) != 0 || !dot || dot < name + plen + 1)
        return ct_error(CT_ERR_FORMAT, "optimizer state '%s': expected optim.<param>.<field>", name);
    size_t len = (size_t)(dot - (name + plen));
    for (int i = 0; i < o->nparams; i++) {
        const char *pn = o->params[i].name;
        if (strlen(pn) == len && strncmp(pn, name + plen, len) == 0) {
            *idx = i;
            *suffix = dot + 1;
            return CT_OK;
        }
    }
    return ct_error(CT_ERR_SHAPE, "optimizer state '%s': no parameter named '%.*s' in the optimizer",
                    name, (int)len, name + plen);
}

static void ensure_state(ct_optim *o, int i) {
    if (!o->params[i].has_state) ct__optim_append_state(o, i);
}

ct_status ct_optim_load_tensor(ct_optim *o, const char *name, const float *data, int64_t numel) {
    int i;
    const char *suffix;
    ct_status st = parse_name(o, name, &i, &suffix);
    if (st != CT_OK) return st;
    int k = -1;
    for (int j = 0; j < o->nmom; j++)
        if (strcmp(suffix, ct__optim_moment_name(o, j)) == 0) k = j;
    if (k < 0)
        return ct_error(CT_ERR_SHAPE, "optimizer state '%s': '%s' is not a state tensor of this "
                        "optimizer (kind %d, %d moment buffers)", name, suffix, (int)o->cfg.kind,
                        o->nmom);
    ct__optim_param *e = &o->params[i];
    if (numel != e->p->numel)
        return ct_error(CT_ERR_SHAPE, "optimizer state '%s': %lld elements, parameter %s has %lld",
                        name, (long long)numel, CT_SHAPE_STR(e->p), (long long)e->p->numel);
    ensure_state(o, i);
    memcpy(o->slab + k * o->cap + e->off, data, (size_t)numel * sizeof(float));
    e->loaded |= CT__LOADED_MOM(k);
    return CT_OK;
}

ct_status ct_optim_load_scalar(ct_optim *o, const char *name, double value) {
    size_t gl = strlen(GROUP_PREFIX);
    if (strncmp(name, GROUP_PREFIX, gl) == 0) {
        int g, used = 0;
        if (sscanf(name + gl, "%d.lr%n", &g, &used) == 1 && name[gl + (size_t)used] == '\0') {
            if (g < 0 || g >= o->ngroups)
                return ct_error(CT_ERR_SHAPE, "optimizer state '%s': the optimizer has %d groups",
                                name, o->ngroups);
            if (!(value >= 0) || isinf(value))
                return ct_error(CT_ERR_FORMAT, "optimizer state '%s': invalid lr %g", name, value);
            o->groups[g].lr = value;
            return CT_OK;
        }
    }
    int i;
    const char *suffix;
    ct_status st = parse_name(o, name, &i, &suffix);
    if (st != CT_OK) return st;
    if (strcmp(suffix, "step") != 0)
        return ct_error(CT_ERR_SHAPE, "optimizer state '%s': unknown scalar '%s'", name, suffix);
    /* A parameter has state only after a step, and float steps must be whole. */
    if (!(value >= 1 && value <= 9007199254740992.0) || value != floor(value))
        return ct_error(CT_ERR_FORMAT, "optimizer state '%s': invalid step count %g", name, value);
    ensure_state(o, i);
    o->params[i].step = (int64_t)value;
    o->params[i].loaded |= CT__LOADED_STEP;
    return CT_OK;
}

ct_status ct_optim_load_end(ct_optim *o) {
    unsigned want = CT__LOADED_STEP;
    for (int k = 0; k < o->nmom; k++) want |= CT__LOADED_MOM(k);
    ct_status st = CT_OK;
    for (int i = 0; i < o->nparams && st == CT_OK; i++) {
        ct__optim_param *e = &o->params[i];
        if (!e->has_state || (e->loaded & want) == want) continue;
        const char *missing = "step";
        for (int k = 0; k < o->nmom; k++)
            if (!(e->loaded & CT__LOADED_MOM(k))) missing = ct__optim_moment_name(o, k);
        st = ct_error(CT_ERR_FORMAT, "optimizer state for '%s' is incomplete: optim.%s.%s missing",
                      e->name, e->name, missing);
    }
    for (int i = 0; i < o->nparams; i++) o->params[i].loaded = 0;
    if (st != CT_OK) {
        ct__optim_drop_state(o); /* never step from half a state */
        return st;
    }
    ct__optim_relayout(o); /* back to registration order, so segments fuse again */
    return CT_OK;
}
