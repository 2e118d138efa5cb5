/* ctrain train: the data-parallel training loop, evaluation after every epoch, atomic
 * checkpoints from rank 0 (at epoch ends, every output.checkpoint_every_steps and on a
 * preemption signal), and exact resume. ct_cmd_train at the end reads as the outline; the
 * run's files are output.c's, the feature cache features.c's. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

/* Every stochastic stream (shuffle, augmentation, dropout) is re-seeded from (seed, epoch,
 * rank) at the start of each epoch, so a resumed run replays the same batches, crops and
 * masks as an uninterrupted one. */
static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t z = a * 0x9e3779b97f4a7c15ULL + b + 0x632be59bd9b4e019ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void reseed_epoch(ct_run *r, ct_loader *l, int epoch) {
    uint64_t base = mix(mix(r->cfg.train.seed, (uint64_t)epoch), (uint64_t)r->d.rank);
    ct_rng_seed(ct_loader_rng(l), mix(base, 1));
    ct_named mods = ct_module_modules(r->model);
    for (int i = 0; i < mods.n; i++)
        ct_module_reseed(mods.owners[i], mix(base, 100 + (uint64_t)i));
    ct_named_free(&mods);
}

/* Adds a group with every trainable parameter that no group holds yet. */
static void add_group(ct_optim *o, ct_module *m, const bool *in_group, double lr) {
    ct_named t = ct_module_params(m, true);
    ct_named all = ct_module_params(m, false);
    const char **names = ct_malloc((size_t)t.n * sizeof *names + 1);
    ct_tensor **ps = ct_malloc((size_t)t.n * sizeof *ps + 1);
    int n = 0;
    for (int i = 0, j = 0; i < all.n; i++) {
        if (!all.tensors[i]->requires_grad) continue;
        if (!in_group || !in_group[i]) names[n] = t.names[j], ps[n++] = t.tensors[j];
        j++;
    }
    if (n) ct_optim_add_group(o, n, names, ps, lr, CT_OPTIM_DEFAULT);
    free(names);
    free(ps);
    ct_named_free(&t);
    ct_named_free(&all);
}

/* Staged unfreezing: after `unfreeze_after` epochs the named parameters join training in a
 * group of their own with a scaled-down lr. Every rank does this at the same epoch; DDP
 * rebuilds its buckets at the next step. */
static void maybe_unfreeze(ct_run *r, ct_optim *o, int epoch) {
    const ct_config *c = &r->cfg;
    if (c->train.unfreeze_after <= 0 || epoch != c->train.unfreeze_after || !*c->train.unfreeze) return;
    ct_named all = ct_module_params(r->model, false);
    bool *was = ct_malloc((size_t)all.n + 1);
    for (int i = 0; i < all.n; i++) was[i] = all.tensors[i]->requires_grad;
    int hits = ct_module_set_requires_grad(r->model, c->train.unfreeze, true);
    add_group(o, r->model, was, c->optim.lr * c->train.unfreeze_lr_scale);
    if (r->d.rank == 0)
        fprintf(stderr, "ctrain: after %d epochs: unfroze %d parameters (%s) with lr x %g\n", epoch, hits,
                c->train.unfreeze, c->train.unfreeze_lr_scale);
    free(was);
    ct_named_free(&all);
}

/* Loads the checkpoint to resume from into the model and optimizer; *mid gets this rank's
 * part of a mid-epoch checkpoint. */
static ct_status resume(ct_run *r, ct_optim *o, int *start_epoch, int64_t *step, ct_midepoch *mid) {
    char path[CT_CFG_STR + 300];
    ct_st_file *f = NULL;
    ct_progress p = {0};
    ct_status st = ct_run_open_resume(r, path, sizeof path, &f, &p);
    if (st != CT_OK) return st;
    /* Replay staged unfreezing so the optimizer has the groups the saved state names. */
    int at = r->cfg.train.unfreeze_after; /* unfreezing happens at most once, at this epoch */
    bool mid_epoch = p.epoch_step > 0; /* then epoch p.epoch has begun, and unfrozen if it is `at` */
    if (at > 0 && (at < p.epoch || (mid_epoch && at == p.epoch))) maybe_unfreeze(r, o, at);
    st = ct_run_explain_classes(r, ct_ckpt_load_model(f, r->model, true, NULL));
    if (st == CT_OK) st = ct_ckpt_load_optim(f, o);
    if (st == CT_OK) st = ct_midepoch_take(&r->d, r->model, &p, path, mid);
    if (st == CT_OK) {
        *start_epoch = (int)p.epoch;
        *step = p.step;
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: resumed from %s (epoch %lld, step %lld, written by %d ranks)\n",
                    path, (long long)p.epoch, (long long)p.step, p.world);
    }
    ct_st_free(f);
    return st;
}

/* A testing aid: CT_FAULT="RANK:WHERE[:KIND]" makes that rank fail at WHERE, a step (before
 * it) or eEPOCH (before that epoch's evaluation, 1-based): KIND fatal (the default, an
 * error that ends the job), kill (SIGKILL), stop (SIGSTOP: a hung rank) or term (SIGTERM).
 * With CT_FAULT_ONCE=FILE it fires only if FILE does not exist, and creates it, so a
 * relaunched job (ctrun --restarts) runs through. tests/faults uses it. */
static void maybe_inject_fault(const ct_dist *d, int64_t step, int eval_epoch) {
    const char *f = getenv("CT_FAULT"), *once = getenv("CT_FAULT_ONCE");
    int rank;
    char where[32], kind[16] = "fatal";
    if (!f || sscanf(f, "%d:%31[^:]:%15s", &rank, where, kind) < 2 || rank != d->rank) return;
    char *end;
    bool eval = where[0] == 'e';
    long long at = strtoll(where + eval, &end, 10);
    if (*end || (eval ? at != eval_epoch : eval_epoch || at != step)) return;
    if (once && *once) {
        if (access(once, F_OK) == 0) return;
        FILE *o = fopen(once, "w");
        if (o) fclose(o);
    }
    fprintf(stderr, "ctrain: rank %d: injecting fault %s (CT_FAULT=%s)\n", d->rank, kind, f);
    fflush(stderr);
    if (!strcmp(kind, "kill")) raise(SIGKILL);
    else if (!strcmp(kind, "stop")) raise(SIGSTOP); /* goes on if continued */
    else if (!strcmp(kind, "term")) raise(SIGTERM); /* preemption, if the signal is one of its */
    else ct_fatal("injected fault (CT_FAULT=%s) at %s %lld", f, eval ? "the evaluation of epoch" : "step", at);
}

/* ---- ct_cmd_train, step by step ------------------------------------------------------ */

/* What a training run holds from its set-up to its last epoch. */
typedef struct {
    ct_run *r;
    const ct_config *c;
    ct_ddp *ddp;
    ct_optim *opt;
    int start_epoch;
    int64_t step;        /* optimizer steps so far, over all epochs */
    ct_midepoch mid;     /* a resumed mid-epoch position (mid.at == 0: none) */
    ct_train_inputs in;  /* what the loop reads: the data sets or the feature cache */
    ct_sampler *sampler;
    ct_loader *loader;
    int64_t shard, steps; /* samples and steps per epoch on each rank */
    ct_schedule sched;
    FILE *mf;       /* metrics.jsonl, rank 0 */
    bool decoding;  /* image files are decoded during the epoch */
    bool preempted; /* every rank agreed to stop for a preemption signal */
} trainer;

/* One epoch's training, for its log records. */
typedef struct {
    double loss_sum; /* this rank's, over the steps not skipped */
    int64_t skipped; /* steps skipped for a non-finite loss (train.on_nonfinite) */
    double secs;
} epoch_stats;

/* DDP around the model, the optimizer, the state of the checkpoint resumed from, and the
 * preemption signal handlers. */
static ct_status setup_training(trainer *t) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    ct_ddp_config dc = ct_ddp_defaults();
    dc.bucket_bytes = (size_t)(c->dist.bucket_mb * 1048576);
    dc.first_bucket_bytes = (size_t)(c->dist.first_bucket_mb * 1048576);
    dc.shm = c->dist.shm;
    dc.timeout_s = c->dist.timeout_s;
    dc.buffers = c->dist.buffers;
    ct_status st = ct_ddp_new(r->model, &r->d, &dc, &t->ddp);
    if (st != CT_OK) { /* every rank got the same verdict from the collective check */
        if (r->d.rank == 0) fprintf(stderr, "ctrain: error: %s\n", ct_last_error());
        return st;
    }
    t->opt = ct_optim_new(c->optim);
    add_group(t->opt, r->model, NULL, c->optim.lr);
    if (c->train.resume) st = resume(r, t->opt, &t->start_epoch, &t->step, &t->mid);
    if (st == CT_OK) st = ct_preempt_install(c);
    return ct_run_check(&r->d, st);
}

/* Where a resumed run goes on, now that the steps per epoch are known. */
static void place_resume(trainer *t) {
    const ct_run *r = t->r;
    ct_midepoch *mid = &t->mid;
    if (mid->at && (!mid->exact || mid->at > t->steps || t->step != (int64_t)t->start_epoch * t->steps + mid->at)) {
        /* Another number of ranks (or batch size) deals the epoch out differently: the
         * samples this epoch has left are not known, so the next epoch starts afresh. */
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: warning: the checkpoint was written %lld steps into epoch %d by %d ranks; "
                    "on %d ranks with %lld steps/epoch that position does not exist, so training goes on "
                    "from the start of epoch %d\n", (long long)mid->at, t->start_epoch + 1,
                    mid->world, r->d.size, (long long)t->steps, t->start_epoch + 2);
        t->start_epoch++;
        ct_midepoch_free(mid);
    }
    /* Checkpoints fall on epoch boundaries, so the schedule goes on from epoch * steps. The
     * saved step count differs from that when the checkpoint came from another number of
     * ranks (or batch size): keeping it would leave the cosine short of its end. */
    if (mid->at) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: resuming %lld steps into epoch %d\n", (long long)mid->at, t->start_epoch + 1);
    } else if (t->start_epoch > 0 && t->step != (int64_t)t->start_epoch * t->steps) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: the checkpoint's step %lld is step %lld with %lld steps/epoch\n",
                    (long long)t->step, (long long)t->start_epoch * t->steps, (long long)t->steps);
        t->step = (int64_t)t->start_epoch * t->steps;
    }
}

/* The sampler and loader, the steps per epoch, where a resumed run goes on, and the
 * learning-rate schedule over the steps. */
static ct_status setup_steps(trainer *t) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    ct_sampler_opts so = {.n = r->train.n, .world = r->d.size, .rank = r->d.rank,
                          .mode = c->dist.shard,
                          .shuffle = true, .seed = c->train.seed};
    ct_status st = ct_sampler_new(&t->sampler, &so);
    if (st == CT_OK) st = ct_loader_new(&t->loader, t->in.train, &t->in.lo);
    if ((st = ct_run_check(&r->d, st)) != CT_OK) return st;
    t->shard = ct_sampler_size(t->sampler);
    /* Every rank has the same shard size, hence the same step count. */
    t->steps = c->train.drop_last ? t->shard / c->train.batch_size
                                  : (t->shard + c->train.batch_size - 1) / c->train.batch_size;
    if (t->steps < 1) {
        if (r->d.rank == 0)
            fprintf(stderr, "ctrain: error: %s: %lld training samples per rank is less than one batch of %d\n",
                    r->cfg_path, (long long)t->shard, c->train.batch_size);
        return CT_ERR_CONFIG;
    }
    place_resume(t);
    t->sched = (ct_schedule){.kind = c->schedule.name, .per_step = c->schedule.name == CT_SCHED_COSINE,
                             .step_size = c->schedule.step_size, .gamma = c->schedule.gamma,
                             .total = (int64_t)c->train.epochs * t->steps, .min_lr = c->schedule.min_lr,
                             .warmup_steps = c->schedule.warmup_steps};
    t->decoding = t->in.train->files != NULL;
    return CT_OK;
}

/* Rank 0: metrics.jsonl (a resumed run's is cut back to the checkpoint and appended to)
 * and a summary line. */
static void open_metrics(trainer *t) {
    const ct_run *r = t->r;
    if (r->d.rank != 0) return;
    char mp[CT_CFG_STR + 16];
    snprintf(mp, sizeof mp, "%s/metrics.jsonl", t->c->output.dir);
    if (t->start_epoch > 0) ct_run_trim_metrics(mp, t->start_epoch);
    t->mf = fopen(mp, t->start_epoch > 0 ? "a" : "w");
    if (!t->mf) fprintf(stderr, "ctrain: warning: cannot write %s\n", mp);
    ct_named tr = ct_module_params(r->model, true), a = ct_module_params(r->model, false);
    fprintf(stderr, "ctrain: %lld parameters, %lld trainable; %lld training samples on %d rank(s), %lld steps/epoch\n",
            (long long)ct_named_numel(&a), (long long)ct_named_numel(&tr), (long long)r->train.n,
            r->d.size, (long long)t->steps);
    ct_named_free(&tr);
    ct_named_free(&a);
}

/* Step s of the epoch on the next batch: forward, loss, backward (DDP's all-reduce overlaps
 * it) and the update. Runs inside the caller's CT_SCOPE. Not OK (on every rank) when an
 * image file could not be decoded on some rank. */
static ct_status train_step(trainer *t, int epoch, int64_t s, epoch_stats *es, ct_progress_bar *bar) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    maybe_inject_fault(&r->d, t->step, 0);
    ct_batch b;
    ct_loader_next(t->loader, &b);
    /* Image files are decoded during the epoch, and a rank that meets a bad one must not
     * leave the others waiting in the all-reduce: every step, the ranks agree first. */
    if (t->decoding) {
        ct_status st = ct_run_check(&r->d, ct_loader_status(t->loader));
        if (st != CT_OK) return st;
    }
    ct_status pst = ct_ddp_prepare(t->ddp);
    if (pst != CT_OK) ct_fatal("%s", ct_last_error());
    ct_optim_apply_schedule(t->opt, &t->sched, t->step, epoch);
    ct_tensor *logits = t->in.prefix ? ct_seq_forward_range(r->model, t->in.prefix, t->in.nlayers, b.x)
                                  : ct_module_forward(r->model, b.x);
    ct_tensor *loss = ct_cross_entropy_smooth(logits, b.y, (float)c->train.label_smoothing,
                                              CT_REDUCE_MEAN);
    bool finite = isfinite(loss->data[0]);
    if (!finite && c->train.on_nonfinite == CT_CFG_NONFINITE_ERROR)
        ct_fatal("epoch %d step %lld: the training loss is %f (train.on_nonfinite = error; 'skip' "
                 "skips such steps)", epoch + 1, (long long)s + 1, loss->data[0]);
    ct_backward(loss);
    ct_ddp_finish(t->ddp);
    /* A non-finite loss on any rank makes the averaged gradients non-finite on all of them:
     * every rank skips the update together. */
    if (c->train.on_nonfinite == CT_CFG_NONFINITE_SKIP && !ct_ddp_all(t->ddp, finite)) {
        es->skipped++;
    } else {
        ct_optim_step(t->opt);
        es->loss_sum += loss->data[0];
    }
    ct_ddp_zero_grad(t->ddp);
    if (r->d.rank == 0 && s >= es->skipped)
        ct_progress_update(bar, epoch + 1, s, t->steps, es->loss_sum / (double)(s + 1 - es->skipped),
                           b.size * r->d.size);
    return CT_OK;
}

/* After step s: a preemption signal on any rank (t->preempted), or
 * output.checkpoint_every_steps, makes a mid-epoch checkpoint with every rank's own state. */
static ct_status step_boundary(trainer *t, int epoch, int64_t s, const epoch_stats *es) {
    ct_run *r = t->r;
    t->preempted = ct_preempt_agree(&r->d, t->ddp, t->step);
    int every = t->c->output.checkpoint_every_steps;
    if (!t->preempted && !(every && (t->step + 1) % every == 0 && s + 1 < t->steps)) return CT_OK;
    char *rs = ct_midepoch_gather(&r->d, r->model, es->loss_sum, es->skipped);
    ct_status st = r->d.rank == 0 ? ct_run_save_checkpoint(r, t->opt, epoch, t->step + 1, s + 1, rs) : CT_OK;
    free(rs);
    return ct_run_check(&r->d, st);
}

/* One epoch of training steps, from a resumed mid-epoch position if there is one; it ends
 * early when the ranks agree on a preemption. */
static ct_status train_epoch(trainer *t, int epoch, epoch_stats *es) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    bool resumed = epoch == t->start_epoch && t->mid.at;
    if (!resumed) maybe_unfreeze(r, t->opt, epoch); /* resume() did it for a resumed epoch */
    reseed_epoch(r, t->loader, epoch);
    ct_loader_start(t->loader, ct_sampler_epoch(t->sampler, (uint64_t)epoch), t->shard);
    ct_module_train(r->model, true);
    ct_progress_bar bar;
    ct_progress_start(&bar, t->steps, c->train.log_every);
    *es = (epoch_stats){0};
    double t0 = ct_now();
    int64_t s0 = 0;
    if (resumed) {
        ct_midepoch_resume(&t->mid, r->model, t->loader);
        es->loss_sum = t->mid.loss_sum;
        es->skipped = t->mid.skipped;
        s0 = t->mid.at;
    }
    ct_status st = CT_OK;
    for (int64_t s = s0; s < t->steps && st == CT_OK && !t->preempted; s++, t->step++) CT_SCOPE {
        st = train_step(t, epoch, s, es, &bar);
        if (st == CT_OK) st = step_boundary(t, epoch, s, es);
    }
    if (es->skipped && r->d.rank == 0)
        fprintf(stderr, "ctrain: warning: epoch %d: skipped %lld of %lld steps with a non-finite loss "
                "(train.on_nonfinite = skip)\n", epoch + 1, (long long)es->skipped, (long long)t->steps);
    es->secs = ct_now() - t0;
    if (r->d.rank == 0) ct_progress_end(&bar);
    return st;
}

/* After an epoch: the evaluation, its event line and the epoch's metrics record. */
static ct_status evaluate_and_log(trainer *t, int epoch, const epoch_stats *es) {
    ct_run *r = t->r;
    const ct_config *c = t->c;
    maybe_inject_fault(&r->d, t->step, epoch + 1);
    /* The epoch's training loss averaged over ranks (NaN if every step was skipped), the
     * image files skipped on all ranks, and the evaluation. */
    double tl[2] = {t->steps > es->skipped ? es->loss_sum / (double)(t->steps - es->skipped) : NAN,
                    (double)ct_loader_skipped(t->loader)};
    ct_dist_sum(&r->d, tl, 2);
    tl[0] /= r->d.size;
    ct_ddp_sync_buffers(t->ddp);
    ct_eval_result ev;
    ct_status st = ct_dist_evaluate_from(&r->d, r->model, t->in.prefix, t->in.test, &t->in.eval_lo, &ev);
    if (t->decoding && st != CT_OK) { /* a test file: every rank has the verdict already */
        if (r->d.rank == 0) fprintf(stderr, "ctrain: error: evaluation: %s\n", ct_last_error());
        return st;
    }
    if (st != CT_OK) ct_fatal("evaluation: %s", ct_last_error());
    if (r->d.rank != 0) return CT_OK;
    json_t *o = ct_json_record("eval");
    ct_json_int(o, "epoch", epoch + 1);
    ct_json_real(o, "loss", ev.loss, "%.6f");
    ct_json_real(o, "accuracy", ev.accuracy, "%.6f");
    ct_json_int(o, "samples", ev.samples);
    ct_json_emit(o, stdout);
    o = ct_json_record(NULL);
    ct_json_int(o, "epoch", epoch + 1);
    ct_json_int(o, "step", t->step);
    ct_json_real(o, "train_loss", tl[0], "%.6f");
    ct_json_real(o, "eval_loss", ev.loss, "%.6f");
    ct_json_real(o, "eval_accuracy", ev.accuracy, "%.6f");
    ct_json_int(o, "eval_samples", ev.samples);
    ct_json_real(o, "lr", ct_optim_lr(t->opt, 0), "%.6g");
    ct_json_real(o, "epoch_s", es->secs, "%.3f");
    ct_json_real(o, "samples_per_s", (double)(t->steps * c->train.batch_size * r->d.size) / es->secs, "%.1f");
    ct_json_int(o, "ranks", r->d.size);
    if (t->decoding) ct_json_int(o, "skipped", (int64_t)tl[1]); /* image files skipped */
    ct_json_emit(o, t->mf);
    return CT_OK;
}

/* Every output.checkpoint_every epochs and after the last: rank 0 saves a checkpoint. */
static ct_status checkpoint_epoch(trainer *t, int epoch) {
    const ct_config *c = t->c;
    if ((epoch + 1) % c->output.checkpoint_every != 0 && epoch + 1 != c->train.epochs) return CT_OK;
    ct_status st = t->r->d.rank == 0 ? ct_run_save_checkpoint(t->r, t->opt, epoch + 1, t->step, 0, NULL) : CT_OK;
    /* The barrier is the agreement: nobody goes on while the file may be missing. */
    return ct_run_check(&t->r->d, st);
}

static void trainer_free(trainer *t) {
    ct_preempt_uninstall();
    ct_midepoch_free(&t->mid);
    if (t->mf) fclose(t->mf);
    ct_loader_free(t->loader);
    ct_sampler_free(t->sampler);
    ct_optim_free(t->opt);
    ct_ddp_free(t->ddp);
    ct_train_inputs_free(&t->in);
}

/* 0, CT_EXIT_PREEMPTED, CT_EXIT_CONFIG for an invalid configuration (a relaunch would meet
 * it again), else 1. */
static int exit_status(ct_status st, bool preempted) {
    if (st == CT_ERR_CONFIG) return CT_EXIT_CONFIG;
    return st != CT_OK ? 1 : preempted ? CT_EXIT_PREEMPTED : 0;
}

/* Set-up, then for each epoch: train, evaluate and log, checkpoint. Every rank returns the
 * same status (exit_status). */
int ct_cmd_train(ct_run *r) {
    ct_status st = ct_run_check(&r->d, ct_run_prepare_output(r));
    if (st != CT_OK) return exit_status(st, false);
    trainer t = {.r = r, .c = &r->cfg};
    st = setup_training(&t);
    if (st == CT_OK) st = ct_train_inputs_setup(r, &t.in);
    if (st == CT_OK) st = setup_steps(&t);
    if (st == CT_OK) open_metrics(&t);
    for (int epoch = t.start_epoch; st == CT_OK && epoch < t.c->train.epochs; epoch++) {
        epoch_stats es;
        st = train_epoch(&t, epoch, &es);
        if (st != CT_OK || t.preempted) break;
        st = evaluate_and_log(&t, epoch, &es);
        if (st == CT_OK) st = checkpoint_epoch(&t, epoch);
    }
    trainer_free(&t);
    return exit_status(st, t.preempted);
}
