/* Rank 0's progress display, and the JSON number formatting of the output lines. */
#include <math.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"

const char *ct_json_num(char buf[32], double v, int decimals) {
    if (isfinite(v)) snprintf(buf, 32, "%.*f", decimals, v);
    else snprintf(buf, 32, "null");
    return buf;
}

double ct_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void ct_progress_start(ct_progress_bar *p, int64_t total_steps, int64_t log_every) {
    p->tty = isatty(STDERR_FILENO);
    p->t_start = p->t_last = ct_now();
    p->total_steps = total_steps;
    p->log_every = log_every;
    p->samples = 0;
}

void ct_progress_update(ct_progress_bar *p, int epoch, int64_t step_in_epoch, int64_t steps,
                        double loss, int64_t global_samples) {
    p->samples += global_samples;
    double t = ct_now();
    bool last = step_in_epoch + 1 == steps;
    /* A TTY gets a redraw at most ten times a second; a log gets every log_every-th step. */
    if (p->tty ? (t - p->t_last < 0.1 && !last)
               : (p->log_every <= 0 || ((step_in_epoch + 1) % p->log_every != 0 && !last)))
        return;
    p->t_last = t;
    double el = t - p->t_start, sps = el > 0 ? (double)p->samples / el : 0;
    double eta = sps > 0 ? (double)(steps - step_in_epoch - 1) * ((double)global_samples / sps) : 0;
    if (p->tty) {
        int width = 30, done = (int)((step_in_epoch + 1) * width / (steps ? steps : 1));
        char bar[64];
        for (int i = 0; i < width; i++) bar[i] = i < done ? '=' : i == done ? '>' : ' ';
        bar[width] = 0;
        fprintf(stderr, "\repoch %d [%s] %lld/%lld loss %.4f %.0f samples/s ETA %02d:%02d ", epoch,
                bar, (long long)step_in_epoch + 1, (long long)steps, loss, sps, (int)eta / 60,
                (int)eta % 60);
    } else {
        fprintf(stderr, "epoch %d step %lld/%lld loss %.4f samples/s %.0f eta %.0fs\n", epoch,
                (long long)step_in_epoch + 1, (long long)steps, loss, sps, eta);
    }
    fflush(stderr);
}

void ct_progress_end(ct_progress_bar *p) {
    if (p->tty) fprintf(stderr, "\n");
}
