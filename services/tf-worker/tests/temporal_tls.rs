//! Temporal over TLS, as a platform team's cluster or Temporal Cloud is reached. The dev server
//! speaks plaintext only, so the test puts a TLS-terminating proxy (rustls, ALPN h2, the stack's
//! local CA and certificate) in front of it: the worker connects through it with
//! `TF_TEMPORAL_TLS_CA` and an API key, and runs a run; a client that does not trust the CA, or
//! whose settings are half done, is refused with a readable error.

#![allow(clippy::unwrap_used)] // a test reports failure by panicking

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tf_testkit::{FreshDatabase, apply_definition, eventually, settings, unique, workspace_binary};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Terminates TLS with the stack's broker certificate (CN localhost, SAN 127.0.0.1) and passes
/// the bytes on to `upstream`; returns its address.
async fn tls_proxy(upstream: String) -> String {
    let tls = tf_testkit::repo_root().join(".stack/kafka/tls");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&std::fs::read(tls.join("broker.crt")).unwrap()).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(&std::fs::read(tls.join("broker.key")).unwrap()).unwrap();
    let mut config = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut up) = TcpStream::connect(&upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    addr
}

// Multi-threaded: the proxy must keep serving while the test waits on a `tf` process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reaches_temporal_over_tls_with_the_servers_ca_and_an_api_key() {
    let s = settings();
    let upstream = s.temporal_url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let proxy = tls_proxy(upstream).await;
    let ca = tf_testkit::repo_root().join(".stack/kafka/tls/ca.crt").display().to_string();
    let (db, pool) = FreshDatabase::migrated(&s).await;
    let queue = unique("it-tls-queue");
    let id = unique("it-tls").to_lowercase();
    let (def_id, version) = apply_definition(
        &pool,
        &format!("id: {id}\nname: Over TLS\ntrigger: {{event: {{topics: [events.demo]}}}}\ndedupe: {{key: event.data.k}}\ntasks:\n  - {{name: noop, type: human, when: 'false'}}\n"),
    )
    .await;
    let url = format!("https://{proxy}");
    let worker = tf_testkit::worker(
        &db.url,
        &queue,
        &[
            ("TF_NO_RELAY", "true"),
            ("TF_NO_SCHEDULER", "true"),
            ("TF_TEMPORAL_URL", &url),
            ("TF_TEMPORAL_TLS_CA", &ca),
            ("TF_SECRET_TEMPORAL_API_KEY", "it-api-key-123"),
            ("TF_TEMPORAL_API_KEY", "${secret:temporal_api_key}"),
        ],
    );
    let client = tf_temporal::connect(&s.temporal_url, &s.temporal_namespace, "it").await.unwrap();
    tf_temporal::start_run(&client, &queue, tf_testkit::run_input(&def_id, version, "k-1", json!({"data": {"k": "k-1"}}))).await.unwrap();
    eventually(&format!("the run to complete through the TLS proxy; worker log:\n{}", worker.log()), Duration::from_secs(60), || async {
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM activity_runs").fetch_optional(&pool).await.unwrap();
        (status.as_deref() == Some("completed")).then_some(())
    })
    .await;

    // Without the CA the server's certificate is not trusted; half an mTLS setting is named.
    let tf = |envs: &[(&str, &str)]| {
        let out = std::process::Command::new(workspace_binary("tf"))
            .args(["schedules", "list"])
            .env("TF_TEMPORAL_URL", &url)
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (ok, err) = tf(&[("TF_TEMPORAL_TLS_CA", &ca)]);
    assert!(ok, "trusting the CA, the CLI lists schedules through TLS: {err}");
    let (ok, err) = tf(&[("TF_TEMPORAL_TLS", "true")]);
    assert!(!ok && err.contains(&format!("cannot connect to Temporal at {url}")), "{err}");
    let (ok, err) = tf(&[("TF_TEMPORAL_TLS_CA", &ca), ("TF_TEMPORAL_TLS_CERT", &ca)]);
    assert!(!ok && err.contains("TF_TEMPORAL_TLS_CERT and TF_TEMPORAL_TLS_KEY go together"), "{err}");
}
