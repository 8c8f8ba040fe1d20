//! How every component reaches Temporal beyond its URL and namespace: TLS with the server's CA,
//! mTLS with a client certificate and key, and an API key (Temporal Cloud), from `TF_TEMPORAL_*`
//! variables. The API key may be a `${secret:name}` reference.

use crate::secrets::{SecretError, Secrets};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemporalTls {
    /// PEM of the CA that signed the server's certificate (the system's roots when absent).
    pub server_ca: Option<Vec<u8>>,
    /// The name to check the server's certificate against (the URL's host when absent).
    pub domain: Option<String>,
    /// PEM certificate and key for mTLS.
    pub client_cert_and_key: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemporalAccess {
    pub tls: Option<TemporalTls>,
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemporalAccessError {
    #[error("{var}: cannot read {path}: {reason}")]
    File { var: &'static str, path: String, reason: String },
    #[error("TF_TEMPORAL_TLS_CERT and TF_TEMPORAL_TLS_KEY go together (mTLS needs both)")]
    HalfClientCert,
    #[error("TF_TEMPORAL_TLS: {0:?} is not true or false")]
    NotABool(String),
    #[error("TF_TEMPORAL_API_KEY: {0}")]
    Secret(SecretError),
}

pub fn from_env() -> Result<TemporalAccess, TemporalAccessError> {
    load(std::env::vars(), &Secrets::from_env())
}

pub fn load(vars: impl IntoIterator<Item = (String, String)>, secrets: &Secrets) -> Result<TemporalAccess, TemporalAccessError> {
    let vars: std::collections::HashMap<String, String> = vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let read = |var: &'static str| -> Result<Option<Vec<u8>>, TemporalAccessError> {
        vars.get(var)
            .map(|path| std::fs::read(path).map_err(|e| TemporalAccessError::File { var, path: path.clone(), reason: e.to_string() }))
            .transpose()
    };
    let server_ca = read("TF_TEMPORAL_TLS_CA")?;
    let client = match (read("TF_TEMPORAL_TLS_CERT")?, read("TF_TEMPORAL_TLS_KEY")?) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err(TemporalAccessError::HalfClientCert),
    };
    let domain = vars.get("TF_TEMPORAL_TLS_DOMAIN").cloned();
    let asked = match vars.get("TF_TEMPORAL_TLS").map(|v| v.to_ascii_lowercase()) {
        None => None,
        Some(v) if v == "true" || v == "1" => Some(true),
        Some(v) if v == "false" || v == "0" => Some(false),
        Some(v) => return Err(TemporalAccessError::NotABool(v)),
    };
    let any = server_ca.is_some() || client.is_some() || domain.is_some();
    let tls = (asked.unwrap_or(any)).then_some(TemporalTls { server_ca, domain, client_cert_and_key: client });
    let api_key = vars.get("TF_TEMPORAL_API_KEY").map(|k| secrets.expand(k)).transpose().map_err(TemporalAccessError::Secret)?;
    Ok(TemporalAccess { tls, api_key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vars as vars;

    #[test]
    fn plaintext_unless_tls_is_configured() {
        let none = Secrets::new(Vec::new(), None);
        assert_eq!(load(vars(&[]), &none).unwrap(), TemporalAccess::default());
        let on = load(vars(&[("TF_TEMPORAL_TLS", "true")]), &none).unwrap();
        assert_eq!(on.tls, Some(TemporalTls::default()), "system roots");
        let dir = std::env::temp_dir().join(format!("tf-temporal-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "CA").unwrap();
        let ca = dir.join("ca.pem").display().to_string();
        let with_ca = load(vars(&[("TF_TEMPORAL_TLS_CA", &ca), ("TF_TEMPORAL_TLS_DOMAIN", "localhost")]), &none).unwrap();
        assert_eq!(
            with_ca.tls.unwrap(),
            TemporalTls { server_ca: Some(b"CA".to_vec()), domain: Some("localhost".into()), client_cert_and_key: None }
        );
        let secrets = Secrets::new(vars(&[("TF_SECRET_TEMPORAL_KEY", "k-123456")]), None);
        assert_eq!(
            load(vars(&[("TF_TEMPORAL_API_KEY", "${secret:temporal_key}")]), &secrets).unwrap().api_key.as_deref(),
            Some("k-123456")
        );
    }

    #[test]
    fn bad_settings_are_named() {
        let none = Secrets::new(Vec::new(), None);
        let e = load(vars(&[("TF_TEMPORAL_TLS_CERT", "/etc/hostname")]), &none).unwrap_err();
        assert_eq!(e, TemporalAccessError::HalfClientCert);
        let e = load(vars(&[("TF_TEMPORAL_TLS_CA", "/no/ca.pem")]), &none).unwrap_err();
        assert!(e.to_string().starts_with("TF_TEMPORAL_TLS_CA: cannot read /no/ca.pem"), "{e}");
        assert!(load(vars(&[("TF_TEMPORAL_TLS", "yes")]), &none).unwrap_err().to_string().contains("\"yes\" is not true or false"));
        assert!(
            load(vars(&[("TF_TEMPORAL_API_KEY", "${secret:nope}")]), &none)
                .unwrap_err()
                .to_string()
                .starts_with("TF_TEMPORAL_API_KEY: secret")
        );
    }
}
