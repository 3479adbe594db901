//! The layers of `src/lib.rs` import only the layers after them: a module that reaches up
//! (or sideways into a layer listed after it being imported back) fails here, naming the
//! file, the line and both layers.

use std::path::{Path, PathBuf};

/// The layers, first to last, as `src/lib.rs` lists them; each is the top-level modules
/// (or files) it holds. A module may import its own layer and the layers after it.
const LAYERS: &[(&str, &[&str])] = &[
    ("app", &["app", "main"]),
    ("fs", &["fs"]),
    ("archive", &["archive"]),
    ("read", &["read"]),
    ("cache and index", &["cache", "index"]),
    ("fleet", &["fleet"]),
    ("source", &["source"]),
    ("shared model", &["oci", "names", "error", "lib"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src/");
    let first = rel.components().next().expect("a component");
    let name = first.as_os_str().to_string_lossy();
    name.trim_end_matches(".rs").to_string()
}

/// `crate::X` paths used by code (comments and doc comments removed), with their line.
fn crate_uses(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push((n + 1, name));
        }
    }
    found
}

#[test]
fn every_layer_imports_only_the_layers_after_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(&src, file);
        let from = layer_of(&module)
            .unwrap_or_else(|| panic!("{}: module {module} is in no layer", file.display()));
        let text = std::fs::read_to_string(file).expect("read source");
        for (line, used) in crate_uses(&text) {
            let Some(to) = layer_of(&used) else {
                wrong.push(format!(
                    "{}:{line}: crate::{used} is in no layer",
                    file.display()
                ));
                continue;
            };
            if to < from {
                wrong.push(format!(
                    "{}:{line}: {} ({module}) imports crate::{used} of the layer above, {}",
                    file.display(),
                    LAYERS[from].0,
                    LAYERS[to].0
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_check_sees_an_upward_import() {
    let uses = crate_uses("use crate::fs::Fs; // crate::app in a comment\n/// crate::read\n");
    assert_eq!(uses, vec![(1, "fs".to_string())]);
    assert!(layer_of("fs") < layer_of("read"));
}
