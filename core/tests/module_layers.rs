//! The core's modules form layers: no module reaches, through any chain of `use` paths (or
//! `crate::` / `super::` paths anywhere in its code; comments and doc links do not count), back
//! to itself. A child using its
//! parent's items is allowed (that is what `super::` is for); every other edge, siblings
//! included, must point down. Tests (`#[cfg(test)] mod tests`) may reach anywhere.
//!
//! Why a test: an import cycle is how `config` once ended up both the bottom and the top of the
//! crate (the proto-JSON reader inside it, the filters' configs embedded in it, the filters
//! importing it back). Nothing in the compiler stops that from growing again.

use regex_lite::Regex;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every module of `src`, by its path (`config::listener`; the crate root is ``), with its source.
fn modules(src: &Path) -> BTreeMap<String, (String, bool)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).expect("core/src is readable");
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path
                .strip_prefix(src)
                .expect("under src")
                .with_extension("");
            let mut parts: Vec<String> = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            let is_dir_module = matches!(parts.last().map(String::as_str), Some("mod" | "lib"));
            if is_dir_module {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).expect("a readable source file");
            out.insert(parts.join("::"), (text, is_dir_module));
        }
    }
    out
}

/// `a::{b::c, d}` as `a::b::c` and `a::d`, nested groups included.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_string()];
    };
    let mut depth = 0;
    let mut close = path.len();
    for (i, c) in path.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    close = i;
                    break;
                }
            }
            _ => {}
        }
    }
    let prefix = &path[..open];
    let inner = &path[open + 1..close.min(path.len())];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// The modules each module depends on (child-to-parent edges left out).
fn edges(mods: &BTreeMap<String, (String, bool)>) -> BTreeMap<String, BTreeSet<String>> {
    let use_rooted = Regex::new(r"(?s)\buse\s+((?:crate|super)[^;]*);").expect("a valid regex");
    let qualified = Regex::new(r"\b(?:crate|super)(?:::[a-z_][a-z0-9_]*)+").expect("a valid regex");
    let use_relative =
        Regex::new(r"(?s)\buse\s+([a-z_][a-z0-9_]*::[^;]*);").expect("a valid regex");
    let tests = Regex::new(r"#\[cfg\(test\)\]\s*mod tests").expect("a valid regex");
    let block_comment = Regex::new(r"(?s)/\*.*?\*/").expect("a valid regex");
    let line_comment = Regex::new(r"//[^\n]*").expect("a valid regex");
    let mut out = BTreeMap::new();
    for (name, (text, is_dir_module)) in mods {
        let code = tests
            .find(text)
            .map_or(text.as_str(), |m| &text[..m.start()]);
        let code = block_comment.replace_all(code, "");
        let code = line_comment.replace_all(&code, "");
        let code = code.as_ref();
        let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        let mut paths: Vec<String> = Vec::new();
        for c in use_rooted.captures_iter(code) {
            paths.extend(expand(&squeeze(&c[1])));
        }
        paths.extend(qualified.find_iter(code).map(|m| m.as_str().to_string()));
        if *is_dir_module {
            for c in use_relative.captures_iter(code) {
                for path in expand(&squeeze(&c[1])) {
                    let first = path.split("::").next().unwrap_or_default();
                    let child = if name.is_empty() {
                        first.to_string()
                    } else {
                        format!("{name}::{first}")
                    };
                    if mods.contains_key(&child) {
                        paths.push(format!("crate::{child}"));
                    } else if first == "self" {
                        paths.push(format!("crate::{name}{}", &path[4..]));
                    }
                }
            }
        }
        let here: Vec<&str> = name.split("::").collect();
        let mut targets = BTreeSet::new();
        for path in paths {
            let mut segments = path.split("::");
            let mut resolved: Vec<&str> = match segments.next() {
                Some("crate") => Vec::new(),
                Some("super") => here[..here.len().saturating_sub(1)].to_vec(),
                _ => continue,
            };
            resolved.extend(segments.filter(|s| !s.is_empty()));
            let longest_module = (1..=resolved.len())
                .rev()
                .map(|n| resolved[..n].join("::"))
                .find(|m| mods.contains_key(m));
            if let Some(target) = longest_module {
                let is_parent = name.starts_with(&format!("{target}::"));
                if target != *name && !is_parent {
                    targets.insert(target);
                }
            }
        }
        out.insert(name.clone(), targets);
    }
    out
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn core_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mods = modules(&src);
    assert!(mods.contains_key("config::listener"), "{:?}", mods.keys());
    let graph = edges(&mods);
    let found = cycles(&graph);
    let described: Vec<String> = found
        .iter()
        .map(|component| {
            let members: BTreeSet<&String> = component.iter().collect();
            let inner: Vec<String> = component
                .iter()
                .map(|m| {
                    let to: Vec<&String> =
                        graph[m].iter().filter(|t| members.contains(t)).collect();
                    format!("  {m} -> {to:?}")
                })
                .collect();
            format!("{component:?}\n{}", inner.join("\n"))
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", described.join("\n"));
}

#[test]
fn the_scan_sees_a_cycle_when_there_is_one() {
    let mut mods = BTreeMap::new();
    mods.insert(String::new(), ("mod a;\nmod b;".to_string(), true));
    mods.insert("a".into(), ("use crate::b::{x, y::z};".to_string(), false));
    mods.insert(
        "b".into(),
        (
            "/// Not [`crate::c`].\nfn f() { super::a::g() }".to_string(),
            false,
        ),
    );
    mods.insert("c".into(), (String::new(), false));
    mods.insert("b::y".into(), ("use super::x;".to_string(), false));
    let graph = edges(&mods);
    assert_eq!(
        graph["a"],
        BTreeSet::from(["b".to_string(), "b::y".to_string()])
    );
    // b::y -> b is a child using its parent: not an edge.
    assert!(graph["b::y"].is_empty());
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);
}
