//! The workspace's modules form layers: within each crate, no module depends on a module that
//! depends back on it, directly or through others.
//!
//! A module "depends on" another when it names it: a `use` tree or a path in code (macro
//! arguments included) that resolves, through `crate::`, `super::`, `self::` or a child
//! module's name, to that module or an item in it. Two exceptions, both the folder-is-one-unit
//! idiom: a module may use its ancestors' items (`super::Thing` from a child to its `mod.rs`),
//! and `#[cfg(test)]` code is not part of the layering. Comments and doc links are not
//! dependencies. The sources are parsed with `syn`, so the test reads what the compiler reads.
//!
//! When it fails it prints each cycle with its edges: move what both sides need into a module
//! below both (the core's matchers and proto-JSON reader are examples), rather than re-exporting
//! upward.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use syn::visit::{self, Visit};

/// The crates whose `src/` is checked (the fuzz targets are one file each).
const CRATES: [&str; 5] = ["core", "companion", "filter", "demoapp", "tests"];

/// Every module of a crate: its path (`config::listener`, `""` for `lib.rs`) and its file.
/// `main.rs` and `src/bin/` are separate crate roots that declare no modules of their own.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            if path.is_dir() {
                if path != src.join("bin") {
                    pending.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|ext| ext != "rs") || path == src.join("main.rs") {
                continue;
            }
            let relative = path.strip_prefix(src).unwrap_or(&path).with_extension("");
            let mut segments: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
                segments.pop();
            }
            found.insert(segments.join("::"), path);
        }
    }
    found
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// Collects the paths one file names, each as written (`["super", "health", "Flags"]`), with
/// the module path it was written in (a file's module, or an inline module inside it).
struct PathCollector {
    scope: Vec<String>,
    found: Vec<(Vec<String>, Vec<String>)>,
}

impl PathCollector {
    fn record(&mut self, segments: Vec<String>) {
        if !segments.is_empty() {
            self.found.push((self.scope.clone(), segments));
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                let mut full = prefix.clone();
                full.push(name.ident.to_string());
                self.record(full);
            }
            syn::UseTree::Rename(rename) => {
                let mut full = prefix.clone();
                full.push(rename.ident.to_string());
                self.record(full);
            }
            syn::UseTree::Glob(_) => self.record(prefix.clone()),
            syn::UseTree::Group(group) => {
                for item in &group.items {
                    self.use_tree(prefix, item);
                }
            }
        }
    }

    /// Paths inside a macro's tokens (`format!`, `matches!`, `assert!` ...), which syn leaves
    /// unparsed: every `ident (:: ident)*` run.
    fn tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let mut run: Vec<String> = Vec::new();
        let mut colons = 0;
        for token in tokens {
            match token {
                proc_macro2::TokenTree::Ident(ident) => {
                    if !run.is_empty() && colons != 2 {
                        self.record(std::mem::take(&mut run));
                    }
                    run.push(ident.to_string());
                    colons = 0;
                }
                proc_macro2::TokenTree::Punct(punct) if punct.as_char() == ':' => colons += 1,
                proc_macro2::TokenTree::Group(group) => {
                    self.record(std::mem::take(&mut run));
                    colons = 0;
                    self.tokens(group.stream());
                }
                _ => {
                    self.record(std::mem::take(&mut run));
                    colons = 0;
                }
            }
        }
        self.record(run);
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            _ => return visit::visit_item(self, item),
        };
        if !is_cfg_test(attrs) {
            visit::visit_item(self, item);
        }
    }

    fn visit_item_mod(&mut self, module: &'ast syn::ItemMod) {
        if module.content.is_some() {
            self.scope.push(module.ident.to_string());
            visit::visit_item_mod(self, module);
            self.scope.pop();
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &item.tree);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        self.record(
            path.segments
                .iter()
                .map(|segment| segment.ident.to_string())
                .collect(),
        );
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.visit_path(&mac.path);
        self.tokens(mac.tokens.clone());
    }
}

/// The module a path written in `scope` names, if it is one of `modules` (the longest prefix
/// of the resolved path that is a module).
fn resolve(
    scope: &[String],
    segments: &[String],
    modules: &BTreeMap<String, PathBuf>,
) -> Option<String> {
    let mut base: Vec<String> = scope.to_vec();
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &rest[1..];
        }
        Some("self") => rest = &rest[1..],
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        Some(first) => {
            let mut child = base.clone();
            child.push(first.to_string());
            if !modules.contains_key(&child.join("::")) {
                return None;
            }
        }
        None => return None,
    }
    base.extend(rest.iter().cloned());
    (1..=base.len())
        .rev()
        .map(|len| base[..len].join("::"))
        .find(|candidate| modules.contains_key(candidate))
}

/// Each module's dependencies on the crate's other modules (ancestors excluded).
fn dependencies(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let parsed = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let scope: Vec<String> = if module.is_empty() {
            Vec::new()
        } else {
            module.split("::").map(str::to_string).collect()
        };
        let mut collector = PathCollector {
            scope,
            found: Vec::new(),
        };
        collector.visit_file(&parsed);
        let targets: BTreeSet<String> = collector
            .found
            .iter()
            .filter_map(|(scope, segments)| resolve(scope, segments, &modules))
            .filter(|target| {
                target != module
                    && !module.starts_with(&format!("{target}::"))
                    && !target.is_empty()
            })
            .collect();
        graph.insert(module.clone(), targets);
    }
    graph
}

/// Strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn connect<'g>(state: &mut State<'g>, node: &'g str) {
        state.index.insert(node, state.next);
        state.low.insert(node, state.next);
        state.next += 1;
        state.stack.push(node);
        state.on_stack.insert(node);
        let graph = state.graph;
        for target in graph.get(node).into_iter().flatten() {
            let target = target.as_str();
            if !state.index.contains_key(target) {
                connect(state, target);
                let low = state.low[node].min(state.low[target]);
                state.low.insert(node, low);
            } else if state.on_stack.contains(target) {
                let low = state.low[node].min(state.index[target]);
                state.low.insert(node, low);
            }
        }
        if state.low[node] == state.index[node] {
            let mut component = Vec::new();
            while let Some(member) = state.stack.pop() {
                state.on_stack.remove(member);
                component.push(member.to_string());
                if member == node {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !state.index.contains_key(node.as_str()) {
            connect(&mut state, node);
        }
    }
    state.found
}

fn describe(crate_name: &str, graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    cycles(graph)
        .into_iter()
        .map(|component| {
            let members: BTreeSet<&String> = component.iter().collect();
            let edges: Vec<String> = component
                .iter()
                .map(|module| {
                    let inside: Vec<&str> = graph[module]
                        .iter()
                        .filter(|target| members.contains(target))
                        .map(String::as_str)
                        .collect();
                    format!("    {module} -> {}", inside.join(", "))
                })
                .collect();
            format!(
                "{crate_name}: {} modules depend on each other:\n{}",
                component.len(),
                edges.join("\n")
            )
        })
        .collect()
}

#[test]
fn no_crate_has_an_import_cycle() {
    let root = vigil_tests::paths::workspace_root();
    let mut problems = Vec::new();
    for crate_dir in CRATES {
        let graph = dependencies(&root.join(crate_dir).join("src"));
        assert!(
            graph.len() > 1,
            "{crate_dir}/src: no modules found (the scan is broken, not the layering)"
        );
        problems.extend(describe(crate_dir, &graph));
    }
    assert!(
        problems.is_empty(),
        "import cycles (move what both sides need below both):\n{}",
        problems.join("\n")
    );
}

/// The scan itself: it must see a cycle made of `use` lines, paths in code and macro
/// arguments, and must not see one made of comments, test code or ancestor use.
#[test]
fn the_scan_sees_real_dependencies_and_only_those() {
    let dir = vigil_tests::paths::scratch_dir("module_layers");
    let src = dir.join("src");
    let write = |relative: &str, text: &str| {
        let path = src.join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("scratch dir");
        }
        fs::write(path, text).expect("scratch file");
    };
    write(
        "lib.rs",
        "pub mod a;\npub mod b;\npub mod c;\npub mod folder;\n",
    );
    write("a.rs", "use crate::b::Thing;\n");
    write(
        "b.rs",
        "pub struct Thing;\nfn f() { let _ = format!(\"{}\", crate::c::NAME); }\n",
    );
    write(
        "c.rs",
        "//! See [`crate::a`].\npub const NAME: &str = \"c\";\n\
         #[cfg(test)]\nmod tests { use crate::a; }\n",
    );
    write(
        "folder/mod.rs",
        "mod inner;\nuse inner::Deep;\npub struct Up;\n",
    );
    write("folder/inner.rs", "pub struct Deep;\nuse super::Up;\n");
    let graph = dependencies(&src);
    let edges = |module: &str| graph[module].iter().cloned().collect::<Vec<_>>();
    assert_eq!(edges("a"), ["b"]);
    assert_eq!(edges("b"), ["c"]);
    assert!(
        edges("c").is_empty(),
        "comments and test code are not dependencies"
    );
    assert_eq!(edges("folder"), ["folder::inner"]);
    assert!(
        edges("folder::inner").is_empty(),
        "a child may use its parent"
    );
    assert!(cycles(&graph).is_empty());

    write(
        "c.rs",
        "pub const NAME: &str = \"c\";\nfn g() -> bool { matches!(1, _) && crate::a::YES }\n",
    );
    let graph = dependencies(&src);
    assert_eq!(cycles(&graph), [vec!["a", "b", "c"]]);
    let _ = fs::remove_dir_all(&dir);
}
