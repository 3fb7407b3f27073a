//! The Kubernetes manifests in deploy/kubernetes: valid against the
//! Kubernetes API schemas (kubernetes-validate, installed by `cargo xtask
//! test`), and every setting they give the agent is one it knows.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// Kubernetes versions the manifests are checked against.
const VERSIONS: &[&str] = &["1.29.0", "1.33.0"];

fn manifests() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // kustomize's own file is not a Kubernetes resource.
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests missing in {}", dir.display());
    files
}

/// The project's Python environment (`cargo xtask test` makes it, with
/// kubernetes-validate in it), or `FLOKI_PYTHON`.
fn python() -> PathBuf {
    std::env::var_os("FLOKI_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv/bin/python"),
        PathBuf::from,
    )
}

fn validate(version: &str, files: &[PathBuf]) -> std::process::Output {
    Command::new(python())
        .args([
            "-m",
            "kubernetes_validate",
            "--strict",
            "--quiet",
            "-k",
            version,
        ])
        .args(files)
        .output()
        .expect("running the project's Python (target/venv: `cargo xtask test` makes it)")
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = manifests();
    for version in VERSIONS {
        let out = validate(version, &files);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !said.contains("No module named kubernetes_validate"),
            "kubernetes-validate is not installed: `cargo xtask test` installs it into target/venv"
        );
        assert!(
            out.status.success(),
            "against Kubernetes {version}:\n{said}"
        );
    }
    // The validator does reject a broken manifest: a misspelt field.
    let daemonset = std::fs::read_to_string(
        files
            .iter()
            .find(|f| f.ends_with("daemonset.yaml"))
            .unwrap(),
    )
    .unwrap();
    let broken = std::env::temp_dir().join(format!("floki-broken-{}.yaml", std::process::id()));
    std::fs::write(&broken, daemonset.replace("hostNetwork:", "hostNetwrok:")).unwrap();
    let out = validate(VERSIONS[0], std::slice::from_ref(&broken));
    let _ = std::fs::remove_file(&broken);
    assert!(!out.status.success(), "a misspelt field passed validation");
}

#[test]
fn the_kustomization_installs_every_manifest() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    for file in manifests() {
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(
            kustomization.contains(&format!("- {name}\n")),
            "kustomization.yaml does not list {name}"
        );
    }
    // Rendered by kubectl where it is installed (`kubectl apply
    // --dry-run=client` needs an API server for its kind mapping;
    // `kubectl kustomize` renders the whole install offline).
    let Ok(version) = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
    else {
        eprintln!("kubectl is not installed: the install was not rendered");
        return;
    };
    assert!(version.status.success());
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "DaemonSet",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "no {kind} in:\n{rendered}"
        );
    }
}

#[test]
fn every_setting_the_manifests_give_the_agent_is_one_it_knows() {
    let help = Command::new(floki_tests::agent_binary())
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let mut checked = 0;
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("FLOKI_") {
                assert!(
                    help.contains(&format!("env: {word}="))
                        || help.contains(&format!("env: {word}]")),
                    "{}: {word} is not a setting of floki-agent run",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} settings found");
}
