//! Lease paths and globs: how they are written, normalized, matched and intersected.
//!
//! A lease names a path or a glob *relative to the project root*, `/`-separated. Everything here is
//! lexical: the filesystem is never consulted.
//!
//! # Normalization ([`normalize_lease_path`])
//!
//! - Empty segments and `.` segments are dropped, so `./src//a.rs` and `src/a.rs/` become
//!   `src/a.rs` (a trailing `/` carries no meaning).
//! - `..` is resolved lexically against the segment before it: `src/b/../c.rs` becomes
//!   `src/c.rs`. A `..` that would climb above the root (`../x`, `a/../../x`) is refused, and so
//!   is a `..` that follows a glob segment (`*/..`, `**/..`), whose meaning would depend on what
//!   the glob matched.
//! - Consecutive `**` segments collapse into one (`a/**/**/b` is `a/**/b`).
//! - Refused: an empty result (`""`, `.`, `a/..`; lease `**` to mean "everything"); absolute
//!   paths (a leading `/`); NUL bytes; backslashes (neither a separator nor an escape: refusing
//!   them avoids silently leasing the wrong file for a Windows-style `src\a.rs`); `**` inside a
//!   segment (`a**b`, `**.rs`); unterminated or reversed classes (`[ab`, `[z-a]`); inputs longer
//!   than [`MAX_LEASE_PATH_LEN`] bytes or with a segment longer than [`MAX_SEGMENT_LEN`] bytes;
//!   segments that match no file name at all (`[.]` could only match `.`).
//! - Everything else is literal, including spaces, `{`, `}`, `]` and `!` outside a class. Brace
//!   alternation (`*.{rs,toml}`) is *not* supported: `{rs,toml}` is literal text.
//!
//! # Glob syntax (within one segment unless noted)
//!
//! - `*` matches any run of characters, possibly empty, never `/`.
//! - `?` matches exactly one character, never `/`.
//! - `**` as a whole segment matches zero or more whole segments.
//! - `[abc]`, `[a-z]`, `[!a]` (also `[^a]`) match one character in / not in the class. A `]`
//!   right after `[` or `[!` is literal (`[]]`, `[!]]`), as is a `-` first or last. Inside a class
//!   `*`, `?` and `[` are literal, which is the only way to match them: `[*]` matches `*`.
//! - There is no dotfile rule: `*` and `?` match a leading `.` (`*` covers `.env`).
//!
//! # Coverage
//!
//! A file name is never empty, `.` or `..`. A lease *covers* a concrete path when the path *or one
//! of its ancestors* matches the pattern: leasing `src` covers `src/a.rs`, and `src/*` covers
//! `src/a/b.rs` because `src/a` matches. So a pattern `P` covers exactly what `P/**` matches.
//! Prefixes work on whole segments only: `src` does not cover `srcx/a`.
//!
//! [`matches()`] tests whether a lease covers a concrete path, and [`overlaps`] whether two leases
//! cover some common path: the emptiness test of the intersection of `a/**` and `b/**`, segment by
//! segment (a memoized recursion over positions in which `**` consumes zero or more segments),
//! where two single segments intersect when the product of their glob automata accepts a valid
//! file name. The test is exact for every supported pattern, character classes included.
//!
//! Because the rule is lexical, nothing is known to be a file rather than a directory.
//! Consequently `**/*.rs` overlaps every literal lease (`docs/readme.md/x.rs` would lie beneath
//! `docs/readme.md`), and `src/**/mod.rs` every literal lease under `src`.
//!
//! [`relativize`] turns a file path reported by a tool (absolute, or relative to the tool's working
//! directory) into a path relative to the project root, for [`matches()`].

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Component, Path};
use std::str::FromStr;

/// The longest lease path accepted, in bytes.
pub const MAX_LEASE_PATH_LEN: usize = 4096;

/// The longest segment accepted, in bytes (the usual file-name limit; it also bounds the cost of
/// intersecting two segment globs).
pub const MAX_SEGMENT_LEN: usize = 255;

/// The longest glob accepted, in bytes. Intersecting two globs costs up to the product of their
/// sizes, and grants run it under the store's single writer: a literal path may be long, a glob
/// may not.
pub const MAX_GLOB_LEN: usize = 512;

/// The most wildcards (`*`, `?`, `**`, classes) one glob may use, for the same reason.
pub const MAX_WILDCARDS: usize = 16;

/// Why a lease path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path {input:?} is empty")]
    Empty { input: String },
    #[error("path of {len} bytes is longer than the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    #[error("path {input:?} has a segment longer than {max} bytes")]
    SegmentTooLong { input: String, max: usize },
    #[error("glob of {len} bytes is longer than the limit of {max} bytes for globs")]
    GlobTooLong { len: usize, max: usize },
    #[error("glob {input:?} uses {count} wildcards; the limit is {max}")]
    TooManyWildcards {
        input: String,
        count: usize,
        max: usize,
    },
    #[error("path {input:?} contains a nul byte")]
    Nul { input: String },
    #[error("path {input:?} contains a backslash; use `/` to separate directories")]
    Backslash { input: String },
    #[error("path {input:?} is absolute; lease paths are relative to the project root")]
    Absolute { input: String },
    #[error("path {input:?} escapes the project root")]
    EscapesRoot { input: String },
    #[error("path {input:?} has `..` after a glob segment")]
    ParentAfterGlob { input: String },
    #[error("path {input:?} uses `**` inside a segment; `**` must be a whole segment")]
    DoubleStarInSegment { input: String },
    #[error("path {input:?} has an unterminated character class")]
    UnterminatedClass { input: String },
    #[error("path {input:?} has a reversed character range {start:?}-{end:?}")]
    InvalidRange {
        input: String,
        start: char,
        end: char,
    },
    #[error("path {input:?} can never match a file: segment {segment:?} matches no file name")]
    Unmatchable { input: String, segment: String },
}

/// A normalized lease path or glob.
///
/// Equality, ordering and hashing are those of the normalized text ([`LeasePattern::as_str`]).
/// It serializes as that text and deserializes through [`normalize_lease_path`].
#[derive(Debug, Clone)]
pub struct LeasePattern {
    text: String,
    /// Never empty; no two consecutive `AnyDepth`; every `Part` matches some file name.
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// `**`: zero or more whole segments.
    AnyDepth,
    /// One segment: a literal name or a glob over one file name.
    Part(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `?`
    AnyChar,
    /// `*` (never two in a row)
    Star,
    /// `[...]`
    Class(CharSet),
}

impl LeasePattern {
    /// The normalized text, e.g. `src/**/*.rs`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether any segment is a glob (uses `*`, `?`, `**` or a class).
    pub fn is_glob(&self) -> bool {
        self.segments.iter().any(Segment::is_glob)
    }

    /// The leading literal segments, `/`-joined (`src/core` for `src/core/**/*.rs`); empty when
    /// the first segment is a glob. Everything the pattern covers lies at or beneath it.
    pub fn literal_prefix(&self) -> &str {
        let literal = self
            .segments
            .iter()
            .take_while(|segment| !segment.is_glob())
            .count();
        if literal == self.segments.len() {
            return &self.text;
        }
        // Segments are separated by exactly one `/` in the normalized text.
        let end = self
            .text
            .match_indices('/')
            .nth(literal.wrapping_sub(1))
            .map_or(0, |(at, _)| at);
        if literal == 0 { "" } else { &self.text[..end] }
    }

    /// Whether the pattern can cover files anywhere in the tree (its first segment is a glob,
    /// as in `**`, `*` or `**/*.rs`).
    pub fn covers_whole_tree(&self) -> bool {
        self.segments.first().is_some_and(Segment::is_glob)
    }

    /// Same as [`matches()`].
    pub fn matches(&self, path: &str) -> bool {
        matches(self, path)
    }

    /// Same as [`overlaps()`].
    pub fn overlaps(&self, other: &LeasePattern) -> bool {
        overlaps(self, other)
    }
}

impl fmt::Display for LeasePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for LeasePattern {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq for LeasePattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for LeasePattern {}

impl Hash for LeasePattern {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for LeasePattern {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for LeasePattern {
    fn cmp(&self, other: &Self) -> Ordering {
        self.text.cmp(&other.text)
    }
}

impl FromStr for LeasePattern {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        normalize_lease_path(s)
    }
}

impl TryFrom<&str> for LeasePattern {
    type Error = PathError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        normalize_lease_path(s)
    }
}

impl serde::Serialize for LeasePattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for LeasePattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(deserializer)?;
        normalize_lease_path(&text).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for LeasePattern {
    fn schema_name() -> Cow<'static, str> {
        "LeasePattern".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "a path or glob relative to the project root, e.g. `src/a.rs`, `src` \
                            (covers everything beneath it) or `src/**/*.rs`; globs: `*`, `?`, \
                            `**` (whole segment), `[abc]`, `[a-z]`, `[!a]`"
        })
    }
}

/// Parses and normalizes a lease path or glob (see the [module documentation](self) for the rules).
pub fn normalize_lease_path(input: &str) -> Result<LeasePattern, PathError> {
    let owned = || input.to_owned();
    if input.len() > MAX_LEASE_PATH_LEN {
        return Err(PathError::TooLong {
            len: input.len(),
            max: MAX_LEASE_PATH_LEN,
        });
    }
    if input.contains('\0') {
        return Err(PathError::Nul { input: owned() });
    }
    if input.contains('\\') {
        return Err(PathError::Backslash { input: owned() });
    }
    if input.starts_with('/') {
        return Err(PathError::Absolute { input: owned() });
    }

    let mut parts: Vec<(&str, Segment)> = Vec::new();
    for raw in input.split('/') {
        match raw {
            "" | "." => {}
            ".." => match parts.last() {
                None => return Err(PathError::EscapesRoot { input: owned() }),
                Some((_, segment)) if segment.is_glob() => {
                    return Err(PathError::ParentAfterGlob { input: owned() });
                }
                Some(_) => {
                    parts.pop();
                }
            },
            _ => {
                if raw.len() > MAX_SEGMENT_LEN {
                    return Err(PathError::SegmentTooLong {
                        input: owned(),
                        max: MAX_SEGMENT_LEN,
                    });
                }
                let segment = parse_segment(raw, input)?;
                let repeated_any_depth = segment == Segment::AnyDepth
                    && matches!(parts.last(), Some((_, Segment::AnyDepth)));
                if !repeated_any_depth {
                    parts.push((raw, segment));
                }
            }
        }
    }
    if parts.is_empty() {
        return Err(PathError::Empty { input: owned() });
    }
    for (raw, segment) in &parts {
        if let Segment::Part(tokens) = segment
            && !segment_satisfiable(tokens)
        {
            return Err(PathError::Unmatchable {
                input: owned(),
                segment: (*raw).to_owned(),
            });
        }
    }

    let wildcards: usize = parts.iter().map(|(_, segment)| segment.wildcards()).sum();
    if wildcards > 0 && input.len() > MAX_GLOB_LEN {
        return Err(PathError::GlobTooLong {
            len: input.len(),
            max: MAX_GLOB_LEN,
        });
    }
    if wildcards > MAX_WILDCARDS {
        return Err(PathError::TooManyWildcards {
            input: owned(),
            count: wildcards,
            max: MAX_WILDCARDS,
        });
    }

    let text = parts
        .iter()
        .map(|(raw, _)| *raw)
        .collect::<Vec<_>>()
        .join("/");
    let segments = parts.into_iter().map(|(_, segment)| segment).collect();
    Ok(LeasePattern { text, segments })
}

/// Resolves `file_path` (absolute, or relative to `cwd`) lexically and returns it relative to
/// `root`, `/`-separated, or `None` when it lies outside the root, *is* the root, or is not valid
/// UTF-8. A relative `root` is taken relative to `cwd`. The filesystem is never consulted, so
/// symlinks are not followed; `..` removes the preceding component and stops at `/`.
pub fn relativize(root: &Path, cwd: &Path, file_path: &str) -> Option<String> {
    if file_path.is_empty() || file_path.contains('\0') {
        return None;
    }
    let file = Path::new(file_path);
    let file = if file.is_absolute() {
        file.to_path_buf()
    } else {
        cwd.join(file)
    };
    let root = if root.is_absolute() {
        root.to_path_buf()
    } else {
        cwd.join(root)
    };
    let file = lexical_components(&file);
    let root = lexical_components(&root);
    let rest = file.strip_prefix(root.as_slice())?;
    if rest.is_empty() {
        return None;
    }
    let mut names = Vec::with_capacity(rest.len());
    for component in rest {
        match component {
            Component::Normal(name) => names.push(name.to_str()?),
            _ => return None,
        }
    }
    Some(names.join("/"))
}

/// Where the agents' worktrees live, relative to the project root (`isolation = "worktree"`:
/// conclave-git's `AgentWorktrees` makes one folder per agent in it).
pub const WORKTREES_DIR: &str = ".conclave/worktrees";

/// The project-relative path of a file an agent names, whichever tree it works in: the one
/// mapping every way in (hooks, MCP tools, the API) uses, so that leases, `file.touched` and the
/// dashboard speak of the same file. `file_path` (absolute, or relative to `cwd`) is taken
/// relative to `root` as [`relativize`] does; a path inside an agent's worktree
/// (`.conclave/worktrees/<agent>/src/a.rs`) is that file of the project (`src/a.rs`). `None`
/// outside the project, and for the worktrees folder or a worktree's own root.
pub fn project_path(root: &Path, cwd: &Path, file_path: &str) -> Option<String> {
    let relative = relativize(root, cwd, file_path)?;
    match relative
        .strip_prefix(WORKTREES_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
    {
        Some(inside) => {
            let (_agent, path) = inside.split_once('/')?;
            (!path.is_empty()).then(|| path.to_string())
        }
        None if relative == WORKTREES_DIR => None,
        None => Some(relative),
    }
}

/// An absolute path an agent passed to a tool (`lock`, `unlock`, `done`'s files) as the
/// project-relative path [`project_path`] gives; a relative path, or one outside the project, is
/// returned as it is (relative paths are the project's already: an agent's worktree mirrors it).
pub fn agent_path_to_project(root: &Path, path: &str) -> String {
    if Path::new(path).is_absolute() {
        project_path(root, root, path).unwrap_or_else(|| path.to_string())
    } else {
        path.to_string()
    }
}

/// Whether the lease `p` covers the concrete relative path `path`: `path` or one of its ancestors
/// matches `p`. The path is normalized like a lease path (`./`, `//`, `..`, trailing `/`) but its
/// characters are all literal (`*` in it is just a `*`); an empty, absolute or escaping path, or
/// one with a NUL byte, is covered by nothing.
pub fn matches(p: &LeasePattern, path: &str) -> bool {
    let Some(names) = concrete_names(path) else {
        return false;
    };
    covers(&p.segments, &names)
}

/// Whether some concrete path is covered by both leases (see [`matches()`] for "covered").
///
/// Grants run this for every requested × nearby held pair, so the common answers come cheap:
/// two patterns without `**` are compared segment by segment in one pass (after a test of the
/// literal ends of every aligned segment pair, which rules most disjoint pairs out without a
/// product search), and nothing is allocated unless a `**` calls for the memoized search.
pub fn overlaps(a: &LeasePattern, b: &LeasePattern) -> bool {
    let (a, b) = (a.segments.as_slice(), b.segments.as_slice());
    let any_depth = |segments: &[Segment]| segments.contains(&Segment::AnyDepth);
    if !any_depth(a) && !any_depth(b) {
        // `P` covers `P/**`: without `**` the shorter pattern's segments meet the longer's
        // first ones, one to one, and the longer's other segments (each satisfiable) follow.
        // From the last aligned pair back: siblings share their leading directories and differ
        // in their names.
        let aligned = || a.iter().zip(b).rev();
        return aligned().all(|(x, y)| parts_ends_compatible(x, y))
            && aligned().all(|(x, y)| parts_intersect(x, y));
    }
    let mut memo = vec![None; (a.len() + 2) * (b.len() + 2)];
    intersect_at(a, b, 0, 0, &mut memo)
}

/// Segment `i` of `segments` followed by an implicit `**` (a pattern covers what lies beneath
/// it): `None` past that `**`.
fn covered_segment(segments: &[Segment], i: usize) -> Option<&Segment> {
    static ANY_DEPTH: Segment = Segment::AnyDepth;
    match i.cmp(&segments.len()) {
        Ordering::Less => segments.get(i),
        Ordering::Equal => Some(&ANY_DEPTH),
        Ordering::Greater => None,
    }
}

/// Whether two single segments (either may be `**`, which meets anything) share a file name.
fn parts_intersect(x: &Segment, y: &Segment) -> bool {
    match (x, y) {
        (Segment::Part(x), Segment::Part(y)) => tokens_intersect(x, y),
        _ => true,
    }
}

/// A necessary condition for [`parts_intersect`], in time linear in the literal ends (exact for
/// two literal names).
fn parts_ends_compatible(x: &Segment, y: &Segment) -> bool {
    match (x, y) {
        (Segment::Part(x), Segment::Part(y)) if is_literal(x) && is_literal(y) => x == y,
        (Segment::Part(x), Segment::Part(y)) => literal_ends_compatible(x, y),
        _ => true,
    }
}

/// Whether two segment globs of normalized patterns share a file name: a lone `*` meets every
/// segment (each matches some name), incompatible literal ends rule a pair out, and only then
/// does the product search run.
fn tokens_intersect(x: &[Token], y: &[Token]) -> bool {
    if x == [Token::Star] || y == [Token::Star] {
        return true;
    }
    literal_ends_compatible(x, y) && segments_intersect(x, y)
}

/// Whether the literal characters that open both globs agree, and those that close both: a name
/// matching `ab*` starts with `ab`, one matching `ac?` with `ac`, so they share none. Exact as a
/// refusal: `false` only when no name matches both.
fn literal_ends_compatible(x: &[Token], y: &[Token]) -> bool {
    let char_of = |token: &Token| match token {
        Token::Char(c) => Some(*c),
        _ => None,
    };
    let agree = |x: &mut dyn Iterator<Item = &Token>, y: &mut dyn Iterator<Item = &Token>| {
        x.map(char_of)
            .zip(y.map(char_of))
            .map_while(|(x, y)| x.zip(y))
            .all(|(x, y)| x == y)
    };
    agree(&mut x.iter(), &mut y.iter()) && agree(&mut x.iter().rev(), &mut y.iter().rev())
}

impl Segment {
    fn is_glob(&self) -> bool {
        match self {
            Segment::AnyDepth => true,
            Segment::Part(tokens) => !is_literal(tokens),
        }
    }

    fn wildcards(&self) -> usize {
        match self {
            Segment::AnyDepth => 1,
            Segment::Part(tokens) => tokens
                .iter()
                .filter(|token| !matches!(token, Token::Char(_)))
                .count(),
        }
    }
}

fn is_literal(tokens: &[Token]) -> bool {
    tokens.iter().all(|token| matches!(token, Token::Char(_)))
}

fn parse_segment(raw: &str, input: &str) -> Result<Segment, PathError> {
    if raw == "**" {
        return Ok(Segment::AnyDepth);
    }
    let chars: Vec<char> = raw.chars().collect();
    let mut tokens = Vec::with_capacity(chars.len());
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        i += 1;
        let token = match c {
            '*' => {
                if tokens.last() == Some(&Token::Star) {
                    return Err(PathError::DoubleStarInSegment {
                        input: input.to_owned(),
                    });
                }
                Token::Star
            }
            '?' => Token::AnyChar,
            '[' => {
                let (class, next) = parse_class(&chars, i, input)?;
                i = next;
                Token::Class(class)
            }
            c => Token::Char(c),
        };
        tokens.push(token);
    }
    Ok(Segment::Part(tokens))
}

/// Parses a class whose `[` was just before `chars[start]`; returns it and the index after `]`.
fn parse_class(chars: &[char], start: usize, input: &str) -> Result<(CharSet, usize), PathError> {
    let mut i = start;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(PathError::UnterminatedClass {
                input: input.to_owned(),
            });
        };
        if c == ']' && !first {
            return Ok((CharSet::new(ranges, negated), i + 1));
        }
        first = false;
        match (chars.get(i + 1), chars.get(i + 2)) {
            (Some('-'), Some(&end)) if end != ']' => {
                if end < c {
                    return Err(PathError::InvalidRange {
                        input: input.to_owned(),
                        start: c,
                        end,
                    });
                }
                ranges.push((u32::from(c), u32::from(end)));
                i += 3;
            }
            _ => {
                ranges.push((u32::from(c), u32::from(c)));
                i += 1;
            }
        }
    }
}

/// The names of a concrete relative path, normalized lexically; `None` if it is not one.
fn concrete_names(path: &str) -> Option<Vec<&str>> {
    if path.contains('\0') || path.starts_with('/') {
        return None;
    }
    let mut names = Vec::new();
    for name in path.split('/') {
        match name {
            "" | "." => {}
            ".." => {
                names.pop()?;
            }
            _ => names.push(name),
        }
    }
    (!names.is_empty()).then_some(names)
}

fn lexical_components(path: &Path) -> Vec<Component<'_>> {
    let mut out: Vec<Component<'_>> = Vec::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                // `/..` is `/`.
                Some(Component::RootDir | Component::Prefix(_)) => {}
                // A relative path that starts by climbing keeps its leading `..`s.
                Some(Component::ParentDir | Component::CurDir) | None => out.push(component),
            },
            _ => out.push(component),
        }
    }
    out
}

/// Whether some prefix of `names` (the whole path included) matches `pattern`: a simulation of the
/// pattern's NFA over segments, whose positions are indices into `pattern` (`pattern.len()` means
/// "matched"). Linear memory, so a long tool-supplied path costs time only.
fn covers(pattern: &[Segment], names: &[&str]) -> bool {
    let mut current = vec![false; pattern.len() + 1];
    current[0] = true;
    skip_any_depth(pattern, &mut current);
    for name in names {
        if current[pattern.len()] {
            // A prefix matched; the rest of the path lies beneath it.
            return true;
        }
        let mut next = vec![false; pattern.len() + 1];
        for (position, segment) in pattern.iter().enumerate() {
            if !current[position] {
                continue;
            }
            match segment {
                Segment::AnyDepth => next[position] = true,
                Segment::Part(tokens) => {
                    if segment_matches(tokens, name) {
                        next[position + 1] = true;
                    }
                }
            }
        }
        skip_any_depth(pattern, &mut next);
        if !next.contains(&true) {
            return false;
        }
        current = next;
    }
    current[pattern.len()]
}

/// Closes a set of segment positions under "a `**` may match no segment".
fn skip_any_depth(pattern: &[Segment], positions: &mut [bool]) {
    for (position, segment) in pattern.iter().enumerate() {
        if positions[position] && *segment == Segment::AnyDepth {
            positions[position + 1] = true;
        }
    }
}

/// Whether some sequence of file names matches both `a[i..]/**` and `b[j..]/**` (see
/// [`covered_segment`]). Memoized over `(i, j)`.
fn intersect_at(
    a: &[Segment],
    b: &[Segment],
    i: usize,
    j: usize,
    memo: &mut [Option<bool>],
) -> bool {
    let key = i * (b.len() + 2) + j;
    if let Some(known) = memo[key] {
        return known;
    }
    let (a_end, b_end) = (a.len() + 1, b.len() + 1);
    let result = match (covered_segment(a, i), covered_segment(b, j)) {
        (None, None) => true,
        // `**` matches nothing more, or absorbs the other side's next segment (which, being a
        // satisfiable `Part` or a `**`, can always supply a name).
        (Some(Segment::AnyDepth), _) => {
            intersect_at(a, b, i + 1, j, memo) || (j < b_end && intersect_at(a, b, i, j + 1, memo))
        }
        (_, Some(Segment::AnyDepth)) => {
            intersect_at(a, b, i, j + 1, memo) || (i < a_end && intersect_at(a, b, i + 1, j, memo))
        }
        (Some(Segment::Part(x)), Some(Segment::Part(y))) => {
            tokens_intersect(x, y) && intersect_at(a, b, i + 1, j + 1, memo)
        }
        (None, Some(Segment::Part(_))) | (Some(Segment::Part(_)), None) => false,
    };
    memo[key] = Some(result);
    result
}

/// Whether the single-segment glob `tokens` matches the file name `name`.
fn segment_matches(tokens: &[Token], name: &str) -> bool {
    let mut current = vec![false; tokens.len() + 1];
    current[0] = true;
    skip_stars(tokens, &mut current);
    for c in name.chars() {
        let mut next = vec![false; tokens.len() + 1];
        for (position, token) in tokens.iter().enumerate() {
            if current[position] && token.accepts(c) {
                let target = if *token == Token::Star {
                    position
                } else {
                    position + 1
                };
                next[target] = true;
            }
        }
        skip_stars(tokens, &mut next);
        current = next;
    }
    current[tokens.len()]
}

/// Closes a set of NFA positions under "a `*` may match nothing".
fn skip_stars(tokens: &[Token], positions: &mut [bool]) {
    for (position, token) in tokens.iter().enumerate() {
        if positions[position] && *token == Token::Star {
            positions[position + 1] = true;
        }
    }
}

/// Whether the segment glob matches at least one file name.
fn segment_satisfiable(tokens: &[Token]) -> bool {
    segments_intersect(tokens, &[Token::Star])
}

/// What has been read so far of a candidate file name: `""`, `"."`, `".."` or anything else. Only
/// the last is a valid file name.
const SO_FAR_EMPTY: usize = 0;
const SO_FAR_OTHER: usize = 3;

fn after_dot(so_far: usize) -> usize {
    (so_far + 1).min(SO_FAR_OTHER)
}

/// Whether two single-segment globs both match some valid file name: a search of the product of
/// their NFAs (positions `p` in `a`, `q` in `b`), tracking whether the name read so far is still
/// `""`, `"."` or `".."`.
fn segments_intersect(a: &[Token], b: &[Token]) -> bool {
    if is_literal(a) && is_literal(b) {
        // (Normalized patterns never hold a literal `.` or `..` segment.)
        let dots = matches!(a, [Token::Char('.')] | [Token::Char('.'), Token::Char('.')]);
        return a == b && !dots;
    }
    let states = |p: usize, q: usize, so_far: usize| (p * (b.len() + 1) + q) * 4 + so_far;
    let mut seen = vec![false; (a.len() + 1) * (b.len() + 1) * 4];
    let mut stack = vec![(0, 0, SO_FAR_EMPTY)];
    while let Some((p, q, so_far)) = stack.pop() {
        let state = states(p, q, so_far);
        if seen[state] {
            continue;
        }
        seen[state] = true;
        if p == a.len() && q == b.len() && so_far == SO_FAR_OTHER {
            return true;
        }
        if a.get(p) == Some(&Token::Star) {
            stack.push((p + 1, q, so_far));
        }
        if b.get(q) == Some(&Token::Star) {
            stack.push((p, q + 1, so_far));
        }
        if let (Some(x), Some(y)) = (a.get(p), b.get(q)) {
            let (dot, other) = common_chars(x, y);
            let next_p = if *x == Token::Star { p } else { p + 1 };
            let next_q = if *y == Token::Star { q } else { q + 1 };
            if dot {
                stack.push((next_p, next_q, after_dot(so_far)));
            }
            if other {
                stack.push((next_p, next_q, SO_FAR_OTHER));
            }
        }
    }
    false
}

impl Token {
    /// Whether this token can consume `c` (a character of a file name).
    fn accepts(&self, c: char) -> bool {
        match self {
            Token::Char(expected) => *expected == c,
            Token::AnyChar | Token::Star => is_name_char(c),
            Token::Class(class) => is_name_char(c) && class.contains(c),
        }
    }
}

fn is_name_char(c: char) -> bool {
    c != '/' && c != '\0'
}

/// Which file-name characters both tokens accept: (`.`, some character other than `.`).
fn common_chars(x: &Token, y: &Token) -> (bool, bool) {
    match (x, y) {
        (Token::Char(c), other) | (other, Token::Char(c)) => {
            if other.accepts(*c) {
                (*c == '.', *c != '.')
            } else {
                (false, false)
            }
        }
        (Token::AnyChar | Token::Star, Token::AnyChar | Token::Star) => (true, true),
        (Token::Class(class), Token::AnyChar | Token::Star)
        | (Token::AnyChar | Token::Star, Token::Class(class)) => {
            (class.contains('.'), class.has_name_char_other_than_dot())
        }
        (Token::Class(x), Token::Class(y)) => {
            let both = x.intersect(y);
            (both.contains('.'), both.has_name_char_other_than_dot())
        }
    }
}

/// A set of code points as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CharSet {
    ranges: Vec<(u32, u32)>,
}

const MAX_CODE_POINT: u32 = 0x10_FFFF;

impl CharSet {
    fn new(mut ranges: Vec<(u32, u32)>, negated: bool) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        let set = CharSet { ranges: merged };
        if negated { set.complement() } else { set }
    }

    fn complement(&self) -> Self {
        let mut ranges = Vec::with_capacity(self.ranges.len() + 1);
        let mut next = 0;
        for &(lo, hi) in &self.ranges {
            if lo > next {
                ranges.push((next, lo - 1));
            }
            next = hi + 1;
        }
        if next <= MAX_CODE_POINT {
            ranges.push((next, MAX_CODE_POINT));
        }
        CharSet { ranges }
    }

    fn intersect(&self, other: &CharSet) -> CharSet {
        let mut ranges = Vec::new();
        let (mut i, mut j) = (0, 0);
        while let (Some(&(a_lo, a_hi)), Some(&(b_lo, b_hi))) =
            (self.ranges.get(i), other.ranges.get(j))
        {
            let (lo, hi) = (a_lo.max(b_lo), a_hi.min(b_hi));
            if lo <= hi {
                ranges.push((lo, hi));
            }
            if a_hi < b_hi {
                i += 1;
            } else {
                j += 1;
            }
        }
        CharSet { ranges }
    }

    fn contains(&self, c: char) -> bool {
        let c = u32::from(c);
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
    }

    /// Whether the set holds a character that may appear in a file name and is not `.`.
    fn has_name_char_other_than_dot(&self) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| first_name_char_other_than_dot(lo) <= hi)
    }
}

/// The least code point `>= from` that is a character other than NUL, `.` and `/`.
fn first_name_char_other_than_dot(from: u32) -> u32 {
    const DOT: u32 = '.' as u32;
    const SLASH: u32 = '/' as u32;
    let mut c = from;
    loop {
        c = match c {
            0 => 1,
            DOT | SLASH => SLASH + 1,
            0xD800..=0xDFFF => 0xE000,
            _ => return c,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pat(input: &str) -> LeasePattern {
        normalize_lease_path(input)
            .unwrap_or_else(|error| panic!("{input:?} should be accepted: {error}"))
    }

    fn check_overlap(a: &str, b: &str, expected: bool) {
        let (pa, pb) = (pat(a), pat(b));
        assert_eq!(overlaps(&pa, &pb), expected, "overlaps({a:?}, {b:?})");
        assert_eq!(overlaps(&pb, &pa), expected, "overlaps({b:?}, {a:?})");
    }

    fn check_match(pattern: &str, path: &str, expected: bool) {
        assert_eq!(
            matches(&pat(pattern), path),
            expected,
            "matches({pattern:?}, {path:?})"
        );
    }

    #[test]
    fn overlap_table() {
        let table: &[(&str, &str, bool)] = &[
            // literals and subtree coverage at component boundaries
            ("src/a.rs", "src/a.rs", true),
            ("src/a.rs", "src/b.rs", false),
            ("src", "src/a.rs", true),
            ("src", "src/deep/er/a.rs", true),
            ("src", "srcx/a", false),
            ("src", "srcx", false),
            ("src/a", "src/ab", false),
            ("src/a.rs", "src/a.rs/x", true),
            ("a/b", "a/c", false),
            ("a", "b", false),
            // `*` within one segment, never across `/`
            ("src/*.rs", "src/a.rs", true),
            ("src/*.rs", "src/.rs", true),
            ("src/*.rs", "src/a.txt", false),
            ("src/*.rs", "src/sub/a.rs", false),
            ("src/*.rs", "src", true),
            ("src/*.rs", "lib", false),
            ("src/*", "src/a/b.rs", true),
            ("*", "anything/at/all", true),
            ("*.rs", "*.txt", false),
            ("src/*.rs", "src/a*", true),
            ("a*", "*b", true),
            ("a*b", "*c*", true),
            ("a*b", "b*", false),
            ("*a*", "*b*", true),
            ("x*.rs", "y*", false),
            ("a/*/x", "a/*/y", false),
            ("a/*/x", "a/*/*/y", true),
            ("*/x", "a/y", false),
            ("*/x", "a/x/z", true),
            ("*", ".env", true),
            (".*", "*", true),
            // `**` at the start, middle and end
            ("**/*.rs", "src/a.rs", true),
            ("**/*.rs", "a.rs", true),
            // `docs/readme.md/x.rs` is beneath the literal: a lexical rule cannot know that
            // `readme.md` is a file, so a trailing `**/*.rs` overlaps every literal path.
            ("**/*.rs", "docs/readme.md", true),
            ("src/**/*.rs", "docs/readme.md", false),
            ("src/**/*.rs", "src/readme.md", true),
            ("**/*.rs", "docs", true),
            ("**/*.rs", "**/*.md", true), // x.rs/y.md: a directory named `x.rs`
            ("**/a.rs", "**/b.rs", true), // a.rs/b.rs
            ("src/**/mod.rs", "src/mod.rs", true),
            ("src/**/mod.rs", "src/a/b/mod.rs", true),
            ("src/**/mod.rs", "lib/mod.rs", false),
            ("src/**/mod.rs", "src/a/b/lib.rs", true), // src/a/b/lib.rs/mod.rs
            ("src/**/mod.rs", "src/*.rs/x", true),     // src/a.rs/x/mod.rs
            ("src/*/mod.rs", "src/a/b/lib.rs", false),
            ("src/**", "src", true),
            ("src/**", "src/a/b", true),
            ("src/**", "srcx", false),
            ("src/**", "lib/**", false),
            ("**", "anything", true),
            ("**", "**", true),
            ("a/**/b/**/c", "a/b/c", true),
            ("a/**/b/**/c", "a/c/b", true), // a/c/b/c
            ("a/**/b/**/c", "a/*/c", true), // a/b/c or a/x/c/b/c
            ("a/**/b/*", "a/?/c/d", true),  // a/x/c/d/b/y
            ("a/*/b/c", "a/?/c/**", false),
            ("a/**/b/c", "x/**", false),
            ("a/**/x", "a/**/y", true),
            ("**/a/**", "b/**/c", true),
            ("x/**/a", "y/**", false),
            // `?`
            ("?", "a", true),
            ("?", "ab", false),
            ("??", "ab", true),
            ("src/?.rs", "src/ab.rs", false),
            ("src/?.rs", "src/a.rs", true),
            ("?", "*", true),
            ("??", "?", false),
            ("a?", "?b", true),
            // classes (exact too)
            ("[abc].rs", "b.rs", true),
            ("[abc].rs", "d.rs", false),
            ("[a-c]", "[!a-c]", false),
            ("[a-c]", "[c-e]", true),
            ("[a-c]", "[d-f]", false),
            ("[!a]", "a", false),
            ("[!a]", "?", true),
            ("[!a]", "[!b]", true),
            ("[ab]", "[!a]", true),
            ("[ab]", "[!ab]", false),
            ("[*]", "*", true),
            ("[*]", "a", false),
            ("[]]", "]", true),
            ("[!]]", "]", false),
            ("x[0-9]*", "x*[a-z]", true),
            ("x[0-9]", "x[a-z]", false),
            // names are never `.` or `..`
            (".?", "?.", false),
            ("[.]?", "?[.]", false),
            ("?", "[.a]", true),
            (".*", "*.", true), // `...` or `.x.`
            ("[.]*", "*", true),
        ];
        for &(a, b, expected) in table {
            check_overlap(a, b, expected);
        }
    }

    #[test]
    fn match_table() {
        let table: &[(&str, &str, bool)] = &[
            ("src/a.rs", "src/a.rs", true),
            ("src/a.rs", "./src//a.rs", true),
            ("src/a.rs", "src/x/../a.rs", true),
            ("src/a.rs", "src/b.rs", false),
            ("src", "src/a.rs", true),
            ("src", "srcx/a.rs", false),
            ("src/a.rs", "src", false),
            ("src/*.rs", "src/a.rs", true),
            ("src/*.rs", "src/sub/a.rs", false),
            ("src/*", "src/sub/a.rs", true),
            ("**/*.rs", "a.rs", true),
            ("**/*.rs", "x/y/a.rs", true),
            ("**/*.rs", "x/y/a.txt", false),
            ("**/*.rs", "x/a.rs/inner", true),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b/c", true),
            ("a/**/b", "a/x/y/c", false),
            ("?.rs", "a.rs", true),
            ("?.rs", "ab.rs", false),
            ("[!a].rs", "a.rs", false),
            ("[!a].rs", "b.rs", true),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("{a,b}", "{a,b}", true),
            ("{a,b}", "a", false),
            // the path's characters are literal
            ("[*]", "*", true),
            ("*", "*", true),
            ("a", "*", false),
            // invalid concrete paths are covered by nothing
            ("**", "", false),
            ("**", "/etc/passwd", false),
            ("**", "../x", false),
            ("**", "a/../..", false),
            ("**", "a\0b", false),
            ("**", ".", false),
        ];
        for &(pattern, path, expected) in table {
            check_match(pattern, path, expected);
        }
    }

    #[test]
    fn normalization_accepts() {
        let table: &[(&str, &str, bool)] = &[
            ("src/a.rs", "src/a.rs", false),
            ("./src//b/../c.rs", "src/c.rs", false),
            ("docs/", "docs", false),
            ("docs//", "docs", false),
            ("a/./b/.", "a/b", false),
            ("a/b/..", "a", false),
            ("a/b/../../c", "c", false),
            ("src/**/*.rs", "src/**/*.rs", true),
            ("src/**/**/x", "src/**/x", true),
            ("**/**", "**", true),
            ("src/[!a]*.rs", "src/[!a]*.rs", true),
            ("[]]", "[]]", true),
            ("[!]-]", "[!]-]", true),
            ("[a-]", "[a-]", true),
            ("a?", "a?", true),
            ("src/*.{rs}", "src/*.{rs}", true),
            ("{a,b}", "{a,b}", false),
            ("my file.txt", "my file.txt", false),
            ("...", "...", false),
            (".env", ".env", false),
            ("a]b!", "a]b!", false),
            ("src/a/../*.rs", "src/*.rs", true),
        ];
        for &(input, normalized, glob) in table {
            let pattern = pat(input);
            assert_eq!(pattern.as_str(), normalized, "normalize({input:?})");
            assert_eq!(pattern.to_string(), normalized);
            assert_eq!(pattern.is_glob(), glob, "is_glob({input:?})");
            assert_eq!(pat(normalized), pattern, "normalizing is idempotent");
        }
    }

    #[test]
    fn normalization_refuses() {
        let long = "a/".repeat(MAX_LEASE_PATH_LEN);
        let long_name = format!("src/{}", "x".repeat(MAX_SEGMENT_LEN + 1));
        let table: &[(&str, &str)] = &[
            ("", "Empty"),
            (".", "Empty"),
            ("./", "Empty"),
            ("//", "Absolute"),
            ("a/..", "Empty"),
            ("/etc/passwd", "Absolute"),
            ("..", "EscapesRoot"),
            ("../x", "EscapesRoot"),
            ("a/../../x", "EscapesRoot"),
            ("./../x", "EscapesRoot"),
            ("a\0b", "Nul"),
            ("a\\b", "Backslash"),
            ("src\\a.rs", "Backslash"),
            ("a**b", "DoubleStarInSegment"),
            ("**.rs", "DoubleStarInSegment"),
            ("a/***", "DoubleStarInSegment"),
            ("[abc", "UnterminatedClass"),
            ("[]", "UnterminatedClass"),
            ("[!]", "UnterminatedClass"),
            ("a/[b/c]", "UnterminatedClass"),
            ("[z-a]", "InvalidRange"),
            ("*/../x", "ParentAfterGlob"),
            ("a/**/..", "ParentAfterGlob"),
            ("[.]", "Unmatchable"),
            ("a/[.][.]", "Unmatchable"),
            (&long, "TooLong"),
            (&long_name, "SegmentTooLong"),
        ];
        for (input, expected) in table {
            match normalize_lease_path(input) {
                Ok(pattern) => panic!("{input:?} should be refused, got {pattern:?}"),
                Err(error) => {
                    let debug = format!("{error:?}");
                    let variant = debug.split([' ', '{']).next().unwrap_or_default();
                    assert_eq!(variant, *expected, "{input:?} refused with {error:?}");
                }
            }
        }
    }

    #[test]
    fn error_messages_name_the_input() {
        let message = |input: &str| match normalize_lease_path(input) {
            Ok(pattern) => panic!("{input:?} should be refused, got {pattern:?}"),
            Err(error) => error.to_string(),
        };
        assert_eq!(message("../x"), r#"path "../x" escapes the project root"#);
        assert_eq!(
            message("/x"),
            r#"path "/x" is absolute; lease paths are relative to the project root"#
        );
        assert_eq!(message("./"), r#"path "./" is empty"#);
        assert_eq!(message("a\0"), r#"path "a\0" contains a nul byte"#);
        assert_eq!(
            message("[ab"),
            r#"path "[ab" has an unterminated character class"#
        );
        assert_eq!(
            message("x/a**"),
            r#"path "x/a**" uses `**` inside a segment; `**` must be a whole segment"#
        );
    }

    #[test]
    fn worktree_paths_map_to_the_project_file() {
        let root = Path::new("/p");
        let cases = [
            (
                "/p/.conclave/worktrees",
                "/p/.conclave/worktrees/alice/src/a.rs",
                Some("src/a.rs"),
            ),
            ("/p/.conclave/worktrees/alice", "src/a.rs", Some("src/a.rs")),
            ("/p/.conclave/worktrees/bob/sub", "../b.txt", Some("b.txt")),
            ("/p", "src/a.rs", Some("src/a.rs")),
            ("/p", "/p/.conclave/worktrees/alice", None),
            ("/p", "/p/.conclave/worktrees", None),
            (
                "/p",
                "/p/.conclave/agents/a/mcp.json",
                Some(".conclave/agents/a/mcp.json"),
            ),
            ("/p", "/elsewhere/a.rs", None),
        ];
        for (cwd, file, expected) in cases {
            assert_eq!(
                project_path(root, Path::new(cwd), file).as_deref(),
                expected,
                "project_path(/p, {cwd:?}, {file:?})"
            );
        }
        assert_eq!(
            agent_path_to_project(root, "/p/.conclave/worktrees/alice/src/*.rs"),
            "src/*.rs"
        );
        assert_eq!(agent_path_to_project(root, "src/a.rs"), "src/a.rs");
        assert_eq!(agent_path_to_project(root, "/etc/passwd"), "/etc/passwd");
    }

    #[test]
    fn relativize_table() {
        let root = Path::new("/p");
        let table: &[(&str, &str, Option<&str>)] = &[
            ("/p/src", "a.rs", Some("src/a.rs")),
            ("/p/src", "./a.rs", Some("src/a.rs")),
            ("/p/src", "../b.rs", Some("b.rs")),
            ("/p/src", "../../etc/passwd", None),
            ("/p/src", "/p/x/y", Some("x/y")),
            ("/p/src", "/p/./a/../b", Some("b")),
            ("/p/src", "/p", None),
            ("/p/src", "/p/", None),
            ("/p/src", "/px/a", None),
            ("/p/src", "/etc/../p/a", Some("a")),
            ("/p/src", "/../p/a", Some("a")),
            ("/q", "../p/a", Some("a")),
            ("/q", "a", None),
            ("/p", "a//b/", Some("a/b")),
            ("/p", "", None),
            ("/p", "a\\b", Some("a\\b")),
        ];
        for &(cwd, file, expected) in table {
            assert_eq!(
                relativize(root, Path::new(cwd), file).as_deref(),
                expected,
                "relativize(/p, {cwd:?}, {file:?})"
            );
        }
        // A relative root is relative to cwd.
        assert_eq!(
            relativize(Path::new("."), Path::new("/p"), "/p/a").as_deref(),
            Some("a")
        );
        assert_eq!(
            relativize(Path::new("proj"), Path::new("/w"), "proj/a").as_deref(),
            Some("a")
        );
    }

    /// Regression: a 4 KB `*/*/…` glob took ≈ 1.7 ms per overlap test under the writer lock.
    #[test]
    fn globs_are_capped_in_length_and_wildcards_but_literal_paths_are_not() {
        let long_literal = "a/".repeat(1000);
        assert!(normalize_lease_path(&long_literal).is_ok());
        let long_glob = format!("{}*", "a/".repeat(300));
        assert!(matches!(
            normalize_lease_path(&long_glob),
            Err(PathError::GlobTooLong { .. })
        ));
        let many = "*/".repeat(MAX_WILDCARDS + 1);
        assert!(matches!(
            normalize_lease_path(&many),
            Err(PathError::TooManyWildcards { count, .. }) if count == MAX_WILDCARDS + 1
        ));
        assert!(normalize_lease_path(&"*/".repeat(MAX_WILDCARDS)).is_ok());
        assert!(matches!(
            normalize_lease_path("a*?[bc]*"),
            Ok(pattern) if pattern.is_glob()
        ));
    }

    #[test]
    fn literal_prefixes_and_whole_tree_globs() {
        let table = [
            ("src/a.rs", "src/a.rs", false),
            ("src/core/**/*.rs", "src/core", false),
            ("src/*.rs", "src", false),
            ("**", "", true),
            ("*", "", true),
            ("**/*.rs", "", true),
            ("a/b/c/d?", "a/b/c", false),
        ];
        for (input, prefix, whole_tree) in table {
            let pattern = pat(input);
            assert_eq!(pattern.literal_prefix(), prefix, "prefix of {input}");
            assert_eq!(pattern.covers_whole_tree(), whole_tree, "{input}");
        }
    }

    #[test]
    fn serde_round_trip() {
        let pattern = pat("./src//**/*.rs");
        let json = serde_json::to_string(&pattern).expect("serializes");
        assert_eq!(json, r#""src/**/*.rs""#);
        let back: LeasePattern = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, pattern);
        assert!(serde_json::from_str::<LeasePattern>(r#""../x""#).is_err());
    }

    #[test]
    fn char_sets() {
        let set = CharSet::new(vec![(5, 9), (1, 3), (4, 4), (20, 30)], false);
        assert_eq!(set.ranges, vec![(1, 9), (20, 30)]);
        assert_eq!(
            set.complement().ranges,
            vec![(0, 0), (10, 19), (31, MAX_CODE_POINT)]
        );
        assert_eq!(set.complement().complement(), set);
        let other = CharSet::new(vec![(8, 25)], false);
        assert_eq!(set.intersect(&other).ranges, vec![(8, 9), (20, 25)]);
        let dots = CharSet::new(vec![(0x2E, 0x2F), (0, 0), (0xD800, 0xDFFF)], false);
        assert!(!dots.has_name_char_other_than_dot());
        assert!(dots.contains('.'));
        assert!(CharSet::new(vec![(0x2E, 0x30)], false).has_name_char_other_than_dot());
    }

    // ---- property tests ----

    /// Segments for random patterns, globs and literals mixed.
    const POOL: &[&str] = &[
        "a", "b", "ab", "a.rs", ".a", "*", "?", "**", "*.rs", "a*", "*b", "?a", "[ab]", "[!a]",
        ".*", "[a-c]*", "a*.rs", "b*.rs", "ab?",
    ];

    /// Names for random concrete paths.
    const NAMES: &[&str] = &["a", "b", "c", "ab", "a.rs", "b.rs", ".a", "*", "[ab]"];

    fn pattern_from(
        pool: &'static [&'static str],
        depth: usize,
    ) -> impl Strategy<Value = LeasePattern> {
        prop::collection::vec(prop::sample::select(pool), 1..=depth)
            .prop_map(|segments| pat(&segments.join("/")))
    }

    fn concrete_path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(NAMES), 1..=4).prop_map(|names| names.join("/"))
    }

    /// A literal lease on a concrete path (whose names may contain glob characters).
    fn literal(path: &str) -> LeasePattern {
        let segments = path
            .split('/')
            .map(|name| Segment::Part(name.chars().map(Token::Char).collect()))
            .collect();
        LeasePattern {
            text: path.to_owned(),
            segments,
        }
    }

    fn fixed_segments(pattern: &LeasePattern) -> usize {
        pattern
            .segments
            .iter()
            .filter(|segment| **segment != Segment::AnyDepth)
            .count()
    }

    /// Every string of `1..=max_len` symbols from `alphabet`, each joined with `separator`.
    fn all_words(alphabet: &[&str], max_len: usize, separator: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut layer = vec![String::new()];
        for _ in 0..max_len {
            layer = layer
                .iter()
                .flat_map(|prefix| {
                    alphabet.iter().map(move |symbol| {
                        if prefix.is_empty() {
                            (*symbol).to_owned()
                        } else {
                            format!("{prefix}{separator}{symbol}")
                        }
                    })
                })
                .collect();
            words.extend(layer.iter().cloned());
        }
        words
    }

    /// Segments of the brute-force patterns: each matches single-character names only, so names
    /// `a`, `b`, `c` are enough to witness any overlap.
    const BRUTE_POOL: &[&str] = &["a", "b", "*", "?", "**", "[ab]", "[!a]"];

    /// Tokens of the brute-force segment globs.
    const BRUTE_TOKENS: &[&str] = &["a", "b", ".", "*", "?", "[ab]", "[!a]", "[.b]"];

    fn segment_glob() -> impl Strategy<Value = (String, Vec<Token>)> {
        prop::collection::vec(prop::sample::select(BRUTE_TOKENS), 1..=3).prop_filter_map(
            "`**` is not a segment glob",
            |tokens| {
                let text = tokens.concat();
                match parse_segment(&text, &text) {
                    Ok(Segment::Part(tokens)) => Some((text, tokens)),
                    _ => None,
                }
            },
        )
    }

    fn fixed_tokens(tokens: &[Token]) -> usize {
        tokens.iter().filter(|token| **token != Token::Star).count()
    }

    proptest! {
        #[test]
        fn overlaps_is_symmetric(a in pattern_from(POOL, 4), b in pattern_from(POOL, 4)) {
            prop_assert_eq!(overlaps(&a, &b), overlaps(&b, &a), "{} vs {}", a, b);
        }

        #[test]
        fn the_one_pass_comparison_agrees_with_the_memoized_search(
            a in pattern_from(POOL, 5),
            b in pattern_from(POOL, 5),
        ) {
            let mut memo = vec![None; (a.segments.len() + 2) * (b.segments.len() + 2)];
            let searched = intersect_at(&a.segments, &b.segments, 0, 0, &mut memo);
            prop_assert_eq!(overlaps(&a, &b), searched, "{} vs {}", a, b);
        }

        #[test]
        fn overlaps_is_reflexive(a in pattern_from(POOL, 5)) {
            prop_assert!(overlaps(&a, &a), "{}", a);
        }

        #[test]
        fn normalizing_is_idempotent(a in pattern_from(POOL, 5)) {
            prop_assert_eq!(pat(a.as_str()), a);
        }

        #[test]
        fn a_match_is_an_overlap(g in pattern_from(POOL, 4), p in concrete_path()) {
            if matches(&g, &p) {
                prop_assert!(overlaps(&g, &literal(&p)), "{} matches {} but no overlap", g, p);
            }
        }

        #[test]
        fn literal_overlap_is_a_segment_prefix(p in concrete_path(), q in concrete_path()) {
            let (ps, qs): (Vec<&str>, Vec<&str>) = (p.split('/').collect(), q.split('/').collect());
            let prefix = ps.starts_with(&qs) || qs.starts_with(&ps);
            prop_assert_eq!(overlaps(&literal(&p), &literal(&q)), prefix, "{} vs {}", p, q);
            prop_assert_eq!(matches(&literal(&p), &q), qs.starts_with(&ps), "{} covers {}", p, q);
        }

        #[test]
        fn overlaps_agrees_with_brute_force(
            a in pattern_from(BRUTE_POOL, 3),
            b in pattern_from(BRUTE_POOL, 3),
        ) {
            // A shortest common path needs at most one name per non-`**` segment (a name absorbed
            // by `**` on both sides can be dropped), and at least one name.
            let depth = (fixed_segments(&a) + fixed_segments(&b)).max(1);
            let witness = all_words(&["a", "b", "c"], depth, "/")
                .into_iter()
                .find(|path| matches(&a, path) && matches(&b, path));
            prop_assert_eq!(overlaps(&a, &b), witness.is_some(), "{} vs {}: {:?}", a, b, witness);
        }

        #[test]
        fn segments_intersect_agrees_with_brute_force(
            (a_text, a) in segment_glob(),
            (b_text, b) in segment_glob(),
        ) {
            // A shortest common name needs at most one character per non-`*` token, plus one
            // (a `c` kept from the characters both `*`s absorb) to avoid `.` and `..`.
            let len = fixed_tokens(&a) + fixed_tokens(&b) + 1;
            let witness = all_words(&["a", "b", "c", "."], len, "")
                .into_iter()
                .filter(|name| name != "." && name != "..")
                .find(|name| segment_matches(&a, name) && segment_matches(&b, name));
            prop_assert_eq!(
                segments_intersect(&a, &b),
                witness.is_some(),
                "{} vs {}: {:?}", a_text, b_text, witness
            );
            // The shortcuts before the product search (a lone `*`, literal ends) never change
            // the answer for segments of normalized patterns (each matches some name), and
            // literal ends that disagree mean no common name.
            if segment_satisfiable(&a) && segment_satisfiable(&b) {
                prop_assert_eq!(tokens_intersect(&a, &b), witness.is_some(), "{} vs {}", a_text, b_text);
            }
            if !literal_ends_compatible(&a, &b) {
                prop_assert!(witness.is_none(), "{} vs {}: {:?}", a_text, b_text, witness);
            }
            let a_alone = all_words(&["a", "b", "c", "."], fixed_tokens(&a) + 1, "")
                .into_iter()
                .any(|name| name != "." && name != ".." && segment_matches(&a, &name));
            prop_assert_eq!(segment_satisfiable(&a), a_alone, "{}", a_text);
        }
    }

    /// Pieces of hostile input: parents, current dirs, separators, absolute roots, backslashes,
    /// NULs, home-relative names and wildcards, glued together at random.
    const SOUP: &[&str] = &[
        "a", "b", "..", ".", "/", "//", "\\", "~", "\0", "*", "**", "?", "[a]", "[!", "]", "é",
        " ", "C:",
    ];

    fn soup(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(SOUP), 0..=max).prop_map(|parts| parts.concat())
    }

    /// The names `input` resolves to when read lexically from the root, or `None` when it climbs
    /// above the root: the reference for what normalizing may return.
    fn resolve_lexically(input: &str) -> Option<Vec<&str>> {
        let mut names = Vec::new();
        for name in input.split('/') {
            match name {
                "" | "." => {}
                ".." => {
                    names.pop()?;
                }
                _ => names.push(name),
            }
        }
        Some(names)
    }

    proptest! {
        #[test]
        fn no_accepted_lease_path_leaves_the_root(input in soup(8)) {
            if let Ok(pattern) = normalize_lease_path(&input) {
                let text = pattern.as_str();
                prop_assert!(!text.starts_with('/'), "{:?} -> {:?}", input, text);
                prop_assert!(!text.contains('\\') && !text.contains('\0'), "{:?}", text);
                for name in text.split('/') {
                    prop_assert!(!matches!(name, "" | "." | ".."), "{:?} -> {:?}", input, text);
                }
                let resolved = resolve_lexically(&input);
                prop_assert!(resolved.is_some(), "{:?} climbs above the root yet gave {:?}", input, text);
                if !pattern.is_glob() {
                    prop_assert_eq!(resolved.map(|names| names.join("/")), Some(text.to_string()));
                }
                prop_assert!(text.len() <= MAX_LEASE_PATH_LEN);
                if pattern.is_glob() {
                    prop_assert!(input.len() <= MAX_GLOB_LEN);
                }
                prop_assert_eq!(pat(text), pattern.clone());
            }
        }

        #[test]
        fn nothing_is_covered_outside_the_root(g in pattern_from(POOL, 4), rest in concrete_path()) {
            // Even `**` covers no path that climbs out of the root or starts at `/`.
            let climb_out = "/..".repeat(rest.split('/').count() + 1);
            for escaping in [format!("../{rest}"), format!("/{rest}"), format!("{rest}{climb_out}")] {
                prop_assert!(!matches(&g, &escaping), "{} covers {}", g, escaping);
            }
        }

        #[test]
        fn relativized_hook_paths_stay_under_the_root(
            root in soup(4).prop_map(|s| format!("/p/{s}")),
            cwd in soup(6).prop_map(|s| format!("/{s}")),
            file in soup(8),
        ) {
            if let Some(relative) = relativize(Path::new(&root), Path::new(&cwd), &file) {
                prop_assert!(!relative.is_empty() && !relative.starts_with('/'), "{:?}", relative);
                for name in relative.split('/') {
                    prop_assert!(!matches!(name, "" | "." | ".."), "{:?}", relative);
                }
                // Joined back to the root, it is beneath the root.
                let joined_path = Path::new(&root).join(&relative);
                let joined = lexical_components(&joined_path);
                let root_parts = lexical_components(Path::new(&root));
                prop_assert!(joined.starts_with(&root_parts) && joined.len() > root_parts.len(),
                    "{:?} + {:?} leaves {:?}", root, relative, root);
            }
        }
    }
}
