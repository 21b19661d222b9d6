//! Loading TensorRT's libraries at run time and checking their version against the headers the
//! shim was compiled with (a library of another major has another virtual-call layout).

use std::fmt;
use std::path::{Path, PathBuf};

use libloading::Library;

use super::api::{Factory, ParserFactory};
use super::tensorrt_error as error;
use crate::error::Result;

/// A TensorRT version (`getInferLib*Version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Major: the interfaces' layout.
    pub major: i32,
    /// Minor: interfaces only grow within a major.
    pub minor: i32,
    /// Patch.
    pub patch: i32,
    /// Build number (0 when unknown).
    pub build: i32,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if self.build != 0 {
            write!(f, ".{}", self.build)?;
        }
        Ok(())
    }
}

/// The libraries of one TensorRT product, by file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Product {
    /// What it is called in messages.
    pub name: &'static str,
    /// The runtime and builder library.
    pub runtime: &'static str,
    /// The ONNX parser library (needed to build plans only).
    pub parser: &'static str,
}

/// TensorRT (JetPack 6: 10.3).
pub const TENSORRT: Product =
    Product { name: "TensorRT", runtime: "libnvinfer.so.10", parser: "libnvonnxparser.so.10" };
/// TensorRT-RTX (the desktop product with TensorRT 11's interfaces; CI builds plans with it).
pub const TENSORRT_RTX: Product =
    Product { name: "TensorRT-RTX", runtime: "libtensorrt_rtx.so.1", parser: "libtensorrt_onnxparser_rtx.so.1" };

/// Folders searched before the loader's own search path (`LD_LIBRARY_PATH`, the system's).
pub const DIR_VARIABLE: &str = "SEGICL_TENSORRT_DIR";

/// TensorRT's libraries, loaded, with the factories the shim needs.
pub struct Libraries {
    /// Which product.
    pub product: Product,
    /// The library's version.
    pub version: Version,
    /// Where the runtime library was found.
    pub path: PathBuf,
    /// `createInferBuilder_INTERNAL`.
    pub create_builder: Factory,
    /// `createInferRuntime_INTERNAL`.
    pub create_runtime: Factory,
    /// `createNvOnnxParser_INTERNAL`, or why the parser library could not be loaded (only
    /// building a plan needs it).
    pub create_parser: std::result::Result<ParserFactory, String>,
    _runtime: Library,
    _parser: Option<Library>,
}

/// Opens `file` from the first of `dirs` that has it, else by name through the loader's search
/// path; the error names the file and what the loader said.
fn open(file: &str, dirs: &[PathBuf]) -> std::result::Result<(Library, PathBuf), String> {
    for dir in dirs {
        let path = dir.join(file);
        if path.is_file() {
            // SAFETY: loading TensorRT runs its initialisers, which have no preconditions.
            return unsafe { Library::new(&path) }.map(|l| (l, path.clone())).map_err(|e| e.to_string());
        }
    }
    // SAFETY: as above.
    unsafe { Library::new(file) }.map(|l| (l, PathBuf::from(file))).map_err(|e| e.to_string())
}

/// The folders named by `SEGICL_TENSORRT_DIR` (`:`-separated).
pub fn dirs_from_env() -> Vec<PathBuf> {
    std::env::var_os(DIR_VARIABLE).map(|v| std::env::split_paths(&v).collect()).unwrap_or_default()
}

/// Reads the `T` exported as `name` from `library` (found at `path`).
fn symbol<T: Copy>(library: &Library, path: &Path, name: &str, why: &str) -> Result<T> {
    // SAFETY: the caller names a symbol whose type is `T` in every TensorRT that exports it.
    unsafe { library.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|_| error(format!("{} has no `{name}`: {why}", path.display())))
}

/// Loads `product`'s libraries, checking that the runtime's version has the major `compiled` has
/// and at least its minor; a parser that cannot be loaded is an error only when a plan is built.
pub fn load(product: Product, compiled: Version, dirs: &[PathBuf]) -> Result<Libraries> {
    let install = match product.name {
        "TensorRT" => "install TensorRT 10.3 or later 10.x (JetPack 6 has it)",
        _ => "install TensorRT-RTX (pip install tensorrt-rtx-cu12-libs)",
    };
    let (runtime, path) = open(product.runtime, dirs).map_err(|why| {
        error(format!(
            "{} cannot be loaded ({why}): {install}, and put its folder in {DIR_VARIABLE} or LD_LIBRARY_PATH",
            product.name
        ))
    })?;
    let not_tensorrt = format!("not {} {} or later", product.name, compiled.major);
    type VersionFn = unsafe extern "C" fn() -> i32;
    let mut numbers = [0; 4];
    for (n, part) in numbers.iter_mut().zip(["Major", "Minor", "Patch", "Build"]) {
        let get: VersionFn = symbol(&runtime, &path, &format!("getInferLib{part}Version"), &not_tensorrt)?;
        // SAFETY: TensorRT's version getters take nothing and return a number.
        *n = unsafe { get() };
    }
    let version = Version { major: numbers[0], minor: numbers[1], patch: numbers[2], build: numbers[3] };
    if version.major != compiled.major || version.minor < compiled.minor {
        return Err(error(format!(
            "{} is {} {version}; this build's shim was compiled for {} {}.{} (the same major, at least that minor): \
             install that version, or rebuild with its headers (TENSORRT_INCLUDE_DIR)",
            path.display(),
            product.name,
            product.name,
            compiled.major,
            compiled.minor
        )));
    }
    let create_builder = symbol(&runtime, &path, "createInferBuilder_INTERNAL", &not_tensorrt)?;
    let create_runtime = symbol(&runtime, &path, "createInferRuntime_INTERNAL", &not_tensorrt)?;
    let (create_parser, parser) = match open(product.parser, dirs) {
        Ok((library, parser_path)) => {
            let create =
                symbol(&library, &parser_path, "createNvOnnxParser_INTERNAL", "not an ONNX parser of TensorRT")
                    .map_err(|e| e.to_string());
            (create, Some(library))
        }
        Err(why) => (
            Err(format!(
                "building a plan needs {}'s ONNX parser, which cannot be loaded ({why}): {install}",
                product.name
            )),
            None,
        ),
    };
    Ok(Libraries {
        product,
        version,
        path,
        create_builder,
        create_runtime,
        create_parser,
        _runtime: runtime,
        _parser: parser,
    })
}
