//! Sets `cfg(has_scylla)` when `SCYLLA_URI` names a ScyllaDB node, so the ScyllaDB tests run
//! against it, and otherwise report as ignored with the reason (instead of passing untested).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(has_scylla)");
    println!("cargo::rerun-if-env-changed=SCYLLA_URI");
    if std::env::var("SCYLLA_URI").is_ok_and(|uri| !uri.trim().is_empty()) {
        println!("cargo::rustc-cfg=has_scylla");
    }
}
