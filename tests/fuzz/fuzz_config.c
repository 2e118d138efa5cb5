/* The INI run config, command-line overrides, sweep override groups and class lists. Any
 * text gives CT_OK or a config error, never a crash; a config that loads is written out and
 * read back to the same text (the property `ctrain` relies on for config.ini in a run dir).
 * The first byte picks the grammar. */
#include "fuzz.h"

#include "cli/config.h"

#include <stdlib.h>
#include <string.h>

/* ct_config_write into a malloc'd string. */
static char *config_text(const ct_config *c) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f || ct_config_write(c, f) != CT_OK) __builtin_trap();
    fclose(f);
    return buf;
}

static void round_trip(const ct_config *c) {
    char *a = config_text(c);
    ct_config *back = malloc(sizeof *back);
    ct_config_defaults(back);
    if (ct_config_load_string(back, a, "fuzz round trip") != CT_OK) __builtin_trap();
    char *b = config_text(back);
    if (strcmp(a, b) != 0) __builtin_trap();
    free(a);
    free(b);
    free(back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    char *text = malloc(size);
    memcpy(text, data + 1, size - 1);
    text[size - 1] = 0;
    ct_config *c = malloc(sizeof *c);
    ct_config_defaults(c);
    switch (data[0] % 4) {
    case 0: /* a whole INI file */
        if (ct_config_load_string(c, text, "fuzz.ini") == CT_OK) round_trip(c);
        break;
    case 1: { /* one command-line override per line */
        bool ok = true;
        for (char *line = strtok(text, "\n"); line && ok; line = strtok(NULL, "\n"))
            ok = ct_config_override(c, line) == CT_OK;
        if (ok) round_trip(c);
        break;
    }
    case 2: { /* a sweep.overrides spec: every group applied to a fresh config */
        char group[CT_CFG_STR];
        for (int i = 0; i < 8 && ct_config_override_group(text, i, group, sizeof group); i++) {
            ct_config_defaults(c);
            if (ct_config_apply_overrides(c, group) == CT_OK) round_trip(c);
        }
        break;
    }
    default: { /* a data.classes selection */
        bool keep[16];
        (void)ct_config_classes(text, 1 + data[0] / 4 % 16, keep);
    }
    }
    free(c);
    free(text);
    return 0;
}
