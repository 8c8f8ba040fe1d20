//! Registry credentials on the wire: basic and bearer. Apicurio's own auth needs an OIDC
//! server (Keycloak), which does not run here, so a proxy in front of the stack's Apicurio
//! plays a secured registry: it answers 401 to any connection whose first request lacks the
//! expected `Authorization`, and passes the others on.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use tf_config::registry::RegistryAuth;
use tf_envelope::{ENVELOPE_SCHEMA, Registry, RegistryError};
use tf_testkit::{settings, unique};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn auth_proxy(upstream: String, accepted: &'static [&'static str]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { continue };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let authorized = text.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| k.eq_ignore_ascii_case("authorization") && accepted.contains(&v.trim()))
                });
                if !authorized {
                    let _ =
                        client.write_all(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\nconnection: close\r\n\r\nunauthorized").await;
                    return;
                }
                let Ok(mut up) = TcpStream::connect(&upstream).await else { return };
                if up.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_and_bearer_credentials_reach_the_registry_and_a_refusal_is_misconfiguration() {
    let url = url::Url::parse(&settings().schema_registry_url).unwrap();
    let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap());
    let proxy = auth_proxy(upstream, &["Basic dGY6czNjcmV0LXB3", "Bearer tok-123"]).await;
    let base = format!("http://{proxy}{}", url.path());

    let basic = Registry::with_auth(&base, &RegistryAuth::Basic { user: "tf".into(), password: "s3cret-pw".into() });
    let subject = format!("{}-value", unique("it-registry-auth"));
    let id = basic.register(&subject, ENVELOPE_SCHEMA).await.unwrap();
    let bearer = Registry::with_auth(&base, &RegistryAuth::Bearer("tok-123".into()));
    assert_eq!(bearer.lookup(&subject, ENVELOPE_SCHEMA).await.unwrap(), Some(id));

    for refused in
        [RegistryAuth::None, RegistryAuth::Basic { user: "tf".into(), password: "wrong".into() }, RegistryAuth::Bearer("nope".into())]
    {
        match Registry::with_auth(&base, &refused).register(&subject, ENVELOPE_SCHEMA).await {
            Err(RegistryError::Misconfigured { status: 401, .. }) => {}
            other => panic!("{refused:?}: expected a 401 read as misconfiguration, got {other:?}"),
        }
    }
}
