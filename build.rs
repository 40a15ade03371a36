//! Sets `cfg(has_nats_py)` when `python3` can `import nats` (nats-py), so the Python bot test in
//! tests/e2e runs; without it that test reports as ignored with the reason instead of passing
//! untested.
//!
//! The probe runs when this script does. Once nats-py is found its directory is watched, so
//! uninstalling it is noticed; after installing it, `touch build.rs` (watching every
//! site-packages directory for a new install would cost each build a scan of thousands of files).

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_nats_py)");
    println!("cargo::rerun-if-changed=build.rs");
    // Which python3 runs, and where it looks for packages.
    for var in ["VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let probe = Command::new("python3")
        .args([
            "-c",
            "import os, nats; print(os.path.dirname(nats.__file__))",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => {
            let dir = String::from_utf8_lossy(&out.stdout);
            println!("cargo::rerun-if-changed={}", dir.trim());
            println!("cargo::rustc-cfg=has_nats_py");
        }
        _ => {}
    }
}
