//! Named datasources: the user's own systems that `sql` and `http` context sources (and `http`
//! tasks) reach by name. The operator configures them, never a definition: a YAML file named by
//! `TF_DATASOURCES` and/or `TF_DATASOURCE__<NAME>__<FIELD>` variables (a variable wins over the
//! file's field). Values may refer to secrets as `${secret:name}`, expanded where they are used.
//!
//! ```yaml
//! orders:
//!   postgres:            # or mysql: (MySQL and MariaDB), with the same fields
//!     url: postgres://orders_reader:${secret:orders_db_password}@db.internal:5432/orders
//!     statement_timeout: 5s
//! crm:
//!   http:
//!     base_url: https://crm.example.com/api/
//!     headers: {Authorization: "Bearer ${secret:crm_token}"}
//!     timeout: 10s
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// The environment variable naming the datasources file.
pub const FILE_VAR: &str = "TF_DATASOURCES";
/// Prefix of per-field variables: `TF_DATASOURCE__ORDERS__URL`.
pub const VAR_PREFIX: &str = "TF_DATASOURCE__";

#[derive(Debug, Clone, PartialEq)]
pub enum Datasource {
    Postgres(SqlDatasource),
    /// MySQL or MariaDB.
    Mysql(SqlDatasource),
    Http(HttpDatasource),
}

impl Datasource {
    pub fn kind(&self) -> &'static str {
        match self {
            Datasource::Postgres(_) => "postgres",
            Datasource::Mysql(_) => "mysql",
            Datasource::Http(_) => "http",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqlDatasource {
    /// May hold `${secret:name}` references.
    pub url: String,
    /// PostgreSQL `statement_timeout` of every query.
    pub statement_timeout: Duration,
    pub connect_timeout: Duration,
    pub max_connections: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpDatasource {
    /// Paths of sources and tasks are appended to it.
    pub base_url: String,
    /// Sent with every call; values may hold `${secret:name}` references.
    pub headers: BTreeMap<String, String>,
    pub timeout: Duration,
    /// Hosts calls through this datasource may reach, even when they resolve to internal
    /// addresses (the operator named them). Default: the base URL's host.
    pub allowed_hosts: Vec<String>,
    /// Secrets a definition's `secret()` may send through this datasource. Default: those its
    /// own base URL and headers refer to; other secrets (Kafka, registry, another datasource's)
    /// are refused.
    pub secrets: Vec<String>,
}

/// Every configured datasource by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Datasources {
    by_name: BTreeMap<String, Datasource>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error("cannot read the datasources file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4;
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryDoc {
    postgres: Option<SqlDoc>,
    mysql: Option<SqlDoc>,
    http: Option<HttpDoc>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlDoc {
    url: Option<String>,
    statement_timeout: Option<String>,
    connect_timeout: Option<String>,
    max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpDoc {
    base_url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    timeout: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    secrets: Option<Vec<String>>,
}

impl EntryDoc {
    /// The SQL entry a timeout variable refers to: the MySQL one when the entry is MySQL.
    fn sql(&mut self) -> &mut SqlDoc {
        match &mut self.mysql {
            Some(mysql) => mysql,
            None => self.postgres.get_or_insert_with(Default::default),
        }
    }
}

impl Datasources {
    /// From `TF_DATASOURCES` and `TF_DATASOURCE__*` of this process.
    pub fn from_env() -> Result<Datasources, DatasourceError> {
        let file = std::env::var(FILE_VAR).ok().filter(|f| !f.trim().is_empty());
        Datasources::load(file.as_deref().map(Path::new), std::env::vars())
    }

    /// Whether this process can see a datasource configuration at all (the CLI checks names
    /// only then).
    pub fn configured_in_env() -> bool {
        std::env::vars().any(|(k, _)| k == FILE_VAR || k.starts_with(VAR_PREFIX))
    }

    pub fn load(file: Option<&Path>, vars: impl IntoIterator<Item = (String, String)>) -> Result<Datasources, DatasourceError> {
        let mut docs: BTreeMap<String, EntryDoc> = match file {
            None => BTreeMap::new(),
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| DatasourceError::Read { path: shown.clone(), source })?;
                if text.trim().is_empty() {
                    BTreeMap::new()
                } else {
                    yaml_serde::from_str(&text).map_err(|e| DatasourceError::Invalid { origin: shown, message: e.to_string() })?
                }
            }
        };
        // URLs first: they decide an entry's kind, which the other fields then follow.
        let mut vars: Vec<(String, String)> = vars.into_iter().filter(|(k, _)| k.starts_with(VAR_PREFIX)).collect();
        vars.sort_by_key(|(k, _)| !k.ends_with("__URL"));
        for (key, value) in vars {
            let Some(rest) = key.strip_prefix(VAR_PREFIX) else { continue };
            let invalid = |message: String| DatasourceError::Invalid { origin: key.clone(), message };
            let Some((name, field)) = rest.split_once("__") else {
                return Err(invalid("expected TF_DATASOURCE__<NAME>__<FIELD>".into()));
            };
            let name = name.to_ascii_lowercase();
            let entry = docs.entry(name).or_default();
            match field {
                "URL" => {
                    let scheme = value.split_once("://").map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
                    match scheme.as_str() {
                        "postgres" | "postgresql" => entry.postgres.get_or_insert_with(Default::default).url = Some(value),
                        "http" | "https" => entry.http.get_or_insert_with(Default::default).base_url = Some(value),
                        "mysql" | "mariadb" => entry.mysql.get_or_insert_with(Default::default).url = Some(value),
                        _ => return Err(invalid("the URL must start with postgres://, mysql://, http:// or https://".into())),
                    }
                }
                "STATEMENT_TIMEOUT" => entry.sql().statement_timeout = Some(value),
                "CONNECT_TIMEOUT" => entry.sql().connect_timeout = Some(value),
                "MAX_CONNECTIONS" => {
                    entry.sql().max_connections = Some(value.parse().map_err(|_| invalid(format!("{value:?} is not a number")))?);
                }
                "TIMEOUT" => entry.http.get_or_insert_with(Default::default).timeout = Some(value),
                "ALLOWED_HOSTS" => {
                    entry.http.get_or_insert_with(Default::default).allowed_hosts =
                        Some(value.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect());
                }
                "SECRETS" => {
                    entry.http.get_or_insert_with(Default::default).secrets =
                        Some(value.split(',').map(|h| h.trim().to_string()).filter(|h| !h.is_empty()).collect());
                }
                other => {
                    if let Some(header) = other.strip_prefix("HEADER__") {
                        let header = header.replace('_', "-").to_ascii_lowercase();
                        entry.http.get_or_insert_with(Default::default).headers.insert(header, value);
                    } else {
                        return Err(invalid(format!(
                            "unknown field {other}; use URL, STATEMENT_TIMEOUT, CONNECT_TIMEOUT, MAX_CONNECTIONS, TIMEOUT, ALLOWED_HOSTS, SECRETS or HEADER__<NAME>"
                        )));
                    }
                }
            }
        }
        let mut by_name = BTreeMap::new();
        for (name, doc) in docs {
            let origin = format!("datasource {name}");
            let invalid = |message: String| DatasourceError::Invalid { origin: origin.clone(), message };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                return Err(invalid("names are a-z, 0-9 and '_'".into()));
            }
            let duration = |field: &str, text: Option<String>, default: Duration| match text {
                None => Ok(default),
                Some(t) => tf_definitions::duration::parse(&t).map_err(|e| invalid(format!("{field}: {e}"))),
            };
            let sql = |kind: &str, p: SqlDoc| -> Result<SqlDatasource, DatasourceError> {
                Ok(SqlDatasource {
                    url: p.url.ok_or_else(|| invalid(format!("{kind}.url is required")))?,
                    statement_timeout: duration("statement_timeout", p.statement_timeout, DEFAULT_STATEMENT_TIMEOUT)?,
                    connect_timeout: duration("connect_timeout", p.connect_timeout, DEFAULT_CONNECT_TIMEOUT)?,
                    max_connections: p.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS).max(1),
                })
            };
            let source = match doc {
                EntryDoc { postgres: Some(p), mysql: None, http: None } => Datasource::Postgres(sql("postgres", p)?),
                EntryDoc { postgres: None, mysql: Some(m), http: None } => Datasource::Mysql(sql("mysql", m)?),
                EntryDoc { postgres: None, mysql: None, http: Some(h) } => {
                    let base_url = h.base_url.ok_or_else(|| invalid("http.base_url is required".into()))?;
                    let parsed = url::Url::parse(&base_url).map_err(|e| invalid(format!("http.base_url: {e}")))?;
                    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                        return Err(invalid("http.base_url must be an http:// or https:// URL with a host".into()));
                    }
                    let host = parsed.host_str().unwrap_or_default().trim_matches(['[', ']']).to_ascii_lowercase();
                    let own_secrets = || {
                        let mut names: Vec<String> = std::iter::once(base_url.as_str())
                            .chain(h.headers.values().map(String::as_str))
                            .flat_map(crate::secrets::referenced)
                            .map(str::to_string)
                            .collect();
                        names.sort();
                        names.dedup();
                        names
                    };
                    let secrets = h.secrets.clone().unwrap_or_else(own_secrets);
                    Datasource::Http(HttpDatasource {
                        timeout: duration("timeout", h.timeout, DEFAULT_HTTP_TIMEOUT)?,
                        allowed_hosts: h.allowed_hosts.unwrap_or_else(|| vec![host]),
                        secrets,
                        base_url,
                        headers: h.headers,
                    })
                }
                _ => return Err(invalid("needs exactly one of postgres, mysql or http".into())),
            };
            by_name.insert(name, source);
        }
        Ok(Datasources { by_name })
    }

    pub fn get(&self, name: &str) -> Option<&Datasource> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Datasource)> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// "orders (postgres), crm (http)" or "none", for errors that list what exists.
    pub fn describe(&self) -> String {
        if self.by_name.is_empty() {
            return "none are configured (TF_DATASOURCES or TF_DATASOURCE__<NAME>__URL)".into();
        }
        self.by_name.iter().map(|(n, d)| format!("{n} ({})", d.kind())).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_vars as vars;

    #[test]
    fn an_http_datasource_carries_the_secrets_it_refers_to_or_those_listed() {
        let ds = Datasources::load(
            None,
            vars(&[
                ("TF_DATASOURCE__CRM__URL", "https://crm.example/api/"),
                ("TF_DATASOURCE__CRM__HEADER__AUTHORIZATION", "Bearer ${secret:crm_token} ${secret:crm_extra}"),
                ("TF_DATASOURCE__PLAIN__URL", "https://plain.example/"),
                ("TF_DATASOURCE__LISTED__URL", "https://listed.example/"),
                ("TF_DATASOURCE__LISTED__SECRETS", "a, b"),
            ]),
        )
        .unwrap();
        let secrets = |n: &str| match ds.get(n) {
            Some(Datasource::Http(h)) => h.secrets.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(secrets("crm"), ["crm_extra", "crm_token"]);
        assert!(secrets("plain").is_empty(), "none by default when it refers to none");
        assert_eq!(secrets("listed"), ["a", "b"]);
    }

    #[test]
    fn a_file_and_variables_combine_and_variables_win() {
        let dir = std::env::temp_dir().join(format!("tf-ds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("ds.yaml");
        std::fs::write(
            &file,
            "orders:\n  postgres:\n    url: postgres://r@h/orders\n    statement_timeout: 2s\ncrm:\n  http:\n    base_url: http://crm.local:8080/api/\n    headers: {Authorization: 'Bearer ${secret:crm_token}'}\n",
        )
        .unwrap();
        let ds = Datasources::load(
            Some(&file),
            vars(&[
                ("TF_DATASOURCE__ORDERS__MAX_CONNECTIONS", "2"),
                ("TF_DATASOURCE__BILLING__URL", "https://billing.example.com"),
                ("TF_DATASOURCE__BILLING__HEADER__X_API_KEY", "${secret:billing}"),
                ("TF_DATASOURCE__SHOP__STATEMENT_TIMEOUT", "3s"),
                ("TF_DATASOURCE__SHOP__URL", "mysql://reader@h/shop"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(ds.names().collect::<Vec<_>>(), ["billing", "crm", "orders", "shop"]);
        let Some(Datasource::Mysql(shop)) = ds.get("shop") else { panic!("{ds:?}") };
        assert_eq!(shop.statement_timeout, Duration::from_secs(3));
        let Some(Datasource::Postgres(orders)) = ds.get("orders") else { panic!("{ds:?}") };
        assert_eq!((orders.statement_timeout, orders.max_connections), (Duration::from_secs(2), 2));
        let Some(Datasource::Http(crm)) = ds.get("crm") else { panic!() };
        assert_eq!(crm.allowed_hosts, ["crm.local"]);
        assert_eq!(crm.headers["Authorization"], "Bearer ${secret:crm_token}");
        let Some(Datasource::Http(billing)) = ds.get("billing") else { panic!() };
        assert_eq!(billing.headers["x-api-key"], "${secret:billing}");
        assert_eq!(ds.describe(), "billing (http), crm (http), orders (postgres), shop (mysql)");
    }

    #[test]
    fn mistakes_are_named() {
        let err = |pairs: &[(&str, &str)]| Datasources::load(None, vars(pairs)).unwrap_err().to_string();
        assert!(err(&[("TF_DATASOURCE__X__URL", "ftp://h")]).contains("TF_DATASOURCE__X__URL: the URL must start"));
        let both = "x:\n  postgres: {url: 'postgres://h/db'}\n  mysql: {url: 'mysql://h/db'}\n";
        let dir = std::env::temp_dir().join(format!("tf-ds-both-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("both.yaml"), both).unwrap();
        let e = Datasources::load(Some(&dir.join("both.yaml")), vars(&[])).unwrap_err().to_string();
        assert!(e.contains("datasource x: needs exactly one of postgres, mysql or http"), "{e}");
        assert!(err(&[("TF_DATASOURCE__X__COLOUR", "red")]).contains("unknown field COLOUR"));
        assert!(err(&[("TF_DATASOURCE__X__STATEMENT_TIMEOUT", "1s")]).contains("datasource x: postgres.url is required"));
        let bad = err(&[("TF_DATASOURCE__X__URL", "postgres://h/db"), ("TF_DATASOURCE__X__STATEMENT_TIMEOUT", "soon")]);
        assert!(bad.contains("statement_timeout"), "{bad}");
        assert!(err(&[("TF_DATASOURCE__X-Y__URL", "postgres://h/db")]).contains("names are a-z"));
        assert_eq!(
            Datasources::load(None, vars(&[])).unwrap().describe(),
            "none are configured (TF_DATASOURCES or TF_DATASOURCE__<NAME>__URL)"
        );
    }
}
