//! Compiles the vendored Kubernetes `.proto` files (`proto/`) into one encoded
//! `FileDescriptorSet` (`$OUT_DIR/kubernetes.fds`), which `src/protobuf.rs` embeds to decode
//! `application/vnd.kubernetes.protobuf` request bodies. Pure Rust (protox): no `protoc`.

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let includes = root.join("proto");
    println!("cargo:rerun-if-changed={}", includes.display());

    let mut files = Vec::new();
    collect_protos(&includes, &mut files);
    files.sort();
    let relative: Vec<PathBuf> = files
        .iter()
        .map(|f| {
            f.strip_prefix(&includes)
                .expect("under proto/")
                .to_path_buf()
        })
        .collect();

    let mut compiler = protox::Compiler::new([&includes])
        .unwrap_or_else(|e| panic!("failed to set up the protobuf compiler: {e}"));
    compiler.include_imports(true).include_source_info(false);
    compiler
        .open_files(&relative)
        .unwrap_or_else(|e| panic!("failed to compile the Kubernetes .proto files: {e:?}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("kubernetes.fds");
    std::fs::write(&out, compiler.encode_file_descriptor_set())
        .unwrap_or_else(|e| panic!("failed to write {}: {e}", out.display()));
}

/// Every `*.proto` file under `dir`, recursively (rerun when any of them changes).
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_protos(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            out.push(path);
        }
    }
}
