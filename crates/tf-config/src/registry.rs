//! Credentials for the schema registry: HTTP basic (`TF_SCHEMA_REGISTRY_USER` and
//! `TF_SCHEMA_REGISTRY_PASSWORD`, as Confluent's and Apicurio's basic-auth setups take them) or
//! a bearer token (`TF_SCHEMA_REGISTRY_TOKEN`). Password and token may be `${secret:name}`.

use crate::secrets::{SecretError, Secrets};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryAuthError {
    #[error("TF_SCHEMA_REGISTRY_USER and TF_SCHEMA_REGISTRY_PASSWORD go together")]
    HalfBasic,
    #[error("set either TF_SCHEMA_REGISTRY_USER/PASSWORD or TF_SCHEMA_REGISTRY_TOKEN, not both")]
    Both,
    #[error("{var}: {error}")]
    Secret { var: &'static str, error: SecretError },
}

pub fn from_env() -> Result<RegistryAuth, RegistryAuthError> {
    load(std::env::vars(), &Secrets::from_env())
}

pub fn load(vars: impl IntoIterator<Item = (String, String)>, secrets: &Secrets) -> Result<RegistryAuth, RegistryAuthError> {
    let vars: std::collections::HashMap<String, String> = vars.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let expand =
        |var: &'static str| vars.get(var).map(|v| secrets.expand(v)).transpose().map_err(|error| RegistryAuthError::Secret { var, error });
    let (user, password, token) =
        (vars.get("TF_SCHEMA_REGISTRY_USER").cloned(), expand("TF_SCHEMA_REGISTRY_PASSWORD")?, expand("TF_SCHEMA_REGISTRY_TOKEN")?);
    match (user, password, token) {
        (None, None, None) => Ok(RegistryAuth::None),
        (None, None, Some(t)) => Ok(RegistryAuth::Bearer(t)),
        (Some(user), Some(password), None) => Ok(RegistryAuth::Basic { user, password }),
        (_, _, Some(_)) => Err(RegistryAuthError::Both),
        _ => Err(RegistryAuthError::HalfBasic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vars as vars;

    #[test]
    fn basic_bearer_or_none_and_mistakes_are_named() {
        let secrets = Secrets::new(vars(&[("TF_SECRET_REGISTRY_PW", "pw-12345")]), None);
        assert_eq!(load(vars(&[]), &secrets).unwrap(), RegistryAuth::None);
        assert_eq!(
            load(vars(&[("TF_SCHEMA_REGISTRY_USER", "tf"), ("TF_SCHEMA_REGISTRY_PASSWORD", "${secret:registry_pw}")]), &secrets).unwrap(),
            RegistryAuth::Basic { user: "tf".into(), password: "pw-12345".into() }
        );
        assert_eq!(load(vars(&[("TF_SCHEMA_REGISTRY_TOKEN", "t-1")]), &secrets).unwrap(), RegistryAuth::Bearer("t-1".into()));
        assert_eq!(load(vars(&[("TF_SCHEMA_REGISTRY_USER", "tf")]), &secrets).unwrap_err(), RegistryAuthError::HalfBasic);
        assert_eq!(
            load(
                vars(&[("TF_SCHEMA_REGISTRY_USER", "tf"), ("TF_SCHEMA_REGISTRY_PASSWORD", "p"), ("TF_SCHEMA_REGISTRY_TOKEN", "t")]),
                &secrets
            )
            .unwrap_err(),
            RegistryAuthError::Both
        );
        let e = load(vars(&[("TF_SCHEMA_REGISTRY_TOKEN", "${secret:nope}")]), &secrets).unwrap_err();
        assert!(e.to_string().starts_with("TF_SCHEMA_REGISTRY_TOKEN: secret \"nope\""), "{e}");
    }
}
