//! The Python package's own tests (pytest, `python/tests`), run as part of
//! `cargo test`: the extension is built once per run with maturin into the
//! repository's `.venv` (editable, in the debug profile, so it reuses the
//! workspace's compiled dependencies), then pytest runs every test file
//! against real local clusters and, through `SHOAL_BIN`, the `shoal` binary
//! cargo built for this run.
//!
//! The virtual environment is made and filled from PyPI when it lacks the
//! tools (maturin, pytest, and the numpy, pandas and scikit-learn the tests
//! and the example pipeline use). When they cannot be installed this test
//! fails rather than skip.

mod common;

use std::path::PathBuf;
use std::process::Command;

const REQUIREMENTS: &[&str] = &["maturin>=1.5,<2", "cloudpickle>=2.2", "pytest>=7", "numpy", "pandas", "scikit-learn"];

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_python_package_passes_its_pytest_suite() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let venv = common::venv("bin/maturin", REQUIREMENTS);
    run(Command::new(venv.join("bin/maturin"))
        .args(["develop", "--quiet"])
        .current_dir(root.join("python"))
        .env("VIRTUAL_ENV", &venv)
        .env("PATH", format!("{}:{}", venv.join("bin").display(), std::env::var("PATH").unwrap_or_default())));
    let out = Command::new(venv.join("bin/python"))
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "python/tests"])
        .current_dir(&root)
        .env("SHOAL_BIN", common::binary())
        .env_remove("SHOAL_ADDRESS")
        .output()
        .expect("pytest runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "the Python tests failed:\n{text}");
    assert!(text.contains(" passed"), "pytest ran no test:\n{text}");
}
