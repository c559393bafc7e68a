//! The workspace's own programs, built for the tests that run them.
//!
//! Cargo tells a test where its *own* package's binaries are (`CARGO_BIN_EXE_*`), but the suite
//! in `tests/` is a package of its own, so it asks for them here: each program is built once per
//! test process with `cargo build`, in the profile the test itself was built in, and found next to
//! it in the target directory. A program already up to date costs a no-op build (well under a
//! second); one edited since costs a rebuild, so a test never runs a stale gateway.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The package that owns each program the tests run.
const PROGRAMS: &[(&str, &str)] = &[
    ("streamgate", "streamgate"),
    ("streamgate-consume", "streamgate"),
];

/// The path of `name` (one of the workspace's programs, e.g. `"streamgate"`), built up to date.
///
/// Panics with cargo's output when the build fails: no test can run without the program.
pub fn binary(name: &str) -> &'static Path {
    static BUILT: OnceLock<Mutex<HashMap<String, &'static Path>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path;
    }
    let package = PROGRAMS
        .iter()
        .find(|(program, _)| *program == name)
        .map(|(_, package)| *package)
        .unwrap_or_else(|| panic!("{name} is not one of the workspace's programs"));
    let dir = profile_dir();
    let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    // What cargo sets for a running test (its package's name, manifest, out dir, ...) must not
    // reach this build: build scripts that watch such variables would rebuild the program (and
    // everything after them) for every test process.
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let set_for_the_test = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_EXE_")
            || matches!(
                name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            );
        if set_for_the_test {
            cargo.env_remove(name);
        }
    }
    cargo.current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "--package",
        package,
        "--bin",
        name,
    ]);
    if dir.file_name().is_some_and(|profile| profile == "release") {
        cargo.arg("--release");
    }
    let output = cargo
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
    assert!(
        output.status.success(),
        "cargo build --bin {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let path: &'static Path = Box::leak(dir.join(name).into_boxed_path());
    assert!(
        path.is_file(),
        "cargo built {name} but {} is missing",
        path.display()
    );
    built.insert(name.to_string(), path);
    path
}

/// The workspace's root folder (where the top-level Cargo.toml, `examples/` and `conf/` are).
pub fn workspace_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .nth(2)
            .expect("the testkit sits at crates/streamgate-testkit")
            .to_path_buf()
    })
}

/// `target/<profile>`: a test runs from `target/<profile>/deps/`, and cargo puts programs one
/// folder up.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("a test executable sits in a folder");
    match deps.file_name() {
        Some(name) if name == "deps" => deps.parent().unwrap_or(deps).to_path_buf(),
        _ => deps.to_path_buf(),
    }
}
