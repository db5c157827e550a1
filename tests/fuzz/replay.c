/*
 * replay.c - replays fuzz corpora through a libFuzzer-style target without
 * libFuzzer, so that `make check` exercises every committed input (STYLE.md
 * rule 11) with any compiler and sanitizer.
 *
 * Usage: replay_NAME [DIR|FILE]...  With no argument it replays
 * $DSV4_SRCDIR/tests/fuzz/corpus/<DSV4_FUZZ_CORPUS>, the corpus name being
 * compiled in with -DDSV4_FUZZ_CORPUS='"NAME"'.  Files of a directory run in
 * name order; the name of each input is printed before it runs, so the last
 * line of a crashed run names the culprit.  An empty or missing corpus fails.
 *
 * Adding a target (any module):
 *   1. write tests/fuzz/fuzz_NAME.c defining
 *      int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
 *      that must never crash, leak or read out of bounds, whatever the bytes;
 *   2. commit seed inputs under tests/fuzz/corpus/NAME/;
 *   3. in your Makefile.inc add (see tests/fuzz/Makefile.inc for the model)
 *        check_PROGRAMS += tests/fuzz/replay_NAME
 *        tests_fuzz_replay_NAME_SOURCES = tests/fuzz/replay.c tests/fuzz/fuzz_NAME.c
 *        tests_fuzz_replay_NAME_CPPFLAGS = $(AM_CPPFLAGS) -DDSV4_FUZZ_CORPUS='"NAME"'
 *        tests_fuzz_replay_NAME_LDADD = $(DSV4_LIBS)
 *        DSV4_TESTS += tests/fuzz/replay_NAME
 *      and, inside `if FUZZING`, a tests/fuzz/fuzz_NAME program built from
 *      fuzz_NAME.c alone with LDFLAGS -fsanitize=fuzzer (libFuzzer's main).
 */
#include "dsv4-build.h"

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf;
    long n;

    if (!fp) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    fseek(fp, 0, SEEK_END);
    n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    /* An exact-size heap copy, so that ASan catches any read past the end. */
    buf = malloc(n > 0 ? (size_t)n : 1);
    if (!buf || (n > 0 && fread(buf, 1, (size_t)n, fp) != (size_t)n)) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        fclose(fp);
        free(buf);
        return -1;
    }
    fclose(fp);
    fprintf(stderr, "replay: %s (%ld bytes)\n", path, n);
    LLVMFuzzerTestOneInput(buf, (size_t)n);
    free(buf);
    return 0;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays a file or every regular file of a directory; returns the count or -1. */
static long replay_path(const char *path)
{
    struct stat st;
    DIR *d;
    struct dirent *de;
    char **names = NULL;
    size_t n = 0, cap = 0;
    long count = 0;

    if (stat(path, &st) < 0) {
        fprintf(stderr, "replay: %s does not exist\n", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode))
        return replay_file(path) < 0 ? -1 : 1;
    d = opendir(path);
    if (!d)
        return -1;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        if (n == cap) {
            char **p = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof(*names));
            if (!p)
                break;
            names = p;
        }
        names[n++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof(*names), cmp_name);
    for (size_t i = 0; i < n; i++) {
        char *full = malloc(strlen(path) + strlen(names[i]) + 2);
        sprintf(full, "%s/%s", path, names[i]);
        if (stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
            if (replay_file(full) < 0)
                count = -1;
            else if (count >= 0)
                count++;
        }
        free(full);
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv)
{
    long total = 0;

    if (argc < 2) {
#ifdef DSV4_FUZZ_CORPUS
        const char *src = getenv("DSV4_SRCDIR");
        char dir[4096];
        long n;
        snprintf(dir, sizeof(dir), "%s/tests/fuzz/corpus/%s", src ? src : ".", DSV4_FUZZ_CORPUS);
        n = replay_path(dir);
        if (n <= 0) {
            fprintf(stderr, "replay: no inputs in %s\n", dir);
            return 1;
        }
        fprintf(stderr, "replayed %ld inputs from %s\n", n, dir);
        return 0;
#else
        fprintf(stderr, "usage: %s DIR|FILE...\n", argv[0]);
        return 2;
#endif
    }
    for (int i = 1; i < argc; i++) {
        long n = replay_path(argv[i]);
        if (n < 0)
            return 1;
        total += n;
    }
    fprintf(stderr, "replayed %ld inputs\n", total);
    return 0;
}
