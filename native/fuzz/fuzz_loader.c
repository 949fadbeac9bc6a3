/* fuzz_loader.c — libFuzzer target for the loaders: each input becomes the contents of an
 * in-memory file (memfd) that eq_gguf_open and eq_model_open
 * must either accept or refuse with a one-line message; anything they hand out is read once, and a
 * model that opens evaluates one token.
 *
 *     make fuzz FUZZ_SECONDS=60      (clang -fsanitize=fuzzer,address,undefined; seeds in build/fuzz/seeds)
 */
#define _GNU_SOURCE

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "edgeq.h"
#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One memfd for the whole run, rewritten per input; its /proc path is what the loaders open. */
static int input_fd = -1;
static char input_path[64];

static void write_input(const uint8_t *data, size_t size)
{
    if (input_fd < 0) {
        input_fd = memfd_create("fuzz_loader_input", MFD_CLOEXEC);
        if (input_fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(input_path, sizeof input_path, "/proc/self/fd/%d", input_fd);
    }
    if (ftruncate(input_fd, 0) != 0) {
        perror("ftruncate");
        abort();
    }
    size_t written = 0;
    while (written < size) {
        ssize_t n = pwrite(input_fd, data + written, size - written, (off_t)written);
        if (n <= 0) {
            perror("pwrite");
            abort();
        }
        written += (size_t)n;
    }
}

/* A refusal must come with one clean line: not empty, no control characters (newline, tab, escape). */
static void check_message(int status, const char *err)
{
    if (status == EQ_OK) {
        return;
    }
    bool clean = err[0] != '\0';
    for (const char *c = err; *c != '\0'; c++) {
        clean = clean && (unsigned char)*c >= 0x20 && *c != 0x7f;
    }
    if (!clean) {
        fprintf(stderr, "fuzz_loader: status %d with an empty or not one-line message: '%s'\n", status, err);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    write_input(data, size);
    char err[512];
    eq_gguf *file = NULL;
    int status = eq_gguf_open(input_path, &file, err, sizeof err);
    check_message(status, err);
    if (status == EQ_OK) {
        volatile uint64_t sum = 0;
        for (uint64_t i = 0; i < eq_gguf_tensor_count(file); i++) {
            const eq_gguf_tensor *tensor = eq_gguf_tensor_at(file, i);
            sum += tensor->data[0] + tensor->data[tensor->nbytes - 1] + (uint8_t)tensor->name[0];
            if (eq_gguf_find_tensor(file, tensor->name) != tensor) {
                abort();
            }
        }
        uint32_t u32;
        const char *text;
        uint64_t len;
        const uint8_t *elements;
        if (eq_gguf_get_u32(file, "edgeq.format_version", &u32) == EQ_OK) {
            sum += u32;
        }
        if (eq_gguf_get_str(file, "general.architecture", &text, &len) == EQ_OK && len > 0) {
            sum += (uint8_t)text[len - 1];
        }
        if (eq_gguf_get_u64_array(file, "edgeq.tensor.token_embd.weight.shape", &elements, &len) == EQ_OK &&
            len > 0) {
            sum += eq_gguf_read_u64le(elements + 8 * (len - 1));
        }
        (void)sum;
    }
    eq_gguf_close(file);
    if (status == EQ_OK) {   /* the model loader starts with eq_gguf_open: nothing new below a refusal */
        eq_model_params params = {1, 0, 0, 0};   /* one thread: no pool per input */
        eq_model *model = eq_model_open(input_path, &params, err, sizeof err);
        check_message(model != NULL ? EQ_OK : -1, err);
        eq_model_info info;
        if (model != NULL && eq_model_get_info(model, &info) == EQ_OK) {   /* hostile weights: run them */
            float *logits = malloc((size_t)info.vocab_size * sizeof *logits);
            int32_t token = 0;
            if (logits != NULL) {
                eq_model_eval(model, &token, 1, logits, 0);
            }
            free(logits);
        }
        eq_model_close(model);
    }
    return 0;
}
