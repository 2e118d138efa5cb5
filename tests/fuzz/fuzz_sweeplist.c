/* The sweep checkpoint list (src/cli/sweep_list.c): comma-separated paths and globs, @FILE
 * lists, duplicates dropped with the first occurrence keeping its place, and (through the
 * INI config) lists over indented continuation lines. Properties, beyond "no crash":
 *  - a list that expands has no duplicate and no entry with blanks around it, and expands
 *    to the same list every time; an error names sweep.checkpoints;
 *  - "S,S" expands to what S does, and "S,T" starts with what S expands to (ordering);
 *  - a list of plain entries expands to itself (idempotence);
 *  - a config's list and its dump's reloaded list expand alike (continuation lines).
 * Each input is expanded in a private temporary directory holding a small fixture tree
 * (the harness goes back to its own directory between inputs, where libFuzzer writes its
 * corpus), and an input whose list could reach outside it (an absolute path, "..", a '/'
 * after a character a relative path cannot have there) is skipped, so globs and @FILE
 * read nothing else.
 * The first byte picks the mode: a list; a list plus the text of its @fuzz.list file;
 * an INI file. */
#include "fuzz.h"

#include "cli/sweep.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char fixture[64];
static int fixture_fd = -1, home_fd = -1; /* the fixture and the directory we started in */

static void put(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) __builtin_trap();
}

static int remove_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_fixture(void) {
    if (fchdir(home_fd) == 0) nftw(fixture, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    snprintf(fixture, sizeof fixture, "/tmp/fuzz_sweeplist.XXXXXX");
    home_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (home_fd < 0 || !mkdtemp(fixture) || chdir(fixture) != 0) __builtin_trap();
    fixture_fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    atexit(remove_fixture);
    static const char *const dirs[] = {"runs", "runs/a", "runs/b", "runs/lr=0.1", "empty"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++)
        if (mkdir(dirs[i], 0755) != 0) __builtin_trap();
    static const char *const files[] = {
        "x.safetensors",        "y.safetensors",           "[x].safetensors",
        "odd,name.safetensors", "runs/a/ckpt-1.safetensors", "runs/a/ckpt-2.safetensors",
        "runs/a/last.safetensors", "runs/b/ckpt-1.safetensors", "runs/lr=0.1/last.safetensors"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) put(files[i], "");
    put("list.txt", "# a list\nruns/a/*.safetensors\n\n  x.safetensors  \nmissing.safetensors\n");
    put("nested.txt", "@list.txt\n");
    if (fixture_fd < 0 || fchdir(home_fd) != 0) __builtin_trap();
    return 0;
}

/* False if text could name a file outside the fixture. */
static bool stays_inside(const char *text) {
    if (strstr(text, "..")) return false;
    for (const char *p = text; (p = strchr(p, '/')); p++) {
        if (p == text) return false;
        char c = p[-1];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  strchr("_-.*?]=", c);
        if (!ok) return false;
    }
    return true;
}

static bool same(const ct_strlist *a, const ct_strlist *b) {
    if (a->n != b->n) return false;
    for (int i = 0; i < a->n; i++)
        if (strcmp(a->s[i], b->s[i]) != 0) return false;
    return true;
}

static bool blank(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

/* Expands spec and checks the properties every expansion has. */
static ct_status expand(const char *spec, ct_strlist *out) {
    ct_status st = ct_sweep_expand_checkpoints(spec, out);
    if (st != CT_OK) {
        if (!strstr(ct_last_error(), "sweep.checkpoints")) __builtin_trap();
        ct_strlist_free(out);
        return st;
    }
    if (out->n == 0) __builtin_trap();
    for (int i = 0; i < out->n; i++) {
        size_t len = strlen(out->s[i]);
        if (!len || blank(out->s[i][0]) || blank(out->s[i][len - 1])) __builtin_trap();
        for (int j = 0; j < i; j++)
            if (!strcmp(out->s[i], out->s[j])) __builtin_trap();
    }
    return CT_OK;
}

static char *join(const char *a, const char *b) {
    char *s = malloc(strlen(a) + strlen(b) + 2);
    strcat(strcat(strcpy(s, a), ","), b);
    return s;
}

/* Orders, repeats and idempotence of one spec. */
static void check_list(const char *spec) {
    ct_strlist l = {0}, again = {0}, twice = {0}, more = {0}, tail = {0};
    if (expand(spec, &l) != CT_OK) return;
    if (expand(spec, &again) != CT_OK || !same(&l, &again)) __builtin_trap();
    char *ss = join(spec, spec);
    if (expand(ss, &twice) != CT_OK || !same(&l, &twice)) __builtin_trap();
    const char *t = "runs/*/*.safetensors,y.safetensors";
    char *st = join(spec, t);
    if (expand(st, &more) != CT_OK || expand(t, &tail) != CT_OK || more.n < l.n) __builtin_trap();
    for (int i = 0; i < l.n; i++)
        if (strcmp(l.s[i], more.s[i])) __builtin_trap();
    for (int i = 0; i < tail.n; i++) { /* every entry of T is there, after S's */
        int k = 0;
        while (k < more.n && strcmp(more.s[k], tail.s[i])) k++;
        if (k == more.n) __builtin_trap();
    }
    /* entries that are neither globs nor lists nor split by ',' expand to themselves */
    bool plain = true;
    for (int i = 0; i < l.n && plain; i++) plain = !strpbrk(l.s[i], "*?[\\,") && l.s[i][0] != '@';
    if (plain) {
        size_t n = 1;
        for (int i = 0; i < l.n; i++) n += strlen(l.s[i]) + 1;
        char *back = calloc(1, n);
        for (int i = 0; i < l.n; i++) strcat(strcat(back, i ? "," : ""), l.s[i]);
        ct_strlist re = {0};
        if (expand(back, &re) != CT_OK || !same(&l, &re)) __builtin_trap();
        ct_strlist_free(&re);
        free(back);
    }
    free(ss);
    free(st);
    ct_strlist_free(&l);
    ct_strlist_free(&again);
    ct_strlist_free(&twice);
    ct_strlist_free(&more);
    ct_strlist_free(&tail);
}

/* A config's list, and the list of its dump read back, expand alike. */
static void check_config(const char *text) {
    static ct_config c, back;
    ct_config_defaults(&c);
    if (ct_config_load_string(&c, text, "fuzz.ini") != CT_OK) return;
    if (!stays_inside(c.sweep.checkpoints)) return;
    char *dump = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&dump, &len);
    if (!f || ct_config_write(&c, f) != CT_OK) __builtin_trap();
    fclose(f);
    ct_config_defaults(&back);
    if (ct_config_load_string(&back, dump, "fuzz dump") != CT_OK) __builtin_trap();
    free(dump);
    ct_strlist a = {0}, b = {0};
    ct_status sa = expand(c.sweep.checkpoints, &a), sb = expand(back.sweep.checkpoints, &b);
    if (sa != sb || !same(&a, &b)) __builtin_trap();
    ct_strlist_free(&a);
    ct_strlist_free(&b);
    check_list(c.sweep.checkpoints);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char *text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    if (fchdir(fixture_fd) != 0) __builtin_trap();
    switch (data[0] % 3) {
    case 0: /* a list as written on the command line */
        if (stays_inside(text)) check_list(text);
        break;
    case 1: { /* "LIST\nFILE...": FILE becomes fuzz.list, which LIST may name as @fuzz.list */
        char *nl = strchr(text, '\n');
        const char *file = nl ? nl + 1 : "";
        if (nl) *nl = 0;
        if (!stays_inside(text) || !stays_inside(file)) break;
        put("fuzz.list", file);
        check_list(text);
        remove("fuzz.list");
        break;
    }
    default: check_config(text);
    }
    if (fchdir(home_fd) != 0) __builtin_trap();
    free(text);
    return 0;
}
