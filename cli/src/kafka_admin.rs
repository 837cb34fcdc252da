//! A small blocking Kafka-protocol client for the CLI's admin verbs that
//! exist only on the Kafka listener (`spate acl`, `spate user`): one `std`
//! TCP connection (TLS over it with rustls when `security.protocol` says
//! so, then a SASL login: SaslHandshake v1 and SaslAuthenticate), requests
//! encoded with the `kafka-protocol` crate's codecs at the highest version
//! both sides serve (from ApiVersions), responses read in order. Not a
//! Kafka client library: no retries, no metadata, one broker.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use clap::Args;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use rustls::{ClientConnection, StreamOwned};

use crate::kafka_security::{ClientSecurity, SaslLogin, SaslMechanism, SecurityArgs, Transport, server_name};
use spate_client::scram::ScramClient;

/// The Kafka listener `spate serve` opens with no configuration.
pub(crate) const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:9092";
/// Largest response accepted: an admin answer (every ACL of a cluster at
/// its cap is a few megabytes); a larger size is a broken stream.
const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// The ApiVersions version asked first (KIP-511: a broker that does not
/// serve it answers v0 with its own range).
const API_VERSIONS_VERSION: i16 = 3;

/// Where and how to connect: the flags every Kafka-protocol command
/// (acl, user) takes.
#[derive(Args, Debug, Clone)]
pub(crate) struct Connection {
    /// A broker's Kafka listener, as host:port.
    #[arg(long, default_value = BOOTSTRAP_DEFAULT)]
    pub bootstrap_server: String,
    /// How long to wait for the broker to answer.
    #[arg(long = "request-timeout-ms", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,
    /// The global security flags (`GlobalArgs`), set by the command's
    /// `run` before it connects.
    #[arg(skip)]
    pub security: SecurityArgs,
}

pub(crate) struct KafkaAdmin {
    stream: Transport,
    next_correlation_id: i32,
    /// The broker's (api key, min, max) versions.
    versions: Vec<(i16, i16, i16)>,
}

impl KafkaAdmin {
    /// Connects to one broker's Kafka listener (TLS and SASL as the
    /// settings say) and learns its versions.
    pub(crate) fn connect(connection: &Connection) -> anyhow::Result<KafkaAdmin> {
        let security = connection.security.resolve()?;
        let bootstrap = connection.bootstrap_server.as_str();
        let timeout = Duration::from_millis(connection.timeout_ms);
        let addr = bootstrap
            .to_socket_addrs()
            .with_context(|| format!("resolving {bootstrap}"))?
            .next()
            .with_context(|| format!("{bootstrap} resolves to no address"))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("cannot reach the Kafka listener at {bootstrap}"))?;
        stream.set_read_timeout(Some(timeout)).context("setting a read timeout")?;
        stream.set_write_timeout(Some(timeout)).context("setting a write timeout")?;
        let stream =
            if security.protocol.uses_tls() { tls(stream, bootstrap, &security)? } else { Transport::Plain(stream) };
        let mut admin = KafkaAdmin { stream, next_correlation_id: 1, versions: Vec::new() };
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("spate-cli"))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let mut response: ApiVersionsResponse =
            admin.call_at(API_VERSIONS_VERSION, &request).with_context(|| match security.protocol.uses_tls() {
                // A TLS listener drops a plaintext hello without a word.
                false => format!(
                    "{bootstrap} did not answer in Kafka's protocol with security.protocol {}: does the listener need SSL or SASL_SSL?",
                    security.protocol
                ),
                true => format!("{bootstrap} did not answer over TLS"),
            })?;
        if response.error_code != 0 {
            // KIP-511: the broker answered at v0 with its range; ask again
            // at the highest it serves (never above ours).
            let max =
                response.api_keys.iter().find(|k| k.api_key == ApiVersionsRequest::KEY).map_or(0, |k| k.max_version);
            response = admin.call_at(max.min(API_VERSIONS_VERSION), &request)?;
        }
        if response.error_code != 0 {
            bail!("the broker refused ApiVersions (error {})", response.error_code);
        }
        admin.versions = response.api_keys.iter().map(|k| (k.api_key, k.min_version, k.max_version)).collect();
        if let Some(login) = &security.sasl {
            admin.login(login).with_context(|| {
                format!("SASL {} login as {:?} at {bootstrap}", login.mechanism.name(), login.username)
            })?;
        }
        Ok(admin)
    }

    /// The highest version of `R` both sides serve, if any.
    fn version_of<R: Request>(&self) -> Option<i16> {
        let &(_, min, max) = self.versions.iter().find(|(key, _, _)| *key == R::KEY)?;
        let version = max.min(R::VERSIONS.max);
        (version >= min.max(R::VERSIONS.min)).then_some(version)
    }

    /// SaslHandshake v1 (KIP-152: the tokens then ride in SaslAuthenticate
    /// requests), then the mechanism's exchange.
    fn login(&mut self, login: &SaslLogin) -> anyhow::Result<()> {
        if self.version_of::<SaslHandshakeRequest>().is_none_or(|v| v < 1) {
            bail!("the broker does not serve SaslHandshake v1");
        }
        let handshake =
            SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(login.mechanism.name()));
        let response = self.call_at(1, &handshake)?;
        match response.error_code {
            0 => {}
            code if code == kafka_protocol::ResponseError::IllegalSaslState.code() => {
                bail!("the listener does not take SASL (is it PLAINTEXT or SSL? then so is security.protocol)")
            }
            code if code == kafka_protocol::ResponseError::UnsupportedSaslMechanism.code() => {
                let enabled: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
                bail!("the listener does not enable {}; it enables {}", login.mechanism.name(), enabled.join(", "))
            }
            code => bail!("the broker refused the SASL handshake: {}", error_name(code)),
        }
        match login.mechanism {
            SaslMechanism::Plain => {
                // RFC 4616: authzid (none), user, password.
                let token = format!("\0{}\0{}", login.username, login.password);
                self.authenticate(token.into_bytes())?;
            }
            SaslMechanism::Scram(mechanism) => {
                let mut scram = ScramClient::new(mechanism, &login.username, &login.password)?;
                let server_first = self.authenticate(scram.client_first())?;
                let client_final = scram.client_final(&server_first)?;
                let server_final = self.authenticate(client_final)?;
                scram.verify_server_final(&server_final)?;
            }
        }
        Ok(())
    }

    /// One SaslAuthenticate round: our token, the broker's answer (or its
    /// refusal, in its own words).
    fn authenticate(&mut self, token: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let Some(version) = self.version_of::<SaslAuthenticateRequest>() else {
            bail!("the broker does not serve SaslAuthenticate");
        };
        let response =
            self.call_at(version, &SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(token)))?;
        if response.error_code != 0 {
            let message = response.error_message.as_deref().unwrap_or("no reason given");
            bail!("the broker refused it: {}: {message}", error_name(response.error_code));
        }
        Ok(response.auth_bytes.to_vec())
    }

    /// Sends `request` at the highest version both sides serve.
    pub(crate) fn call<R: Request>(&mut self, request: &R) -> anyhow::Result<R::Response> {
        let name = ApiKey::try_from(R::KEY).map(|api| format!("{api:?}")).unwrap_or_else(|()| R::KEY.to_string());
        let Some(&(_, min, max)) = self.versions.iter().find(|(key, _, _)| *key == R::KEY) else {
            bail!("the broker does not serve {name}");
        };
        let Some(version) = self.version_of::<R>() else {
            bail!("the broker serves {name} at versions {min} to {max}, this CLI at {:?}", R::VERSIONS);
        };
        self.call_at(version, request)
    }

    fn call_at<R: Request>(&mut self, version: i16, request: &R) -> anyhow::Result<R::Response> {
        let api = ApiKey::try_from(R::KEY).map_err(|()| anyhow::anyhow!("unknown API key {}", R::KEY))?;
        let correlation_id = self.next_correlation_id;
        self.next_correlation_id = self.next_correlation_id.wrapping_add(1);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("spate-cli")));
        let mut body = BytesMut::new();
        header.encode(&mut body, api.request_header_version(version)).context("encoding a request header")?;
        request.encode(&mut body, version).with_context(|| format!("encoding {api:?} v{version}"))?;
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_u32(u32::try_from(body.len()).context("a request over 4 GiB")?);
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame).context("sending a request")?;

        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).context("the broker closed the connection instead of answering")?;
        let size = u32::from_be_bytes(size) as usize;
        if size > RESPONSE_BYTES_MAX {
            bail!("a {size}-byte response: over the {RESPONSE_BYTES_MAX}-byte limit");
        }
        let mut response = vec![0u8; size];
        self.stream.read_exact(&mut response).context("reading a response")?;
        let mut response = Bytes::from(response);
        let header = ResponseHeader::decode(&mut response, api.response_header_version(version))
            .context("decoding a response header")?;
        if header.correlation_id != correlation_id {
            bail!("a response to request {} where {correlation_id} was expected", header.correlation_id);
        }
        let decoded =
            R::Response::decode(&mut response, version).with_context(|| format!("decoding {api:?} v{version}"))?;
        if response.has_remaining() {
            bail!("{} bytes after the {api:?} response", response.remaining());
        }
        Ok(decoded)
    }
}

/// TLS over `stream`, the handshake done here so that its failure says
/// which host and which trust failed.
fn tls(mut stream: TcpStream, bootstrap: &str, security: &ClientSecurity) -> anyhow::Result<Transport> {
    let config = security.tls_config()?;
    let name = server_name(bootstrap)?;
    let mut connection =
        ClientConnection::new(config, name.clone()).with_context(|| format!("starting TLS to {}", name.to_str()))?;
    while connection.is_handshaking() {
        connection.complete_io(&mut stream).with_context(|| {
            format!(
                "TLS handshake with {bootstrap} (verifying its certificate for {:?} against {})",
                name.to_str(),
                security.trust()
            )
        })?;
    }
    Ok(Transport::Tls(Box::new(StreamOwned::new(connection, stream))))
}

/// Kafka's name for an error code (TOPIC_AUTHORIZATION_FAILED), for
/// messages.
pub(crate) fn error_name(code: i16) -> String {
    match kafka_protocol::ResponseError::try_from_code(code) {
        Some(error) => format!("{error:?}"),
        None => format!("error {code}"),
    }
}
