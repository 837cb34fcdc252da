//! TLS for the Kafka workloads (issue 16's benchmark): the harness makes a
//! throwaway CA and a broker certificate for the run (rcgen), the brokers
//! serve an SSL listener beside the PLAINTEXT one with it, and the load
//! generator connects with tokio-rustls (the ring provider, as the broker)
//! trusting only that CA. The stream types let the Kafka load generator
//! speak over either listener without boxing: a plain connection stays a
//! `TcpStream` (and its owned halves), one match per poll away.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The files a run's TLS brokers use, made once per run.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The broker's certificate chain and key in one PEM file (Kafka's
    /// KIP-651 `ssl.keystore.location`).
    pub keystore: PathBuf,
    /// The CA certificate the load generator trusts.
    pub ca: PathBuf,
    /// A `spate serve --config` TOML file naming the keystore.
    pub broker_config: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and a server certificate for the loopback names
    /// (`localhost`, `127.0.0.1`) in `dir` (replaced), and the broker's
    /// config file naming them (and `cipher_suites`, Kafka's
    /// `ssl.cipher.suites`, when not empty).
    pub fn make(dir: &Path, cipher_suites: &str) -> anyhow::Result<Self> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca_key = rcgen::KeyPair::generate().context("a CA key")?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "spate bench CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_pem = ca_params.self_signed(&ca_key).context("signing the CA")?.pem();
        let key = rcgen::KeyPair::generate().context("a broker key")?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .context("broker certificate parameters")?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "spate bench broker");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert_pem = params.signed_by(&key, &issuer).context("signing the broker certificate")?.pem();
        let files = TlsFiles {
            keystore: dir.join("broker.pem"),
            ca: dir.join("ca.pem"),
            broker_config: dir.join("broker.toml"),
        };
        write(&files.keystore, &format!("{cert_pem}{}", key.serialize_pem()))?;
        write(&files.ca, &ca_pem)?;
        // A TOML string: the path's backslashes and quotes escaped by Debug.
        let keystore = files.keystore.canonicalize().context("the keystore's path")?;
        let keystore = keystore.to_str().context("the keystore's path is not UTF-8")?;
        let mut config = format!("ssl_keystore_type = \"PEM\"\nssl_keystore_location = {keystore:?}\n");
        if !cipher_suites.is_empty() {
            config.push_str(&format!("ssl_cipher_suites = {cipher_suites:?}\n"));
        }
        write(&files.broker_config, &config)?;
        Ok(files)
    }

    /// A connector trusting the run's CA alone.
    pub fn connector(&self) -> anyhow::Result<TlsConnector> {
        let pem = std::fs::read(&self.ca).with_context(|| format!("reading {}", self.ca.display()))?;
        connector(&pem)
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A TLS client (TLS 1.2 and 1.3, the ring provider's default suites:
/// AES-GCM first) trusting the CA certificates in `ca_pem`.
pub fn connector(ca_pem: &[u8]) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("a CA certificate in PEM")?).context("trusting the CA")?;
    }
    if roots.is_empty() {
        anyhow::bail!("no CA certificate in the PEM given");
    }
    // The broker's provider (net/src/security/tls.rs says why ring, which
    // rustls 0.23.48 deprecates for lacking post-quantum key exchange).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to verify the broker's certificate against: the host of
/// `addr` (an IP address here, in the certificate's names).
pub fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))
}

/// "TLSv1_3 TLS13_AES_256_GCM_SHA384": what a connection negotiated.
pub fn describe(stream: &TlsStream<TcpStream>) -> String {
    let connection = stream.get_ref().1;
    let version = connection.protocol_version().map_or("?".into(), |v| format!("{v:?}"));
    let suite = connection.negotiated_cipher_suite().map_or("?".into(), |s| format!("{:?}", s.suite()));
    format!("{version} {suite}")
}

/// A connection to a Kafka listener, plaintext or TLS.
#[derive(Debug)]
pub enum KafkaStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's read side: a plain one's owned half (no lock), or a TLS
/// stream's half (tokio's split, a lock taken per poll: TLS's read and
/// write share one session).
#[derive(Debug)]
pub enum KafkaReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream<TcpStream>>),
}

#[derive(Debug)]
pub enum KafkaWriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream<TcpStream>>),
}

impl KafkaStream {
    pub fn into_split(self) -> (KafkaReadHalf, KafkaWriteHalf) {
        match self {
            KafkaStream::Plain(stream) => {
                let (read, write) = stream.into_split();
                (KafkaReadHalf::Plain(read), KafkaWriteHalf::Plain(write))
            }
            KafkaStream::Tls(stream) => {
                let (read, write) = tokio::io::split(*stream);
                (KafkaReadHalf::Tls(read), KafkaWriteHalf::Tls(write))
            }
        }
    }
}

/// Forwards AsyncRead to whichever stream the enum holds (all Unpin).
macro_rules! forward_read {
    ($type:ident) => {
        impl AsyncRead for $type {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_read(cx, buf),
                    $type::Tls(s) => Pin::new(s).poll_read(cx, buf),
                }
            }
        }
    };
}

/// Forwards AsyncWrite, vectored writes included: the produce path sends
/// a request's header and its pre-encoded body in one vectored write.
macro_rules! forward_write {
    ($type:ident) => {
        impl AsyncWrite for $type {
            fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_write(cx, buf),
                    $type::Tls(s) => Pin::new(s).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<std::io::Result<usize>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                    $type::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $type::Plain(s) => s.is_write_vectored(),
                    $type::Tls(s) => s.is_write_vectored(),
                }
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_flush(cx),
                    $type::Tls(s) => Pin::new(s).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                match self.get_mut() {
                    $type::Plain(s) => Pin::new(s).poll_shutdown(cx),
                    $type::Tls(s) => Pin::new(s).poll_shutdown(cx),
                }
            }
        }
    };
}

forward_read!(KafkaStream);
forward_write!(KafkaStream);
forward_read!(KafkaReadHalf);
forward_write!(KafkaWriteHalf);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::kafka_load::{self, Endpoint, KafkaLoadError};
    use crate::harness::load;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, ResponseHeader, TopicName};
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes, decode_request_header_from_buffer};
    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsAcceptor;

    /// Test files on the real disk, under target/.
    fn test_dir(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/bench-tests")
            .join(format!("{name}-{}", std::process::id()))
    }

    /// A TLS server on the keystore `files` made, as the broker's SSL
    /// listener serves it.
    fn acceptor(files: &TlsFiles) -> TlsAcceptor {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&files.keystore).expect("keystore").map(|c| c.expect("cert")).collect();
        let key = PrivateKeyDer::from_pem_file(&files.keystore).expect("key");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config");
        TlsAcceptor::from(Arc::new(config))
    }

    /// Answers every Produce on each connection with the next base
    /// offset, after checking its batch is `expected`, byte for byte.
    async fn answer_produces(acceptor: TlsAcceptor, listener: tokio::net::TcpListener, expected: bytes::Bytes) {
        loop {
            let (socket, _) = listener.accept().await.expect("accept");
            tokio::spawn(answer_connection(acceptor.clone(), socket, expected.clone()));
        }
    }

    async fn answer_connection(acceptor: TlsAcceptor, socket: tokio::net::TcpStream, expected: bytes::Bytes) {
        let mut stream = acceptor.accept(socket).await.expect("server handshake");
        let mut base_offset = 0i64;
        loop {
            let Ok(length) = stream.read_i32().await else { return };
            let mut frame = vec![0u8; length as usize];
            stream.read_exact(&mut frame).await.expect("a whole frame");
            let mut frame = bytes::Bytes::from(frame);
            let header = decode_request_header_from_buffer(&mut frame).expect("header");
            let request = ProduceRequest::decode(&mut frame, kafka_load::PRODUCE_VERSION).expect("produce");
            let partition = &request.topic_data[0].partition_data[0];
            assert_eq!(partition.records.as_ref(), Some(&expected), "the batch arrives as sent");
            let response = ProduceResponse::default().with_responses(vec![
                TopicProduceResponse::default()
                    .with_name(TopicName(StrBytes::from_static_str("bench-tls")))
                    .with_partition_responses(vec![
                        PartitionProduceResponse::default().with_index(partition.index).with_base_offset(base_offset),
                    ]),
            ]);
            base_offset += 10;
            let mut body = BytesMut::new();
            let header_version = ApiKey::Produce.response_header_version(kafka_load::PRODUCE_VERSION);
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut body, header_version)
                .expect("header");
            response.encode(&mut body, kafka_load::PRODUCE_VERSION).expect("response");
            let mut out = BytesMut::new();
            out.put_i32(body.len() as i32);
            out.extend_from_slice(&body);
            stream.write_all(&out).await.expect("answer");
            stream.flush().await.expect("flush");
        }
    }

    /// A producer over TLS sends the same pre-built batch in the same
    /// Produce requests as over plaintext, pipelined, and reads every
    /// answer: the TLS server sees each batch byte for byte and the
    /// producer ends at the offsets it was given.
    #[tokio::test]
    async fn a_producer_sends_the_same_batches_over_tls_and_reads_every_answer() {
        let dir = test_dir("tls-produce");
        let files = TlsFiles::make(&dir, "").expect("certificates");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let template = load::build_batch(10, 100, 7);
        let server = tokio::spawn(answer_produces(acceptor(&files), listener, template.clone()));
        let endpoint = Endpoint { addr, tls: Some(files.connector().expect("connector")) };
        let session = endpoint.tls_session().await.expect("a TLS session").expect("TLS");
        assert!(session.contains("TLS"), "{session}");
        let ends = kafka_load::fill(&endpoint, "bench-tls", 1, 3, template, 10, 25).await.expect("filled over TLS");
        assert_eq!(ends, vec![25 * 10], "25 batches of 10 records acknowledged in order");
        server.abort();
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The load generator trusts the run's CA alone: a listener whose
    /// certificate another CA signed fails the handshake, named as such.
    #[tokio::test]
    async fn a_certificate_from_another_ca_fails_the_handshake() {
        let (ours, theirs) = (test_dir("tls-ours"), test_dir("tls-theirs"));
        let (ours_files, theirs_files) =
            (TlsFiles::make(&ours, "").expect("ours"), TlsFiles::make(&theirs, "").expect("theirs"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let acceptor = acceptor(&theirs_files);
        let server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.expect("accept");
            let _ = acceptor.accept(socket).await;
        });
        let endpoint = Endpoint { addr, tls: Some(ours_files.connector().expect("connector")) };
        let err = endpoint.tls_session().await.expect_err("an unknown issuer");
        assert!(matches!(err, KafkaLoadError::Handshake { .. }), "{err}");
        // Both CAs have the same name, so it is the signature that fails.
        assert!(err.to_string().contains("invalid peer certificate"), "{err}");
        server.abort();
        std::fs::remove_dir_all(&ours).ok();
        std::fs::remove_dir_all(&theirs).ok();
    }

    /// The broker's config names the keystore (chain then key, one PEM
    /// file) as `spate serve --config` reads it.
    #[test]
    fn the_broker_config_names_a_keystore_with_chain_and_key() {
        let dir = test_dir("tls-files");
        let files = TlsFiles::make(&dir, "").expect("certificates");
        let config = std::fs::read_to_string(&files.broker_config).expect("config");
        let table: toml::Table = toml::from_str(&config).expect("TOML");
        let location = table["ssl_keystore_location"].as_str().expect("a path");
        assert_eq!(Path::new(location), files.keystore.canonicalize().expect("keystore"));
        let keystore = std::fs::read_to_string(&files.keystore).expect("keystore");
        let (cert, key) = (keystore.find("BEGIN CERTIFICATE"), keystore.find("PRIVATE KEY"));
        assert!(cert.is_some() && key.is_some() && cert < key, "chain then key");
        assert_eq!(server_name("127.0.0.1:9093").expect("an IP"), ServerName::try_from("127.0.0.1").expect("IP"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
