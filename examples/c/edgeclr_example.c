/*
 * edgeclr from C: open the model, embed images, enrol two classes into a
 * k-NN head, predict, save and reload the head, use a linear probe, run
 * adaptation steps and resume them from a checkpoint — then misuse the API
 * on purpose and check that every misuse is rejected with its status code.
 *
 *   edgeclr_example [--quick] MANIFEST WORKDIR [A.ppm B.ppm]
 *
 * With two binary PPM (P6) images, class "a" is enrolled from A and class
 * "b" from B, and their mirror images must be recognised. Without, two
 * deterministic synthetic images are used. --quick embeds a single image
 * (for valgrind, where each encoder pass takes seconds) and derives the
 * second class from it. Exit status 0 means every check passed.
 *
 * Build (see ci/check_capi):
 *   gcc -std=c11 -Wall -Wextra -Werror -I runtime/capi/include examples/c/edgeclr_example.c \
 *       -L target/release -ledgeclr -Wl,-rpath,target/release -lpthread -lm
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgeclr.h"

static int failures = 0;

/* Checks that `got` is `want`; on a mismatch prints the call and the message. */
static void expect(EdgeclrStatus got, EdgeclrStatus want, const char *call, int line) {
    if (got != want) {
        fprintf(stderr, "FAIL line %d: %s returned %s, expected %s: %s\n", line, call,
                edgeclr_status_name(got), edgeclr_status_name(want), edgeclr_last_error());
        failures++;
    } else if (want != EDGECLR_STATUS_OK) {
        const char *msg = edgeclr_last_error();
        if (msg == NULL || msg[0] == '\0') {
            fprintf(stderr, "FAIL line %d: %s gave no error message\n", line, call);
            failures++;
        } else {
            printf("  rejected as expected: %-31s %s\n", edgeclr_status_name(got), msg);
        }
    }
}
#define EXPECT(call, want) expect((call), (want), #call, __LINE__)
#define OK(call) EXPECT(call, EDGECLR_STATUS_OK)

static void check(int cond, const char *what, int line) {
    if (!cond) {
        fprintf(stderr, "FAIL line %d: %s\n", line, what);
        failures++;
    }
}
#define CHECK(cond) check((cond), #cond, __LINE__)

typedef struct {
    uint32_t width, height;
    uint8_t *rgb; /* packed: stride = width * 3 */
} Image;

/* A deterministic test image: stripes (kind 0) or a checkerboard (kind 1). */
static Image synthetic(int kind) {
    Image im = {96, 64, NULL};
    im.rgb = malloc((size_t)im.width * im.height * 3);
    for (uint32_t y = 0; y < im.height; y++)
        for (uint32_t x = 0; x < im.width; x++) {
            uint8_t *p = im.rgb + ((size_t)y * im.width + x) * 3;
            int on = kind == 0 ? (y / 8) % 2 : ((x / 12) + (y / 12)) % 2;
            p[0] = on ? 230 : (uint8_t)(x * 2);
            p[1] = on ? (uint8_t)(y * 3) : 40;
            p[2] = kind == 0 ? 60 : 200;
        }
    return im;
}

/* Reads a binary PPM (P6, maxval 255): the header is text, the pixels raw RGB. */
static int read_ppm(const char *path, Image *im) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    unsigned w, h, maxval;
    int ok = fscanf(f, "P6 %u %u %u", &w, &h, &maxval) == 3 && maxval == 255 && fgetc(f) != EOF;
    if (ok) {
        im->width = w;
        im->height = h;
        im->rgb = malloc((size_t)w * h * 3);
        ok = im->rgb && fread(im->rgb, 1, (size_t)w * h * 3, f) == (size_t)w * h * 3;
    }
    fclose(f);
    return ok ? 0 : -1;
}

/* The mirror image (a view the model has not seen). */
static Image mirrored(const Image *src) {
    Image im = {src->width, src->height, malloc((size_t)src->width * src->height * 3)};
    for (uint32_t y = 0; y < src->height; y++)
        for (uint32_t x = 0; x < src->width; x++)
            memcpy(im.rgb + ((size_t)y * im.width + x) * 3,
                   src->rgb + ((size_t)y * src->width + (src->width - 1 - x)) * 3, 3);
    return im;
}

static EdgeclrStatus embed(EdgeclrModel m, const Image *im, float *out, size_t dim) {
    return edgeclr_model_embed_rgb8(m, im->rgb, (size_t)im->width * im->height * 3, im->width,
                                    im->height, (size_t)im->width * 3, out, dim);
}

/* Writes a nearest-mean linear probe (weights = unit class examples) in the
 * format `edgeclr probe train` writes, so the probe API has a file to load. */
static int write_probe(const char *path, const float *a, const float *b, size_t dim) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"format\":\"edgeclr-linear-probe\",\"version\":1,\"dim\":%zu,", dim);
    fprintf(f, "\"classes\":[\"a\",\"b\"],\"normalized\":true,\"weights\":[");
    const float *rows[2] = {a, b};
    for (int r = 0; r < 2; r++) {
        double norm = 0;
        for (size_t i = 0; i < dim; i++) norm += (double)rows[r][i] * rows[r][i];
        norm = sqrt(norm);
        fprintf(f, "%s[", r ? "," : "");
        for (size_t i = 0; i < dim; i++) fprintf(f, "%s%.8g", i ? "," : "", rows[r][i] / norm);
        fprintf(f, "]");
    }
    fprintf(f, "],\"bias\":[0,0]}\n");
    return fclose(f);
}

typedef struct {
    EdgeclrKnn knn;
    const float *query;
    size_t dim, calls, ok, busy, other;
} Hammer;

/* Calls predict on one shared head in a loop; each call must be OK or BUSY. */
static void *hammer(void *arg) {
    Hammer *h = arg;
    for (size_t i = 0; i < h->calls; i++) {
        size_t cls;
        EdgeclrStatus s = edgeclr_knn_predict(h->knn, h->query, h->dim, &cls, NULL);
        if (s == EDGECLR_STATUS_OK) h->ok++;
        else if (s == EDGECLR_STATUS_BUSY) h->busy++;
        else h->other++;
    }
    return NULL;
}

static void join_path(char *out, size_t n, const char *dir, const char *file) {
    snprintf(out, n, "%s/%s", dir, file);
}

int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    char **args = argv + 1 + quick;
    int nargs = argc - 1 - quick;
    if (nargs != 2 && nargs != 4) {
        fprintf(stderr, "usage: %s [--quick] MANIFEST WORKDIR [A.ppm B.ppm]\n", argv[0]);
        return 2;
    }
    const char *manifest = args[0], *workdir = args[1];
    char head_path[4096], probe_path[4096], ckpt_path[4096];
    join_path(head_path, sizeof head_path, workdir, "head.json");
    join_path(probe_path, sizeof probe_path, workdir, "probe.json");
    join_path(ckpt_path, sizeof ckpt_path, workdir, "adapt.safetensors");
    printf("edgeclr %s, %s mode\n", edgeclr_version(), quick ? "quick" : "full");

    Image img[2];
    for (int i = 0; i < 2; i++) {
        if (nargs == 4) {
            if (read_ppm(args[2 + i], &img[i]) != 0) {
                fprintf(stderr, "cannot read %s as a binary PPM\n", args[2 + i]);
                return 2;
            }
        } else {
            img[i] = synthetic(i);
        }
    }

    /* --- open the model --- */
    EdgeclrModel model = {0};
    OK(edgeclr_model_open(manifest, 1, &model));
    if (failures) return 1;
    size_t dim = 0;
    OK(edgeclr_model_embedding_dim(model, &dim));
    printf("model open, embeddings are %zu-d\n", dim);

    /* --- embed: e[0], e[1] the two classes; q[0], q[1] the queries --- */
    float *e[2], *q[2];
    for (int i = 0; i < 2; i++) {
        e[i] = calloc(dim, sizeof(float));
        q[i] = calloc(dim, sizeof(float));
    }
    OK(embed(model, &img[0], e[0], dim));
    if (quick) {
        /* One encoder pass only: class b is a rearranged copy of a, and the
         * queries are the examples themselves. */
        for (size_t i = 0; i < dim; i++) e[1][i] = e[0][dim - 1 - i];
        memcpy(q[0], e[0], dim * sizeof(float));
        memcpy(q[1], e[1], dim * sizeof(float));
    } else {
        OK(embed(model, &img[1], e[1], dim));
        for (int i = 0; i < 2; i++) {
            Image m = mirrored(&img[i]);
            OK(embed(model, &m, q[i], dim));
            free(m.rgb);
        }
        /* A padded copy (stride > width * 3) embeds exactly like the packed one. */
        size_t stride = (size_t)img[0].width * 3 + 5;
        uint8_t *padded = calloc(stride * img[0].height, 1);
        for (uint32_t y = 0; y < img[0].height; y++)
            memcpy(padded + y * stride, img[0].rgb + (size_t)y * img[0].width * 3,
                   (size_t)img[0].width * 3);
        float *again = calloc(dim, sizeof(float));
        OK(edgeclr_model_embed_rgb8(model, padded, stride * img[0].height, img[0].width,
                                    img[0].height, stride, again, dim));
        CHECK(memcmp(again, e[0], dim * sizeof(float)) == 0);
        free(again);
        free(padded);
    }

    /* --- k-NN head: enrol, predict, save, reload, forget --- */
    EdgeclrKnn knn = {0};
    OK(edgeclr_knn_new(dim, 1, &knn));
    OK(edgeclr_knn_enroll(knn, "a", e[0], dim));
    OK(edgeclr_knn_enroll(knn, "b", e[1], dim));
    for (int i = 0; i < 2; i++) {
        size_t cls = 99;
        float score = 0;
        OK(edgeclr_knn_predict(knn, q[i], dim, &cls, &score));
        char name[16];
        OK(edgeclr_knn_class_name(knn, cls, name, sizeof name, NULL));
        printf("k-NN: query %d -> class %s (vote %.2f)\n", i, name, score);
        CHECK(cls == (size_t)i);
    }
    OK(edgeclr_knn_save(knn, head_path));
    OK(edgeclr_knn_free(knn));
    EdgeclrKnn loaded = {0};
    OK(edgeclr_knn_load(head_path, &loaded));
    size_t n = 0, cls = 99, removed = 0;
    OK(edgeclr_knn_num_classes(loaded, &n));
    CHECK(n == 2);
    OK(edgeclr_knn_predict(loaded, q[1], dim, &cls, NULL));
    CHECK(cls == 1);
    OK(edgeclr_knn_forget(loaded, "a", &removed));
    OK(edgeclr_knn_num_classes(loaded, &n));
    CHECK(removed == 1 && n == 1);
    printf("k-NN head saved, reloaded (2 classes), class a forgotten (%zu left)\n", n);

    /* --- linear probe (a file in `edgeclr probe train`'s format) --- */
    CHECK(write_probe(probe_path, e[0], e[1], dim) == 0);
    EdgeclrProbe probe = {0};
    OK(edgeclr_probe_load(probe_path, &probe));
    for (int i = 0; i < 2; i++) {
        float proba[2] = {0, 0};
        OK(edgeclr_probe_predict(probe, q[i], dim, &cls, proba, 2));
        printf("probe: query %d -> class %zu (p = %.3f, %.3f)\n", i, cls, proba[0], proba[1]);
        CHECK(cls == (size_t)i && fabsf(proba[0] + proba[1] - 1.0f) < 1e-5f);
    }

    /* --- adaptation: two steps on a batch of 4, checkpoint, resume --- */
    const size_t rows = 4;
    float *x1 = malloc(rows * dim * sizeof(float)), *x2 = malloc(rows * dim * sizeof(float));
    for (size_t r = 0; r < rows; r++)
        for (size_t i = 0; i < dim; i++) {
            const float *src = r < 2 ? e[r] : q[r - 2];
            x1[r * dim + i] = src[i];
            x2[r * dim + i] = src[i] * 0.9f + 0.01f * (float)((i + r) % 7);
        }
    EdgeclrTrainer trainer = {0};
    OK(edgeclr_trainer_new(model, "{\"loss\": \"infonce:tau=0.2\", \"bank_size\": 0, \"batch_size\": 4, "
                           "\"warmup_epochs\": 0, \"lr\": 0.001}", 2,
                           &trainer));
    double losses[2] = {0, 0};
    for (int s = 0; s < 2; s++) {
        EdgeclrStepReport rep = {0};
        OK(edgeclr_trainer_step(trainer, x1, x2, rows, dim, &rep));
        losses[s] = rep.loss;
        printf("adapt step %llu: loss %.4f, lr %.2e, |grad| %.4f\n", (unsigned long long)rep.step,
               rep.loss, rep.lr, rep.grad_norm);
        CHECK(rep.step == (uint64_t)s + 1 && isfinite(rep.loss));
    }
    CHECK(losses[1] < losses[0]); /* the first step helped on the same batch */
    float *adapted = malloc(rows * dim * sizeof(float)), *resumed_out = malloc(rows * dim * sizeof(float));
    OK(edgeclr_trainer_adapt(trainer, x1, rows, dim, adapted, rows * dim));
    OK(edgeclr_trainer_save(trainer, ckpt_path));
    EdgeclrTrainer resumed = {0};
    OK(edgeclr_trainer_load(model, ckpt_path, 2, &resumed));
    OK(edgeclr_trainer_adapt(resumed, x1, rows, dim, resumed_out, rows * dim));
    CHECK(memcmp(adapted, resumed_out, rows * dim * sizeof(float)) == 0);
    printf("checkpoint saved and resumed: identical adapted embeddings\n");

    /* --- misuse: each must be rejected with its status and a message --- */
    printf("misuse:\n");
    EdgeclrModel null_model = {0};
    EXPECT(embed(null_model, &img[0], e[0], dim), EDGECLR_STATUS_NULL_HANDLE);
    EXPECT(embed(model, &img[0], e[0], dim - 1), EDGECLR_STATUS_BUFFER_SIZE);
    EXPECT(edgeclr_model_embed_rgb8(model, img[0].rgb, 10, img[0].width, img[0].height,
                                    (size_t)img[0].width * 3, e[0], dim),
           EDGECLR_STATUS_BUFFER_SIZE);
    EXPECT(edgeclr_model_embed_rgb8(model, img[0].rgb, (size_t)img[0].width * img[0].height * 3,
                                    img[0].width, img[0].height, 1, e[0], dim),
           EDGECLR_STATUS_INVALID_ARGUMENT);
    EXPECT(edgeclr_model_embed_rgb8(model, NULL, 0, 1, 1, 3, e[0], dim), EDGECLR_STATUS_NULL_POINTER);
    EXPECT(edgeclr_knn_enroll(loaded, "a", e[0], dim + 1), EDGECLR_STATUS_BUFFER_SIZE);
    EXPECT(edgeclr_trainer_step(trainer, x1, x2, 1, dim, NULL), EDGECLR_STATUS_INVALID_ARGUMENT);
    EXPECT(edgeclr_knn_save(loaded, NULL), EDGECLR_STATUS_NULL_POINTER);
    EXPECT(edgeclr_knn_save(loaded, "\xff\xfe.json"), EDGECLR_STATUS_INVALID_ARGUMENT);
    EXPECT(edgeclr_knn_load("/nonexistent/head.json", &knn), EDGECLR_STATUS_IO);
    EdgeclrModel missing = {0};
    EXPECT(edgeclr_model_open("/nonexistent/manifest.toml", 1, &missing), EDGECLR_STATUS_MODEL);
    CHECK(missing.id == 0);
    EdgeclrTrainer bad_trainer = {0};
    EXPECT(edgeclr_trainer_new(model, "{\"lr\": -1}", 1, &bad_trainer), EDGECLR_STATUS_TRAIN);
    EXPECT(edgeclr_trainer_new(model, "{\"lr\": 0.1, \"typo\": 1}", 1, &bad_trainer),
           EDGECLR_STATUS_INVALID_ARGUMENT);
    EdgeclrModel knn_as_model = {loaded.id};
    EXPECT(edgeclr_model_embedding_dim(knn_as_model, &n), EDGECLR_STATUS_INVALID_HANDLE);
    EXPECT(edgeclr_knn_forget(loaded, "nobody", NULL), EDGECLR_STATUS_PROBE);
    /* knn was freed above: using or freeing it again is detected. */
    EXPECT(edgeclr_knn_enroll(knn, "a", e[0], dim), EDGECLR_STATUS_INVALID_HANDLE);
    EXPECT(edgeclr_knn_free(knn), EDGECLR_STATUS_INVALID_HANDLE);
    /* The message outlives successful calls and is per thread. */
    OK(edgeclr_knn_num_classes(loaded, &n));
    CHECK(strstr(edgeclr_last_error(), "already freed") != NULL);

    /* --- two threads on one handle: every call is OK or BUSY, never a race --- */
    Hammer h[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        h[i] = (Hammer){loaded, q[1], dim, quick ? 50 : 2000, 0, 0, 0};
        pthread_create(&t[i], NULL, hammer, &h[i]);
    }
    for (int i = 0; i < 2; i++) pthread_join(t[i], NULL);
    printf("two threads, one head: %zu OK, %zu BUSY, %zu other\n", h[0].ok + h[1].ok,
           h[0].busy + h[1].busy, h[0].other + h[1].other);
    CHECK(h[0].other + h[1].other == 0 && h[0].ok + h[1].ok > 0);

    /* --- clean up: every handle freed exactly once --- */
    OK(edgeclr_trainer_free(trainer));
    OK(edgeclr_trainer_free(resumed));
    OK(edgeclr_probe_free(probe));
    OK(edgeclr_knn_free(loaded));
    OK(edgeclr_model_free(model));
    EXPECT(edgeclr_model_free(model), EDGECLR_STATUS_INVALID_HANDLE);
    for (int i = 0; i < 2; i++) {
        free(e[i]);
        free(q[i]);
        free(img[i].rgb);
    }
    free(x1);
    free(x2);
    free(adapted);
    free(resumed_out);

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
