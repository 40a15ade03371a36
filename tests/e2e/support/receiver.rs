//! A webhook receiver on a free port, over http:// or https://: records every request it gets
//! and answers as told.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    /// 200 at once.
    Ok,
    /// 503 to the first `n` requests of each event id, then 200.
    FailFirst(u32),
    /// 500, always.
    Fail,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `Chatfabric-Event-Id`.
    pub id: String,
    /// `Chatfabric-Attempt`.
    pub attempt: u32,
    /// `Chatfabric-Signature`.
    pub signature: String,
    /// The raw body.
    pub body: Bytes,
    /// The body, parsed.
    pub json: Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Log {
    requests: Vec<Received>,
    per_id: HashMap<String, u32>,
}

/// A private CA, and a certificate it issued for 127.0.0.1 that an https receiver serves.
pub struct TestCa {
    _dir: tempfile::TempDir,
    ca_file: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("server key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("server params")
            .signed_by(&key, &ca)
            .expect("server certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server config");
        Self {
            _dir: dir,
            ca_file,
            server: Arc::new(server),
        }
    }

    /// The CA certificate as a PEM file (`--webhook-ca-file`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }
}

/// A receiver, stopped on drop.
pub struct Receiver {
    addr: SocketAddr,
    scheme: &'static str,
    log: Arc<Mutex<Log>>,
    stop: CancellationToken,
}

impl Receiver {
    /// Starts one on 127.0.0.1 with a free port.
    pub async fn start(answer: Answer) -> Self {
        Self::serve(answer, None).await
    }

    /// Starts one that speaks https with `ca`'s server certificate.
    pub async fn start_tls(answer: Answer, ca: &TestCa) -> Self {
        Self::serve(answer, Some(TlsAcceptor::from(Arc::clone(&ca.server)))).await
    }

    async fn serve(answer: Answer, tls: Option<TlsAcceptor>) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = CancellationToken::new();
        tokio::spawn({
            let (log, stop) = (log.clone(), stop.clone());
            async move {
                loop {
                    let stream = tokio::select! {
                        _ = stop.cancelled() => return,
                        a = listener.accept() => match a { Ok((s, _)) => s, Err(_) => continue },
                    };
                    let (log, tls) = (log.clone(), tls.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let log = log.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(record(req, answer, &log).await)
                            }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        let _ = match tls {
                            None => http.serve_connection(TokioIo::new(stream), service).await,
                            Some(tls) => match tls.accept(stream).await {
                                Ok(stream) => {
                                    http.serve_connection(TokioIo::new(stream), service).await
                                }
                                Err(_) => return,
                            },
                        };
                    });
                }
            }
        });
        Self {
            addr,
            scheme,
            log,
            stop,
        }
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("{}://{}/hooks", self.scheme, self.addr)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Received> {
        self.log.lock().unwrap().requests.clone()
    }

    /// The requests answered 200, first of each id only.
    pub fn delivered(&self) -> Vec<Received> {
        let mut seen = std::collections::HashSet::new();
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200 && seen.insert(r.id.clone()))
            .collect()
    }

    /// Waits (at most `limit`) until `done` holds for the requests so far; returns them.
    pub async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let requests = self.requests();
            if done(&requests) {
                return requests;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "receiver: condition not met within {limit:?}; got {:#?}",
                requests
                    .iter()
                    .map(|r| (&r.id, r.status, &r.json))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn record(req: Request<Incoming>, answer: Answer, log: &Mutex<Log>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (id, signature) = (
        header("Chatfabric-Event-Id"),
        header("Chatfabric-Signature"),
    );
    let attempt = header("Chatfabric-Attempt").parse().unwrap_or(0);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut log = log.lock().unwrap();
    let seen = log.per_id.entry(id.clone()).or_default();
    *seen += 1;
    let status = match answer {
        Answer::Ok => 200,
        Answer::FailFirst(n) if *seen <= n => 503,
        Answer::FailFirst(_) => 200,
        Answer::Fail => 500,
    };
    log.requests.push(Received {
        id,
        attempt,
        signature,
        body,
        json,
        status,
    });
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response
}
