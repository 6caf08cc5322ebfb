//! Structured output: a grammar-constrained sampler for JSON and JSON schemas.
//!
//! A schema (or `"json"` for any JSON object) compiles into a small grammar of nodes; a
//! nondeterministic pushdown matcher follows the bytes generated so far (a set of frame
//! stacks, one per live interpretation, so `anyOf` and enums with shared prefixes work).
//! Before each token is sampled, [`JsonConstraint::mask`] forbids every token whose bytes
//! cannot continue a valid document, walking the vocabulary in sorted order so tokens
//! that share a prefix share the work; end-of-generation tokens are allowed only when the
//! document is complete. It works on token bytes alone, so it serves every backend.
//!
//! What one mask costs is bounded: the matcher follows at most [`MAX_STATES`]
//! interpretations; interpretations inside a string take plain tokens by their length
//! alone, so a mask is one walk over the vocabulary for the others plus one walk over
//! the few tokens that hold a quote, a backslash or a control byte. Measured with
//! `examples/bench_structured.rs` on Gemma 3's 262,144-token vocabulary (2 cores, AMD
//! EPYC): 1.4 to 9 ms per token on average and at most 17 ms, including an `anyOf` of 64
//! strings of different lengths, which took over a second per token before the string
//! fast path covered several interpretations. An `enum` is a sorted list whose values
//! that match the bytes so far are one range: 65,535 strings sharing a prefix cost 18 ms
//! per token on a Sapphire Rapids Xeon, 206 ms when each interpretation carried a list of
//! candidates.
//!
//! The supported subset: `type` (object, array, string, number, integer, boolean, null,
//! or a list of them), `properties`, `required`, `additionalProperties`, `items`,
//! `minItems`/`maxItems`, `minLength`/`maxLength`, `enum`, `const`, `anyOf`/`oneOf`,
//! one-element `allOf`, `nullable`, local `$ref` (`#`, `#/$defs/..`, `#/definitions/..`),
//! `minimum: 0` on numbers; annotations (`title`, `description`, `format`, `default`, ...)
//! are ignored. Anything else (`pattern`, `maximum`, ...) is refused with a message, so
//! an output never claims to match a schema it was not constrained by.
//!
//! Choices that keep every output finite and parseable: no whitespace between tokens
//! (compact JSON), no `\u` escapes, strings at most 256 characters unless `maxLength`
//! says otherwise, arrays at most 16 items unless `maxItems` says, free-form objects at
//! most 16 keys, numbers at most 15 integer / 8 fraction / 2 exponent digits, free-form
//! nesting at most 8 deep. A schema'd object generates only the properties it declares.

use std::collections::HashMap;

use crate::sampler::Constraint;
use serde_json::Value;

/// A schema this module cannot turn into a grammar.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid JSON schema: {0}")]
pub struct SchemaError(pub String);

const MAX_DEPTH: usize = 8;
const DEFAULT_MAX_STRING: u32 = 256;
const DEFAULT_MAX_ITEMS: u32 = 16;
const FREE_MAX_KEYS: u32 = 16;
const FREE_MAX_KEY_LEN: u32 = 64;
const MAX_INT_DIGITS: u8 = 15;
const MAX_FRAC_DIGITS: u8 = 8;
const MAX_EXP_DIGITS: u8 = 2;
const MAX_NODES: usize = 10_000;
const MAX_PROPS: usize = 64;

#[derive(Debug, Clone)]
enum Node {
    /// Placeholder while a `$ref` is being compiled.
    Pending,
    Object {
        props: Vec<(Vec<u8>, u32)>,
        required: u64,
        free_value: Option<u32>,
    },
    Array {
        items: u32,
        min: u32,
        max: u32,
    },
    String {
        min: u32,
        max: u32,
    },
    Number {
        integer: bool,
        nonneg: bool,
    },
    Literals(Vec<Vec<u8>>),
    AnyOf(Vec<u32>),
}

/// A compiled grammar.
#[derive(Debug, Clone)]
pub struct Grammar {
    nodes: Vec<Node>,
    root: u32,
    /// What it was made from: `"json"` or the schema (sent as is to a remote model).
    format: Value,
}

struct Compiler<'a> {
    root_schema: &'a Value,
    nodes: Vec<Node>,
    refs: HashMap<String, u32>,
    any: Vec<Option<u32>>,
}

const KNOWN: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "allOf",
    "$ref",
    "$defs",
    "definitions",
    "nullable",
    "minimum",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "$schema",
    "$id",
    "$comment",
    "readOnly",
    "writeOnly",
    "deprecated",
];

fn err<T>(msg: impl Into<String>) -> Result<T, SchemaError> {
    Err(SchemaError(msg.into()))
}

fn get_u32(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u32>, SchemaError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= 1_000_000 => Ok(Some(n as u32)),
            _ => err(format!("`{key}` must be an integer from 0 to 1000000, got {v}")),
        },
    }
}

impl Compiler<'_> {
    fn push(&mut self, n: Node) -> Result<u32, SchemaError> {
        if self.nodes.len() >= MAX_NODES {
            return err("the schema is too large");
        }
        self.nodes.push(n);
        Ok((self.nodes.len() - 1) as u32)
    }

    /// The values of an `enum` or a `const`, sorted and without duplicates: the literals
    /// that start with the bytes read so far are then one range, which the matcher keeps
    /// as two u16 bounds (a list of candidates, copied on every byte of every token a
    /// mask tries, made an enum of 65,535 strings cost 0.5 s a token). The matcher
    /// numbers them, and the bytes read into one, with u16: more would wrap (found by
    /// reading the fuzz target's code).
    fn literals(&mut self, mut lits: Vec<Vec<u8>>) -> Result<u32, SchemaError> {
        let max = usize::from(u16::MAX);
        if lits.len() > max || lits.iter().any(|l| l.len() > max) {
            return err("`enum` and `const` take at most 65535 values of at most 65535 bytes");
        }
        lits.sort_unstable();
        lits.dedup();
        self.push(Node::Literals(lits))
    }

    /// Any JSON value, nested at most `depth` more levels.
    fn any(&mut self, depth: usize) -> Result<u32, SchemaError> {
        if let Some(id) = self.any[depth] {
            return Ok(id);
        }
        let string = self.push(Node::String { min: 0, max: DEFAULT_MAX_STRING })?;
        let number = self.push(Node::Number { integer: false, nonneg: false })?;
        let lits = self.literals(vec![b"true".to_vec(), b"false".to_vec(), b"null".to_vec()])?;
        let mut alts = vec![string, number, lits];
        if depth > 0 {
            let inner = self.any(depth - 1)?;
            alts.push(self.push(Node::Object {
                props: vec![],
                required: 0,
                free_value: Some(inner),
            })?);
            alts.push(self.push(Node::Array { items: inner, min: 0, max: DEFAULT_MAX_ITEMS })?);
        }
        let id = self.push(Node::AnyOf(alts))?;
        self.any[depth] = Some(id);
        Ok(id)
    }

    fn resolve_ref(&mut self, r: &str, level: usize) -> Result<u32, SchemaError> {
        if let Some(&id) = self.refs.get(r) {
            return Ok(id);
        }
        let target = if r == "#" {
            self.root_schema
        } else if let Some(path) = r.strip_prefix("#/") {
            let mut v = self.root_schema;
            for part in path.split('/') {
                let part = part.replace("~1", "/").replace("~0", "~");
                // A JSON pointer indexes arrays by number (`#/anyOf/0`).
                let next = match v {
                    Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => v.get(&part),
                };
                v = match next {
                    Some(x) => x,
                    None => return err(format!("$ref {r:?} points at nothing")),
                };
            }
            v
        } else {
            return err(format!("$ref {r:?}: only local references (#/...) are supported"));
        };
        let id = self.push(Node::Pending)?;
        self.refs.insert(r.to_string(), id);
        let inner = self.compile(target, level + 1)?;
        self.nodes[id as usize] = Node::AnyOf(vec![inner]);
        Ok(id)
    }

    fn compile(&mut self, v: &Value, level: usize) -> Result<u32, SchemaError> {
        if level > 64 {
            return err("the schema nests too deeply");
        }
        let obj = match v {
            Value::Bool(true) => return self.any(MAX_DEPTH),
            Value::Bool(false) => return err("the schema `false` admits no value"),
            Value::Object(o) => o,
            other => return err(format!("a schema must be an object or a boolean, got {other}")),
        };
        for k in obj.keys() {
            if !KNOWN.contains(&k.as_str()) {
                return err(format!(
                    "the keyword `{k}` is not supported by corral's structured output"
                ));
            }
        }
        let node = self.compile_inner(obj, level)?;
        if obj.get("nullable") == Some(&Value::Bool(true)) {
            let null = self.literals(vec![b"null".to_vec()])?;
            return self.push(Node::AnyOf(vec![node, null]));
        }
        Ok(node)
    }

    fn compile_inner(
        &mut self,
        obj: &serde_json::Map<String, Value>,
        level: usize,
    ) -> Result<u32, SchemaError> {
        if let Some(r) = obj.get("$ref") {
            let Some(r) = r.as_str() else { return err("`$ref` must be a string") };
            return self.resolve_ref(r, level);
        }
        if let Some(c) = obj.get("const") {
            let lit = serde_json::to_vec(c).map_err(|e| SchemaError(e.to_string()))?;
            return self.literals(vec![lit]);
        }
        if let Some(e) = obj.get("enum") {
            let Some(items) = e.as_array().filter(|a| !a.is_empty()) else {
                return err("`enum` must be a non-empty array");
            };
            let lits = items
                .iter()
                .map(|x| serde_json::to_vec(x).map_err(|e| SchemaError(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            return self.literals(lits);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(a) = obj.get(key) {
                let Some(items) = a.as_array().filter(|a| !a.is_empty()) else {
                    return err(format!("`{key}` must be a non-empty array of schemas"));
                };
                let alts = items
                    .iter()
                    .map(|s| self.compile(s, level + 1))
                    .collect::<Result<Vec<_>, _>>()?;
                return self.push(Node::AnyOf(alts));
            }
        }
        if let Some(a) = obj.get("allOf") {
            match a.as_array().map(Vec::as_slice) {
                Some([one]) => return self.compile(one, level + 1),
                _ => return err("`allOf` is supported with exactly one schema only"),
            }
        }
        let types: Vec<&str> = match obj.get("type") {
            None => {
                if obj.contains_key("properties") {
                    vec!["object"]
                } else if obj.contains_key("items") {
                    vec!["array"]
                } else {
                    return self.any(MAX_DEPTH);
                }
            }
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|t| {
                    t.as_str().ok_or_else(|| SchemaError("`type` entries must be strings".into()))
                })
                .collect::<Result<_, _>>()?,
            Some(other) => return err(format!("`type` must be a string or an array, got {other}")),
        };
        let mut alts = Vec::new();
        for t in types {
            alts.push(self.compile_type(t, obj, level)?);
        }
        if alts.len() == 1 { Ok(alts[0]) } else { self.push(Node::AnyOf(alts)) }
    }

    fn compile_type(
        &mut self,
        t: &str,
        obj: &serde_json::Map<String, Value>,
        level: usize,
    ) -> Result<u32, SchemaError> {
        let nonneg = match obj.get("minimum") {
            None => false,
            Some(m) if m.as_f64() == Some(0.0) => true,
            Some(m) => {
                return err(format!(
                    "`minimum: {m}` is not supported (only `minimum: 0` is); drop it or validate afterwards"
                ));
            }
        };
        match t {
            "object" => {
                let props = match obj.get("properties") {
                    None => None,
                    Some(Value::Object(p)) => Some(p),
                    Some(other) => {
                        return err(format!("`properties` must be an object, got {other}"));
                    }
                };
                let required: Vec<&str> = match obj.get("required") {
                    None => vec![],
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|r| {
                            r.as_str().ok_or_else(|| {
                                SchemaError("`required` must be an array of strings".into())
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => return err(format!("`required` must be an array, got {other}")),
                };
                match props.filter(|p| !p.is_empty()) {
                    None => {
                        if !required.is_empty() {
                            return err("`required` names properties but `properties` is missing");
                        }
                        let value = match obj.get("additionalProperties") {
                            None | Some(Value::Bool(true)) => self.any(MAX_DEPTH - 1)?,
                            Some(Value::Bool(false)) => {
                                return self.literals(vec![b"{}".to_vec()]);
                            }
                            Some(s) => self.compile(s, level + 1)?,
                        };
                        self.push(Node::Object {
                            props: vec![],
                            required: 0,
                            free_value: Some(value),
                        })
                    }
                    Some(p) => {
                        if p.len() > MAX_PROPS {
                            return err(format!("at most {MAX_PROPS} properties per object"));
                        }
                        let mut list = Vec::new();
                        for (k, s) in p {
                            let key =
                                serde_json::to_string(k).map_err(|e| SchemaError(e.to_string()))?;
                            let key = key.as_bytes()[1..key.len() - 1].to_vec();
                            list.push((key, self.compile(s, level + 1)?));
                        }
                        let mut mask = 0u64;
                        for r in required {
                            match p.keys().position(|k| k == r) {
                                Some(i) => mask |= 1 << i,
                                None => {
                                    return err(format!(
                                        "required property {r:?} is not in `properties`"
                                    ));
                                }
                            }
                        }
                        self.push(Node::Object { props: list, required: mask, free_value: None })
                    }
                }
            }
            "array" => {
                let items = match obj.get("items") {
                    None | Some(Value::Bool(true)) => self.any(MAX_DEPTH - 1)?,
                    Some(s) => self.compile(s, level + 1)?,
                };
                let min = get_u32(obj, "minItems")?.unwrap_or(0);
                let max = get_u32(obj, "maxItems")?.unwrap_or(DEFAULT_MAX_ITEMS.max(min));
                if min > max || min > 1024 {
                    return err(format!("minItems {min} cannot be met (maxItems {max})"));
                }
                self.push(Node::Array { items, min, max })
            }
            "string" => {
                let min = get_u32(obj, "minLength")?.unwrap_or(0);
                let max = get_u32(obj, "maxLength")?.unwrap_or(DEFAULT_MAX_STRING.max(min));
                if min > max {
                    return err(format!("minLength {min} is above maxLength {max}"));
                }
                self.push(Node::String { min, max })
            }
            "number" => self.push(Node::Number { integer: false, nonneg }),
            "integer" => self.push(Node::Number { integer: true, nonneg }),
            "boolean" => self.literals(vec![b"true".to_vec(), b"false".to_vec()]),
            "null" => self.literals(vec![b"null".to_vec()]),
            other => err(format!(
                "unknown type {other:?} (object, array, string, number, integer, boolean, null)"
            )),
        }
    }
}

impl Grammar {
    /// The `format` it was made from: `"json"` or the JSON schema.
    pub fn format(&self) -> &Value {
        &self.format
    }

    /// Any JSON object (Ollama's `format: "json"`, whose grammar's root is an object, and
    /// OpenAI's `json_object` mode): free-form keys, values of any kind, nested at most
    /// `MAX_DEPTH` deep.
    pub fn json_object() -> Grammar {
        let mut c = Compiler {
            root_schema: &Value::Null,
            nodes: vec![],
            refs: HashMap::new(),
            any: vec![None; MAX_DEPTH + 1],
        };
        // Cannot fail: a few nodes.
        let values = c.any(MAX_DEPTH - 1).unwrap_or(0);
        let root = c
            .push(Node::Object { props: vec![], required: 0, free_value: Some(values) })
            .unwrap_or(0);
        Grammar { nodes: c.nodes, root, format: Value::String("json".into()) }
    }

    /// Compiles a JSON schema.
    pub fn from_schema(schema: &Value) -> Result<Grammar, SchemaError> {
        let mut c = Compiler {
            root_schema: schema,
            nodes: vec![],
            refs: HashMap::new(),
            any: vec![None; MAX_DEPTH + 1],
        };
        let root = c.compile(schema, 0)?;
        if c.nodes.iter().any(|n| matches!(n, Node::Pending)) {
            return err("unresolved $ref");
        }
        if has_empty_cycle(&c.nodes) {
            return err("a $ref refers back to itself before any value starts (e.g. \
                 `{\"$ref\": \"#\"}`): such a schema admits no document");
        }
        let mut nodes = c.nodes;
        let finite = can_finish(&nodes);
        if !finite[root as usize] {
            return err("the schema admits no finite document: every value it allows must \
                 contain another one (e.g. an array of at least one item of its own kind)");
        }
        prune_endless(&mut nodes, &finite);
        Ok(Grammar { nodes, root, format: schema.clone() })
    }

    /// From a request's `format` value: `"json"`, a schema object, or `""`/null (none).
    pub fn from_format(format: &Value) -> Result<Option<Grammar>, SchemaError> {
        match format {
            Value::Null => Ok(None),
            Value::String(s) if s.is_empty() => Ok(None),
            Value::String(s) if s == "json" => Ok(Some(Grammar::json_object())),
            Value::String(s) => err(format!("format must be \"json\" or a JSON schema, got {s:?}")),
            Value::Object(_) => Grammar::from_schema(format).map(Some),
            other => err(format!("format must be \"json\" or a JSON schema object, got {other}")),
        }
    }
}

/// Which nodes admit a finite document, by fixpoint from the leaves: strings, numbers and
/// literals do; an `anyOf` when one alternative does; an array when it may be empty or its
/// items do; an object when every required property's value does.
fn can_finish(nodes: &[Node]) -> Vec<bool> {
    let mut finite = vec![false; nodes.len()];
    loop {
        let mut changed = false;
        for (i, node) in nodes.iter().enumerate() {
            if finite[i] {
                continue;
            }
            let ok = match node {
                Node::Pending => false,
                Node::String { .. } | Node::Number { .. } | Node::Literals(_) => true,
                Node::AnyOf(alts) => alts.iter().any(|&a| finite[a as usize]),
                Node::Array { items, min, .. } => *min == 0 || finite[*items as usize],
                Node::Object { props, required, .. } => props
                    .iter()
                    .enumerate()
                    .all(|(j, (_, v))| required & (1 << j) == 0 || finite[*v as usize]),
            };
            if ok {
                finite[i] = true;
                changed = true;
            }
        }
        if !changed {
            return finite;
        }
    }
}

/// Takes out of the grammar what can never end, so the matcher cannot start it and then
/// nest until the token limit: `anyOf` alternatives without a finite document, array
/// items of that kind (the array stays empty), optional properties of that kind.
fn prune_endless(nodes: &mut [Node], finite: &[bool]) {
    for node in nodes.iter_mut() {
        match node {
            Node::AnyOf(alts) => alts.retain(|&a| finite[a as usize]),
            Node::Array { items, max, .. } if !finite[*items as usize] => *max = 0,
            Node::Object { props, required, .. } => {
                if props.iter().all(|(_, v)| finite[*v as usize]) {
                    continue;
                }
                let mut kept = Vec::with_capacity(props.len());
                let mut mask = 0u64;
                for (j, (key, v)) in std::mem::take(props).into_iter().enumerate() {
                    let is_required = *required & (1 << j) != 0;
                    if finite[v as usize] || is_required {
                        if is_required {
                            mask |= 1 << kept.len();
                        }
                        kept.push((key, v));
                    }
                }
                *props = kept;
                *required = mask;
            }
            _ => {}
        }
    }
}

/// Whether a node reaches itself through `anyOf` edges alone (a `$ref` cycle that reads
/// no byte, as in `{"$ref": "#"}`): the matcher would start that value forever.
fn has_empty_cycle(nodes: &[Node]) -> bool {
    // Iterative depth-first search: 0 unvisited, 1 on the current path, 2 done.
    let mut state = vec![0u8; nodes.len()];
    for start in 0..nodes.len() {
        if state[start] != 0 {
            continue;
        }
        state[start] = 1;
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some(top) = path.last_mut() {
            let (n, i) = *top;
            let next = match &nodes[n] {
                Node::AnyOf(alts) => alts.get(i).map(|&a| a as usize),
                _ => None,
            };
            match next {
                Some(next) => {
                    top.1 += 1;
                    match state.get(next) {
                        Some(1) => return true,
                        Some(0) => {
                            state[next] = 1;
                            path.push((next, 0));
                        }
                        _ => {}
                    }
                }
                None => {
                    state[n] = 2;
                    path.pop();
                }
            }
        }
    }
    false
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ObjSt {
    Open,
    Comma,
    InKey,
    Colon,
    InValue,
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ArrSt {
    Open,
    Comma,
    InValue,
    AfterValue,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum NumSt {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    E,
    ESign,
    Exp,
}

#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Value(u32),
    Obj {
        node: u32,
        seen: u64,
        count: u32,
        st: ObjSt,
        pending: u32,
    },
    Key {
        node: u32,
        buf: Vec<u8>,
    },
    Arr {
        node: u32,
        count: u32,
        st: ArrSt,
    },
    Str {
        min: u32,
        max: u32,
        len: u32,
        esc: bool,
        utf8: (u8, u8, u8),
    },
    Num {
        integer: bool,
        st: NumSt,
        digits: u8,
    },
    /// Inside one of a `Literals` node's values: those in `lo..hi` (sorted) start with
    /// the `pos` bytes read.
    Lit {
        node: u32,
        lo: u16,
        hi: u16,
        pos: u16,
    },
}

type Stack = Vec<Frame>;

/// The matcher: every live interpretation of the bytes so far.
#[derive(Debug, Clone)]
pub struct Matcher {
    grammar: std::sync::Arc<Grammar>,
    states: Vec<Stack>,
}

impl Matcher {
    /// A matcher at the start of a document.
    pub fn new(grammar: std::sync::Arc<Grammar>) -> Matcher {
        let root = grammar.root;
        Matcher { grammar, states: vec![vec![Frame::Value(root)]] }
    }

    /// Whether the bytes so far form a complete document.
    pub fn is_complete(&self) -> bool {
        self.states.iter().any(|s| stack_complete(&self.grammar, s))
    }

    /// Whether the matcher has no live interpretation left.
    pub fn is_dead(&self) -> bool {
        self.states.is_empty()
    }

    /// Feeds bytes; false (and the matcher unchanged) if they cannot continue a document.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut cur = self.states.clone();
        for &b in bytes {
            cur = advance(&self.grammar, &cur, b);
            if cur.is_empty() {
                return false;
            }
        }
        self.states = cur;
        true
    }
}

fn stack_complete(g: &Grammar, s: &Stack) -> bool {
    match s.as_slice() {
        [] => true,
        [Frame::Num { st, .. }] => num_accepting(*st),
        [Frame::Lit { node, lo, pos, .. }] => lit_complete(g, *node, *lo, *pos),
        _ => false,
    }
}

fn num_accepting(st: NumSt) -> bool {
    matches!(st, NumSt::Zero | NumSt::Int | NumSt::Frac | NumSt::Exp)
}

/// Whether the literal read so far is complete: in sorted order the one equal to the
/// common prefix comes first in its range.
fn lit_complete(g: &Grammar, node: u32, lo: u16, pos: u16) -> bool {
    let Node::Literals(l) = &g.nodes[node as usize] else { return false };
    l.get(usize::from(lo)).is_some_and(|x| x.len() == usize::from(pos))
}

/// The sub-range of `lo..hi` (sorted literals sharing their first `pos` bytes) whose
/// byte at `pos` is `b`.
fn lit_narrow(l: &[Vec<u8>], lo: u16, hi: u16, pos: usize, b: u8) -> (u16, u16) {
    let range = &l[usize::from(lo)..usize::from(hi)];
    let start = range.partition_point(|x| x.get(pos) < Some(&b));
    let end = range.partition_point(|x| x.get(pos) <= Some(&b));
    // Both are at most `hi - lo`, so the sums fit u16.
    (lo + start as u16, lo + end as u16)
}

/// The most interpretations the matcher follows at once. A schema whose alternatives
/// (`anyOf`, enums with shared prefixes) multiply beyond this at one position keeps the
/// first ones: the cost of masking a token stays bounded by this many stacks.
pub const MAX_STATES: usize = 64;

fn advance(g: &Grammar, states: &[Stack], b: u8) -> Vec<Stack> {
    let mut out: Vec<Stack> = Vec::new();
    for s in states {
        step(g, s.clone(), b, &mut out);
    }
    // Drop duplicate interpretations (anyOf branches that converged), and keep at most
    // MAX_STATES.
    let mut uniq: Vec<Stack> = Vec::with_capacity(out.len().min(MAX_STATES));
    for s in out {
        if uniq.len() == MAX_STATES {
            break;
        }
        if !uniq.contains(&s) {
            uniq.push(s);
        }
    }
    uniq
}

/// Pops a finished value and moves its parent on.
fn complete(st: &mut Stack) {
    st.pop();
    match st.last_mut() {
        Some(Frame::Obj { st: s @ ObjSt::InValue, .. }) => *s = ObjSt::AfterValue,
        Some(Frame::Obj { st: s @ ObjSt::InKey, count, pending, .. }) => {
            *s = ObjSt::Colon;
            *count += 1;
            *pending = u32::MAX;
        }
        Some(Frame::Arr { st: s @ ArrSt::InValue, count, .. }) => {
            *s = ArrSt::AfterValue;
            *count += 1;
        }
        _ => {}
    }
}

fn is_digit(b: u8) -> bool {
    b.is_ascii_digit()
}

/// Starts the value of node `n` with byte `b` on every alternative `n` leads to through
/// `anyOf` edges. Each node is tried once per call, in the alternatives' order: shared
/// `$ref`s make the `anyOf` graph a DAG whose paths can number 2^depth (`a0: anyOf [a1,
/// a1]`, `a1: anyOf [a2, a2]`, ...), and two paths to one node start the same value on
/// the same stack.
fn start_value(g: &Grammar, st: Stack, n: u32, b: u8, out: &mut Vec<Stack>) {
    let mut tried: Vec<u32> = Vec::new();
    let mut pending = vec![n];
    while let Some(n) = pending.pop() {
        if tried.contains(&n) {
            continue;
        }
        tried.push(n);
        match &g.nodes[n as usize] {
            Node::AnyOf(alts) => pending.extend(alts.iter().rev()),
            _ => start_leaf(g, st.clone(), n, b, out),
        }
    }
}

/// [`start_value`] on a node that is not an `anyOf`.
fn start_leaf(g: &Grammar, mut st: Stack, n: u32, b: u8, out: &mut Vec<Stack>) {
    match &g.nodes[n as usize] {
        Node::Pending | Node::AnyOf(_) => {}
        Node::Object { .. } => {
            if b == b'{' {
                st.push(Frame::Obj { node: n, seen: 0, count: 0, st: ObjSt::Open, pending: 0 });
                out.push(st);
            }
        }
        Node::Array { .. } => {
            if b == b'[' {
                st.push(Frame::Arr { node: n, count: 0, st: ArrSt::Open });
                out.push(st);
            }
        }
        Node::String { min, max } => {
            if b == b'"' {
                st.push(Frame::Str { min: *min, max: *max, len: 0, esc: false, utf8: (0, 0, 0) });
                out.push(st);
            }
        }
        Node::Number { integer, nonneg } => {
            let integer = *integer;
            if b == b'-' && !*nonneg {
                st.push(Frame::Num { integer, st: NumSt::Minus, digits: 0 });
                out.push(st);
            } else if is_digit(b) {
                let s = if b == b'0' { NumSt::Zero } else { NumSt::Int };
                st.push(Frame::Num { integer, st: s, digits: 1 });
                out.push(st);
            }
        }
        Node::Literals(l) => {
            // At most 65,535 literals (`GrammarBuilder::literals`).
            let (lo, hi) = lit_narrow(l, 0, l.len() as u16, 0, b);
            if lo < hi {
                st.push(Frame::Lit { node: n, lo, hi, pos: 1 });
                out.push(st);
            }
        }
    }
}

fn key_open(g: &Grammar, st: &mut Stack) {
    let Some(Frame::Obj { node, st: s, .. }) = st.last_mut() else { return };
    let node = *node;
    *s = ObjSt::InKey;
    if let Node::Object { free_value: Some(_), .. } = &g.nodes[node as usize] {
        st.push(Frame::Str { min: 0, max: FREE_MAX_KEY_LEN, len: 0, esc: false, utf8: (0, 0, 0) });
    } else {
        st.push(Frame::Key { node, buf: Vec::new() });
    }
}

fn step(g: &Grammar, mut st: Stack, b: u8, out: &mut Vec<Stack>) {
    let Some(top) = st.last_mut() else { return };
    match top {
        Frame::Value(n) => {
            let n = *n;
            st.pop();
            start_value(g, st, n, b, out);
        }
        Frame::Obj { node, seen, count, st: s, pending } => {
            let Node::Object { props, required, free_value } = &g.nodes[*node as usize] else {
                return;
            };
            let can_close = *seen & *required == *required;
            let more_keys = match free_value {
                Some(_) => *count < FREE_MAX_KEYS,
                None => (0..props.len()).any(|i| *seen & (1 << i) == 0),
            };
            match *s {
                ObjSt::Open | ObjSt::AfterValue if b == b'}' && can_close => {
                    complete(&mut st);
                    out.push(st);
                }
                ObjSt::Open | ObjSt::Comma if b == b'"' && more_keys => {
                    key_open(g, &mut st);
                    out.push(st);
                }
                ObjSt::AfterValue if b == b',' && more_keys => {
                    *s = ObjSt::Comma;
                    out.push(st);
                }
                ObjSt::Colon if b == b':' => {
                    let value = match free_value {
                        Some(v) => *v,
                        None => props.get(*pending as usize).map_or(u32::MAX, |p| p.1),
                    };
                    if value == u32::MAX {
                        return;
                    }
                    *s = ObjSt::InValue;
                    st.push(Frame::Value(value));
                    out.push(st);
                }
                _ => {}
            }
        }
        Frame::Key { node, .. } => {
            let Node::Object { props, .. } = &g.nodes[*node as usize] else { return };
            let n = st.len();
            let seen = match st.get(n.wrapping_sub(2)) {
                Some(Frame::Obj { seen, .. }) => *seen,
                _ => return,
            };
            let Some(Frame::Key { mut buf, .. }) = st.pop() else { return };
            let node = match st.last() {
                Some(Frame::Obj { node, .. }) => *node,
                _ => return,
            };
            // A `"` after an odd number of backslashes is part of the key (a property
            // name with a quote in it, stored JSON-escaped), not its end.
            let escaped = buf.iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 1;
            if b == b'"' && !escaped {
                let Some(i) = (0..props.len())
                    .find(|&i| seen & (1 << i) == 0 && props[i].0 == buf.as_slice())
                else {
                    return;
                };
                if let Some(Frame::Obj { seen, count, st: s, pending, .. }) = st.last_mut() {
                    *seen |= 1 << i;
                    *count += 1;
                    *s = ObjSt::Colon;
                    *pending = i as u32;
                }
                out.push(st);
            } else {
                buf.push(b);
                let ok = (0..props.len())
                    .any(|i| seen & (1 << i) == 0 && props[i].0.starts_with(buf.as_slice()));
                if ok {
                    st.push(Frame::Key { node, buf });
                    out.push(st);
                }
            }
        }
        Frame::Arr { node, count, st: s } => {
            let Node::Array { items, min, max } = &g.nodes[*node as usize] else { return };
            let (items, min, max) = (*items, *min, *max);
            match *s {
                ArrSt::Open | ArrSt::AfterValue if b == b']' && *count >= min => {
                    complete(&mut st);
                    out.push(st);
                }
                ArrSt::AfterValue if b == b',' && *count < max => {
                    *s = ArrSt::Comma;
                    out.push(st);
                }
                ArrSt::Open | ArrSt::Comma if *count < max => {
                    *s = ArrSt::InValue;
                    st.push(Frame::Value(items));
                    step(g, st, b, out);
                }
                _ => {}
            }
        }
        Frame::Str { min, max, len, esc, utf8 } => {
            // utf8: (continuation bytes still expected, lowest, highest allowed next).
            if utf8.0 > 0 {
                if (utf8.1..=utf8.2).contains(&b) {
                    *utf8 = (utf8.0 - 1, 0x80, 0xbf);
                    out.push(st);
                }
                return;
            }
            if *esc {
                if b"\"\\/bfnrt".contains(&b) {
                    *esc = false;
                    *len += 1;
                    out.push(st);
                }
                return;
            }
            let lead = match b {
                0xc2..=0xdf => Some((1, 0x80, 0xbf)),
                0xe0 => Some((2, 0xa0, 0xbf)),
                0xed => Some((2, 0x80, 0x9f)),
                0xe1..=0xef => Some((2, 0x80, 0xbf)),
                0xf0 => Some((3, 0x90, 0xbf)),
                0xf1..=0xf3 => Some((3, 0x80, 0xbf)),
                0xf4 => Some((3, 0x80, 0x8f)),
                _ => None,
            };
            match b {
                b'"' => {
                    if *len >= *min {
                        complete(&mut st);
                        out.push(st);
                    }
                }
                b'\\' => {
                    if *len < *max {
                        *esc = true;
                        out.push(st);
                    }
                }
                0x20..0x7f => {
                    if *len < *max {
                        *len += 1;
                        out.push(st);
                    }
                }
                _ => {
                    if let Some(l) = lead
                        && *len < *max
                    {
                        *len += 1;
                        *utf8 = l;
                        out.push(st);
                    }
                }
            }
        }
        Frame::Num { integer, st: s, digits } => {
            let integer = *integer;
            let next = match (*s, b) {
                // "-0" is a valid JSON number, but parsers read it as the float -0.0:
                // integers never start with it.
                (NumSt::Minus, b'0') if !integer => Some((NumSt::Zero, 1)),
                (NumSt::Minus, b'1'..=b'9') => Some((NumSt::Int, 1)),
                (NumSt::Int, b'0'..=b'9') if *digits < MAX_INT_DIGITS => {
                    Some((NumSt::Int, *digits + 1))
                }
                (NumSt::Zero | NumSt::Int, b'.') if !integer => Some((NumSt::Dot, 0)),
                (NumSt::Zero | NumSt::Int | NumSt::Frac, b'e' | b'E') if !integer => {
                    Some((NumSt::E, 0))
                }
                (NumSt::Dot, b'0'..=b'9') => Some((NumSt::Frac, 1)),
                (NumSt::Frac, b'0'..=b'9') if *digits < MAX_FRAC_DIGITS => {
                    Some((NumSt::Frac, *digits + 1))
                }
                (NumSt::E, b'+' | b'-') => Some((NumSt::ESign, 0)),
                (NumSt::E | NumSt::ESign, b'0'..=b'9') => Some((NumSt::Exp, 1)),
                (NumSt::Exp, b'0'..=b'9') if *digits < MAX_EXP_DIGITS => {
                    Some((NumSt::Exp, *digits + 1))
                }
                _ => None,
            };
            match next {
                Some((ns, d)) => {
                    *s = ns;
                    *digits = d;
                    out.push(st);
                }
                None => {
                    if num_accepting(*s) && !is_digit(b) && !b".eE".contains(&b) {
                        complete(&mut st);
                        step(g, st, b, out);
                    }
                }
            }
        }
        Frame::Lit { node, lo, hi, pos } => {
            let Node::Literals(l) = &g.nodes[*node as usize] else { return };
            let (lo, hi, p) = (*lo, *hi, usize::from(*pos));
            // The literal equal to the bytes read, if any, is the range's first.
            let done = l.get(usize::from(lo)).filter(|x| x.len() == p);
            let (next_lo, next_hi) = lit_narrow(l, lo, hi, p, b);
            if let Some(lit) = done {
                let mut st2 = st.clone();
                complete(&mut st2);
                // A literal that ends in a digit must not run into more digits.
                let ends_digit = lit.last().is_some_and(|c| is_digit(*c));
                if !(ends_digit && (is_digit(b) || b".eE".contains(&b))) {
                    step(g, st2, b, out);
                }
            }
            if next_lo < next_hi {
                if let Some(Frame::Lit { lo, hi, pos, .. }) = st.last_mut() {
                    (*lo, *hi) = (next_lo, next_hi);
                    *pos += 1;
                }
                out.push(st);
            }
        }
    }
}

/// The bytes of every token of a model, sorted for prefix sharing; built once per model.
#[derive(Debug)]
pub struct TokenTable {
    /// (bytes, id), sorted by bytes.
    sorted: Vec<(Vec<u8>, u32)>,
    /// The entries of `sorted` that are not `plain`.
    sorted_non_plain: Vec<(Vec<u8>, u32)>,
    /// End-of-generation tokens.
    eog: Vec<u32>,
    /// Bytes of each id (for `accept`).
    by_id: Vec<Vec<u8>>,
    /// Per id: no `"`, `\` or control byte (a fast path inside strings).
    plain: Vec<bool>,
    /// Per id: characters (UTF-8 lead bytes).
    chars: Vec<u32>,
}

impl TokenTable {
    /// From each token's bytes (index = id). `eog` tokens end generation; `never` tokens
    /// (BOS and other control tokens) are never allowed.
    pub fn new(by_id: Vec<Vec<u8>>, eog: Vec<u32>, never: &[u32]) -> TokenTable {
        let mut sorted: Vec<(Vec<u8>, u32)> = by_id
            .iter()
            .enumerate()
            .filter(|(i, b)| {
                !b.is_empty() && !eog.contains(&(*i as u32)) && !never.contains(&(*i as u32))
            })
            .map(|(i, b)| (b.clone(), i as u32))
            .collect();
        sorted.sort();
        let plain = by_id
            .iter()
            .map(|b| {
                std::str::from_utf8(b).is_ok()
                    && b.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\' && c != 0x7f)
            })
            .collect();
        let chars = by_id
            .iter()
            .map(|b| b.iter().filter(|&&c| !(0x80..0xc0).contains(&c)).count() as u32)
            .collect();
        let plain: Vec<bool> = plain;
        let sorted_non_plain =
            sorted.iter().filter(|(_, id)| !plain[*id as usize]).cloned().collect();
        TokenTable { sorted, sorted_non_plain, eog, by_id, plain, chars }
    }

    /// Vocabulary size.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// The [`Constraint`] the engine loop applies: masks tokens, follows accepted ones.
pub struct JsonConstraint {
    matcher: Matcher,
    tokens: std::sync::Arc<TokenTable>,
    finished: bool,
}

impl JsonConstraint {
    /// A constraint for `grammar` over `tokens`.
    pub fn new(grammar: std::sync::Arc<Grammar>, tokens: std::sync::Arc<TokenTable>) -> Self {
        JsonConstraint { matcher: Matcher::new(grammar), tokens, finished: false }
    }

    /// Computes which tokens may come next (`allowed[id]`).
    pub fn allowed(&self) -> Vec<bool> {
        let t = &self.tokens;
        let mut allowed = vec![false; t.len()];
        let complete = self.matcher.is_complete();
        if self.finished || self.matcher.is_dead() {
            t.eog.iter().for_each(|&e| allowed[e as usize] = true);
            return allowed;
        }
        // Interpretations inside a string (not after a backslash or inside a UTF-8
        // sequence) take any plain token (no quote, backslash or control byte) that fits
        // their room, and stay inside the string: those tokens need no walk for them. So
        // the trie walk follows the other interpretations over every token, and all of
        // them over the non-plain tokens only (a few percent of a vocabulary). With many
        // string interpretations (an `anyOf` of strings), this keeps a mask to one pass
        // over the vocabulary instead of one walk per interpretation.
        let (in_string, others): (Vec<&Stack>, Vec<&Stack>) =
            self.matcher.states.iter().partition(|s| {
                matches!(s.last(), Some(Frame::Str { esc: false, utf8: (0, _, _), .. }))
            });
        let room = in_string
            .iter()
            .filter_map(|s| match s.last() {
                Some(Frame::Str { max, len, .. }) => Some(max.saturating_sub(*len)),
                _ => None,
            })
            .max();
        let g = &self.matcher.grammar;
        let mut any = false;
        if let Some(room) = room {
            for (_, id) in &t.sorted {
                let i = *id as usize;
                if t.plain[i] && t.chars[i] <= room {
                    allowed[i] = true;
                    any = true;
                }
            }
            // Plain tokens the string interpretations refuse (too long) and every
            // non-plain token still need the walk with the others; the non-plain ones
            // with the string interpretations too.
            let others: Vec<Stack> = others.into_iter().cloned().collect();
            if !others.is_empty() {
                any |= walk(g, &t.sorted, others, &mut allowed);
            }
            let all: Vec<Stack> = in_string.into_iter().cloned().collect();
            any |= walk(g, &t.sorted_non_plain, all, &mut allowed);
        } else {
            any |= walk(g, &t.sorted, self.matcher.states.clone(), &mut allowed);
        }
        if complete || !any {
            t.eog.iter().for_each(|&e| allowed[e as usize] = true);
        }
        allowed
    }
}

/// Walks `sorted` tokens from `states`, sharing the work of common prefixes, and marks
/// every token some interpretation accepts in `allowed`; true if it marked any.
fn walk(g: &Grammar, sorted: &[(Vec<u8>, u32)], states: Vec<Stack>, allowed: &mut [bool]) -> bool {
    let mut levels: Vec<Vec<Stack>> = vec![states];
    let mut prev: &[u8] = &[];
    let mut any = false;
    for (bytes, id) in sorted {
        let i = *id as usize;
        let p = prev.iter().zip(bytes).take_while(|(a, b)| a == b).count();
        prev = bytes;
        if p >= levels.len() {
            continue; // the shared prefix already failed
        }
        levels.truncate(p + 1);
        let mut ok = true;
        for &b in &bytes[p..] {
            let Some(last) = levels.last() else { break };
            let next = advance(g, last, b);
            if next.is_empty() {
                ok = false;
                break;
            }
            levels.push(next);
        }
        if ok {
            allowed[i] = true;
            any = true;
        }
    }
    any
}

impl Constraint for JsonConstraint {
    fn mask(&mut self, logits: &mut [f32]) {
        let allowed = self.allowed();
        for (i, l) in logits.iter_mut().enumerate() {
            if !allowed.get(i).copied().unwrap_or(false) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    fn accept(&mut self, token: u32) {
        if self.tokens.eog.contains(&token) {
            self.finished = true;
            return;
        }
        let Some(bytes) = self.tokens.by_id.get(token as usize) else { return };
        if !self.matcher.feed(bytes) {
            // Cannot happen for a masked sample; end the document rather than loop.
            self.finished = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{options::SamplingOptions, sampler::Sampler};
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use std::sync::Arc;

    fn accepts(g: &Grammar, text: &str) -> bool {
        let mut m = Matcher::new(Arc::new(g.clone()));
        m.feed(text.as_bytes()) && m.is_complete()
    }

    #[test]
    fn matcher_follows_schemas() {
        let g = Grammar::from_schema(&json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 5},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"enum": ["a", "bc", 12]}},
                "ok": {"type": ["boolean", "null"]}
            },
            "required": ["name", "age"]
        }))
        .unwrap();
        assert!(accepts(&g, r#"{"name":"bob","age":-12}"#));
        assert!(accepts(&g, r#"{"age":0,"name":"x\"y","tags":["a",12,"bc"],"ok":null}"#));
        assert!(!accepts(&g, r#"{"name":"bob"}"#), "age is required");
        assert!(!accepts(&g, r#"{"name":"bobbyy","age":1}"#), "maxLength");
        assert!(!accepts(&g, r#"{"name":"b","age":1.5}"#), "integer");
        assert!(!accepts(&g, r#"{"name":"b","age":01}"#), "leading zero");
        assert!(!accepts(&g, r#"{"name":"b","age":1,"x":1}"#), "unknown key");
        assert!(!accepts(&g, r#"{"name":"b","name":"c","age":1}"#), "duplicate key");
        assert!(!accepts(&g, r#"{"name":"b","age":1,"tags":[1]}"#), "enum");
        assert!(!accepts(&g, r#"{"name":"b","age":1,"tags":[123]}"#), "enum number prefix");
        let any = Grammar::json_object();
        assert!(accepts(&any, r#"{"a":[1,2.5e3,{"b":null}],"c":true}"#));
        assert!(accepts(&any, r#"{"n":-0.25}"#));
        assert!(accepts(&any, "{}"));
        // Ollama's "json" and OpenAI's json_object mode give an object, nothing else.
        for not_an_object in ["-0.25", "[1]", "\"x\"", "null", "true"] {
            assert!(!accepts(&any, not_an_object), "{not_an_object}");
        }
        assert!(!accepts(&any, "{} {}"));
    }

    #[test]
    fn integers_never_start_with_minus_zero() {
        let g = Grammar::from_schema(&json!({"type": "integer"})).unwrap();
        assert!(accepts(&g, "-12"));
        assert!(accepts(&g, "0"));
        assert!(!accepts(&g, "-0"));
        let n = Grammar::from_schema(&json!({"type": "number"})).unwrap();
        assert!(accepts(&n, "-0.5"));
    }

    /// Found by an outside sweep: `$defs` a0..a(d-1), each `anyOf` of two `$ref`s to the
    /// next, made one value's start take 2^d steps (d = 22: over a minute of CPU and
    /// 900 MB, the model's other requests waiting).
    #[test]
    fn shared_refs_start_each_value_once() {
        let depth = 30;
        let mut defs = serde_json::Map::new();
        for i in 0..depth {
            let next = format!("#/$defs/a{}", i + 1);
            defs.insert(format!("a{i}"), json!({"anyOf": [{"$ref": next}, {"$ref": next}]}));
        }
        defs.insert(format!("a{depth}"), json!({"type": "null"}));
        let g = Grammar::from_schema(&json!({"$defs": defs, "$ref": "#/$defs/a0"})).unwrap();
        let t = std::time::Instant::now();
        assert!(accepts(&g, "null"));
        assert!(!accepts(&g, "nul1"));
        assert!(t.elapsed() < std::time::Duration::from_secs(5), "{:?}", t.elapsed());
    }

    /// Found by an outside sweep: a property named `a"b` (stored JSON-escaped, `a\"b`)
    /// ended its key at the escaped quote, so no token could follow and the output was
    /// cut (`{"a\`) as if the model had stopped.
    #[test]
    fn property_names_with_quotes_and_backslashes_match_escaped() {
        let g = Grammar::from_schema(&json!({"type": "object",
            "properties": {"a\"b": {"type": "integer"}, "c\\": {"type": "integer"}},
            "required": ["a\"b", "c\\"]}))
        .unwrap();
        assert!(accepts(&g, r#"{"a\"b":1,"c\\":2}"#));
        assert!(!accepts(&g, r#"{"a"b":1,"c\\":2}"#));
    }

    /// Found by an outside sweep: a schema whose every value holds another (an array of at
    /// least one of its own kind) was accepted, and the model nested `[[[[...` until the
    /// token limit, each token dearer than the last. Such schemas are refused; branches of
    /// that kind inside a schema with finite documents are taken out.
    #[test]
    fn schemas_without_a_finite_document_are_refused_and_endless_branches_pruned() {
        for s in [
            json!({"type": "array", "items": {"$ref": "#"}, "minItems": 1}),
            json!({"type": "object", "properties": {"c": {"$ref": "#"}}, "required": ["c"]}),
        ] {
            let e = Grammar::from_schema(&s).unwrap_err();
            assert!(e.0.contains("no finite document"), "{s}: {e}");
        }
        let g = Grammar::from_schema(&json!({"anyOf": [
            {"type": "array", "items": {"$ref": "#/anyOf/0"}, "minItems": 1},
            {"type": "null"}]}))
        .unwrap();
        assert!(accepts(&g, "null"));
        assert!(!Matcher::new(std::sync::Arc::new(g)).feed(b"["), "the endless branch is gone");
        let g = Grammar::from_schema(&json!({"type": "object", "properties": {
            "ok": {"type": "integer"},
            "loop": {"type": "array", "items": {"$ref": "#/properties/loop"}, "minItems": 1}}}))
        .unwrap();
        assert!(accepts(&g, r#"{"ok":1}"#));
        assert!(!accepts(&g, r#"{"loop":[]}"#), "an optional endless property is gone");
        // Optional recursion has finite documents and stays.
        let g = Grammar::from_schema(&json!({"type": "object",
            "properties": {"c": {"$ref": "#"}}}))
        .unwrap();
        assert!(accepts(&g, r#"{"c":{"c":{}}}"#));
    }

    /// Found while writing the fuzz target, confirmed through it
    /// (fuzz/regressions/json_schema/): a `$ref` back to itself through `anyOf` alone made
    /// the matcher recurse until the stack overflowed.
    #[test]
    fn ref_cycles_without_nesting_are_refused() {
        for s in [
            json!({"$ref": "#"}),
            json!({"anyOf": [{"$ref": "#"}, {"type": "null"}]}),
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
                   "$ref": "#/$defs/a"}),
        ] {
            let e = Grammar::from_schema(&s).unwrap_err();
            assert!(e.0.contains("refers back to itself"), "{s}: {e}");
        }
        // A recursive schema that nests (reads `[` or `{` before recursing) is fine.
        let g = Grammar::from_schema(&json!({"anyOf": [{"type": "null"},
            {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}]}))
        .unwrap();
        assert!(accepts(&g, "[[null],[]]"));
    }

    /// Enum values that are prefixes of each other, given in any order and repeated: each
    /// is accepted whole, nothing between or past them.
    #[test]
    fn enums_of_shared_prefixes_accept_exactly_their_values() {
        let g = Grammar::from_schema(&json!({"type": "object", "properties": {
            "v": {"enum": ["abd", "ab", "abc", "b", 10, 1, "ab", 1.5]}}, "required": ["v"]}))
        .unwrap();
        for ok in [r#""ab""#, r#""abc""#, r#""abd""#, r#""b""#, "1", "10", "1.5"] {
            assert!(accepts(&g, &format!(r#"{{"v":{ok}}}"#)), "{ok}");
        }
        for bad in [r#""a""#, r#""abe""#, r#""abcd""#, r#""""#, "100", "11", "1.55", "2"] {
            assert!(!accepts(&g, &format!(r#"{{"v":{bad}}}"#)), "{bad}");
        }
    }

    /// Literal positions and indices are u16 in the matcher: longer or more literals are
    /// refused instead of wrapping (or panicking with overflow checks on).
    #[test]
    fn oversized_literals_are_refused() {
        let long = "a".repeat(70_000);
        assert!(Grammar::from_schema(&json!({"const": long})).is_err());
        let many: Vec<u32> = (0..70_000).collect();
        assert!(Grammar::from_schema(&json!({"enum": many})).is_err());
        let fits = "a".repeat(65_000);
        let g = Grammar::from_schema(&json!({"const": fits})).unwrap();
        assert!(accepts(&g, &format!("\"{fits}\"")));
    }

    #[test]
    fn bad_schemas_are_refused() {
        for s in [
            json!({"type": "strin"}),
            json!({"type": "string", "pattern": "a+"}),
            json!({"type": "object", "properties": 3}),
            json!({"type": "object", "properties": {"a": {}}, "required": ["b"]}),
            json!({"$ref": "#/$defs/missing"}),
            json!(5),
            json!({"type": "array", "minItems": 5, "maxItems": 2}),
        ] {
            assert!(Grammar::from_schema(&s).is_err(), "{s}");
        }
        assert!(Grammar::from_format(&json!("yaml")).is_err());
        assert!(Grammar::from_format(&json!("json")).unwrap().is_some());
        assert!(Grammar::from_format(&json!("")).unwrap().is_none());
    }

    /// A byte-level vocabulary plus multi-byte tokens (like BPE merges) and an EOS.
    fn vocab() -> (Vec<Vec<u8>>, u32) {
        let mut v: Vec<Vec<u8>> = (0u8..=255).map(|b| vec![b]).collect();
        for s in [
            "{\"", "\":", "\",\"", "\"}", "true", "false", "null", "name", "age", "tags", "12",
            "\"a\"", ",\"", "}", "]", "[\"", "hello", " world", "0.5", "e+", "\\n",
        ] {
            v.push(s.as_bytes().to_vec());
        }
        let eos = v.len() as u32;
        v.push(b"</s>".to_vec());
        (v, eos)
    }

    /// The mask's shortcuts (shared prefixes, the string fast path with several
    /// interpretations) allow exactly the tokens that feeding each token alone allows,
    /// at every step of random walks through schemas with many live interpretations.
    #[test]
    fn the_mask_equals_feeding_each_token_alone() {
        let (mut v, _) = vocab();
        for s in ["ab", "abc", "a\"", "\"b", "é", "\u{e9}x", "ab\\", "xyzzy", "1,", "\"]"] {
            v.push(s.as_bytes().to_vec());
        }
        v.push(vec![0xc3]); // half of a UTF-8 sequence
        let eos = v.len() as u32;
        v.push(b"</s>".to_vec());
        let table = Arc::new(TokenTable::new(v.clone(), vec![eos], &[]));
        let strings: Vec<Value> = (0..6)
            .map(|i| json!({"type": "string", "minLength": i, "maxLength": 2 + 3 * i}))
            .collect();
        let schemas = [
            json!({"anyOf": strings}),
            json!({"type": "array", "items": {"anyOf": [{"type": "string", "maxLength": 2},
                {"type": "string", "maxLength": 9}, {"const": "abcab"}, {"type": "integer"}]}}),
            json!({"anyOf": [{"type": "object", "properties": {"ab": {"type": "string"}}},
                {"type": "object", "properties": {"abc": {"type": "number"}}},
                {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}]}),
            json!("json"),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for schema in &schemas {
            let g = Arc::new(Grammar::from_format(schema).unwrap().unwrap());
            for _ in 0..20 {
                let mut c = JsonConstraint::new(g.clone(), table.clone());
                for _ in 0..40 {
                    let allowed = c.allowed();
                    for (id, bytes) in v.iter().enumerate() {
                        if id as u32 == eos {
                            continue;
                        }
                        let mut m = c.matcher.clone();
                        assert_eq!(
                            allowed[id],
                            m.feed(bytes),
                            "{schema}: token {:?} after {} states",
                            String::from_utf8_lossy(bytes),
                            c.matcher.states.len()
                        );
                    }
                    let ids: Vec<usize> = (0..v.len()).filter(|&i| allowed[i]).collect();
                    let pick = ids[rng.random_range(0..ids.len())] as u32;
                    if pick == eos {
                        break;
                    }
                    c.accept(pick);
                }
            }
        }
    }

    /// 100 samples at temperature 1 with random logits, each validated by `jsonschema`.
    #[test]
    fn hundred_sampled_outputs_validate() {
        let (v, eos) = vocab();
        let table = Arc::new(TokenTable::new(v.clone(), vec![eos], &[]));
        let schemas = [
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 12},
                    "age": {"type": "integer", "minimum": 0},
                    "score": {"type": "number"},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
                    "kind": {"enum": ["cat", "dog", 3, null]},
                    "nested": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
                },
                "required": ["name", "age", "kind", "nested"]
            }),
            json!({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]}, "minItems": 1, "maxItems": 4}),
            json!({"$defs": {"p": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
                   "type": "object", "properties": {"a": {"$ref": "#/$defs/p"}, "b": {"type": ["string", "null"], "maxLength": 6}}, "required": ["a", "b"]}),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for seed in 0..100u64 {
            let schema = &schemas[seed as usize % schemas.len()];
            let grammar = Arc::new(Grammar::from_schema(schema).unwrap());
            let opts = SamplingOptions {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                seed: Some(seed),
                ..Default::default()
            };
            let mut sampler = Sampler::new(&opts, v.len()).unwrap();
            sampler.set_constraint(Some(Box::new(JsonConstraint::new(grammar, table.clone()))));
            let mut out = Vec::new();
            let mut history = Vec::new();
            for _ in 0..4000 {
                let mut logits: Vec<f32> =
                    (0..v.len()).map(|_| rng.random_range(-3.0..3.0)).collect();
                let t = sampler.sample(&mut logits, &history);
                history.push(t);
                if t == eos {
                    break;
                }
                out.extend_from_slice(&v[t as usize]);
            }
            let text = String::from_utf8_lossy(&out).into_owned();
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("sample {seed} does not parse: {e}: {text}"));
            let validator = jsonschema::validator_for(schema).unwrap();
            assert!(validator.is_valid(&value), "sample {seed} does not validate: {text}");
        }
    }
}
