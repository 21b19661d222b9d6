// The TensorRT shim: TensorRT's C++ interfaces behind flat C functions (declared in
// `shim.h`, bound in `api.rs`).
//
// It is compiled by `runtime/build.rs` against the TensorRT headers found at build time, so the
// virtual-call layout matches the TensorRT major those headers describe. It links nothing from
// TensorRT: the Rust side loads the libraries at run time and hands the three factory functions
// to `segicl_trt_open`; everything else is a virtual call on the objects they create.
//
// Every function is noexcept and catches everything: an error is a return code plus the lines
// TensorRT logged, which `segicl_trt_take_messages` hands over.

#include "shim.h"

#include <NvInfer.h>
#include <NvInferVersion.h>
#include <NvOnnxParser.h>

#include <cstring>
#include <mutex>
#include <string>

#if defined(TRT_MAJOR_RTX)
#define SEGICL_TRT_RTX 1
#else
#define SEGICL_TRT_RTX 0
#if NV_TENSORRT_MAJOR != 10 || NV_TENSORRT_MINOR < 3
#error "the segicl TensorRT shim is written for TensorRT 10.3 or a later 10.x (JetPack 6), or TensorRT-RTX"
#endif
#endif

using namespace nvinfer1;

namespace {

// Collects TensorRT's warnings and errors; `errors` counts the errors, so a call that logged one
// fails even when TensorRT returned an object (the lean runtime without a GPU does that).
class Collector final : public ILogger {
public:
    void log(Severity severity, AsciiChar const* msg) noexcept override {
        if (severity > Severity::kWARNING) {
            return;
        }
        try {
            std::lock_guard<std::mutex> lock(mutex);
            bool error = severity <= Severity::kERROR;
            errors += error ? 1 : 0;
            text += error ? "error: " : "warning: ";
            text += msg != nullptr ? msg : "(no text)";
            text += '\n';
        } catch (...) {
        }
    }

    // Appends a line of the shim's own.
    void error(std::string const& line) noexcept { log(Severity::kERROR, line.c_str()); }

    int error_count() noexcept {
        std::lock_guard<std::mutex> lock(mutex);
        return errors;
    }

    std::mutex mutex;
    std::string text;
    int errors = 0;
};

// Deletes a TensorRT object at scope exit.
template <typename T> struct Owned {
    T* p = nullptr;
    explicit Owned(T* p) : p(p) {}
    Owned(Owned const&) = delete;
    Owned& operator=(Owned const&) = delete;
    ~Owned() { delete p; }
    T* operator->() const { return p; }
    T* release() {
        T* r = p;
        p = nullptr;
        return r;
    }
};

}  // namespace

struct segicl_trt {
    Collector logger;
    segicl_trt_factory create_builder;
    segicl_trt_factory create_runtime;
    segicl_trt_parser_factory create_parser;
    IRuntime* runtime = nullptr;
};

struct segicl_trt_engine {
    segicl_trt* trt;
    ICudaEngine* engine;
};

struct segicl_trt_context {
    segicl_trt* trt;
    IExecutionContext* context;
};

extern "C" {

int32_t segicl_trt_compiled_version(void) {
    return NV_TENSORRT_MAJOR * 10000 + NV_TENSORRT_MINOR * 100 + NV_TENSORRT_PATCH;
}

int32_t segicl_trt_compiled_for_rtx(void) { return SEGICL_TRT_RTX; }

segicl_trt* segicl_trt_open(segicl_trt_factory create_builder, segicl_trt_factory create_runtime,
                            segicl_trt_parser_factory create_parser) {
    try {
        auto* trt = new segicl_trt();
        trt->create_builder = create_builder;
        trt->create_runtime = create_runtime;
        trt->create_parser = create_parser;
        return trt;
    } catch (...) {
        return nullptr;
    }
}

void segicl_trt_close(segicl_trt* trt) {
    if (trt != nullptr) {
        delete trt->runtime;
        delete trt;
    }
}

size_t segicl_trt_take_messages(segicl_trt* trt, char* buffer, size_t capacity) {
    if (trt == nullptr) {
        return 0;
    }
    std::lock_guard<std::mutex> lock(trt->logger.mutex);
    size_t length = trt->logger.text.size();
    if (buffer != nullptr && capacity > 0) {
        size_t n = length < capacity - 1 ? length : capacity - 1;
        std::memcpy(buffer, trt->logger.text.data(), n);
        buffer[n] = '\0';
        trt->logger.text.clear();
        trt->logger.errors = 0;
    }
    return length;
}

int32_t segicl_trt_build(segicl_trt* trt, void const* onnx, size_t onnx_len, int32_t precision,
                         size_t workspace, void const* timing, size_t timing_len, segicl_trt_blob* plan,
                         segicl_trt_blob* timing_out) {
    if (trt == nullptr || onnx == nullptr || plan == nullptr || timing_out == nullptr) {
        return SEGICL_TRT_FAILED;
    }
    *plan = segicl_trt_blob{nullptr, nullptr, 0};
    *timing_out = segicl_trt_blob{nullptr, nullptr, 0};
    if (trt->create_builder == nullptr || trt->create_parser == nullptr) {
        trt->logger.error("building a plan needs the ONNX parser library, which is not loaded");
        return SEGICL_TRT_FAILED;
    }
    try {
        int before = trt->logger.error_count();
        Owned<IBuilder> builder(static_cast<IBuilder*>(trt->create_builder(&trt->logger, NV_TENSORRT_VERSION)));
        if (builder.p == nullptr || trt->logger.error_count() != before) {
            trt->logger.error("TensorRT could not create a builder");
            return SEGICL_TRT_FAILED;
        }
        NetworkDefinitionCreationFlags flags = 0;
#if SEGICL_TRT_RTX
        (void)precision;  // TensorRT-RTX networks are strongly typed: the graph's types decide.
#else
        // f32 keeps every layer in f32; fp16 and int8 plans need weak typing for kFP16/kINT8.
        if (precision == SEGICL_TRT_F32) {
            flags = 1U << static_cast<uint32_t>(NetworkDefinitionCreationFlag::kSTRONGLY_TYPED);
        }
#endif
        Owned<INetworkDefinition> network(builder->createNetworkV2(flags));
        if (network.p == nullptr) {
            trt->logger.error("TensorRT could not create a network");
            return SEGICL_TRT_FAILED;
        }
        Owned<nvonnxparser::IParser> parser(
            static_cast<nvonnxparser::IParser*>(trt->create_parser(network.p, &trt->logger, NV_ONNX_PARSER_VERSION)));
        if (parser.p == nullptr) {
            trt->logger.error("TensorRT could not create an ONNX parser");
            return SEGICL_TRT_FAILED;
        }
        if (!parser->parse(onnx, onnx_len)) {
            for (int i = 0; i < parser->getNbErrors(); ++i) {
                nvonnxparser::IParserError const* e = parser->getError(i);
                char const* name = e->nodeName();
                char const* op = e->nodeOperator();
                std::string line = "node ";
                line += name != nullptr && *name != '\0' ? std::string("`") + name + "`" : std::to_string(e->node());
                if (op != nullptr && *op != '\0') {
                    line += std::string(" (") + op + ")";
                }
                line += ": ";
                line += e->desc() != nullptr ? e->desc() : "refused";
                trt->logger.error(line);
            }
            return SEGICL_TRT_REFUSED;
        }
        Owned<IBuilderConfig> config(builder->createBuilderConfig());
        if (config.p == nullptr) {
            trt->logger.error("TensorRT could not create a builder configuration");
            return SEGICL_TRT_FAILED;
        }
        config->setMemoryPoolLimit(MemoryPoolType::kWORKSPACE, workspace);
#if !SEGICL_TRT_RTX
        if (precision == SEGICL_TRT_F16 || precision == SEGICL_TRT_INT8) {
            config->setFlag(BuilderFlag::kFP16);
        }
        if (precision == SEGICL_TRT_INT8) {
            config->setFlag(BuilderFlag::kINT8);
        }
#endif
        Owned<ITimingCache> cache(config->createTimingCache(timing, timing != nullptr ? timing_len : 0));
        if (cache.p != nullptr) {
            config->setTimingCache(*cache.p, false);
        }
        Owned<IHostMemory> built(builder->buildSerializedNetwork(*network.p, *config.p));
        if (built.p == nullptr || built->size() == 0 || trt->logger.error_count() != before) {
            trt->logger.error("TensorRT could not build the plan");
            return SEGICL_TRT_FAILED;
        }
        if (ITimingCache const* used = config->getTimingCache()) {
            if (IHostMemory* serialized = used->serialize()) {
                *timing_out = segicl_trt_blob{serialized, static_cast<uint8_t const*>(serialized->data()),
                                              serialized->size()};
            }
        }
        IHostMemory* memory = built.release();
        *plan = segicl_trt_blob{memory, static_cast<uint8_t const*>(memory->data()), memory->size()};
        return SEGICL_TRT_OK;
    } catch (std::exception const& e) {
        trt->logger.error(std::string("exception while building: ") + e.what());
    } catch (...) {
        trt->logger.error("exception while building");
    }
    return SEGICL_TRT_FAILED;
}

void segicl_trt_blob_free(segicl_trt_blob* blob) {
    if (blob != nullptr) {
        delete static_cast<IHostMemory*>(blob->owner);
        *blob = segicl_trt_blob{nullptr, nullptr, 0};
    }
}

segicl_trt_engine* segicl_trt_deserialize(segicl_trt* trt, void const* plan, size_t plan_len) {
    if (trt == nullptr || plan == nullptr) {
        return nullptr;
    }
    try {
        int before = trt->logger.error_count();
        if (trt->runtime == nullptr) {
            auto* runtime = static_cast<IRuntime*>(trt->create_runtime(&trt->logger, NV_TENSORRT_VERSION));
            if (runtime == nullptr || trt->logger.error_count() != before) {
                delete runtime;
                trt->logger.error("TensorRT could not create a runtime");
                return nullptr;
            }
            trt->runtime = runtime;
        }
        Owned<ICudaEngine> engine(trt->runtime->deserializeCudaEngine(plan, plan_len));
        if (engine.p == nullptr || trt->logger.error_count() != before) {
            trt->logger.error("TensorRT refused the plan");
            return nullptr;
        }
        return new segicl_trt_engine{trt, engine.release()};
    } catch (...) {
        trt->logger.error("exception while deserializing the plan");
        return nullptr;
    }
}

void segicl_trt_engine_free(segicl_trt_engine* engine) {
    if (engine != nullptr) {
        delete engine->engine;
        delete engine;
    }
}

int32_t segicl_trt_engine_tensor(segicl_trt_engine* engine, char const* name, int32_t* io, int64_t* dims,
                                 int32_t* rank, int32_t* data_type) {
    if (engine == nullptr || name == nullptr || io == nullptr || dims == nullptr || rank == nullptr ||
        data_type == nullptr) {
        return SEGICL_TRT_FAILED;
    }
    try {
        TensorIOMode mode = engine->engine->getTensorIOMode(name);
        if (mode == TensorIOMode::kNONE) {
            return SEGICL_TRT_REFUSED;
        }
        *io = mode == TensorIOMode::kINPUT ? 1 : 2;
        Dims shape = engine->engine->getTensorShape(name);
        *rank = shape.nbDims < 0 || shape.nbDims > SEGICL_TRT_MAX_RANK ? -1 : shape.nbDims;
        for (int32_t i = 0; i < *rank; ++i) {
            dims[i] = shape.d[i];
        }
        *data_type = static_cast<int32_t>(engine->engine->getTensorDataType(name));
        return SEGICL_TRT_OK;
    } catch (...) {
        return SEGICL_TRT_FAILED;
    }
}

segicl_trt_context* segicl_trt_context_new(segicl_trt_engine* engine) {
    if (engine == nullptr) {
        return nullptr;
    }
    try {
        int before = engine->trt->logger.error_count();
        Owned<IExecutionContext> context(engine->engine->createExecutionContext());
        if (context.p == nullptr || engine->trt->logger.error_count() != before) {
            engine->trt->logger.error("TensorRT could not create an execution context");
            return nullptr;
        }
        return new segicl_trt_context{engine->trt, context.release()};
    } catch (...) {
        return nullptr;
    }
}

void segicl_trt_context_free(segicl_trt_context* context) {
    if (context != nullptr) {
        delete context->context;
        delete context;
    }
}

int32_t segicl_trt_context_bind(segicl_trt_context* context, char const* name, void* address) {
    if (context == nullptr || name == nullptr || address == nullptr) {
        return SEGICL_TRT_FAILED;
    }
    try {
        return context->context->setTensorAddress(name, address) ? SEGICL_TRT_OK : SEGICL_TRT_FAILED;
    } catch (...) {
        return SEGICL_TRT_FAILED;
    }
}

int32_t segicl_trt_context_enqueue(segicl_trt_context* context, void* stream) {
    if (context == nullptr) {
        return SEGICL_TRT_FAILED;
    }
    try {
        return context->context->enqueueV3(static_cast<cudaStream_t>(stream)) ? SEGICL_TRT_OK : SEGICL_TRT_FAILED;
    } catch (...) {
        return SEGICL_TRT_FAILED;
    }
}

}  // extern "C"
