//! Ollama's chat templates: Go `text/template` source translated to Jinja, so the one
//! Jinja renderer ([`crate::ChatTemplate`]) renders every model's template.
//!
//! Models pulled from an Ollama registry carry a TEMPLATE layer in Go's template syntax
//! (`{{ .System }}`, `{{ range .Messages }}{{ if eq .Role "user" }}...{{ end }}{{ end }}`).
//! [`prepare`] detects the syntax ([`is_go_template`]) and translates Go templates with
//! [`to_jinja`]; Jinja templates pass through unchanged.
//!
//! The translation follows Ollama's `template.Execute`:
//!
//! - When the template names `.Messages`, it is rendered once with `.System` (every
//!   system message, joined by blank lines), `.Messages` (consecutive messages of one role
//!   merged with a blank line between them), `.Tools` and an empty `.Response`.
//! - Otherwise (a "legacy" template of `.System`, `.Prompt` and `.Response`), it is
//!   rendered once per turn and the results concatenated; the last turn is rendered only
//!   up to and including its first `{{ .Response }}`, which leaves the prompt open for the
//!   answer. A template naming neither `.Messages` nor `.Response` gets `{{ .Response }}`
//!   appended, as Ollama does.
//!
//! Supported: text with `{{-`/`-}}` trimming, comments, `if`/`else if`/`else`, `range`
//! (with `$i, $x :=`, `else`, `break`, `continue`; maps in key order), `with`/`else with`,
//! variables (`$x := ...`, `$x = ...`, `$`), pipelines (`x | f`), parenthesized
//! pipelines with fields, and the functions `and or not eq ne lt le gt ge len index slice
//! print printf println json html urlquery currentDate`. Field names of Ollama's structs
//! are mapped to the JSON keys of the messages and tools (`.ToolCalls` → `tool_calls`,
//! `.Function.Arguments` → `function.arguments`). Printing a map or a list prints its
//! JSON, as Ollama's `Tool`, `ToolFunction` and argument types do. `define`, `template`,
//! `block` and other functions are refused with an error naming them.

use std::collections::BTreeSet;
use std::fmt::Write as _;

/// A Go template that cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Go template, line {line}: {message}")]
pub struct GoTemplateError {
    /// 1-based line of the action concerned.
    pub line: usize,
    /// What is wrong or unsupported.
    pub message: String,
    /// Valid Go that the translation does not take (`define`, a function Ollama has and
    /// the translation lacks, a bound of this crate), as opposed to a template Go's own
    /// parser refuses (a syntax error, an unknown function), which Ollama refuses when
    /// the model is created.
    pub unsupported: bool,
}

type Result<T> = std::result::Result<T, GoTemplateError>;

fn err<T>(line: usize, message: impl Into<String>) -> Result<T> {
    Err(GoTemplateError { line, message: message.into(), unsupported: false })
}

/// [`err`] for valid Go the translation does not take.
fn unsupported<T>(line: usize, message: impl Into<String>) -> Result<T> {
    Err(GoTemplateError { line, message: message.into(), unsupported: true })
}

/// The functions Go templates know: Go's built-ins and Ollama's own (`json`,
/// `currentDate`, `yesterdayDate`, `toTypeScriptType`). Any other is an error of Go's
/// parser; those of these the translation lacks are [`GoTemplateError::unsupported`].
const GO_FUNCTIONS: [&str; 25] = [
    "and",
    "call",
    "html",
    "index",
    "slice",
    "js",
    "len",
    "not",
    "or",
    "print",
    "printf",
    "println",
    "urlquery",
    "eq",
    "ge",
    "gt",
    "le",
    "lt",
    "ne",
    "json",
    "currentDate",
    "yesterdayDate",
    "toTypeScriptType",
    "template",
    "block",
];

/// Whether `src` is a Go template (Ollama's TEMPLATE syntax) rather than Jinja.
///
/// A `{%` block in the text between actions makes it Jinja. Otherwise it is Go when one
/// action reads as Go and never as Jinja ([`action_is_go`]): it starts with `.`, `$`, a
/// comment or a Go keyword (`if`, `range`, `with`, `end`, `else`, ...), it names a field
/// (`.Prompt`) or a variable (`$x`), or it juxtaposes a function and its arguments
/// (`printf "%s" x`), which Jinja's grammar has no reading for. Actions are scanned with
/// Go's quoting, so a `}}` or `{%` inside a string literal neither ends an action nor
/// counts as Jinja. Text without any action is Go too (Ollama renders it as is).
pub fn is_go_template(src: &str) -> bool {
    let bytes = src.as_bytes();
    let mut i = 0;
    let mut any_action = false;
    let mut go = false;
    while i < bytes.len() {
        match bytes.get(i..i + 2) {
            Some(b"{%") => return false,
            Some(b"{{") => {
                any_action = true;
                let body_start = i + 2;
                let body_end = action_end(bytes, body_start);
                go |= action_is_go(&src[body_start..body_end]);
                i = body_end + 2;
            }
            _ => i += 1,
        }
    }
    go || !any_action
}

/// The index just past the string or character literal that opens at `start` (a `"`,
/// `'` or `` ` ``), backslash escapes skipped except in raw strings; past the end when
/// it is not closed.
fn literal_end(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() && bytes[i] != quote {
        i += if bytes[i] == b'\\' && quote != b'`' { 2 } else { 1 };
    }
    i + 1
}

/// Where the action whose body starts at `from` ends (the index of its `}}`, or the end
/// of the source), skipping string and character literals.
fn action_end(bytes: &[u8], from: usize) -> usize {
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' | b'`' => i = literal_end(bytes, i),
            b'}' if bytes.get(i + 1) == Some(&b'}') => return i,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Whether one action's body (between `{{` and `}}`) can only be Go.
fn action_is_go(body: &str) -> bool {
    let body = body.strip_prefix('-').unwrap_or(body).trim();
    if body.starts_with('.') || body.starts_with('$') || body.starts_with("/*") {
        return true;
    }
    let word_len = body.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(body.len());
    let (first, after) = body.split_at(word_len);
    const GO_KEYWORDS: [&str; 10] =
        ["if", "range", "with", "end", "else", "template", "define", "block", "break", "continue"];
    if GO_KEYWORDS.contains(&first) && (after.is_empty() || after.starts_with(char::is_whitespace))
    {
        return true;
    }
    // A field (` .Name`, `(.Name`, a lone ` .`) or a variable anywhere outside literals.
    let b = body.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' | b'`' => {
                i = literal_end(b, i);
                continue;
            }
            b'$' => return true,
            b'.' if i > 0
                && matches!(b[i - 1], b' ' | b'\t' | b'\n' | b'(')
                && b.get(i + 1)
                    .is_none_or(|c| c.is_ascii_alphabetic() || matches!(c, b'_' | b' ' | b')')) =>
            {
                return true;
            }
            _ => {}
        }
        i += 1;
    }
    // A name followed by an operand with only blanks between (`printf "%s" x`, `len x`):
    // Jinja only puts an operator or a keyword there.
    const JINJA_WORDS: [&str; 9] = ["is", "in", "and", "or", "not", "if", "else", "true", "false"];
    if word_len == 0
        || first.starts_with(|c: char| c.is_ascii_digit())
        || JINJA_WORDS.contains(&first)
    {
        return false;
    }
    let rest = after.trim_start();
    if rest.len() == after.len() || rest.is_empty() {
        return false;
    }
    let next_len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
    if next_len > 0 {
        let next = &rest[..next_len];
        return !JINJA_WORDS.contains(&next)
            && next
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || c.is_ascii_digit());
    }
    rest.starts_with(['"', '`', '\''])
}

/// The largest template source accepted (Go or Jinja): real chat templates are a few KiB.
pub const MAX_TEMPLATE_BYTES: usize = 256 << 10;
/// The deepest nesting of `if`/`range`/`with`/`block`/`define` accepted; real templates
/// nest a handful of levels. Deeper ones are refused before the parser recurses.
pub const MAX_NESTING: usize = 64;
/// The deepest nesting of parentheses in one action.
pub const MAX_PARENS: usize = 32;

/// A template ready for the Jinja renderer: Go templates translated, Jinja as is. A
/// source over [`MAX_TEMPLATE_BYTES`] is refused.
pub fn prepare(src: &str) -> Result<String> {
    if src.len() > MAX_TEMPLATE_BYTES {
        return err(
            0,
            format!(
                "the template has {} bytes; at most {MAX_TEMPLATE_BYTES} are accepted",
                src.len()
            ),
        );
    }
    if is_go_template(src) { to_jinja(src) } else { Ok(src.to_string()) }
}

/// Refuses templates that nest deeper than [`MAX_NESTING`] blocks or [`MAX_PARENS`]
/// parentheses, before anything recurses over them.
fn check_nesting(items: &[Item]) -> Result<()> {
    let mut depth = 0usize;
    for item in items {
        let Item::Action { line, toks } = item else { continue };
        let mut parens = 0usize;
        for t in toks {
            match t.tok {
                Tok::LParen => {
                    parens += 1;
                    if parens > MAX_PARENS {
                        return unsupported(
                            *line,
                            format!("parentheses nest deeper than {MAX_PARENS}"),
                        );
                    }
                }
                Tok::RParen => parens = parens.saturating_sub(1),
                _ => {}
            }
        }
        match toks.first().map(|t| &t.tok) {
            Some(Tok::Ident(k))
                if matches!(k.as_str(), "if" | "range" | "with" | "block" | "define") =>
            {
                depth += 1;
                if depth > MAX_NESTING {
                    return unsupported(
                        *line,
                        format!("blocks nest deeper than {MAX_NESTING} levels"),
                    );
                }
            }
            Some(Tok::Ident(k)) if k == "end" => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Lexing

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Dot,
    Field(String),
    Var(String),
    Ident(String),
    Str(String),
    Num(String),
    LParen,
    RParen,
    Pipe,
    Declare,
    Assign,
    Comma,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    /// No white space between this token and the one before it.
    joined: bool,
}

enum Item {
    Text(String),
    Action { line: usize, toks: Vec<Token> },
}

fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Splits the source into text and actions, applying `{{-` / `-}}` trimming and dropping
/// comments.
fn lex(src: &str) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut pos = 0;
    let mut trim_next = false;
    // Lines are counted as the lexer moves on (counting from the start for every action
    // made a long template quadratic).
    let (mut line, mut counted) = (1, 0);
    while pos <= src.len() {
        let Some(rel) = src[pos..].find("{{") else {
            let mut t = &src[pos..];
            if trim_next {
                t = t.trim_start_matches(is_space);
            }
            if !t.is_empty() {
                items.push(Item::Text(t.to_string()));
            }
            break;
        };
        let open = pos + rel;
        let mut inner = open + 2;
        let bytes = src.as_bytes();
        let trim_left = bytes.get(inner) == Some(&b'-')
            && bytes.get(inner + 1).is_some_and(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
        if trim_left {
            inner += 1;
        }
        let mut text = &src[pos..open];
        if trim_next {
            text = text.trim_start_matches(is_space);
        }
        if trim_left {
            text = text.trim_end_matches(is_space);
        }
        if !text.is_empty() {
            items.push(Item::Text(text.to_string()));
        }
        line += src[counted..open].matches('\n').count();
        counted = open;
        let (toks, end, trim_right) = lex_action(src, inner, line)?;
        if let Some(toks) = toks {
            items.push(Item::Action { line, toks });
        }
        trim_next = trim_right;
        pos = end;
    }
    Ok(items)
}

/// Lexes one action from `start` (after `{{` and any `-`). Returns its tokens (`None` for
/// a comment), the position after `}}`, and whether it ends with `-}}`.
fn lex_action(src: &str, start: usize, line: usize) -> Result<(Option<Vec<Token>>, usize, bool)> {
    let s = &src[start..];
    // A comment: `/* ... */` right after the delimiter (and its trim marker).
    let lead = s.len() - s.trim_start_matches(is_space).len();
    if s[lead..].starts_with("/*") {
        let Some(close) = s[lead..].find("*/") else { return err(line, "unclosed comment") };
        let after = &s[lead + close + 2..];
        let ws = after.len() - after.trim_start_matches(is_space).len();
        let after2 = &after[ws..];
        if let Some(rest) = after2.strip_prefix("-}}") {
            return Ok((None, src.len() - rest.len(), true));
        }
        if let Some(rest) = after2.strip_prefix("}}") {
            return Ok((None, src.len() - rest.len(), false));
        }
        return err(line, "comment must be followed by }}");
    }
    let mut chars = Chars { iter: s.char_indices(), seen: Vec::new() };
    let mut toks = Vec::new();
    let mut i = 0;
    let mut joined = false;
    while let Some((off, c)) = chars.get(i) {
        let next = chars.get(i + 1).map(|x| x.1);
        if is_space(c) {
            // A run of white space at once (one char per byte: it is ASCII).
            let rest = &s[off..];
            let run = rest.len() - rest.trim_start_matches(is_space).len();
            // ` -}}` ends the action with trimming.
            if rest[run..].starts_with("-}}") {
                return Ok((Some(toks), start + off + run + 3, true));
            }
            joined = false;
            i += run;
            continue;
        }
        if c == '}' && next == Some('}') {
            return Ok((Some(toks), start + off + 2, false));
        }
        let push = |t: Tok, toks: &mut Vec<Token>| {
            toks.push(Token { tok: t, joined });
        };
        match c {
            '(' => {
                push(Tok::LParen, &mut toks);
                i += 1;
            }
            ')' => {
                push(Tok::RParen, &mut toks);
                i += 1;
            }
            '|' => {
                push(Tok::Pipe, &mut toks);
                i += 1;
            }
            ',' => {
                push(Tok::Comma, &mut toks);
                i += 1;
            }
            ':' if next == Some('=') => {
                push(Tok::Declare, &mut toks);
                i += 2;
            }
            '=' => {
                push(Tok::Assign, &mut toks);
                i += 1;
            }
            '"' => {
                let mut out = String::new();
                let mut j = i + 1;
                loop {
                    let Some((_, ch)) = chars.get(j) else {
                        return err(line, "unterminated string");
                    };
                    match ch {
                        '"' => break,
                        '\n' => return err(line, "newline in string"),
                        '\\' => {
                            let Some((_, e)) = chars.get(j + 1) else {
                                return err(line, "unterminated string");
                            };
                            j += 1;
                            match e {
                                'n' => out.push('\n'),
                                't' => out.push('\t'),
                                'r' => out.push('\r'),
                                '\\' => out.push('\\'),
                                '"' => out.push('"'),
                                '\'' => out.push('\''),
                                'a' => out.push('\u{7}'),
                                'b' => out.push('\u{8}'),
                                'f' => out.push('\u{c}'),
                                'v' => out.push('\u{b}'),
                                'x' | 'u' | 'U' => {
                                    let n = match e {
                                        'x' => 2,
                                        'u' => 4,
                                        _ => 8,
                                    };
                                    let hex: String = (j + 1..j + 1 + n)
                                        .map_while(|k| chars.get(k))
                                        .map(|x| x.1)
                                        .collect();
                                    let v = u32::from_str_radix(&hex, 16)
                                        .ok()
                                        .filter(|_| hex.len() == n)
                                        .and_then(char::from_u32);
                                    let Some(v) = v else {
                                        return err(line, format!("bad escape \\{e}{hex}"));
                                    };
                                    out.push(v);
                                    j += n;
                                }
                                other => return err(line, format!("unknown escape \\{other}")),
                            }
                        }
                        ch => out.push(ch),
                    }
                    j += 1;
                }
                push(Tok::Str(out), &mut toks);
                i = j + 1;
            }
            '`' => {
                let mut out = String::new();
                let mut j = i + 1;
                loop {
                    let Some((_, ch)) = chars.get(j) else {
                        return err(line, "unterminated raw string");
                    };
                    if ch == '`' {
                        break;
                    }
                    out.push(ch);
                    j += 1;
                }
                push(Tok::Str(out), &mut toks);
                i = j + 1;
            }
            '.' if next.is_some_and(|n| n.is_alphabetic() || n == '_') => {
                let (name, j) = scan_name(&mut chars, i + 1);
                push(Tok::Field(name), &mut toks);
                i = j;
            }
            '.' if !next.is_some_and(|n| n.is_ascii_digit()) => {
                push(Tok::Dot, &mut toks);
                i += 1;
            }
            '$' => {
                let (name, j) = scan_name(&mut chars, i + 1);
                // Go names may hold any Unicode letter, Jinja's only ASCII: spell the
                // others out (`$é` → `v__ue9`).
                let name = name
                    .chars()
                    .map(
                        |c| if c.is_ascii() { c.to_string() } else { format!("__u{:x}", c as u32) },
                    )
                    .collect();
                push(Tok::Var(name), &mut toks);
                i = j;
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let mut j = i;
                let mut num = String::new();
                while let Some((_, ch)) = chars.get(j) {
                    if ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-' | '+') {
                        // A sign only leads or follows an exponent.
                        if matches!(ch, '-' | '+') && j != i && !num.ends_with(['e', 'E', 'p', 'P'])
                        {
                            break;
                        }
                        num.push(ch);
                        j += 1;
                    } else {
                        break;
                    }
                }
                let clean = num.replace('_', "");
                let valid = clean.parse::<f64>().is_ok()
                    || clean.strip_prefix("0x").is_some_and(|h| i64::from_str_radix(h, 16).is_ok());
                if !valid {
                    return err(line, format!("bad number {num:?}"));
                }
                // A literal Jinja reads the same way: `+1` → `1`, `.5` → `0.5`, `0x1F` → `31`.
                let clean = if let Some(h) = clean.strip_prefix("0x") {
                    i64::from_str_radix(h, 16).unwrap_or(0).to_string()
                } else if let Ok(n) = clean.parse::<i64>() {
                    n.to_string()
                } else {
                    match clean.parse::<f64>() {
                        Ok(f) if f.is_finite() => format!("{f:?}"),
                        _ => return err(line, format!("number {num:?} out of range")),
                    }
                };
                push(Tok::Num(clean), &mut toks);
                i = j;
            }
            c if c.is_alphabetic() || c == '_' => {
                let (name, j) = scan_name(&mut chars, i);
                push(Tok::Ident(name), &mut toks);
                i = j;
            }
            other => return err(line, format!("unexpected character {other:?} in action")),
        }
        joined = true;
    }
    err(line, "unclosed action: missing }}")
}

/// The characters of an action, read from the source only as far as the lexer looks
/// (collecting the whole rest of the source for every action made lexing quadratic: a
/// 256 KiB template of small actions took minutes; found with the fuzz target).
struct Chars<'a> {
    iter: std::str::CharIndices<'a>,
    seen: Vec<(usize, char)>,
}

impl Chars<'_> {
    /// The `i`-th character and its byte offset.
    fn get(&mut self, i: usize) -> Option<(usize, char)> {
        while self.seen.len() <= i {
            let next = self.iter.next()?;
            self.seen.push(next);
        }
        Some(self.seen[i])
    }
}

/// The name (letters, digits, `_`) starting at `chars[start]`, and the index after it.
fn scan_name(chars: &mut Chars<'_>, start: usize) -> (String, usize) {
    let mut name = String::new();
    let mut end = start;
    while let Some((_, ch)) = chars.get(end) {
        if !(ch.is_alphanumeric() || ch == '_') {
            break;
        }
        name.push(ch);
        end += 1;
    }
    (name, end)
}

// ---------------------------------------------------------------------------------------
// Parsing

#[derive(Debug, Clone)]
enum Operand {
    /// `.` (with fields: `.A.B`).
    Dot(Vec<String>),
    /// `$x.A` (`$` alone has an empty name).
    Var(String, Vec<String>),
    /// `(pipeline).A`.
    Sub(Box<Pipe>, Vec<String>),
    /// A function name.
    Func(String),
    Str(String),
    Num(String),
    Bool(bool),
    Nil,
}

#[derive(Debug, Clone, Default)]
struct Pipe {
    decl: Vec<String>,
    assign: bool,
    cmds: Vec<Vec<Operand>>,
    line: usize,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipe),
    If { branches: Vec<(Pipe, Vec<Node>)>, else_: Vec<Node> },
    With { branches: Vec<(Pipe, Vec<Node>)>, else_: Vec<Node> },
    Range { pipe: Pipe, body: Vec<Node>, else_: Vec<Node> },
    Break,
    Continue,
}

struct Parser {
    items: Vec<Item>,
    pos: usize,
    /// `range` bodies the parser is inside (where `break` and `continue` may stand).
    ranges: usize,
}

/// How a list of nodes ended.
enum End {
    Eof,
    Close,
    Else { line: usize, rest: Vec<Token> },
}

impl Parser {
    /// A range's body and `else` branch, after its opening action.
    fn parse_range_rest(&mut self, line: usize) -> Result<(Vec<Node>, Vec<Node>)> {
        let (body, end) = self.parse_list(false)?;
        let else_ = match end {
            End::Eof => return err(line, "unclosed {{range}}"),
            End::Close => Vec::new(),
            End::Else { line, rest } => {
                if !rest.is_empty() {
                    return err(line, "range has only a plain {{else}}");
                }
                let (body, end) = self.parse_list(false)?;
                if !matches!(end, End::Close) {
                    return err(line, "{{else}} of range not closed");
                }
                body
            }
        };
        Ok((body, else_))
    }

    fn parse_list(&mut self, top: bool) -> Result<(Vec<Node>, End)> {
        let mut nodes = Vec::new();
        while self.pos < self.items.len() {
            let i = self.pos;
            self.pos += 1;
            let (line, toks) = match &self.items[i] {
                Item::Text(t) => {
                    nodes.push(Node::Text(t.clone()));
                    continue;
                }
                Item::Action { line, toks } => (*line, toks.clone()),
            };
            let kw = match toks.first().map(|t| &t.tok) {
                Some(Tok::Ident(k)) => k.as_str(),
                None => return err(line, "missing value for command"),
                _ => "",
            };
            match kw {
                "end" => {
                    if top {
                        return err(line, "unexpected {{end}}");
                    }
                    return Ok((nodes, End::Close));
                }
                "else" => {
                    if top {
                        return err(line, "unexpected {{else}}");
                    }
                    return Ok((nodes, End::Else { line, rest: toks[1..].to_vec() }));
                }
                "if" | "with" => {
                    let mut branches = Vec::new();
                    let mut pipe = parse_pipe(&toks[1..], line, true)?;
                    let mut else_ = Vec::new();
                    loop {
                        let (body, end) = self.parse_list(false)?;
                        branches.push((pipe, body));
                        match end {
                            End::Eof => return err(line, format!("unclosed {{{{{kw}}}}}")),
                            End::Close => break,
                            End::Else { line, rest } => {
                                if rest.first().is_some_and(|t| t.tok == Tok::Ident(kw.into())) {
                                    pipe = parse_pipe(&rest[1..], line, true)?;
                                    continue;
                                }
                                if !rest.is_empty() {
                                    return err(line, "unexpected tokens after else");
                                }
                                let (body, end) = self.parse_list(false)?;
                                if !matches!(end, End::Close) {
                                    return err(line, format!("{{{{else}}}} of {kw} not closed"));
                                }
                                else_ = body;
                                break;
                            }
                        }
                    }
                    nodes.push(if kw == "if" {
                        Node::If { branches, else_ }
                    } else {
                        Node::With { branches, else_ }
                    });
                }
                "range" => {
                    let pipe = parse_pipe(&toks[1..], line, true)?;
                    // Go counts the whole control, `else` included.
                    self.ranges += 1;
                    let parsed = self.parse_range_rest(line);
                    self.ranges -= 1;
                    let (body, else_) = parsed?;
                    nodes.push(Node::Range { pipe, body, else_ });
                }
                "break" | "continue" => {
                    // As Go's parser: only inside a range's body, and alone.
                    if self.ranges == 0 {
                        return err(line, format!("{{{{{kw}}}}} outside {{{{range}}}}"));
                    }
                    if toks.len() > 1 {
                        return err(line, format!("unexpected tokens after {{{{{kw}}}}}"));
                    }
                    nodes.push(if kw == "break" { Node::Break } else { Node::Continue });
                }
                "define" | "template" | "block" => {
                    return unsupported(line, format!("{{{{{kw}}}}} is not supported"));
                }
                _ => nodes.push(Node::Action(parse_pipe(&toks, line, false)?)),
            }
        }
        Ok((nodes, End::Eof))
    }
}

fn parse_pipe(toks: &[Token], line: usize, control: bool) -> Result<Pipe> {
    let mut pipe = Pipe { line, ..Default::default() };
    let mut rest = toks;
    // Declarations: `$x :=`, `$i, $x :=`, `$x =`.
    let decl_end = toks.iter().position(|t| matches!(t.tok, Tok::Declare | Tok::Assign));
    if let Some(d) = decl_end {
        let vars = &toks[..d];
        let names: Vec<String> = vars
            .iter()
            .filter(|t| t.tok != Tok::Comma)
            .map(|t| match &t.tok {
                Tok::Var(n) if !n.is_empty() => Ok(n.clone()),
                _ => err(line, "only variables can be declared"),
            })
            .collect::<Result<_>>()?;
        let ok_shape = match names.len() {
            1 => vars.len() == 1,
            2 => control && vars.len() == 3,
            _ => false,
        };
        if !ok_shape {
            return err(line, "bad variable declaration");
        }
        pipe.assign = toks[d].tok == Tok::Assign;
        pipe.decl = names;
        rest = &toks[d + 1..];
    }
    let (cmds, used) = parse_cmds(rest, line)?;
    if used != rest.len() {
        return err(line, "unexpected ) in action");
    }
    if cmds.is_empty() {
        return err(line, "missing value for command");
    }
    pipe.cmds = cmds;
    Ok(pipe)
}

/// Parses commands separated by `|` until the end or a `)`. Returns them and the number
/// of tokens consumed (not counting the `)`).
fn parse_cmds(toks: &[Token], line: usize) -> Result<(Vec<Vec<Operand>>, usize)> {
    let mut cmds = Vec::new();
    let mut cur: Vec<Operand> = Vec::new();
    let mut i = 0;
    let fields = |toks: &[Token], mut j: usize| {
        let mut f = Vec::new();
        while let Some(Token { tok: Tok::Field(n), joined: true }) = toks.get(j) {
            f.push(n.clone());
            j += 1;
        }
        (f, j)
    };
    while i < toks.len() {
        match &toks[i].tok {
            Tok::RParen => break,
            Tok::Pipe => {
                if cur.is_empty() {
                    return err(line, "missing command before |");
                }
                cmds.push(std::mem::take(&mut cur));
                i += 1;
            }
            Tok::Dot => {
                let (f, j) = fields(toks, i + 1);
                cur.push(Operand::Dot(f));
                i = j;
            }
            Tok::Field(n) => {
                let mut f = vec![n.clone()];
                let (more, j) = fields(toks, i + 1);
                f.extend(more);
                cur.push(Operand::Dot(f));
                i = j;
            }
            Tok::Var(n) => {
                let (f, j) = fields(toks, i + 1);
                cur.push(Operand::Var(n.clone(), f));
                i = j;
            }
            Tok::LParen => {
                let (inner, used) = parse_cmds(&toks[i + 1..], line)?;
                let close = i + 1 + used;
                if toks.get(close).map(|t| &t.tok) != Some(&Tok::RParen) {
                    return err(line, "unclosed (");
                }
                if inner.is_empty() {
                    return err(line, "empty ()");
                }
                let (f, j) = fields(toks, close + 1);
                cur.push(Operand::Sub(
                    Box::new(Pipe { cmds: inner, line, ..Default::default() }),
                    f,
                ));
                i = j;
            }
            Tok::Ident(n) => {
                cur.push(match n.as_str() {
                    "true" => Operand::Bool(true),
                    "false" => Operand::Bool(false),
                    "nil" => Operand::Nil,
                    _ => Operand::Func(n.clone()),
                });
                i += 1;
            }
            Tok::Str(s) => {
                cur.push(Operand::Str(s.clone()));
                i += 1;
            }
            Tok::Num(s) => {
                cur.push(Operand::Num(s.clone()));
                i += 1;
            }
            Tok::Declare | Tok::Assign | Tok::Comma => {
                return err(line, "unexpected := , or = in a pipeline");
            }
        }
    }
    if !cur.is_empty() {
        cmds.push(cur);
    } else if !cmds.is_empty() {
        return err(line, "missing command after |");
    }
    Ok((cmds, i))
}

// ---------------------------------------------------------------------------------------
// Analysis

fn pipe_idents(p: &Pipe, out: &mut BTreeSet<String>) {
    for c in &p.cmds {
        for o in c {
            match o {
                Operand::Dot(f) | Operand::Var(_, f) => out.extend(f.iter().cloned()),
                Operand::Sub(p, f) => {
                    pipe_idents(p, out);
                    out.extend(f.iter().cloned());
                }
                _ => {}
            }
        }
    }
}

/// Every field name the template uses (Ollama's `Vars`), and every variable assigned with
/// `=` somewhere.
fn analyze(nodes: &[Node], idents: &mut BTreeSet<String>, assigned: &mut BTreeSet<String>) {
    for n in nodes {
        match n {
            Node::Action(p) => {
                pipe_idents(p, idents);
                if p.assign {
                    assigned.extend(p.decl.iter().cloned());
                }
            }
            Node::If { branches, else_ } | Node::With { branches, else_ } => {
                for (p, body) in branches {
                    pipe_idents(p, idents);
                    analyze(body, idents, assigned);
                }
                analyze(else_, idents, assigned);
            }
            Node::Range { pipe, body, else_ } => {
                pipe_idents(pipe, idents);
                analyze(body, idents, assigned);
                analyze(else_, idents, assigned);
            }
            Node::Text(_) | Node::Break | Node::Continue => {}
        }
    }
}

fn pipe_has_response(p: &Pipe) -> bool {
    let mut s = BTreeSet::new();
    pipe_idents(p, &mut s);
    s.contains("Response")
}

/// Ollama's cut for the last turn of a legacy template: everything after the first action
/// that prints `.Response` is dropped (conditions are not looked at).
fn cut(nodes: &[Node], done: &mut bool) -> Vec<Node> {
    let mut out = Vec::new();
    for n in nodes {
        if *done {
            break;
        }
        match n {
            Node::Action(p) => {
                out.push(n.clone());
                if pipe_has_response(p) {
                    *done = true;
                }
            }
            Node::If { branches, else_ } | Node::With { branches, else_ } => {
                let mut nb = Vec::new();
                for (p, body) in branches {
                    let b = if *done { Vec::new() } else { cut(body, done) };
                    nb.push((p.clone(), b));
                }
                let e = if *done { Vec::new() } else { cut(else_, done) };
                out.push(if matches!(n, Node::If { .. }) {
                    Node::If { branches: nb, else_: e }
                } else {
                    Node::With { branches: nb, else_: e }
                });
            }
            Node::Range { pipe, body, else_ } => {
                let b = cut(body, done);
                let e = if *done { Vec::new() } else { cut(else_, done) };
                out.push(Node::Range { pipe: pipe.clone(), body: b, else_: e });
            }
            _ => out.push(n.clone()),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Emitting Jinja

/// A Jinja expression that prints `expr` as Go's `%v` would for text, numbers and
/// booleans (`true`, not Jinja's `True`).
fn go_text(expr: &str) -> String {
    format!("(\"true\" if ({expr}) is true else (\"false\" if ({expr}) is false else ({expr})))")
}

/// A Jinja string literal.
fn lit(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Go struct field names to the JSON keys of messages and tools: `ToolCalls` →
/// `tool_calls`, `ToolCallID` → `tool_call_id`. Names starting in lower case are map keys
/// and stay as they are.
fn json_key(field: &str) -> String {
    if !field.starts_with(|c: char| c.is_ascii_uppercase()) {
        return field.to_string();
    }
    let chars: Vec<char> = field.chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let boundary = prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(|p| p.is_ascii_uppercase())
                    && next.is_some_and(char::is_ascii_lowercase));
            if boundary {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `.` where a name is looked up.
#[derive(Clone)]
enum DotVal {
    /// The template's data: `.System` is the Jinja variable `System`.
    Root,
    /// A Jinja expression.
    Expr(String),
}

/// Root variables of the template's data.
const ROOT_VARS: &[&str] = &[
    "System",
    "Prompt",
    "Response",
    "Messages",
    "Tools",
    "Suffix",
    "Think",
    "IsThinkSet",
    "ThinkLevel",
];

/// Fields whose value is text; printed without the JSON check.
const TEXT_FIELDS: &[&str] =
    &["System", "Prompt", "Response", "Content", "Role", "Thinking", "Name", "ToolName"];

const PRINT_JSON: &str = "tojson(separators=[\",\", \":\"])";

struct Emitter {
    out: String,
    dots: Vec<DotVal>,
    counter: usize,
    /// Variables assigned with `=` somewhere: kept in a namespace so the assignment is
    /// seen outside loops.
    assigned: BTreeSet<String>,
    line: usize,
}

impl Emitter {
    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("__{prefix}{}", self.counter)
    }

    fn dot(&self) -> DotVal {
        self.dots.last().cloned().unwrap_or(DotVal::Root)
    }

    fn var_ref(&self, name: &str) -> String {
        if self.assigned.contains(name) { format!("__ns_v_{name}.v") } else { format!("v_{name}") }
    }

    fn root_value() -> String {
        let parts: Vec<String> = ROOT_VARS.iter().map(|v| format!("{}: {v}", lit(v))).collect();
        format!("{{{}}}", parts.join(", "))
    }

    fn chain(&self, base: DotVal, fields: &[String]) -> String {
        let (mut expr, rest) = match base {
            DotVal::Root => match fields.split_first() {
                None => return Self::root_value(),
                Some((first, rest)) => {
                    let valid = first.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                    let name = if valid && ROOT_VARS.contains(&first.as_str()) {
                        first.clone()
                    } else {
                        // Unknown root fields are empty, as Ollama's data has no others.
                        "__undefined".to_string()
                    };
                    (name, rest)
                }
            },
            DotVal::Expr(e) => (e, fields),
        };
        for f in rest {
            expr = format!("{expr}[{}]", lit(&json_key(f)));
        }
        expr
    }

    fn operand(&self, o: &Operand) -> Result<String> {
        Ok(match o {
            Operand::Dot(f) => self.chain(self.dot(), f),
            Operand::Var(name, f) => {
                if name.is_empty() {
                    self.chain(DotVal::Root, f)
                } else {
                    self.chain(DotVal::Expr(self.var_ref(name)), f)
                }
            }
            Operand::Sub(p, f) => {
                let inner = self.pipe_expr(p)?;
                self.chain(DotVal::Expr(format!("({inner})")), f)
            }
            Operand::Func(name) => self.call(name, &[])?,
            Operand::Str(s) => lit(s),
            Operand::Num(n) => n.clone(),
            Operand::Bool(b) => b.to_string(),
            Operand::Nil => "none".to_string(),
        })
    }

    fn pipe_expr(&self, p: &Pipe) -> Result<String> {
        let mut prev: Option<String> = None;
        for cmd in &p.cmds {
            let expr = match cmd.first() {
                Some(Operand::Func(name)) => {
                    let mut args: Vec<String> =
                        cmd[1..].iter().map(|o| self.operand(o)).collect::<Result<_>>()?;
                    if let Some(p) = prev.take() {
                        args.push(p);
                    }
                    self.call(name, &args)?
                }
                Some(o) => {
                    if cmd.len() > 1 || prev.is_some() {
                        return err(self.line, "can't give arguments to a non-function");
                    }
                    self.operand(o)?
                }
                None => return err(self.line, "empty command"),
            };
            prev = Some(expr);
        }
        match prev {
            Some(e) => Ok(e),
            None => err(self.line, "empty pipeline"),
        }
    }

    fn call(&self, name: &str, args: &[String]) -> Result<String> {
        let need = |n: usize| -> Result<()> {
            if args.len() < n {
                return err(self.line, format!("{name} needs at least {n} argument(s)"));
            }
            Ok(())
        };
        let exact = |n: usize| -> Result<()> {
            if args.len() != n {
                return err(self.line, format!("{name} takes {n} argument(s)"));
            }
            Ok(())
        };
        Ok(match name {
            "and" | "or" => {
                need(1)?;
                format!("({})", args.join(&format!(" {name} ")))
            }
            "not" => {
                exact(1)?;
                format!("(not {})", args[0])
            }
            "eq" => {
                need(2)?;
                let alts: Vec<String> =
                    args[1..].iter().map(|b| format!("{} == {b}", args[0])).collect();
                format!("({})", alts.join(" or "))
            }
            "ne" | "lt" | "le" | "gt" | "ge" => {
                exact(2)?;
                let op = match name {
                    "ne" => "!=",
                    "lt" => "<",
                    "le" => "<=",
                    "gt" => ">",
                    _ => ">=",
                };
                format!("({} {op} {})", args[0], args[1])
            }
            "len" => {
                exact(1)?;
                format!("({}|length)", args[0])
            }
            "index" => {
                need(1)?;
                let mut e = format!("({})", args[0]);
                for a in &args[1..] {
                    e = format!("{e}[{a}]");
                }
                e
            }
            "slice" => match args.len() {
                1 => args[0].clone(),
                2 => format!("({})[{}:]", args[0], args[1]),
                3 => format!("({})[{}:{}]", args[0], args[1], args[2]),
                _ => return unsupported(self.line, "slice with three indices is not supported"),
            },
            "print" | "println" => {
                // Go's Sprint puts a space between operands when neither is a string;
                // Sprintln between all of them, and a newline after.
                let mut out = Vec::new();
                for (k, a) in args.iter().enumerate() {
                    if k > 0 {
                        out.push(if name == "println" {
                            "\" \"".to_string()
                        } else {
                            let b = &args[k - 1];
                            format!(
                                "(\" \" if (({b}) is not string and ({a}) is not string) else \"\")"
                            )
                        });
                    }
                    out.push(go_text(a));
                }
                if name == "println" {
                    out.push("\"\\n\"".into());
                }
                if out.is_empty() { "\"\"".into() } else { format!("({})", out.join(" ~ ")) }
            }
            "printf" => {
                need(1)?;
                self.printf(&args[0], &args[1..])?
            }
            "json" => {
                exact(1)?;
                format!("({}|{PRINT_JSON})", args[0])
            }
            "html" => {
                exact(1)?;
                format!("({}|escape)", args[0])
            }
            "urlquery" => {
                exact(1)?;
                format!("({}|urlencode)", args[0])
            }
            "currentDate" => {
                exact(0)?;
                "strftime_now(\"%Y-%m-%d\")".into()
            }
            other if GO_FUNCTIONS.contains(&other) => {
                return unsupported(self.line, format!("function {other:?} is not supported"));
            }
            other => return err(self.line, format!("function {other:?} not defined")),
        })
    }

    fn printf(&self, format: &str, args: &[String]) -> Result<String> {
        // The format must be a literal: "..." as emitted by `lit`.
        let Some(fmt) = format.strip_prefix('"').and_then(|f| f.strip_suffix('"')) else {
            return unsupported(self.line, "printf needs a literal format string");
        };
        let fmt = fmt.replace("\\n", "\n").replace("\\t", "\t").replace("\\\"", "\"");
        let fmt = fmt.replace("\\\\", "\\");
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut it = fmt.chars().peekable();
        let mut next_arg = args.iter();
        while let Some(c) = it.next() {
            if c != '%' {
                text.push(c);
                continue;
            }
            match it.next() {
                Some('%') => text.push('%'),
                Some(v @ ('s' | 'v' | 'd' | 'q')) => {
                    if !text.is_empty() {
                        parts.push(lit(&std::mem::take(&mut text)));
                    }
                    let Some(a) = next_arg.next() else {
                        // Go prints the verb with MISSING and goes on.
                        text.push_str(&format!("%!{v}(MISSING)"));
                        continue;
                    };
                    parts.push(if v == 'q' { format!("({a}|{PRINT_JSON})") } else { go_text(a) });
                }
                other => {
                    return unsupported(
                        self.line,
                        format!("printf verb %{} is not supported", other.unwrap_or(' ')),
                    );
                }
            }
        }
        // Go reports arguments the format did not use: `%!(EXTRA string=x, int=1)`.
        let extra: Vec<String> = next_arg
            .map(|a| {
                format!(
                    "((\"string\" if ({a}) is string else (\"bool\" if ({a}) is boolean else \
                     (\"int\" if ({a}) is integer else (\"float64\" if ({a}) is float else \
                     \"interface {{}}\")))) ~ \"=\" ~ {})",
                    go_text(a)
                )
            })
            .collect();
        if !extra.is_empty() {
            text.push_str("%!(EXTRA ");
            parts.push(lit(&std::mem::take(&mut text)));
            parts.push(extra.join(" ~ \", \" ~ "));
            text.push(')');
        }
        if !text.is_empty() {
            parts.push(lit(&text));
        }
        if parts.is_empty() {
            return Ok("\"\"".into());
        }
        Ok(format!("({})", parts.join(" ~ ")))
    }

    /// Prints a value as Go would for Ollama's data: text as is, maps and lists as JSON,
    /// booleans as `true`/`false`, nil as nothing.
    fn print(&mut self, p: &Pipe) -> Result<()> {
        let expr = self.pipe_expr(p)?;
        let textual = p.cmds.len() == 1
            && p.cmds[0].len() == 1
            && match &p.cmds[0][0] {
                Operand::Str(_) | Operand::Num(_) => true,
                Operand::Dot(f) | Operand::Var(_, f) => {
                    f.last().is_some_and(|l| TEXT_FIELDS.contains(&l.as_str()))
                }
                _ => false,
            };
        // Functions that return text print as is; `eq`, `and`, `len`, `index` ... return
        // booleans, numbers or values, which print as Go prints them.
        let text_call = matches!(
            p.cmds.last().and_then(|c| c.first()),
            Some(Operand::Func(f)) if matches!(
                f.as_str(),
                "print" | "printf" | "println" | "json" | "html" | "urlquery" | "currentDate"
            )
        );
        if textual || text_call {
            let _ = write!(self.out, "{{{{ {expr} }}}}");
        } else {
            let _ = write!(
                self.out,
                "{{% set __p = {expr} %}}{{{{ (__p|{PRINT_JSON}) if (__p is mapping or (__p is \
                 sequence and __p is not string)) else (\"true\" if __p is true else (\"false\" \
                 if __p is false else (\"\" if __p is none else __p))) }}}}"
            );
        }
        Ok(())
    }

    fn declare(&mut self, name: &str, expr: &str, assign: bool) {
        if self.assigned.contains(name) {
            if assign {
                let _ = write!(self.out, "{{% set __ns_v_{name}.v = {expr} %}}");
            } else {
                let _ = write!(self.out, "{{% set __ns_v_{name} = namespace(v={expr}) %}}");
            }
        } else {
            let _ = write!(self.out, "{{% set v_{name} = {expr} %}}");
        }
    }

    fn nodes(&mut self, nodes: &[Node]) -> Result<()> {
        for n in nodes {
            self.node(n)?;
        }
        Ok(())
    }

    fn node(&mut self, n: &Node) -> Result<()> {
        match n {
            Node::Action(p) | Node::Range { pipe: p, .. } => self.line = p.line,
            Node::If { branches, .. } | Node::With { branches, .. } => {
                self.line = branches.first().map_or(0, |b| b.0.line);
            }
            _ => {}
        }
        match n {
            Node::Text(t) => {
                let _ = write!(self.out, "{{{{ {} }}}}", lit(t));
            }
            Node::Action(p) => {
                if p.decl.is_empty() {
                    self.print(p)?;
                } else {
                    let expr = self.pipe_expr(p)?;
                    self.declare(&p.decl[0], &expr, p.assign);
                }
            }
            Node::If { branches, else_ } => {
                for (i, (p, body)) in branches.iter().enumerate() {
                    let cond = self.cond(p)?;
                    let kw = if i == 0 { "if" } else { "elif" };
                    let _ = write!(self.out, "{{% {kw} {cond} %}}");
                    self.nodes(body)?;
                }
                if !else_.is_empty() {
                    self.out.push_str("{% else %}");
                    self.nodes(else_)?;
                }
                self.out.push_str("{% endif %}");
            }
            Node::With { branches, else_ } => {
                let mut opened = 0;
                for (i, (p, body)) in branches.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str("{% else %}");
                    }
                    let v = self.fresh("w");
                    let expr = self.cond(p)?;
                    let _ = write!(self.out, "{{% set {v} = {expr} %}}{{% if {v} %}}");
                    opened += 1;
                    self.dots.push(DotVal::Expr(v));
                    let r = self.nodes(body);
                    self.dots.pop();
                    r?;
                }
                if !else_.is_empty() {
                    self.out.push_str("{% else %}");
                    self.nodes(else_)?;
                }
                for _ in 0..opened {
                    self.out.push_str("{% endif %}");
                }
            }
            Node::Range { pipe, body, else_ } => {
                let src = self.fresh("src");
                let it = self.fresh("it");
                let d = self.fresh("d");
                let inner = Pipe { cmds: pipe.cmds.clone(), line: pipe.line, ..Default::default() };
                let expr = self.pipe_expr(&inner)?;
                let _ = write!(
                    self.out,
                    "{{% set {src} = {expr} %}}{{% for {it} in ({src}|dictsort if {src} is \
                     mapping else ({src} if {src} else [])) %}}{{% set {d} = ({it}[1] if {src} \
                     is mapping else {it}) %}}"
                );
                match pipe.decl.as_slice() {
                    [] => {}
                    [x] => self.declare(x, &d, false),
                    [i, x] => {
                        let key = format!("({it}[0] if {src} is mapping else loop.index0)");
                        self.declare(i, &key, false);
                        self.declare(x, &d, false);
                    }
                    _ => return err(self.line, "bad range declaration"),
                }
                self.dots.push(DotVal::Expr(d));
                let r = self.nodes(body);
                self.dots.pop();
                r?;
                if !else_.is_empty() {
                    self.out.push_str("{% else %}");
                    self.nodes(else_)?;
                }
                self.out.push_str("{% endfor %}");
            }
            Node::Break => self.out.push_str("{% break %}"),
            Node::Continue => self.out.push_str("{% continue %}"),
        }
        Ok(())
    }

    /// The condition of an `if`/`with` (a declaration in it is made first).
    fn cond(&mut self, p: &Pipe) -> Result<String> {
        self.line = p.line;
        let inner = Pipe { cmds: p.cmds.clone(), line: p.line, ..Default::default() };
        let expr = self.pipe_expr(&inner)?;
        if let Some(name) = p.decl.first() {
            self.declare(name, &expr, p.assign);
            return Ok(self.var_ref(name));
        }
        Ok(expr)
    }
}

/// Builds Ollama's collated messages (`__msgs`) and system text (`__system`) from the
/// Jinja context's `messages`.
const COLLATE: &str = concat!(
    "{%- set __ns = namespace(msgs=[], sys=[], cur=none) -%}",
    "{%- for __m in messages -%}",
    "{%- set __c = (__m.content if __m.content is string else ",
    "(__m.content|tojson if __m.content else \"\")) -%}",
    "{%- if __m.role == \"system\" %}{% set __ns.sys = __ns.sys + [__c] %}{% endif -%}",
    "{%- if __ns.cur is not none and __ns.cur.role == __m.role -%}",
    "{%- set __ns.cur = {\"role\": __ns.cur.role, \"content\": __ns.cur.content ~ \"\\n\\n\" ~ __c, ",
    "\"thinking\": __ns.cur.thinking, \"images\": __ns.cur.images, \"tool_calls\": __ns.cur.tool_calls, ",
    "\"tool_name\": __ns.cur.tool_name, \"tool_call_id\": __ns.cur.tool_call_id} -%}",
    "{%- else -%}",
    "{%- if __ns.cur is not none %}{% set __ns.msgs = __ns.msgs + [__ns.cur] %}{% endif -%}",
    "{%- set __ns.cur = {\"role\": __m.role, \"content\": __c, \"thinking\": __m.thinking or \"\", ",
    "\"images\": __m.images or [], \"tool_calls\": __m.tool_calls or [], ",
    "\"tool_name\": __m.tool_name or __m.name or \"\", \"tool_call_id\": __m.tool_call_id or \"\"} -%}",
    "{%- endif -%}",
    "{%- endfor -%}",
    "{%- if __ns.cur is not none %}{% set __ns.msgs = __ns.msgs + [__ns.cur] %}{% endif -%}",
    "{%- set __msgs = __ns.msgs -%}",
    "{%- set __system = __ns.sys|join(\"\\n\\n\") -%}",
    "{%- set Tools = tools if tools else [] -%}",
    "{%- set Think = (enable_thinking is defined and enable_thinking) -%}",
    "{%- set IsThinkSet = enable_thinking is defined -%}",
    "{%- set ThinkLevel = reasoning_effort if reasoning_effort is defined else \"\" -%}",
    "{%- set Suffix = \"\" -%}",
);

/// Translates a Go template (Ollama's TEMPLATE) into a Jinja chat template with the same
/// output for the conversations Ollama renders (see the module docs).
pub fn to_jinja(src: &str) -> Result<String> {
    let items = lex(src)?;
    check_nesting(&items)?;
    let mut parser = Parser { items, pos: 0, ranges: 0 };
    let (mut nodes, _) = parser.parse_list(true)?;
    let mut idents = BTreeSet::new();
    let mut assigned = BTreeSet::new();
    analyze(&nodes, &mut idents, &mut assigned);
    let messages_mode = idents.contains("Messages");
    if !messages_mode && !idents.contains("Response") {
        nodes.push(Node::Action(Pipe {
            cmds: vec![vec![Operand::Dot(vec!["Response".into()])]],
            ..Default::default()
        }));
    }
    let mut e = Emitter { out: String::new(), dots: Vec::new(), counter: 0, assigned, line: 0 };
    e.out.push_str(COLLATE);
    if messages_mode {
        e.out.push_str(
            "{%- set System = __system -%}{%- set Messages = __msgs -%}\
             {%- set Prompt = \"\" -%}{%- set Response = \"\" -%}",
        );
        e.nodes(&nodes)?;
        return Ok(e.out);
    }
    // Legacy: one render per turn, the last one cut after `.Response`.
    let mut done = false;
    let last = cut(&nodes, &mut done);
    e.out.push_str("{%- set Messages = [] -%}{% macro __turn(System, Prompt, Response) %}");
    e.nodes(&nodes)?;
    e.out.push_str("{% endmacro %}{% macro __last(System, Prompt, Response) %}");
    e.nodes(&last)?;
    e.out.push_str(concat!(
        "{% endmacro %}",
        "{%- set __t = namespace(system=\"\", prompt=\"\", response=\"\") -%}",
        "{%- for __m in __msgs -%}",
        "{%- if __m.role == \"system\" -%}",
        "{%- if __t.prompt or __t.response -%}",
        "{{ __turn(__t.system, __t.prompt, __t.response) }}",
        "{%- set __t.system = \"\" %}{% set __t.prompt = \"\" %}{% set __t.response = \"\" -%}",
        "{%- endif -%}",
        "{%- set __t.system = __m.content -%}",
        "{%- elif __m.role == \"user\" -%}",
        "{%- if __t.response -%}",
        "{{ __turn(__t.system, __t.prompt, __t.response) }}",
        "{%- set __t.system = \"\" %}{% set __t.prompt = \"\" %}{% set __t.response = \"\" -%}",
        "{%- endif -%}",
        "{%- set __t.prompt = __m.content -%}",
        "{%- elif __m.role == \"assistant\" -%}",
        "{%- set __t.response = __m.content -%}",
        "{%- endif -%}",
        "{%- endfor -%}",
        "{{ __last(__t.system, __t.prompt, __t.response) }}",
    ));
    Ok(e.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::{ChatInput, ChatMessage, ChatTemplate};
    use serde_json::{Value, json};

    fn msg(role: &str, content: &str) -> ChatMessage {
        ChatMessage::new(role, content)
    }

    fn render_with(go: &str, messages: &[ChatMessage], tools: Option<&[Value]>) -> String {
        let jinja = to_jinja(go).unwrap_or_else(|e| panic!("translate: {e}"));
        let t = ChatTemplate::new(jinja.clone()).unwrap_or_else(|e| panic!("{e}\n{jinja}"));
        let input = ChatInput {
            messages,
            tools,
            add_generation_prompt: true,
            bos_token: "<s>",
            eos_token: "</s>",
            ..Default::default()
        };
        t.render(&input).unwrap_or_else(|e| panic!("render: {e}\n{jinja}"))
    }

    fn render(go: &str, messages: &[(&str, &str)]) -> String {
        let m: Vec<ChatMessage> = messages.iter().map(|(r, c)| msg(r, c)).collect();
        render_with(go, &m, None)
    }

    /// What the fuzz target's strict mode found: Go refuses `break`/`continue` outside a
    /// range, and signed or dotted numbers and a bare `println` must give Jinja that parses.
    #[test]
    fn strict_go_rules_and_literals_that_jinja_reads() {
        for (src, want) in [
            ("{{ break }}", "outside {{range}}"),
            ("{{ if true }}{{ continue }}{{ end }}", "outside {{range}}"),
            ("{{ range .Messages }}{{ break 1 }}{{ end }}", "unexpected tokens after"),
            ("{{ 1e999 }}", "out of range"),
        ] {
            let e = to_jinja(src).unwrap_err().to_string();
            assert!(e.contains(want), "{src}: {e}");
        }
        let chat = [("user", "a"), ("assistant", "b")];
        assert_eq!(render("{{ range .Messages }}{{ .Content }}{{ break }}{{ end }}", &chat), "a");
        assert_eq!(render("{{ range .Messages }}{{ continue }}{{ else }}{{ end }}x", &chat), "x");
        assert_eq!(
            render("{{ +1 }} {{ .5 }} {{ -2 }} {{ 0x1F }} {{ 1_000 }}", &[]),
            "1 0.5 -2 31 1000"
        );
        assert_eq!(render("{{ println }}{{ println 1 2 }}", &[]), "\n1 2\n");
        assert_eq!(render("{{ $é := 1 }}{{ $é }}", &[]), "1");
    }

    const PHI3: &str = "{{ if .System }}<|system|>\n{{ .System }}<|end|>\n{{ end }}{{ if .Prompt }}<|user|>\n{{ .Prompt }}<|end|>\n{{ end }}<|assistant|>\n{{ .Response }}<|end|>\n";

    const LLAMA3: &str = "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>";

    const GEMMA: &str = "<start_of_turn>user\n{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}<end_of_turn>\n<start_of_turn>model\n{{ .Response }}<end_of_turn>\n";

    const GEMMA2: &str = r#"{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"#;

    const LLAMA31: &str = r#"{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
Question: {{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"#;

    const MISTRAL: &str = r#"{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }} {{ .Response }}
{{- if .Response }}</s>
{{- end }}"#;

    const QWEN2: &str = r#"{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"#;

    fn weather_tool() -> Value {
        // Keys in sorted order, so the JSON is the same whatever map order is in force.
        json!({"function": {"description": "Get the weather", "name": "get_weather",
            "parameters": {"properties": {"city": {"type": "string"}}, "required": ["city"],
            "type": "object"}}, "type": "function"})
    }

    #[test]
    fn detects_go_and_jinja() {
        for go in [PHI3, LLAMA3, GEMMA, GEMMA2, LLAMA31, MISTRAL, QWEN2, "plain text"] {
            assert!(is_go_template(go), "{go}");
        }
        for jinja in [
            "{% for m in messages %}{{ m.content }}{% endfor %}",
            "{{ messages[0]['content'] }}",
            crate::template::CHATML_TEMPLATE,
        ] {
            assert!(!is_go_template(jinja), "{jinja}");
        }
        assert_eq!(prepare("{{ messages[0].content }}").unwrap(), "{{ messages[0].content }}");
    }

    /// Found by an outside sweep: Go templates whose actions all start with a function, or
    /// that hold `{%` or `}}` inside a string, were read as Jinja (and rendered wrong);
    /// Jinja that juxtaposes nothing stays Jinja.
    #[test]
    fn detection_reads_functions_strings_and_fields() {
        for go in [
            r#"{{ printf "%s" .Prompt }}"#,
            r#"{{ json .Tools }}"#,
            r#"{{- printf "<%s>" "x" }}"#,
            r#"{{ if eq .Prompt "{%" }}a{{ end }}"#,
            r#"{{ "}} {% x" }}{{ .Prompt }}"#,
            r#"{{ len (index .Messages 0).Content }}"#,
            r#"{{ $last := 1 }}"#,
            r#"{{ not .Think }}"#,
            "{{ range .Messages }}{{ end }}",
            "{{end}}",
        ] {
            assert!(is_go_template(go), "{go}");
        }
        for jinja in [
            "{{ range(3)|join(',') }}",
            "{{ not x }}",
            "{{ x is defined }}",
            "{{ x if y else z }}",
            "{{ 'a' 'b' }}",
            "{{ raise_exception('no') }}",
            "{{ x ~ y }}",
            "{{ foo (bar) }}",
            "{{ bos_token }}{% if x %}{{ '{{ .Prompt }}' }}{% endif %}",
            "{# c #}{%- set y = 1 -%}{{ y }}",
        ] {
            assert!(!is_go_template(jinja), "{jinja}");
        }
    }

    /// Go prints what functions return as Go would: booleans `true`/`false`, a printf
    /// with too few or too many arguments with Go's `%!v(MISSING)` and `%!(EXTRA ...)`.
    #[test]
    fn function_results_print_as_go_prints_them() {
        assert_eq!(
            render(
                "{{ true }} {{ eq 1 1 }} {{ not true }} {{ and true false }} {{ len .Prompt }} {{ .Prompt }}",
                &[("user", "hi")]
            ),
            "true true false false 2 hi"
        );
        assert_eq!(
            render(r#"{{ printf "%s %s %v" .Prompt }}"#, &[("user", "hi")]),
            "hi %!s(MISSING) %!v(MISSING)"
        );
        assert_eq!(
            render(r#"{{ printf "%s" .Prompt "extra" 3 true }}"#, &[("user", "hi")]),
            "hi%!(EXTRA string=extra, int=3, bool=true)"
        );
        assert_eq!(render(r#"{{ printf "%v" (eq 1 2) }}"#, &[("user", "hi")]), "false");
        // Sprint spaces operands when neither is a string; Sprintln always.
        assert_eq!(render(r#"{{ print "a" 1 2 "b" true }}"#, &[("user", "hi")]), "a1 2btrue");
        assert_eq!(render(r#"{{ println "a" 1 }}"#, &[("user", "hi")]), "a 1\n");
        assert_eq!(render(r#"{{ "{{" }}{{ .Prompt }}"#, &[("user", "hi")]), "{{hi");
    }

    #[test]
    fn phi3_legacy_turns_concatenate_and_the_last_is_cut_after_response() {
        let out = render(
            PHI3,
            &[("system", "S"), ("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")],
        );
        assert_eq!(
            out,
            "<|system|>\nS<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n\
             <|user|>\nBye<|end|>\n<|assistant|>\n"
        );
    }

    #[test]
    fn llama3_legacy() {
        let out = render(LLAMA3, &[("system", "You are terse."), ("user", "Hi")]);
        assert_eq!(
            out,
            "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        // Without a system message.
        assert_eq!(
            render(LLAMA3, &[("user", "Hi")]),
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn gemma_legacy_and_gemma2_messages() {
        assert_eq!(
            render(GEMMA, &[("system", "S"), ("user", "Hi")]),
            "<start_of_turn>user\nS Hi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            render(GEMMA2, &[("system", "S"), ("user", "Hi")]),
            "<start_of_turn>user\nS<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n\
             <start_of_turn>model\n"
        );
        assert_eq!(
            render(GEMMA2, &[("user", "A"), ("assistant", "B"), ("user", "C")]),
            "<start_of_turn>user\nA<end_of_turn>\n<start_of_turn>model\nB<end_of_turn>\n\
             <start_of_turn>user\nC<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn llama31_messages_with_and_without_tools() {
        assert_eq!(
            render(LLAMA31, &[("system", "S"), ("user", "Hi")]),
            "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let tools = [weather_tool()];
        let out = render_with(LLAMA31, &[msg("user", "Weather?")], Some(&tools));
        let tool_json = serde_json::to_string(&tools[0]).unwrap();
        let expected = format!(
            "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December \
             2023\n\nWhen you receive a tool call response, use the output to format an answer \
             to the orginal user question.\n\nYou are a helpful assistant with tool calling \
             capabilities.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nGiven the \
             following functions, please respond with a JSON for a function call with its \
             proper arguments that best answers the given prompt.\n\nRespond in the format \
             {{\"name\": function name, \"parameters\": dictionary of argument name and its \
             value}}. Do not use variables.\n\n{tool_json}\n\nQuestion: Weather?<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        assert_eq!(out, expected);
    }

    #[test]
    fn mistral_messages() {
        assert_eq!(render(MISTRAL, &[("user", "Hi")]), "[INST] Hi[/INST] ");
        assert_eq!(
            render(MISTRAL, &[("system", "S"), ("user", "A"), ("assistant", "B"), ("user", "C")]),
            "[INST] A[/INST] B</s>[INST] S\n\nC[/INST] "
        );
    }

    #[test]
    fn qwen2_messages_tools_and_tool_calls() {
        assert_eq!(
            render(QWEN2, &[("system", "S"), ("user", "Hi")]),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\n"
        );
        let tools = [weather_tool()];
        let out = render_with(QWEN2, &[msg("user", "Weather in Paris?")], Some(&tools));
        let f = serde_json::to_string(&tools[0]["function"]).unwrap();
        let expected = format!(
            "<|im_start|>system\n\n# Tools\n\nYou may call one or more functions to assist with \
             the user query.\n\nYou are provided with function signatures within <tools></tools> \
             XML tags:\n<tools>\n{{\"type\": \"function\", \"function\": {f}}}\n</tools>\n\nFor \
             each function call, return a json object with function name and arguments within \
             <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \
             \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n<|im_start|>user\n\
             Weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(out, expected);

        let mut call = msg("assistant", "");
        call.tool_calls = Some(vec![
            json!({"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}),
        ]);
        let out =
            render_with(QWEN2, &[msg("user", "Weather in Paris?"), call, msg("tool", "22C")], None);
        assert_eq!(
            out,
            "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<tool_call>\n\
             {\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}\n</tool_call>\
             <|im_end|>\n<|im_start|>user\n<tool_response>\n22C\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn consecutive_messages_of_one_role_are_merged_and_systems_joined() {
        let t = "{{ .System }}|{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}";
        assert_eq!(
            render(t, &[("system", "a"), ("system", "b"), ("user", "x"), ("user", "y")]),
            "a\n\nb|system=a\n\nb;user=x\n\ny;"
        );
    }

    #[test]
    fn template_without_response_gets_it_appended() {
        // Ollama appends {{ .Response }}: every turn is System+Prompt+Response.
        let t = "{{ .Prompt }}:";
        assert_eq!(render(t, &[("user", "a"), ("assistant", "b"), ("user", "c")]), "a:bc:");
    }

    #[test]
    fn variables_with_else_printf_json_index_comments() {
        let t = r#"{{- /* a comment */ -}}
{{- $n := 0 }}{{ $lastUser := -1 }}
{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lastUser = $i }}{{ end }}{{ end -}}
last={{ $lastUser }} n={{ len .Messages }}
{{ with index .Messages 0 }}first={{ .Content | printf "%q" }}{{ else }}none{{ end }}
{{ with .Tools }}tools{{ else with .System }}sys={{ . }}{{ else }}nothing{{ end }}
{{ json (slice .Messages 1) }} {{ print "a" 1 }} {{ if not .Tools }}no tools{{ end }}
{{ range .Messages }}{{ if eq .Role "assistant" }}{{ break }}{{ end }}{{ .Content }}{{ end }}"#;
        let out =
            render(t, &[("system", "S"), ("user", "u\"1"), ("assistant", "a"), ("user", "u2")]);
        assert_eq!(
            out,
            "last=3 n=4\nfirst=\"S\"\nsys=S\n\
             [{\"role\":\"user\",\"content\":\"u\\\"1\",\"thinking\":\"\",\"images\":[],\"tool_calls\":[],\"tool_name\":\"\",\"tool_call_id\":\"\"},\
             {\"role\":\"assistant\",\"content\":\"a\",\"thinking\":\"\",\"images\":[],\"tool_calls\":[],\"tool_name\":\"\",\"tool_call_id\":\"\"},\
             {\"role\":\"user\",\"content\":\"u2\",\"thinking\":\"\",\"images\":[],\"tool_calls\":[],\"tool_name\":\"\",\"tool_call_id\":\"\"}] a1 no tools\nSu\"1"
        );
    }

    #[test]
    fn maps_range_in_key_order() {
        let tools = [weather_tool()];
        let t = r#"{{ range .Tools }}{{ range $k, $v := .Function.Parameters.Properties }}{{ $k }}:{{ $v.type }}{{ end }}{{ end }}"#;
        assert_eq!(render_with(t, &[msg("user", "x")], Some(&tools)), "city:string");
    }

    #[test]
    fn unsupported_and_broken_templates_are_refused_with_a_line() {
        for (t, needle) in [
            ("a\n{{ template \"x\" }}", "line 2"),
            ("{{ if .System }}x", "unclosed"),
            ("{{ end }}", "unexpected"),
            ("{{ call .X }}", "not supported"),
            ("{{ .System", "unclosed action"),
            ("{{ \"abc }}", "unterminated"),
        ] {
            let e = to_jinja(t).unwrap_err().to_string();
            assert!(e.contains(needle), "{t:?}: {e}");
        }
    }

    const QWEN3: &str = r#"{{- $lastUserIdx := -1 -}}
{{- range $idx, $msg := .Messages -}}
{{- if eq $msg.Role "user" }}{{ $lastUserIdx = $idx }}{{ end -}}
{{- end }}
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}
{{ .System }}
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}
{{- if and $.IsThinkSet (eq $i $lastUserIdx) }}
   {{- if $.Think -}}
      {{- " "}}/think
   {{- else -}}
      {{- " "}}/no_think
   {{- end -}}
{{- end }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if (and $.IsThinkSet (and .Thinking (or $last (gt $i $lastUserIdx)))) -}}
<think>{{ .Thinking }}</think>
{{ end -}}
{{ if .Content }}{{ .Content }}
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) -}}
<think>

</think>

{{ end -}}
{{ end }}
{{- end }}"#;

    #[test]
    fn qwen3_thinking_switches_and_outer_variable_assignment() {
        assert_eq!(
            render(QWEN3, &[("user", "Hi")]),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let jinja = to_jinja(QWEN3).unwrap();
        let t = ChatTemplate::new(jinja).unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("enable_thinking".into(), json!(false));
        let msgs = [msg("user", "A"), msg("assistant", "B"), msg("user", "C")];
        let out = t
            .render(&ChatInput {
                messages: &msgs,
                add_generation_prompt: true,
                extra: Some(&extra),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nA<|im_end|>\n<|im_start|>assistant\nB<|im_end|>\n\
             <|im_start|>user\nC /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
    }

    #[test]
    fn think_level_reads_reasoning_effort() {
        let go = "{{ if .ThinkLevel }}Reasoning: {{ .ThinkLevel }}\n{{ end }}{{ .Prompt }}";
        assert_eq!(render(go, &[("user", "Hi")]), "Hi");
        let t = ChatTemplate::new(to_jinja(go).unwrap()).unwrap();
        let mut extra = serde_json::Map::new();
        extra.insert("reasoning_effort".into(), json!("high"));
        let msgs = [msg("user", "Hi")];
        let out = t
            .render(&ChatInput {
                messages: &msgs,
                add_generation_prompt: true,
                extra: Some(&extra),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(out, "Reasoning: high\nHi");
    }

    #[test]
    fn hostile_nesting_and_size_are_refused() {
        // The attack as sent: 20,000 nested blocks are refused (by size, here) ...
        let deep = format!("{}x{}", "{{if .System}}".repeat(20_000), "{{end}}".repeat(20_000));
        assert!(prepare(&deep).is_err());
        // ... and so are 2,000, by depth, before the parser recurses.
        let deep = format!("{}x{}", "{{if .System}}".repeat(2_000), "{{end}}".repeat(2_000));
        let e = prepare(&deep).unwrap_err().to_string();
        assert!(e.contains("nest deeper"), "{e}");
        let parens =
            format!("{{{{ .Prompt }}}}{{{{ {}.System{} }}}}", "(".repeat(1000), ")".repeat(1000));
        let e = prepare(&parens).unwrap_err().to_string();
        assert!(e.contains("parentheses"), "{e}");
        let big = "{{ .Prompt }}".to_string() + &"x".repeat(MAX_TEMPLATE_BYTES);
        assert!(prepare(&big).unwrap_err().to_string().contains("bytes"));
        let ok = format!("{}x{}", "{{if .System}}".repeat(10), "{{end}}".repeat(10));
        assert!(prepare(&ok).is_ok());
    }

    /// Found with the fuzz target (fuzz/regressions/gotemplate/): the lexer collected the
    /// whole rest of the source for every action, and looked at the rest of a run of
    /// blanks for every blank, so templates well within MAX_TEMPLATE_BYTES took minutes.
    #[test]
    fn long_templates_lex_in_linear_time() {
        let t0 = std::time::Instant::now();
        let many = "{{ .Prompt }}".repeat(MAX_TEMPLATE_BYTES / 14);
        let jinja = to_jinja(&many).unwrap();
        assert!(jinja.matches("Prompt").count() >= MAX_TEMPLATE_BYTES / 14);
        let blanks = format!("{{{{{}.Prompt -}}}}x", " ".repeat(MAX_TEMPLATE_BYTES - 20));
        assert_eq!(render(&blanks, &[("user", "Hi")]), "Hix");
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "{:?}", t0.elapsed());
    }

    #[test]
    fn json_keys() {
        assert_eq!(json_key("ToolCalls"), "tool_calls");
        assert_eq!(json_key("ToolCallID"), "tool_call_id");
        assert_eq!(json_key("Function"), "function");
        assert_eq!(json_key("city"), "city");
    }
}
