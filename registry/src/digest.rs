//! Content digests: `sha256:` + 64 lowercase hex characters, nothing else.
//!
//! A digest that arrives from outside (a manifest, an HTTP request, a file name) is
//! parsed by [`Digest::parse`] before it is used for anything; the blob file name is
//! derived only from a parsed digest, so the path traversal of CVE-2024-37032
//! (`sha256:../../etc/passwd`) cannot happen.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A validated sha256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`. Anything else is refused.
    pub fn parse(s: &str) -> Result<Digest> {
        let shown = || s.chars().take(100).collect::<String>();
        let hex_part = s.strip_prefix("sha256:").ok_or_else(|| Error::InvalidDigest {
            digest: shown(),
            reason: "must start with \"sha256:\"",
        })?;
        Self::from_hex(hex_part).map_err(|reason| Error::InvalidDigest { digest: shown(), reason })
    }

    /// Parses a blob file name `sha256-<hex>` (Ollama's on-disk form).
    pub fn from_blob_file_name(name: &str) -> Result<Digest> {
        let hex_part = name.strip_prefix("sha256-").ok_or(Error::InvalidDigest {
            digest: name.chars().take(100).collect(),
            reason: "blob file name must start with \"sha256-\"",
        })?;
        Self::from_hex(hex_part).map_err(|reason| Error::InvalidDigest {
            digest: name.chars().take(100).collect(),
            reason,
        })
    }

    fn from_hex(h: &str) -> std::result::Result<Digest, &'static str> {
        if h.len() != 64 {
            return Err("expected 64 hex characters after the algorithm");
        }
        if !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err("only lowercase hex characters 0-9 a-f are allowed");
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(h, &mut out).map_err(|_| "not valid hex")?;
        Ok(Digest(out))
    }

    /// The digest of `bytes`.
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    /// Builds a digest from a finished hasher.
    pub fn from_hasher(h: Sha256) -> Digest {
        Digest(h.finalize().into())
    }

    /// The 64 hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The blob file name in the store: `sha256-<hex>`.
    pub fn blob_file_name(&self) -> String {
        format!("sha256-{}", self.hex())
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex())
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_round_trips() {
        let d = Digest::parse(GOOD).unwrap();
        assert_eq!(d.to_string(), GOOD);
        assert_eq!(d, Digest::of_bytes(b""));
        assert_eq!(
            d.blob_file_name(),
            "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Digest::from_blob_file_name(&d.blob_file_name()).unwrap(), d);
    }

    #[test]
    fn refuses_bad_digests() {
        for bad in [
            "",
            "sha256:",
            "sha256:../../../../etc/passwd",
            "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85/",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852\0855",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Digest::from_blob_file_name("sha256-../x").is_err());
    }

    #[test]
    fn serde_validates() {
        let ok: Digest = serde_json::from_str(&format!("\"{GOOD}\"")).unwrap();
        assert_eq!(ok.to_string(), GOOD);
        assert!(serde_json::from_str::<Digest>("\"sha256:../../x\"").is_err());
    }
}
