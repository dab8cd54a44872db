/*
 * A C program using libiuf_c through include/iuf.h only, run by tests/c_api.rs:
 *
 *   inspect MODEL WEIGHTS LIST OUT_DIR
 *
 * LIST has one image a line: `RAW WIDTH HEIGHT`, RAW being WIDTH * HEIGHT * 3 bytes of RGB. For
 * each image it prints `result INDEX OBJECT OBJECT_INDEX SCORE THRESHOLD DECISION PROBABILITY
 * QUANTILE` (floats as the hex of their bits, so the test compares them exactly) and writes the
 * anomaly map to OUT_DIR/INDEX.f32. Then it checks, exiting non-zero with a message on the first
 * failure: the error codes and messages of bad calls, judging an image as a named object, and
 * that threads inspecting at once on one handle answer exactly what one thread did.
 */
#define _POSIX_C_SOURCE 200809L
#include "iuf.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_IMAGES 64
#define THREADS 4

typedef struct {
    unsigned char *rgb; /* rows padded to `stride` bytes */
    uint32_t width, height;
    size_t stride;
    iuf_result result;
    float *map;
} image;

static iuf_model *model;
static image images[MAX_IMAGES];
static int count;

static void fail(const char *what) {
    fprintf(stderr, "FAIL: %s (last error: %s)\n", what, iuf_last_error_message());
    exit(1);
}

static void expect(int ok, const char *what) {
    if (!ok) fail(what);
}

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static uint64_t bits64(double f) {
    uint64_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Reads a packed RGB file into rows `stride` bytes apart (padding filled with junk, which the
 * library must not read as pixels). */
static void load(image *im, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) fail(path);
    im->stride = 3 * (size_t)im->width + 5;
    im->rgb = malloc(im->stride * im->height);
    if (!im->rgb) fail("out of memory");
    memset(im->rgb, 0xA5, im->stride * im->height);
    for (uint32_t y = 0; y < im->height; y++) {
        if (fread(im->rgb + y * im->stride, 3, im->width, f) != im->width) fail(path);
    }
    fclose(f);
}

static int same_result(const iuf_result *a, const iuf_result *b) {
    return bits(a->score) == bits(b->score) && bits(a->threshold) == bits(b->threshold) &&
           a->decision == b->decision && a->object_index == b->object_index &&
           strcmp(a->object, b->object) == 0 &&
           bits(a->object_probability) == bits(b->object_probability);
}

/* Each thread inspects every image, starting at its own offset, and compares with the first
 * pass. */
static void *worker(void *arg) {
    int first = (int)(size_t)arg;
    for (int k = 0; k < count; k++) {
        image *im = &images[(first + k) % count];
        size_t n = (size_t)im->width * im->height;
        float *map = malloc(n * sizeof(float));
        iuf_result r;
        if (!map) return "out of memory";
        if (iuf_inspect_rgb(model, im->rgb, im->width, im->height, im->stride, NULL, &r, map, n) !=
            IUF_OK) {
            free(map);
            return "a concurrent iuf_inspect_rgb failed";
        }
        int same = same_result(&r, &im->result) && memcmp(map, im->map, n * sizeof(float)) == 0;
        free(map);
        if (!same) return "a concurrent inspection answered differently from the first";
    }
    return NULL;
}

static void check_errors(const char *weights) {
    iuf_model *m = (iuf_model *)1;
    iuf_result r;
    float small[4];
    image *im = &images[0];

    expect(iuf_model_open("no-such-model.safetensors", weights, &m) == IUF_ERR_MODEL,
           "a missing model is IUF_ERR_MODEL");
    expect(m == NULL, "a failed open sets the handle to NULL");
    expect(strstr(iuf_last_error_message(), "no-such-model.safetensors: no such file") != NULL,
           "the message names the missing model");
    expect(iuf_model_open(NULL, weights, &m) == IUF_ERR_INVALID_ARGUMENT, "a NULL path");
    expect(iuf_model_open("x", weights, NULL) == IUF_ERR_INVALID_ARGUMENT, "a NULL handle slot");

    expect(iuf_inspect_rgb(model, im->rgb, im->width, im->height, 3 * (size_t)im->width - 1, NULL,
                           &r, NULL, 0) == IUF_ERR_INVALID_ARGUMENT,
           "a stride shorter than a row");
    expect(strstr(iuf_last_error_message(), "stride") != NULL, "the message names the stride");
    expect(iuf_inspect_rgb(model, im->rgb, 0, im->height, im->stride, NULL, &r, NULL, 0) ==
               IUF_ERR_INVALID_ARGUMENT,
           "a zero width");
    expect(iuf_inspect_rgb(model, NULL, im->width, im->height, im->stride, NULL, &r, NULL, 0) ==
               IUF_ERR_INVALID_ARGUMENT,
           "NULL pixels");
    expect(iuf_inspect_rgb(model, im->rgb, im->width, im->height, im->stride, "no-such-object", &r,
                           NULL, 0) == IUF_ERR_UNKNOWN_OBJECT,
           "an unknown object");
    expect(strstr(iuf_last_error_message(), "no-such-object") != NULL,
           "the message names the unknown object");
    expect(iuf_inspect_rgb(model, im->rgb, im->width, im->height, im->stride, NULL, &r, small, 4) ==
               IUF_ERR_BUFFER_TOO_SMALL,
           "a map buffer too small");

    /* Success clears the message. */
    expect(iuf_inspect_rgb(model, im->rgb, im->width, im->height, im->stride, NULL, &r, NULL, 0) ==
               IUF_OK,
           "inspecting without a map");
    expect(iuf_last_error_message()[0] == '\0', "success clears the message");
    expect(r.map_width == 0 && r.map_height == 0, "no map, no map size");
    expect(same_result(&r, &im->result), "the answer without a map is the same");
    iuf_model_free(NULL);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL WEIGHTS LIST OUT_DIR\n", argv[0]);
        return 2;
    }
    printf("version %s\n", iuf_version());
    if (iuf_model_open(argv[1], argv[2], &model) != IUF_OK) fail("iuf_model_open");

    const char *const *names;
    size_t objects;
    if (iuf_model_objects(model, &names, &objects) != IUF_OK) fail("iuf_model_objects");
    for (size_t i = 0; i < objects; i++) printf("object %zu %s\n", i, names[i]);

    double inspect_seconds = 0;
    FILE *list = fopen(argv[3], "r");
    if (!list) fail(argv[3]);
    char raw[4096];
    unsigned w, h;
    while (count < MAX_IMAGES && fscanf(list, "%4095s %u %u", raw, &w, &h) == 3) {
        image *im = &images[count];
        im->width = w;
        im->height = h;
        load(im, raw);
        size_t n = (size_t)w * h;
        im->map = malloc(n * sizeof(float));
        if (!im->map) fail("out of memory");
        iuf_result *r = &im->result;
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (iuf_inspect_rgb(model, im->rgb, w, h, im->stride, NULL, r, im->map, n) != IUF_OK)
            fail("iuf_inspect_rgb");
        clock_gettime(CLOCK_MONOTONIC, &t1);
        inspect_seconds += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        expect(r->map_width == w && r->map_height == h, "the map has the image's size");
        expect(r->object_index < objects && strcmp(names[r->object_index], r->object) == 0,
               "object_index indexes iuf_model_objects");
        printf("result %d %s %u %08x %08x %d %08x %016llx\n", count, r->object, r->object_index,
               bits(r->score), bits(r->threshold), (int)r->decision, bits(r->object_probability),
               (unsigned long long)bits64(r->quantile));
        char path[4200];
        snprintf(path, sizeof path, "%s/%d.f32", argv[4], count);
        FILE *out = fopen(path, "wb");
        if (!out || fwrite(im->map, sizeof(float), n, out) != n) fail(path);
        fclose(out);
        count++;
    }
    fclose(list);
    if (count == 0) fail("no image in the list");
    printf("inspect %.1f ms per image (%d images, one at a time, map included)\n",
           1e3 * inspect_seconds / count, count);

    /* Judged as a named object: that object, whatever the image shows. */
    for (size_t i = 0; i < objects; i++) {
        iuf_result r;
        image *im = &images[0];
        if (iuf_inspect_rgb(model, im->rgb, im->width, im->height, im->stride, names[i], &r, NULL,
                            0) != IUF_OK)
            fail("iuf_inspect_rgb with an object");
        expect(r.object_index == i && strcmp(r.object, names[i]) == 0,
               "an image judged as a named object is judged as that object");
        printf("as %zu %s %08x %d\n", i, r.object, bits(r.score), (int)r.decision);
    }

    check_errors(argv[2]);

    pthread_t threads[THREADS];
    for (int t = 0; t < THREADS; t++) {
        if (pthread_create(&threads[t], NULL, worker, (void *)(size_t)(t * count / THREADS)) != 0)
            fail("pthread_create");
    }
    for (int t = 0; t < THREADS; t++) {
        void *err;
        pthread_join(threads[t], &err);
        if (err) fail((const char *)err);
    }
    printf("threads %d agree\n", THREADS);

    for (int i = 0; i < count; i++) {
        free(images[i].rgb);
        free(images[i].map);
    }
    iuf_model_free(model);
    printf("done\n");
    return 0;
}
