//! Locating (and building, once per test binary) the gateway executables.
//!
//! `CARGO_BIN_EXE_*` only exists inside a binary's own package, so this
//! package finds the target directory from its own test executable
//! (`<target>/<profile>/deps/<test>-<hash>`) and runs `cargo build -p
//! coap-emqx-gateway -p coap-hono-adapter` there with the same profile. When
//! both are up to date that is a no-op of well under a second.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The packages (and binaries) this harness builds.
const PACKAGES: [&str; 2] = ["coap-emqx-gateway", "coap-hono-adapter"];

/// The path of the executable `name` (`coap-emqx-gateway` or
/// `coap-hono-adapter`), built with the profile of the running test.
pub fn gateway_binary(name: &str) -> PathBuf {
    static PROFILE_DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = PROFILE_DIR.get_or_init(build_gateways);
    let path = dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

fn build_gateways() -> PathBuf {
    let exe = std::env::current_exe().expect("own executable path");
    // <target>/<profile>/deps/<test>-<hash>
    let deps = exe.parent().expect("deps dir");
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("profile dir").to_path_buf()
    } else {
        deps.to_path_buf()
    };
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
    if std::env::var_os("FAULT_SKIP_BUILD").is_some() {
        return profile_dir;
    }
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args(["build", "--quiet"]);
    for package in PACKAGES {
        command.args(["-p", package]);
    }
    match profile.as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the gateways: {e}"));
    assert!(
        status.success(),
        "cargo build -p coap-emqx-gateway -p coap-hono-adapter failed"
    );
    profile_dir
}
