//! The workspace's layering, checked: the aggregator's core stays free of any
//! runtime, network, Kubernetes, metrics or CLI crate, the webhook stands
//! alone, and no crate has an import cycle between its files.
//!
//! The cycle check reads the sources: every `crate::`, `super::` and `self::`
//! path (inside `use` trees too) and every use of a child module by name is an
//! edge from the file it is written in to the file of the module it names. A
//! strongly connected set of more than one file is a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use wva_e2e::workspace;

/// Crates the core must not depend on, directly or through another crate.
const NOT_IN_CORE: &[&str] = &[
    "tokio",
    "kube",
    "k8s-openapi",
    "tonic",
    "hyper",
    "axum",
    "prometheus-client",
    "clap",
];

/// The packages `package` needs to build (normal dependencies only).
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(workspace())
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_core_needs_no_runtime_network_kubernetes_metrics_or_cli_crate() {
    let deps = normal_dependencies("wva-core");
    let found: Vec<&&str> = NOT_IN_CORE.iter().filter(|c| deps.contains(**c)).collect();
    assert!(
        found.is_empty(),
        "wva-core depends on {found:?}; see `cargo tree -p wva-core -e normal -i <crate>`"
    );
    // The check itself sees dependencies: the core does need its proto types.
    assert!(
        deps.contains("wva-proto") && deps.contains("prost"),
        "{deps:?}"
    );
}

#[test]
fn the_webhook_needs_nothing_of_the_aggregator() {
    let deps = normal_dependencies("wva-webhook");
    let aggregator = ["wva-core", "wva-k8s", "wva-aggregator", "wva-agent"];
    let found: Vec<&&str> = aggregator.iter().filter(|c| deps.contains(**c)).collect();
    assert!(found.is_empty(), "wva-webhook depends on {found:?}");
    // Only the project's listener limits, which every HTTP server shares,
    // and the certificates every TLS port shares.
    assert!(
        deps.contains("wva-listen") && deps.contains("wva-certs"),
        "{deps:?}"
    );
    let certs = normal_dependencies("wva-certs");
    let found: Vec<&&str> = aggregator.iter().filter(|c| certs.contains(**c)).collect();
    assert!(found.is_empty(), "wva-certs depends on {found:?}");
}

#[test]
fn no_crate_has_an_import_cycle_between_files() {
    let crates = [
        "proto/src",
        "agent/src",
        "aggregator/core/src",
        "aggregator/k8s/src",
        "aggregator/webhook/src",
        "aggregator/certs/src",
        "aggregator/src",
        "listen/src",
        "sim/src",
        "cli/src",
        "tests/src",
    ];
    let mut report = String::new();
    for dir in crates {
        let graph = Graph::read(&workspace().join(dir));
        assert!(!graph.files.is_empty(), "{dir}: no sources found");
        for cycle in graph.cycles() {
            report.push_str(&format!("{dir}: {}\n", graph.describe(&cycle)));
        }
    }
    assert!(report.is_empty(), "import cycles:\n{report}");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\n").unwrap();
    std::fs::write(src.join("a/mod.rs"), "pub mod c;\npub struct A;\n").unwrap();
    // a::c names its parent; b names a::c; a names b through a use tree.
    std::fs::write(src.join("a/c.rs"), "use super::A;\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "// crate::a is only a comment here\npub fn f() { let _ = \"crate::a\"; }\n",
    )
    .unwrap();
    let graph = Graph::read(src);
    assert!(graph.cycles().is_empty(), "{:?}", graph.edges);
    std::fs::write(src.join("a/mod.rs"), "pub mod c;\nuse crate::{b::f};\n").unwrap();
    std::fs::write(src.join("b.rs"), "pub fn f() { crate::a::c::g(); }\n").unwrap();
    std::fs::write(src.join("a/c.rs"), "pub fn g() { super::super::b::f(); }\n").unwrap();
    let graph = Graph::read(src);
    let cycles = graph.cycles();
    assert_eq!(cycles.len(), 1, "{:?}", graph.edges);
    assert_eq!(graph.describe(&cycles[0]), "a/c.rs -> b.rs; b.rs -> a/c.rs");
}

/// A module path: `[]` is the crate root.
type Module = Vec<String>;

/// The files of one crate and the imports between them.
struct Graph {
    /// Module path → file (relative to the crate's `src`).
    files: BTreeMap<Module, String>,
    /// File → files it imports from.
    edges: BTreeMap<String, BTreeSet<String>>,
}

impl Graph {
    fn read(src: &Path) -> Graph {
        let mut paths = Vec::new();
        collect(src, &mut paths);
        let library = src.join("lib.rs").is_file();
        let mut files = BTreeMap::new();
        for path in &paths {
            let rel = path
                .strip_prefix(src)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            // A crate with a library keeps its binary's `main.rs` apart.
            if library && rel == "main.rs" {
                continue;
            }
            files.insert(module_of(&rel), rel);
        }
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (module, file) in &files {
            let text = std::fs::read_to_string(src.join(file)).unwrap();
            let targets = edges.entry(file.clone()).or_default();
            for named in references(module, &strip(&text), &files) {
                if let Some(target) = file_of(&files, &named)
                    && target != file
                {
                    targets.insert(target.clone());
                }
            }
        }
        Graph { files, edges }
    }

    /// Strongly connected sets of more than one file (Tarjan's algorithm).
    fn cycles(&self) -> Vec<Vec<String>> {
        struct State<'a> {
            graph: &'a Graph,
            index: BTreeMap<&'a str, usize>,
            low: BTreeMap<&'a str, usize>,
            stack: Vec<&'a str>,
            on_stack: BTreeSet<&'a str>,
            found: Vec<Vec<String>>,
        }
        fn visit<'a>(s: &mut State<'a>, v: &'a str) {
            let i = s.index.len();
            s.index.insert(v, i);
            s.low.insert(v, i);
            s.stack.push(v);
            s.on_stack.insert(v);
            for w in s.graph.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
            if s.low[v] == s.index[v] {
                let mut set = Vec::new();
                while let Some(w) = s.stack.pop() {
                    s.on_stack.remove(w);
                    set.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if set.len() > 1 {
                    set.sort();
                    s.found.push(set);
                }
            }
        }
        let mut state = State {
            graph: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            found: Vec::new(),
        };
        for file in self.edges.keys() {
            if !state.index.contains_key(file.as_str()) {
                visit(&mut state, file);
            }
        }
        state.found
    }

    /// The imports inside one cycle, `from -> to` each.
    fn describe(&self, cycle: &[String]) -> String {
        let mut parts = Vec::new();
        for from in cycle {
            for to in self.edges.get(from).into_iter().flatten() {
                if cycle.contains(to) {
                    parts.push(format!("{from} -> {to}"));
                }
            }
        }
        parts.join("; ")
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `a/b.rs` and `a/b/mod.rs` are module `a::b`; `lib.rs` and `main.rs` the root.
fn module_of(rel: &str) -> Module {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The file holding the deepest module on `path`.
fn file_of<'a>(files: &'a BTreeMap<Module, String>, path: &Module) -> Option<&'a String> {
    (0..=path.len()).rev().find_map(|n| files.get(&path[..n]))
}

/// The text with comments, strings and character literals blanked out, so
/// only code is read.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        if rest.starts_with(&['/', '/']) {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if rest.starts_with(&['/', '*']) {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i..].starts_with(&['/', '*']) {
                    depth += 1;
                    i += 2;
                } else if chars[i..].starts_with(&['*', '/']) {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if chars[i] == 'r'
            && matches!(rest.get(1), Some('#' | '"'))
            && !ident_before(&chars, i)
        {
            let hashes = rest[1..].iter().take_while(|c| **c == '#').count();
            if rest.get(1 + hashes) == Some(&'"') {
                i += 2 + hashes;
                while i < chars.len()
                    && !(chars[i] == '"'
                        && chars[i + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|c| **c == '#')
                            .count()
                            == hashes)
                {
                    i += 1;
                }
                i += 1 + hashes;
                out.push_str("\"\"");
            } else {
                out.push(chars[i]);
                i += 1;
            }
        } else if chars[i] == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if chars[i] == '\'' {
            // A character literal ('x', '\n', '\''); a lifetime has no closing quote.
            let len = if rest.get(1) == Some(&'\\') {
                rest[2..].iter().position(|c| *c == '\'').map(|p| p + 3)
            } else if rest.get(2) == Some(&'\'') {
                Some(3)
            } else {
                None
            };
            match len {
                Some(n) => {
                    out.push_str("' '");
                    i += n;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Path,
    Punct(char),
}

fn tokens(code: &str) -> Vec<Token> {
    let chars: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token::Path);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Token::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// Every module path a file's code names, resolved from the module `file`.
fn references(file: &Module, code: &str, files: &BTreeMap<Module, String>) -> Vec<Module> {
    let tokens = tokens(code);
    // The file's child modules, which its code may name without a prefix.
    let children: BTreeSet<&str> = files
        .keys()
        .filter(|m| m.len() == file.len() + 1 && m.starts_with(file))
        .map(|m| m[file.len()].as_str())
        .collect();
    let mut found = Vec::new();
    // Inline modules (`mod tests { … }`) open at a brace depth.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let here = || -> Module {
            let mut m = file.clone();
            m.extend(inline.iter().map(|(name, _)| name.clone()));
            m
        };
        match &tokens[i] {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Token::Ident(kw) if kw == "mod" => {
                if let (Some(Token::Ident(name)), Some(Token::Punct('{'))) =
                    (tokens.get(i + 1), tokens.get(i + 2))
                {
                    inline.push((name.clone(), depth + 1));
                }
            }
            Token::Ident(word)
                if tokens.get(i + 1) == Some(&Token::Path)
                    && !matches!(tokens.get(i.wrapping_sub(1)), Some(Token::Path)) =>
            {
                let base = match word.as_str() {
                    "crate" => Some(Vec::new()),
                    "self" => Some(here()),
                    "super" => {
                        let mut m = here();
                        m.pop();
                        Some(m)
                    }
                    name if inline.is_empty() && children.contains(name) => {
                        let mut m = file.clone();
                        m.push(name.to_string());
                        Some(m)
                    }
                    _ => None,
                };
                if let Some(base) = base {
                    let (end, paths) = path_tree(&tokens, i + 2, base);
                    found.extend(paths);
                    i = end;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// Reads the path after a `::` at `start` (`a::b`, `super::a`, `{a, b::c}`),
/// appending to `base`; returns where it ends and every path it names.
fn path_tree(tokens: &[Token], mut i: usize, mut base: Module) -> (usize, Vec<Module>) {
    loop {
        match tokens.get(i) {
            Some(Token::Ident(s)) if s == "super" => {
                base.pop();
            }
            Some(Token::Ident(s)) if s == "self" => {}
            Some(Token::Ident(s)) => base.push(s.clone()),
            Some(Token::Punct('{')) => {
                let mut paths = Vec::new();
                i += 1;
                while let Some(token) = tokens.get(i) {
                    match token {
                        Token::Punct('}') => return (i + 1, paths),
                        Token::Punct(',') => i += 1,
                        _ => {
                            let (end, more) = path_tree(tokens, i, base.clone());
                            paths.extend(more);
                            i = end.max(i + 1);
                        }
                    }
                }
                return (i, paths);
            }
            _ => return (i, vec![base]),
        }
        i += 1;
        if tokens.get(i) == Some(&Token::Path) {
            i += 1;
        } else {
            return (i, vec![base]);
        }
    }
}
