//! `cargo xtask arch` (also the first step of `cargo xtask test`): rules of
//! the architecture that the compiler does not check.
//!
//! 1. Layering of the gateway crate (LAYERS, LEAVES below): a module of
//!    gateway/src may import only from itself, from a lower layer or from a
//!    leaf. Every path into the crate counts: `use crate::…` items (each
//!    member of a group `use crate::{a::b, c::{d, e}}` names its own target,
//!    here `a` and `c`), inline paths (`crate::store::open()`), and `super::`
//!    chains that climb out of the top-level module. Comments and string or
//!    char literals do not count; `#[cfg(test)]` code does.
//! 2. `unsafe` (the keyword, outside comments and literals) only in the
//!    files UNSAFE_ALLOWED lists, in the trees of UNSAFE_SCANNED.
//! 3. The crates of FORBID_UNSAFE_CRATES forbid unsafe_code, in each crate
//!    root (`#![forbid(unsafe_code)]`) or in their Cargo.toml `[lints]`
//!    (directly or through `workspace = true`).
//!
//! The scanner is a small hand-written lexer (comments, strings, raw
//! strings, chars and lifetimes), not a Rust parser: enough for paths.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

/// The layers of gateway/src, top to bottom: the index is the layer number.
///
/// The rule: a module may import only from itself, from a module of a
/// strictly lower layer (a higher number) or from a leaf (LEAVES). Modules of
/// the same layer may not import each other. A module is a top-level one:
/// the first path component under gateway/src (a directory `foo/` or a file
/// `foo.rs`), with all its submodules; each must be listed here or in LEAVES.
///
/// Layer 0 is the crate root (lib.rs, main.rs): it wires everything together
/// and may import anything, while the items it defines (`crate::EBPF_OBJECT`)
/// are layer 0 too, so no module may use them.
///
/// To change the architecture, edit this table (and LEAVES): inserting a row
/// renumbers the rows below it.
const LAYERS: &[&[&str]] = &[
    &[ROOT],                  // 0: lib.rs, main.rs and the items they define
    &["cli"],                 // 1
    &["daemon"],              // 2
    &["api"],                 // 3
    &["sip"],                 // 4
    &["session"],             // 5
    &["metrics"],             // 6
    &["stream", "dataplane"], // 7: the same layer, independent of each other
    &["keys"],                // 8
    &["store"],               // 9
    &["sys"],                 // 10
];

/// Modules outside the layers: every module may import them, and they
/// import nothing from the crate (`crate::…` or an escaping `super::`).
const LEAVES: &[&str] = &["config"];

/// LAYERS' name of the crate root: the files ROOT_FILES and their items.
const ROOT: &str = "<crate root>";
const ROOT_FILES: &[&str] = &["lib.rs", "main.rs"];

/// The gateway crate's sources, whose layering is checked.
const GATEWAY_SRC: &str = "gateway/src";

/// Where `unsafe` may appear. An entry ending in `.rs` is one file; any
/// other entry is a module: `<entry>.rs` and every file under `<entry>/`.
const UNSAFE_ALLOWED: &[&str] = &[
    "gateway/src/sys",
    "gmcrypt/src/arch",
    "tests/src/bin/metrics_bench.rs",
];

/// The source trees searched for `unsafe` (build scripts are outside them).
const UNSAFE_SCANNED: &[&str] = &[
    "gateway/src",
    "simulator/src",
    "gb28181/src",
    "media/src",
    "gb35114/src",
    "gmcrypt/src",
    "tests/src",
    "xtask/src",
];

/// Crates (directories of the workspace) whose every crate root must
/// forbid unsafe_code.
const FORBID_UNSAFE_CRATES: &[&str] = &["gb28181", "media", "gb35114", "simulator", "xtask"];

// ---------------------------------------------------------------------------
// The lexer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// An identifier, a keyword or a number (`r#x` keeps its `r#`).
    Ident(String),
    /// `::`
    PathSep,
    /// Any other punctuation character.
    Punct(char),
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens of a Rust source outside comments and string, char and byte
/// literals, with their (1-based) lines.
fn lex(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let at = |j: usize| c.get(j).copied().unwrap_or('\0');
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 1;
            i += 2;
            while i < c.len() && depth > 0 {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                } else {
                    if c[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i + 1, &mut line);
        } else if ch == '\'' {
            match char_literal_end(&c, i) {
                Some(end) => i = end,
                None => {
                    // A lifetime or a label.
                    out.push(Token {
                        tok: Tok::Punct('\''),
                        line,
                    });
                    i += 1;
                }
            }
        } else if is_ident_char(ch) {
            let start = i;
            while is_ident_char(at(i)) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            match word.as_str() {
                "r" | "br" | "cr" if at(i + hashes) == '"' => {
                    i = skip_raw_string(&c, i + hashes + 1, hashes, &mut line);
                }
                "b" | "c" if at(i) == '"' => i = skip_string(&c, i + 1, &mut line),
                "b" if at(i) == '\'' => i = char_literal_end(&c, i).unwrap_or(i + 1),
                "r" if hashes == 1 && is_ident_char(at(i + 1)) => {
                    // A raw identifier: r#unsafe is not the keyword.
                    let s = i + 1;
                    i = s;
                    while is_ident_char(at(i)) {
                        i += 1;
                    }
                    let name: String = c[s..i].iter().collect();
                    out.push(Token {
                        tok: Tok::Ident(format!("r#{name}")),
                        line,
                    });
                }
                _ => out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                }),
            }
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

/// From just after an opening `"`: the index after the closing one.
fn skip_string(c: &[char], mut j: usize, line: &mut usize) -> usize {
    while j < c.len() {
        match c[j] {
            '\\' => {
                if c.get(j + 1) == Some(&'\n') {
                    *line += 1;
                }
                j += 2;
            }
            '"' => return j + 1,
            '\n' => {
                *line += 1;
                j += 1;
            }
            _ => j += 1,
        }
    }
    c.len()
}

/// From just after the opening `"` of a raw string with `hashes` `#`s:
/// the index after its end.
fn skip_raw_string(c: &[char], mut j: usize, hashes: usize, line: &mut usize) -> usize {
    while j < c.len() {
        if c[j] == '"'
            && c[j + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == '#')
                .count()
                == hashes
        {
            return j + 1 + hashes;
        }
        if c[j] == '\n' {
            *line += 1;
        }
        j += 1;
    }
    c.len()
}

/// At a `'`: the index after the char literal that starts there, or None
/// for a lifetime or a label (`'a`, `'static`, `'outer:`).
fn char_literal_end(c: &[char], i: usize) -> Option<usize> {
    let at = |j: usize| c.get(j).copied().unwrap_or('\0');
    if at(i + 1) == '\\' {
        // '\n', '\'', '\u{1F600}': to the next quote after the escaped char.
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' && c[j] != '\n' {
            j += 1;
        }
        Some(j + 1)
    } else if at(i + 2) == '\'' && at(i + 1) != '\n' {
        Some(i + 3)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Paths into the crate

/// A path into the crate: the top-level module (or item of the crate root,
/// or `*`) it names, and its line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ref {
    line: usize,
    target: String,
}

/// The module path of a file of gateway/src (`sip/core/session.rs` is
/// [sip, core, session], `sip/mod.rs` is [sip], lib.rs and main.rs are []).
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.split('/').map(str::to_string).collect();
    let last = parts.pop().unwrap_or_default();
    if parts.is_empty() && ROOT_FILES.contains(&last.as_str()) {
        return vec![];
    }
    let stem = last.strip_suffix(".rs").unwrap_or(&last);
    if stem != "mod" {
        parts.push(stem.to_string());
    }
    parts
}

/// The paths into the crate of one file of gateway/src (`rel`: its path
/// under gateway/src): `crate::x…`, and `super::…` chains that climb to the
/// crate root (out of the top-level module), each with the first component
/// after the root. Inline `mod x { … }` blocks count as one level for
/// `super`.
fn crate_refs(rel: &str, src: &str) -> Vec<Ref> {
    let toks = lex(src);
    let tok = |j: usize| toks.get(j).map(|t| &t.tok);
    let is_ident = |j: usize, w: &str| matches!(tok(j), Some(Tok::Ident(x)) if x == w);
    let depth_of_file = module_path(rel).len();
    // Inline modules: the brace depth inside each.
    let mut inline: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    let mut refs = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let prev = i.checked_sub(1).and_then(tok);
        match &toks[i].tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                while inline.last().is_some_and(|&d| d > depth) {
                    inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if matches!(tok(i + 1), Some(Tok::Ident(_))) && tok(i + 2) == Some(&Tok::Punct('{'))
                {
                    inline.push(depth + 1);
                }
            }
            // Not `$crate::` (macros), `pub(crate)` or `extern crate`.
            Tok::Ident(w)
                if w == "crate"
                    && tok(i + 1) == Some(&Tok::PathSep)
                    && !matches!(prev, Some(Tok::Punct('$')) | Some(Tok::PathSep)) =>
            {
                targets_at(&toks, i + 2, &mut refs);
            }
            Tok::Ident(w) if w == "super" && prev != Some(&Tok::PathSep) => {
                let mut climbs = 1;
                let mut j = i + 1;
                while tok(j) == Some(&Tok::PathSep) && is_ident(j + 1, "super") {
                    climbs += 1;
                    j += 2;
                }
                let here = depth_of_file + inline.len();
                if climbs == here && tok(j) == Some(&Tok::PathSep) {
                    targets_at(&toks, j + 1, &mut refs);
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    refs
}

/// The targets of the path rest at `j` (just after `crate::`): an
/// identifier, `*`, or a group whose members each name one.
fn targets_at(toks: &[Token], j: usize, refs: &mut Vec<Ref>) {
    let Some(t) = toks.get(j) else { return };
    match &t.tok {
        Tok::Punct('{') => {
            group_targets(toks, j, refs);
        }
        Tok::Ident(name) if name != "self" => refs.push(Ref {
            line: t.line,
            target: name.clone(),
        }),
        Tok::Punct('*') => refs.push(Ref {
            line: t.line,
            target: "*".into(),
        }),
        _ => {}
    }
}

/// The group opening at `open` (`{a::b, c::{d, e}, {f, g}, self}`): the
/// first component of each member (here a, c, f, g) is a target. Returns
/// the index after the closing `}`.
fn group_targets(toks: &[Token], open: usize, refs: &mut Vec<Ref>) -> usize {
    let mut j = open + 1;
    let mut member_start = true;
    while let Some(t) = toks.get(j) {
        match &t.tok {
            Tok::Punct('}') => return j + 1,
            Tok::Punct(',') => {
                member_start = true;
                j += 1;
            }
            Tok::Punct('{') if member_start => {
                // A bare nested group: its members are at this level.
                j = group_targets(toks, j, refs);
                member_start = false;
            }
            Tok::Punct('{') => {
                // `c::{d, e}`: below the target, skipped.
                j = skip_group(toks, j);
            }
            _ if member_start => {
                targets_at(toks, j, refs);
                member_start = false;
                j += 1;
            }
            _ => j += 1,
        }
    }
    j
}

/// The index after the `}` that closes the `{` at `open`.
fn skip_group(toks: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

// ---------------------------------------------------------------------------
// The layering

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    Rank(usize),
    Leaf,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Rank(n) => write!(f, "layer {n}"),
            Layer::Leaf => write!(f, "leaf"),
        }
    }
}

/// The layer of a module listed in LAYERS or LEAVES.
fn layer_of(module: &str) -> Option<Layer> {
    if LEAVES.contains(&module) {
        return Some(Layer::Leaf);
    }
    LAYERS
        .iter()
        .position(|row| row.contains(&module))
        .map(Layer::Rank)
}

/// The top-level module of a file of gateway/src (None: the crate root).
fn top_module(rel: &str) -> Option<String> {
    if ROOT_FILES.contains(&rel) {
        return None;
    }
    let first = rel.split('/').next().unwrap_or(rel);
    Some(first.strip_suffix(".rs").unwrap_or(first).to_string())
}

/// The modules a crate root declares at its top level (`mod x;`,
/// `pub mod x { … }`), with their lines.
fn declared_modules(src: &str) -> Vec<(String, usize)> {
    let toks = lex(src);
    let mut depth = 0usize;
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match &t.tok {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Ident(w) if w == "mod" && depth == 0 => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct(';' | '{'))) = (
                    toks.get(i + 1).map(|t| &t.tok),
                    toks.get(i + 2).map(|t| &t.tok),
                ) {
                    out.push((name.clone(), t.line));
                }
            }
            _ => {}
        }
    }
    out
}

/// What the layering check found.
#[derive(Debug, Default)]
struct Layering {
    files: usize,
    refs: usize,
    /// One line per offending reference.
    violations: Vec<String>,
    /// One line per top-level module missing from LAYERS and LEAVES.
    unlayered: Vec<String>,
}

/// Checks the layering of gateway/src, given as (path under gateway/src,
/// source) pairs.
fn check_layering(files: &[(String, String)]) -> Layering {
    // The top-level modules and where each is: its file or directory, or
    // (declared in lib.rs without a file yet) its declaration.
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for (rel, _) in files {
        if let Some(m) = top_module(rel) {
            let shown = if rel.contains('/') {
                format!("{m}/")
            } else {
                rel.clone()
            };
            modules.entry(m).or_insert(shown);
        }
    }
    for (rel, src) in files.iter().filter(|(rel, _)| top_module(rel).is_none()) {
        for (m, line) in declared_modules(src) {
            modules.entry(m).or_insert_with(|| format!("{rel}:{line}"));
        }
    }
    let mut out = Layering {
        files: files.len(),
        ..Layering::default()
    };
    for (m, at) in &modules {
        if layer_of(m).is_none() {
            out.unlayered.push(format!(
                "{GATEWAY_SRC}/{at}: module {m} has no layer; add it to xtask/src/arch.rs"
            ));
        }
    }
    for (rel, src) in files {
        let refs = crate_refs(rel, src);
        out.refs += refs.len();
        let from = top_module(rel);
        let from_layer = match &from {
            None => Layer::Rank(0),
            Some(m) => match layer_of(m) {
                Some(l) => l,
                None => continue, // reported above
            },
        };
        let from = from.unwrap_or_else(|| ROOT.to_string());
        for r in refs {
            let to_layer = match layer_of(&r.target) {
                Some(l) => l,
                None if modules.contains_key(&r.target) => continue, // unlayered: reported
                None => Layer::Rank(0),                              // an item of lib.rs
            };
            let tail = match (from_layer, to_layer) {
                _ if r.target == from => continue,
                (Layer::Leaf, _) => "; a leaf imports nothing from the crate",
                (_, Layer::Leaf) => continue,
                (Layer::Rank(a), Layer::Rank(b)) if a == 0 || b > a => continue,
                (Layer::Rank(a), Layer::Rank(b)) if a == b => " from the same layer",
                (Layer::Rank(_), Layer::Rank(_)) => " from above",
            };
            out.violations.push(format!(
                "{GATEWAY_SRC}/{rel}:{}: {from} ({from_layer}) imports crate::{} ({to_layer}){tail}",
                r.line, r.target
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// unsafe

/// The lines of the `unsafe` keyword in a source.
fn unsafe_lines(src: &str) -> Vec<usize> {
    lex(src)
        .into_iter()
        .filter(|t| matches!(&t.tok, Tok::Ident(w) if w == "unsafe"))
        .map(|t| t.line)
        .collect()
}

/// Whether UNSAFE_ALLOWED allows `unsafe` in this file (workspace-relative).
fn unsafe_allowed(path: &str) -> bool {
    UNSAFE_ALLOWED.iter().any(|a| {
        if a.ends_with(".rs") {
            path == *a
        } else {
            path == format!("{a}.rs") || path.starts_with(&format!("{a}/"))
        }
    })
}

/// Whether a crate root has `#![forbid(…unsafe_code…)]`.
fn forbids_unsafe_code(src: &str) -> bool {
    let toks: Vec<Tok> = lex(src).into_iter().map(|t| t.tok).collect();
    let ident = |t: &Tok, w: &str| matches!(t, Tok::Ident(x) if x == w);
    toks.windows(5).enumerate().any(|(i, w)| {
        w[0] == Tok::Punct('#')
            && w[1] == Tok::Punct('!')
            && w[2] == Tok::Punct('[')
            && ident(&w[3], "forbid")
            && w[4] == Tok::Punct('(')
            && toks[i + 5..]
                .iter()
                .take_while(|t| **t != Tok::Punct(')'))
                .any(|t| ident(t, "unsafe_code"))
    })
}

/// What a Cargo.toml's lints table (`[lints]` of a package, or
/// `[workspace.lints]` with `table = "workspace.lints"`) says: whether it
/// forbids unsafe_code, and whether it inherits the workspace's.
fn cargo_lints(toml: &str, table: &str) -> (bool, bool) {
    let rust = format!("{table}.rust");
    let (mut forbid, mut inherit) = (false, false);
    let mut section = String::new();
    for raw in toml.lines() {
        let line: String = raw
            .split('#')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Some(h) = line.strip_prefix('[') {
            section = h.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let forbids = |key: &str| {
            line.strip_prefix(key).is_some_and(|v| {
                v.starts_with("=\"forbid\"") || v.starts_with("={level=\"forbid\"")
            })
        };
        if section == rust {
            forbid |= forbids("unsafe_code");
        } else if section == table {
            forbid |= forbids("rust.unsafe_code")
                || (line.starts_with("rust=")
                    && (line.contains("unsafe_code=\"forbid\"")
                        || line.contains("unsafe_code={level=\"forbid\"")));
            inherit |= line == "workspace=true";
        }
    }
    (forbid, inherit)
}

/// The crate roots of a crate directory: src/lib.rs, src/main.rs,
/// src/bin/*.rs, src/bin/*/main.rs and the `path`s of [lib] and [[bin]].
fn crate_roots(root: &Path, dir: &str, toml: &str) -> Vec<String> {
    let mut roots = BTreeSet::new();
    for f in ["src/lib.rs", "src/main.rs"] {
        if root.join(dir).join(f).is_file() {
            roots.insert(format!("{dir}/{f}"));
        }
    }
    if let Ok(rd) = std::fs::read_dir(root.join(dir).join("src/bin")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".rs") {
                roots.insert(format!("{dir}/src/bin/{name}"));
            } else if e.path().join("main.rs").is_file() {
                roots.insert(format!("{dir}/src/bin/{name}/main.rs"));
            }
        }
    }
    let mut target = false;
    for line in toml.lines().map(str::trim) {
        if line.starts_with('[') {
            target = line == "[lib]" || line == "[[bin]]";
        } else if let (true, Some(v)) = (target, line.strip_prefix("path")) {
            if let Some(p) = v.trim_start().strip_prefix('=') {
                roots.insert(format!("{dir}/{}", p.trim().trim_matches('"')));
            }
        }
    }
    roots.into_iter().collect()
}

// ---------------------------------------------------------------------------
// The command

/// The .rs files under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut rd: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    rd.sort_by_key(|e| e.file_name());
    for e in rd {
        let p = e.path();
        if e.file_type()?.is_dir() {
            out.extend(rust_files(&p)?);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(out)
}

/// `path` relative to `base`, with `/` separators.
fn rel(path: &Path, base: &Path) -> String {
    let r = path.strip_prefix(base).unwrap_or(path);
    r.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

/// Runs the three checks on the workspace at `root`.
pub fn run(root: &Path) -> Result<()> {
    // 1. Layering.
    let src = root.join(GATEWAY_SRC);
    let mut files = Vec::new();
    for p in rust_files(&src)? {
        files.push((rel(&p, &src), read(&p)?));
    }
    let layering = check_layering(&files);

    // 2. unsafe.
    let mut unsafe_out = Vec::new();
    for dir in UNSAFE_SCANNED {
        let d = root.join(dir);
        if !d.is_dir() {
            continue;
        }
        for p in rust_files(&d)? {
            let r = rel(&p, root);
            if unsafe_allowed(&r) {
                continue;
            }
            for line in unsafe_lines(&read(&p)?) {
                unsafe_out.push(format!("{r}:{line}: unsafe outside the allowed modules"));
            }
        }
    }

    // 3. forbid(unsafe_code).
    let mut forbid_out = Vec::new();
    let ws_toml = read(&root.join("Cargo.toml"))?;
    let (ws_forbids, _) = cargo_lints(&ws_toml, "workspace.lints");
    for krate in FORBID_UNSAFE_CRATES {
        let toml = read(&root.join(krate).join("Cargo.toml"))?;
        let (forbids, inherits) = cargo_lints(&toml, "lints");
        if forbids || (inherits && ws_forbids) {
            continue;
        }
        let mut missing = Vec::new();
        for r in crate_roots(root, krate, &toml) {
            match std::fs::read_to_string(root.join(&r)) {
                Ok(s) if forbids_unsafe_code(&s) => {}
                _ => missing.push(r),
            }
        }
        if !missing.is_empty() {
            forbid_out.push(format!(
                "{krate}: does not forbid unsafe_code (no [lints] unsafe_code = \"forbid\"; no #![forbid(unsafe_code)] in {})",
                missing.join(", ")
            ));
        }
    }

    for l in layering
        .unlayered
        .iter()
        .chain(&layering.violations)
        .chain(&unsafe_out)
        .chain(&forbid_out)
    {
        println!("{l}");
    }
    let (v, u, s, f) = (
        layering.violations.len(),
        layering.unlayered.len(),
        unsafe_out.len(),
        forbid_out.len(),
    );
    if v + u + s + f > 0 {
        bail!(
            "arch: {v} layering violation(s), {u} module(s) without a layer, {s} unsafe outside the allowed modules, {f} crate(s) not forbidding unsafe_code ({} files, {} crate references)",
            layering.files,
            layering.refs
        );
    }
    println!(
        "arch: {} files, {} crate references, layering holds; unsafe only where allowed",
        layering.files, layering.refs
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(rel: &str, src: &str) -> Vec<String> {
        crate_refs(rel, src).into_iter().map(|r| r.target).collect()
    }

    fn layering(files: &[(&str, &str)]) -> Layering {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect();
        check_layering(&files)
    }

    #[test]
    fn table_names_each_module_once() {
        let mut seen = BTreeSet::new();
        for m in LAYERS.iter().flat_map(|r| r.iter()).chain(LEAVES) {
            assert!(seen.insert(*m), "{m} listed twice");
        }
        assert_eq!(LAYERS[0], &[ROOT]);
        assert_eq!(layer_of("stream"), layer_of("dataplane"));
        assert_eq!(layer_of("config"), Some(Layer::Leaf));
        assert_eq!(layer_of("sys"), Some(Layer::Rank(10)));
    }

    #[test]
    fn module_paths() {
        assert_eq!(module_path("lib.rs"), Vec::<String>::new());
        assert_eq!(module_path("main.rs"), Vec::<String>::new());
        assert_eq!(module_path("sip/mod.rs"), ["sip"]);
        assert_eq!(module_path("sip/core.rs"), ["sip", "core"]);
        assert_eq!(module_path("sip/core/x.rs"), ["sip", "core", "x"]);
        assert_eq!(top_module("sip/core/x.rs").as_deref(), Some("sip"));
        assert_eq!(top_module("config.rs").as_deref(), Some("config"));
        assert_eq!(top_module("lib.rs"), None);
    }

    #[test]
    fn simple_and_grouped_use() {
        assert_eq!(targets("cli.rs", "use crate::sip::core::Core;"), ["sip"]);
        assert_eq!(
            targets("cli.rs", "use crate::{sip::core::Core, stream, self};"),
            ["sip", "stream"]
        );
        assert_eq!(
            targets("cli.rs", "use crate::{\n    keys as k,\n    store::*,\n};"),
            ["keys", "store"]
        );
        let r = crate_refs("cli.rs", "use crate::{\n    keys,\n\n    store,\n};");
        assert_eq!(r.iter().map(|r| r.line).collect::<Vec<_>>(), [2, 4]);
    }

    #[test]
    fn nested_groups() {
        // d and e are below c, not modules of the crate root.
        assert_eq!(
            targets("cli.rs", "use crate::{a::b, c::{d, e::{f, g}}, h};"),
            ["a", "c", "h"]
        );
        // A bare nested group is at the same level.
        assert_eq!(
            targets("cli.rs", "use crate::{{sip, store::{x, y}}, keys};"),
            ["sip", "store", "keys"]
        );
        assert_eq!(targets("cli.rs", "use {crate::sip, std::io};"), ["sip"]);
    }

    #[test]
    fn inline_paths() {
        let src = "fn f() -> u32 {\n    let s = crate::store::open();\n    crate::keys::Key::new(crate::EBPF_OBJECT)\n}";
        let r = crate_refs("cli.rs", src);
        assert_eq!(
            r,
            [
                Ref {
                    line: 2,
                    target: "store".into()
                },
                Ref {
                    line: 3,
                    target: "keys".into()
                },
                Ref {
                    line: 3,
                    target: "EBPF_OBJECT".into()
                },
            ]
        );
    }

    #[test]
    fn not_paths_into_the_crate() {
        let src = "pub(crate) fn f() {}\npub(super) struct S;\nextern crate alloc;\n\
                   macro_rules! m { () => { $crate::x() } }\nuse self::a::b;\nuse std::io;";
        assert!(targets("sip/mod.rs", src).is_empty());
    }

    #[test]
    fn super_escaping_the_top_level_module() {
        let f = "sip/core/x.rs";
        assert_eq!(
            targets(f, "use super::super::super::stream::Flow;"),
            ["stream"]
        );
        assert_eq!(
            targets(f, "fn g() { super::super::super::keys::k() }"),
            ["keys"]
        );
        assert_eq!(
            targets(f, "use super::super::super::{store, keys::K};"),
            ["store", "keys"]
        );
        // Within sip: not a crate reference.
        assert!(targets(f, "use super::super::transport; use super::y;").is_empty());
        // One level climbs out of a top-level file.
        assert_eq!(targets("store.rs", "use super::sys;"), ["sys"]);
        assert_eq!(targets("store/mod.rs", "use super::sys;"), ["sys"]);
        assert_eq!(
            targets("sip/core.rs", "use super::super::stream;"),
            ["stream"]
        );
    }

    #[test]
    fn super_in_inline_modules() {
        // `mod tests { use super::*; }` stays in the module.
        assert!(targets("store.rs", "mod tests {\n    use super::*;\n}").is_empty());
        // Inside an inline module one more level is needed to climb out.
        let src = "mod a {\n    mod b {\n        use super::super::super::keys;\n    }\n    use super::super::sys;\n}\nuse super::stream;";
        let r = crate_refs("store.rs", src);
        assert_eq!(
            r.iter()
                .map(|r| (r.line, r.target.as_str()))
                .collect::<Vec<_>>(),
            [(3, "keys"), (5, "sys"), (7, "stream"),]
        );
        // A mod declaration without a body is not a level here.
        assert_eq!(targets("store.rs", "mod x;\nuse super::sys;"), ["sys"]);
    }

    #[test]
    fn comments_and_strings_ignored() {
        let src = r#"
// use crate::sip;
/// crate::sip::x in a doc comment
//! crate::sip in an inner doc comment
/* crate::sip /* nested crate::sip */ still a comment crate::sip */
/** crate::sip */
fn f() {
    let a = "crate::sip::x()";
    let b = "escaped \" crate::sip";
    let c = b"crate::sip";
    let d = c"crate::sip";
    let e = '"'; let g = '\''; let h = b'"'; let u = '\u{22}';
    let l: &'static str = "x";
    'outer: loop { break 'outer; }
}
"#;
        assert!(
            targets("store.rs", src).is_empty(),
            "{:?}",
            targets("store.rs", src)
        );
        // And the lexer is back in code afterwards, on the right line.
        let src2 = format!("{src}use crate::sip;\n");
        let r = crate_refs("store.rs", &src2);
        assert_eq!(
            r,
            [Ref {
                line: src.lines().count() + 1,
                target: "sip".into()
            }]
        );
    }

    #[test]
    fn raw_strings_ignored() {
        let src = "let a = r\"crate::sip \\\";\nlet b = r#\"crate::sip \"quoted\" crate::sip\"#;\n\
                   let c = br##\"crate::sip \"# crate::sip\"##;\nlet d = cr\"crate::sip\";\n\
                   let e = r#unsafe;\nuse crate::keys;";
        let r = crate_refs("store.rs", src);
        assert_eq!(
            r,
            [Ref {
                line: 6,
                target: "keys".into()
            }]
        );
        // A multi-line raw string keeps the line count.
        let r = crate_refs(
            "store.rs",
            "let x = r#\"\ncrate::sip\n\"#;\ncrate::keys::k();",
        );
        assert_eq!(
            r,
            [Ref {
                line: 4,
                target: "keys".into()
            }]
        );
    }

    #[test]
    fn violation_from_above() {
        let l = layering(&[
            ("lib.rs", "pub mod sip; pub mod store; use crate::sip::x;"),
            ("sip/mod.rs", "use crate::store::Db;"),
            (
                "store.rs",
                "fn f() {}\nuse crate::{sip::core, config::Config};",
            ),
        ]);
        assert_eq!(l.files, 3);
        assert_eq!(l.refs, 4);
        assert!(l.unlayered.is_empty());
        assert_eq!(
            l.violations,
            ["gateway/src/store.rs:2: store (layer 9) imports crate::sip (layer 4) from above"]
        );
    }

    #[test]
    fn violation_through_super_and_in_tests() {
        let l = layering(&[(
            "keys.rs",
            "#[cfg(test)]\nmod tests {\n    use super::super::metrics;\n}",
        )]);
        assert_eq!(
            l.violations,
            ["gateway/src/keys.rs:3: keys (layer 8) imports crate::metrics (layer 6) from above"]
        );
    }

    #[test]
    fn same_layer_siblings() {
        let l = layering(&[
            (
                "stream/mod.rs",
                "use crate::dataplane::flows;\nuse crate::stream::x;",
            ),
            ("dataplane/mod.rs", "use crate::keys;"),
        ]);
        assert_eq!(
            l.violations,
            ["gateway/src/stream/mod.rs:1: stream (layer 7) imports crate::dataplane (layer 7) from the same layer"]
        );
    }

    #[test]
    fn config_is_a_leaf() {
        let l = layering(&[
            (
                "config.rs",
                "use crate::config::x;\nuse crate::sys::y;\nfn f() { crate::cli::run() }",
            ),
            ("cli.rs", "use crate::config::Config;"),
            ("sys/mod.rs", "use crate::config::Config;"),
        ]);
        assert_eq!(
            l.violations,
            [
                "gateway/src/config.rs:2: config (leaf) imports crate::sys (layer 10); a leaf imports nothing from the crate",
                "gateway/src/config.rs:3: config (leaf) imports crate::cli (layer 1); a leaf imports nothing from the crate",
            ]
        );
    }

    #[test]
    fn root_items_are_layer_zero() {
        let l = layering(&[
            (
                "lib.rs",
                "pub mod dataplane; pub static EBPF_OBJECT: &[u8] = &[];",
            ),
            ("main.rs", "use crate::cli; use crate::dataplane;"),
            ("dataplane/attach.rs", "fn f() { load(crate::EBPF_OBJECT) }"),
            ("cli.rs", "use crate::*;"),
        ]);
        assert_eq!(
            l.violations,
            [
                "gateway/src/dataplane/attach.rs:1: dataplane (layer 7) imports crate::EBPF_OBJECT (layer 0) from above",
                "gateway/src/cli.rs:1: cli (layer 1) imports crate::* (layer 0) from above",
            ]
        );
    }

    #[test]
    fn unknown_module() {
        let l = layering(&[
            ("lib.rs", "pub mod exporter; pub mod registry;"),
            ("exporter.rs", "use crate::cli;"),
            ("registry/mod.rs", "use crate::store;"),
            ("cli.rs", "use crate::exporter::x;"),
        ]);
        assert_eq!(
            l.unlayered,
            [
                "gateway/src/exporter.rs: module exporter has no layer; add it to xtask/src/arch.rs",
                "gateway/src/registry/: module registry has no layer; add it to xtask/src/arch.rs",
            ]
        );
        // Their imports (and imports of them) cannot be judged until they have one.
        assert!(l.violations.is_empty());
        // A module lib.rs declares counts even before its file exists (not
        // an item of the root), and so does one of the table.
        let l = layering(&[
            (
                "lib.rs",
                "pub mod cli;\n#[cfg(test)]\nmod check;\nmod inline { }\nfn f() { mod not_top {} }",
            ),
            (
                "cli.rs",
                "use crate::check::x;\nuse crate::inline::y;\nuse crate::session::z;",
            ),
        ]);
        assert_eq!(
            l.unlayered,
            [
                "gateway/src/lib.rs:3: module check has no layer; add it to xtask/src/arch.rs",
                "gateway/src/lib.rs:4: module inline has no layer; add it to xtask/src/arch.rs",
            ]
        );
        assert!(l.violations.is_empty(), "{:?}", l.violations);
    }

    #[test]
    fn unsafe_keyword_only_in_code() {
        let src = "// unsafe\n/* unsafe */\nlet s = \"unsafe\";\n#![forbid(unsafe_code)]\nlet r = r#unsafe;\nunsafe { f() }\nunsafe impl Send for X {}";
        assert_eq!(unsafe_lines(src), [6, 7]);
        assert!(unsafe_allowed("gateway/src/sys/bpf.rs"));
        assert!(unsafe_allowed("gateway/src/sys.rs"));
        assert!(!unsafe_allowed("gateway/src/dataplane/maps.rs"));
        assert!(unsafe_allowed("gmcrypt/src/arch/x86.rs"));
        assert!(!unsafe_allowed("gmcrypt/src/sm4/mod.rs"));
        assert!(!unsafe_allowed("gateway/src/system.rs"));
        assert!(!unsafe_allowed("gateway/src/stream/mod.rs"));
        assert!(unsafe_allowed("tests/src/bin/metrics_bench.rs"));
        assert!(!unsafe_allowed("tests/src/bin/bench.rs"));
    }

    #[test]
    fn forbid_unsafe_code_detection() {
        assert!(forbids_unsafe_code(
            "//! Doc.\n#![forbid(unsafe_code)]\nfn main() {}"
        ));
        assert!(forbids_unsafe_code("#![forbid(missing_docs, unsafe_code)]"));
        assert!(!forbids_unsafe_code("#![deny(unsafe_code)]"));
        assert!(!forbids_unsafe_code("// #![forbid(unsafe_code)]"));
        assert!(!forbids_unsafe_code(
            "#![forbid(missing_docs)] fn unsafe_code() {}"
        ));

        assert_eq!(
            cargo_lints("[lints.rust]\nunsafe_code = \"forbid\"\n", "lints"),
            (true, false)
        );
        assert_eq!(
            cargo_lints("[lints]\nrust = { unsafe_code = \"forbid\" }\n", "lints"),
            (true, false)
        );
        assert_eq!(
            cargo_lints(
                "[lints.rust]\nunsafe_code = { level = \"forbid\", priority = 1 }",
                "lints"
            ),
            (true, false)
        );
        assert_eq!(
            cargo_lints("[lints]\nworkspace = true\n", "lints"),
            (false, true)
        );
        assert_eq!(
            cargo_lints("[lints.rust]\nunsafe_code = \"deny\"\n", "lints"),
            (false, false)
        );
        assert_eq!(
            cargo_lints(
                "[workspace.lints.rust]\nunsafe_code = \"forbid\"\n",
                "workspace.lints"
            ),
            (true, false)
        );
        // Another table's key does not count.
        assert_eq!(
            cargo_lints("[dependencies]\nunsafe_code = \"forbid\"\n", "lints"),
            (false, false)
        );
    }
}
