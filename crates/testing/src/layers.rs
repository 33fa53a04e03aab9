//! A check that a crate's modules import one another in layers: each
//! top-level module may name (`crate::module`) only modules of lower
//! layers, so there is no import cycle and nothing reaches up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules each top-level module of the crate at `src`
/// names through `crate::` paths (outside `#[cfg(test)]` modules and
/// comments). A module's submodules count as the module.
pub fn imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect_sources(src, &mut files);
    for file in files {
        let relative = file.strip_prefix(src).expect("under src");
        let first = relative.components().next().expect("a path");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let text = std::fs::read_to_string(&file).expect("readable source");
        let names = found.entry(module.clone()).or_default();
        for named in crate_paths(&text) {
            if named != module {
                names.insert(named);
            }
        }
    }
    let modules: BTreeSet<String> = found.keys().cloned().collect();
    for names in found.values_mut() {
        names.retain(|name| modules.contains(name));
    }
    found
}

/// Checks the crate at `src` against `layers`, lowest first: returns one
/// line per import of a module of the same or a higher layer, and per
/// module no layer lists (`lib` needs none).
pub fn violations(src: &Path, layers: &[&[&str]]) -> Vec<String> {
    let layer_of = |module: &str| layers.iter().position(|layer| layer.contains(&module));
    let mut found = Vec::new();
    for (module, names) in imports(src) {
        if module == "lib" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            found.push(format!("module {module} is in no layer"));
            continue;
        };
        for name in names {
            match layer_of(&name) {
                Some(layer) if layer < own => {}
                _ => found.push(format!("{module} imports {name}, which is not below it")),
            }
        }
    }
    found
}

fn collect_sources(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            collect_sources(&path, files);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
}

/// The modules `text` names as `crate::module` or inside `use crate::{…}`,
/// leaving out comments and a trailing `#[cfg(test)] mod tests`.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let code: String = text
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default()
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let mut names = BTreeSet::new();
    let ident = |rest: &str| -> String {
        rest.chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}
