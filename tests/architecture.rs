//! The invariants of ARCHITECTURE.md that a machine can check, checked on the source tree (the way
//! rust-analyzer's `tidy` tests keep its crate boundaries): no bollard in `actors/`, message types
//! only in `actors/src/messages.rs`, every actor's mailbox capacity explicit, no `unsafe` in
//! `actors/`, the code map naming every source file, and no import loop between modules.
//!
//! Nothing here starts a process: it reads files below the repository root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file below `dir` (relative to the repository root, `/`-separated), sorted.
fn rust_files(dir: &str) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                if let Ok(rel) = p.strip_prefix(base) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&root(), &root().join(dir), &mut out);
    out.sort();
    out
}

fn read(rel: &str) -> String {
    fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The file's text without `//` comments and without its `#[cfg(test)] mod tests { … }` tail
/// (unit tests may do what production code may not).
fn code_of(text: &str) -> String {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_test_only(rel: &str) -> bool {
    rel.ends_with("/tests.rs") || rel.contains("/tests/") || rel.ends_with("/fake.rs")
}

#[test]
fn actors_never_see_bollard() {
    let manifest = read("actors/Cargo.toml");
    assert!(
        !manifest.contains("bollard"),
        "actors/Cargo.toml depends on bollard: the Docker adapter belongs in src/"
    );
    for f in rust_files("actors/src") {
        assert!(
            !code_of(&read(&f)).contains("bollard"),
            "{f} mentions bollard: actors talk to Docker only through ContainerEngine"
        );
    }
}

#[test]
fn no_unsafe_in_actors() {
    for f in rust_files("actors/src") {
        let code = code_of(&read(&f));
        assert!(
            !code.contains("unsafe ") && !code.contains("unsafe{"),
            "{f} has an unsafe block: OS effects belong to adapters in src/"
        );
    }
}

#[test]
fn message_types_live_in_messages_rs() {
    for f in rust_files("actors/src") {
        if f == "actors/src/messages.rs" || is_test_only(&f) {
            continue;
        }
        let code = code_of(&read(&f));
        for needle in ["#[rtype", "impl Message for", "impl actix::Message for"] {
            assert!(
                !code.contains(needle),
                "{f} defines a message type ({needle}): every message lives in actors/src/messages.rs"
            );
        }
        for line in code.lines() {
            let l = line.trim();
            if l.starts_with("#[derive(") && (l.contains(" Message") || l.contains("(Message")) {
                panic!("{f} derives Message: every message lives in actors/src/messages.rs");
            }
        }
    }
}

#[test]
fn every_actor_sets_its_mailbox_capacity() {
    let mut files = rust_files("actors/src");
    files.extend(rust_files("src"));
    let mut actors = 0;
    for f in files {
        if is_test_only(&f) {
            continue;
        }
        let code = code_of(&read(&f));
        let n =
            code.matches("impl Actor for").count() + code.matches("impl actix::Actor for").count();
        if n == 0 {
            continue;
        }
        actors += n;
        let set = code.matches("set_mailbox_capacity(").count();
        assert!(
            set >= n,
            "{f}: {n} actor(s) but {set} set_mailbox_capacity call(s): every mailbox capacity is \
             chosen deliberately (actix's default of 16 changes backpressure)"
        );
    }
    assert!(
        actors >= 7,
        "found only {actors} actors: did the layout change?"
    );
}

/// Expands one code-map entry: `a/{b,c}.rs` → `a/b.rs`, `a/c.rs`.
fn expand(entry: &str) -> Vec<String> {
    match (entry.find('{'), entry.find('}')) {
        (Some(a), Some(b)) if a < b => entry[a + 1..b]
            .split(',')
            .flat_map(|part| {
                expand(&format!(
                    "{}{}{}",
                    &entry[..a],
                    part.trim(),
                    &entry[b + 1..]
                ))
            })
            .collect(),
        _ => vec![entry.to_string()],
    }
}

/// The paths the code map names: every backticked path in the first column of its table.
fn code_map_entries() -> Vec<String> {
    let text = read("ARCHITECTURE.md");
    let start = text
        .find("## Code map")
        .expect("ARCHITECTURE.md has a `## Code map` section");
    let section = &text[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut out = Vec::new();
    for line in section[..end].lines() {
        let Some(first) = line.strip_prefix('|').and_then(|l| l.split('|').next()) else {
            continue;
        };
        for (i, piece) in first.split('`').enumerate() {
            if i % 2 == 1 {
                out.extend(expand(piece.trim()));
            }
        }
    }
    out
}

#[test]
fn code_map_names_every_source_file() {
    let entries = code_map_entries();
    let covered = |f: &str| {
        entries
            .iter()
            .any(|e| e == f || (e.ends_with('/') && f.starts_with(e.as_str())))
    };
    let mut missing = Vec::new();
    for dir in ["src", "actors/src", "benches", "tests"] {
        for f in rust_files(dir) {
            if !covered(&f) {
                missing.push(f);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's code map does not name: {missing:?}"
    );
    for e in &entries {
        assert!(
            root().join(e).exists(),
            "ARCHITECTURE.md's code map names `{e}`, which does not exist"
        );
    }
}

/// The module a source file is (`src/providers/aws/client.rs` → `providers::aws::client`).
fn module_of(crate_src: &str, file: &str) -> String {
    let rel = file
        .strip_prefix(crate_src)
        .unwrap_or(file)
        .trim_start_matches('/');
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    rel.replace('/', "::")
}

/// Module → the crate modules its production code names (`crate::a::b` counts as `a::b` and `a`).
fn import_graph(crate_src: &str) -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<String> = rust_files(crate_src)
        .into_iter()
        .filter(|f| !is_test_only(f) && !f.ends_with("/main.rs") && !f.ends_with("/lib.rs"))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(crate_src, f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = module_of(crate_src, f);
        let code = code_of(&read(f));
        let mut deps = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let path: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            // The longest prefix that is a module of this crate.
            for n in (1..=segs.len()).rev() {
                let m = segs[..n].join("::");
                if modules.contains(&m) {
                    // A module's own children and parents are one room, not an import.
                    if !m.starts_with(&format!("{me}::"))
                        && !me.starts_with(&format!("{m}::"))
                        && m != me
                    {
                        deps.insert(m);
                    }
                    break;
                }
            }
        }
        // `super::sibling` (also inside `use super::{a, b::C}`) names a sibling module.
        // (`me` of a `mod.rs` is its directory's module, so one rule serves both kinds of file.)
        let parent = me
            .rsplit_once("::")
            .map(|(p, _)| p.to_string())
            .unwrap_or_default();
        for (i, _) in code.match_indices("super::") {
            for first in first_segments(&code[i + 7..]) {
                let m = if parent.is_empty() {
                    first
                } else {
                    format!("{parent}::{first}")
                };
                if modules.contains(&m) && m != me && !m.starts_with(&format!("{me}::")) {
                    deps.insert(m);
                }
            }
        }
        graph.insert(me, deps);
    }
    graph
}

/// The first path segment of each item a `use` tail names: `a::B` → `a`; `{a, b::{C, D}}` → `a`, `b`.
fn first_segments(tail: &str) -> Vec<String> {
    let ident = |t: &str| -> String {
        t.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let Some(inner) = tail.trim_start().strip_prefix('{') else {
        return vec![ident(tail)];
    };
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                out.push(ident(&inner[start..i]));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(ident(&inner[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.retain(|s| !s.is_empty() && s != "self");
    out
}

/// One cycle of the graph, if there is any.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for d in graph.get(n).into_iter().flatten() {
            match state.get(d.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn no_import_loops_in_the_actors_crate() {
    let graph = import_graph("actors/src");
    if let Some(c) = find_cycle(&graph) {
        panic!("import loop in actors/: {}", c.join(" -> "));
    }
}

#[test]
fn no_import_loops_in_the_dso_crate() {
    let graph = import_graph("src");
    if let Some(c) = find_cycle(&graph) {
        panic!("import loop in src/: {}", c.join(" -> "));
    }
}

#[test]
fn the_three_broken_loops_stay_broken() {
    let actors = import_graph("actors/src");
    let model = actors.get("model").expect("actors/src/model.rs exists");
    assert!(
        model.iter().all(|m| m == "secret"),
        "model.rs holds plain data (it may name secret.rs's types), yet imports {model:?}"
    );
    let secret = actors.get("secret").expect("actors/src/secret.rs exists");
    assert!(
        secret.is_empty(),
        "secret.rs depends on nothing, yet imports {secret:?}"
    );
    let engine = actors.get("engine").expect("actors/src/engine.rs exists");
    assert!(
        !engine.contains("direct"),
        "engine.rs must not hand out the direct writer"
    );
    let src = import_graph("src");
    let admin: BTreeSet<&String> = src.keys().filter(|k| k.starts_with("admin")).collect();
    for a in &admin {
        assert!(
            !src[*a].iter().any(|d| d.starts_with("envrun")),
            "{a} imports envrun: the resolve protocol lives in a module both use"
        );
    }
    for (m, deps) in &src {
        if m.starts_with("providers") {
            assert!(
                !deps.iter().any(|d| d.starts_with("config")),
                "{m} imports config: providers own their settings, config uses the registry"
            );
        }
    }
}

#[test]
fn long_files_say_why() {
    let mut long = Vec::new();
    for dir in ["src", "actors/src"] {
        for f in rust_files(dir) {
            if is_test_only(&f) {
                continue;
            }
            let text = read(&f);
            let code_lines = code_of(&text).lines().count();
            let head: String = text.lines().take(15).collect::<Vec<_>>().join("\n");
            if code_lines > 800 && !head.contains("Why this file is long") {
                long.push(format!("{f} ({code_lines} lines)"));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over ~800 lines without a `Why this file is long` note at the top: {long:?}"
    );
}
