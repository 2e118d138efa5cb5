/* The ctrain command line. */
#include "ctrain.h"

#include <stdio.h>
#include <string.h>

static int usage(void) {
    fprintf(stderr, "usage: ctrain train CONFIG [section.key=value ...]\n"
                    "       ctrain eval CONFIG --checkpoint FILE\n");
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 2) return usage();
    fprintf(stderr, "ctrain: unknown command '%s'\n", argv[1]);
    return usage();
}
