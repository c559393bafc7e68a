//! The gateway crate's modules depend on each other one way only (docs/architecture.md). This
//! test reads every file under `crates/streamgate/src`, collects the `crate::` paths each
//! top-level module uses (comments and unit-test modules left out), and fails when a module
//! uses one at its own layer or above, or when a module is missing from the table. Import
//! circles are impossible while it passes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    // Leaves: no `crate::` imports.
    &[
        "sync",
        "request",
        "forwarded",
        "metrics",
        "error",
        "tls",
        "detach",
    ],
    // The one token bucket, and buckets by key behind the one lock helper.
    &["rate"],
    &["limits", "router", "upstream"],
    // The per-request context plugins share.
    &["ctx"],
    // Answering a request and logging it.
    &["respond", "access_log"],
    // What a matched route runs: plugins, pub/sub sessions, relayed upgrades.
    &["plugins", "pubsub", "tunnel"],
    // The route table (built from the config), and the admin listener.
    &["routes", "admin"],
    // The one ProxyHttp, and live reload.
    &["proxy", "reload"],
    // Assembles the Pingora server.
    &["server"],
];

/// Files of the crate root, not modules of their own.
const ROOTS: &[&str] = &["lib", "main"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without `//` comments and without a trailing `#[cfg(test)] mod tests { ... }`.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            // A `//` inside a string literal is rare in this crate and would only hide a path.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module names that `crate::` paths in `code` start with.
fn used_modules(code: &str) -> BTreeSet<String> {
    used_after(code, "crate::")
}

/// The names that paths starting with `prefix` (e.g. `crate::`, `super::`) continue with.
fn used_after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        // `super::` inside `super::super::` is counted once, as the longer prefix.
        let preceded = code.len() - rest.len() + at;
        if prefix == "super::" && code[..preceded].ends_with("super::") {
            rest = &rest[at + prefix.len()..];
            continue;
        }
        rest = &rest[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the leading name of each item at depth one.
            let mut depth = 1;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 1 => items.push(std::mem::take(&mut item)),
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if c != ',' || depth > 1 {
                    item.push(c);
                }
            }
            items.push(item);
            for item in items {
                let name: String = item
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    used.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            used.insert(name);
        }
    }
    used
}

fn module_uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/streamgate/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ROOTS.contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read file");
        let used = used_modules(&code_of(&text));
        let entry = uses.entry(module.clone()).or_default();
        entry.extend(used.into_iter().filter(|m| *m != module));
    }
    uses
}

#[test]
fn every_module_uses_only_modules_below_it() {
    let uses = module_uses();
    assert!(uses.len() >= 20, "found only {uses:?}: is the path right?");
    let mut problems = Vec::new();
    for (module, used) in &uses {
        let Some(own) = layer_of(module) else {
            problems.push(format!(
                "{module} is in no layer: add it to LAYERS and docs/architecture.md"
            ));
            continue;
        };
        for other in used {
            match layer_of(other) {
                Some(theirs) if theirs < own => {}
                Some(theirs) => problems.push(format!(
                    "{module} (layer {own}) uses {other} (layer {theirs}): dependencies must point down"
                )),
                None if uses.contains_key(other) => {}
                // Not a module of this crate (a macro path, say).
                None => {}
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_parser_sees_grouped_and_plain_paths() {
    let code = code_of(
        "use crate::a::B;\nuse crate::{c::{D, E}, f, g::H};\n// crate::comment\nlet x = crate::i::j();\n#[cfg(test)]\nmod tests { use crate::k; }",
    );
    let used: Vec<String> = used_modules(&code).into_iter().collect();
    assert_eq!(used, ["a", "c", "f", "g", "i"]);
}

/// The pub/sub engine's tiers (docs/architecture.md), bottom first: the shared root modules
/// (`failure`, `wire`; `target`; `ending`), the Kafka tier, the reading modes, the transports,
/// and `pubsub/mod.rs` on top. A file may use only what is below its tier; cross-tier paths
/// are written `crate::pubsub::...`, and `super::` reaches siblings only.
const PUBSUB_TIERS: &[&[&str]] = &[
    &["failure", "wire"],
    &["kafka"],
    &["target"],
    &["modes"],
    &["ending"],
    &["transports"],
    &["mod"],
];

/// Files in one tier that must not use each other: the two reading modes, the two transports.
const APART: &[(&str, &str, &str)] = &[
    ("modes", "pull", "push"),
    ("transports", "websocket", "sse"),
];

struct PubsubFile {
    /// The tier folder or root module the file belongs to (`kafka`, `target`, `mod`, ...).
    unit: String,
    /// The file's own name within a tier folder (`pull`), empty for a root module.
    name: String,
    /// Units its `crate::pubsub::` (and, from a root module, `super::`) paths name.
    units: BTreeSet<String>,
    /// Siblings its `super::` paths name, within a tier folder.
    siblings: BTreeSet<String>,
}

fn pubsub_files() -> Vec<PubsubFile> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/streamgate/src/pubsub");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file.strip_prefix(&dir).expect("under pubsub");
            let parts: Vec<String> = relative
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_string_lossy()
                        .trim_end_matches(".rs")
                        .to_string()
                })
                .collect();
            let code = code_of(&std::fs::read_to_string(&file).expect("read file"));
            let mut units = used_after(&code, "crate::pubsub::");
            let mut siblings = BTreeSet::new();
            let (unit, name) = if parts.len() == 1 {
                units.extend(used_after(&code, "super::"));
                (parts[0].clone(), String::new())
            } else {
                units.extend(used_after(&code, "super::super::"));
                siblings = used_after(&code, "super::");
                (parts[0].clone(), parts[1].clone())
            };
            units.remove(&unit);
            PubsubFile {
                unit,
                name,
                units,
                siblings,
            }
        })
        .collect()
}

fn tier_of(unit: &str) -> Option<usize> {
    PUBSUB_TIERS.iter().position(|tier| tier.contains(&unit))
}

#[test]
fn the_pubsub_tiers_use_only_tiers_below_them() {
    let files = pubsub_files();
    assert!(files.len() >= 15, "found only {} files", files.len());
    let mut problems = Vec::new();
    for f in &files {
        let Some(own) = tier_of(&f.unit) else {
            problems.push(format!(
                "pubsub/{} is in no tier: add it to PUBSUB_TIERS and docs/architecture.md",
                f.unit
            ));
            continue;
        };
        let file = if f.name.is_empty() {
            format!("pubsub/{}.rs", f.unit)
        } else {
            format!("pubsub/{}/{}.rs", f.unit, f.name)
        };
        for used in &f.units {
            match tier_of(used) {
                Some(theirs) if theirs < own => {}
                Some(theirs) => problems.push(format!(
                    "{file} (tier {own}) uses pubsub::{used} (tier {theirs}): tiers point down"
                )),
                None => problems.push(format!("{file} uses pubsub::{used}, which is in no tier")),
            }
        }
        for (tier, a, b) in APART {
            let apart = (f.name == *a && f.siblings.contains(*b))
                || (f.name == *b && f.siblings.contains(*a));
            if f.unit == *tier && apart {
                problems.push(format!(
                    "{file}: {tier}/{a} and {tier}/{b} must not use each other"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
