//! The import graph of `src/` has no cycle (issue 13): a module never reaches back, through the
//! modules it uses, to itself. Reads the sources as text; no build of its own.
//!
//! Nodes are modules (one per file: `src/x.rs` and `src/x/mod.rs` are `x`, `src/x/y.rs` is
//! `x::y`). A reference is any path `crate::…`, `super::…` or `self::…` in code (comments and
//! string literals left out), `use` trees included, except inside `#[cfg(test)]` modules, inline
//! or in their own file (a test may build its fixtures from anywhere); it names the longest
//! module prefix. A
//! reference counts between siblings: where module A (or anything inside it) names module B (or
//! anything inside it) and neither holds the other, the edge is between the two children of
//! their nearest common parent. A parent using its children, or a child its parent, is no cycle:
//! a folder is one concept. Run with `--nocapture` to see every edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type ModPath = Vec<String>;

/// One place a module names another: file, line and the path as written.
#[derive(Debug, Clone)]
struct Evidence {
    file: String,
    line: usize,
    path: String,
}

#[test]
fn the_module_graph_has_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = ModuleGraph::read(&src);
    assert!(
        graph.modules.len() > 10,
        "read only {} modules from {}",
        graph.modules.len(),
        src.display()
    );
    let edges = graph.sibling_edges();
    for ((parent, from, to), evidence) in &edges {
        println!(
            "{}: {from} -> {to}  ({}:{} {})",
            display(parent),
            evidence.file,
            evidence.line,
            evidence.path
        );
    }
    let cycles = cycles(&edges);
    let report: Vec<String> = cycles
        .iter()
        .map(|(parent, members)| {
            let mut text = format!(
                "cycle among the modules of {}: {}",
                display(parent),
                members.join(", ")
            );
            for ((p, from, to), e) in &edges {
                if p == parent && members.contains(from) && members.contains(to) {
                    text += &format!("\n  {from} -> {to}: {}:{} {}", e.file, e.line, e.path);
                }
            }
            text
        })
        .collect();
    println!(
        "{} modules, {} sibling edges, {} cycles",
        graph.modules.len(),
        edges.len(),
        cycles.len()
    );
    assert!(report.is_empty(), "\n{}", report.join("\n"));
}

fn display(path: &[String]) -> String {
    if path.is_empty() {
        "the crate".to_owned()
    } else {
        path.join("::")
    }
}

struct ModuleGraph {
    modules: BTreeSet<ModPath>,
    /// (from module, to path as resolved to an absolute path, evidence).
    references: Vec<(ModPath, ModPath, Evidence)>,
}

impl ModuleGraph {
    fn read(src: &Path) -> ModuleGraph {
        let mut files = Vec::new();
        collect_rs(src, &mut files);
        let mut modules = BTreeSet::new();
        let mut sources = Vec::new();
        for file in files {
            let rel = file.strip_prefix(src).unwrap_or(&file);
            let Some(module) = module_of(rel) else {
                continue;
            };
            modules.insert(module.clone());
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            sources.push((rel.display().to_string(), module, text));
        }
        // File modules declared `#[cfg(test)] mod name;` hold tests only.
        let mut test_modules = BTreeSet::new();
        for (_, module, text) in &sources {
            let toks = tokens(&strip(text));
            for k in 0..toks.len() {
                if let (
                    Some((_, Token::Ident(m))),
                    Some((_, Token::Ident(name))),
                    Some((_, Token::Punct(';'))),
                ) = (toks.get(k), toks.get(k + 1), toks.get(k + 2))
                    && m == "mod"
                    && cfg_test_before(&toks, k)
                {
                    let mut child = module.clone();
                    child.push(name.clone());
                    test_modules.insert(child);
                }
            }
        }
        let mut references = Vec::new();
        for (name, module, text) in &sources {
            if test_modules.contains(module) {
                continue;
            }
            for (line, scope, path) in paths_in(&strip(text)) {
                let mut current = module.clone();
                current.extend(scope);
                if let Some(absolute) = resolve(&current, &path) {
                    references.push((
                        module.clone(),
                        absolute,
                        Evidence {
                            file: format!("src/{name}"),
                            line,
                            path: path.join("::"),
                        },
                    ));
                }
            }
        }
        ModuleGraph {
            modules,
            references,
        }
    }

    /// The longest known module that `path` starts with.
    fn module_named(&self, path: &[String]) -> ModPath {
        (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|prefix| self.modules.contains(prefix))
            .unwrap_or_default()
    }

    /// Edges between siblings: (their parent, from child, to child) with one piece of evidence.
    fn sibling_edges(&self) -> BTreeMap<(ModPath, String, String), Evidence> {
        let mut edges = BTreeMap::new();
        for (from, to, evidence) in &self.references {
            let to = self.module_named(to);
            let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // one holds the other
            }
            let key = (
                from[..common].to_vec(),
                from[common].clone(),
                to[common].clone(),
            );
            edges.entry(key).or_insert_with(|| evidence.clone());
        }
        edges
    }
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `x.rs` → `x`, `x/mod.rs` → `x`, `x/y.rs` → `x::y`; `lib.rs` is the crate root; the binaries
/// (`main.rs`, `bin/`) are not part of the library's graph.
fn module_of(rel: &Path) -> Option<ModPath> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main.rs"] {
        return None;
    }
    let last = parts.pop()?;
    match last.as_str() {
        "lib.rs" if parts.is_empty() => Some(Vec::new()),
        "mod.rs" => Some(parts),
        _ => {
            parts.push(last.strip_suffix(".rs")?.to_owned());
            Some(parts)
        }
    }
}

/// Resolve `crate::`, `super::` and `self::` paths against the module they are written in.
fn resolve(current: &[String], path: &[String]) -> Option<ModPath> {
    let mut base: ModPath;
    let mut rest = path;
    match path.first()?.as_str() {
        "crate" => {
            base = Vec::new();
            rest = &path[1..];
        }
        "self" => {
            base = current.to_vec();
            rest = &path[1..];
        }
        "super" => {
            base = current.to_vec();
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The text with comments, string and character literals blanked out (newlines kept).
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && matches!(next, Some('"') | Some('#'))
            && !chars
                .get(i.wrapping_sub(1))
                .is_some_and(|p| p.is_alphanumeric() || *p == '_')
        {
            // A raw string r"…" or r#"…"#: count the hashes.
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            let mut k = j + 1;
            while k < chars.len() {
                if chars[k] == '"' && (0..hashes).all(|h| chars.get(k + 1 + h) == Some(&'#')) {
                    k += 1 + hashes;
                    break;
                }
                k += 1;
            }
            for &ch in &chars[i..k.min(chars.len())] {
                out.push(blank(ch));
            }
            i = k;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('a', '\n', '\'') or a lifetime ('a).
            let end = if next == Some('\\') {
                (i + 2..chars.len()).find(|&k| chars[k] == '\'' && k > i + 2)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(text: &str) -> Vec<(usize, Token)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push((line, Token::Ident(chars[start..i].iter().collect())));
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push((line, Token::PathSep));
            i += 2;
        } else {
            out.push((line, Token::Punct(c)));
            i += 1;
        }
    }
    out
}

/// Every path starting with `crate`, `super` or `self`: (line, inline modules it sits in, path).
fn paths_in(text: &str) -> Vec<(usize, ModPath, ModPath)> {
    let toks = tokens(text);
    let mut out = Vec::new();
    // Inline `mod name {` blocks: (brace depth inside them, name, whether `#[cfg(test)]`).
    let mut scopes: Vec<(usize, String, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let ident = |k: usize| match toks.get(k) {
        Some((_, Token::Ident(s))) => Some(s.as_str()),
        _ => None,
    };
    while i < toks.len() {
        let scope: ModPath = scopes.iter().map(|(_, n, _)| n.clone()).collect();
        let in_test = scopes.iter().any(|(_, _, test)| *test);
        match &toks[i].1 {
            Token::Punct('{') => {
                depth += 1;
                if i >= 2
                    && ident(i - 2) == Some("mod")
                    && let Some(name) = ident(i - 1)
                {
                    scopes.push((depth, name.to_owned(), cfg_test_before(&toks, i - 2)));
                }
                i += 1;
            }
            Token::Punct('}') => {
                if scopes.last().is_some_and(|(d, _, _)| *d == depth) {
                    scopes.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Token::Ident(word) if word == "use" => {
                let line = toks[i].0;
                let end = (i..toks.len())
                    .find(|&k| toks[k].1 == Token::Punct(';'))
                    .unwrap_or(toks.len());
                for path in use_tree(&toks[i + 1..end], Vec::new()) {
                    if !in_test
                        && path
                            .first()
                            .is_some_and(|s| matches!(s.as_str(), "crate" | "super" | "self"))
                    {
                        out.push((line, scope.clone(), path));
                    }
                }
                i = end;
            }
            Token::Ident(word)
                if matches!(word.as_str(), "crate" | "super" | "self")
                    && toks.get(i + 1).map(|t| &t.1) == Some(&Token::PathSep)
                    && !(i > 0 && toks[i - 1].1 == Token::PathSep) =>
            {
                let line = toks[i].0;
                let mut path = vec![word.clone()];
                let mut k = i + 1;
                while toks.get(k).map(|t| &t.1) == Some(&Token::PathSep) {
                    match ident(k + 1) {
                        Some(next) => path.push(next.to_owned()),
                        None => break,
                    }
                    k += 2;
                }
                if !in_test {
                    out.push((line, scope.clone(), path));
                }
                i = k;
            }
            _ => i += 1,
        }
    }
    out
}

/// Whether `#[cfg(test)]` (and perhaps `pub`) stands right before the token at `at`.
fn cfg_test_before(toks: &[(usize, Token)], mut at: usize) -> bool {
    if at > 0 && toks[at - 1].1 == Token::Ident("pub".into()) {
        at -= 1;
    }
    let want = [
        Token::Punct('#'),
        Token::Punct('['),
        Token::Ident("cfg".into()),
        Token::Punct('('),
        Token::Ident("test".into()),
        Token::Punct(')'),
        Token::Punct(']'),
    ];
    at >= want.len()
        && toks[at - want.len()..at]
            .iter()
            .map(|t| &t.1)
            .eq(want.iter())
}

/// Expand a `use` tree (the tokens between `use` and `;`) into full paths.
fn use_tree(toks: &[(usize, Token)], prefix: ModPath) -> Vec<ModPath> {
    let mut path = prefix;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].1 {
            Token::Ident(s) if s == "as" => break,
            Token::Ident(s) => path.push(s.clone()),
            Token::PathSep => {}
            Token::Punct('{') => {
                // Split the group at its top-level commas.
                let mut out = Vec::new();
                let mut level = 0;
                let mut start = i + 1;
                for k in i + 1..toks.len() {
                    match toks[k].1 {
                        Token::Punct('{') => level += 1,
                        Token::Punct('}') if level == 0 => {
                            out.extend(use_tree(&toks[start..k], path.clone()));
                            return out;
                        }
                        Token::Punct('}') => level -= 1,
                        Token::Punct(',') if level == 0 => {
                            out.extend(use_tree(&toks[start..k], path.clone()));
                            start = k + 1;
                        }
                        _ => {}
                    }
                }
                return out;
            }
            Token::Punct(_) => {}
        }
        i += 1;
    }
    if path.is_empty() {
        Vec::new()
    } else {
        vec![path]
    }
}

/// Strongly connected components of more than one module, per parent (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<(ModPath, String, String), Evidence>) -> Vec<(ModPath, Vec<String>)> {
    let mut by_parent: BTreeMap<ModPath, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for (parent, from, to) in edges.keys() {
        let graph = by_parent.entry(parent.clone()).or_default();
        graph.entry(from.clone()).or_default().push(to.clone());
        graph.entry(to.clone()).or_default();
    }
    let mut out = Vec::new();
    for (parent, graph) in by_parent {
        for component in strongly_connected(&graph) {
            if component.len() > 1 {
                out.push((parent.clone(), component));
            }
        }
    }
    out
}

fn strongly_connected(graph: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, Vec<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let low = s.low[w.as_str()].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w.as_str()) {
                let low = s.index[w.as_str()].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            component.sort();
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_reader_finds_paths_in_use_trees_and_code_but_not_in_comments_or_strings() {
    let text = r##"
        //! [`crate::nowhere`]
        use crate::{a::{b, c::D}, e as f};
        use super::g;
        mod inner {
            use super::h::I;
        }
        #[cfg(test)]
        mod tests {
            use crate::only_in_tests;
        }
        fn x() { let s = "crate::in_string"; let r = r#"crate::raw"#; crate::j::k(); 'c'; }
    "##;
    let found: Vec<(ModPath, String)> = paths_in(&strip(text))
        .into_iter()
        .map(|(_, scope, path)| (scope, path.join("::")))
        .collect();
    let inner = vec!["inner".to_owned()];
    assert_eq!(
        found,
        [
            (vec![], "crate::a::b".to_owned()),
            (vec![], "crate::a::c::D".to_owned()),
            (vec![], "crate::e".to_owned()),
            (vec![], "super::g".to_owned()),
            (inner.clone(), "super::h::I".to_owned()),
            (vec![], "crate::j::k".to_owned()),
        ]
    );
    // `super` inside an inline module is the file's own module.
    let module = vec!["video".to_owned(), "controls".to_owned()];
    let mut current = module.clone();
    current.extend(inner);
    assert_eq!(
        resolve(&current, &["super".into(), "h".into()]),
        Some(vec!["video".into(), "controls".into(), "h".into()])
    );
    assert_eq!(
        resolve(&module, &["super".into(), "h".into()]),
        Some(vec!["video".into(), "h".into()])
    );
    // A cycle of three siblings is found, a parent-child pair is not.
    let edge = |p: &[&str], a: &str, b: &str| {
        (
            (
                p.iter().map(|s| s.to_string()).collect::<ModPath>(),
                a.to_owned(),
                b.to_owned(),
            ),
            Evidence {
                file: String::new(),
                line: 0,
                path: String::new(),
            },
        )
    };
    let edges: BTreeMap<_, _> = [
        edge(&["video"], "a", "b"),
        edge(&["video"], "b", "c"),
        edge(&["video"], "c", "a"),
        edge(&[], "x", "y"),
    ]
    .into_iter()
    .collect();
    assert_eq!(
        cycles(&edges),
        [(
            vec!["video".to_owned()],
            vec!["a".into(), "b".into(), "c".into()]
        )]
    );
}
