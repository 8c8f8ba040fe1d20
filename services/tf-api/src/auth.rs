//! Bearer tokens with scopes. Tokens are configured by their SHA-256 (`tf-api hash-token`),
//! never in clear: a file named by `TF_API_TOKENS` and/or `TF_API_TOKEN__<NAME>` variables
//! (`<scope>,<scope>:<sha256 hex>`). A missing or unknown token is 401, a known one without the
//! scope 403.

use std::path::Path;

use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Definitions, runs.
    Read,
    /// Apply and retire definitions.
    Write,
    /// Send events.
    Ingest,
    /// Human tasks.
    Tasks,
}

impl Scope {
    fn parse(s: &str) -> Option<Scope> {
        Some(match s.trim() {
            "read" => Scope::Read,
            "write" => Scope::Write,
            "ingest" => Scope::Ingest,
            "tasks" => Scope::Tasks,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Ingest => "ingest",
            Scope::Tasks => "tasks",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenDoc {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
}

#[derive(Debug, Clone)]
struct Token {
    name: String,
    hash: [u8; 32],
    scopes: Vec<Scope>,
}

/// Who made a request: the token's name, for the log of every change.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: String,
}

#[derive(Debug, Clone, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

pub fn hash(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(origin: &str, hex: &str) -> Result<[u8; 32], TokenConfigError> {
    let invalid =
        || TokenConfigError::Invalid { origin: origin.to_string(), message: "sha256 must be 64 hex digits (tf-api hash-token)".into() };
    let hex = hex.trim();
    if hex.len() != 64 {
        return Err(invalid());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(out)
}

impl Tokens {
    pub fn load(file: Option<&Path>, vars: impl IntoIterator<Item = (String, String)>) -> Result<Tokens, TokenConfigError> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| TokenConfigError::Read { path: shown.clone(), source })?;
            let docs: Vec<TokenDoc> =
                yaml_serde::from_str(&text).map_err(|e| TokenConfigError::Invalid { origin: shown.clone(), message: e.to_string() })?;
            for d in docs {
                tokens.push(Token { hash: parse_hash(&format!("{shown}: token {}", d.name), &d.sha256)?, name: d.name, scopes: d.scopes });
            }
        }
        for (key, value) in vars {
            let Some(name) = key.strip_prefix("TF_API_TOKEN__") else { continue };
            let invalid = |message: &str| TokenConfigError::Invalid { origin: key.clone(), message: message.into() };
            let (scopes, hex) = value.rsplit_once(':').ok_or_else(|| invalid("expected <scope>,<scope>:<sha256 hex>"))?;
            let scopes = scopes
                .split(',')
                .map(|s| Scope::parse(s).ok_or_else(|| invalid("scopes are read, write, ingest, tasks")))
                .collect::<Result<Vec<_>, _>>()?;
            tokens.push(Token { name: name.to_ascii_lowercase(), hash: parse_hash(&key, hex)?, scopes });
        }
        Ok(Tokens { tokens })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The caller, if the request's bearer token is known and has `scope`.
    pub fn require(&self, headers: &HeaderMap, scope: Scope) -> Result<Caller, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .ok_or_else(|| unauthorized("an Authorization: Bearer <token> header is required"))?;
        let token = self.find(presented).ok_or_else(|| unauthorized("unknown token"))?;
        if !token.scopes.contains(&scope) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("token {} lacks the {} scope", token.name, scope.as_str()),
            ));
        }
        Ok(Caller { token: token.name.clone() })
    }
}

impl Tokens {
    fn find(&self, presented: &str) -> Option<&Token> {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Compare with every token, without stopping early, so timing says nothing about which
        // (or how much of one) matched.
        let mut found: Option<&Token> = None;
        for t in &self.tokens {
            if constant_time_eq(&t.hash, &digest) {
                found = Some(t);
            }
        }
        found
    }

    /// The name of a known token (the console's sign-in).
    pub fn name_of(&self, presented: &str) -> Option<String> {
        self.find(presented).map(|t| t.name.clone())
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(token: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = token {
            h.insert(axum::http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        }
        h
    }

    #[test]
    fn known_tokens_with_the_scope_pass_others_get_401_or_403() {
        let tokens = Tokens::load(
            None,
            [("TF_API_TOKEN__CI".to_string(), format!("read,ingest:{}", hash("s3cret-ci"))), ("HOME".into(), "/root".into())],
        )
        .unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens.require(&headers(Some("s3cret-ci")), Scope::Read).unwrap().token, "ci");
        assert_eq!(tokens.require(&headers(Some("s3cret-ci")), Scope::Write).unwrap_err().status, StatusCode::FORBIDDEN);
        assert_eq!(tokens.require(&headers(Some("guess")), Scope::Read).unwrap_err().status, StatusCode::UNAUTHORIZED);
        assert_eq!(tokens.require(&headers(None), Scope::Read).unwrap_err().status, StatusCode::UNAUTHORIZED);
        let bad = Tokens::load(None, [("TF_API_TOKEN__X".to_string(), "admin:00".to_string())]).unwrap_err().to_string();
        assert!(bad.contains("scopes are read, write, ingest, tasks"), "{bad}");
        let short = Tokens::load(None, [("TF_API_TOKEN__X".to_string(), "read:abc".to_string())]).unwrap_err().to_string();
        assert!(short.contains("64 hex digits"), "{short}");
    }
}
