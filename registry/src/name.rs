//! Model names as Ollama writes them: `[host/][namespace/]model[:tag][@digest]`.
//!
//! Missing parts take the defaults [`DEFAULT_HOST`], [`DEFAULT_NAMESPACE`] and
//! [`DEFAULT_TAG`]. Every part is validated with Ollama's rules before it can be joined
//! into a path:
//!
//! | part      | length | first character      | other characters            |
//! |-----------|--------|----------------------|-----------------------------|
//! | host      | 1-255  | letter, digit or `_` | letters, digits, `_ - . :`  |
//! | namespace | 1-80   | letter, digit or `_` | letters, digits, `_ -`      |
//! | model     | 1-80   | letter, digit or `_` | letters, digits, `_ - .`    |
//! | tag       | 1-80   | letter, digit or `_` | letters, digits, `_ - .`    |
//!
//! So no part can be empty, be `.` or `..`, or hold a slash, a backslash or a NUL. Every
//! part becomes a file name of the store, so none is longer than 255 bytes (Ollama allows
//! 350 for the host). A `:` in the host must be followed by a port, 1 to 65535.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// The registry used when a name gives no host.
pub const DEFAULT_HOST: &str = "registry.ollama.ai";
/// The namespace used when a name gives none.
pub const DEFAULT_NAMESPACE: &str = "library";
/// The tag used when a name gives none.
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, validated model name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName {
    host: String,
    namespace: String,
    model: String,
    tag: String,
    digest: Option<Digest>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Host,
    Namespace,
    Model,
    Tag,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Namespace => "namespace",
            Kind::Model => "model",
            Kind::Tag => "tag",
        }
    }
    /// Ollama allows hosts of 350 characters, but every part of a name becomes a
    /// directory or file name of the store (`manifests/<host>/<namespace>/<model>/<tag>`),
    /// and file systems refuse names over 255 bytes: a longer host could be parsed and
    /// then fail every write with an I/O error (a 500 naming the server's paths).
    fn max_len(self) -> usize {
        match self {
            Kind::Host => 255,
            _ => 80,
        }
    }
}

fn check_part(full: &str, kind: Kind, part: &str) -> Result<()> {
    let err =
        |reason: String| Error::InvalidName { name: full.chars().take(400).collect(), reason };
    if part.is_empty() {
        return Err(err(format!("the {} is empty", kind.label())));
    }
    if part.len() > kind.max_len() {
        return Err(err(format!(
            "the {} is {} characters long, at most {} are allowed",
            kind.label(),
            part.len(),
            kind.max_len()
        )));
    }
    for (i, c) in part.chars().enumerate() {
        let ok = if i == 0 {
            c.is_ascii_alphanumeric() || c == '_'
        } else {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => true,
                '.' => kind != Kind::Namespace,
                ':' => kind == Kind::Host,
                _ => false,
            }
        };
        if !ok {
            let shown = if c.is_control() { format!("{c:?}") } else { format!("'{c}'") };
            return Err(err(format!(
                "character {shown} is not allowed {} in the {} {:?}",
                if i == 0 { "at the start" } else { "" },
                kind.label(),
                part.chars().take(100).collect::<String>()
            )
            .replace("  ", " ")));
        }
    }
    // `host:port`: one colon, then a port number (caught here, not as a registry's
    // "invalid port number" when the URL is built).
    if kind == Kind::Host
        && let Some((_, port)) = part.split_once(':')
    {
        let valid = !port.is_empty()
            && port.len() <= 5
            && port.bytes().all(|b| b.is_ascii_digit())
            && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
        if !valid {
            return Err(err(format!(
                "the host {:?} has an invalid port {:?} (a number from 1 to 65535)",
                part.chars().take(100).collect::<String>(),
                port.chars().take(20).collect::<String>()
            )));
        }
    }
    Ok(())
}

impl ModelName {
    /// Parses `[host/][namespace/]model[:tag][@digest]`, filling in defaults and
    /// validating every part.
    pub fn parse(s: &str) -> Result<ModelName> {
        let err = |reason: &str| Error::InvalidName {
            name: s.chars().take(400).collect(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(err("the name is empty"));
        }
        if s.len() > 1024 {
            return Err(err("the name is longer than 1024 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        // The tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (host, namespace, model) = match parts.as_slice() {
            [m] => (None, None, *m),
            [n, m] => (None, Some(*n), *m),
            [h, n, m] => (Some(*h), Some(*n), *m),
            _ => {
                return Err(err("too many '/' separated parts; expected [host/][namespace/]model"));
            }
        };
        if rest.is_empty() && digest.is_some() {
            return Err(err("a name with only a digest is not supported; give the model name too"));
        }
        let name = ModelName {
            host: host.unwrap_or(DEFAULT_HOST).to_string(),
            namespace: namespace.unwrap_or(DEFAULT_NAMESPACE).to_string(),
            model: model.to_string(),
            tag: tag.unwrap_or(DEFAULT_TAG).to_string(),
            digest,
        };
        check_part(s, Kind::Host, &name.host)?;
        check_part(s, Kind::Namespace, &name.namespace)?;
        check_part(s, Kind::Model, &name.model)?;
        check_part(s, Kind::Tag, &name.tag)?;
        Ok(name)
    }

    /// Builds a name from its parts, validating each.
    pub fn from_parts(host: &str, namespace: &str, model: &str, tag: &str) -> Result<ModelName> {
        let full = format!("{host}/{namespace}/{model}:{tag}");
        check_part(&full, Kind::Host, host)?;
        check_part(&full, Kind::Namespace, namespace)?;
        check_part(&full, Kind::Model, model)?;
        check_part(&full, Kind::Tag, tag)?;
        Ok(ModelName {
            host: host.into(),
            namespace: namespace.into(),
            model: model.into(),
            tag: tag.into(),
            digest: None,
        })
    }

    /// The registry host (with port if any), e.g. `registry.ollama.ai` or `localhost:5000`.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The namespace, e.g. `library`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
    /// The model, e.g. `llama3`.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The tag, e.g. `latest`.
    pub fn tag(&self) -> &str {
        &self.tag
    }
    /// The manifest digest pinned with `@sha256:...`, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
    /// The same name with another tag.
    pub fn with_tag(&self, tag: &str) -> Result<ModelName> {
        let mut n = ModelName::from_parts(&self.host, &self.namespace, &self.model, tag)?;
        n.digest = self.digest;
        Ok(n)
    }
    /// Refuses a name with a pinned digest as the name a model is written under (`cp`,
    /// `create`): the digest would be dropped silently (a manifest's digest is that of
    /// its bytes, not a name's wish).
    pub fn check_destination(&self) -> Result<()> {
        match self.digest {
            Some(_) => Err(Error::InvalidName {
                name: self.to_string(),
                reason: "a model is written under a name without a digest (drop the @sha256:...)"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    /// The same name without a pinned digest.
    pub fn without_digest(&self) -> ModelName {
        ModelName { digest: None, ..self.clone() }
    }

    /// The OCI repository: `namespace/model`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.namespace, self.model)
    }

    /// `host/namespace/model:tag` (plus `@digest` when pinned).
    pub fn fully_qualified(&self) -> String {
        let mut s = format!("{}/{}/{}:{}", self.host, self.namespace, self.model, self.tag);
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }

    /// The manifest path relative to the store root:
    /// `manifests/<host>/<namespace>/<model>/<tag>`. Built only from validated parts.
    pub fn manifest_rel_path(&self) -> PathBuf {
        ["manifests", &self.host, &self.namespace, &self.model, &self.tag].iter().collect()
    }

    /// Compares names the way Ollama does: case-insensitively, digest ignored.
    pub fn eq_ignore_case(&self, other: &ModelName) -> bool {
        self.host.eq_ignore_ascii_case(&other.host)
            && self.namespace.eq_ignore_ascii_case(&other.namespace)
            && self.model.eq_ignore_ascii_case(&other.model)
            && self.tag.eq_ignore_ascii_case(&other.tag)
    }
}

/// Short form: `llama3:latest` for the default host and `library`, `ns/model:tag` for
/// another namespace on the default host, the full form otherwise.
impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host != DEFAULT_HOST {
            write!(f, "{}/{}/{}:{}", self.host, self.namespace, self.model, self.tag)?;
        } else if self.namespace != DEFAULT_NAMESPACE {
            write!(f, "{}/{}:{}", self.namespace, self.model, self.tag)?;
        } else {
            write!(f, "{}:{}", self.model, self.tag)?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModelName({})", self.fully_qualified())
    }
}

impl FromStr for ModelName {
    type Err = Error;
    fn from_str(s: &str) -> Result<ModelName> {
        ModelName::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_display() {
        let n = ModelName::parse("llama3").unwrap();
        assert_eq!(n.fully_qualified(), "registry.ollama.ai/library/llama3:latest");
        assert_eq!(n.to_string(), "llama3:latest");
        let n = ModelName::parse("jmorgan/tiny:q4_0").unwrap();
        assert_eq!(n.to_string(), "jmorgan/tiny:q4_0");
        assert_eq!(n.repository(), "jmorgan/tiny");
        let n = ModelName::parse("localhost:5000/ns/m:1.0").unwrap();
        assert_eq!(n.host(), "localhost:5000");
        assert_eq!(n.tag(), "1.0");
        assert_eq!(n.to_string(), "localhost:5000/ns/m:1.0");
        let n = ModelName::parse("localhost:5000/ns/m").unwrap();
        assert_eq!(n.tag(), "latest");
        assert_eq!(n.manifest_rel_path(), PathBuf::from("manifests/localhost:5000/ns/m/latest"));
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let n = ModelName::parse(&format!("llama3.2:1b@{d}")).unwrap();
        assert_eq!(n.model(), "llama3.2");
        assert_eq!(n.digest().unwrap().to_string(), d);
    }

    #[test]
    fn refuses_bad_names() {
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "a/../b",
            "ns/../../m",
            "m:..",
            "m:../x",
            "a/b/c/d",
            "/abs",
            "m:",
            ":tag",
            "host//m",
            "m\0x",
            "ns\0/m",
            "m:ta\0g",
            "name with space",
            "-dash",
            ".hidden",
            "ns.dot/m",
            "m:t:t",
            "m@sha256:../../x",
            "m@",
            "a\\b",
        ] {
            assert!(ModelName::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = "m".repeat(81);
        assert!(ModelName::parse(&long).is_err());
        assert!(ModelName::parse(&"m".repeat(80)).is_ok());
    }

    /// Every part becomes a file name of the store: none may exceed 255 bytes (a host of
    /// 256-350 characters passed and every write failed with a 500), and a port must be a
    /// port (`:99999` passed and failed later as a registry error, a 502).
    #[test]
    fn parts_fit_a_file_name_and_ports_are_ports() {
        let host = "h".repeat(256);
        let e = ModelName::parse(&format!("{host}/n/m")).unwrap_err().to_string();
        assert!(e.contains("at most 255"), "{e}");
        assert!(ModelName::parse(&format!("{}/n/m", "h".repeat(255))).is_ok());
        assert!(ModelName::parse(&format!("{}/n/m", "a".repeat(350))).is_err());
        for bad in ["127.0.0.1:99999/x/y:z", "h:0/n/m", "h:/n/m", "h:1:2/n/m", "h:x1/n/m"] {
            let e = ModelName::parse(bad).map(|n| n.to_string()).unwrap_err().to_string();
            assert!(e.contains("port"), "{bad}: {e}");
        }
        assert_eq!(ModelName::parse("h:65535/n/m").unwrap().host(), "h:65535");
    }

    #[test]
    fn error_names_the_part() {
        let e = ModelName::parse("ns/mo\0del").unwrap_err().to_string();
        assert!(e.contains("model"), "{e}");
    }
}
