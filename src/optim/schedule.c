/* Learning-rate schedules as a pure function of (base lr, step, epoch); the formulas are
 * in optim.h. Closed forms rather than PyTorch's chained updates, so a resumed run gets
 * the same lr without any scheduler state in the checkpoint. */
#include "internal.h"

#include <math.h>

double ct_schedule_lr(const ct_schedule *s, double base_lr, int64_t step, int64_t epoch) {
    CT_ASSERT(step >= 0 && epoch >= 0, "schedule: negative step %lld or epoch %lld",
              (long long)step, (long long)epoch);
    CT_ASSERT(s->warmup_steps >= 0, "schedule: negative warmup_steps %lld",
              (long long)s->warmup_steps);
    int64_t t = s->per_step ? step : epoch;
    double lr;
    switch (s->kind) {
    case CT_SCHED_NONE: lr = base_lr; break;
    case CT_SCHED_STEP:
        CT_ASSERT(s->step_size > 0, "schedule: step_size %lld must be > 0", (long long)s->step_size);
        lr = base_lr * pow(s->gamma, (double)(t / s->step_size));
        break;
    case CT_SCHED_COSINE: {
        CT_ASSERT(s->total > 0, "schedule: cosine total %lld must be > 0", (long long)s->total);
        double tc = (double)(t < s->total ? t : s->total);
        lr = s->min_lr + (base_lr - s->min_lr) * (1 + cos(M_PI * tc / (double)s->total)) / 2;
        break;
    }
    default: ct_fatal("schedule: unknown kind %d", (int)s->kind);
    }
    if (step < s->warmup_steps) lr *= (double)(step + 1) / (double)s->warmup_steps;
    return lr;
}

void ct_optim_apply_schedule(ct_optim *o, const ct_schedule *s, int64_t step, int64_t epoch) {
    for (int g = 0; g < o->ngroups; g++)
        ct_optim_set_lr(o, g, ct_schedule_lr(s, o->groups[g].base_lr, step, epoch));
}
