/* The flat C API of the TensorRT shim (`shim.cpp`), bound on the Rust side in `api.rs`.
 *
 * A `segicl_trt` handle holds the factories of the TensorRT libraries the caller loaded, the
 * logger and, once a plan has been deserialized, TensorRT's runtime. Engines and contexts point
 * back to their handle, which must outlive them. Calls on one handle and its engines may come from
 * several threads, but one context is used by one thread at a time. */
#ifndef SEGICL_TRT_SHIM_H
#define SEGICL_TRT_SHIM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. */
#define SEGICL_TRT_OK 0
/* Failed: the messages say why. */
#define SEGICL_TRT_FAILED 1
/* TensorRT refused the input (a graph node, a tensor name): the messages name it. */
#define SEGICL_TRT_REFUSED 2

/* Plan precisions. */
#define SEGICL_TRT_F32 0
#define SEGICL_TRT_F16 1
#define SEGICL_TRT_INT8 2

/* Most dimensions a tensor of `segicl_trt_engine_tensor` has. */
#define SEGICL_TRT_MAX_RANK 8

typedef struct segicl_trt segicl_trt;
typedef struct segicl_trt_engine segicl_trt_engine;
typedef struct segicl_trt_context segicl_trt_context;

/* `createInferBuilder_INTERNAL` and `createInferRuntime_INTERNAL`. */
typedef void* (*segicl_trt_factory)(void* logger, int32_t version);
/* `createNvOnnxParser_INTERNAL`. */
typedef void* (*segicl_trt_parser_factory)(void* network, void* logger, int32_t version);

/* Bytes TensorRT owns: free with `segicl_trt_blob_free`. */
typedef struct {
    void* owner;
    uint8_t const* data;
    size_t len;
} segicl_trt_blob;

/* The TensorRT version of the headers the shim was compiled with: major·10000 + minor·100 + patch. */
int32_t segicl_trt_compiled_version(void);
/* 1 when those headers are TensorRT-RTX's, 0 for TensorRT's. */
int32_t segicl_trt_compiled_for_rtx(void);

/* A handle over the given factories (`create_parser` may be null: no plan can be built then). */
segicl_trt* segicl_trt_open(segicl_trt_factory create_builder, segicl_trt_factory create_runtime,
                            segicl_trt_parser_factory create_parser);
void segicl_trt_close(segicl_trt* trt);

/* Copies the warnings and errors logged since the last take (one per line, NUL-terminated,
 * truncated to `capacity`) and forgets them; returns their full length. With a null buffer it
 * only returns the length. */
size_t segicl_trt_take_messages(segicl_trt* trt, char* buffer, size_t capacity);

/* Parses an ONNX graph and builds a serialized plan in `precision`, with a workspace limit and
 * a timing cache to start from (may be null); on success fills `plan` and `timing_out` (the
 * cache after the build; may stay empty). SEGICL_TRT_REFUSED when the parser refused a node. */
int32_t segicl_trt_build(segicl_trt* trt, void const* onnx, size_t onnx_len, int32_t precision,
                         size_t workspace, void const* timing, size_t timing_len, segicl_trt_blob* plan,
                         segicl_trt_blob* timing_out);
void segicl_trt_blob_free(segicl_trt_blob* blob);

/* Deserializes a plan (null on failure: the messages say why). */
segicl_trt_engine* segicl_trt_deserialize(segicl_trt* trt, void const* plan, size_t plan_len);
void segicl_trt_engine_free(segicl_trt_engine* engine);
/* An I/O tensor of the engine: `io` 1 input, 2 output; its shape (`rank` ≤ SEGICL_TRT_MAX_RANK,
 * or -1) and TensorRT data type. SEGICL_TRT_REFUSED when the engine has no such tensor. */
int32_t segicl_trt_engine_tensor(segicl_trt_engine* engine, char const* name, int32_t* io, int64_t* dims,
                                 int32_t* rank, int32_t* data_type);

segicl_trt_context* segicl_trt_context_new(segicl_trt_engine* engine);
void segicl_trt_context_free(segicl_trt_context* context);
/* Sets the device address of an I/O tensor. */
int32_t segicl_trt_context_bind(segicl_trt_context* context, char const* name, void* address);
/* Enqueues the engine on a CUDA stream (`enqueueV3`). */
int32_t segicl_trt_context_enqueue(segicl_trt_context* context, void* stream);

#ifdef __cplusplus
}
#endif

#endif
