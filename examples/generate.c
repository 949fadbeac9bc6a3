/* generate.c — greedy decoding with the edgeq C API, and nothing else: token ids in, token ids out
 * (tokenizing text is the Python layer's job). Uses only the public header edgeq.h.
 *
 *     generate MODEL N_TOKENS ID [ID...] [--threads N] [--ctx N] [--verbose]
 *
 * Evaluates the prompt ids, then N_TOKENS times takes the argmax of the logits and feeds it back;
 * prints the generated ids on one line, space-separated; --verbose also prints the kernel set that
 * ran them on stderr ("generate: kernel set avx2"). Build: `make example` (`make aarch64` for ARM).
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeq.h"

static const char usage[] = "usage: generate MODEL N_TOKENS ID [ID...] [--threads N] [--ctx N] [--verbose]";

static int fail(const char *message)
{
    fprintf(stderr, "generate: error: %s\n", message);
    return 1;
}

/* A decimal integer in [lo, hi], or false. */
static int parse_int(const char *text, long lo, long hi, int32_t *out)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < lo || value > hi) {
        return 0;
    }
    *out = (int32_t)value;
    return 1;
}

/* Index of the largest logit (the first one on ties). */
static int32_t argmax(const float *logits, int32_t n)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n; i++) {
        if (logits[i] > logits[best]) {
            best = i;
        }
    }
    return best;
}

/* Parse the command line into *params, *path, *n_generate, prompt (argc slots) and *verbose.
 * 0 or exit code 2. */
static int parse_args(int argc, char **argv, eq_model_params *params, const char **path,
                      int32_t *n_generate, int32_t *prompt, int32_t *n_prompt, int *verbose)
{
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--verbose") == 0) {
            *verbose = 1;
        } else if (strcmp(argv[i], "--threads") == 0 || strcmp(argv[i], "--ctx") == 0) {
            int32_t *field = argv[i][2] == 't' ? &params->n_threads : &params->n_ctx;
            if (i + 1 >= argc || !parse_int(argv[i + 1], 1, INT32_MAX, field)) {
                fprintf(stderr, "generate: error: %s needs a positive integer\n%s\n", argv[i], usage);
                return 2;
            }
            i++;
        } else if (*path == NULL) {
            *path = argv[i];
        } else if (*n_generate < 0) {
            if (!parse_int(argv[i], 0, INT32_MAX, n_generate)) {
                fprintf(stderr, "generate: error: N_TOKENS '%s' is not a count\n%s\n", argv[i], usage);
                return 2;
            }
        } else if (!parse_int(argv[i], 0, INT32_MAX, &prompt[(*n_prompt)++])) {
            fprintf(stderr, "generate: error: token id '%s' is not a non-negative integer\n%s\n",
                    argv[i], usage);
            return 2;
        }
    }
    if (*path == NULL || *n_generate < 0 || *n_prompt == 0) {
        fprintf(stderr, "%s\n", usage);
        return 2;
    }
    return 0;
}

/* Evaluate the prompt, then pick and feed back n_generate tokens into generated. 0 or 1 (reported). */
static int decode_greedy(eq_model *model, const int32_t *prompt, int32_t n_prompt, int32_t n_generate,
                         int32_t *generated)
{
    eq_model_info info;
    eq_model_get_info(model, &info);
    for (int32_t i = 0; i < n_prompt; i++) {
        if (prompt[i] >= info.vocab_size) {
            fprintf(stderr, "generate: error: token id %d is outside the vocabulary (%d tokens)\n",
                    (int)prompt[i], (int)info.vocab_size);
            return 1;
        }
    }
    float *logits = malloc((size_t)info.vocab_size * sizeof *logits);   /* (vocab,) */
    if (logits == NULL) {
        return fail("out of memory");
    }
    int status = eq_model_eval(model, prompt, n_prompt, logits, 0);
    for (int32_t t = 0; status == EQ_OK && t < n_generate; t++) {
        generated[t] = argmax(logits, info.vocab_size);
        if (t + 1 < n_generate) {
            status = eq_model_eval(model, &generated[t], 1, logits, 0);
        }
    }
    free(logits);
    return status == EQ_OK ? 0 : fail(eq_error_string(status));
}

int main(int argc, char **argv)
{
    eq_model_params params = {0, 0, 0, 0};
    const char *path = NULL;
    int32_t n_generate = -1, n_prompt = 0;
    int verbose = 0;
    int32_t *prompt = malloc((size_t)argc * sizeof *prompt);   /* (n_prompt,) */
    if (prompt == NULL) {
        return fail("out of memory");
    }
    int code = parse_args(argc, argv, &params, &path, &n_generate, prompt, &n_prompt, &verbose);
    if (code != 0) {
        free(prompt);
        return code;
    }

    char err[512];
    eq_model *model = eq_model_open(path, &params, err, sizeof err);
    if (model == NULL) {
        fprintf(stderr, "generate: error: %s: %s\n", path, err);
        free(prompt);
        return 1;
    }
    int32_t *generated = malloc(((size_t)n_generate + 1) * sizeof *generated);   /* (n_generate,) */
    code = generated != NULL ? decode_greedy(model, prompt, n_prompt, n_generate, generated)
                             : fail("out of memory");
    if (code == 0) {
        for (int32_t t = 0; t < n_generate; t++) {
            printf(t == 0 ? "%d" : " %d", (int)generated[t]);
        }
        printf("\n");
        if (verbose) {
            fprintf(stderr, "generate: kernel set %s\n", eq_isa_name());
        }
    }
    free(generated);
    free(prompt);
    eq_model_close(model);
    return code;
}
