/* Preemption: a scheduler's signal (Slurm sends SIGTERM, or the one chosen with --signal,
 * some time before it kills) ends training cleanly. The handler only sets a flag (and arms
 * the grace alarm); at each step boundary the ranks OR their flags, so a signal that reached
 * one rank only stops all of them; the caller then writes a checkpoint from rank 0 and every
 * rank exits with CT_EXIT_PREEMPTED. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define NSIGS 8

static volatile sig_atomic_t requested; /* the signal number, 0 while none came */
static unsigned grace_s;
static int nsigs;
static int sigs[NSIGS];
static struct sigaction old[NSIGS];
static const char *raise_at; /* CT_PREEMPT_RAISE, read once */

/* SIGALRM: the grace period ran out before the checkpoint was written. write() and _exit()
 * are async-signal-safe; the newest complete checkpoint is still on disk (writes are atomic). */
static void on_alarm(int sig) {
    (void)sig;
    static const char msg[] = "ctrain: preempted: train.preempt_grace_s ran out before the checkpoint was "
                              "written; exiting with the previous checkpoint as the newest\n";
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)w;
    _exit(CT_EXIT_PREEMPTED);
}

static void on_signal(int sig) {
    if (!requested && grace_s) alarm(grace_s);
    requested = sig;
}

ct_status ct_preempt_install(const ct_config *c) {
    char why[256];
    if (!ct_config_signals(c->train.preempt_signals, sigs, &nsigs, why, sizeof why))
        return ct_error(CT_ERR_CONFIG, "train.preempt_signals: %s", why);
    grace_s = (unsigned)c->train.preempt_grace_s;
    requested = 0;
    raise_at = getenv("CT_PREEMPT_RAISE");
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART; /* a signal must not make a read or write fail with EINTR */
    sa.sa_handler = on_signal;
    for (int i = 0; i < nsigs; i++) sigaction(sigs[i], &sa, &old[i]);
    if (nsigs) {
        sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, NULL);
    }
    return CT_OK;
}

void ct_preempt_uninstall(void) {
    for (int i = 0; i < nsigs; i++) sigaction(sigs[i], &old[i], NULL);
    nsigs = 0;
}

bool ct_preempt_agree(const ct_dist *d, ct_ddp *ddp, int64_t step) {
    if (!nsigs) return false; /* no signal can set the flag: no collective either */
    /* A testing aid: CT_PREEMPT_RAISE="RANK:STEP" (RANK * = every rank) raises the first
     * configured signal on that rank just before that global step's agreement. */
    const char *t = raise_at;
    char who[16];
    long long at;
    if (t && sscanf(t, "%15[^:]:%lld", who, &at) == 2 && at == step &&
        (!strcmp(who, "*") || atoi(who) == d->rank))
        raise(sigs[0]);
    /* One vote per step through DDP's shared-memory counters (the same round the
     * non-finite check uses): "nobody was signalled" must hold on every rank. */
    bool stop = !ct_ddp_all(ddp, !requested);
    if (stop && !requested && grace_s) alarm(grace_s); /* the grace starts here on the others */
    if (stop && d->rank == 0)
        fprintf(stderr, "ctrain: preempted (%s on at least one rank): writing a checkpoint, then exiting with "
                "code %d\n", requested ? strsignal(requested) : "a signal", CT_EXIT_PREEMPTED);
    return stop;
}
