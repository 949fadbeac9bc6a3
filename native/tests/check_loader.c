/* check_loader.c — open each file named on the command line with the GGUF loader (and the model
 * loader), touch everything a successful open hands out, and print
 * one line per file:
 *     PATH <tab> gguf: OK | gguf: error: MESSAGE <tab> model: OK | model: error: MESSAGE
 * Exits 0 whatever the files hold: built with ASan/UBSan (make native-test), a memory error or
 * undefined behaviour aborts the process instead, which is what tests/test_native_safety.py looks for.
 *
 *     check_loader [--bench N] [--describe KEY,KEY,...] FILE...
 *   --bench N      also time N opens of each valid file (best of N, milliseconds)
 *   --describe     also print, for each valid file, one tab-separated line per tensor
 *                      tensor  NAME  TYPE  D0,D1,D2,D3  N_DIMS  NBYTES  FNV1A64-OF-DATA
 *                  and one per KEY with what each getter returns (a value or the error code)
 *                      key  KEY  u32=..  f64=..  bool=..  str=LEN:TEXT  u64s=A,B,..
 */
#define _POSIX_C_SOURCE 200809L

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "edgeq.h"
#include "gguf.h"

/* Read every byte of every tensor and look each one up by name: ASan sees any pointer that is
 * not inside the map. Returns a checksum so the reads are not optimized away. */
static uint64_t touch_tensors(const eq_gguf *file)
{
    uint64_t sum = 0;
    for (uint64_t i = 0; i < eq_gguf_tensor_count(file); i++) {
        const eq_gguf_tensor *tensor = eq_gguf_tensor_at(file, i);
        for (uint64_t b = 0; b < tensor->nbytes; b++) {
            sum += tensor->data[b];
        }
        if (eq_gguf_find_tensor(file, tensor->name) != tensor) {
            fprintf(stderr, "check_loader: tensor '%s' is not found by its own name\n", tensor->name);
            abort();
        }
    }
    return sum;
}

/* Exercise the getters on the keys every edgeq file has, whatever they hold. */
static uint64_t touch_metadata(const eq_gguf *file)
{
    uint64_t sum = 0;
    uint32_t u32;
    double f64;
    bool flag;
    const char *text;
    uint64_t len, count;
    const uint8_t *elements;
    static const char *const keys[] = {
        "general.architecture", "general.alignment", "edgeq.format_version", "edgeq.arch",
        "edgeq.rope_theta", "edgeq.rms_norm_eps", "edgeq.tie_word_embeddings",
        "tokenizer.huggingface.json", "edgeq.tensor.token_embd.weight.shape", "no.such.key",
    };
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        if (eq_gguf_get_u32(file, keys[k], &u32) == EQ_OK) {
            sum += u32;
        }
        if (eq_gguf_get_f64(file, keys[k], &f64) == EQ_OK) {
            sum += f64 == f64;
        }
        if (eq_gguf_get_bool(file, keys[k], &flag) == EQ_OK) {
            sum += flag;
        }
        if (eq_gguf_get_str(file, keys[k], &text, &len) == EQ_OK && len > 0) {
            sum += (uint8_t)text[0] + (uint8_t)text[len - 1];
        }
        if (eq_gguf_get_u64_array(file, keys[k], &elements, &count) == EQ_OK) {
            for (uint64_t i = 0; i < count; i++) {
                sum += eq_gguf_read_u64le(elements + 8 * i);
            }
        }
    }
    return sum;
}

/* Evaluate token 0: every weight the model kept is read once. */
static uint64_t run_one_token(eq_model *model)
{
    eq_model_info info;
    if (eq_model_get_info(model, &info) != EQ_OK || info.vocab_size < 1) {
        fprintf(stderr, "check_loader: an open model has no valid info\n");
        abort();
    }
    float *logits = malloc((size_t)info.vocab_size * sizeof *logits);
    if (logits == NULL) {
        return 0;
    }
    int32_t token = 0;
    uint64_t sum = 0;
    if (eq_model_eval(model, &token, 1, logits, 0) == EQ_OK) {
        sum = logits[0] == logits[0];
    }
    free(logits);
    return sum;
}

static uint64_t fnv1a64(const uint8_t *bytes, uint64_t len)
{
    uint64_t hash = UINT64_C(14695981039346656037);
    for (uint64_t i = 0; i < len; i++) {
        hash = (hash ^ bytes[i]) * UINT64_C(1099511628211);
    }
    return hash;
}

static void describe(const eq_gguf *file, const char *keys)
{
    for (uint64_t i = 0; i < eq_gguf_tensor_count(file); i++) {
        const eq_gguf_tensor *t = eq_gguf_tensor_at(file, i);
        printf("tensor\t%s\t%" PRIu32 "\t%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\t%" PRIu32
               "\t%" PRIu64 "\t%016" PRIx64 "\n", t->name, t->type, t->dims[0], t->dims[1], t->dims[2],
               t->dims[3], t->n_dims, t->nbytes, fnv1a64(t->data, t->nbytes));
    }
    char key[256];
    for (const char *start = keys; *start != '\0';) {
        size_t len = strcspn(start, ",");
        snprintf(key, sizeof key, "%.*s", (int)len, start);
        start += len + (start[len] == ',');
        uint32_t u32;
        double f64;
        bool flag;
        const char *text;
        uint64_t text_len, count;
        const uint8_t *elements;
        int status;
        printf("key\t%s", key);
        if ((status = eq_gguf_get_u32(file, key, &u32)) == EQ_OK) {
            printf("\tu32=%" PRIu32, u32);
        } else {
            printf("\tu32=%d", status);
        }
        if ((status = eq_gguf_get_f64(file, key, &f64)) == EQ_OK) {
            printf("\tf64=%.17g", f64);
        } else {
            printf("\tf64=%d", status);
        }
        if ((status = eq_gguf_get_bool(file, key, &flag)) == EQ_OK) {
            printf("\tbool=%s", flag ? "true" : "false");
        } else {
            printf("\tbool=%d", status);
        }
        if ((status = eq_gguf_get_str(file, key, &text, &text_len)) == EQ_OK) {
            printf("\tstr=%" PRIu64 ":%.*s", text_len, (int)(text_len < 64 ? text_len : 64), text);
        } else {
            printf("\tstr=%d", status);
        }
        if ((status = eq_gguf_get_u64_array(file, key, &elements, &count)) == EQ_OK) {
            printf("\tu64s=");
            for (uint64_t e = 0; e < count; e++) {
                printf(e == 0 ? "%" PRIu64 : ",%" PRIu64, eq_gguf_read_u64le(elements + 8 * e));
            }
        } else {
            printf("\tu64s=%d", status);
        }
        printf("\n");
    }
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* The message, if it is one clean line; the loaders promise that, so say so if it is broken
 * (a newline, tab, escape or other control character, usually quoted from the file). */
static const char *one_line(const char *message)
{
    for (const char *c = message; *c != '\0'; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            return "(message holds a control character: not one clean line)";
        }
    }
    return message;
}

static void bench_open(const char *path, int repeats)
{
    double best = 1e300;
    for (int r = 0; r < repeats; r++) {
        eq_gguf *file = NULL;
        double start = now_ms();
        int status = eq_gguf_open(path, &file, NULL, 0);
        double elapsed = now_ms() - start;
        eq_gguf_close(file);
        if (status != EQ_OK) {
            return;
        }
        best = elapsed < best ? elapsed : best;
    }
    printf("%s\tbench: eq_gguf_open best of %d: %.3f ms\n", path, repeats, best);
}

int main(int argc, char **argv)
{
    int first = 1, repeats = 0;
    const char *describe_keys = NULL;
    while (first + 1 < argc && argv[first][0] == '-') {
        if (strcmp(argv[first], "--bench") == 0) {
            repeats = atoi(argv[first + 1]);
        } else if (strcmp(argv[first], "--describe") == 0) {
            describe_keys = argv[first + 1];
        } else {
            break;
        }
        first += 2;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: check_loader [--bench N] [--describe KEY,KEY,...] FILE...\n");
        return 2;
    }
    uint64_t checksum = 0;
    for (int i = first; i < argc; i++) {
        char err[512];
        eq_gguf *file = NULL;
        int status = eq_gguf_open(argv[i], &file, err, sizeof err);
        printf("%s\t", argv[i]);
        if (status == EQ_OK) {
            checksum += touch_tensors(file) + touch_metadata(file);
            printf("gguf: OK");
        } else {
            printf("gguf: error: %s", err[0] != '\0' ? one_line(err) : "(no message)");
        }
        eq_model *model = eq_model_open(argv[i], NULL, err, sizeof err);
        if (model != NULL) {
            checksum += run_one_token(model);
            printf("\tmodel: OK\n");
        } else {
            printf("\tmodel: error: %s\n", err[0] != '\0' ? one_line(err) : "(no message)");
        }
        eq_model_close(model);
        if (status == EQ_OK && describe_keys != NULL) {
            describe(file, describe_keys);
        }
        eq_gguf_close(file);
        if (repeats > 0) {
            bench_open(argv[i], repeats);
        }
        fflush(stdout);
    }
    fprintf(stderr, "check_loader: %d files, checksum %" PRIu64 "\n", argc - first, checksum);
    return 0;
}
