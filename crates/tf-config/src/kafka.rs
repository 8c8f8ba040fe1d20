//! Extra librdkafka properties for every Kafka client of the task factory (router, worker,
//! relay, API, CLI, load test): TLS, SASL and anything else librdkafka takes. From a
//! Java-style properties file named by `TF_KAFKA_PROPERTIES` and from `TF_KAFKA__<PROPERTY>`
//! variables (`TF_KAFKA__SASL_MECHANISMS` is `sasl.mechanisms`: lower case, `_` for `.`), a
//! variable winning over the file. Values may hold `${secret:name}` references (a SASL
//! password), resolved like a datasource's.

use std::collections::BTreeMap;

use crate::secrets::{SecretError, Secrets};

pub const FILE_VAR: &str = "TF_KAFKA_PROPERTIES";
pub const VAR_PREFIX: &str = "TF_KAFKA__";

/// Set from `TF_KAFKA_BROKERS` and by each client for its role.
const RESERVED: [&str; 1] = ["bootstrap.servers"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaPropertiesError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{origin}: {error}")]
    Secret { origin: String, error: SecretError },
    #[error("{origin}: {property} comes from TF_KAFKA_BROKERS, not from extra properties")]
    Reserved { origin: String, property: String },
}

/// The properties the environment configures, sorted by name.
pub fn from_env() -> Result<Vec<(String, String)>, KafkaPropertiesError> {
    load(std::env::vars(), &Secrets::from_env())
}

pub fn load(vars: impl IntoIterator<Item = (String, String)>, secrets: &Secrets) -> Result<Vec<(String, String)>, KafkaPropertiesError> {
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    // (value, where it came from)
    let mut props: BTreeMap<String, (String, String)> = BTreeMap::new();
    if let Some((_, path)) = vars.iter().find(|(k, v)| k == FILE_VAR && !v.is_empty()) {
        let text = std::fs::read_to_string(path).map_err(|e| KafkaPropertiesError::File { path: path.clone(), reason: e.to_string() })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(KafkaPropertiesError::File {
                    path: path.clone(),
                    reason: format!("line {}: expected property=value, got {line:?}", n + 1),
                });
            };
            props.insert(key.trim().to_string(), (value.trim().to_string(), format!("{path}:{}", n + 1)));
        }
    }
    for (key, value) in &vars {
        if let Some(name) = key.strip_prefix(VAR_PREFIX).filter(|n| !n.is_empty()) {
            props.insert(name.to_ascii_lowercase().replace('_', "."), (value.clone(), key.clone()));
        }
    }
    props
        .into_iter()
        .map(|(property, (value, origin))| {
            if RESERVED.contains(&property.as_str()) {
                return Err(KafkaPropertiesError::Reserved { origin, property });
            }
            let value = secrets.expand(&value).map_err(|error| KafkaPropertiesError::Secret { origin, error })?;
            Ok((property, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vars as vars;

    #[test]
    fn variables_name_properties_and_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("tf-kafka-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("client.properties");
        std::fs::write(&file, "# TLS\nsecurity.protocol = SSL\nssl.ca.location=/etc/ca.pem\n\nsasl.mechanisms=PLAIN\n").unwrap();
        let secrets = Secrets::new(vars(&[("TF_SECRET_KAFKA_PASSWORD", "s3cret-pw")]), None);
        let got = load(
            vars(&[
                ("TF_KAFKA_PROPERTIES", file.to_str().unwrap()),
                ("TF_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
                ("TF_KAFKA__SASL_PASSWORD", "${secret:kafka_password}"),
                ("TF_KAFKA_BROKERS", "ignored:9092"),
            ]),
            &secrets,
        )
        .unwrap();
        assert_eq!(
            got,
            vars(&[
                ("sasl.mechanisms", "PLAIN"),
                ("sasl.password", "s3cret-pw"),
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", "/etc/ca.pem"),
            ])
        );
    }

    #[test]
    fn bad_input_is_named() {
        let none = Secrets::new(Vec::new(), None);
        let e = load(vars(&[("TF_KAFKA__BOOTSTRAP_SERVERS", "x:1")]), &none).unwrap_err();
        assert!(e.to_string().contains("TF_KAFKA__BOOTSTRAP_SERVERS: bootstrap.servers comes from TF_KAFKA_BROKERS"), "{e}");
        let e = load(vars(&[("TF_KAFKA__SASL_PASSWORD", "${secret:nope}")]), &none).unwrap_err();
        assert!(e.to_string().starts_with("TF_KAFKA__SASL_PASSWORD: secret \"nope\" is not set"), "{e}");
        let e = load(vars(&[("TF_KAFKA_PROPERTIES", "/no/such/file")]), &none).unwrap_err();
        assert!(e.to_string().starts_with("/no/such/file: "), "{e}");
        let dir = std::env::temp_dir().join(format!("tf-kafka-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("bad.properties");
        std::fs::write(&file, "security.protocol SSL\n").unwrap();
        let e = load(vars(&[("TF_KAFKA_PROPERTIES", file.to_str().unwrap())]), &none).unwrap_err();
        assert!(e.to_string().contains("line 1: expected property=value"), "{e}");
    }
}
