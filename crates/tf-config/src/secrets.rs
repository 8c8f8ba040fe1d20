//! Secrets, by name. Definitions and datasources refer to them (`secret('crm_token')` in CEL,
//! `${secret:crm_token}` in datasource values); only the worker reads their values, at the
//! moment a request is sent, from `TF_SECRET_<NAME>` variables or from files named after the
//! secret in `TF_SECRETS_DIR` (a Kubernetes secret mount; read on every use, so a rotated value
//! is picked up). Values never travel into Temporal history, the database or the results topic:
//! what is stored is the reference, and [`Secrets::redact`] masks any value that comes back (an
//! API echoing a header, an error quoting a URL) as `***`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::RwLock;

/// Prefix of secret variables: `TF_SECRET_CRM_TOKEN` holds `crm_token`.
pub const VAR_PREFIX: &str = "TF_SECRET_";
/// Directory of one file per secret.
pub const DIR_VAR: &str = "TF_SECRETS_DIR";
/// What a reference looks like inside a stored value.
pub const REF_OPEN: &str = "${secret:";
/// Shorter values are not masked: masking every "a" in every output would garble it, and a
/// secret that short protects nothing.
pub const MIN_REDACTED_LEN: usize = 4;
pub const MASK: &str = "***";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret {0:?} is not set (TF_SECRET_{upper} or a file {0} in TF_SECRETS_DIR)", upper = .0.to_ascii_uppercase())]
    Missing(String),
    #[error("{0:?} is not a secret name (a-z, 0-9, '_', '-', '.')")]
    BadName(String),
    #[error("an unterminated ${{secret:...}} reference")]
    Unterminated,
}

pub struct Secrets {
    vars: Vec<(String, String)>,
    dir: Option<PathBuf>,
    /// Every value handed out so far, for redaction.
    seen: RwLock<BTreeSet<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} from variables, dir {:?})", self.vars.len(), self.dir)
    }
}

pub use tf_definitions::expr::valid_secret_name as valid_name;

/// The names of the secrets `text` refers to (`${secret:name}`), in order.
pub fn referenced(text: &str) -> impl Iterator<Item = &str> {
    text.split(REF_OPEN).skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name))
}

impl Secrets {
    pub fn from_env() -> Secrets {
        Secrets::new(std::env::vars(), std::env::var_os(DIR_VAR).map(PathBuf::from))
    }

    pub fn new(vars: impl IntoIterator<Item = (String, String)>, dir: Option<PathBuf>) -> Secrets {
        let vars: Vec<(String, String)> =
            vars.into_iter().filter_map(|(k, v)| k.strip_prefix(VAR_PREFIX).map(|n| (n.to_ascii_lowercase(), v))).collect();
        let seen = vars.iter().map(|(_, v)| v.clone()).filter(|v| v.len() >= MIN_REDACTED_LEN).collect();
        Secrets { vars, dir, seen: RwLock::new(seen) }
    }

    /// The current value of a secret.
    pub fn get(&self, name: &str) -> Result<String, SecretError> {
        if !valid_name(name) {
            return Err(SecretError::BadName(name.to_string()));
        }
        let from_var = self.vars.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let value = match from_var {
            Some(v) => v,
            None => {
                let file = self.dir.as_ref().map(|d| d.join(name)).ok_or_else(|| SecretError::Missing(name.to_string()))?;
                // Kubernetes and editors end files with a newline the secret does not have.
                std::fs::read_to_string(file)
                    .map_err(|_| SecretError::Missing(name.to_string()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string()
            }
        };
        self.remember(&value);
        Ok(value)
    }

    /// Masks `value` in everything redacted from now on (a password inside a datasource URL).
    pub fn remember(&self, value: &str) {
        if value.len() >= MIN_REDACTED_LEN && !self.seen.read().expect("secrets lock").contains(value) {
            self.seen.write().expect("secrets lock").insert(value.to_string());
        }
    }

    /// Replaces every `${secret:name}` in `text` with the secret's value.
    pub fn expand(&self, text: &str) -> Result<String, SecretError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find(REF_OPEN) {
            out.push_str(&rest[..i]);
            let after = &rest[i + REF_OPEN.len()..];
            let end = after.find('}').ok_or(SecretError::Unterminated)?;
            out.push_str(&self.get(&after[..end])?);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// `text` with every secret value handed out so far replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let seen = self.seen.read().expect("secrets lock");
        // Longest first, so a secret containing another is masked whole.
        let mut values: Vec<&String> = seen.iter().filter(|v| text.contains(v.as_str())).collect();
        if values.is_empty() {
            return text.to_string();
        }
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for v in values {
            out = out.replace(v.as_str(), MASK);
        }
        out
    }

    /// Redacts every string (and object key) of a JSON value in place.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(s) => {
                let r = self.redact(s);
                if r != *s {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            Value::Object(map) => {
                let old = std::mem::take(map);
                for (k, mut v) in old {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&k), v);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_and_files_expand_and_come_back_masked() {
        let dir = std::env::temp_dir().join(format!("tf-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("crm_token"), "tok-from-file\n").unwrap();
        let s = Secrets::new([("TF_SECRET_DB_PASSWORD".to_string(), "hunter22".to_string()), ("HOME".into(), "/root".into())], Some(dir));
        assert_eq!(s.expand("Bearer ${secret:crm_token}; ${secret:db_password}").unwrap(), "Bearer tok-from-file; hunter22");
        assert_eq!(s.redact("echo: Bearer tok-from-file and hunter22!"), "echo: Bearer *** and ***!");
        let mut j = serde_json::json!({"headers": {"authorization": "Bearer tok-from-file"}, "hunter22": [1, "x hunter22"]});
        s.redact_json(&mut j);
        assert_eq!(j, serde_json::json!({"headers": {"authorization": "Bearer ***"}, "***": [1, "x ***"]}));
        assert_eq!(
            s.expand("${secret:nope}").unwrap_err().to_string(),
            "secret \"nope\" is not set (TF_SECRET_NOPE or a file nope in TF_SECRETS_DIR)"
        );
        assert_eq!(s.expand("${secret:../etc/passwd}").unwrap_err(), SecretError::BadName("../etc/passwd".into()));
        assert_eq!(s.expand("${secret:open").unwrap_err(), SecretError::Unterminated);
        assert_eq!(s.expand("no references").unwrap(), "no references");
    }
}
