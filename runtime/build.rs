//! With the `tensorrt` feature: compiles the TensorRT shim (`src/backend/tensorrt/shim.cpp`)
//! against the TensorRT headers found here, so its virtual calls match the TensorRT major they
//! describe. Nothing from TensorRT is linked: the libraries are loaded at run time.

#[cfg(feature = "tensorrt")]
use std::{
    env,
    path::{Path, PathBuf},
};

#[cfg(feature = "tensorrt")]
/// Where JetPack and NVIDIA's Debian packages put the TensorRT headers.
const HEADER_DIRS: [&str; 3] = ["/usr/include/aarch64-linux-gnu", "/usr/include/x86_64-linux-gnu", "/usr/include"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "tensorrt")]
    compile_shim();
}

/// Compiles the shim into a static library linked into segicl.
#[cfg(feature = "tensorrt")]
fn compile_shim() {
    let shim = Path::new("src/backend/tensorrt");
    println!("cargo:rerun-if-changed={}", shim.join("shim.cpp").display());
    println!("cargo:rerun-if-changed={}", shim.join("shim.h").display());
    for var in ["TENSORRT_INCLUDE_DIR", "CUDA_INCLUDE_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let tensorrt = match env::var_os("TENSORRT_INCLUDE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => HEADER_DIRS.iter().map(PathBuf::from).find(|d| d.join("NvInfer.h").is_file()).unwrap_or_else(|| {
            panic!(
                "the tensorrt feature needs the TensorRT headers (NvInfer.h, NvOnnxParser.h): none in {}; \
                 set TENSORRT_INCLUDE_DIR to their folder (JetPack: apt install libnvinfer-dev libnvonnxparsers-dev)",
                HEADER_DIRS.join(", ")
            )
        }),
    };
    for header in ["NvInfer.h", "NvOnnxParser.h", "NvInferVersion.h"] {
        if !tensorrt.join(header).is_file() {
            panic!("TENSORRT_INCLUDE_DIR={} has no {header}", tensorrt.display());
        }
    }
    println!("cargo:rerun-if-changed={}", tensorrt.join("NvInferVersion.h").display());
    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").file(shim.join("shim.cpp")).include(shim).include(&tensorrt);
    // TensorRT's headers include cuda_runtime_api.h for two stream and event typedefs: take the
    // toolkit's when there is one, else declare those two.
    let cuda = env::var_os("CUDA_INCLUDE_DIR").map(PathBuf::from).or_else(|| {
        ["/usr/local/cuda/include", "/usr/include"]
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("cuda_runtime_api.h").is_file())
    });
    match cuda {
        Some(dir) => {
            build.include(dir);
        }
        None => {
            let stub = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("cuda-stub");
            std::fs::create_dir_all(&stub).expect("creating OUT_DIR/cuda-stub");
            std::fs::write(
                stub.join("cuda_runtime_api.h"),
                "#pragma once\ntypedef struct CUstream_st* cudaStream_t;\ntypedef struct CUevent_st* cudaEvent_t;\n",
            )
            .expect("writing OUT_DIR/cuda-stub/cuda_runtime_api.h");
            build.include(stub);
        }
    }
    build.flag_if_supported("-Wno-deprecated-declarations").warnings(true).compile("segicl_trt_shim");
}
