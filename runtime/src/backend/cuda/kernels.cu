// The CUDA backend's own kernels: every plan op but Conv (cuDNN) and MatMul (cuBLAS).
//
// Tensors are stored as `elem`: f16 when SEGICL_F16 is defined, else f32; arithmetic is f32.
// Sizes, indices and strides are `long long` and operation kinds are the codes documented on
// each kernel (kernels.rs passes the same). Element-wise kernels grid-stride over `n` outputs;
// the row kernels (reduce, softmax, layer_norm) give each row to one warp. The source needs no
// header, so NVRTC compiles it without a CUDA include directory.

#define MAX_RANK 8
#define WARP 32

#ifdef SEGICL_F16
typedef unsigned short elem;
__device__ __forceinline__ float ld(const elem* p, long long i) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(p[i]));
    return v;
}
__device__ __forceinline__ void st(elem* p, long long i, float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    p[i] = h;
}
#else
typedef float elem;
__device__ __forceinline__ float ld(const elem* p, long long i) { return p[i]; }
__device__ __forceinline__ void st(elem* p, long long i, float v) { p[i] = v; }
#endif

#define NEG_INF __int_as_float(0xff800000)

#define GRID_STRIDE(i, n)                                                                      \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);                \
         i += (long long)blockDim.x * gridDim.x)

// An iteration domain (`shape`, row-major) and two sets of element strides over it.
struct Strided {
    long long rank;
    long long shape[MAX_RANK];
    long long a[MAX_RANK];
    long long b[MAX_RANK];
};

// The offsets of the i-th index of s.shape under the strides a and b.
__device__ __forceinline__ void offsets(const Strided& s, long long i, long long* oa, long long* ob) {
    long long a = 0, b = 0;
    for (int d = (int)s.rank - 1; d >= 0; --d) {
        long long q = i / s.shape[d];
        long long r = i - q * s.shape[d];
        a += r * s.a[d];
        b += r * s.b[d];
        i = q;
    }
    *oa = a;
    *ob = b;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// The row this thread's warp works on.
__device__ __forceinline__ long long warp_row() {
    return (blockIdx.x * (long long)blockDim.x + threadIdx.x) / WARP;
}

// f32 graph input -> storage.
extern "C" __global__ void cast_in(const float* x, elem* y, long long n) {
    GRID_STRIDE(i, n) st(y, i, x[i]);
}

// Storage -> f32 graph output.
extern "C" __global__ void cast_out(const elem* x, float* y, long long n) {
    GRID_STRIDE(i, n) y[i] = ld(x, i);
}

extern "C" __global__ void fill(elem* y, long long n, float value) {
    GRID_STRIDE(i, n) st(y, i, value);
}

// For each index of s.shape: y[y_base + offset b] = x[x_base + offset a] (Broadcast, Slice,
// Transpose, Concat parts, the interior of Pad).
extern "C" __global__ void copy_strided(const elem* x, elem* y, long long n, Strided s,
                                        long long x_base, long long y_base) {
    GRID_STRIDE(i, n) {
        long long oa, ob;
        offsets(s, i, &oa, &ob);
        y[y_base + ob] = x[x_base + oa];
    }
}

// kind: 0 add, 1 sub, 2 mul, 3 div, 4 max, 5 min, 6 pow. y is dense over s.shape; s.a and s.b
// are the strides of a and b.
extern "C" __global__ void binary(const elem* a, const elem* b, elem* y, long long n, Strided s,
                                  long long kind) {
    GRID_STRIDE(i, n) {
        long long oa, ob;
        offsets(s, i, &oa, &ob);
        float u = ld(a, oa), v = ld(b, ob), r;
        switch (kind) {
            case 0: r = u + v; break;
            case 1: r = u - v; break;
            case 2: r = u * v; break;
            case 3: r = u / v; break;
            case 4: r = fmaxf(u, v); break;
            case 5: r = fminf(u, v); break;
            default: r = powf(u, v); break;
        }
        st(y, i, r);
    }
}

// kind: 0 relu, 1 tanh, 2 sqrt, 3 sign, 4 clip to [lo, hi], 5 sigmoid, 6 exp, 7 neg, 8 abs,
// 9 copy, 10 quantize: rint(v / scale) (ties to even) clamped to [lo, hi], times scale.
extern "C" __global__ void unary(const elem* x, elem* y, long long n, long long kind, float lo,
                                 float hi, float scale) {
    GRID_STRIDE(i, n) {
        float v = ld(x, i), r;
        switch (kind) {
            case 0: r = fmaxf(v, 0.0f); break;
            case 1: r = tanhf(v); break;
            case 2: r = sqrtf(v); break;
            case 3: r = (float)((v > 0.0f) - (v < 0.0f)); break;
            case 4: r = fminf(fmaxf(v, lo), hi); break;
            case 5: r = 1.0f / (1.0f + expf(-v)); break;
            case 6: r = expf(v); break;
            case 7: r = -v; break;
            case 8: r = fabsf(v); break;
            case 10: r = isnan(v) ? v : fminf(fmaxf(rintf(v * (1.0f / scale)), lo), hi) * scale; break;
            default: r = v; break;
        }
        st(y, i, r);
    }
}

// x viewed as [outer, len, inner] reduced over len into y [outer, inner]; one warp per output.
// kind: 0 sum, 1 mean, 2 max, 3 L2 norm.
extern "C" __global__ void reduce(const elem* x, elem* y, long long outer, long long len,
                                  long long inner, long long kind) {
    long long row = warp_row();
    int lane = threadIdx.x % WARP;
    if (row >= outer * inner) return;
    long long o = row / inner;
    long long base = o * len * inner + (row - o * inner);
    float acc = kind == 2 ? NEG_INF : 0.0f;
    for (long long j = lane; j < len; j += WARP) {
        float v = ld(x, base + j * inner);
        acc = kind == 2 ? fmaxf(acc, v) : kind == 3 ? acc + v * v : acc + v;
    }
    acc = kind == 2 ? warp_max(acc) : warp_sum(acc);
    if (lane == 0) st(y, row, kind == 1 ? acc / (float)len : kind == 3 ? sqrtf(acc) : acc);
}

// Softmax of x viewed as [outer, len, inner] over len; one warp per (outer, inner) row.
extern "C" __global__ void softmax(const elem* x, elem* y, long long outer, long long len,
                                   long long inner) {
    long long row = warp_row();
    int lane = threadIdx.x % WARP;
    if (row >= outer * inner) return;
    long long o = row / inner;
    long long base = o * len * inner + (row - o * inner);
    float m = NEG_INF;
    for (long long j = lane; j < len; j += WARP) m = fmaxf(m, ld(x, base + j * inner));
    m = warp_max(m);
    float s = 0.0f;
    for (long long j = lane; j < len; j += WARP) s += expf(ld(x, base + j * inner) - m);
    s = warp_sum(s);
    for (long long j = lane; j < len; j += WARP)
        st(y, base + j * inner, expf(ld(x, base + j * inner) - m) / s);
}

// (x - mean) / sqrt(var + eps) * scale + bias over the cols of x [rows, cols]; bias may be null.
// One warp per row; the variance is taken around the mean (two passes).
extern "C" __global__ void layer_norm(const elem* x, const elem* scale, const elem* bias, elem* y,
                                      long long rows, long long cols, float eps) {
    long long row = warp_row();
    int lane = threadIdx.x % WARP;
    if (row >= rows) return;
    long long base = row * cols;
    float s = 0.0f;
    for (long long j = lane; j < cols; j += WARP) s += ld(x, base + j);
    float mean = warp_sum(s) / (float)cols;
    float v = 0.0f;
    for (long long j = lane; j < cols; j += WARP) {
        float d = ld(x, base + j) - mean;
        v += d * d;
    }
    float r = rsqrtf(warp_sum(v) / (float)cols + eps);
    for (long long j = lane; j < cols; j += WARP) {
        float out = (ld(x, base + j) - mean) * r * ld(scale, j);
        st(y, base + j, bias ? out + ld(bias, j) : out);
    }
}

// 2-D pooling of x [planes, h, w] into y [planes, out_h, out_w] with window (kh, kw), stride
// (sh, sw) and padding top, left, bottom, right. kind: 0 average over the cells inside x,
// 1 average counting padding cells (count_include_pad), 2 max.
extern "C" __global__ void pool(const elem* x, elem* y, long long planes, long long h, long long w,
                                long long out_h, long long out_w, long long kh, long long kw,
                                long long sh, long long sw, long long pt, long long pl,
                                long long pb, long long pr, long long kind) {
    GRID_STRIDE(i, planes * out_h * out_w) {
        long long ox = i % out_w, t = i / out_w;
        long long oy = t % out_h, p = t / out_h;
        long long y0 = oy * sh - pt, x0 = ox * sw - pl;
        const elem* plane = x + p * h * w;
        float acc = kind == 2 ? NEG_INF : 0.0f;
        long long count = 0;
        for (long long ky = max(y0, 0LL); ky < min(y0 + kh, h); ++ky) {
            for (long long kx = max(x0, 0LL); kx < min(x0 + kw, w); ++kx) {
                float v = ld(plane, ky * w + kx);
                acc = kind == 2 ? fmaxf(acc, v) : acc + v;
                ++count;
            }
        }
        if (kind == 1) count = (min(y0 + kh, h + pb) - y0) * (min(x0 + kw, w + pr) - x0);
        st(y, i, kind == 2 ? acc : count > 0 ? acc / (float)count : 0.0f);
    }
}

// The input coordinate of output coordinate `o` (ONNX coordinate_transformation_mode).
// coordinates: 0 half_pixel, 1 pytorch_half_pixel, 2 align_corners, 3 asymmetric.
__device__ __forceinline__ float source(long long coordinates, long long o, long long in_len,
                                        long long out_len) {
    float scale = (float)out_len / (float)in_len;
    switch (coordinates) {
        case 0: return ((float)o + 0.5f) / scale - 0.5f;
        case 1: return out_len > 1 ? ((float)o + 0.5f) / scale - 0.5f : 0.0f;
        case 2: return out_len > 1 ? (float)o * (float)(in_len - 1) / (float)(out_len - 1) : 0.0f;
        default: return (float)o / scale;
    }
}

// Nearest index to c, ties rounded down (ONNX round_prefer_floor), clamped into [0, len).
__device__ __forceinline__ long long nearest(float c, long long len) {
    float f = floorf(c);
    long long i = c - f == 0.5f ? (long long)f : (long long)roundf(c);
    return min(max(i, 0LL), len - 1);
}

// Resize of the last two axes of x [planes, in_h, in_w] into y [planes, out_h, out_w].
// linear: 0 nearest, 1 bilinear (coordinates clamped to the input).
extern "C" __global__ void resize(const elem* x, elem* y, long long planes, long long in_h,
                                  long long in_w, long long out_h, long long out_w,
                                  long long linear, long long coordinates) {
    GRID_STRIDE(i, planes * out_h * out_w) {
        long long ox = i % out_w, t = i / out_w;
        long long oy = t % out_h, p = t / out_h;
        const elem* plane = x + p * in_h * in_w;
        float cy = source(coordinates, oy, in_h, out_h);
        float cx = source(coordinates, ox, in_w, out_w);
        if (!linear) {
            st(y, i, ld(plane, nearest(cy, in_h) * in_w + nearest(cx, in_w)));
            continue;
        }
        cy = fminf(fmaxf(cy, 0.0f), (float)(in_h - 1));
        cx = fminf(fmaxf(cx, 0.0f), (float)(in_w - 1));
        long long y0 = (long long)cy, x0 = (long long)cx;
        long long y1 = min(y0 + 1, in_h - 1), x1 = min(x0 + 1, in_w - 1);
        float fy = cy - (float)y0, fx = cx - (float)x0;
        float top = (1.0f - fx) * ld(plane, y0 * in_w + x0) + fx * ld(plane, y0 * in_w + x1);
        float bottom = (1.0f - fx) * ld(plane, y1 * in_w + x0) + fx * ld(plane, y1 * in_w + x1);
        st(y, i, (1.0f - fy) * top + fy * bottom);
    }
}

// y[o, j, i] = x[o, indices[j], i] for x [outer, axis_len, inner] and `count` indices.
extern "C" __global__ void gather(const elem* x, const long long* indices, elem* y,
                                  long long outer, long long axis_len, long long inner,
                                  long long count) {
    GRID_STRIDE(i, outer * count * inner) {
        long long in = i % inner, t = i / inner;
        long long j = t % count, o = t / count;
        y[i] = x[(o * axis_len + indices[j]) * inner + in];
    }
}

// y[i] += bias[channel of i] for y [n, channels, plane] (a convolution's bias).
extern "C" __global__ void bias_add(elem* y, const elem* bias, long long n, long long channels,
                                    long long plane) {
    GRID_STRIDE(i, n) st(y, i, ld(y, i) + ld(bias, (i / plane) % channels));
}
